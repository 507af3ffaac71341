"""Heartbeats from tunnel agents, written to storage in batches.

Thousands of connected tunnels each heartbeating every few seconds must not mean thousands of
storage writes: :class:`HeartbeatRecorder` keeps only the newest heartbeat per tunnel in
memory and hands the lot to one ``write`` call per flush interval (one backend batch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from tether.errors import TetherError

__all__ = ["HeartbeatRecord", "HeartbeatRecorder"]

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


class HeartbeatRecorder:
    """Collects heartbeats and writes them in batches every ``flush_interval`` seconds."""

    def __init__(
        self,
        write: Writer,
        *,
        flush_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._write = write
        self.flush_interval = flush_interval
        self._clock = clock
        self._pending: dict[tuple[str, str, str], HeartbeatRecord] = {}
        self._urgent = trio.Event()
        self.writes = 0
        self.recorded = 0

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
        self.recorded += 1
        if urgent:
            self._urgent.set()
        self._pending[(cluster, proxy_id, agent)] = HeartbeatRecord(
            cluster=cluster,
            proxy_id=proxy_id,
            agent=agent,
            time=self._clock(),
            status=dict(status),
        )

    async def flush(self) -> int:
        """Write what is pending now; returns how many records went out."""
        if not self._pending:
            return 0
        batch = list(self._pending.values())
        self._pending.clear()
        try:
            await self._write(batch)
        except TetherError as exc:
            # storage trouble must not take tunnels down; the next heartbeat retries
            log.warning("could not record %d tunnel heartbeats: %s", len(batch), exc)
            for record in batch:
                key = (record.cluster, record.proxy_id, record.agent)
                self._pending.setdefault(key, record)
            return 0
        self.writes += 1
        log.debug("recorded %d tunnel heartbeats in one write", len(batch))
        return len(batch)

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
