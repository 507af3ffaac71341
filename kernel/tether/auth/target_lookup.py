"""The stored resources a target query names, found without reading or describing the rest.

A proxy routing ``tether ssh web-1`` needs the one node the user means, not the listing of
every node the user may see. Auth answers a resources read that carries the query
(``target=``): the entries the query names among every stored one of the kind, to which the
caller's roles are then applied. What comes back is what routing would have kept of the full
listing, so the proxy resolves it exactly as before (one target, "ambiguous" with those the
user may see, or "not found"), and a user learns nothing of a target their roles hide.

Reading and matching every stored entry per query cost auth 26 to 33 ms of CPU at 10,000
nodes, and 109 ms right after every node heartbeated (each changed entry described again).
:class:`TargetIndex` holds the entries of every target kind decoded and described, kept
current by a watch on the store (as :mod:`tether.auth.remote_clusters` keeps the
remote_clusters), and indexed by every name a target answers to: a query by name, id or
address costs the few entries that answer to it; a query by labels (``env=prod``, globs,
regular expressions) is matched against the described entries in memory.

An answer is never older than a write this auth server acknowledged: each write it makes to
a target kind's entries (a heartbeat, ``tetherctl create``, ``rm``) is applied to the index
at once, under the revision the store gave it (as :class:`~tether.auth.decoded.
DecodedResources` keeps what it wrote), and the watch's older events of that key are then
ignored; writes of other auth servers sharing the store come through the watch. While the
index does not follow the store (not started, or reloading after the watch fell behind), a
query reads the store as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import attrs
import trio

from tether.auth.decoded import DecodedResources
from tether.auth.watching import watch_prefixes
from tether.backend import Backend, Event, Item, Op, WatchOverflow
from tether.errors import TetherError
from tether.resources import Resource
from tether.targets import Target, TargetKind, TargetQuery, matching_targets

__all__ = ["KindEntries", "TargetIndex", "target_kinds"]

log = logging.getLogger(__name__)


def target_kinds(protocol_results: Iterable[Iterable[object]]) -> dict[str, TargetKind]:
    """The target kinds of ``tether_protocols`` results, by resource kind name (several
    protocols may reach one kind). Handlers that reach no targets are skipped; checking the
    handlers is the proxy's job (:func:`tether.protocols.collect_protocols`)."""
    kinds: dict[str, TargetKind] = {}
    for returned in protocol_results:
        for handler in returned:
            kind = getattr(handler, "target_kind", None)
            if isinstance(kind, TargetKind):
                kinds.setdefault(kind.name, kind)
    return kinds


class _Entry:
    """One stored entry: its revision, expiry, the resource and the resource as a target."""

    __slots__ = ("expires", "names", "resource", "revision", "target")

    def __init__(
        self, revision: int, expires: float | None, resource: Resource, target: Target
    ) -> None:
        self.revision = revision
        self.expires = expires
        self.resource = resource
        self.target = target
        self.names = _names(target)


def _names(target: Target) -> frozenset[str]:
    """Every name :meth:`~tether.targets.Target.answers_to` accepts."""
    names = {target.id, target.name, *target.aliases}
    host = target.addr.rpartition(":")[0].strip("[]")
    if host:
        names.add(host)
    return frozenset(names)


