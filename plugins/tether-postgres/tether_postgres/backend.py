"""The trio side of the PostgreSQL backend: connections, watchers, the reaper.

psycopg's async API (like asyncpg) runs on asyncio only, so every statement runs through
psycopg's sync API on a trio worker thread (``trio.to_thread.run_sync``), each on a connection
of a small pool. A call is never abandoned when its caller is cancelled: the caller asks the
server to cancel the statement (PostgreSQL's cancel request) and waits for the thread, whose
transaction then rolls back, so a connection is never left mid-transaction and a write is
never half applied. A write that committed before the request arrived is still announced to
watchers, because they read the event log.

Watches: one dispatcher per backend reads ``tether_events`` from the last revision it
delivered and hands each event to the in-process watchers whose prefix matches. It wakes on a
``NOTIFY`` (another auth server wrote), right after this process's own writes, and every
``poll_interval`` in case a notification was lost with a connection. Notifications only
announce; the log is the truth, so coalesced or dropped notifications lose nothing. The
``LISTEN`` connection is waited on with :func:`trio.lowlevel.wait_readable`, no thread.
"""

from __future__ import annotations

import functools
import logging
import math
import select
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tether.api import (
    BackendClosed,
    BackendError,
    ConfigError,
    Event,
    Item,
    Op,
    WatchBuffer,
    WatchOverflow,
    check_batch,
    check_key,
    check_limit,
    check_prefix,
    check_swap_revision,
)
from tether_postgres import _store

__all__ = ["PostgresBackend", "open_postgres", "parse_postgres_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds to wait for the server when connecting, unless the URL sets ``connect_timeout``.
CONNECT_TIMEOUT = 10
#: libpq's TCP settings unless the URL sets them: a database host that vanished (powered
#: off, cut off by the network) is found out within about half a minute, rather than when the
#: kernel gives up retransmitting (a quarter of an hour) or, for a connection waiting for an
#: answer or a notification, never. Keepalive probes find a silent peer (idle 15 s, then 3
#: probes 5 s apart); ``tcp_user_timeout`` ends a connection whose sent data goes
#: unacknowledged for 30 s. A slow server is not affected: its kernel answers both.
TCP_DEFAULTS = {
    "keepalives": 1,
    "keepalives_idle": 15,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
#: Events the dispatcher reads from the log per query.
_FETCH = 1000


def parse_postgres_url(url: str) -> tuple[str, str]:
    """Return the libpq connection string of ``url`` and a name for it without the password.

    :raises ConfigError: not a PostgreSQL URL, unparseable, or naming no database.
    """
    example = "write it as postgresql://user@host:5432/database"
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"storage URL {url!r} is not a postgresql:// URL", hint=example)
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(
            f"storage URL is not a valid PostgreSQL URL: {_one_line(exc)}", hint=example
        ) from exc
    if not params.get("dbname"):
        raise ConfigError("storage URL names no database", hint=example)
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    for setting, default in TCP_DEFAULTS.items():
        params.setdefault(setting, default)
    params.setdefault("application_name", "tether")
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    name = f"postgresql://{host}:{port}/{params['dbname']}"
    return make_conninfo("", **params), name


def _one_line(exc: Exception) -> str:
    """libpq's message on one line: it ends in newlines and indents its second line."""
    return " ".join(str(exc).split())


def _connect(conninfo: str, name: str, stalled_transaction_timeout: float) -> psycopg.Connection:
    """Open one autocommit connection, turning libpq's failures into a clear BackendError.

    The session's ``idle_in_transaction_session_timeout`` is ``stalled_transaction_timeout``:
    this process never leaves a transaction idle, so an idle one means the process froze or
    its network link failed while it held the writers' lock, and the database must end it
    rather than stop every other auth server's writes.
    """
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        text = _one_line(exc)
        if 'database "' in text and "does not exist" in text:
            raise BackendError(
                f"storage {name}: the database does not exist",
                hint="create it (createdb) or fix the database name in storage.url",
            ) from exc
        if (
            "authentication failed" in text
            or "no pg_hba.conf entry" in text
            or ('role "' in text and "does not exist" in text)
        ):
            raise BackendError(
                f"storage {name}: the server refused the login: {text}",
                hint="check the user (and password) in storage.url and the server's pg_hba.conf",
            ) from exc
        raise BackendError(
            f"storage {name}: cannot connect: {text}",
            hint="check that PostgreSQL runs there and storage.url's host and port",
        ) from exc
    try:
        conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
            (f"{max(1, round(stalled_transaction_timeout * 1000))}ms",),
        )
    except psycopg.Error as exc:
        conn.close()
        raise BackendError(f"storage {name}: {_one_line(exc)}") from exc
    return conn


