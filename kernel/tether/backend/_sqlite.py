"""The embedded default backend: one SQLite file, owned by one auth process.

SQLite calls block, so every statement runs on a worker thread (``trio.to_thread``) over a
single connection serialized by a :class:`trio.Lock`; SQLite then never sees two writers and
the order in which writes commit is the order in which watchers hear about them. WAL with
``synchronous=FULL`` means an acknowledged write survives a crash of the process or the
machine. Watch is in-process because only this process writes: a sidecar ``.lock`` file makes
a second process fail fast instead of silently writing behind the watchers' backs.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import trio

from tether.backend._base import (
    BackendClosed,
    BackendError,
    Event,
    Item,
    Op,
    check_key,
    check_prefix,
)
from tether.backend._checks import check_batch, check_limit, check_swap_revision
from tether.backend._sqlite_store import Store, connect
from tether.backend._watch_buffer import WatchBuffer
from tether.errors import ConfigError

__all__ = ["SqliteBackend", "open_sqlite", "parse_sqlite_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def parse_sqlite_url(url: str) -> Path:
    """Return the database path of a ``sqlite:///absolute/path.db`` URL.

    :raises ConfigError: not a sqlite URL, a host part, a query, or a missing/relative path.
    """
    example = "write it as sqlite:///absolute/path/backend.db (three slashes)"
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(f"storage URL {url!r} is not a sqlite:// URL", hint=example)
    if parts.netloc:
        raise ConfigError(
            f"storage URL {url!r} has a relative path or a host ({parts.netloc!r})", hint=example
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"storage URL {url!r} takes no ?query or #fragment", hint=example)
    path = unquote(parts.path)
    if not path:
        raise ConfigError(f"storage URL {url!r} names no database file", hint=example)
    if not os.path.isabs(path):
        raise ConfigError(f"storage URL {url!r} has a relative path", hint=example)
    if path.endswith("/"):
        raise ConfigError(f"storage URL {url!r} names a directory, not a file", hint=example)
    return Path(path)


class SqliteBackend:
    """A :class:`~tether.backend.Backend` on one SQLite file; get one from :func:`open_sqlite`."""

    def __init__(
        self,
        store: Store,
        path: Path,
        lock_fd: int,
        *,
        clock: Callable[[], float],
        watch_buffer: int,
    ) -> None:
        self.path = path
        self._store: Store | None = store
        self._lock_fd = lock_fd
        self._clock = clock
        self._watch_buffer = watch_buffer
        self._lock = trio.Lock()
        self._closed = False
        self._watchers: set[WatchBuffer] = set()
        #: earliest expiry that may still be stored; None means nothing can expire
        self._next_expiry: float | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendClosed(f"storage {self.path} is closed")

    def _open_store(self) -> Store:
        if self._store is None:
            raise BackendClosed(f"storage {self.path} is closed")
        return self._store

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except sqlite3.Error as exc:
            raise BackendError(f"storage {self.path}: {exc}") from exc

    def _publish(self, events: list[Event]) -> None:
        """Hand committed events to watchers; never blocks, so writers never wait on readers."""
        for event in events:
            if (
                event.type == "put"
                and event.item.expires is not None
                and (self._next_expiry is None or event.item.expires < self._next_expiry)
            ):
                self._next_expiry = event.item.expires
        for watcher in list(self._watchers):
            if not watcher.publish(events):
                self._watchers.discard(watcher)

    async def _reap_locked(self, store: Store, now: float) -> int:
        if self._next_expiry is None or self._next_expiry > now:
            return 0
        events, self._next_expiry = await self._call(store.reap, now)
        self._publish(events)
        return len(events)

    async def _read(self, fn: Callable[[Store, float], T]) -> T:
        self._check_open()
        async with self._lock:
            return await self._call(fn, self._open_store(), self._clock())

    async def _write(self, fn: Callable[[Store, float], tuple[T, list[Event]]]) -> T:
        self._check_open()
        async with self._lock:
            store = self._open_store()
            now = self._clock()
            # Expired keys are deleted (with their events) before the write, so a watcher
            # sees "expired" before "created again", never a put on top of a ghost.
            await self._reap_locked(store, now)
            result, events = await self._call(fn, store, now)
            # Between the commit and here there is no checkpoint, so a cancelled caller
            # cannot commit a write that watchers never hear about.
            self._publish(events)
            return result

    # -- the Backend protocol ---------------------------------------------------------------

    async def get(self, key: str) -> Item | None:
        """Return the live item at ``key``, or None."""
        check_key(key)
        return await self._read(lambda store, now: store.get(key, now))

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> Item:
        """Create or replace ``key``; return the written item."""
        return await self._apply_one(Op.put(key, value, ttl=ttl))

    async def create(self, key: str, value: bytes, *, ttl: float | None = None) -> Item:
        """Write ``key`` only if absent; raise ``AlreadyExists`` otherwise."""
        return await self._apply_one(Op.put(key, value, ttl=ttl, expected_revision=0))

    async def compare_and_swap(
        self, key: str, value: bytes, *, expected_revision: int, ttl: float | None = None
    ) -> Item:
        """Replace ``key`` only if it is at ``expected_revision``."""
        check_swap_revision(expected_revision)
        return await self._apply_one(
            Op.put(key, value, ttl=ttl, expected_revision=expected_revision)
        )

    async def _apply_one(self, op: Op) -> Item:
        events = await self._write(lambda store, now: _events_twice(store.apply([op], now)))
        return events[0].item

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        op = Op.delete(key)
        events = await self._write(lambda store, now: _events_twice(store.apply([op], now)))
        return bool(events)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every live key starting with ``prefix`` under one revision; return how many."""
        check_prefix(prefix)
        return await self._write(lambda store, now: store.delete_prefix(prefix, now))

    async def range(self, prefix: str, *, limit: int | None = None) -> list[Item]:
        """Return the live items whose key starts with ``prefix``, sorted by key."""
        check_prefix(prefix)
        check_limit(limit)
        if limit == 0:
            self._check_open()
            return []
        return await self._read(lambda store, now: store.range(prefix, now, limit))

    async def apply(self, ops: Sequence[Op]) -> int:
        """Apply ``ops`` atomically under one new revision and return it."""
        ops = check_batch(ops)
        if not ops:
            return await self._read(lambda store, now: store.current_revision())
        return await self._write(lambda store, now: store.apply(ops, now))

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[Event]]:
        """Subscribe to committed changes under ``prefix`` (see :class:`Backend.watch`)."""
        check_prefix(prefix)
        self._check_open()
        watcher = WatchBuffer(prefix, self._watch_buffer)
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)
            watcher.close()

    async def close(self) -> None:
        """Close the database and end every watch with :class:`BackendClosed`. Idempotent."""
        self._closed = True
        async with self._lock:  # operations already queued finish first
            if self._store is None:
                return
            store, self._store = self._store, None
            for watcher in self._watchers:
                watcher.fail(BackendClosed(f"storage {self.path} was closed"))
            self._watchers.clear()
            try:
                await trio.to_thread.run_sync(store.close)
            finally:
                os.close(self._lock_fd)

    # -- beyond the protocol ----------------------------------------------------------------

    async def reap_expired(self) -> int:
        """Delete expired keys now and notify watchers; return how many were deleted.

        The reaper task calls this periodically; tests with a fake clock call it directly.
        """
        self._check_open()
        async with self._lock:
            return await self._reap_locked(self._open_store(), self._clock())

    async def _reap_forever(
        self, interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                await self.reap_expired()
            except BackendClosed:
                return
            except BackendError as exc:
                # Reads already hide expired keys; a storage hiccup must not stop the
                # service, and the next pass retries.
                log.warning("deleting expired keys failed: %s", exc)


def _events_twice(result: tuple[int, list[Event]]) -> tuple[list[Event], list[Event]]:
    """Make a batch's events also its result, for the single-key wrappers that report them."""
    return result[1], result[1]


@asynccontextmanager
async def open_sqlite(
    url: str,
    *,
    clock: Callable[[], float] = time.time,
    reap_interval: float = 1.0,
    watch_buffer: int = 4096,
) -> AsyncIterator[SqliteBackend]:
    """Open the SQLite backend at ``url`` and run its TTL reaper until the block exits.

    :param url: ``sqlite:///absolute/path/backend.db``; the parent directory is created
        (mode 0700) if missing.
    :param clock: unix time source for TTLs; tests inject a fake one instead of sleeping.
    :param reap_interval: seconds between passes of the reaper that deletes expired keys and
        emits their delete events.
    :param watch_buffer: events a watcher may lag behind before it gets ``WatchOverflow``.
    :raises ConfigError: the URL is malformed.
    :raises BackendError: the file is not a SQLite database, or another process owns it.
    """
    path = parse_sqlite_url(url)
    if not (reap_interval > 0 and math.isfinite(reap_interval)):
        raise ValueError(f"reap_interval must be a positive number, got {reap_interval!r}")
    if watch_buffer < 1:
        raise ValueError(f"watch_buffer must be at least 1, got {watch_buffer!r}")
    conn, lock_fd = await trio.to_thread.run_sync(connect, path)
    store = Store(conn)
    backend = SqliteBackend(store, path, lock_fd, clock=clock, watch_buffer=watch_buffer)
    try:
        backend._next_expiry = await backend._call(store.next_expiry)
        body_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            await nursery.start(backend._reap_forever, reap_interval)
            try:
                yield backend
            except BaseException as exc:  # noqa: BLE001 - re-raised below, unwrapped
                # Raised inside the nursery, the caller's own exception would come out
                # wrapped in an ExceptionGroup; carry it out and raise it as it was.
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error
    finally:
        with trio.CancelScope(shield=True):
            await backend.close()
