"""Several auth servers of one cluster on one PostgreSQL database, a proxy that knows them all,
and the probes a load balancer asks each auth server (``/healthz``, ``/readyz``).

Real ``tetherd`` processes on a database of their own on the local PostgreSQL (the
tether-postgres plugin's backend); an auth server is killed with SIGKILL, not stopped.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    start_cluster,
)
from tether.testing.postgres import available, postgres_database

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

PASSWORD = "correct horse battery staple"

ROLE_YAML = """\
kind: role
version: v5
metadata:
  name: visitor-{n}
spec:
  allow:
    logins: [visitor]
"""


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def started() -> Iterator[list[RunningCluster | RunningNode]]:
    """What a test starts, stopped at its end whatever happened."""
    running: list[RunningCluster | RunningNode] = []
    yield running
    for process in reversed(running):
        process.stop()


def _auth_server(
    directory: pathlib.Path, url: str, extra: dict[str, Any] | None = None
) -> RunningCluster:
    """An auth server of cluster ``main`` on the store at ``url``, without a proxy."""
    config = {"storage": {"url": url}, "proxy_service": {"enabled": False}, **(extra or {})}
    return start_cluster(directory, "main", config=config)


def test_second_auth_server_signs_with_the_cas_the_first_one_stored(
    pg_url: str, tmp_path: pathlib.Path, started: list[RunningCluster | RunningNode]
) -> None:
    first = _auth_server(tmp_path / "auth-1", pg_url)
    started.append(first)
    # nothing copied: the second finds the CAs in the store
    second = _auth_server(tmp_path / "auth-2", pg_url)
    started.append(second)
    assert second.ca_pin == first.ca_pin
    for name in ("tls_ca.crt", "ssh_user_ca", "ssh_host_ca"):
        assert (second.data_dir / "keys" / name).read_bytes() == (
            first.data_dir / "keys" / name
        ).read_bytes()


def test_auth_servers_started_at_once_create_one_set_of_cas(
    pg_url: str, tmp_path: pathlib.Path, started: list[RunningCluster | RunningNode]
) -> None:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        starting = [pool.submit(_auth_server, tmp_path / f"auth-{i}", pg_url) for i in range(3)]
        servers = [future.result() for future in starting]
    started.extend(servers)
    assert len({server.ca_pin for server in servers}) == 1


def test_auth_server_refuses_a_data_dir_whose_cas_are_not_the_stores(
    pg_url: str, tmp_path: pathlib.Path, started: list[RunningCluster | RunningNode]
) -> None:
    # an auth server that ran alone on SQLite, pointed at a store another one created
    alone = start_cluster(tmp_path / "alone", "main", config={"proxy_service": {"enabled": False}})
    alone.stop()
    started.append(_auth_server(tmp_path / "auth-1", pg_url))
    with pytest.raises(AssertionError, match="are not those the storage holds"):
        start_cluster(
            tmp_path / "alone",
            "main",
            config={"storage": {"url": pg_url}, "proxy_service": {"enabled": False}},
        )
