"""The node agent's audit backlog, and its forwarding to the auth service in batches.

A protocol records events faster than one HTTP call each could carry (a database service
audits every statement), and auth may be briefly unreachable (restarted, a proxy between
changing). So events wait in one bounded, ordered backlog; one task collects what arrives
within :data:`AUDIT_LINGER` of a batch's first event (up to :data:`AUDIT_BATCH`) and sends it
in one call, so a busy session costs auth a call per interval rather than one per statement,
and keeps a batch that failed and sends it again, with backoff, until auth records it. When
the host stops, what is left is sent once more, for at most :data:`FINAL_FLUSH` seconds:
nothing is lost on the way.

Two ways in: :meth:`AuditBacklog.audit_nowait` never blocks (an SSH session must not stall on
audit) and drops, logged, what a full backlog cannot take; :meth:`AuditBacklog.record` waits
for room, for a protocol that must not act before its event is queued (a statement is
forwarded only once its ``db.query`` event is).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio

from tether.audit import EVENT_TYPE
from tether.errors import TetherError

__all__ = [
    "AUDIT_BACKLOG",
    "AUDIT_BATCH",
    "AUDIT_LINGER",
    "FINAL_FLUSH",
    "RETRY_MAX",
    "RETRY_MIN",
    "AuditBacklog",
    "HostAuditEvent",
]

log = logging.getLogger(__name__)

#: Events waiting to be sent. :meth:`AuditBacklog.audit_nowait` drops (logged) beyond this;
#: :meth:`AuditBacklog.record` waits for room.
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

#: ``(type, user, fields, success)``, as :meth:`tether.auth.http_client.AuthClient.record_events`
#: sends it
HostAuditEvent = tuple[str, str, Mapping[str, Any], bool]
#: sends one batch to auth; raises TetherError or OSError when it was not recorded
SendBatch = Callable[[Sequence[HostAuditEvent]], Awaitable[None]]


def host_event(event_type: str, fields: Mapping[str, Any]) -> HostAuditEvent:
    """The event as auth records it: ``user`` taken out of the fields, a type ending in
    ``.denied`` recorded as a failure.

    :raises TetherError: the type is not lower-case dotted words, or the fields are not
        JSON: such an event would be refused by auth, and hold up every later one.
    """
    if not EVENT_TYPE.match(event_type):
        raise TetherError(
            f"audit event type {event_type!r} is not valid",
            hint="use lower-case words separated by dots, like ssh.session.start",
        )
    rest = dict(fields)
    user = str(rest.pop("user", "") or "")
    try:
        json.dumps(rest, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TetherError(f"the fields of audit event {event_type} are not JSON: {exc}") from None
    return event_type, user, rest, not event_type.endswith(".denied")


class AuditBacklog:
    """The ordered backlog of a host's audit events; :meth:`forward` empties it."""

    def __init__(
        self, size: int = AUDIT_BACKLOG, batch: int = AUDIT_BATCH, linger: float = AUDIT_LINGER
    ) -> None:
        self._send, self._receive = trio.open_memory_channel[HostAuditEvent](size)
        self._batch = batch
        self._linger = linger
        #: the batch being sent: kept until auth has it, for the final flush
        self._sending: list[HostAuditEvent] = []
        self.dropped = 0

    def audit_nowait(self, event_type: str, fields: Mapping[str, Any]) -> None:
        """Queue an event without blocking; a full backlog drops it, logged, and so does a
        malformed event (see :func:`host_event`): a session never fails for its audit."""
        try:
            event = host_event(event_type, fields)
        except TetherError as exc:
            self.dropped += 1
            log.error("node: dropped a malformed audit event: %s", exc)
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            log.warning("node: audit backlog full; dropped %s %s", event_type, dict(fields))

    async def record(self, event_type: str, fields: Mapping[str, Any]) -> None:
        """Queue an event, waiting for room in the backlog rather than dropping it.

        :raises TetherError: the event is malformed (see :func:`host_event`).
        """
        await self._send.send(host_event(event_type, fields))

    async def forward(self, send: SendBatch) -> None:
        """Send the backlog through ``send`` for as long as it runs: each batch is what
        arrives within the linger of its first event (at most the batch size); a batch
        ``send`` fails is sent again, with backoff and jitter, until it is recorded. Logs once
        per outage. Cancelled, it sends what is left once more, for at most
        :data:`FINAL_FLUSH` seconds, and logs what it could not."""
        try:
            async for first in self._receive:
                self._sending = [first]
                with trio.move_on_after(self._linger):
                    while len(self._sending) < self._batch:
                        self._sending.append(await self._receive.receive())
                await self._send_until_recorded(send, self._sending)
                self._sending = []
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
                        "node: cannot record %d audit events: %s; keeping them and trying again",
                        len(batch),
                        exc,
                    )
                delay = min(max(2 * delay, RETRY_MIN), RETRY_MAX)
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            if delay:
                log.warning("node: recording audit events again")
            return

    async def _final_flush(self, send: SendBatch) -> None:
        left = self._sending
        while True:
            try:
                left.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self._sending = []
        if not left:
            return
        recorded = 0
        with trio.move_on_after(FINAL_FLUSH):
            while recorded < len(left):
                batch = left[recorded : recorded + self._batch]
                await self._send_until_recorded(send, batch)
                recorded += len(batch)
            return
        log.error("node: stopped with %d audit events auth did not record", len(left) - recorded)

    def statistics(self) -> Mapping[str, int]:
        """How many events wait to be sent, and how many were dropped."""
        return {"queued": self._send.statistics().current_buffer_used, "dropped": self.dropped}
