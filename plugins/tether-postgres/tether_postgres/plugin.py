"""The ``postgres`` plugin as Tether's plugin manager sees it: ``postgresql://`` storage URLs."""

from __future__ import annotations

from tether.api import BackendType, hookimpl

__all__ = ["tether_backends"]


@hookimpl
def tether_backends() -> list[BackendType]:
    """PostgreSQL storage under both spellings libpq accepts, ``postgresql://`` and ``postgres://``."""
    from tether_postgres.backend import open_postgres

    return [
        BackendType(scheme="postgresql", open=open_postgres),
        BackendType(scheme="postgres", open=open_postgres),
    ]
