"""Watching a root ``tetherd`` while a fleet joins it: its CPU and memory from /proc, the
commands users run against it timed, and py-spy on it; shared by the harnesses that measure one
root with one member and then with many (``many_leaves.py``, ``many_nodes.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from _benchlib import ssh_profile
from _benchlib.fleet import now_ns
from _benchlib.procs import cpu_seconds
from _benchlib.tables import fmt

SAMPLE_INTERVAL = 1.0  # seconds between samples of the root's memory and CPU while joining
MAX_FAILURES = 3  # per figure and phase; a command that keeps failing is not retried forever
MIB = 1 << 20


# --- the root process, from /proc -------------------------------------------------------------


def memory_bytes(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in bytes; empty if it is gone."""
    found = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found


def idle_figures(pid: int, seconds: float) -> dict[str, float]:
    """The root's CPU (% of one core) over ``seconds`` doing nothing but hold its tunnels, and
    its memory at the end."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    used, wall = cpu_seconds(pid) - before, time.monotonic() - started
    memory = memory_bytes(pid)
    return {
        "cpu_percent": round(used / wall * 100, 2),
        "cpu_seconds": round(used, 3),
        "seconds": round(wall, 2),
        "rss_mib": round(memory.get("VmRSS", 0) / MIB, 1),
        "peak_rss_mib": round(memory.get("VmHWM", 0) / MIB, 1),
    }


class Sampler:
    """Samples the root's memory and CPU, and the leaves' progress, every second (a thread)."""

    def __init__(self, pid: int, fleet: Any) -> None:
        self._pid = pid
        self._fleet = fleet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[dict[str, float]] = []

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last_cpu, last_t = cpu_seconds(self._pid), time.monotonic()
        while not self._stop.wait(SAMPLE_INTERVAL):
            cpu, t = cpu_seconds(self._pid), time.monotonic()
            state = self._fleet.snapshot()
            self.samples.append(
                {
                    "t": round(self._fleet.seconds_since_start(now_ns()), 2),
                    "joined": len(state.joined),
                    "connected": state.connected_count,
                    "root_cpu_percent": round((cpu - last_cpu) / (t - last_t) * 100, 1),
                    "root_rss_mib": round(memory_bytes(self._pid).get("VmRSS", 0) / MIB, 1),
                }
            )
            last_cpu, last_t = cpu, t


# --- running commands -------------------------------------------------------------------------


class RunFailed(Exception):
    """A command exited non-zero or hung; the message has the command and its last words."""


def run(argv: Sequence[str], env: Mapping[str, str] | None, timeout: float) -> tuple[float, str]:
    """Run ``argv`` to its end (stdin /dev/null); (wall seconds, stdout). Raises RunFailed."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RunFailed(f"no exit after {timeout:.0f}s (hung): {' '.join(argv)}") from None
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RunFailed(f"exit {done.returncode}: {' '.join(argv)}: {tail or 'no message'}")
    return seconds, done.stdout


@dataclasses.dataclass
class Phase:
    """Every sample of one phase (one member, or every member), or why there are none.

    :param figure_names: the commands timed, in the order they are measured.
    """

    name: str
    figure_names: tuple[str, ...] = ()
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    warmup: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    #: the root tetherd's CPU seconds during each measured run (its idle work included)
    root_cpu: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    idle: dict[str, float] | None = None
    failures: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for figure in self.figure_names:
            for kept in (self.samples, self.warmup, self.root_cpu):
                kept.setdefault(figure, [])

    def fail(self, figure: str, exc: RunFailed) -> None:
        self.failures.setdefault(figure, []).append(str(exc))
        print(f"  {self.name} {figure}: FAILED: {exc}", flush=True)

    def dropped(self, figure: str) -> bool:
        return len(self.failures.get(figure, [])) >= MAX_FAILURES

    def figures(self, figure: str) -> dict[str, float | None]:
        got = sorted(self.samples[figure])
        if not got:
            return {"median": None, "p90": None, "min": None, "root_cpu_median": None}
        p90 = got[max(0, math.ceil(0.9 * len(got)) - 1)]
        return {
            "median": round(statistics.median(got), 4),
            "p90": round(p90, 4),
            "min": round(got[0], 4),
            "root_cpu_median": round(statistics.median(self.root_cpu[figure]), 3),
        }


#: per figure: the command, its environment (None: the harness's) and how many runs
Commands = Mapping[str, tuple[Sequence[str], Mapping[str, str] | None, int]]


def measure_idle(phase: Phase, pid: int, seconds: float) -> None:
    """The idle root first, with nothing else running."""
    print(f"{phase.name}: root idle for {seconds:g}s", flush=True)
    phase.idle = idle_figures(pid, seconds)
    print(
        f"  root CPU {phase.idle['cpu_percent']:.1f}% of a core, RSS {phase.idle['rss_mib']} MiB",
        flush=True,
    )


def measure_commands(
    phase: Phase,
    commands: Commands,
    pid: int,
    *,
    warmup_runs: int,
    timeout: float,
    seen: Callable[[str, str], None] = lambda figure, out: None,
) -> None:
    """Time each command ``runs`` times after ``warmup_runs`` discarded ones, a fresh process
    each run, with the root's CPU during each; ``seen(figure, stdout)`` checks what it printed.
    """
    for figure, (argv, env, runs) in commands.items():
        for i in range(-warmup_runs, runs):
            if phase.dropped(figure):
                break
            before = cpu_seconds(pid)
            try:
                seconds, out = run(argv, env, timeout)
            except RunFailed as exc:
                phase.fail(figure, exc)
                continue
            if i < 0:
                phase.warmup[figure].append(round(seconds, 4))
            else:
                phase.samples[figure].append(round(seconds, 4))
                phase.root_cpu[figure].append(round(cpu_seconds(pid) - before, 3))
            seen(figure, out)
        shown = phase.figures(figure)
        print(
            f"  {figure}: median {fmt(shown['median'])}s, p90 {fmt(shown['p90'])}s, root CPU "
            f"{fmt(shown['root_cpu_median'])}s per run ({len(phase.samples[figure])} runs)",
            flush=True,
        )


