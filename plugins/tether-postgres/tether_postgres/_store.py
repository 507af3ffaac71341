"""The SQL side of the PostgreSQL backend: the schema and every statement, all synchronous.

Each function takes one psycopg connection (autocommit, so every transaction is explicit) and
runs on a trio worker thread; :mod:`tether_postgres.backend` is the trio side.

The guarantees come from one row: every write transaction starts by incrementing
``tether_meta.revision``, which takes that row's lock until it commits. Writers, from this
process or from another auth server on the same database, therefore run one at a time, each
sees everything committed before it (READ COMMITTED takes a fresh snapshot per statement), and
the revision order is the commit order. A transaction that changes nothing rolls back, so every
committed revision has at least one row in ``tether_events``: watchers read that log from the
last revision they delivered, and a gap in it means pruning removed events they never read.

Keys are stored as their UTF-8 bytes (``bytea``): PostgreSQL compares ``bytea`` byte by byte,
which orders exactly like Python compares the strings, whatever the database's collation, and
a prefix is the index range ``prefix <= key < upper`` with no ``LIKE`` escaping to get wrong.
Expiry times are unix seconds on the database server's clock, the one clock every auth server
shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from tether.api import Event, Item, Op, check_condition

__all__ = [
    "CHANNEL",
    "SCHEMA_VERSION",
    "NoChange",
    "apply",
    "current_revision",
    "delete_prefix",
    "events_after",
    "get",
    "prepare",
    "prune_events",
    "range_",
    "reap",
]

#: Bumped when the table layout changes, so an old Tether refuses a newer database.
SCHEMA_VERSION = 1
#: The NOTIFY channel; each committed write announces its revision on it.
CHANNEL = "tether_events"
#: An arbitrary advisory lock id: two auth servers starting at once create the schema once.
_SCHEMA_LOCK = 0x7E7E_0001

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tether_meta (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        schema_version integer NOT NULL,
        revision bigint NOT NULL
    )""",
    f"INSERT INTO tether_meta (schema_version, revision) VALUES ({SCHEMA_VERSION}, 0) "
    "ON CONFLICT DO NOTHING",
    """CREATE TABLE IF NOT EXISTS tether_items (
        key bytea PRIMARY KEY,
        value bytea NOT NULL,
        revision bigint NOT NULL,
        expires double precision
    )""",
    "CREATE INDEX IF NOT EXISTS tether_items_expires ON tether_items (expires) "
    "WHERE expires IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS tether_events (
        id bigserial PRIMARY KEY,
        revision bigint NOT NULL,
        type text NOT NULL CHECK (type IN ('put', 'delete')),
        key bytea NOT NULL,
        value bytea NOT NULL,
        expires double precision
    )""",
    "CREATE INDEX IF NOT EXISTS tether_events_revision ON tether_events (revision)",
)

_NOW = "extract(epoch FROM clock_timestamp())::float8"
_LIVE = f"(expires IS NULL OR expires > {_NOW})"
_COLUMNS = "key, value, revision, expires"

Row = tuple[bytes, bytes, int, float | None]


class NoChange(Exception):
    """Raised inside a write transaction that changes nothing, to roll its revision back."""

    def __init__(self, revision: int, result: object) -> None:
        super().__init__(revision)
        self.revision = revision
        self.result = result


def prepare(conn: psycopg.Connection) -> int:
    """Create the tables if missing; return the schema version the database holds."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT schema_version FROM tether_meta").fetchone()
    assert row is not None
    return int(row[0])


def _upper_bound(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every one starting with ``prefix`` (None: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _prefix_clause(prefix: str) -> tuple[str, tuple[bytes, ...]]:
    raw = prefix.encode()
    upper = _upper_bound(raw)
    if not raw:
        return "true", ()
    if upper is None:
        return "key >= %s", (raw,)
    return "key >= %s AND key < %s", (raw, upper)


def _item(row: Row) -> Item:
    return Item(key=bytes(row[0]).decode(), value=bytes(row[1]), revision=row[2], expires=row[3])


def _deleted(key: str, revision: int) -> Event:
    return Event(type="delete", item=Item(key=key, value=b"", revision=revision, expires=None))


def current_revision(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT revision FROM tether_meta").fetchone()
    assert row is not None
    return int(row[0])


def get(conn: psycopg.Connection, key: str) -> Item | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM tether_items WHERE key = %s AND {_LIVE}",
        (key.encode(),),
    ).fetchone()
    return None if row is None else _item(row)


def range_(conn: psycopg.Connection, prefix: str, limit: int | None) -> list[Item]:
    clause, args = _prefix_clause(prefix)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM tether_items WHERE {clause} AND {_LIVE} ORDER BY key LIMIT %s",
        (*args, limit),
    ).fetchall()
    return [_item(row) for row in rows]


def _bump(conn: psycopg.Connection) -> tuple[int, float]:
    """Take the writers' lock (the counter row) and the next revision; return it and now."""
    row = conn.execute(
        f"UPDATE tether_meta SET revision = revision + 1 RETURNING revision, {_NOW}"
    ).fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def _log(conn: psycopg.Connection, revision: int, events: Sequence[Event]) -> None:
    conn.execute(
        "INSERT INTO tether_events (revision, type, key, value, expires) "
        "SELECT %s, t, k, v, e FROM unnest(%s::text[], %s::bytea[], %s::bytea[], "
        "%s::float8[]) AS u(t, k, v, e)",
        (
            revision,
            [e.type for e in events],
            [e.item.key.encode() for e in events],
            [e.item.value for e in events],
            [e.item.expires for e in events],
        ),
    )
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(revision)))