class _Pool:
    """At most ``size`` connections, each used by one call at a time, reconnected on failure."""

    def __init__(
        self, conninfo: str, name: str, size: int, stalled_transaction_timeout: float
    ) -> None:
        self._conninfo = conninfo
        self._name = name
        self.stalled_transaction_timeout = stalled_transaction_timeout
        self._idle: list[psycopg.Connection] = []
        self._slots = trio.Semaphore(size)
        self.closed = False

    async def run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run ``fn`` with a connection on a worker thread (see :func:`_call` on cancelling)."""
        async with self._slots:
            if self.closed:
                raise BackendClosed(f"storage {self._name} is closed")
            conn = self._take_idle()
            if conn is None:
                conn = await trio.to_thread.run_sync(
                    _connect, self._conninfo, self._name, self.stalled_transaction_timeout
                )
            reusable = False
            try:
                result = await _call(conn, fn)
                reusable = True
                return result
            except psycopg.Error as exc:
                reusable = True  # its transaction was rolled back (checked below)
                raise BackendError(f"storage {self._name}: {_one_line(exc)}") from exc
            finally:
                # a cancelled call's connection is not reused: a late cancel request must
                # not hit the next call sent on it
                if (
                    reusable
                    and not self.closed
                    and not conn.broken
                    and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                ):
                    self._idle.append(conn)
                else:
                    conn.close()

    def _take_idle(self) -> psycopg.Connection | None:
        """An idle connection the server has not closed meanwhile, or None.

        An idle connection has nothing to read unless the server ended it (a restart, an
        administrator's ``pg_terminate_backend``): such a one is dropped here, before a call
        is sent on it, instead of failing that call.
        """
        while self._idle:
            conn = self._idle.pop()
            poller = select.poll()  # not select.select: a busy server has fds past 1024
            poller.register(conn.fileno(), select.POLLIN)
            if not poller.poll(0):
                return conn
            conn.close()
        return None

    def close(self) -> None:
        """Close the idle connections; those in use close when their call returns."""
        self.closed = True
        while self._idle:
            self._idle.pop().close()


async def _call(conn: psycopg.Connection, fn: Callable[[psycopg.Connection], T]) -> T:
    """Run ``fn(conn)`` on a worker thread; if the caller is cancelled, cancel it in the server.

    The thread is never abandoned: a cancelled caller sends PostgreSQL a cancel request (the
    statement running, or waiting for the writers' lock, fails and ``fn``'s transaction rolls
    back) and then waits for the thread, so the connection is never left mid-transaction and a
    write is either committed whole (the request came too late; watchers hear of it through
    the log) or not at all. A caller's deadline therefore bounds a wait for the lock.
    """
    done = trio.Event()
    results: list[T] = []
    errors: list[Exception] = []

    async def work() -> None:
        with trio.CancelScope(shield=True):
            try:
                results.append(await trio.to_thread.run_sync(fn, conn))
            except Exception as exc:  # noqa: BLE001 - handed to the caller below
                errors.append(exc)
        done.set()

    async def cancel_in_server() -> None:
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(functools.partial(conn.cancel_safe, timeout=5.0))
            except psycopg.Error as exc:
                log.warning("cancelling a storage call failed (it runs to its end): %s", exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(work)
        try:
            await done.wait()
        except trio.Cancelled:
            nursery.start_soon(cancel_in_server)
            raise
    if errors:
        raise errors[0]
    return results[0]


class PostgresBackend:
    """A :class:`~tether.api.Backend` on a PostgreSQL database (see :func:`open_postgres`)."""

    def __init__(
        self,
        pool: _Pool,
        name: str,
        *,
        revision: int,
        watch_buffer: int,
        keep_revisions: int,
    ) -> None:
        self.name = name
        self._pool = pool
        self._watch_buffer = watch_buffer
        self._keep_revisions = keep_revisions
        self._closed = False
        self._watchers: set[WatchBuffer] = set()
        #: the last revision the dispatcher handed to watchers
        self._delivered = revision
        self._dispatch_lock = trio.Lock()
        self._wake = trio.Event()

    # -- plumbing ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendClosed(f"storage {self.name} is closed")

    async def _run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        self._check_open()
        return await self._pool.run(fn)

    async def _write(self, fn: Callable[[psycopg.Connection], T]) -> T:
        result = await self._run(fn)
        self._wake.set()  # deliver our own write now rather than after the NOTIFY round trip
        return result

    async def _catch_up(self) -> None:
        """Hand every logged event after the last delivered revision to the watchers."""
        async with self._dispatch_lock:
            while True:
                after = self._delivered
                events = await self._run(
                    functools.partial(_store.events_after, revision=after, limit=_FETCH)
                )
                if not events:
                    return
                if events[0].item.revision != after + 1:
                    self._fail_watchers(
                        WatchOverflow(
                            f"the event log of {self.name} was pruned past revision {after} "
                            "before this watch read it",
                            hint="list the keys again and start a new watch",
                        )
                    )
                self._publish(events)
                self._delivered = events[-1].item.revision

    def _publish(self, events: list[Event]) -> None:
        for watcher in list(self._watchers):
            if not watcher.publish(events):
                self._watchers.discard(watcher)

    def _fail_watchers(self, error: BackendError) -> None:
        for watcher in self._watchers:
            watcher.fail(error)
        self._watchers.clear()

    # -- the Backend protocol ---------------------------------------------------------------

    async def get(self, key: str) -> Item | None:
        """Return the live item at ``key``, or None."""
        check_key(key)
        return await self._run(lambda conn: _store.get(conn, key))

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
        _, events = await self._write(lambda conn: _store.apply(conn, [op]))
        return events[0].item

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        op = Op.delete(key)
        _, events = await self._write(lambda conn: _store.apply(conn, [op]))
        return bool(events)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every live key starting with ``prefix`` under one revision; return how many."""
        check_prefix(prefix)
        count, _ = await self._write(lambda conn: _store.delete_prefix(conn, prefix))
        return count

    async def range(self, prefix: str, *, limit: int | None = None) -> list[Item]:
        """Return the live items whose key starts with ``prefix``, sorted by key."""
        check_prefix(prefix)
        check_limit(limit)
        if limit == 0:
            self._check_open()
            return []
        return await self._run(lambda conn: _store.range_(conn, prefix, limit))

    async def apply(self, ops: Sequence[Op]) -> int:
        """Apply ``ops`` atomically under one new revision and return it."""
        ops = check_batch(ops)
        if not ops:
            return await self._run(_store.current_revision)
        revision, _ = await self._write(lambda conn: _store.apply(conn, ops))
        return revision

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[Event]]:
        """Subscribe to committed changes under ``prefix`` (see :class:`tether.api.Backend`)."""
        check_prefix(prefix)
        self._check_open()
        watcher = WatchBuffer(prefix, self._watch_buffer)
        # Deliver everything committed so far to the existing watchers first: the new one
        # starts at the log's present, so it never hears of a write older than itself.
        await self._catch_up()
        async with self._dispatch_lock:
            self._check_open()
            self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)
            watcher.close()

    async def close(self) -> None:
        """Close the connections and end every watch with :class:`BackendClosed`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._fail_watchers(BackendClosed(f"storage {self.name} was closed"))
        self._pool.close()

    # -- beyond the protocol ----------------------------------------------------------------

    async def reap_expired(self) -> int:
        """Delete expired keys now, prune the event log; return how many keys were deleted."""
        events = await self._run(_store.reap)
        if events:
            self._wake.set()
        keep = self._keep_revisions
        await self._run(lambda conn: _store.prune_events(conn, keep))
        return len(events)

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
                # Reads already hide expired keys; a database hiccup must not stop the
                # service, and the next pass retries.
                log.warning("deleting expired keys failed: %s", exc)

    async def _dispatch_forever(
        self, poll_interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while not self._closed:
            with trio.move_on_after(poll_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self._catch_up()
            except BackendClosed:
                return
            except BackendError as exc:
                log.warning("reading the event log failed (retrying): %s", exc)

    async def _listen_forever(
        self,
        conninfo: str,
        retry_interval: float,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Wake the dispatcher on each NOTIFY; reconnect if the connection drops."""
        started = False
        while not self._closed:
            conn: psycopg.Connection | None = None
            try:
                conn = await trio.to_thread.run_sync(
                    _connect, conninfo, self.name, self._pool.stalled_transaction_timeout
                )
                await trio.to_thread.run_sync(conn.execute, f"LISTEN {_store.CHANNEL}")
                if not started:
                    task_status.started()
                    started = True
                self._wake.set()  # anything written while we were not listening
                while True:
                    await trio.lowlevel.wait_readable(conn.fileno())
                    conn.pgconn.consume_input()
                    if conn.pgconn.notifies() is not None:
                        while conn.pgconn.notifies() is not None:
                            pass
                        self._wake.set()
            except (BackendError, psycopg.Error, OSError) as exc:
                log.warning(
                    "listening for changes on %s failed (polling meanwhile): %s", self.name, exc
                )
            finally:
                if conn is not None:
                    conn.close()
            if not started:
                task_status.started()
                started = True
            await trio.sleep(retry_interval)


