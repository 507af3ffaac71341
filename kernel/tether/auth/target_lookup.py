"""The stored resources a target query names, found without reading or describing the rest.

A proxy routing ``tether ssh web-1`` needs the one node the user means, not the listing of
every node the user may see. Auth answers a resources read that carries the query
(``target=``): the entries the query names among every stored one of the kind, to which the
caller's roles are then applied. What comes back is what routing would have kept of the full
listing, so the proxy resolves it exactly as before (one target, "ambiguous" with those the
user may see, or "not found"), and a user learns nothing of a target their roles hide.

Reading and matching every stored entry per query cost auth 33 ms of CPU at 10,000 nodes.
:class:`TargetIndex` holds the entries of every target kind decoded and described, kept
current by a watch on the store (as :mod:`tether.auth.remote_clusters` keeps the
remote_clusters), and indexed by every name a target answers to: a query by name, id or
address costs the few entries that answer to it; a query by labels (``env=prod``, globs,
regular expressions) is matched against the described entries in memory.

An answer is never older than a write this auth server acknowledged: each write to a target
kind's entries names its revision here (:meth:`TargetIndex.wrote`), and a query waits until
the watch delivered it. While the index does not follow the store (not started, reloading
after the watch fell behind, or the watch late), a query reads the store as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import trio

from tether.auth.decoded import DecodedResources
from tether.auth.watching import watch_prefixes
from tether.backend import Backend, Event, Item, WatchOverflow
from tether.errors import TetherError
from tether.resources import Resource
from tether.targets import Target, TargetKind, TargetQuery, matching_targets

__all__ = ["CATCH_UP_SECONDS", "KindEntries", "TargetIndex", "target_kinds"]

log = logging.getLogger(__name__)

#: how long a query waits for the watch to deliver a write this auth server made before it
#: reads the store instead (events of this process's own writes come within a few scheduler
#: ticks; another backend's watch may lag)
CATCH_UP_SECONDS = 1.0


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
    items and events, it never reads the store).

    :param decoded: the service's decoded resources, so that an entry this process wrote
        (a heartbeat) is not decoded again.
    """

    def __init__(self, kind: TargetKind, decoded: DecodedResources) -> None:
        self.kind = kind
        self._decoded = decoded
        self._entries: dict[str, _Entry] = {}
        #: name a target answers to -> keys of the entries that answer to it
        self._by_name: dict[str, set[str]] = {}
        self._order: list[str] | None = []  # keys in the store's order; None: to sort again
        #: keys whose stored value does not decode: queries read the store, which says so
        self.broken: set[str] = set()
        #: the newest revision of an event applied (or of the items loaded)
        self.applied = 0

    @property
    def prefix(self) -> str:
        return self.kind.resource.storage_prefix

    def reset(self, items: Iterable[Item]) -> None:
        """Replace everything with ``items`` (a fresh read of :attr:`prefix`)."""
        self._entries.clear()
        self._by_name.clear()
        self._order = None
        self.broken.clear()
        for item in items:
            self._put(item)
            self.applied = max(self.applied, item.revision)

    def apply(self, event: Event) -> None:
        """Apply one watch event of :attr:`prefix`; one no newer than what is held (an event
        of a write the load already read) changes nothing."""
        item = event.item
        self.applied = max(self.applied, item.revision)
        held = self._entries.get(item.key)
        if held is not None and held.revision >= item.revision:
            return
        if event.type == "put":
            self._put(item)
        else:
            self._remove(item.key)
            self.broken.discard(item.key)

    def _put(self, item: Item) -> None:
        try:
            resource = self._decoded.decode(item)
            target = self.kind.describe(resource)
        except TetherError:
            log.warning("target index: stored %s does not decode; queries read the store", item.key)
            self._remove(item.key)
            self.broken.add(item.key)
            return
        self.broken.discard(item.key)
        entry = _Entry(item.revision, item.expires, resource, target)
        old = self._entries.get(item.key)
        if old is None:
            self._order = None
        elif old.names != entry.names:
            self._unindex(item.key, old)
        if old is None or old.names != entry.names:
            for name in entry.names:
                self._by_name.setdefault(name, set()).add(item.key)
        self._entries[item.key] = entry

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
        #: resource kind name -> its entries, while the watch follows the store
        self._held: dict[str, KindEntries] = {}
        #: storage prefix -> the newest revision this process wrote there
        self._wanted: dict[str, int] = {}
        self._progress = trio.Event()
        self.ready = False

    def kind(self, name: str) -> TargetKind | None:
        """The target kind of resource kind ``name``, or None: no protocol reaches it."""
        return self._all_kinds().get(name)

    def _all_kinds(self) -> Mapping[str, TargetKind]:
        if self._kinds is None:
            self._kinds = dict(self._load_kinds())
        return self._kinds

    def wrote(self, key: str, revision: int) -> None:
        """This process wrote (or deleted) ``key`` under ``revision``: no query answers from
        memory before the watch delivered that."""
        for kind in self._all_kinds().values():
            prefix = kind.resource.storage_prefix
            if key.startswith(prefix):
                self._wanted[prefix] = max(self._wanted.get(prefix, 0), revision)

    async def matching(self, kind: TargetKind, query: TargetQuery) -> list[Resource]:
        """The stored entries of ``kind`` that ``query`` names, in the store's order, as
        :func:`~tether.targets.matching_targets` selects targets. Nothing here knows who
        asks: the caller applies their roles to what this returns."""
        held = self._held.get(kind.name)
        if held is not None and not held.broken and await self._caught_up(held):
            return held.matching(query, self._clock())
        prefix = kind.resource.storage_prefix
        found = self._decoded.decode_range(prefix, await self._backend.range(prefix))
        targets = [kind.describe(res) for res in found]
        by_target = {id(target): res for target, res in zip(targets, found, strict=True)}
        return [by_target[id(target)] for target in matching_targets(targets, query)]

    async def _caught_up(self, held: KindEntries) -> bool:
        """Whether ``held`` holds every write this process made to it, waiting a little for
        the watch to deliver the newest (False: the store is to be read instead)."""
        wanted = self._wanted.get(held.prefix, 0)
        if held.applied >= wanted:
            return self.ready
        with trio.move_on_after(CATCH_UP_SECONDS):
            while held.applied < wanted and self.ready:
                await self._progress.wait()
        return self.ready and held.applied >= wanted

    def _moved(self) -> None:
        """Wake the queries waiting for the watch (:meth:`_caught_up`)."""
        if not self._progress.statistics().tasks_waiting:
            return
        self._progress.set()
        self._progress = trio.Event()

    async def _load(self, kinds: Iterable[TargetKind]) -> dict[str, KindEntries]:
        held = {}
        for kind in kinds:
            entries = KindEntries(kind, self._decoded)
            wanted = self._wanted.get(entries.prefix, 0)  # written before the read: in it
            entries.reset(await self._backend.range(entries.prefix))
            entries.applied = max(entries.applied, wanted)
            held[kind.name] = entries
        return held

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the target kinds' entries and keep them current until cancelled; a watch
        that overflowed is reopened and everything read again."""
        kinds = list(self._all_kinds().values())
        if not kinds:
            task_status.started()
            await trio.sleep_forever()
        by_prefix: dict[str, KindEntries] = {}
        try:
            while True:
                prefixes = [kind.resource.storage_prefix for kind in kinds]
                try:
                    async with watch_prefixes(self._backend, prefixes) as events:
                        # after the watches opened: no change falls between
                        self._held = await self._load(kinds)
                        by_prefix = {held.prefix: held for held in self._held.values()}
                        self.ready = True
                        self._moved()
                        task_status.started()
                        task_status = trio.TASK_STATUS_IGNORED
                        async for event in events:
                            _apply(by_prefix, event)
                            while True:  # the rest of a heartbeat batch, without a checkpoint
                                try:
                                    _apply(by_prefix, events.receive_nowait())
                                except trio.WouldBlock:
                                    break
                            self._moved()
                except* WatchOverflow:
                    self.ready = False
                    self._held = {}
                    self._moved()
                    log.warning("target index: the store's watch overflowed; reading again")
        finally:
            self.ready = False
            self._held = {}
            self._moved()


def _apply(by_prefix: Mapping[str, KindEntries], event: Event) -> None:
    """Apply ``event`` to the entries of the kind whose prefix its key is under."""
    for prefix, held in by_prefix.items():
        if event.item.key.startswith(prefix):
            held.apply(event)
            return
