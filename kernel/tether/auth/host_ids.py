"""Which host holds each host id, for as long as its certificates last.

A host id is what a host's inventory entry, its tunnel and its SSH host certificate are known
by, so a token must never let one host take over another's. Joins, renewals and heartbeats all
record holds; this module is the one place that reads and writes them.

A hold names the public keys (TLS and SSH) the holder's certificates were issued for, so
that a host whose join answer was lost (its auth server died after recording the hold) can
send the same join again, with the same keys, instead of being locked out of its own id.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping

from tether import pki
from tether.auth.context import AuthContext
from tether.backend import Item, Op
from tether.errors import AccessDenied, AlreadyExists, CompareFailed

__all__ = ["HOST_ID", "HOST_ID_PREFIX", "HostIds", "host_keys"]

#: which host holds each host id, until its certificates expire (renewals extend it)
HOST_ID_PREFIX = "/host_ids/"
#: what a host id (and a cluster name) may look like
HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


def host_keys(ssh_key: pki.SubjectPublicKey, tls_key: pki.SubjectPublicKey) -> dict[str, str]:
    """What a hold records of the keys its holder's certificates certify: their fingerprints
    (``ssh`` as ``ssh-keygen -l`` prints it, ``tls`` of the SubjectPublicKeyInfo)."""
    return {"ssh": pki.ssh_fingerprint(ssh_key), "tls": pki.spki_fingerprint(tls_key)}


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

    async def holder(
        self, host_id: str, *, kind: str | None = None, keys: Mapping[str, str] | None = None
    ) -> Item | None:
        """Whether a join of a host of ``kind`` with the public keys ``keys`` (see
        :func:`host_keys`) may take ``host_id``: None when no host ever held it, or the record
        that the join replaces: of a holder whose certificates expired, or of the same host
        sending its join again (same kind, same keys: the answer to its first join was lost,
        say with the auth server that recorded the hold).

        That exception gives nothing away. The keys are public (a host's certificate carries
        them), so a token holder can send a join naming another host's id and keys; what it
        gets back certifies keys whose private halves it does not have, which it cannot use
        (no TLS handshake, no SSH host authentication), and the host's own certificates stay
        valid. Both keys must match: the TLS key alone would let it get an SSH host
        certificate for a key of its own under the host's id. A record from before holds named
        keys (or of a host that heartbeats without having joined since) matches no join.

        :raises AccessDenied: another host holds it: a token cannot take over another host's
            id, with which it would stand in for that host (its inventory entry, its tunnel).
        """
        item = await self._ctx.backend.get(HOST_ID_PREFIX + host_id)
        if item is None:
            return None
        holder = json.loads(item.value)
        expires = datetime.datetime.fromisoformat(str(holder["expires"]))
        if expires <= self._ctx.now():
            return item
        if keys and holder.get("keys") == dict(keys) and holder["kind"] == kind:
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
        keys: Mapping[str, str] | None = None,
    ) -> None:
        """Record that ``host_id`` is held by a host of ``kind`` until ``expires``.

        :param replaces: for a join, the record it replaces (see :meth:`holder`), or None
            when the id was free, so that two joins racing for one id cannot both win; True
            for a host that proved it holds the id (a renewal) or needs no proof (one in this
            process).
        :param keys: the public keys the holder's certificates certify (:func:`host_keys`),
            with which the same host may join again while it holds the id.
        :raises AccessDenied: another join took the id meanwhile.
        """
        record: dict[str, object] = {"kind": kind, "hostname": hostname, "expires": expires}
        if keys:
            record["keys"] = dict(keys)
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
