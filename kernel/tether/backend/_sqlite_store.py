"""The SQL side of the SQLite backend: the file, its schema, and every statement.

Separate from :mod:`tether.backend._sqlite` because everything here is synchronous and runs on
a worker thread, one call at a time, while that module is the trio side (the lock that
serializes calls, watchers, expiry). Keeping the SQL in one place makes the storage format and
its guarantees (WAL with ``synchronous=FULL``, one owning process, revisions bumped in the
same transaction as the write) readable on their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from tether.backend._base import BackendError, Event, Item, Op
from tether.backend._checks import check_condition

__all__ = ["BUSY_TIMEOUT", "SCHEMA_VERSION", "Store", "connect"]

#: Bumped when the table layout changes, so an old Tether refuses a newer database.
SCHEMA_VERSION = 1
#: How long a statement waits for a lock held by another connection (a backup tool, say).
BUSY_TIMEOUT = 5.0

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    revision INTEGER NOT NULL,
    expires REAL
);
CREATE INDEX IF NOT EXISTS items_expires ON items (expires) WHERE expires IS NOT NULL;
INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', {SCHEMA_VERSION});
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
COMMIT;
"""

_LIVE = "(expires IS NULL OR expires > ?)"


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound).

    SQLite compares TEXT as UTF-8 bytes, which orders exactly like Python compares code points,
    so ``prefix <= key < bound`` selects the prefix with the primary-key index.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop())
        if code < 0x10FFFF:
            code += 1
            if 0xD800 <= code <= 0xDFFF:  # surrogates cannot occur in keys
                code = 0xE000
            return "".join(chars) + chr(code)
    return None


def _prefix_clause(prefix: str) -> tuple[str, tuple[str, ...]]:
    upper = _prefix_upper_bound(prefix)
    if not prefix:
        return "1", ()
    if upper is None:
        return "key >= ?", (prefix,)
    return "key >= ? AND key < ?", (prefix, upper)


def _item(row: tuple[str, bytes, int, float | None]) -> Item:
    return Item(key=row[0], value=bytes(row[1]), revision=row[2], expires=row[3])


def _deleted(key: str, revision: int) -> Event:
    return Event(type="delete", item=Item(key=key, value=b"", revision=revision, expires=None))


class Store:
    """The synchronous SQL side. Each method runs on a worker thread, never two at once.

    ``now`` is passed in rather than read here so that one operation sees one instant, and
    so the clock stays injectable.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so conditions checked inside the
        # transaction still hold when it commits.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _revision(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        return int(row[0])

    def _next_revision(self, conn: sqlite3.Connection) -> int:
        revision = self._revision(conn) + 1
        conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        return revision

    def current_revision(self) -> int:
        return self._revision(self.conn)

    def next_expiry(self) -> float | None:
        row = self.conn.execute("SELECT MIN(expires) FROM items").fetchone()
        return None if row[0] is None else float(row[0])

    def get(self, key: str, now: float) -> Item | None:
        row = self.conn.execute(
            f"SELECT key, value, revision, expires FROM items WHERE key = ? AND {_LIVE}",
            (key, now),
        ).fetchone()
        return None if row is None else _item(row)

    def range(self, prefix: str, now: float, limit: int | None) -> list[Item]:
        clause, args = _prefix_clause(prefix)
        rows = self.conn.execute(
            f"SELECT key, value, revision, expires FROM items WHERE {clause} AND {_LIVE} "
            "ORDER BY key LIMIT ?",
            (*args, now, -1 if limit is None else limit),
        ).fetchall()
        return [_item(row) for row in rows]

    def reap(self, now: float) -> tuple[list[Event], float | None]:
        """Delete every expired key under one revision; return the events and next expiry."""
        with self._transaction() as conn:
            keys = [
                row[0]
                for row in conn.execute(
                    "SELECT key FROM items WHERE expires <= ? ORDER BY key", (now,)
                )
            ]
            events: list[Event] = []
            if keys:
                revision = self._next_revision(conn)
                conn.execute("DELETE FROM items WHERE expires <= ?", (now,))
                events = [_deleted(key, revision) for key in keys]
        return events, self.next_expiry()

    def apply(self, ops: Sequence[Op], now: float) -> tuple[int, list[Event]]:
        with self._transaction() as conn:
            current: dict[str, int | None] = {}
            for op in ops:
                row = conn.execute(
                    f"SELECT revision FROM items WHERE key = ? AND {_LIVE}", (op.key, now)
                ).fetchone()
                current[op.key] = None if row is None else int(row[0])
                check_condition(op, current[op.key])
            if all(op.type == "delete" and current[op.key] is None for op in ops):
                return self._revision(conn), []  # nothing changes, so no new revision
            revision = self._next_revision(conn)
            events: list[Event] = []
            for op in ops:
                if op.type == "put":
                    expires = None if op.ttl is None else now + op.ttl
                    conn.execute(
                        "INSERT INTO items (key, value, revision, expires) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                        "revision = excluded.revision, expires = excluded.expires",
                        (op.key, op.value, revision, expires),
                    )
                    item = Item(key=op.key, value=op.value, revision=revision, expires=expires)
                    events.append(Event(type="put", item=item))
                elif current[op.key] is not None:
                    conn.execute("DELETE FROM items WHERE key = ?", (op.key,))
                    events.append(_deleted(op.key, revision))
        return revision, events

    def delete_prefix(self, prefix: str, now: float) -> tuple[int, list[Event]]:
        clause, args = _prefix_clause(prefix)
        with self._transaction() as conn:
            keys = [
                row[0]
                for row in conn.execute(
                    f"SELECT key FROM items WHERE {clause} AND {_LIVE} ORDER BY key",
                    (*args, now),
                )
            ]
            if not keys:
                return 0, []
            revision = self._next_revision(conn)
            conn.executemany("DELETE FROM items WHERE key = ?", [(key,) for key in keys])
        return len(keys), [_deleted(key, revision) for key in keys]

    def close(self) -> None:
        self.conn.close()


def _lock_file(path: Path) -> int:
    """Take the single-owner lock next to the database, or explain who holds it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackendError(f"cannot create storage lock file {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BackendError(
            f"storage {path} is in use by another process",
            hint="only one auth service may own a SQLite database; stop the other one",
        ) from None
    return fd


def connect(path: Path) -> tuple[sqlite3.Connection, int]:
    """Open (creating if needed) the database at ``path``; return it and the held lock fd."""
    if not path.parent.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass  # created concurrently; fine
        except OSError as exc:
            raise BackendError(
                f"cannot create storage directory {path.parent}: {exc.strerror}"
            ) from exc
    lock_fd = _lock_file(path)
    try:
        try:
            # Create it ourselves so the database (and SQLite's -wal/-shm, which copy its
            # mode) are private to the service user.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except OSError as exc:
            raise BackendError(f"cannot open storage {path}: {exc.strerror}") from exc
        try:
            _prepare(conn, path)
        except BaseException:
            conn.close()
            raise
    except BaseException:
        os.close(lock_fd)
        raise
    return conn, lock_fd


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    hint = "restore it from a backup, or move it away to start with empty storage"
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        conn.executescript(_SCHEMA)
        version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackendError(
            f"storage file {path} is not a usable SQLite database: {exc}", hint=hint
        ) from exc
    if str(mode).lower() != "wal":
        raise BackendError(
            f"storage file {path} cannot use write-ahead logging (journal mode {mode})",
            hint="put it on a local file system",
        )
    if version > SCHEMA_VERSION:
        raise BackendError(
            f"storage file {path} was written by a newer Tether (schema {version})",
            hint="upgrade Tether",
        )
