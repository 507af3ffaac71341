"""The storage contract every backend plugin implements, and how a URL picks one.

The model is etcd's: a sorted key space of byte values, one global revision counter that every
write advances, conditional batches, and a watch stream of committed changes. Keeping the
contract this small is what lets SQLite, PostgreSQL and etcd be interchangeable plugins that
pass the same conformance suite (:mod:`tether.testing.backend_conformance`).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import attrs
import pluggy

from tether.errors import ConfigError, PluginError, TetherError

__all__ = [
    "Backend",
    "BackendClosed",
    "BackendError",
    "BackendType",
    "Event",
    "Item",
    "Op",
    "WatchOverflow",
    "check_key",
    "check_prefix",
    "open_backend",
]


class BackendError(TetherError):
    """The storage itself failed: unreadable file, I/O error, locked by another process."""


class BackendClosed(BackendError):
    """The backend was used after :meth:`Backend.close`; a programming or shutdown-order bug."""


class WatchOverflow(BackendError):
    """A watcher fell too far behind and lost events; the consumer must re-list and re-watch.

    Raised by the watch iterator rather than blocking writers: one slow cache must never stall
    every write in the cluster.
    """


@attrs.frozen(kw_only=True)
class Item:
    """One stored key as of its last write.

    :param key: the full key, such as ``"/roles/visitor"``.
    :param value: the stored bytes (``b""`` in the item of a delete event).
    :param revision: the global revision of the last write to this key.
    :param expires: unix time after which the key is gone, or None for no expiry.
    """

    key: str
    value: bytes
    revision: int
    expires: float | None = None


@attrs.frozen(kw_only=True)
class Event:
    """One committed change, as delivered to watchers.

    For a delete (explicit, by prefix, or by TTL expiry) ``item`` carries the deleted key,
    ``b""`` as value and the revision of the delete.
    """

    type: Literal["put", "delete"]
    item: Item


def check_key(key: str) -> None:
    """Refuse a key no backend stores: empty, not a string, or not valid Unicode text.

    Call it first in every :class:`Backend` method that takes a single key and builds no
    :class:`Op` (``get``; an ``Op`` runs it itself), so every backend refuses the same keys.

    :raises ValueError: the key is empty, not a string, or not encodable as UTF-8.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"backend keys are non-empty strings, got {key!r}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"backend key {key!r} is not valid Unicode text") from exc


