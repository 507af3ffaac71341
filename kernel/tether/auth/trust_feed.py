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

    Decoded resources and parsed certificates are kept by key and revision, so a change to
    one of a thousand leaves decodes one resource, not a thousand.
    """

    cluster_name: str
    own_cas: tuple[x509.Certificate, ...]
    registry: KindRegistry
    items: dict[str, Item] = attrs.field(factory=dict)
    _decoded: dict[str, tuple[int, Resource]] = attrs.field(factory=dict)
    _certs: dict[str, x509.Certificate] = attrs.field(factory=dict)
    #: the PEM of each certificate in ``_certs``, by the certificate object's identity
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
        self.items = {item.key: item for item in items}

    def apply(self, event: Event) -> None:
        """Apply one watch event."""
        if event.type == "put":
            self.items[event.item.key] = event.item
        else:
            self.items.pop(event.item.key, None)

    @property
    def revision(self) -> str:
        """The snapshot's name: the store's revision of its newest item and the item count
        (see the module's docstring for why this is unique)."""
        newest = max((item.revision for item in self.items.values()), default=0)
        return f"{newest}.{len(self.items)}"

    def _resource(self, item: Item) -> Resource:
        cached = self._decoded.get(item.key)
        if cached is not None and cached[0] == item.revision:
            return cached[1]
        resource = resource_from_bytes(item.value, self.registry)
        self._decoded[item.key] = (item.revision, resource)
        return resource

    def _cert(self, pem: str) -> x509.Certificate:
        cert = self._certs.get(pem)
        if cert is None:
            cert = self._certs[pem] = pki.load_cert(pem.encode())
            self._pems[id(cert)] = (cert, pem)
        return cert

    def pem_of(self, cert: x509.Certificate) -> str:
        """The PEM ``cert`` was parsed from (encoded afresh for one not parsed here)."""
        hit = self._pems.get(id(cert))
        if hit is not None and hit[0] is cert:
            return hit[1]
        return pki.cert_to_pem(cert).decode()

    def build(self) -> ClusterTrust:
        """The snapshot of the current items. An item that does not decode is logged and left
        out: one bad resource must not take every other cluster's trust with it."""
        prefix_of = {kind: self.registry.get(kind).storage_prefix for kind in _KINDS}
        others: dict[str, list[x509.Certificate]] = {}
        user_cas: dict[str, list[str]] = {}
        trusted: list[Resource] = []
        roles: list[Resource] = []
        live_pems: set[str] = set()
        for key, item in sorted(self.items.items()):
            try:
                resource = self._resource(item)
            except (TetherError, ValueError):
                log.exception("trust: stored resource %s does not decode; left out", key)
                continue
            if key.startswith(prefix_of["trusted_cluster"]):
                trusted.append(resource)
            elif key.startswith(prefix_of["role"]):
                roles.append(resource)
            elif key.startswith(prefix_of["cert_authority"]):
                spec = resource.spec
                if spec.type == "tls" and spec.cluster_name != self.cluster_name:
                    live_pems.update(spec.active_keys.tls)
                    certs = [self._cert(pem) for pem in spec.active_keys.tls]
                    others.setdefault(spec.cluster_name, []).extend(certs)
                elif spec.type == "user":
                    lines = [*spec.active_keys.ssh, *spec.additional_trusted_keys.ssh]
                    user_cas.setdefault(spec.cluster_name, []).extend(lines)
        self._decoded = {k: v for k, v in self._decoded.items() if k in self.items}
        self._certs = {pem: c for pem, c in self._certs.items() if pem in live_pems}
        self._pems = {id(c): (c, pem) for pem, c in self._certs.items()}
        return ClusterTrust.build(
            self.cluster_name, self.own_cas, others, trusted, user_cas=user_cas, roles=roles
        )


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
