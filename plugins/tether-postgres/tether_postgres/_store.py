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

A write is one call of a PL/pgSQL function (:data:`_FUNCTIONS`) that does all of it in the
server: the revision, reaping, the conditions, the rows, the log and the notification. Sent
with its ``BEGIN`` as one query, then ``COMMIT``, it costs two round trips rather than one
per statement; the commit stays the client's, so a write whose answer never reaches this
process (its link to the database failed) is rolled back by ``stalled_transaction_timeout``
rather than committed behind its caller's back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

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

# The write functions. Their names end in a version of their own: a Tether that changes one
# gives it a new name, so Tethers of two releases sharing a database (a rolling upgrade) each
# call theirs, and CREATE OR REPLACE at open never swaps another release's function away.
# Each does, in the same order, what a write did as one statement per step from Python: the
# writers' lock and revision, the reaping of expired keys under a revision of their own, the
# rows, the log and the notification. PL/pgSQL runs each statement with a fresh snapshot (READ
# COMMITTED), so what it reads after taking the lock includes every earlier commit.
_FUNCTIONS = (
    # Log deletes of ``gone`` (sorted keys) under ``rev`` and announce it.
    f"""CREATE OR REPLACE FUNCTION tether_log_deletes_v1(rev bigint, gone bytea[])
    RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO tether_events (revision, type, key, value, expires)
            SELECT rev, 'delete', k, '', NULL FROM unnest(gone) WITH ORDINALITY AS u(k, n)
            ORDER BY n;
        PERFORM pg_notify('{CHANNEL}', rev::text);
    END $$""",
    # With the lock held: delete the keys expired at ``clock`` under ``rev``, log them;
    # return their keys, sorted (NULL: none).
    """CREATE OR REPLACE FUNCTION tether_reap_locked_v1(rev bigint, clock float8)
    RETURNS bytea[] LANGUAGE plpgsql AS $$
    DECLARE
        gone bytea[];
    BEGIN
        WITH d AS (DELETE FROM tether_items WHERE expires <= clock RETURNING key)
            SELECT array_agg(d.key ORDER BY d.key) INTO gone FROM d;
        IF gone IS NOT NULL THEN
            PERFORM tether_log_deletes_v1(rev, gone);
        END IF;
        RETURN gone;
    END $$""",
    # Take the lock and a new revision, reaping first under a revision of its own; return
    # the revision before (``base``), the new one and the clock.
    f"""CREATE OR REPLACE FUNCTION tether_begin_write_v1(
        OUT base bigint, OUT rev bigint, OUT clock float8)
    LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE tether_meta SET revision = revision + 1 RETURNING revision, {_NOW}
            INTO rev, clock;
        base := rev - 1;
        IF tether_reap_locked_v1(rev, clock) IS NOT NULL THEN
            UPDATE tether_meta SET revision = revision + 1 RETURNING revision, {_NOW}
                INTO rev, clock;
        END IF;
    END $$""",
    # A batch, one array element per op. ``live`` is each op's key's live revision (NULL:
    # absent) in op order. status: 'failed' (a condition does not hold: the caller raises
    # its error and rolls back), 'unchanged' (only deletes of absent keys: the caller rolls
    # back, ``rev`` is the revision before) or 'written'.
    f"""CREATE OR REPLACE FUNCTION tether_apply_v1(
        kinds text[], keys bytea[], vals bytea[], ttls float8[], expected bigint[],
        OUT status text, OUT rev bigint, OUT clock float8, OUT live bigint[])
    LANGUAGE plpgsql AS $$
    DECLARE
        base bigint;
    BEGIN
        SELECT * INTO base, rev, clock FROM tether_begin_write_v1();
        SELECT array_agg(i.revision ORDER BY u.n) INTO live
            FROM unnest(keys) WITH ORDINALITY AS u(k, n)
            LEFT JOIN tether_items i ON i.key = u.k AND (i.expires IS NULL OR i.expires > clock);
        IF EXISTS (SELECT 1 FROM unnest(expected, live) AS c(e, l)
                   WHERE (e = 0 AND l IS NOT NULL) OR (e > 0 AND l IS DISTINCT FROM e)) THEN
            status := 'failed';
            RETURN;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM unnest(kinds, live) AS c(t, l)
                       WHERE t = 'put' OR l IS NOT NULL) THEN
            status := 'unchanged';
            rev := base;
            RETURN;
        END IF;
        INSERT INTO tether_items (key, value, revision, expires)
            SELECT k, v, rev, clock + t FROM unnest(kinds, keys, vals, ttls) AS u(kind, k, v, t)
            WHERE kind = 'put'
            ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                revision = excluded.revision, expires = excluded.expires;
        DELETE FROM tether_items WHERE key IN (
            SELECT k FROM unnest(kinds, keys, live) AS u(kind, k, l)
            WHERE kind = 'delete' AND l IS NOT NULL);
        INSERT INTO tether_events (revision, type, key, value, expires)
            SELECT rev, kind, k, v, clock + t
            FROM unnest(kinds, keys, vals, ttls, live) WITH ORDINALITY AS u(kind, k, v, t, l, n)
            WHERE kind = 'put' OR l IS NOT NULL ORDER BY n;
        PERFORM pg_notify('{CHANNEL}', rev::text);
        status := 'written';
    END $$""",
    # Delete every key in [lo, hi) (hi NULL: no upper end); ``gone`` NULL: none (the caller
    # rolls back).
    """CREATE OR REPLACE FUNCTION tether_delete_range_v1(
        lo bytea, hi bytea, OUT rev bigint, OUT gone bytea[])
    LANGUAGE plpgsql AS $$
    BEGIN
        SELECT w.rev INTO rev FROM tether_begin_write_v1() AS w;
        WITH d AS (DELETE FROM tether_items WHERE key >= lo AND (hi IS NULL OR key < hi)
                   RETURNING key)
            SELECT array_agg(d.key ORDER BY d.key) INTO gone FROM d;
        IF gone IS NOT NULL THEN
            PERFORM tether_log_deletes_v1(rev, gone);
        END IF;
    END $$""",
    # The reaper's pass, committed on its own (no caller waits for it): look without the
    # lock first, as most passes find nothing; take a revision only if something expired.
    f"""CREATE OR REPLACE FUNCTION tether_reap_v1(OUT rev bigint, OUT gone bytea[])
    LANGUAGE plpgsql AS $$
    DECLARE
        clock float8;
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM tether_items WHERE expires <= {_NOW}) THEN
            RETURN;
        END IF;
        PERFORM 1 FROM tether_meta FOR UPDATE;
        SELECT revision + 1, {_NOW} INTO rev, clock FROM tether_meta;
        gone := tether_reap_locked_v1(rev, clock);
        IF gone IS NOT NULL THEN
            UPDATE tether_meta SET revision = rev;
        END IF;
    END $$""",
)

