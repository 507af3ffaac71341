"""A whole cluster (auth + proxy, real tetherd processes) keeping its state in PostgreSQL."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import psycopg
import pytest

from tether.testing.cluster import RunningCluster, run_cli, start_cluster, write_config

PASSWORD = "correct horse battery staple"

ROLE_YAML = """\
kind: role
version: v5
metadata:
  name: visitor
spec:
  allow:
    logins: [visitor]
"""

pytestmark = pytest.mark.slow


def _stored_keys(pg_url: str, prefix: str) -> list[str]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT convert_from(key, 'UTF8') FROM tether_items "
            "WHERE key >= %s AND key < %s ORDER BY key",
            (prefix.encode(), prefix.encode() + b"\xff"),
        ).fetchall()
    return [row[0] for row in rows]


def test_user_logs_in_and_creates_a_role_on_a_cluster_stored_in_postgres(
    pg_url: str,
    tether_cluster_factory: Callable[..., RunningCluster],
    tmp_path: pathlib.Path,
) -> None:
    cluster = tether_cluster_factory("main", config={"storage": {"url": pg_url}})
    cluster.add_user("alice", PASSWORD, roles=["access", "editor"])
    cluster.login("alice", PASSWORD)
    role = tmp_path / "visitor.yaml"
    role.write_text(ROLE_YAML)
    cluster.as_user("alice", "tetherctl", "create", str(role))

    shown = cluster.as_user("alice", "tetherctl", "get", "role/visitor").stdout
    assert "name: visitor" in shown and "visitor" in shown.split("logins:", 1)[1]
    # the cluster's state is in the database, not in a SQLite file under its data dir
    assert any(key.endswith("/visitor") for key in _stored_keys(pg_url, "/roles/"))
    assert any(key.endswith("/alice") for key in _stored_keys(pg_url, "/users/"))
    assert not list(cluster.data_dir.glob("*.sqlite"))

    # a second auth process on the same database serves the same state, with the CA keys
    # the first one stored there: nothing is copied between them
    second = start_cluster(
        tmp_path / "second-auth",
        "main",
        config={"storage": {"url": pg_url}, "proxy_service": {"enabled": False}},
    )
    try:
        assert second.ca_pin == cluster.ca_pin
        again = second.tetherctl("get", "role/visitor").stdout
        assert again == shown
        assert "alice" in second.tetherctl("get", "users").stdout
    finally:
        second.stop()
    assert "Traceback" not in cluster.log_text()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://postgres@127.0.0.1:1/tether", "cannot connect"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_tether_db", "the database does not exist"),
        ("postgresql://postgres@127.0.0.1:5432", "storage URL names no database"),
    ],
    ids=["unreachable", "missing-database", "no-database-name"],
)
def test_tetherd_with_a_bad_postgres_url_stops_at_start_saying_why(
    tmp_path: pathlib.Path, url: str, message: str
) -> None:
    config = write_config(tmp_path, "main", {"storage": {"url": url}})
    result = run_cli("tetherd", "start", "-c", str(config), check=False, timeout=60)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
