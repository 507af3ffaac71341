"""The auth service's trust snapshot, kept in step with the store by a watch.

What a cluster trusts (its own and other clusters' CAs, the trusted_clusters, the SSH user CAs
nodes accept, the roles) is read from the backend into one :class:`~tether.trust.ClusterTrust`
and rebuilt whenever a watch on the backend reports a change under the prefixes it is made of.
Nothing in this process has to announce a change: a write by another auth server sharing the
store reaches this one the same way as its own, and proxies and nodes wait on the result
(``GET /v1/trust?known=REV&wait=SECONDS``) instead of polling.

The revision that names a snapshot comes from the store, not from a counter of this process,
so every auth server of one store names a snapshot after the same stored state: the highest
revision among the items it is built from, and how many items there are. A later put raises
the first; a delete lowers the count without raising it, and no two different sets of live
items can share both (a set with the same highest revision is a subset of the earlier one, so
the same count means the same set): one name never means two snapshots, whichever server gave
it. A write that leaves the snapshot as it was (a role stored again as it is) keeps the name
it had, so hosts download nothing; a server that read the store only after such a write names
the same snapshot after the later state, which costs a host that moves to it one download.
That is why auth, at each start, writes only the CAs that differ from the stored ones
(:func:`tether.auth.authorities.publish`): a restarted server names the snapshot as before.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterable
from typing import Any, TypeVar

import attrs
import trio
from cryptography import x509

from tether import pki
from tether.auth.watching import watch_prefixes
from tether.backend import Backend, Event, Item, WatchOverflow
from tether.errors import TetherError
from tether.plugins import TetherPluginManager
from tether.resources import KindRegistry, Resource, resource_from_bytes
from tether.trust import ClusterTrust
from tether.trust.watches import MAX_WAIT, WATCHES_PER_CALLER, TrustWatches

__all__ = [
    "COALESCE",
    "MAX_WAIT",
    "WATCHES_PER_CALLER",
    "TrustFeed",
    "TrustItems",
    "other_tls_cas",
    "trusts",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How long the feed lets a burst of writes (a join stores several CAs) gather before it
#: rebuilds the snapshot and wakes the waiters, so that the burst costs one rebuild and one
#: download per waiter.
COALESCE = 0.05
#: the resource kinds a snapshot is made of
_KINDS = ("cert_authority", "trusted_cluster", "role")


async def other_tls_cas(
    backend: Backend, registry: KindRegistry, cluster_name: str
) -> dict[str, list[x509.Certificate]]:
    """The X.509 CAs of the clusters ``cluster_name`` trusts (its leaves' and its roots'),
    read from the store."""
    kind = registry.get("cert_authority")
    found: dict[str, list[x509.Certificate]] = {}
    for item in await backend.range(kind.storage_prefix + "tls/"):
        ca = resource_from_bytes(item.value, registry)
        if ca.spec.cluster_name == cluster_name:
            continue
        certs = [pki.load_cert(pem.encode()) for pem in ca.spec.active_keys.tls]
        found.setdefault(ca.spec.cluster_name, []).extend(certs)
    return found


async def trusts(backend: Backend, registry: KindRegistry, cluster_name: str, other: str) -> bool:
    """Whether ``cluster_name`` holds ``other``'s X.509 CA (a handshake happened)."""
    kind = registry.get("cert_authority")
    return other != cluster_name and await backend.get(kind.key(f"tls/{other}")) is not None