# --- options ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FleetOptions:
    """What the options of a one-vs-many harness say of its members; defaults full, quick.

    :param member: ``leaf``, ``node``: names the options (``--leaf-processes``).
    :param members: the plural (``--leaves``).
    :param real: the real member's name, counted in ``--<members>``.
    :param lists: the listing commands ``--list-runs`` times.
    :param joined: what the members must do within ``--join-timeout``.
    :param join: what ``--join-concurrency`` counts.
    """

    member: str
    members: str
    real: str
    lists: str
    joined: str
    join: str
    count: tuple[int, int]
    idle_seconds: tuple[float, float]
    join_timeout: tuple[float, float]
    processes: int
    concurrency: int


def add_fleet_args(parser: argparse.ArgumentParser, o: FleetOptions) -> None:
    """The options a one-vs-many harness shares: how many members, runs, idle time, join
    timeout, processes and joins at once (None where ``--quick`` picks the default)."""
    parser.add_argument(
        f"--{o.members}",
        type=int,
        metavar="N",
        help=f"{o.members} in all, {o.real} included (default {o.count[0]})",
    )
    parser.add_argument(
        "--runs", type=int, metavar="N", help="ssh runs per phase (default 20, --quick 5)"
    )
    parser.add_argument(
        "--list-runs",
        type=int,
        metavar="N",
        help=f"{o.lists} runs per phase (default 10, --quick 3)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        metavar="S",
        help="how long the idle root is watched per phase "
        f"(default {o.idle_seconds[0]:g}, --quick {o.idle_seconds[1]:g})",
    )
    parser.add_argument(
        "--join-timeout",
        type=float,
        metavar="S",
        help=f"how long the {o.members} may take to {o.joined} "
        f"(default {o.join_timeout[0]:g}, --quick {o.join_timeout[1]:g})",
    )
    parser.add_argument(
        f"--{o.member}-processes",
        type=int,
        default=o.processes,
        metavar="N",
        help=f"processes the lightweight {o.members} run in (default {o.processes})",
    )
    parser.add_argument(
        "--join-concurrency",
        type=int,
        default=o.concurrency,
        metavar="N",
        help=f"{o.join} in flight at once, over all {o.member} processes (default {o.concurrency})",
    )


# --- figures ----------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Median of the first and last tenth (join order), and of all: growth shows here."""
    if not values:
        return {"first_tenth_median": None, "last_tenth_median": None, "median": None, "max": None}
    tenth = max(1, len(values) // 10)
    return {
        "first_tenth_median": round(statistics.median(values[:tenth]), 4),
        "last_tenth_median": round(statistics.median(values[-tenth:]), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base`` to two places, None when either is missing."""
    return round(value / base, 2) if value is not None and base else None


# --- profiling --------------------------------------------------------------------------------


def profiler(out_dir: pathlib.Path, pid: int, name: str) -> AbstractContextManager[None]:
    """py-spy attached to the root tetherd until the block ends (``DIR/<name>-root.txt``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return ssh_profile._attached(ssh_profile.py_spy(), {"root": pid}, out_dir / name)


def watched_shares(path: pathlib.Path, watched: Sequence[str]) -> dict[str, float]:
    """% of the samples in a py-spy raw file with each of the ``watched`` functions on the
    stack."""
    total = 0
    counts = dict.fromkeys(watched, 0)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        total += int(count_text)
        functions = {frame.rsplit(" (", 1)[0].rsplit(".", 1)[-1] for frame in stack.split(";")}
        for name in watched:
            if name in functions:
                counts[name] += int(count_text)
    return {k: round(v / total * 100, 1) for k, v in counts.items() if total and v}


def summary(out_dir: pathlib.Path, name: str, watched: Sequence[str]) -> dict[str, Any]:
    """Where one recording's samples fall (``DIR/<name>-root.txt``)."""
    path = out_dir / f"{name}-root.txt"
    return {
        "file": path.name,
        **ssh_profile.summarize(path),
        "watched": watched_shares(path, watched),
    }


def profile_text(profiles: dict[str, Any]) -> str:
    """``DIR/summary.txt``: each recording's inclusive packages, top functions and watched
    functions."""
    lines = [f"py-spy on the root tetherd at {ssh_profile.RATE} Hz"]
    for name, found in profiles.items():
        if not isinstance(found, dict):
            continue
        lines += ["", f"== {name}: {found.get('samples', 0)} samples ({found.get('file')})"]
        lines.append("  inclusive by package (% of samples):")
        lines += [f"    {v:5.1f}  {k}" for k, v in found.get("inclusive_by_package", {}).items()]
        lines.append("  where samples end (% of samples):")
        lines += [f"    {v:5.1f}  {k}" for k, v in found.get("exclusive_top_functions", {}).items()]
        lines.append("  watched functions on the stack (% of samples, inclusive):")
        lines += [f"    {v:5.1f}  {k}" for k, v in found.get("watched", {}).items()]
    return "\n".join(lines) + "\n"
