"""Two auth servers of one cluster record into one PostgreSQL audit log, and an auditor
searches it from either: by type, user and time, page by page; with the log's database gone,
the change it would record is refused."""

from __future__ import annotations

import datetime
import json
import pathlib
import subprocess
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from tether.testing.cluster import RunningCluster, start_cluster
from tether.testing.postgres import SERVER, postgres_database

ROLE_YAML = """\
kind: role
version: v7
metadata:
  name: {name}
spec:
  allow:
    logins: [ops]
"""

pytestmark = pytest.mark.slow


@pytest.fixture
def audit_database() -> Iterator[str]:
    """A database of its own for the audit log (the test may drop it)."""
    with postgres_database("tether_audit") as url:
        yield url


def _search(cluster: RunningCluster, *args: str) -> list[dict[str, object]]:
    found = cluster.tetherctl("audit", "search", "--format=json", *args)
    return list(json.loads(found.stdout))


def _create_role(
    cluster: RunningCluster, tmp_path: pathlib.Path, name: str, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(ROLE_YAML.format(name=name))
    return cluster.tetherctl("create", "-f", str(spec), check=check)


def test_auditor_searches_one_log_written_by_two_auth_servers(
    pg_url: str,
    audit_database: str,
    tether_cluster_factory: Callable[..., RunningCluster],
    tmp_path: pathlib.Path,
) -> None:
    config = {"storage": {"url": pg_url}, "postgres_audit": {"url": audit_database}}
    first = tether_cluster_factory("main", config=config)
    second = start_cluster(  # the CA keys come from the store
        tmp_path / "second", "main", config={**config, "proxy_service": {"enabled": False}}
    )
    try:
        _create_role(first, tmp_path, "made-on-first")
        _create_role(second, tmp_path, "made-on-second")
        for server in (first, second):  # either one sees what both did
            names = [e["name"] for e in _search(server, "--type=resource.created")]
            assert names[-2:] == ["made-on-first", "made-on-second"]
    finally:
        second.stop()

    first.add_user("alice", "correct horse battery", roles=["access"])
    first.login("alice", "correct horse battery")
    logins = _search(first, "--type=user.login", "--user=alice")
    assert [e["user"] for e in logins] == ["alice"]
    assert _search(first, "--user=nobody") == []
    # a time window: nothing before the cluster started, everything since
    assert _search(first, "--until=2000-01-01T00:00Z") == []
    everything = _search(first, "--since=1h")
    assert len(everything) >= 4
    # page by page, newest page first, each oldest first
    newest = _search(first, "--since=1h", "--limit=2")
    before = _search(first, "--since=1h", "--limit=2", "--page=2")
    assert [e["id"] for e in before + newest] == [e["id"] for e in everything][-4:]
    cutoff = datetime.datetime.fromisoformat(str(newest[0]["time"]).replace("Z", "+00:00"))
    older = _search(first, f"--until={cutoff.isoformat()}", "--since=1h")
    assert all(e["id"] not in {n["id"] for n in newest} for e in older)
    # the log is in the database, whole, each event once
    with psycopg.connect(audit_database) as conn:
        stored = conn.execute("SELECT count(*), count(DISTINCT id) FROM tether_audit_events")
        count, distinct = stored.fetchone() or (0, 0)
    assert count == distinct >= len(everything)


def test_a_change_is_refused_while_the_audit_database_is_gone(
    pg_url: str,
    audit_database: str,
    tether_cluster_factory: Callable[..., RunningCluster],
    tmp_path: pathlib.Path,
) -> None:
    cluster = tether_cluster_factory(
        "main", config={"storage": {"url": pg_url}, "postgres_audit": {"url": audit_database}}
    )
    _create_role(cluster, tmp_path, "before")
    name = audit_database.rsplit("/", 1)[1]
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    refused = _create_role(cluster, tmp_path, "unrecorded", check=False)
    assert refused.returncode == 1
    assert "refused: the audit log could not record resource.created (postgres:" in refused.stderr
    assert cluster.tetherctl("get", "role/unrecorded", check=False).returncode == 1
