"""The private PostgreSQL of the engine tests: one per test run (``tether_db.testing`` starts
it), with test CAs made here, users ``alice``, ``bob`` and ``carol`` (password only) and
databases ``shop`` and ``hr``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from tether_db.testing import (
    PASSWORD_USER,
    SERVER_NAME,
    PostgresServer,
    TestCA,
    free_port,
    start_postgres,
)

__all__ = [
    "PASSWORD_USER",
    "PostgresServer",
    "TestCA",
    "free_port",
    "postgres_server",
    "start_postgres",
]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Start the run's private PostgreSQL with users ``alice``, ``bob`` and ``carol``
    (password only) and databases ``shop`` (alice's) and ``hr`` (bob's); stop it at the end."""
    db_ca, client_ca = TestCA("test db CA"), TestCA("test db client CA")
    server_cert, server_key = db_ca.issue(SERVER_NAME, server=True, hours=24)
    workdir = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    try:
        with start_postgres(
            workdir,
            cert=server_cert,
            key=server_key,
            client_cas=client_ca.pem,
            server_name=SERVER_NAME,
        ) as server:
            server.admin("CREATE DATABASE shop OWNER alice")
            server.admin("CREATE DATABASE hr OWNER bob")
            yield attrs.evolve(server, db_ca=db_ca, client_ca=client_ca)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
