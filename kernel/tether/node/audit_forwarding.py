"""The node agent's audit backlog, and its forwarding to the auth service in batches.

A protocol records events faster than one HTTP call each could carry (a database service
audits every statement), and auth may be briefly unreachable (restarted, a proxy between
changing). So events wait in one bounded, ordered backlog; one task collects what arrives
within :data:`AUDIT_LINGER` of a batch's first event (up to :data:`AUDIT_BATCH`) and sends it
in one call, so a busy session costs auth a call per interval rather than one per statement,
and keeps a batch that failed and sends it again, with backoff, until auth records it (auth
unreachable, or refusing because its audit log is down). What memory cannot hold goes to
the host's spool on disk (:mod:`tether.node.audit_spool`), in order; when the host stops,
what is left is sent once more, for at most :data:`FINAL_FLUSH` seconds, and what still
could not be sent is kept in the spool and sent first at the next start: nothing is lost on
the way.

Two ways in: :meth:`AuditBacklog.audit_nowait` never blocks (an SSH session must not stall on
audit) and drops, logged, only what neither memory nor a full spool can take;
:meth:`AuditBacklog.record` waits for room, for a protocol that must not act before its
event is queued (a statement is forwarded only once its ``db.query`` event is).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio

from tether.audit import EVENT_TYPE, HostAuditEvent
from tether.errors import TetherError

if TYPE_CHECKING:
    from tether.node.audit_spool import AuditSpool

__all__ = [
    "AUDIT_BACKLOG",
    "AUDIT_BATCH",
    "AUDIT_LINGER",
    "FINAL_FLUSH",
    "RETRY_MAX",
    "RETRY_MIN",
    "AuditBacklog",
]

log = logging.getLogger(__name__)

#: Events waiting to be sent in memory; beyond this they go to the spool, or without one
#: :meth:`AuditBacklog.audit_nowait` drops them (logged) and :meth:`AuditBacklog.record`
#: waits for room.
AUDIT_BACKLOG = 1000
#: The most events sent in one call.
AUDIT_BATCH = 200
#: How long a batch waits after its first event for more to join it, in seconds: the
#: latest an event reaches auth on a healthy link, and the floor of the interval between calls.
AUDIT_LINGER = 0.05
#: How long a stopping host may spend sending what its backlog still holds, in seconds.
FINAL_FLUSH = 5.0
#: A failed batch is sent again after this many seconds, doubling up to :data:`RETRY_MAX`.
RETRY_MIN = 0.25
RETRY_MAX = 10.0

#: sends one batch to auth; raises TetherError or OSError when it was not recorded
SendBatch = Callable[[Sequence[HostAuditEvent]], Awaitable[None]]


def host_event(
    event_type: str,
    fields: Mapping[str, Any],
    *,
    user: str | None = None,
    success: bool | None = None,
) -> HostAuditEvent:
    """The event as auth records it, named and dated now.

    A node's protocols say who in the fields and fail with a type ending in ``.denied``:
    unless ``user`` is given, it is taken out of the fields, and unless ``success`` is given,
    a ``.denied`` type is recorded as a failure. The proxy says both (its refusals).

    :raises TetherError: the type is not lower-case dotted words, or the fields are not
        JSON: such an event would be refused by auth, and hold up every later one.
    """
    if not EVENT_TYPE.match(event_type):
        raise TetherError(
            f"audit event type {event_type!r} is not valid",
            hint="use lower-case words separated by dots, like ssh.session.start",
        )
    rest = dict(fields)
    if user is None:
        user = str(rest.pop("user", "") or "")
    try:
        json.dumps(rest, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TetherError(f"the fields of audit event {event_type} are not JSON: {exc}") from None
    if success is None:
        success = not event_type.endswith(".denied")
    return HostAuditEvent(event_type, user, rest, success)


class AuditBacklog:
    """The ordered backlog of a host's audit events; :meth:`forward` empties it.

    :param size: events held in memory.
    :param spool: where events go that memory cannot hold, and those a stopping host could
        not send (sent first at the next start); None: they are dropped, logged.
    :param final_flush: seconds a stopping host spends sending what is left.
    :param host: what the host is in its log lines (``node``, ``proxy``).
    """

    def __init__(
        self,
        size: int = AUDIT_BACKLOG,
        batch: int = AUDIT_BATCH,
        linger: float = AUDIT_LINGER,
        *,
        spool: AuditSpool | None = None,
        final_flush: float = FINAL_FLUSH,
        host: str = "node",
    ) -> None:
        self._host = host
        #: the oldest events; every spooled one is newer than all of these
        self._memory: collections.deque[HostAuditEvent] = collections.deque()
        self._size = size
        self._batch = batch
        self._linger = linger
        self._spool = spool
        self._final_flush_seconds = final_flush
        self._arrived = trio.Event()
        self._room = trio.Event()
        self.dropped = 0
        if spool is not None and spool.pending:
            log.warning(
                "%s: %d audit events from before are on disk (%s); sending them first",
                host,
                spool.pending,
                spool.path,
            )
            self._arrived.set()

    def _put(self, event: HostAuditEvent) -> bool:
        """Queue ``event`` after every other: in memory while it has room and nothing is
        spooled, else on disk. False when neither can take it."""
        spool = self._spool
        if len(self._memory) < self._size and not (spool is not None and spool.pending):
            self._memory.append(event)
        elif spool is None or not spool.append([event]):
            return False
        self._arrived.set()
        return True

    def audit_nowait(
        self,
        event_type: str,
        fields: Mapping[str, Any],
        *,
        user: str | None = None,
        success: bool | None = None,
    ) -> None:
        """Queue an event without blocking; one that neither memory nor the spool can take
        is dropped, logged, and so is a malformed event (see :func:`host_event`, which also
        says what ``user`` and ``success`` mean): a session never fails for its audit."""
        try:
            event = host_event(event_type, fields, user=user, success=success)
        except TetherError as exc:
            self.dropped += 1
            log.error("%s: dropped a malformed audit event: %s", self._host, exc)
            return
        if not self._put(event):
            self.dropped += 1
            log.warning(
                "%s: audit backlog full; dropped %s %s", self._host, event_type, dict(fields)
            )

    async def record(self, event_type: str, fields: Mapping[str, Any]) -> None:
        """Queue an event, waiting for room in the backlog rather than dropping it.

        :raises TetherError: the event is malformed (see :func:`host_event`).
        """
        event = host_event(event_type, fields)
        while not self._put(event):
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()
        await trio.lowlevel.checkpoint()

    def _take(self) -> tuple[list[HostAuditEvent], int, int]:
        """The oldest events, at most a batch: ``(events, spool offset, spool lines)``, the
        last two 0 for events from memory."""
        if self._memory:
            return list(itertools.islice(self._memory, self._batch)), 0, 0
        if self._spool is not None and self._spool.pending:
            return self._spool.peek(self._batch)
        return [], 0, 0

    def _sent(self, count: int, offset: int, lines: int) -> None:
        """Forget what auth recorded, and wake whoever waits for room."""
        if lines:
            assert self._spool is not None
            self._spool.advance(offset, lines)
        else:
            for _ in range(count):
                self._memory.popleft()
        self._room.set()

    def _queued(self) -> int:
        return len(self._memory) + (self._spool.pending if self._spool is not None else 0)

    async def forward(self, send: SendBatch) -> None:
        """Send the backlog through ``send`` for as long as it runs: each batch is what
        arrives within the linger of its first event (at most the batch size); a batch
        ``send`` fails is sent again, with backoff and jitter, until it is recorded. Logs once
        per outage. Cancelled, it sends what is left once more, for at most its final flush
        seconds; what it could not send goes to the spool (or is logged as lost)."""
        try:
            while True:
                if not self._queued():
                    if self._arrived.is_set():
                        self._arrived = trio.Event()
                    await self._arrived.wait()
                if self._queued() < self._batch:  # give the first event's batch a moment
                    await trio.sleep(self._linger)
                batch, offset, lines = self._take()
                if batch:
                    await self._send_until_recorded(send, batch)
                self._sent(len(batch), offset, lines)
        finally:
            with trio.CancelScope(shield=True):
                await self._final_flush(send)

    async def _send_until_recorded(self, send: SendBatch, batch: list[HostAuditEvent]) -> None:
        delay = 0.0
        while True:
            try:
                await send(batch)
            except (TetherError, OSError) as exc:
                if not delay:
                    log.warning(
                        "%s: cannot record %d audit events: %s; keeping them and trying again",
                        self._host,
                        len(batch),
                        exc,
                    )
                delay = min(max(2 * delay, RETRY_MIN), RETRY_MAX)
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            if delay:
                log.warning("%s: recording audit events again", self._host)
            return

    async def _final_flush(self, send: SendBatch) -> None:
        if not self._queued():
            return
        with trio.move_on_after(self._final_flush_seconds):
            while self._queued():
                batch, offset, lines = self._take()
                if batch:
                    await self._send_until_recorded(send, batch)
                self._sent(len(batch), offset, lines)
            return
        left = list(self._memory)
        self._memory.clear()
        if self._spool is not None:
            if left:
                self._spool.prepend(left)
            log.warning(
                "%s: stopped with %d audit events auth did not record; kept on disk in %s, "
                "sent at the next start",
                self._host,
                self._spool.pending,
                self._spool.path,
            )
            return
        log.error("%s: stopped with %d audit events auth did not record", self._host, len(left))

    def statistics(self) -> Mapping[str, int]:
        """How many events wait to be sent (on disk among them), and how many were dropped."""
        spooled = self._spool.pending if self._spool is not None else 0
        return {"queued": self._queued(), "spooled": spooled, "dropped": self.dropped}
