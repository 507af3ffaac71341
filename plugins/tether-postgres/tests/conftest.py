"""Fixtures of the tether-postgres tests: a database of their own on the local PostgreSQL.

PostgreSQL runs on 127.0.0.1:5432 with trust authentication for ``postgres`` (CI and the
development machines set it up so). Each test run (each pytest-xdist worker) creates one
database with a random name and drops it at the end; each test starts from empty tables.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tether.testing.postgres import postgres_database


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of a fresh database, dropped (with every connection to it) after the run."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """``pg_database`` with no data: the tables a previous test filled are emptied."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('tether_meta') IS NOT NULL").fetchone()
        if exists and exists[0]:
            conn.execute("TRUNCATE tether_items, tether_events")
            conn.execute("UPDATE tether_meta SET revision = 0")
    return pg_database