Row = tuple[bytes, bytes, int, float | None]


class NoChange(Exception):
    """Raised inside a write transaction that changes nothing, to roll its revision back."""

    def __init__(self, revision: int, result: object) -> None:
        super().__init__(revision)
        self.revision = revision
        self.result = result


def prepare(conn: psycopg.Connection) -> int:
    """Create the tables if missing, and the write functions; return the schema version.

    The functions are left alone in a database of a newer schema: the caller refuses it, and
    must not replace what a newer Tether sharing it relies on.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT schema_version FROM tether_meta").fetchone()
        assert row is not None
        version = int(row[0])
        if version <= SCHEMA_VERSION:
            for statement in _FUNCTIONS:
                conn.execute(statement)
    return version


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


@contextmanager
def _write(
    conn: psycopg.Connection, call: str, args: Sequence[object]
) -> Iterator[tuple[Any, ...]]:
    """Call a write function in a transaction and yield its row; the block commits or raises.

    ``BEGIN`` and the call go out as one query, one round trip (psycopg's pipeline mode would
    take several: it syncs after ``BEGIN``), which binds the arguments on this side: a query
    of two statements has no parameters. The ``COMMIT``, or the ``ROLLBACK`` of a block that
    raised, is a second one. The server waits for it as an idle transaction, which
    stalled_transaction_timeout ends if this process never sends it (its link failed), so
    that the writers' lock is not held until TCP gives up.
    """
    cursor = psycopg.ClientCursor(conn)
    try:
        cursor.execute(f"BEGIN; {call}", args)
        cursor.nextset()
        row = cursor.fetchone()
        assert row is not None
        yield tuple(row)
    except BaseException:
        if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def reap(conn: psycopg.Connection) -> list[Event]:
    """Delete every expired key under one new revision; return their delete events."""
    # One statement in autocommit: nobody waits for the reaper's answer, so it may commit
    # without this process.
    row = conn.execute("SELECT * FROM tether_reap_v1()").fetchone()
    assert row is not None
    revision, gone = row
    if gone is None:
        return []
    return [_deleted(bytes(key).decode(), int(revision)) for key in gone]


def apply(conn: psycopg.Connection, ops: Sequence[Op]) -> tuple[int, list[Event]]:
    """Apply ``ops`` atomically under one new revision; return it and the events."""
    args = (
        [op.type for op in ops],
        [op.key.encode() for op in ops],
        [op.value for op in ops],
        [op.ttl for op in ops],
        [op.expected_revision for op in ops],
    )
    try:
        with _write(
            conn,
            "SELECT * FROM tether_apply_v1(%s::text[], %s::bytea[], %s::bytea[], "
            "%s::float8[], %s::bigint[])",
            args,
        ) as (status, revision, now, live):
            live = live or [None] * len(ops)
            if status == "failed":
                for op, current in zip(ops, live, strict=True):
                    check_condition(op, current)
                raise AssertionError(f"the database found a failed condition in {ops!r}")
            if status == "unchanged":
                raise NoChange(int(revision), [])
    except NoChange as nothing:
        return nothing.revision, []
    events: list[Event] = []
    for op, current in zip(ops, live, strict=True):
        if op.type == "put":
            # the function stored now + ttl, the same float sum as here
            expires = None if op.ttl is None else now + op.ttl
            item = Item(key=op.key, value=op.value, revision=revision, expires=expires)
            events.append(Event(type="put", item=item))
        elif current is not None:
            events.append(_deleted(op.key, revision))
    return revision, events


def delete_prefix(conn: psycopg.Connection, prefix: str) -> tuple[int, list[Event]]:
    """Delete every live key under ``prefix`` under one new revision; return count, events."""
    raw = prefix.encode()
    try:
        with _write(
            conn,
            "SELECT * FROM tether_delete_range_v1(%s::bytea, %s::bytea)",
            (raw, _upper_bound(raw)),
        ) as (revision, gone):
            if gone is None:
                raise NoChange(0, [])
    except NoChange:
        return 0, []
    events = [_deleted(bytes(key).decode(), revision) for key in gone]
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
