"""Many lightweight members of a cluster in a few processes, owned by a harness.

The lightweight leaves (:mod:`_benchlib.leaves`) and nodes (:mod:`_benchlib.nodes`) run many
to a process, never in the harness, so that the harness's figures are the root's alone. Each
process reports on stdout, one JSON line per event, with ``at`` on the system-wide
``CLOCK_MONOTONIC`` (nanoseconds) that the harness reads too: ``generated`` (keys made),
``joined`` (one per member), ``failed`` (a join refused, with the message), ``connected`` (how
many hold a tunnel, whenever that changes) and any other event, of which the latest per process
is kept (a node's ``heartbeats``). A process exits when its stdin closes (the harness is done
or gone). :class:`ProcessFleet` is the harness's side: it starts the processes, reads their
events and stops them by pid, whatever the exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from tether.tunnel.agent import AgentPool

__all__ = [
    "FleetState",
    "ProcessFleet",
    "emit",
    "exit_when_parent_goes",
    "lift_open_files",
    "now_ns",
    "raise_fd_limit",
    "report_tunnels",
]

REPORT_INTERVAL = 0.25  # seconds between checks of how many tunnels are up


def now_ns() -> int:
    """The clock the members' processes and the harness share (system-wide on Linux)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# --- the members' side ------------------------------------------------------------------------


def emit(out: IO[str], event: str, **fields: Any) -> None:
    """One event line, stamped on the shared clock."""
    out.write(json.dumps({"event": event, "at": now_ns(), **fields}) + "\n")
    out.flush()


def exit_when_parent_goes() -> None:
    """The members live exactly as long as their owner: stdin EOF (owner gone or done) ends
    them. Run it in a daemon thread."""
    sys.stdin.read()
    os._exit(0)


def raise_fd_limit(needed: int) -> None:
    """One socket per tunnel (and per HTTP connection): lift the soft limit on open files to
    the hard one if short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def report_tunnels(out: IO[str], pools: Mapping[str, AgentPool]) -> None:
    """Emit ``connected`` whenever the number of members holding a tunnel (or failing to)
    changes, with the first errors; runs until cancelled."""
    import trio

    last: tuple[int, int] | None = None
    while True:
        connected = sum(1 for pool in pools.values() if pool.connected_proxies())
        failing = sum(1 for pool in pools.values() if pool.last_error)
        if (connected, failing) != last:
            last = (connected, failing)
            errors = sorted({p.last_error for p in pools.values() if p.last_error})
            emit(
                out,
                "connected",
                count=connected,
                pools=len(pools),
                dial_attempts=sum(p.dial_attempts for p in pools.values()),
                failing=failing,
                errors=errors[:3],
            )
        await trio.sleep(REPORT_INTERVAL)


def lift_open_files(needed: int) -> dict[str, Any]:
    """Lift this process's open-files limit to what the system allows, so that a root daemon
    started after it (which inherits it) can hold a socket per member and more: the soft limit
    to the hard one, and, where the process may (root), the hard one to ``needed`` (at most
    ``fs.nr_open``). Returns the limits before and after, for the results."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = before[1]
    want = hard
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
                want = min(needed, int(f.read()))
        except (OSError, ValueError):
            want = hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):  # not allowed above the hard limit here
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    after = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"needed": needed, "before": list(before), "after": list(after)}


# --- the harness's side -----------------------------------------------------------------------


@dataclasses.dataclass
class FleetState:
    """What the leaves' processes have reported so far (times on the shared clock, ns)."""

    generated: int = 0
    joined: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: per process: the latest ``connected`` report
    connected: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: (at, total connected) whenever the total changed
    connected_timeline: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    #: per other event (a node's ``heartbeats``), per process: the latest report
    latest: dict[str, dict[int, dict[str, Any]]] = dataclasses.field(default_factory=dict)

    @property
    def connected_count(self) -> int:
        return sum(int(r["count"]) for r in self.connected.values())


