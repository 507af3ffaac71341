"""What the cluster's hosts report: their inventory entries (checked for the addresses a proxy
will dial), the proxies' tunnel heartbeats (which the remote clusters' status is computed
from, see :mod:`tether.auth.remote_clusters`), and the audit events hosts record.

Separate because every caller here is a host identity, never a user, and what they report is
short-lived state kept with a TTL, not resources admins edit.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import attrs

from tether import audit, pki
from tether.auth.context import AuthContext
from tether.auth.host_ids import HOST_ID, HostIds
from tether.auth.joins import JOIN_ROLES
from tether.auth.remote_clusters import HEARTBEAT_PREFIX, REMOTE_OFFLINE_AFTER
from tether.auth.target_lookup import TargetIndex
from tether.backend import Op
from tether.config import HostPort
from tether.durations import format_duration
from tether.errors import AccessDenied, AlreadyExists, CompareFailed, TetherError
from tether.resources import (
    Resource,
    ResourceKind,
    resource_from_bytes,
    resource_from_dict,
    resource_to_bytes,
)
from tether.token_types import host_roles

__all__ = [
    "HEARTBEAT_PREFIX",
    "HEARTBEAT_TTL",
    "MAX_PUBLISH_TTL",
    "MIN_PUBLISH_TTL",
    "REMOTE_OFFLINE_AFTER",
    "Inventory",
    "RelayedEntry",
]

#: a tunnel that has not heartbeated for this long is forgotten by storage (or twice the
#: keep-alive's dead time, if longer)
HEARTBEAT_TTL = 600.0
#: How long a published inventory entry may live between heartbeats.
MIN_PUBLISH_TTL = datetime.timedelta(seconds=5)
MAX_PUBLISH_TTL = datetime.timedelta(hours=1)
_EVENT_TYPE = audit.EVENT_TYPE
#: relayed hosts' certificates kept verified at most (a few times a large cluster's hosts)
MAX_VERIFIED_HOSTS = 100_000


def _local_host(host: str) -> bool:
    """Whether a dial to ``host`` stays on the dialling machine (loopback, or unspecified,
    which Linux connects to the loopback)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _reaches(addr: HostPort, listener: HostPort) -> bool:
    """Whether dialling ``addr`` may reach ``listener``. Unsure counts as yes: a listener on
    every interface answers on any of the host's names, which auth cannot list."""
    if addr.port != listener.port:
        return False
    if listener.is_unspecified or addr.host == listener.host:
        return True
    return _local_host(addr.host) and _local_host(listener.host)


@attrs.frozen
class RelayedEntry:
    """An inventory entry a proxy relays for a host: the certificate the host's tunnel
    presented (DER), the entry as the host sent it, and the TTL it asked for."""

    cert: bytes
    resource: Mapping[str, Any]
    ttl_seconds: float
    #: the host's tunnel to that proxy closed: remove the entry, if it is still the one that
    #: proxy relayed ``relayed_ago`` seconds ago (a host that moved to another proxy may have
    #: published it again since, through its new tunnel, and stays listed)
    removed: bool = False
    relayed_ago: float = 0.0