def check_prefix(prefix: str) -> None:
    """Refuse a prefix that is not a string of valid Unicode text (``""`` is every key).

    Call it first in ``range``, ``delete_prefix`` and ``watch``.

    :raises TypeError: the prefix is not a string.
    :raises ValueError: it is not encodable as UTF-8.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"backend prefixes are strings, got {type(prefix).__name__}")
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"backend prefix {prefix!r} is not valid Unicode text") from exc


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


def _check_expected(expected_revision: int | None) -> None:
    if expected_revision is not None and (
        isinstance(expected_revision, bool)
        or not isinstance(expected_revision, int)
        or expected_revision < 0
    ):
        raise ValueError(
            f"expected_revision must be None, 0 or a revision, got {expected_revision!r}"
        )


@attrs.frozen(kw_only=True)
class Op:
    """One step of an atomic batch for :meth:`Backend.apply`; build with :meth:`put`/:meth:`delete`.

    ``expected_revision`` is the step's condition: None writes unconditionally, 0 requires the
    key to be absent, N requires the key's current revision to be N. Every condition of a batch
    is checked against the state before the batch, and one failure writes nothing.
    """

    type: Literal["put", "delete"]
    key: str
    value: bytes = b""
    ttl: float | None = None
    expected_revision: int | None = None

    def __attrs_post_init__(self) -> None:
        check_key(self.key)
        if self.type not in ("put", "delete"):
            raise ValueError(f"Op.type is 'put' or 'delete', got {self.type!r}")
        if not isinstance(self.value, bytes):
            raise TypeError(f"backend values are bytes, got {type(self.value).__name__}")
        if self.type == "delete" and (self.value or self.ttl is not None):
            raise ValueError("a delete Op carries no value and no ttl")
        _check_ttl(self.ttl)
        _check_expected(self.expected_revision)

    @classmethod
    def put(
        cls,
        key: str,
        value: bytes,
        *,
        ttl: float | None = None,
        expected_revision: int | None = None,
    ) -> Op:
        """Upsert ``key`` (with an optional time to live in seconds), if the condition holds."""
        return cls(type="put", key=key, value=value, ttl=ttl, expected_revision=expected_revision)

    @classmethod
    def delete(cls, key: str, *, expected_revision: int | None = None) -> Op:
        """Delete ``key`` if present, if the condition holds."""
        return cls(type="delete", key=key, expected_revision=expected_revision)


@runtime_checkable
class Backend(Protocol):
    """A key-range store with revisions and a watch stream.

    Expired keys are invisible to every read and condition from the moment they expire; the
    backend's own reaper deletes them later and emits their delete events. A store that can
    only expire keys coarsely (etcd's leases count whole seconds) keeps them visible up to
    the backend's ``ttl_granularity`` attribute (seconds) longer, and declares it; each
    item's ``expires`` still says when its TTL ends, for callers to check. Invalid arguments
    (empty key, non-bytes value, non-positive ttl) raise ``ValueError``/``TypeError``; a failure
    of the storage raises :class:`BackendError`.
    """

    async def get(self, key: str) -> Item | None:
        """Return the live item at ``key``, or None."""
        ...

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> Item:
        """Create or replace ``key``; return the written item."""
        ...

    async def create(self, key: str, value: bytes, *, ttl: float | None = None) -> Item:
        """Write ``key`` only if absent; raise ``AlreadyExists`` otherwise."""
        ...

    async def compare_and_swap(
        self, key: str, value: bytes, *, expected_revision: int, ttl: float | None = None
    ) -> Item:
        """Replace ``key`` only if it is at ``expected_revision``.

        Raises ``NotFound`` if the key is absent and ``CompareFailed`` if it was changed since.
        """
        ...

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` in one revision; return how many."""
        ...

    async def range(self, prefix: str, *, limit: int | None = None) -> list[Item]:
        """Return the live items whose key starts with ``prefix``, sorted by key."""
        ...

    async def apply(self, ops: Sequence[Op]) -> int:
        """Apply ``ops`` atomically under one new revision and return it.

        A failed condition raises ``CompareFailed``/``AlreadyExists``/``NotFound`` naming the
        key, and nothing is written. A key may appear only once per batch.
        """
        ...

    def watch(self, prefix: str) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Subscribe to changes of keys starting with ``prefix``.

        The iterator yields events committed after the subscription, in revision order. To
        build a cache: open the watch, then ``range``, then apply events newer than the items.
        A watcher that falls behind by more than the backend's buffer gets
        :class:`WatchOverflow` from its iterator; after :meth:`close` it gets
        :class:`BackendClosed`.
        """
        ...

    async def close(self) -> None:
        """Release the storage; later calls raise :class:`BackendClosed`. Idempotent."""
        ...


@attrs.frozen(kw_only=True)
class BackendType:
    """A storage backend a plugin provides, keyed by the URL scheme it handles.

    :param scheme: the URL scheme, such as ``"sqlite"``.
    :param open: takes the full URL and returns an async context manager that yields the open
        backend and owns its background work (TTL reaper) until the context exits.
    """

    scheme: str
    open: Callable[[str], AbstractAsyncContextManager[Backend]]


def _collect_backend_types(pm: pluggy.PluginManager) -> dict[str, tuple[str, BackendType]]:
    """Map scheme -> (plugin name, type), refusing a scheme that two plugins claim."""
    found: dict[str, tuple[str, BackendType]] = {}
    for impl in pm.hook.tether_backends.get_hookimpls():
        try:
            provided = impl.function()
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in tether_backends: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(provided, list | tuple) or not all(
            isinstance(bt, BackendType) for bt in provided
        ):
            raise PluginError(
                f"plugin {impl.plugin_name!r} returned {provided!r} from tether_backends",
                hint="the hook must return a list of tether.backend.BackendType",
            )
        for bt in provided:
            if bt.scheme in found:
                other = found[bt.scheme][0]
                raise ConfigError(
                    f"storage scheme {bt.scheme!r} is provided by both plugin {other!r} and "
                    f"plugin {impl.plugin_name!r}",
                    hint="disable one of them in plugins.disabled",
                )
            found[bt.scheme] = (impl.plugin_name, bt)
    return found


def backend_schemes(pm: pluggy.PluginManager) -> tuple[str, ...]:
    """The URL schemes ``storage.url`` may use with the plugins of ``pm``, sorted.

    :raises PluginError: a plugin's ``tether_backends`` fails or returns something else.
    :raises ConfigError: two plugins claim one scheme.
    """
    return tuple(sorted(_collect_backend_types(pm)))


def open_backend(url: str, pm: pluggy.PluginManager) -> AbstractAsyncContextManager[Backend]:
    """Open the storage at ``url`` with the plugin that handles its scheme.

    Use as ``async with open_backend(url, pm) as backend:``. The scheme is resolved immediately,
    so a bad URL fails before anything is opened.

    :raises ConfigError: the URL has no scheme, no plugin handles it (the message lists the
        known schemes), or two plugins claim the same scheme (the message names both).
    """
    scheme = urlsplit(url).scheme
    types = _collect_backend_types(pm)
    known = ", ".join(sorted(types)) or "none"
    if not scheme:
        raise ConfigError(
            f"storage URL {url!r} has no scheme", hint=f"use one of: {known} (e.g. sqlite:///...)"
        )
    if scheme not in types:
        raise ConfigError(
            f"no storage backend handles {scheme}:// URLs (known: {known})",
            hint="install and enable the plugin that provides it",
        )
    return types[scheme][1].open(url)