@asynccontextmanager
async def open_postgres(
    url: str,
    *,
    pool_size: int = 4,
    reap_interval: float = 1.0,
    poll_interval: float = 1.0,
    watch_buffer: int = 4096,
    keep_revisions: int = 10_000,
    stalled_transaction_timeout: float = 10.0,
) -> AsyncIterator[PostgresBackend]:
    """Open the PostgreSQL backend at ``url``; run its reaper and watch dispatcher meanwhile.

    :param url: ``postgresql://user[:password]@host[:port]/database[?libpq parameters]``
        (``postgres://`` too). The database must exist; the tables are created if missing.
    :param pool_size: connections used for calls at once.
    :param reap_interval: seconds between passes of the reaper that deletes expired keys (and
        emits their delete events) and prunes the event log.
    :param poll_interval: seconds between reads of the event log when no NOTIFY arrives.
    :param watch_buffer: events a watcher may lag behind before it gets ``WatchOverflow``.
    :param keep_revisions: revisions of events the log keeps for watchers that lag.
    :param stalled_transaction_timeout: seconds after which the database ends a transaction
        of this process that stalled (a frozen process, a failed link): until then it holds
        the lock every auth server's writes wait for.
    :raises ConfigError: the URL is malformed.
    :raises BackendError: the server is unreachable, refuses the login, the database does not
        exist, or holds tables of a newer Tether.
    """
    conninfo, name = parse_postgres_url(url)
    for label, value in (
        ("reap_interval", reap_interval),
        ("poll_interval", poll_interval),
        ("stalled_transaction_timeout", stalled_transaction_timeout),
    ):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{label} must be a positive number, got {value!r}")
    for label, count in (
        ("pool_size", pool_size),
        ("watch_buffer", watch_buffer),
        ("keep_revisions", keep_revisions),
    ):
        if count < 1:
            raise ValueError(f"{label} must be at least 1, got {count!r}")
    pool = _Pool(conninfo, name, pool_size, stalled_transaction_timeout)
    try:
        version = await pool.run(_store.prepare)
        if version > _store.SCHEMA_VERSION:
            raise BackendError(
                f"storage {name} was written by a newer Tether (schema {version})",
                hint="upgrade Tether",
            )
        revision = await pool.run(_store.current_revision)
    except BaseException:
        pool.close()
        raise
    backend = PostgresBackend(
        pool, name, revision=revision, watch_buffer=watch_buffer, keep_revisions=keep_revisions
    )
    try:
        body_error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            await nursery.start(backend._listen_forever, conninfo, min(poll_interval, 1.0))
            await nursery.start(backend._dispatch_forever, poll_interval)
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