class Inventory:
    """The hosts' reports, checked against the identity of the host that sends them."""

    def __init__(self, ctx: AuthContext, *, host_ids: HostIds, targets: TargetIndex) -> None:
        self._ctx = ctx
        self._targets = targets
        self._host_ids = host_ids
        #: the addresses this cluster's services in this process listen on, by service (the
        #: daemon fills it once they are bound): no host may register one as its own
        self.service_addrs: dict[str, HostPort] = {}
        #: relayed hosts' certificates verified under :attr:`_verified_revision` of the trust
        self._verified: dict[bytes, tuple[pki.Identity, frozenset[str]]] = {}
        self._verified_revision = ""

    async def publish(
        self,
        identity: pki.Identity,
        resource: Resource,
        ttl: datetime.timedelta,
        *,
        host_names: Collection[str] = (),
    ) -> None:
        """Store an inventory entry of a host (a node's ``node``), expiring after ``ttl``.

        Hosts call this on every heartbeat; an entry not renewed in time disappears, so the
        inventory shows only hosts that are alive. A host may publish only a kind whose
        ``published_by`` is its identity kind and, if the kind names a ``publisher_role``,
        only if its certificate carries that host role; only entries that belong to it (its
        host id is the entry's name, or the kind's ``publisher`` of the entry), and never
        one whose name a live entry of another host holds; an address the proxy will dial
        (:attr:`~tether.resources.ResourceKind.dialed_addr`) must be on a host among
        ``host_names`` (what the caller's certificate names) and be none of the cluster's
        own listening addresses. Each refusal is audited as ``host.publish.refused``.
        """
        checked = await self._checked(identity, resource, ttl, host_names)
        if checked is not None:
            await self._apply([checked])
        await self._host_ids.keep(identity)

    async def _apply(self, checked: Sequence[tuple[Op, Resource]]) -> None:
        """Store checked entries in one write, kept decoded for the listings that follow."""
        try:
            revision = await self._ctx.backend.apply([op for op, _ in checked])
        except CompareFailed:
            # a removal raced a write of its entry (the host published it again): keep what
            # was published, store the rest
            kept = [(op, res) for op, res in checked if op.type != "delete"]
            if len(kept) == len(checked):
                raise
            if kept:
                await self._apply(kept)
            return
        for op, resource in checked:
            if op.type == "delete":
                self._targets.written(op, revision)
            else:
                stored = self._ctx.decoded.written(op.key, revision, resource)
                self._targets.written(op, revision, stored)

    async def _removal(
        self, identity: pki.Identity, resource: Resource, entry: RelayedEntry
    ) -> tuple[Op, Resource] | None:
        """The delete of a relayed entry whose host's tunnel closed, or None when there is
        nothing of that host's to delete. Only an entry the host may publish, stored as its
        own, and stored no later than the proxy relayed it: a host claiming another's name
        cannot get that entry removed, and one that published it again through another
        tunnel since stays listed."""
        kind = self._ctx.registry.get(resource.kind)
        self._check_publisher(identity, kind, resource)  # AccessDenied: not its entry
        key = kind.key_for(resource)
        item = await self._ctx.backend.get(key)
        if item is None:
            return None
        try:
            stored = resource_from_bytes(item.value, self._ctx.registry)
        except TetherError:  # unreadable (a plugin changed its spec): expires by itself
            return None
        if kind.publisher_of(stored) != identity.username or stored.metadata.expires is None:
            return None
        published = stored.metadata.expires - datetime.timedelta(seconds=entry.ttl_seconds)
        relayed = self._ctx.now() - datetime.timedelta(seconds=max(entry.relayed_ago, 0.0))
        if published > relayed:
            return None  # published again since, through another tunnel
        return Op.delete(key, expected_revision=item.revision), stored

    async def publish_relayed(
        self,
        proxy: pki.Identity,
        entries: Sequence[RelayedEntry],
        *,
        verify: Callable[[bytes], pki.Identity],
        trust_revision: str,
    ) -> list[str | None]:
        """Store the entries a proxy relays for the nodes whose tunnels it holds (their
        inventory heartbeats, :class:`tether.tunnel.heartbeats.InventoryRecorder`), in one
        backend write. Each entry is checked exactly as :meth:`publish` checks it, as the
        host whose certificate the proxy passes on (the one its tunnel presented, verified
        here: the proxy cannot name a host it holds no certificate of). An entry marked
        ``removed`` (the host's tunnel closed) is deleted, if it is that host's and not
        published again since (see :meth:`_removal`). Returns, for each entry, None when
        stored (or removed) or why it was refused.
        """
        if proxy.kind != "proxy" or proxy.cluster != self._ctx.cluster_name:
            raise AccessDenied("only the cluster's proxies may relay their hosts' inventory")
        if trust_revision != self._verified_revision:
            self._verified.clear()
            self._verified_revision = trust_revision
        ops: dict[str, tuple[Op, Resource]] = {}
        hosts: dict[str, pki.Identity] = {}
        results: list[str | None] = []
        for entry in entries:
            try:
                identity, host_names = self._verified_host(entry.cert, verify)
                resource = resource_from_dict(
                    entry.resource, self._ctx.registry, source="relayed inventory entry"
                )
                if entry.removed:
                    removal = await self._removal(identity, resource, entry)
                    if removal is not None:
                        ops[removal[0].key] = removal
                    results.append(None)
                    continue
                checked = await self._checked(
                    identity, resource, datetime.timedelta(seconds=entry.ttl_seconds), host_names
                )
            except TetherError as exc:
                results.append(exc.message)
                continue
            if checked is not None:
                ops[checked[0].key] = checked  # a key once per batch: the newest report wins
            hosts[identity.username] = identity
            results.append(None)
        if ops:
            await self._apply(list(ops.values()))
        for identity in hosts.values():
            await self._host_ids.keep(identity)
        return results

    def _verified_host(
        self, cert: bytes, verify: Callable[[bytes], pki.Identity]
    ) -> tuple[pki.Identity, frozenset[str]]:
        """The identity and host names of a relayed host's certificate, verified once per
        certificate and trust revision (a node's certificate lasts hours; its heartbeats come
        every few seconds) and checked for expiry each time."""
        found = self._verified.get(cert)
        if found is None:
            identity = verify(cert)
            if len(self._verified) >= MAX_VERIFIED_HOSTS:  # renewals leave old ones behind
                self._verified.clear()
            found = self._verified[cert] = (identity, pki.x509_host_names(cert))
        elif found[0].expires <= self._ctx.now():
            del self._verified[cert]
            raise AccessDenied(f"the certificate of {found[0].label} has expired")
        return found

    async def _checked(
        self,
        identity: pki.Identity,
        resource: Resource,
        ttl: datetime.timedelta,
        host_names: Collection[str],
    ) -> tuple[Op, Resource] | None:
        """Check an entry (see :meth:`publish`); the write that stores it and the entry as
        stored, or None when a freely named entry was stored here already (with the compare
        its name needs)."""
        ctx = self._ctx
        kind = ctx.registry.get(resource.kind)
        if not MIN_PUBLISH_TTL <= ttl <= MAX_PUBLISH_TTL:
            raise TetherError(
                f"publish ttl {format_duration(ttl)} is out of range "
                f"({format_duration(MIN_PUBLISH_TTL)} to {format_duration(MAX_PUBLISH_TTL)})"
            )
        try:
            self._check_publisher(identity, kind, resource)
            if kind.dialed_addr is not None:
                await self._check_dialed_addr(identity, kind.dialed_addr(resource), host_names)
            stamped = attrs.evolve(
                resource, metadata=attrs.evolve(resource.metadata, expires=ctx.now() + ttl)
            )
            value = resource_to_bytes(stamped)
            if kind.publisher is None:  # named by the host id: nobody else may take it
                return Op.put(kind.key_for(stamped), value, ttl=ttl.total_seconds()), stamped
            await self._put_unless_taken(identity, kind, stamped, value, ttl)
            return None
        except AccessDenied as exc:
            fields = {"role": identity.kind, "kind": kind.name, "name": resource.metadata.name}
            await ctx.audit_event(
                "host.publish.refused",
                identity.username,
                {**fields, "reason": exc.message},
                success=False,
            )
            raise

    def _check_publisher(
        self, identity: pki.Identity, kind: ResourceKind, resource: Resource
    ) -> None:
        """Refuse an entry of a kind this host may not publish (another identity kind's, or
        one needing a host role its certificate does not carry), or that is not its own."""
        who = f"{identity.kind} {identity.username!r}"
        if kind.published_by is None or kind.published_by != identity.kind:
            raise AccessDenied(f"{who} may not publish {kind.name}")
        if kind.publisher_role is not None and kind.publisher_role not in host_roles(identity):
            held = ", ".join(host_roles(identity)) or "none"
            raise AccessDenied(
                f"{who} may not publish {kind.name}: that needs host role "
                f"{kind.publisher_role}, and its certificate carries {held}",
                hint="join the host again with a token for that role as well",
            )
        name = resource.metadata.name
        if identity.cluster != self._ctx.cluster_name:
            raise AccessDenied(
                f"{who} of cluster {identity.cluster!r} may only publish its own {kind.name} "
                f"entry, not {name!r}"
            )
        if kind.publisher is None and name != identity.username:
            raise AccessDenied(
                f"{who} of cluster {identity.cluster!r} may only publish its own {kind.name} "
                f"entry, not {name!r}"
            )
        owner = kind.publisher_of(resource)
        if owner != identity.username:
            raise AccessDenied(
                f"{who} may only publish {kind.name} entries it serves, not {name!r}, which "
                f"names host {owner!r}"
            )

    async def _put_unless_taken(
        self,
        identity: pki.Identity,
        kind: ResourceKind,
        stamped: Resource,
        value: bytes,
        ttl: datetime.timedelta,
    ) -> None:
        """Store an entry of a freely named kind, unless a live entry of that name belongs to
        another host: a host must not take over what another serves (an expired entry may be
        taken). Written only if the stored entry is still the one checked."""
        ctx = self._ctx
        key = kind.key_for(stamped)
        name = stamped.metadata.name
        item = await ctx.backend.get(key)
        if item is not None:
            try:
                stored: Resource | None = resource_from_bytes(item.value, ctx.registry)
            except TetherError:  # unreadable (a plugin changed its spec): nobody's
                stored = None
            if stored is not None and not ctx.expired(stored):
                owner = kind.publisher_of(stored)
                if owner != identity.username:
                    raise AccessDenied(
                        f"{kind.name} {name!r} is served by host {owner}; {kind.name} names "
                        "are unique in a cluster",
                        hint=f"give it another name on this host, or stop serving it on host "
                        f"{owner} (its entry then expires)",
                    )
        expected = item.revision if item is not None else 0
        op = Op.put(key, value, ttl=ttl.total_seconds(), expected_revision=expected)
        try:
            revision = await ctx.backend.apply([op])
        except (CompareFailed, AlreadyExists):
            raise AccessDenied(
                f"{kind.name} {name!r} was published by another host at the same moment",
                hint="it is tried again at the next heartbeat",
            ) from None
        self._targets.written(op, revision, ctx.decoded.written(key, revision, stamped))

    async def _check_dialed_addr(
        self, identity: pki.Identity, text: str, host_names: Collection[str]
    ) -> None:
        """Refuse an address a host asks the proxy to dial unless it is on a host its
        certificate names, and none of the cluster's own services' (the proxy dialling its own
        port or auth's would hand a user a raw connection to it)."""
        if not text:
            return
        who = f"{identity.kind} {identity.username!r}"
        try:
            addr = HostPort.parse(text)
        except ValueError as exc:
            raise AccessDenied(f"{who} registers an unusable address: {exc}") from None
        if addr.host not in host_names:
            names = ", ".join(sorted(host_names)) or "none"
            raise AccessDenied(
                f"{who} may register an address only on a host its certificate names "
                f"({names}), not {text}",
                hint="set the node's public_addr to one of them, or join again with a token "
                "for the new name",
            )
        for service, listener in await self._listening_addrs():
            if _reaches(addr, listener):
                raise AccessDenied(
                    f"{who} may not register {text}: it is the address of this cluster's "
                    f"{service} ({listener})",
                    hint="give the node an SSH listen_addr (or public_addr) of its own",
                )

    async def _listening_addrs(self) -> list[tuple[str, HostPort]]:
        """The cluster's own listening addresses: of the services in this process, and every
        proxy's public address as it published it."""
        found = [(service, addr) for service, addr in self.service_addrs.items()]
        kind = self._ctx.registry.get("proxy")
        for item in await self._ctx.backend.range(kind.storage_prefix):
            proxy = resource_from_bytes(item.value, self._ctx.registry)
            with contextlib.suppress(ValueError):
                found.append(
                    (f"proxy {proxy.metadata.name!r}", HostPort.parse(proxy.spec.public_addr))
                )
        return found

    async def record_tunnel_heartbeats(
        self, identity: pki.Identity, records: Sequence[Mapping[str, Any]]
    ) -> None:
        """Store one proxy's batch of tunnel heartbeats (see
        :class:`tether.tunnel.heartbeats.HeartbeatRecorder`), each under
        ``/tunnels/<cluster>/<proxy>/<agent>`` with a TTL, which is what a remote_cluster's
        ``connection`` is computed from. The proxy is the caller, never a field of the batch.
        """
        if identity.kind != "proxy" or identity.cluster != self._ctx.cluster_name:
            raise AccessDenied("only the cluster's proxies may record tunnel heartbeats")
        ops = []
        now = self._ctx.clock()
        # kept at least as long as the leaf counts as online by it
        ttl = max(HEARTBEAT_TTL, 2 * self._ctx.keep_alive.dead_after)
        for i, record in enumerate(records):
            cluster, agent = record.get("cluster"), record.get("agent")
            when, status = record.get("last_heartbeat"), record.get("status")
            if not (
                isinstance(cluster, str)
                and HOST_ID.match(cluster)
                and isinstance(agent, str)
                and agent
                and "/" not in agent
                and isinstance(when, int | float)
                and isinstance(status, dict)
            ):
                raise TetherError(
                    f"heartbeat {i} is malformed",
                    hint="expected cluster, agent, last_heartbeat (a number) and status",
                )
            value = {
                "cluster": cluster,
                "proxy": identity.username,
                "agent": agent,
                "last_heartbeat": min(float(when), now),  # never from the future
                "status": status,
            }
            key = f"{HEARTBEAT_PREFIX}{cluster}/{identity.username}/{agent}"
            ops.append(Op.put(key, json.dumps(value, default=str).encode(), ttl=ttl))
        await self._ctx.backend.apply(ops)

    async def record_host_event(
        self,
        identity: pki.Identity,
        event_type: str,
        user: str,
        fields: Mapping[str, Any],
        *,
        success: bool,
    ) -> None:
        """Record an audit event reported by one of the cluster's hosts (a proxy's refused
        dial), named and dated now. The event names the host that reported it."""
        await self.record_host_events(
            identity, [audit.HostAuditEvent(event_type, user, fields, success)]
        )

    async def record_host_events(
        self, identity: pki.Identity, events: Sequence[audit.HostAuditEvent]
    ) -> None:
        """Record events reported by one of the cluster's hosts, in order. All are checked
        before any is recorded, so that a refused batch records nothing and the host may send
        it again.

        Each keeps the time the host gave it (one in the future, from a host whose clock is
        ahead, is dated now) and is stored under an id derived from the host's name and the
        host's id for it (:func:`tether.audit.stored_host_event_id`): a batch sent twice is
        recorded once by a sink that keys events by id, and no host can name an event so
        that another host's is taken for it.

        :raises TetherError: an event type or id is not valid, or its time is not a time,
            naming the event (1-based).
        """
        ctx = self._ctx
        if identity.kind not in JOIN_ROLES or identity.cluster != ctx.cluster_name:
            raise AccessDenied(f"{identity.kind} {identity.username!r} may not record events")
        now = ctx.now()
        recorded = []
        for i, event in enumerate(events, start=1):
            where = f"audit event {i} of {len(events)}: " if len(events) > 1 else ""
            if not _EVENT_TYPE.match(event.type):
                raise TetherError(
                    f"{where}audit event type {event.type!r} is not valid",
                    hint="use lower-case words separated by dots, like ssh.session.start",
                )
            if not audit.HOST_EVENT_ID.match(event.id):
                raise TetherError(
                    f"{where}audit event id {event.id!r} is not valid",
                    hint="at most 64 letters, digits, '-' and '_'",
                )
            try:
                when = datetime.datetime.fromtimestamp(event.time, datetime.UTC)
            except (OverflowError, OSError, ValueError):
                raise TetherError(f"{where}audit event time {event.time!r} is not a time") from None
            recorded.append(
                audit.AuditEvent(
                    type=event.type,
                    cluster=ctx.cluster_name,
                    user=event.user,
                    success=event.success,
                    time=min(when, now),
                    id=audit.stored_host_event_id(ctx.cluster_name, identity.username, event.id),
                    fields={**event.fields, "host": identity.username},
                )
            )
        await ctx.record_audit(recorded)
