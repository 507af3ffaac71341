"""``tetherd migrate``: an admin moves a running cluster from its SQLite file to PostgreSQL and
etcd, keeps a backup in a SQLite file and restores it, as docs/high-availability.md says:
stop the cluster, copy, point ``storage.url`` at the copy, start it again. Real ``tetherd``
processes; the local PostgreSQL and an etcd member of the test's own."""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from tether.testing.cluster import RunningCluster, run_cli, start_cluster
from tether.testing.etcd import EtcdCluster, etcd_binary, start_etcd
from tether.testing.postgres import available, postgres_database

PASSWORD = "correct horse battery staple"
ROLE = """kind: role
version: v7
metadata:
  name: operators
spec:
  allow:
    logins: [ops]
"""


@pytest.fixture
def pg_url() -> Iterator[str]:
    if available() is not None:
        pytest.skip(str(available()))
    with postgres_database() as url:
        yield url


@pytest.fixture
def etcd(tmp_path: pathlib.Path) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (scripts/system-deps.sh installs etcd-server)")
    members = start_etcd(tmp_path / "etcd")
    try:
        yield members
    finally:
        members.stop()


def a_cluster_with_a_user_and_a_role(directory: pathlib.Path) -> RunningCluster:
    cluster = start_cluster(directory, "moving")
    cluster.add_user("alice", PASSWORD, roles=["access"])
    spec = directory / "role.yaml"
    spec.write_text(ROLE)
    cluster.tetherctl("create", "-f", str(spec))
    return cluster


def restarted_on(cluster: RunningCluster, url: str) -> RunningCluster:
    """``cluster`` started again from its directory with ``storage.url: url``."""
    return start_cluster(cluster.directory, cluster.name, config={"storage": {"url": url}})


def migrate(
    cluster: RunningCluster, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run_cli("tetherd", "migrate", "-c", str(cluster.config_path), *args, check=check)


@pytest.mark.parametrize("store", ["postgresql", "etcd"])
def test_admin_moves_a_cluster_from_sqlite_to_a_shared_store(
    store: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    url = (
        request.getfixturevalue("pg_url")
        if store == "postgresql"
        else request.getfixturevalue("etcd").url("/moved")
    )
    cluster = a_cluster_with_a_user_and_a_role(tmp_path / "moving")
    pin = cluster.ca_pin
    assert cluster.stop() == 0
    copied = migrate(cluster, f"--to={url}")
    assert "copied" in copied.stdout and " keys from sqlite:///" in copied.stdout
    moved = restarted_on(cluster, url)
    try:
        assert moved.ca_pin == pin  # the same CAs: every certificate issued stays trusted
        assert "operators" in moved.tetherctl("get", "role/operators").stdout
        moved.login("alice", PASSWORD)
        # copying again (the old file is still there) into the store that now holds it
        old = f"sqlite://{cluster.data_dir / 'backend.sqlite'}"
        again = migrate(moved, f"--from={old}", f"--to={url}", check=False)
        assert again.returncode == 1
        assert "the destination store is not empty" in again.stderr
    finally:
        moved.stop()


def test_admin_backs_a_cluster_up_and_restores_it(tmp_path: pathlib.Path) -> None:
    cluster = a_cluster_with_a_user_and_a_role(tmp_path / "kept")
    pin = cluster.ca_pin
    assert cluster.stop() == 0
    backup = tmp_path / "backups" / "backend.sqlite"
    backup.parent.mkdir()
    migrate(cluster, f"--to=sqlite://{backup}")
    # the data directory is lost; the backup goes into the new one's store
    (cluster.data_dir / "backend.sqlite").unlink()
    restored_store = tmp_path / "restored.sqlite"
    migrate(cluster, f"--from=sqlite://{backup}", f"--to=sqlite://{restored_store}")
    restored = restarted_on(cluster, f"sqlite://{restored_store}")
    try:
        assert restored.ca_pin == pin
        restored.login("alice", PASSWORD)
        assert "operators" in restored.tetherctl("get", "role/operators").stdout
    finally:
        restored.stop()


def test_migrate_refuses_to_copy_a_store_onto_itself(tmp_path: pathlib.Path) -> None:
    cluster = start_cluster(tmp_path / "self", "self")
    assert cluster.stop() == 0
    store = f"sqlite://{cluster.data_dir / 'backend.sqlite'}"
    refused = migrate(cluster, f"--to={store}", check=False)
    assert refused.returncode == 1
    assert "--to names the store being copied" in refused.stderr
