"""The root's remote_clusters and their tunnels' heartbeats, kept in memory by a watch.

``tether clusters`` and ``tetherctl get rc`` list every remote_cluster with its connection
status. Read from the store per call, a root with a thousand leaves decoded a thousand
resources and ran a thousand heartbeat range reads for each listing. Here both are held decoded
(:class:`RemoteClusterItems`, sans-IO: fed items and events, it never reads the store), and
:class:`RemoteClusterCache` keeps them current with a watch on the store, so a listing costs
the resources the caller may see and a clock comparison per leaf. A write by another auth
server sharing the store reaches the cache the same way as this one's.

The status is computed at each read from the newest heartbeats, as it was from the store:
online while a tunnel heartbeated within the cluster's keep-alive dead time (by default
:data:`REMOTE_OFFLINE_AFTER`) and did not report itself disconnected; a heartbeat past its
TTL counts as gone even before the store reaps it.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio

from tether.auth.watching import watch_prefixes
from tether.backend import Backend, Event, Item, WatchOverflow
from tether.errors import TetherError
from tether.resources import KindRegistry, Resource, resource_from_bytes, resource_to_dict
from tether.trust import RemoteClusterStatus
from tether.tunnel.transport import KeepAlive

__all__ = [
    "HEARTBEAT_PREFIX",
    "REMOTE_OFFLINE_AFTER",
    "RemoteClusterCache",
    "RemoteClusterItems",
    "offline_after",
]

log = logging.getLogger(__name__)

#: how late a tunnel's heartbeat may reach auth after it came: a proxy writes them in
#: batches every 5 s (``tether.proxy.tunnels.build_tunnel_server``); a leaf whose keep-alive
#: is seconds must not flap offline between two batches
STORE_DELAY = 5.0


def offline_after(keep_alive: KeepAlive) -> float:
    """Seconds without a stored heartbeat after which a leaf is offline under ``keep_alive``:
    as many heartbeats missed as make a tunnel's peer count as dead, and the delay of the
    batch that stores one (a tunnel that closes is recorded as disconnected at once, so this
    is how long a proxy gone silent keeps its leaves online)."""
    return keep_alive.dead_after + STORE_DELAY


#: :func:`offline_after` of the default keep-alive; auth uses the one configured
#: (:attr:`tether.auth.context.AuthContext.keep_alive`)
REMOTE_OFFLINE_AFTER = offline_after(KeepAlive())
#: where tunnel heartbeats are stored, per cluster, proxy and agent
HEARTBEAT_PREFIX = "/tunnels/"


@attrs.frozen
class _Heartbeat:
    """The stored newest heartbeat of one tunnel, as much of it as the status needs."""

    proxy: str
    when: float
    connected: bool
    expires: float | None


def _heartbeat(item: Item) -> _Heartbeat | None:
    """Read a stored heartbeat; None for one that does not parse (it counts for nothing, as
    an unreadable record must not take the listing down)."""
    try:
        record = json.loads(item.value)
        return _Heartbeat(
            proxy=str(record.get("proxy")),
            when=float(record.get("last_heartbeat", 0)),
            connected=(record.get("status") or {}).get("connected") is not False,
            expires=item.expires,
        )
    except (ValueError, TypeError, AttributeError):
        log.warning("remote clusters: stored heartbeat %s does not parse; ignored", item.key)
        return None


@attrs.define
class RemoteClusterItems:
    """Decoded remote_clusters by key and parsed heartbeats by cluster (sans-IO).

    A put decodes only the resource it carries, so a heartbeat batch of a thousand tunnels
    costs a thousand small JSON reads and no resource decoding.
    """

    registry: KindRegistry
    #: seconds without a heartbeat after which a leaf is offline (:func:`offline_after`)
    offline_after: float = REMOTE_OFFLINE_AFTER
    _clusters: dict[str, Resource] = attrs.field(factory=dict)
    _heartbeats: dict[str, dict[str, _Heartbeat]] = attrs.field(factory=dict)
    #: the last resource shown per leaf: (stored resource, status, the two together)
    _shown: dict[str, tuple[Resource, RemoteClusterStatus, Resource]] = attrs.field(factory=dict)
    #: the document of each resource shown, once asked for: (the resource, its document)
    _documents: dict[str, tuple[Resource, dict[str, Any]]] = attrs.field(factory=dict)

    @property
    def prefixes(self) -> tuple[str, str]:
        """The key prefixes the listing is made of: remote_clusters and tunnel heartbeats."""
        return (self.registry.get("remote_cluster").storage_prefix, HEARTBEAT_PREFIX)

    def reset(self, items: Iterable[Item]) -> None:
        """Replace everything with ``items`` (a fresh read of :attr:`prefixes`)."""
        self._clusters.clear()
        self._heartbeats.clear()
        self._shown.clear()
        self._documents.clear()
        for item in items:
            self._put(item)

    def apply(self, event: Event) -> None:
        """Apply one watch event of :attr:`prefixes`."""
        if event.type == "put":
            self._put(event.item)
        else:
            self._delete(event.item.key)

    def _put(self, item: Item) -> None:
        key = item.key
        if key.startswith(HEARTBEAT_PREFIX):
            cluster = key[len(HEARTBEAT_PREFIX) :].split("/", 1)[0]
            beat = _heartbeat(item)
            if beat is not None:
                self._heartbeats.setdefault(cluster, {})[key] = beat
            return
        try:
            resource = resource_from_bytes(item.value, self.registry, revision=item.revision)
        except TetherError:
            log.exception("remote clusters: stored resource %s does not decode; left out", key)
            self._clusters.pop(key, None)
            return
        self._clusters[key] = resource

    def _delete(self, key: str) -> None:
        if key.startswith(HEARTBEAT_PREFIX):
            cluster = key[len(HEARTBEAT_PREFIX) :].split("/", 1)[0]
            beats = self._heartbeats.get(cluster)
            if beats is not None:
                beats.pop(key, None)
                if not beats:
                    del self._heartbeats[cluster]
            return
        removed = self._clusters.pop(key, None)
        if removed is not None:
            self._shown.pop(removed.metadata.name, None)
            self._documents.pop(removed.metadata.name, None)

    def resources(self, name: str | None = None) -> list[Resource]:
        """Every remote_cluster in key order, or the one named ``name`` (none if missing),
        without status."""
        if name is not None:
            found = self._clusters.get(self.registry.get("remote_cluster").key(name))
            return [] if found is None else [found]
        return [self._clusters[key] for key in sorted(self._clusters)]

    def status(self, cluster: str, now: float) -> RemoteClusterStatus:
        """The connection of ``cluster`` at ``now``: online while a tunnel from it heartbeats
        (see the module's docstring)."""
        latest: float | None = None
        proxies: set[str] = set()
        for beat in self._heartbeats.get(cluster, {}).values():
            if beat.expires is not None and beat.expires <= now:
                continue  # gone from the store's point of view, reaped or not
            latest = beat.when if latest is None else max(latest, beat.when)
            if now - beat.when < self.offline_after and beat.connected:
                proxies.add(beat.proxy)
        return RemoteClusterStatus(
            connection="online" if proxies else "offline",
            last_heartbeat=(
                datetime.datetime.fromtimestamp(latest, datetime.UTC) if latest else None
            ),
            proxies=tuple(sorted(proxies)),
        )

    def with_status(self, remote: Resource, now: float) -> Resource:
        """``remote`` with its connection status at ``now``; the same object as last time
        while neither changed (a leaf's status moves once per heartbeat, and building a
        resource costs more than comparing two statuses)."""
        status = self.status(remote.metadata.name, now)
        shown = self._shown.get(remote.metadata.name)
        if shown is not None and shown[0] is remote and shown[1] == status:
            return shown[2]
        evolved = attrs.evolve(remote, status=status)
        self._shown[remote.metadata.name] = (remote, status, evolved)
        return evolved

    def document(self, shown: Resource) -> dict[str, Any]:
        """``resource_to_dict(shown)`` (a remote_cluster has no secrets), built once per
        resource :meth:`with_status` returned: a listing of a thousand leaves converts the
        few whose status moved since the last one. The document is shared: read it only."""
        name = shown.metadata.name
        hit = self._documents.get(name)
        if hit is not None and hit[0] is shown:
            return hit[1]
        document = resource_to_dict(shown)
        current = self._shown.get(name)
        if current is not None and current[2] is shown:
            self._documents[name] = (shown, document)
        return document


class RemoteClusterCache:
    """The remote_clusters of one auth service with their status, following the store.

    :meth:`run`, owned by the daemon's nursery for as long as auth serves, loads them once its
    watches are open and applies every change; :attr:`ready` says whether it did, so that a
    service not running it (a test's) reads the store instead.
    """

    def __init__(
        self,
        *,
        backend: Backend,
        registry: KindRegistry,
        clock: Callable[[], float],
        offline_after: float = REMOTE_OFFLINE_AFTER,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self.items = RemoteClusterItems(registry, offline_after)
        self.ready = False

    def current(self, name: str | None = None) -> list[Resource]:
        """The remote_clusters (or the one named), each with its status now."""
        now = self._clock()
        return [self.items.with_status(res, now) for res in self.items.resources(name)]

    async def read(self, name: str | None = None) -> list[Resource]:
        """The same as :meth:`current`, read from the store now (while :attr:`ready` is false)."""
        items = RemoteClusterItems(self.items.registry, self.items.offline_after)
        items.reset(await self._read(name))
        now = self._clock()
        return [items.with_status(res, now) for res in items.resources(name)]

    async def _read(self, name: str | None = None) -> list[Item]:
        kind = self.items.registry.get("remote_cluster")
        if name is not None:
            item = await self._backend.get(kind.key(name))
            if item is None:
                return []
            return [item, *await self._backend.range(f"{HEARTBEAT_PREFIX}{name}/")]
        found: list[Item] = []
        for prefix in self.items.prefixes:
            found.extend(await self._backend.range(prefix))
        return found

    async def _load(self) -> None:
        self.items.reset(await self._read())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the store and keep the items current until cancelled; a watch that
        overflowed is reopened and everything read again."""
        try:
            while True:
                try:
                    async with watch_prefixes(self._backend, self.items.prefixes) as events:
                        await self._load()  # after the watches opened: no change falls between
                        self.ready = True
                        task_status.started()
                        task_status = trio.TASK_STATUS_IGNORED
                        async for event in events:
                            self.items.apply(event)
                except* WatchOverflow:
                    self.ready = False
                    log.warning("remote clusters: the store's watch overflowed; reading again")
        finally:
            self.ready = False
