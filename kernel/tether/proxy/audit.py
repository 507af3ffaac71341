"""The proxy's own audit events (what it refused), kept until auth records them.

A proxy audits what it refuses before any auth decision: a tunnel from a cluster it does not
trust, a port a user may not dial, a stream a root may not open, a request body too large.
Those refusals happen most when something is wrong, which is also when auth may be out of
reach (restarting, failing over, its audit log down), so each event joins an ordered
backlog that one task sends to auth in batches and, while auth cannot take them, keeps in
memory and then on disk (:class:`~tether.node.audit_forwarding.AuditBacklog`, the node
agent's, with a spool of its own), rather than being logged and lost. Refusals are rare and
an auditor looks for them at once: a batch leaves as soon as the task runs, without the
node's linger.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import trio

from tether.node.audit_forwarding import AuditBacklog, SendBatch
from tether.node.audit_spool import AuditSpool

__all__ = ["PROXY_AUDIT_SPOOL_FILE", "ProxyAudit"]

#: The spool's name in the proxy's data directory (a node of the same process has its own).
PROXY_AUDIT_SPOOL_FILE = "proxy-audit-backlog.jsonl"


class ProxyAudit:
    """Records this proxy's audit events; :meth:`run` sends them to auth.

    :param data_dir: the proxy's data directory, where events auth cannot take yet wait
        (and those left when the proxy stops, sent first at its next start).
    """

    def __init__(self, data_dir: pathlib.Path) -> None:
        self._backlog = AuditBacklog(
            linger=0.0, spool=AuditSpool(data_dir / PROXY_AUDIT_SPOOL_FILE), host="proxy"
        )

    async def record_event(
        self, event_type: str, user: str, fields: Mapping[str, Any], *, success: bool = True
    ) -> None:
        """Queue an event of this proxy; *user* is empty when nobody is known. Never fails
        and never waits for auth: a malformed event, or one neither memory nor a full spool
        can take, is dropped and logged (see :meth:`AuditBacklog.audit_nowait`)."""
        self._backlog.audit_nowait(event_type, fields, user=user, success=success)
        await trio.lowlevel.checkpoint()

    async def run(self, send: SendBatch) -> None:
        """Send the queued events through ``send`` (the auth client's ``record_events``)
        until cancelled; then send what is left once more, and spool what could not be."""
        await self._backlog.forward(send)
