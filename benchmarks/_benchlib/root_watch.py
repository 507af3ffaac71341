"""Watching a root ``tetherd`` while a fleet joins it: its CPU and memory from /proc, the
commands users run against it timed, and py-spy on it; shared by the harnesses that measure one
root with one member and then with many (``many_leaves.py``, ``many_nodes.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import pathlib
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from _benchlib import results, ssh_profile
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


#: idle windows per phase: the idle CPU figure is their median (one window's figure moved
#: between 0.5% and 2.7% for the same 1,000 leaves, with the machine's other work)
IDLE_WINDOWS = 3


def idle_figures(pid: int, seconds: float, windows: int = IDLE_WINDOWS) -> dict[str, Any]:
    """The root's CPU (% of one core) doing nothing but hold its tunnels: the median of
    ``windows`` consecutive windows of ``seconds`` each (each a keep-alive interval, so that
    every member heartbeats once in each), with every window's figure; its memory at the end."""
    samples: list[float] = []
    used_total = wall_total = 0.0
    for _ in range(windows):
        before, started = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        used, wall = cpu_seconds(pid) - before, time.monotonic() - started
        samples.append(round(used / wall * 100, 2))
        used_total += used
        wall_total += wall
    memory = memory_bytes(pid)
    return {
        "cpu_percent": round(statistics.median(samples), 2),
        "cpu_percent_windows": samples,
        "cpu_seconds": round(used_total, 3),
        "seconds": round(wall_total, 2),
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


# --- the site ---------------------------------------------------------------------------------


def start_site(
    stack: contextlib.ExitStack,
    open_site: Callable[[], AbstractContextManager[Any]],
    missing: dict[str, str],
) -> Any | None:
    """The harness's site, entered on ``stack``; None, with the reason in ``missing["site"]``,
    when it does not start (the report then says so rather than the run failing)."""
    try:
        return stack.enter_context(open_site())
    except (AssertionError, OSError, RuntimeError, subprocess.SubprocessError) as exc:
        missing["site"] = f"failed to start: {exc}"
        print(f"  FAILED to start: {exc}", flush=True)
        return None


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
    idle: dict[str, Any] | None = None
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
    print(f"{phase.name}: root idle for {IDLE_WINDOWS} x {seconds:g}s", flush=True)
    phase.idle = idle_figures(pid, seconds)
    windows = ", ".join(f"{w:.1f}" for w in phase.idle["cpu_percent_windows"])
    print(
        f"  root CPU {phase.idle['cpu_percent']:.1f}% of a core (median of {windows}), "
        f"RSS {phase.idle['rss_mib']} MiB",
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


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big one run is: the options given, else ``--quick``'s or the full defaults."""

    count: int
    ssh_runs: int
    list_runs: int
    idle_seconds: float
    join_timeout: float


def sizes(args: argparse.Namespace, o: FleetOptions) -> Sizes:
    """The run's sizes from :func:`add_fleet_args`' options; exits saying which is wrong."""

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if args.quick else full)

    found = Sizes(
        count=pick(getattr(args, o.members), *o.count),
        ssh_runs=pick(args.runs, 20, 5),
        list_runs=pick(args.list_runs, 10, 3),
        idle_seconds=pick(args.idle_seconds, *o.idle_seconds),
        join_timeout=pick(args.join_timeout, *o.join_timeout),
    )
    if found.count < 2 or found.ssh_runs < 1 or found.list_runs < 1:
        raise SystemExit(f"--{o.members} must be at least 2, --runs and --list-runs at least 1")
    if found.idle_seconds <= 0 or found.join_timeout <= 0:
        raise SystemExit("--idle-seconds and --join-timeout must be positive")
    return found


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
        help=f"how long each of the {IDLE_WINDOWS} windows the idle root is watched per phase "
        f"lasts (default {o.idle_seconds[0]:g}, --quick {o.idle_seconds[1]:g})",
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


# --- joining ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Arrival:
    """How far the lightweight members got: joined (or refused), then their tunnels up."""

    state: Any
    joined: int
    #: seconds from the fleet's start; None where it did not happen in time
    joins_done: float | None
    tunnels_up: float | None


def wait_joined_and_connected(
    fleet: Any, lightweight: int, deadline: float, joins: str, lines: Callable[[str], None]
) -> Arrival:
    """Wait for every member's join to be answered, then for each joined one's tunnel;
    ``joins`` names them in the progress lines (``handshakes``, ``joins``)."""

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    fleet.wait_until(lambda s: len(s.joined) + len(s.failed) >= lightweight, left())
    state = fleet.snapshot()
    joined = len(state.joined)
    joins_done = (
        fleet.seconds_since_start(max(int(j["at"]) for j in state.joined))
        if joined + len(state.failed) >= lightweight and state.joined
        else None
    )
    lines(
        f"  {joins}: {joined} joined, {len(state.failed)} refused"
        + (f" in {joins_done:.1f}s" if joins_done is not None else " (timed out)")
    )
    fleet.wait_until(lambda s: s.connected_count >= joined, left())
    state = fleet.snapshot()
    tunnels_up = None
    if joined and state.connected_count >= joined:
        tunnels_up = fleet.seconds_since_start(
            next(at for at, count in state.connected_timeline if count >= joined)
        )
    lines(
        f"  tunnels: {state.connected_count} of {joined} up"
        + (f" at {tunnels_up:.1f}s" if tunnels_up is not None else " (timed out)")
    )
    return Arrival(state, joined, joins_done, tunnels_up)


def poll_listing(
    argv: Sequence[str],
    names: Callable[[str], list[str]],
    expected: int,
    *,
    fleet: Any,
    deadline: float,
    interval: float,
    key: str,
    label: str,
    timeout: float,
) -> tuple[list[str], list[dict[str, Any]], float | None]:
    """Run the admin's listing ``argv`` every ``interval`` seconds until ``names`` of its
    output counts ``expected`` or ``deadline`` passes; (the last names, every poll as
    ``{"t", key, "seconds"}``, when all were there or None)."""
    found: list[str] = []
    polls: list[dict[str, Any]] = []
    complete = None
    while True:
        took: float | None = None
        try:
            took, out = run(argv, None, timeout)
            found = names(out)
        except (RunFailed, ValueError) as exc:
            print(f"  {label}: {exc}", flush=True)
        at = fleet.seconds_since_start(now_ns())
        polls.append({"t": at, key: len(found), "seconds": took and round(took, 3)})
        if len(found) >= expected:
            complete = at
            break
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    return found, polls, complete


def join_costs(
    pid: int, cpu_before: float, sampler: Sampler, fleet: Any, member: str
) -> dict[str, Any]:
    """What the join cost the root (CPU since ``cpu_before``, peak memory) and the members'
    processes (CPU, their first errors)."""
    memory = memory_bytes(pid)
    state = fleet.snapshot()
    return {
        "root_cpu_seconds": round(cpu_seconds(pid) - cpu_before, 2),
        "root_peak_rss_mib": max((s["root_rss_mib"] for s in sampler.samples), default=None),
        "root_vmhwm_mib": round(memory.get("VmHWM", 0) / MIB, 1),
        f"{member}_processes_cpu_seconds": round(sum(cpu_seconds(p) for p in fleet.pids()), 2),
        f"{member}_processes_errors": sorted(
            {e for r in state.connected.values() for e in r.get("errors", [])}
        )[:5],
        "timeline": sampler.samples,
    }


# --- the report -------------------------------------------------------------------------------


def compared(one: Phase, many: Phase) -> dict[str, Any]:
    """What both phases measured, and many / one for each figure, its root CPU and the idle
    root: the report's ``seconds``, ``root_idle`` and ``ratio_many_vs_one``."""
    figures = one.figure_names
    seconds = {p.name: {f: p.figures(f) for f in figures} for p in (one, many)}
    ratios: dict[str, float | None] = {
        f: ratio(seconds[many.name][f]["median"], seconds[one.name][f]["median"]) for f in figures
    }
    for f in figures:
        ratios[f"{f}_root_cpu"] = ratio(
            seconds[many.name][f]["root_cpu_median"], seconds[one.name][f]["root_cpu_median"]
        )
    one_idle, many_idle = one.idle or {}, many.idle or {}
    ratios["root_idle_cpu"] = ratio(many_idle.get("cpu_percent"), one_idle.get("cpu_percent"))
    ratios["root_rss"] = ratio(many_idle.get("rss_mib"), one_idle.get("rss_mib"))
    return {
        "seconds": seconds,
        "root_idle": {p.name: p.idle for p in (one, many)},
        "ratio_many_vs_one": ratios,
    }


def rss_per_added(one: Phase, many: Phase, added: int) -> int | None:
    """The idle root's memory grown per member added, in bytes."""
    if added > 0 and one.idle and many.idle:
        return round((many.idle["rss_mib"] - one.idle["rss_mib"]) * MIB / added)
    return None


def raw_samples(one: Phase, many: Phase) -> dict[str, Any]:
    """Every sample behind the figures, and every failure."""
    both = (one, many)
    return {
        "samples": {p.name: p.samples for p in both},
        "root_cpu_seconds_samples": {p.name: p.root_cpu for p in both},
        "warmup_samples": {p.name: p.warmup for p in both},
        "failures": {p.name: p.failures for p in both if p.failures},
    }


def load_average(before: tuple[float, float, float]) -> dict[str, Any]:
    """The load averages before and after a run, for the report."""
    return {
        "what": "1, 5 and 15 minute load averages (other work on the machine skews figures)",
        "before": [round(x, 2) for x in before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }


def figure_rows(
    report: dict[str, Any], phases: Sequence[str], labels: Mapping[str, str]
) -> list[list[str]]:
    """The table's rows: each command's median (and ssh's p90) and the root's CPU per run,
    one phase against the other, then the idle root's memory and CPU."""
    one, many = phases
    secs, ratios = report["seconds"], report["ratio_many_vs_one"]
    rows = []
    for figure, label in labels.items():
        for stat in ("median", "p90") if figure == "ssh" else ("median",):
            rows.append(
                [
                    f"{label} ({stat})",
                    fmt(secs[one][figure][stat]),
                    fmt(secs[many][figure][stat]),
                    fmt(ratios[figure], ".2f", "x") if stat == "median" else "",
                ]
            )
        rows.append(
            [
                "  root tetherd CPU s per run (median)",
                fmt(secs[one][figure]["root_cpu_median"]),
                fmt(secs[many][figure]["root_cpu_median"]),
                fmt(ratios[f"{figure}_root_cpu"], ".2f", "x"),
            ]
        )
    idle = report["root_idle"]
    for label, key, ratio_key in (
        (
            f"root RSS MiB (idle, after {IDLE_WINDOWS} x {report['params']['idle_seconds']:g}s)",
            "rss_mib",
            "root_rss",
        ),
        (
            f"root CPU % of a core (idle, median of {IDLE_WINDOWS} windows)",
            "cpu_percent",
            "root_idle_cpu",
        ),
    ):
        rows.append(
            [
                label,
                fmt((idle[one] or {}).get(key), ".1f"),
                fmt((idle[many] or {}).get(key), ".1f"),
                fmt(ratios[ratio_key], ".2f", "x"),
            ]
        )
    return rows


def failure_lines(report: dict[str, Any]) -> list[str]:
    """The table's last lines: each figure that failed and each one not measured."""
    lines = []
    for phase, failures in report["failures"].items():
        for figure, why in failures.items():
            lines.append(f"FAILED {phase} {figure}: {why[-1]}")
    for key, why in report["missing"].items():
        lines.append(f"n/a {key}: {why}")
    return lines


@dataclasses.dataclass(frozen=True)
class Words:
    """How a one-vs-many harness names its members and their figures in charts and the index.

    :param counted: the report's key of members counted per phase (``leaves_online``).
    :param counted_as: what that count is, in the index line (``leaves online``).
    :param polls: the join's key of the admin's listing polls, and each poll's count key.
    :param complete: the join's ``seconds_from_start`` key of every member counted, and its
        words in the index line (``all online``).
    :param latency: the join's key of each join's seconds in join order, and its panel's title.
    """

    benchmark: str
    member: str
    members: str
    counted: str
    counted_as: str
    joined_label: str
    polls: tuple[str, str]
    polled_label: str
    complete: tuple[str, str]
    latency: tuple[str, str]
    site: str
    targets: str


def chart(report: dict[str, Any], path: pathlib.Path, words: Words) -> bool:
    """The join over time, join latency in join order, the root meanwhile, and the medians
    one vs many."""
    plt = results.pyplot()
    if plt is None:
        return False
    m = report["machine"]
    one, many = list(report["seconds"])
    figures = list(report["seconds"][one])
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    (progress, latency), (root, bars) = axes
    join = report["join"] or {}
    timeline = join.get("timeline") or []
    ts = [s["t"] for s in timeline]
    progress.plot(ts, [s["joined"] for s in timeline], label=words.joined_label)
    progress.plot(ts, [s["connected"] for s in timeline], label="tunnels up")
    polls_key, count_key = words.polls
    polls = join.get(polls_key) or []
    progress.plot(
        [q["t"] for q in polls], [q[count_key] for q in polls], "o", label=words.polled_label
    )
    progress.set_xlabel(f"s since the lightweight {words.members} started")
    progress.set_ylabel(words.members)
    progress.set_title(f"{words.members} joining the {words.site}", fontsize=9)
    progress.legend(fontsize=8)
    latency_key, latency_title = words.latency
    joins = join.get(latency_key) or []
    latency.plot(range(1, len(joins) + 1), joins, ".", markersize=2)
    latency.set_xlabel(f"{words.member}, in join order")
    latency.set_ylabel("s")
    latency.set_title(
        f"{latency_title} latency ({report['params']['join_concurrency']} at a time)",
        fontsize=9,
    )
    root.plot(ts, [s["root_cpu_percent"] for s in timeline], color="tab:red", label="CPU %")
    root.set_xlabel(f"s since the lightweight {words.members} started")
    root.set_ylabel("root tetherd CPU, % of a core", color="tab:red")
    twin = root.twinx()
    twin.plot(ts, [s["root_rss_mib"] for s in timeline], color="tab:blue", label="RSS")
    twin.set_ylabel("root tetherd RSS, MiB", color="tab:blue")
    root.set_title(f"root tetherd while {words.members} join", fontsize=9)
    counted = report[words.counted]
    width = 0.38
    for offset, phase, label in (
        (-width / 2, one, f"{counted[one]} {words.member}"),
        (width / 2, many, f"{counted[many]} {words.members}"),
    ):
        values = [report["seconds"][phase][f]["median"] for f in figures]
        drawn = bars.bar(
            [i + offset for i in range(len(figures))], [v or 0 for v in values], width, label=label
        )
        results.label_bars(bars, drawn, [fmt(v, ".2f") for v in values])
    ratios = report["ratio_many_vs_one"]
    bars.set_xticks(
        range(len(figures)),
        [f"{f}\n{fmt(ratios[f], '.2f', 'x')}" for f in figures],
        fontsize=8,
    )
    bars.set_ylabel("s (median)")
    bars.set_title(
        f"wall time, one {words.member} vs every {words.member} ({words.targets})", fontsize=9
    )
    bars.legend(fontsize=8)
    fig.suptitle(
        f"{words.benchmark}, {counted[many]} {words.members} ({m['date']})\n"
        f"{m['cpu_model']}, {m['cores_usable']} cores, {m['memory_gib']} GiB, {m['kernel']}, "
        f"{m['python']}",
        fontsize=9,
    )
    results.save_chart(plt, fig, path)
    return True


def index_line(
    report: dict[str, Any], json_name: str, png_name: str | None, words: Words, machine: str
) -> str:
    """One line of ``results/README.md``: headline figures, ``machine`` (its summary), files."""
    one, many = list(report["seconds"])
    counted = report[words.counted]
    secs, ratios = report["seconds"], report["ratio_many_vs_one"]
    figures = ", ".join(
        f"{f} {fmt(secs[one][f]['median'])}/{fmt(secs[many][f]['median'])} "
        f"({fmt(ratios[f], '.2f', 'x')})"
        for f in secs[one]
    )
    idle = report["root_idle"]
    rss = "/".join(fmt((idle[ph] or {}).get("rss_mib"), ".0f") for ph in (one, many))
    cpu = "/".join(fmt((idle[ph] or {}).get("cpu_percent"), ".1f") for ph in (one, many))
    join = report["join"] or {}
    complete_key, complete_words = words.complete
    at = (join.get("seconds_from_start") or {}).get(complete_key)
    quick = " (--quick)" if report["params"]["quick"] else ""
    files = f"[json]({json_name})" + (f", [chart]({png_name})" if png_name else "")
    return (
        f"- {report['machine']['date']} `{report['benchmark']}`{quick}: {counted[one]}/"
        f"{counted[many]} {words.counted_as}; median s one/many (ratio): {figures}; "
        f"root idle RSS MiB {rss}, CPU % {cpu} (median of {IDLE_WINDOWS} windows); "
        f"{complete_words} after {fmt(at, '.0f')} s; "
        f"{machine}; {files}"
    )


def parse_args(
    argv: list[str],
    *,
    prog: str,
    doc: str,
    quick: str,
    options: FleetOptions,
    profile: str,
) -> argparse.Namespace:
    """A one-vs-many harness's options: ``--quick``, the fleet's, ``--profile`` and where the
    results go."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    add_fleet_args(parser, options)
    parser.add_argument("--profile", type=pathlib.Path, metavar="DIR", help=profile)
    results.add_output_args(parser)
    return parser.parse_args(argv)
