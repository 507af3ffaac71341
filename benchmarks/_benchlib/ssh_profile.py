"""Where a ``tether ssh`` session spends its time: py-spy on the client, the proxy and the node.

For each Tether leg, one setup run and one bulk run are recorded: the client is started under
``py-spy record`` (a fresh process, as in the measurements), and ``py-spy record --pid`` is
attached to each server process of the leg for the duration. The raw collapsed stacks are kept
in the output directory (``<leg>-<run>-<role>.txt``; speedscope and flamegraph tools read
them) with ``summary.txt``: per process, the share of samples under each package (inclusive)
and the functions where the samples end (exclusive).

Profiling slows what it watches; these runs are never part of the measured figures.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from _benchlib.procs import owned_process
from _benchlib.ssh_sites import Remote

RATE = 250  # samples per second
TOP = 12
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*)\)$")


class ProfilerUnavailable(Exception):
    """py-spy is not installed here."""


def py_spy() -> str:
    """The py-spy binary, next to this interpreter or on PATH."""
    for candidate in (pathlib.Path(sys.executable).parent / "py-spy", shutil.which("py-spy")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ProfilerUnavailable("py-spy is not installed: pip install py-spy")


@contextlib.contextmanager
def _attached(spy: str, pids: Mapping[str, int], prefix: pathlib.Path) -> Iterator[None]:
    """py-spy on each running server process until the block ends (SIGINT makes it write)."""
    with contextlib.ExitStack() as stack:
        procs = []
        for role, pid in pids.items():
            out = prefix.with_name(f"{prefix.name}-{_slug(role)}.txt")
            argv = [spy, "record", "--nonblocking", "--nolineno", "-r", str(RATE), "-f", "raw"]
            argv += ["-o", str(out), "-p", str(pid)]
            procs.append(
                stack.enter_context(
                    owned_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            )
        yield
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)


def _slug(role: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", role.lower()).strip("-")


def _record_client(
    spy: str, remote: Remote, command: str, out: pathlib.Path, feed_bytes: int | None, idle: bool
) -> None:
    argv = [spy, "record", "--nolineno", "-r", str(RATE), "-f", "raw", "-o", str(out)]
    if idle:
        argv.append("--idle")
    argv += ["--", *remote.argv(command)]
    with contextlib.ExitStack() as stack:
        stdin: Any = subprocess.DEVNULL
        if feed_bytes is not None:
            head = stack.enter_context(
                owned_process(["head", "-c", str(feed_bytes), "/dev/zero"], stdout=subprocess.PIPE)
            )
            stdin = head.stdout
        proc = stack.enter_context(
            owned_process(
                argv,
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=dict(remote.env),
            )
        )
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"py-spy record of {command!r} failed: {' | '.join(tail)}")


def summarize(path: pathlib.Path) -> dict[str, Any]:
    """Samples in a py-spy raw file: total, share per package (inclusive), top leaf functions."""
    total = 0
    packages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {"samples": 0}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        seen = {_package(frame) for frame in frames}
        for package in seen:
            packages[package] += count
        leaves[_label(frames[-1])] += count
    return {
        "samples": total,
        "inclusive_by_package": {
            k: round(v / total * 100, 1) for k, v in packages.most_common(TOP) if total
        },
        "exclusive_top_functions": {
            k: round(v / total * 100, 1) for k, v in leaves.most_common(TOP) if total
        },
    }


def _package(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    if file.startswith("<frozen importlib"):
        return "importlib (imports)"
    parts = file.split("/")
    if parts[0] in ("tether", "tether_ssh") and len(parts) > 1:
        return f"{parts[0]}.{parts[1].removesuffix('.py')}"
    return parts[0].removesuffix(".py")


def _label(frame: str) -> str:
    match = _FRAME.match(frame)
    return f"{match['function']} ({match['file']})" if match else frame


def profile_legs(
    remotes: Mapping[str, Remote],
    out_dir: pathlib.Path,
    setup_command: str,
    bulk_command: str,
    bulk_bytes: int,
) -> dict[str, Any]:
    """Record one setup and one bulk run per leg; write ``summary.txt``; return the summary."""
    spy = py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"rate_hz": RATE, "bulk_bytes": bulk_bytes, "legs": {}}
    for name, remote in remotes.items():
        runs = {
            "setup": (setup_command, None, True),
            "bulk": (bulk_command, bulk_bytes, False),
        }
        for run_name, (command, feed, idle) in runs.items():
            prefix = out_dir / f"{name}-{run_name}"
            client = prefix.with_name(f"{prefix.name}-client.txt")
            with _attached(spy, remote.server_pids, prefix):
                _record_client(spy, remote, command, client, feed, idle)
            files = {"client": client} | {
                role: prefix.with_name(f"{prefix.name}-{_slug(role)}.txt")
                for role in remote.server_pids
            }
            summary["legs"].setdefault(name, {})[run_name] = {
                role: {"file": file.name, **summarize(file)} for role, file in files.items()
            }
            print(f"  {name} {run_name}: {', '.join(f.name for f in files.values())}", flush=True)
    (out_dir / "summary.txt").write_text(_summary_text(summary), encoding="utf-8")
    return summary


def _summary_text(summary: dict[str, Any]) -> str:
    lines = [f"py-spy at {summary['rate_hz']} Hz; bulk runs carry {summary['bulk_bytes']} bytes"]
    for name, runs in summary["legs"].items():
        for run_name, roles in runs.items():
            for role, found in roles.items():
                lines.append("")
                lines.append(f"== {name} {run_name} {role}: {found['samples']} samples")
                lines.append("  inclusive by package (% of samples):")
                for k, v in found.get("inclusive_by_package", {}).items():
                    lines.append(f"    {v:5.1f}  {k}")
                lines.append("  where samples end (% of samples):")
                for k, v in found.get("exclusive_top_functions", {}).items():
                    lines.append(f"    {v:5.1f}  {k}")
    return "\n".join(lines) + "\n"
