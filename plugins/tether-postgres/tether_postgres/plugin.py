"""The ``postgres`` plugin as Tether's plugin manager sees it: ``postgresql://`` storage URLs,
and the ``postgres_audit`` sink (see :mod:`tether_postgres.audit`).

Loaded by every ``tether`` command through the entry point, so it imports nothing heavy
(psycopg, the configuration) until a hook is called.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from tether.api import hookimpl

if TYPE_CHECKING:
    from tether.api import AuditEvent, AuditQuery, BackendType, Config, ConfigSection
    from tether_postgres.audit import PostgresAudit

__all__ = [
    "tether_audit_events",
    "tether_audit_search",
    "tether_backends",
    "tether_config_sections",
    "tether_configure",
]

#: the audit sinks of every cluster configured in this process, by cluster name
_audit: PostgresAudit | None = None


def _sinks() -> PostgresAudit:
    global _audit
    if _audit is None:
        from tether_postgres.audit import PostgresAudit

        _audit = PostgresAudit()
    return _audit


@hookimpl
def tether_backends() -> list[BackendType]:
    """PostgreSQL storage under both spellings libpq accepts, ``postgresql://`` and ``postgres://``."""
    from tether.api import BackendType
    from tether_postgres.backend import open_postgres

    return [
        BackendType(scheme="postgresql", open=open_postgres),
        BackendType(scheme="postgres", open=open_postgres),
    ]


@hookimpl
def tether_config_sections() -> list[ConfigSection]:
    from tether_postgres.audit import SECTION

    return [SECTION]


@hookimpl
def tether_configure(config: Config) -> None:
    """Point the audit sink of ``config``'s cluster at ``postgres_audit.url`` (or nowhere)."""
    from tether_postgres.audit import PostgresAuditConfig

    if _audit is None and config.section(PostgresAuditConfig).url is None:
        return  # nothing to record: psycopg stays unloaded
    _sinks().configure(config.cluster_name, config.section(PostgresAuditConfig))


@hookimpl
async def tether_audit_events(events: Sequence[AuditEvent]) -> None:
    """Store the events of the clusters that record to PostgreSQL, once committed."""
    if _audit is not None:
        await _audit.record(events)


@hookimpl
def tether_audit_search(query: AuditQuery) -> Awaitable[list[AuditEvent]] | None:
    """Answer for a cluster that records to PostgreSQL: None, directly, for any other."""
    if _audit is None or not _audit.searches(query):
        return None
    return _audit.search(query)
