"""The private MariaDB of the MySQL engine tests: one per test run (``tether_db.testing``
starts it), with test CAs made here."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from tether_db.testing import MariaDB, TestCA, start_mariadb

__all__ = ["MariaDB", "TestCA", "mariadb_server", "start_mariadb"]


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDB]:
    """Start one private MariaDB for the whole run and stop it at the end."""
    directory = Path(tempfile.mkdtemp(prefix="tether-mariadb-"))
    db_ca, client_ca = TestCA("test db CA"), TestCA("test db client CA")
    server_cert, server_key = db_ca.issue("localhost", server=True, hours=24)
    (directory / "server.pem").write_bytes(server_cert)
    (directory / "server.key").write_bytes(server_key)
    (directory / "client-ca.pem").write_bytes(client_ca.pem)
    try:
        with start_mariadb(
            directory,
            cert_file=directory / "server.pem",
            key_file=directory / "server.key",
            ca_file=directory / "client-ca.pem",
            server_name="localhost",
        ) as server:
            yield replace(server, db_ca=db_ca, client_ca=client_ca)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
