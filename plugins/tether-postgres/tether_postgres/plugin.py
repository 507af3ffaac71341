"""The ``postgres`` plugin as Tether's plugin manager sees it: ``postgresql://`` storage URLs,
and the ``postgres_audit`` sink (see :mod:`tether_postgres.audit`)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from tether.api import AuditEvent, AuditQuery, BackendType, Config, ConfigSection, hookimpl
from tether_postgres.audit import SECTION, PostgresAudit, PostgresAuditConfig

__all__ = [
    "tether_audit_events",
    "tether_audit_search",
    "tether_backends",
    "tether_config_sections",
    "tether_configure",
]

#: the audit sinks of every cluster configured in this process, by cluster name
_AUDIT = PostgresAudit()


@hookimpl
def tether_backends() -> list[BackendType]:
    """PostgreSQL storage under both spellings libpq accepts, ``postgresql://`` and ``postgres://``."""
    from tether_postgres.backend import open_postgres

    return [
        BackendType(scheme="postgresql", open=open_postgres),
        BackendType(scheme="postgres", open=open_postgres),
    ]


@hookimpl
def tether_config_sections() -> list[ConfigSection]:
    return [SECTION]


@hookimpl
def tether_configure(config: Config) -> None:
    """Point the audit sink of ``config``'s cluster at ``postgres_audit.url`` (or nowhere)."""
    _AUDIT.configure(config.cluster_name, config.section(PostgresAuditConfig))


@hookimpl
async def tether_audit_events(events: Sequence[AuditEvent]) -> None:
    """Store the events of the clusters that record to PostgreSQL, once committed."""
    await _AUDIT.record(events)


@hookimpl
def tether_audit_search(query: AuditQuery) -> Awaitable[list[AuditEvent]] | None:
    """Answer for a cluster that records to PostgreSQL: None, directly, for any other."""
    if not _AUDIT.searches(query):
        return None
    return _AUDIT.search(query)