@attrs.define
class TrustItems:
    """The stored items a snapshot is made of, and the snapshot built from them (sans-IO:
    fed items and events, it never reads the store itself).

    What each item contributes (a cluster's parsed X.509 CAs, its SSH user CA lines, a
    trusted_cluster, a role) is kept by key and worked out again only for the items that
    changed since the last build: a join of the thousandth leaf decodes one resource and
    parses one certificate, and the other clusters' certificates stay the same objects from
    snapshot to snapshot (whoever caches something per certificate keeps it).
    """

    cluster_name: str
    own_cas: tuple[x509.Certificate, ...]
    registry: KindRegistry
    items: dict[str, Item] = attrs.field(factory=dict)
    #: keys put or deleted since the last build
    _changed: set[str] = attrs.field(factory=set)
    #: each item's part of the snapshot, by key: ("tls", cluster, certs), ("user", cluster,
    #: lines), ("trusted_cluster", name, resource) or ("role", name, resource)
    _parts: dict[str, tuple[str, str, Any]] = attrs.field(factory=dict)
    #: the X.509 CAs of other clusters, and the SSH user CA lines of every cluster, by
    #: cluster, then by the key of the item they came from
    _tls: dict[str, dict[str, tuple[x509.Certificate, ...]]] = attrs.field(factory=dict)
    _user: dict[str, dict[str, tuple[str, ...]]] = attrs.field(factory=dict)
    #: the same, each cluster's in one tuple (in key order), as the snapshot holds them
    _tls_flat: dict[str, tuple[x509.Certificate, ...]] = attrs.field(factory=dict)
    _user_flat: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    _trusted: dict[str, Resource] = attrs.field(factory=dict)
    _roles: dict[str, Resource] = attrs.field(factory=dict)
    #: the PEM each certificate in ``_tls`` was parsed from, by the certificate object's
    #: identity
    _pems: dict[int, tuple[x509.Certificate, str]] = attrs.field(factory=dict)

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The key prefixes the snapshot is made of: X.509 and SSH user CAs (not host CAs),
        trusted_clusters, roles."""
        cas = self.registry.get("cert_authority").storage_prefix
        return (
            cas + "tls/",
            cas + "user/",
            self.registry.get("trusted_cluster").storage_prefix,
            self.registry.get("role").storage_prefix,
        )

    def reset(self, items: Iterable[Item]) -> None:
        """Replace every item (a fresh read of the prefixes)."""
        self._changed.update(self.items)
        self.items = {item.key: item for item in items}
        self._changed.update(self.items)

    def apply(self, event: Event) -> None:
        """Apply one watch event."""
        if event.type == "put":
            self.items[event.item.key] = event.item
        else:
            self.items.pop(event.item.key, None)
        self._changed.add(event.item.key)

    @property
    def revision(self) -> str:
        """The snapshot's name: the store's revision of its newest item and the item count
        (see the module's docstring for why this is unique)."""
        newest = max((item.revision for item in self.items.values()), default=0)
        return f"{newest}.{len(self.items)}"

    def pem_of(self, cert: x509.Certificate) -> str:
        """The PEM ``cert`` was parsed from (encoded afresh for one not parsed here)."""
        hit = self._pems.get(id(cert))
        if hit is not None and hit[0] is cert:
            return hit[1]
        return pki.cert_to_pem(cert).decode()

    def build(self) -> ClusterTrust:
        """The snapshot of the current items. An item that does not decode is logged and left
        out: one bad resource must not take every other cluster's trust with it."""
        clusters: set[str] = set()  # whose CAs changed
        for key in sorted(self._changed):
            clusters.update(self._forget(key))
            item = self.items.get(key)
            if item is not None:
                clusters.update(self._learn(item))
        self._changed.clear()
        for name in clusters:
            _flatten(self._tls, self._tls_flat, name)
            _flatten(self._user, self._user_flat, name)
        return ClusterTrust.build(
            self.cluster_name,
            self.own_cas,
            self._tls_flat,
            [self._trusted[k] for k in sorted(self._trusted)],
            user_cas=self._user_flat,
            roles=[self._roles[k] for k in sorted(self._roles)],
        )

    def _forget(self, key: str) -> tuple[str, ...]:
        """Take back what the item under ``key`` contributed; returns the cluster whose CAs
        it held, if it did."""
        part = self._parts.pop(key, None)
        if part is None:
            return ()
        what, name, value = part
        if what in ("tls", "user"):
            by_cluster = self._tls if what == "tls" else self._user
            by_key = by_cluster[name]
            del by_key[key]
            if not by_key:
                del by_cluster[name]
            if what == "tls":
                for cert in value:
                    self._pems.pop(id(cert), None)
            return (name,)
        if what == "trusted_cluster":
            del self._trusted[key]
        else:
            del self._roles[key]
        return ()

    def _learn(self, item: Item) -> tuple[str, ...]:
        """Work out and keep what ``item`` contributes; returns the cluster whose CAs it
        holds, if it does."""
        key = item.key
        try:
            resource = resource_from_bytes(item.value, self.registry)
            if key.startswith(self.registry.get("trusted_cluster").storage_prefix):
                self._trusted[key] = resource
                self._parts[key] = ("trusted_cluster", resource.metadata.name, resource)
            elif key.startswith(self.registry.get("role").storage_prefix):
                self._roles[key] = resource
                self._parts[key] = ("role", resource.metadata.name, resource)
            elif key.startswith(self.registry.get("cert_authority").storage_prefix):
                spec = resource.spec
                if spec.type == "tls" and spec.cluster_name != self.cluster_name:
                    pems = list(spec.active_keys.tls)
                    certs = tuple(pki.load_cert(pem.encode()) for pem in pems)
                    self._tls.setdefault(spec.cluster_name, {})[key] = certs
                    self._parts[key] = ("tls", spec.cluster_name, certs)
                    for cert, pem in zip(certs, pems, strict=True):
                        self._pems[id(cert)] = (cert, pem)
                    return (spec.cluster_name,)
                if spec.type == "user":
                    lines = (*spec.active_keys.ssh, *spec.additional_trusted_keys.ssh)
                    self._user.setdefault(spec.cluster_name, {})[key] = lines
                    self._parts[key] = ("user", spec.cluster_name, lines)
                    return (spec.cluster_name,)
        except (TetherError, ValueError):
            log.exception("trust: stored resource %s does not decode; left out", key)
        return ()


def _flatten(
    by_cluster: dict[str, dict[str, tuple[_T, ...]]], flat: dict[str, tuple[_T, ...]], name: str
) -> None:
    """Set ``flat[name]`` to what ``by_cluster[name]`` holds, in key order (none: no entry)."""
    by_key = by_cluster.get(name)
    if by_key:
        flat[name] = tuple(x for key in sorted(by_key) for x in by_key[key])
    else:
        flat.pop(name, None)


class TrustFeed(TrustWatches):
    """The current snapshot of one auth service, rebuilt on every stored change.

    :meth:`load` reads it once (the service's start); :meth:`run`, owned by the daemon's
    nursery for as long as the service serves, keeps it current and wakes whoever waits in
    :meth:`wait_changed`. The JSON body is built once per snapshot and shared by every reader;
    :class:`~tether.trust.watches.TrustWatches` answers the hosts' watches of it.
    """

    def __init__(
        self,
        *,
        cluster_name: str,
        own_cas: Iterable[x509.Certificate],
        backend: Backend,
        registry: KindRegistry,
    ) -> None:
        super().__init__()
        self._backend = backend
        self._items = TrustItems(cluster_name, tuple(own_cas), registry)
        self.current = ClusterTrust(cluster_name, self._items.own_cas)
        self._revision = ""
        self._items_revision = ""  # of the items last built from
        self._body: bytes | None = None

    @property
    def cluster_name(self) -> str:
        return self.current.cluster_name

    @property
    def revision(self) -> str:
        """The current snapshot's name (see the module's docstring)."""
        return self._revision

    def verify_client(
        self, cert: bytes | x509.Certificate, *, pm: TetherPluginManager, now: datetime.datetime
    ) -> pki.Identity:
        """See :meth:`tether.trust.ClusterTrust.verify_client`."""
        return self.current.verify_client(cert, pm=pm, now=now)

    def body(self) -> bytes:
        """The snapshot as the auth API sends it: its JSON with its ``revision``."""
        if self._body is None:
            self._body = json.dumps(
                {"revision": self.revision, **self.current.to_json(pem_of=self._items.pem_of)},
                separators=(",", ":"),
            ).encode()
        return self._body

    async def _read(self) -> list[Item]:
        found: list[Item] = []
        for prefix in self._items.prefixes:
            found.extend(await self._backend.range(prefix))
        return found

    async def load(self) -> None:
        """Read everything the snapshot is made of from the store, and rebuild it."""
        self._items.reset(await self._read())
        self._rebuild()

    def _rebuild(self) -> None:
        revision = self._items.revision
        if revision == self._items_revision:
            return
        self._items_revision = revision
        fresh = self._items.build()
        if self.revision and fresh == self.current:
            return  # nothing a reader sees changed: it keeps its copy (see the module's doc)
        self.current = fresh
        self._revision = revision
        self._body = None
        self._revision_moved()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the store and keep the snapshot current until cancelled.

        Started once its watches are open, so every write after ``started`` is seen. A watch
        that overflowed (this task fell far behind) is reopened and everything read again.
        """
        while True:
            try:
                async with watch_prefixes(self._backend, self._items.prefixes) as events:
                    await self.load()  # after the watches opened: no change falls between
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    await self._follow(events)
            except* WatchOverflow:
                log.warning("trust: the store's watch overflowed; reading the trust again")

    async def _follow(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        async for event in events:
            self._items.apply(event)
            await trio.sleep(COALESCE)  # let the rest of a burst arrive
            while True:
                try:
                    self._items.apply(events.receive_nowait())
                except trio.WouldBlock:
                    break
            self._rebuild()
