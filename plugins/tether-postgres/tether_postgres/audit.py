"""An audit sink on PostgreSQL: every auth server of a cluster records into one table and
searches one log.

The JSON-lines sink writes each auth server's events to its own disk, so with two auth
servers behind the proxies ``tetherctl audit search`` sees half of what happened. This sink
stores events in ``tether_audit_events`` of the database ``postgres_audit.url`` names (the
storage database or another), one transaction per batch, keyed by event id: a batch a host
sends again after a lost answer is stored once (``ON CONFLICT DO NOTHING``). An event is
acknowledged once its transaction committed; a database that cannot take it makes the call
fail, which ``auth_service.audit.on_failure`` turns into a refusal (or a logged loss).

Searches filter in SQL by cluster, type (or type prefix), user and time, newest first with
an offset for paging, on an index of ``(cluster, time)``. Being registered after the
builtins, it answers searches before the JSON-lines sink of the same process.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Sequence
from typing import Any

import attrs
import psycopg
from psycopg.types.json import Jsonb

from tether.api import AuditEvent, AuditQuery, ConfigSection, FieldError
from tether_postgres.backend import _Pool, parse_postgres_url

__all__ = ["SECTION", "PostgresAudit", "PostgresAuditConfig"]

#: Connections each auth server's sink keeps.
POOL_SIZE = 2
#: Seconds the database may keep one of the sink's transactions idle (a frozen process).
STALLED_TRANSACTION_TIMEOUT = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tether_audit_events (
    id text PRIMARY KEY,
    time timestamptz NOT NULL,
    cluster text NOT NULL,
    type text NOT NULL,
    "user" text NOT NULL,
    success boolean NOT NULL,
    fields jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS tether_audit_events_by_time
    ON tether_audit_events (cluster, time DESC, id DESC);
"""


def _url(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not value.startswith(("postgresql://", "postgres://")):
        raise FieldError(
            (attribute.name,),
            f"{value!r} is not a postgresql:// URL (example: postgresql://tether@db/tether)",
        )


@attrs.frozen
class PostgresAuditConfig:
    """``postgres_audit:``: where the auth service also records its audit events.

    :ivar url: a PostgreSQL database (the storage one will do); null: this sink is off.
    """

    url: str | None = attrs.field(default=None, validator=_url)


SECTION = ConfigSection(
    name="postgres_audit",
    type=PostgresAuditConfig,
    template="""\
postgres_audit:
  # Record audit events in this PostgreSQL database too (the storage database will do), so
  # that every auth server of the cluster writes and searches one log; null: off.
  url: null
""",
)


def _create_table(conn: psycopg.Connection) -> None:
    conn.execute(_SCHEMA)


def _insert(events: Sequence[AuditEvent], conn: psycopg.Connection) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            'INSERT INTO tether_audit_events (id, time, cluster, type, "user", success, fields)'
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            [
                (e.id, e.time, e.cluster, e.type, e.user, e.success, Jsonb(dict(e.fields)))
                for e in events
            ],
        )


def _select(query: AuditQuery, conn: psycopg.Connection) -> list[AuditEvent]:
    where = ["TRUE"]
    args: list[Any] = []
    if query.cluster is not None:
        where.append("cluster = %s")
        args.append(query.cluster)
    if query.type:
        where.append("(type = %s OR starts_with(type, %s))")
        args += [query.type, query.type + "."]
    if query.user is not None:
        where.append('"user" = %s')
        args.append(query.user)
    if query.since is not None:
        where.append("time >= %s")
        args.append(query.since)
    if query.until is not None:
        where.append("time < %s")
        args.append(query.until)
    rows = conn.execute(
        'SELECT id, time, cluster, type, "user", success, fields FROM tether_audit_events'
        f" WHERE {' AND '.join(where)} ORDER BY time DESC, id DESC LIMIT %s OFFSET %s",
        [*args, query.limit, query.offset],
    ).fetchall()
    return [
        AuditEvent(
            id=event_id,
            time=when.astimezone(datetime.UTC),
            cluster=cluster,
            type=event_type,
            user=user,
            success=success,
            fields=fields if isinstance(fields, dict) else json.loads(fields),
        )
        for event_id, when, cluster, event_type, user, success, fields in reversed(rows)
    ]


class PostgresAudit:
    """The sinks of the clusters configured in this process, each on its own database."""

    def __init__(self) -> None:
        #: cluster name -> its pool; created at configure, connected at first use
        self._pools: dict[str, _Pool] = {}
        self._ready: set[str] = set()

    def configure(self, cluster: str, config: PostgresAuditConfig) -> None:
        """Record ``cluster``'s events in ``config.url`` (nothing when it is null)."""
        if config.url is None:
            self._pools.pop(cluster, None)
            return
        conninfo, name = parse_postgres_url(config.url)
        self._pools[cluster] = _Pool(conninfo, name, POOL_SIZE, STALLED_TRANSACTION_TIMEOUT)
        self._ready.discard(cluster)

    async def _pool(self, cluster: str) -> _Pool | None:
        pool = self._pools.get(cluster)
        if pool is not None and cluster not in self._ready:
            await pool.run(_create_table)
            self._ready.add(cluster)
        return pool

    async def record(self, events: Sequence[AuditEvent]) -> None:
        """Store ``events``, each cluster's in one transaction; raises when one was not."""
        by_cluster: dict[str, list[AuditEvent]] = {}
        for event in events:
            by_cluster.setdefault(event.cluster, []).append(event)
        for cluster, batch in by_cluster.items():
            pool = await self._pool(cluster)
            if pool is not None:
                await pool.run(functools.partial(_insert, batch))

    def searches(self, query: AuditQuery) -> bool:
        """Whether this sink answers ``query`` (it records the cluster the query names)."""
        if query.cluster is None:
            return len(self._pools) == 1
        return query.cluster in self._pools

    async def search(self, query: AuditQuery) -> list[AuditEvent]:
        cluster = query.cluster if query.cluster is not None else next(iter(self._pools))
        pool = await self._pool(cluster)
        assert pool is not None
        return await pool.run(functools.partial(_select, query))
