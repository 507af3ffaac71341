"""Owning child processes: every process a harness starts is stopped by its pid on the way out.

A benchmark that leaks an ``sshd`` or a load generator skews the next run and, on a shared CI
machine, every run after it; so nothing is started without a context manager that terminates,
then kills, and always reaps it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence

LOOPBACK = "127.0.0.1"


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after ``grace`` seconds) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@contextlib.contextmanager
def owned_process(argv: Sequence[str], **popen_kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` and stop it (by pid) when the block exits, whatever the exit."""
    proc: subprocess.Popen[bytes] = subprocess.Popen(list(argv), **popen_kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        stop(proc)


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc), to reap what a daemon we started forked."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: fields follow the last ')'
    return stat[stat.rfind(")") + 2 :].split()


def cpu_times(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of ``pid``: its own (all its threads), and what the children
    it reaped had used; zeros for a process that is gone. The one reading of /proc/PID/stat
    every harness uses."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds; 0 if it is gone."""
    return cpu_times(pid)[0]


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` and its descendants have used: each live process's
    own, plus what the children each reaped had used (so a child that exits between two
    readings still counts, once); 0 for a process that is gone."""
    if not os.path.exists(f"/proc/{pid}"):
        return 0.0
    return sum(cpu_times(pid)) + sum(tree_cpu_seconds(c) for c in children_of(pid))


def stop_children(pid: int, grace: float = 3.0) -> None:
    """Let the children of ``pid`` exit by themselves for ``grace`` seconds, then signal them.

    ``sshd`` forks one child per connection and that child calls ``setsid()``, so stopping the
    listener alone would orphan it; we end those children by pid before stopping the listener.
    """
    deadline = time.monotonic() + grace
    while children_of(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = children_of(pid)
        if not left:
            return
        for child in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)
        time.sleep(0.5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for daemons that need a number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_accepting(
    address: tuple[str, int], timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until ``address`` accepts TCP connections; fail early if ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode}")
        try:
            with socket.create_connection(address, timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepts on {address[0]}:{address[1]}") from exc
            time.sleep(0.05)


def run_until_ok(argv: Sequence[str], env: dict[str, str], deadline: float) -> None:
    """Run ``argv`` until it exits 0 (a session through a tunnel that is still coming up);
    past ``deadline`` (``time.monotonic()``), fail with its last error."""
    while True:
        done = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{' '.join(argv)} still fails (exit {done.returncode}): {done.stderr.strip()}"
            )
        time.sleep(0.5)
