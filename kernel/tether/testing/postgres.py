"""A database of its own on the local PostgreSQL, for scenarios that run a cluster on it.

PostgreSQL runs on 127.0.0.1:5432 with trust authentication for ``postgres`` (CI and the
development machines set it up so). The database is created and dropped with ``psql``, so
that neither the kernel nor its tests import a PostgreSQL driver: the backend that uses it
is the ``tether-postgres`` plugin's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import uuid
from collections.abc import Iterator

__all__ = ["SERVER", "available", "postgres_database", "query"]

#: the local server, as a ``storage.url`` without the database
SERVER = "postgresql://postgres@127.0.0.1:5432"


def query(url: str, sql: str) -> str:
    """What ``psql`` prints for ``sql`` run on the database at ``url`` (unaligned, tuples
    only): a scenario reads what a backend stored.

    :raises AssertionError: psql failed; the message has its error.
    """
    answer = _psql(sql, url)
    if answer.returncode != 0:
        raise AssertionError(f"psql failed: {answer.stderr}")
    return answer.stdout


def _psql(sql: str, url: str = f"{SERVER}/postgres") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def available() -> str | None:
    """None when a database can be created here, else why not (a skip reason)."""
    if shutil.which("psql") is None:
        return "needs psql"
    if importlib.util.find_spec("tether_postgres") is None:
        return "needs the tether-postgres plugin"
    answer = _psql("SELECT 1")
    if answer.returncode != 0:
        return f"needs PostgreSQL on {SERVER}: {answer.stderr.strip()}"
    return None


@contextlib.contextmanager
def postgres_database(prefix: str = "tether_test") -> Iterator[str]:
    """Create a database with a random name; yield its ``storage.url``; drop it (with every
    connection to it) at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    created = _psql(f'CREATE DATABASE "{name}"')
    if created.returncode != 0:
        raise AssertionError(f"cannot create database {name}: {created.stderr}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