class KindEntries:
    """The stored entries of one target kind, described and indexed by name (sans-IO: fed
    items, events and this process's writes, it never reads the store).

    Each key keeps the newest revision seen, from whichever source: an event or item no newer
    than that (the watch's event of a write applied already, or of one older than a delete
    this process made) changes nothing.

    :param decoded: the service's decoded resources, so that an entry this process wrote
        (a heartbeat) is not decoded again.
    """

    def __init__(self, kind: TargetKind, decoded: DecodedResources) -> None:
        self.kind = kind
        self._decoded = decoded
        self._entries: dict[str, _Entry] = {}
        #: keys this process deleted -> the delete's revision, until the watch delivers it
        self._deleted: dict[str, int] = {}
        #: name a target answers to -> keys of the entries that answer to it
        self._by_name: dict[str, set[str]] = {}
        self._order: list[str] | None = []  # keys in the store's order; None: to sort again
        #: keys whose stored value does not decode: queries read the store, which says so
        self.broken: set[str] = set()

    @property
    def prefix(self) -> str:
        return self.kind.resource.storage_prefix

    def _newer(self, key: str, revision: int) -> bool:
        held = self._entries.get(key)
        if held is not None and held.revision >= revision:
            return False
        return self._deleted.get(key, 0) < revision

    def load(self, items: Iterable[Item]) -> None:
        """Take a fresh read of :attr:`prefix` (the watch opened before it was read)."""
        for item in items:
            if self._newer(item.key, item.revision):
                self._put(item)

    def apply(self, event: Event) -> None:
        """Apply one watch event of :attr:`prefix`."""
        item = event.item
        held = self._entries.get(item.key)
        if held is not None and held.revision == item.revision:
            held.expires = item.expires  # a write of this process: the store's own expiry
            return
        if event.type == "delete" and self._deleted.get(item.key, 0) <= item.revision:
            self._deleted.pop(item.key, None)  # the watch caught up with that delete
        if not self._newer(item.key, item.revision):
            return
        if event.type == "put":
            self._put(item)
        else:
            self._remove(item.key)
            self.broken.discard(item.key)

    def written(self, op: Op, revision: int, resource: Resource | None, now: float) -> None:
        """This process applied ``op`` under ``revision``: ``resource`` (validated) is what a
        put stored."""
        if not self._newer(op.key, revision):
            return
        if op.type == "delete" or resource is None:
            self.broken.discard(op.key)
            self._remove(op.key)
            self._deleted[op.key] = revision
            return
        if resource.metadata.revision != revision:
            metadata = attrs.evolve(resource.metadata, revision=revision)
            resource = attrs.evolve(resource, metadata=metadata)
        expires = None if op.ttl is None else now + op.ttl  # the event brings the store's
        self._describe(op.key, revision, expires, resource)

    def _put(self, item: Item) -> None:
        try:
            resource = self._decoded.decode(item)
        except TetherError:
            log.warning("target index: stored %s does not decode; queries read the store", item.key)
            self._remove(item.key)
            self.broken.add(item.key)
            return
        self._describe(item.key, item.revision, item.expires, resource)

    def _describe(self, key: str, revision: int, expires: float | None, resource: Resource) -> None:
        try:
            target = self.kind.describe(resource)
        except Exception:  # a plugin's bug must not stop the index
            log.exception("target index: %s could not be described; queries read the store", key)
            self._remove(key)
            self.broken.add(key)
            return
        self.broken.discard(key)
        self._index(key, _Entry(revision, expires, resource, target))

    def _index(self, key: str, entry: _Entry) -> None:
        old = self._entries.get(key)
        if old is None:
            self._order = None
        elif old.names != entry.names:
            self._unindex(key, old)
        if old is None or old.names != entry.names:
            for name in entry.names:
                self._by_name.setdefault(name, set()).add(key)
        self._entries[key] = entry

    def _remove(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._unindex(key, old)
            self._order = None

    def _unindex(self, key: str, entry: _Entry) -> None:
        for name in entry.names:
            keys = self._by_name.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_name[name]

    def matching(self, query: TargetQuery, now: float) -> list[Resource]:
        """The live entries (not expired at ``now``) that ``query`` names, in the store's
        order, as :func:`~tether.targets.matching_targets` selects them from a listing."""
        if query.labels:
            if self._order is None:
                self._order = sorted(self._entries)
            entries = [self._entries[key] for key in self._order]
        else:
            entries = [self._entries[key] for key in sorted(self._by_name.get(query.name, ()))]
        live = [e for e in entries if e.expires is None or e.expires > now]
        by_target = {id(e.target): e.resource for e in live}
        return [by_target[id(t)] for t in matching_targets([e.target for e in live], query)]


class TargetIndex:
    """The entries of every target kind, kept current by a watch, and the ones a query names.

    :meth:`run`, owned by the daemon's nursery for as long as auth serves, loads them once its
    watches are open and applies every change; until it has (a service not running it, a
    test's), queries read the store.

    :param kinds: the target kinds by resource kind name, asked for when first needed (they
        come from the protocol plugins).
    :param backend: the store.
    :param decoded: the service's decoded resources (an entry is decoded once per revision).
    :param clock: seconds since the epoch, for the entries' expiry.
    """

    def __init__(
        self,
        kinds: Callable[[], Mapping[str, TargetKind]],
        *,
        backend: Backend,
        decoded: DecodedResources,
        clock: Callable[[], float],
    ) -> None:
        self._load_kinds = kinds
        self._kinds: Mapping[str, TargetKind] | None = None
        self._backend = backend
        self._decoded = decoded
        self._clock = clock
        #: storage prefix -> its kind's entries, from when the watch opened (loading, then
        #: following the store)
        self._held: dict[str, KindEntries] = {}
        self.ready = False

    def kind(self, name: str) -> TargetKind | None:
        """The target kind of resource kind ``name``, or None: no protocol reaches it."""
        if self._kinds is None:
            self._kinds = dict(self._load_kinds())
        return self._kinds.get(name)

    def written(self, op: Op, revision: int, resource: Resource | None = None) -> None:
        """This process applied ``op`` under ``revision`` (``resource``: what a put stored,
        validated); an op of no target kind's entries is ignored."""
        for prefix, held in self._held.items():
            if op.key.startswith(prefix):
                held.written(op, revision, resource, self._clock())
                return

    async def matching(self, kind: TargetKind, query: TargetQuery) -> list[Resource]:
        """The stored entries of ``kind`` that ``query`` names, in the store's order, as
        :func:`~tether.targets.matching_targets` selects targets. Nothing here knows who
        asks: the caller applies their roles to what this returns."""
        prefix = kind.resource.storage_prefix
        held = self._held.get(prefix)
        if self.ready and held is not None and not held.broken:
            return held.matching(query, self._clock())
        found = self._decoded.decode_range(prefix, await self._backend.range(prefix))
        targets = [kind.describe(res) for res in found]
        by_target = {id(target): res for target, res in zip(targets, found, strict=True)}
        return [by_target[id(target)] for target in matching_targets(targets, query)]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the target kinds' entries and keep them current until cancelled; a watch
        that overflowed is reopened and everything read again."""
        if self._kinds is None:
            self._kinds = dict(self._load_kinds())
        kinds = list(self._kinds.values())
        if not kinds:
            task_status.started()
            await trio.sleep_forever()
        try:
            while True:
                prefixes = [kind.resource.storage_prefix for kind in kinds]
                try:
                    async with watch_prefixes(self._backend, prefixes) as events:
                        # from here on this process's writes are applied as they are made;
                        # the read after the watches opened misses no change
                        self._held = {
                            k.resource.storage_prefix: KindEntries(k, self._decoded) for k in kinds
                        }
                        for prefix, held in self._held.items():
                            held.load(await self._backend.range(prefix))
                        self.ready = True
                        task_status.started()
                        task_status = trio.TASK_STATUS_IGNORED
                        async for event in events:
                            self._apply(event)
                            while True:  # the rest of a heartbeat batch, without a checkpoint
                                try:
                                    self._apply(events.receive_nowait())
                                except trio.WouldBlock:
                                    break
                except* WatchOverflow:
                    self.ready = False
                    log.warning("target index: the store's watch overflowed; reading again")
        finally:
            self.ready = False
            self._held = {}

    def _apply(self, event: Event) -> None:
        for prefix, held in self._held.items():
            if event.item.key.startswith(prefix):
                held.apply(event)
                return
