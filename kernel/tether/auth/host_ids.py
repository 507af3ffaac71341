"""Which host holds each host id, for as long as its certificates last.

A host id is what a host's inventory entry, its tunnel and its SSH host certificate are known
by, so a token must never let one host take over another's. Joins, renewals and heartbeats all
record holds; this module is the one place that reads and writes them.
"""

from __future__ import annotations

import datetime
import json
import re

from tether import pki
from tether.auth.context import AuthContext
from tether.backend import Item, Op
from tether.errors import AccessDenied, AlreadyExists, CompareFailed

__all__ = ["HOST_ID", "HOST_ID_PREFIX", "HostIds"]

#: which host holds each host id, until its certificates expire (renewals extend it)
HOST_ID_PREFIX = "/host_ids/"
#: what a host id (and a cluster name) may look like
HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class HostIds:
    """The holds on host ids, stored under :data:`HOST_ID_PREFIX` with the certificates' TTL."""

    def __init__(self, ctx: AuthContext) -> None:
        self._ctx = ctx
        #: host id -> the certificate expiry whose hold this process has seen recorded
        self._kept: dict[str, datetime.datetime] = {}

    async def hold_own(self) -> None:
        """Hold this host's id (``nodename``), which the certificates of auth and of the
        proxy in its process carry, so that no node token joins under it: for as long as a
        host's certificates last. Called at start and whenever those certificates renew."""
        config = self._ctx.config
        nodename = config.nodename
        expires = self._ctx.now() + config.auth_service.host_cert_ttl
        await self.hold(nodename, "auth", nodename, expires, replaces=True)

    async def holder(self, host_id: str) -> Item | None:
        """Whether a join may take ``host_id``: None when no host ever held it, or the
        record of a holder whose certificates expired (which the join replaces).

        :raises AccessDenied: a host holds it: a token cannot take over another host's id,
            with which it would stand in for that host (its inventory entry, its tunnel).
        """
        item = await self._ctx.backend.get(HOST_ID_PREFIX + host_id)
        if item is None:
            return None
        holder = json.loads(item.value)
        expires = datetime.datetime.fromisoformat(str(holder["expires"]))
        if expires <= self._ctx.now():
            return item
        raise AccessDenied(
            f"host id {host_id!r} is held by {holder['kind']} {holder['hostname']!r} until "
            f"{expires:%Y-%m-%d %H:%M} UTC; a join cannot take another host's id",
            hint="join with an id of its own (a node makes one in its data directory's host_uuid)",
        )

    async def hold(
        self,
        host_id: str,
        kind: str,
        hostname: str,
        expires: datetime.datetime,
        replaces: Item | bool | None,
    ) -> None:
        """Record that ``host_id`` is held by a host of ``kind`` until ``expires``.

        :param replaces: for a join, the expired record it replaces, or None when the id was
            free, so that two joins racing for one id cannot both win; True for a host that
            proved it holds the id (a renewal) or needs no proof (one in this process).
        :raises AccessDenied: another join took the id meanwhile.
        """
        record = {"kind": kind, "hostname": hostname, "expires": expires}
        if replaces is True:
            expected: int | None = None
        else:
            expected = replaces.revision if isinstance(replaces, Item) else 0
        lifetime = (expires - self._ctx.now()).total_seconds()
        op = Op.put(
            HOST_ID_PREFIX + host_id,
            json.dumps(record, default=str).encode(),
            ttl=max(lifetime, 1.0),
            expected_revision=expected,
        )
        try:
            await self._ctx.backend.apply([op])
        except (AlreadyExists, CompareFailed):
            raise AccessDenied(
                f"host id {host_id!r} was taken by another join at the same time",
                hint="join with an id of its own",
            ) from None

    async def keep(self, identity: pki.Identity) -> None:
        """Hold the id of a host that publishes with a certificate for it, as long as that
        certificate lasts. Joins and renewals record their ids; a host that joined before
        ids were recorded gets its record at its next heartbeat, so that no token can take
        its id meanwhile. Costs a read only once per certificate and process."""
        if self._kept.get(identity.username) == identity.expires:
            return
        item = await self._ctx.backend.get(HOST_ID_PREFIX + identity.username)
        held = (
            datetime.datetime.fromisoformat(str(json.loads(item.value)["expires"]))
            if item is not None
            else None
        )
        if held is None or held < identity.expires:
            try:
                await self.hold(
                    identity.username,
                    identity.kind,
                    identity.username,
                    identity.expires,
                    replaces=item,
                )
            except AccessDenied:
                return  # a join or renewal wrote it meanwhile: try at the next heartbeat
        self._kept[identity.username] = identity.expires
