"""Heartbeats from tunnel agents, written to storage in batches.

Thousands of connected tunnels each heartbeating every few seconds must not mean thousands of
storage writes: :class:`HeartbeatRecorder` keeps only the newest heartbeat per tunnel in
memory and hands the lot to one ``write`` call per flush interval (one backend batch).
:class:`InventoryRecorder` does the same with the inventory entries tunnel-mode nodes send in
their heartbeats, relayed to auth in one request per flush.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs
import trio

from tether.errors import TetherError

__all__ = [
    "HeartbeatRecord",
    "HeartbeatRecorder",
    "InventoryRecorder",
    "InventoryReport",
    "InventoryWriter",
]

log = logging.getLogger(__name__)


@attrs.frozen
class HeartbeatRecord:
    """The newest news of one tunnel: who, through which proxy, when, and what it reported."""

    cluster: str
    proxy_id: str
    agent: str
    time: float
    status: Mapping[str, Any]


Writer = Callable[[Sequence[HeartbeatRecord]], Awaitable[None]]


@attrs.frozen
class InventoryReport:
    """The inventory entries one tunnel-mode host sent in its newest heartbeat, with the
    certificate its tunnel presented (DER), which alone says whose entries they are."""

    agent: str
    cert: bytes
    entries: tuple[Mapping[str, Any], ...]
    ttl_seconds: float
    #: not a report but the removal of the entries relayed this many seconds ago: the host's
    #: tunnel closed (see :meth:`InventoryRecorder.forget`)
    removed_relayed_ago: float | None = None


#: stores a batch of reports; returns, per report, why it was refused (None: stored)
InventoryWriter = Callable[[Sequence[InventoryReport]], Awaitable[Sequence[str | None]]]


K = TypeVar("K")
R = TypeVar("R")


class _Batches(Generic[K, R]):
    """The newest record per key, written in one batch every ``flush_interval`` seconds, at
    once when a record is urgent, and once more on the way out."""

    def __init__(
        self,
        write: Callable[[Sequence[R]], Awaitable[Any]],
        *,
        flush_interval: float,
        what: str,
    ) -> None:
        self._write = write
        self.flush_interval = flush_interval
        self._what = what
        self._pending: dict[K, R] = {}
        #: the batch being written now (taken from ``_pending``), until its writer answers
        self._writing: dict[K, R] = {}
        self._urgent = trio.Event()
        self.writes = 0
        self.recorded = 0

    def _put(self, key: K, record: R, *, urgent: bool = False) -> None:
        self.recorded += 1
        if urgent:
            self._urgent.set()
        self._pending[key] = record

    async def flush(self) -> int:
        """Write what is pending now; returns how many records went out."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        batch = list(pending.values())
        self._writing = pending
        try:
            written = await self._write(batch)
        except TetherError as exc:
            # storage trouble must not take tunnels down; the next heartbeat retries
            log.warning("could not record %d %s: %s", len(batch), self._what, exc)
            for key, record in pending.items():
                self._pending.setdefault(key, record)
            return 0
        finally:
            self._writing = {}
        self.writes += 1
        self._written(batch, written)
        log.debug("recorded %d %s in one write", len(batch), self._what)
        return len(batch)

    def _written(self, batch: Sequence[R], result: Any) -> None:
        """What the writer answered for ``batch``."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every ``flush_interval`` until cancelled, and once more on the way out."""
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.flush_interval):
                    await self._urgent.wait()
                self._urgent = trio.Event()
                await self.flush()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.flush()


