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
from collections.abc import Callable, Iterator

__all__ = ["SERVER", "available", "key_held", "postgres_database", "query"]

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


@contextlib.contextmanager
def key_held(url: str, key: str) -> Iterator[Callable[[], bool]]:
    """Hold the store's ``key`` (the tether-postgres backend's table) in a transaction that
    inserted it and stays open until the block ends, when it is rolled back: a write of that
    key waits in the database meanwhile, inside its transaction, so that a scenario can kill
    the auth server whose request made it while the request is surely under way.

    Yields ``waiting()``: whether a session waits for the key now. Other writes queue behind
    the waiting one (it holds the writers' lock), but only it waits for this transaction.
    """
    holder = subprocess.Popen(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        literal = key.replace("'", "''")
        holder.stdin.write(
            "BEGIN;\n"
            "INSERT INTO tether_items (key, value, revision) "
            f"VALUES (convert_to('{literal}', 'UTF8'), '\\x00', 0);\n"
            "SELECT pg_backend_pid();\n"
        )
        holder.stdin.flush()
        pid = holder.stdout.readline().strip()
        if not pid.isdigit():
            holder.kill()
            raise AssertionError(f"psql could not hold {key}: {holder.communicate()[1]}")

        def waiting() -> bool:
            blocked = (
                f"SELECT count(*) FROM pg_stat_activity WHERE {pid} = ANY(pg_blocking_pids(pid))"
            )
            return query(url, blocked).strip() != "0"

        yield waiting
    finally:
        if holder.poll() is None:
            holder.communicate("ROLLBACK;\n", timeout=60)