class ProcessFleet:
    """The members' processes, owned: ``with SomeFleet(...) as fleet:``; a subclass names the
    script that runs members (:attr:`script`), which takes the options of :meth:`_argv`.

    :param proxy: the root proxy the members join, ``HOST:PORT``.
    :param ca_pin: the root's CA pin.
    :param token: the token every member joins with.
    :param first: the first member's index (names are ``PREFIX<index>``).
    :param count: how many members, split evenly over ``processes`` processes.
    :param concurrency: joins in flight at once, over all processes.
    """

    script: ClassVar[str] = ""
    default_prefix: ClassVar[str] = "member"

    def __init__(
        self,
        *,
        proxy: str,
        ca_pin: str,
        token: str,
        first: int,
        count: int,
        processes: int = 2,
        concurrency: int = 4,
        prefix: str | None = None,
    ) -> None:
        self.proxy = proxy
        self.ca_pin = ca_pin
        self.token = token
        self.prefix = prefix or self.default_prefix
        self.first = first
        self.count = count
        self.processes = max(1, min(processes, count)) if count else 0
        self.concurrency = concurrency
        self.procs: list[subprocess.Popen[str]] = []
        self.started_ns = 0
        self.state = FleetState()
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._stderr: list[list[str]] = []

    def _argv(self, first: int, count: int) -> list[str]:
        """The command of the process that runs members ``first`` .. ``first + count - 1``."""
        return [
            sys.executable,
            "-u",
            self.script,
            "--proxy",
            self.proxy,
            "--ca-pin",
            self.ca_pin,
            "--token",
            self.token,
            "--prefix",
            self.prefix,
            "--first",
            str(first),
            "--count",
            str(count),
            "--concurrency",
            str(max(1, self.concurrency // max(1, self.processes))),
        ]

    def __enter__(self) -> Self:
        self.started_ns = now_ns()
        base, extra = divmod(self.count, self.processes) if self.processes else (0, 0)
        first = self.first
        try:
            for i in range(self.processes):
                n = base + (1 if i < extra else 0)
                proc = subprocess.Popen(
                    self._argv(first, n),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                first += n
                self.procs.append(proc)
                lines: list[str] = []
                self._stderr.append(lines)
                for target, args in ((self._read, (i, proc)), (self._drain, (proc, lines))):
                    thread = threading.Thread(target=target, args=args, daemon=True)
                    thread.start()
                    self._readers.append(thread)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # the leaves exit on stdin EOF
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for thread in self._readers:
            thread.join(5)
        for proc in procs:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def _read(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self._note(index, record)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _note(self, index: int, record: dict[str, Any]) -> None:
        event = record.get("event")
        state = self.state
        if event == "generated":
            state.generated += int(record.get("leaves", record.get("count", 0)))
        elif event == "joined":
            state.joined.append(record)
        elif event == "failed":
            state.failed.append(record)
        elif event == "connected":
            before = state.connected_count
            state.connected[index] = record
            if state.connected_count != before:
                state.connected_timeline.append((int(record["at"]), state.connected_count))
        elif isinstance(event, str):
            state.latest.setdefault(event, {})[index] = record

    @staticmethod
    def _drain(proc: subprocess.Popen[str], lines: list[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            del lines[:-20]  # keep the tail, for messages

    def stderr_tail(self) -> str:
        return " | ".join(line for lines in self._stderr for line in lines[-3:])

    def snapshot(self) -> FleetState:
        """A copy of the state, consistent at one moment."""
        with self._cond:
            s = self.state
            return FleetState(
                generated=s.generated,
                joined=list(s.joined),
                failed=list(s.failed),
                connected=dict(s.connected),
                connected_timeline=list(s.connected_timeline),
                latest={event: dict(by_proc) for event, by_proc in s.latest.items()},
            )

    def wait_until(self, predicate: Callable[[FleetState], bool], timeout: float) -> bool:
        """Wait until ``predicate(state)`` holds; False after ``timeout`` seconds, or at once if
        every process has exited (the message is in :meth:`stderr_tail`)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.state):
                left = deadline - time.monotonic()
                if left <= 0 or all(proc.poll() is not None for proc in self.procs):
                    return predicate(self.state)
                self._cond.wait(min(left, 1.0))
            return True

    def seconds_since_start(self, at_ns: int) -> float:
        return round((at_ns - self.started_ns) / 1e9, 3)