class HeartbeatRecorder(_Batches[tuple[str, str, str], HeartbeatRecord]):
    """Collects heartbeats and writes them in batches every ``flush_interval`` seconds."""

    def __init__(
        self,
        write: Writer,
        *,
        flush_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(write, flush_interval=flush_interval, what="tunnel heartbeats")
        self._clock = clock

    def record(
        self,
        cluster: str,
        proxy_id: str,
        agent: str,
        status: Mapping[str, Any],
        *,
        urgent: bool = False,
    ) -> None:
        """Note a heartbeat (or a connect/disconnect); the newest per tunnel wins.

        :param urgent: write at once rather than with the next batch: a tunnel that came or
            went changes what ``tetherctl get rc`` must say, while a heartbeat of a tunnel
            already known up changes nothing anyone waits for.
        """
        record = HeartbeatRecord(
            cluster=cluster, proxy_id=proxy_id, agent=agent, time=self._clock(), status=dict(status)
        )
        self._put((cluster, proxy_id, agent), record, urgent=urgent)


class InventoryRecorder(_Batches[str, InventoryReport]):
    """Collects the inventory entries tunnel-mode hosts send in their heartbeats and relays
    them to auth in one write per ``flush_interval``: thousands of nodes behind one proxy cost
    one request and one storage transaction per flush, not one per node per heartbeat.

    A report the same as the one auth stored last for that host is not relayed again until
    half its TTL has passed (less a flush): auth keeps the entry alive meanwhile, and a host
    heartbeating every quarter of the TTL (as a node's agent does) is stored every other
    heartbeat rather than at each. What auth refused of a host's last report is kept for its
    next heartbeat's answer (:meth:`refusals`), so that the host can log why, as it would from
    a refused request.
    """

    def __init__(
        self,
        write: InventoryWriter,
        *,
        flush_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(write, flush_interval=flush_interval, what="relayed inventory reports")
        self._clock = clock
        self._refused: dict[str, str] = {}
        #: the report auth stored last for each host, when it is to be relayed again, and
        #: when it was relayed
        self._stored: dict[str, tuple[InventoryReport, float, float]] = {}
        #: when each host connected here was first heard of (its first report)
        self._heard: dict[str, float] = {}

    def record(self, report: InventoryReport) -> None:
        """Note a host's report; its newest wins. One the same as what auth holds, and not
        due yet, is not relayed."""
        self._heard.setdefault(report.agent, self._clock())
        stored = self._stored.get(report.agent)
        if stored is not None and stored[0] == report and self._clock() < stored[1]:
            return
        self._put(report.agent, report)

    def refusals(self, agent: str) -> str | None:
        """Why auth refused what ``agent`` reported last, once; None if it refused nothing."""
        return self._refused.pop(agent, None)

    def forget(self, agent: str, *, remove: bool = False) -> None:
        """The host's tunnel closed: its refusals will not be asked for, and what it reports
        through its next tunnel is relayed at once.

        :param remove: it was the host's last tunnel here: have auth remove the entries
            relayed for it now (urgent), rather than list a host whose process is gone until
            they expire. Auth keeps any the host published again since through another proxy.
        """
        refused = self._refused.pop(agent, None)
        stored = self._stored.pop(agent, None)
        heard = self._heard.pop(agent, None)
        if not remove:
            return
        pending = self._pending.pop(agent, None)
        writing = self._writing.get(agent)
        now = self._clock()
        if stored is not None:
            report, _, relayed_at = stored
        elif writing is not None:
            # its report is being written: removed once written (the removal goes after it),
            # whatever is published up to now
            report, relayed_at = writing, now
        elif pending is not None and heard is not None and refused is None:
            # closed before its first report went out: a node also publishes its entries
            # itself as it starts (over HTTPS), which would stay listed until they expire;
            # anything published since it was first heard of here came through another tunnel
            report, relayed_at = pending, heard
        else:
            return  # nothing of it was stored, or auth refused it: nothing to remove
        self._put(agent, attrs.evolve(report, removed_relayed_ago=now - relayed_at), urgent=True)

    def _written(self, batch: Sequence[InventoryReport], result: Any) -> None:
        now = self._clock()
        for report, refused in zip(batch, result, strict=True):
            if report.removed_relayed_ago is not None:
                continue
            gone = self._pending.get(report.agent)
            if gone is not None and gone.removed_relayed_ago is not None:
                continue  # its tunnel closed while this was written: its removal follows
            if refused:
                self._refused[report.agent] = refused
                self._stored.pop(report.agent, None)  # tried again at its next heartbeat
            else:
                due = now + report.ttl_seconds / 2 - self.flush_interval
                self._stored[report.agent] = (report, due, now)