def _reap_locked(conn: psycopg.Connection, revision: int, now: float) -> list[Event]:
    """Delete keys expired at ``now`` under ``revision`` (the lock held); return the events."""
    rows = conn.execute(
        "DELETE FROM tether_items WHERE expires <= %s RETURNING key", (now,)
    ).fetchall()
    events = [_deleted(bytes(row[0]).decode(), revision) for row in rows]
    events.sort(key=lambda event: event.item.key)
    if events:
        _log(conn, revision, events)
    return events


def _begin_write(conn: psycopg.Connection) -> tuple[int, int, float]:
    """Lock, reap what expired (under its own revision), and return (base, revision, now).

    Reaping first means a watcher hears "expired" before "created again", never a put on top
    of a ghost, exactly as with SQLite. ``base`` is the revision before this transaction.
    """
    revision, now = _bump(conn)
    base = revision - 1
    if _reap_locked(conn, revision, now):
        revision, now = _bump(conn)
    return base, revision, now


def reap(conn: psycopg.Connection) -> list[Event]:
    """Delete every expired key under one new revision; return their delete events."""
    # Most passes find nothing: look first, without taking the writers' lock.
    if (
        conn.execute(f"SELECT 1 FROM tether_items WHERE expires <= {_NOW} LIMIT 1").fetchone()
        is None
    ):
        return []
    try:
        with conn.transaction():
            revision, now = _bump(conn)
            events = _reap_locked(conn, revision, now)
            if not events:
                raise NoChange(revision - 1, [])
    except NoChange:
        return []
    return events


def apply(conn: psycopg.Connection, ops: Sequence[Op]) -> tuple[int, list[Event]]:
    """Apply ``ops`` atomically under one new revision; return it and the events."""
    try:
        with conn.transaction():
            base, revision, now = _begin_write(conn)
            keys = [op.key.encode() for op in ops]
            rows = conn.execute(
                "SELECT key, revision FROM tether_items WHERE key = ANY(%s) "
                "AND (expires IS NULL OR expires > %s)",
                (keys, now),
            ).fetchall()
            live = {bytes(row[0]).decode(): int(row[1]) for row in rows}
            for op in ops:
                check_condition(op, live.get(op.key))
            puts = [op for op in ops if op.type == "put"]
            deletes = [op for op in ops if op.type == "delete" and op.key in live]
            if not puts and not deletes:
                raise NoChange(base, [])
            events: list[Event] = []
            for op in ops:
                if op.type == "put":
                    expires = None if op.ttl is None else now + op.ttl
                    item = Item(key=op.key, value=op.value, revision=revision, expires=expires)
                    events.append(Event(type="put", item=item))
                elif op.key in live:
                    events.append(_deleted(op.key, revision))
            if puts:
                conn.execute(
                    "INSERT INTO tether_items (key, value, revision, expires) "
                    "SELECT k, v, %s, e FROM unnest(%s::bytea[], %s::bytea[], %s::float8[]) "
                    "AS u(k, v, e) ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                    "revision = excluded.revision, expires = excluded.expires",
                    (
                        revision,
                        [e.item.key.encode() for e in events if e.type == "put"],
                        [e.item.value for e in events if e.type == "put"],
                        [e.item.expires for e in events if e.type == "put"],
                    ),
                )
            if deletes:
                conn.execute(
                    "DELETE FROM tether_items WHERE key = ANY(%s)",
                    ([op.key.encode() for op in deletes],),
                )
            _log(conn, revision, events)
    except NoChange as nothing:
        return nothing.revision, []
    return revision, events


def delete_prefix(conn: psycopg.Connection, prefix: str) -> tuple[int, list[Event]]:
    """Delete every live key under ``prefix`` under one new revision; return count, events."""
    clause, args = _prefix_clause(prefix)
    try:
        with conn.transaction():
            _, revision, _ = _begin_write(conn)
            rows = conn.execute(
                f"DELETE FROM tether_items WHERE {clause} RETURNING key",
                args,
            ).fetchall()
            if not rows:
                raise NoChange(0, [])
            keys = sorted(bytes(row[0]).decode() for row in rows)
            events = [_deleted(key, revision) for key in keys]
            _log(conn, revision, events)
    except NoChange:
        return 0, []
    return len(events), events


def events_after(conn: psycopg.Connection, revision: int, limit: int) -> list[Event]:
    """The logged events of whole revisions after ``revision``, in order, about ``limit`` rows.

    A revision is never split: if the rows that fit end inside one, it is left for the next
    call, unless it is the only one, which is then returned whole.
    """
    rows = conn.execute(
        "SELECT revision, type, key, value, expires FROM tether_events WHERE revision > %s "
        "ORDER BY revision, id LIMIT %s",
        (revision, limit + 1),
    ).fetchall()
    if len(rows) > limit:
        last = rows[-1][0]
        if rows[0][0] == last:
            rows = conn.execute(
                "SELECT revision, type, key, value, expires FROM tether_events "
                "WHERE revision = %s ORDER BY id",
                (last,),
            ).fetchall()
        else:
            rows = [row for row in rows if row[0] != last]
    return [
        Event(
            type=row[1],
            item=Item(
                key=bytes(row[2]).decode(), value=bytes(row[3]), revision=row[0], expires=row[4]
            ),
        )
        for row in rows
    ]


def prune_events(conn: psycopg.Connection, keep: int) -> int:
    """Drop logged events older than the last ``keep`` revisions; return how many."""
    cursor = conn.execute(
        "DELETE FROM tether_events WHERE revision <= (SELECT revision FROM tether_meta) - %s",
        (keep,),
    )
    return cursor.rowcount
