"""A Tether cluster whose auth service keeps everything in etcd: the admin's resources and
the users' logins work as on SQLite, and the keys live under the URL's prefix."""

from __future__ import annotations

import pathlib

import pytest

from tether.testing.cluster import start_cluster
from tether.testing.etcd import etcd_binary, start_etcd

ROLE = """kind: role
version: v7
metadata:
  name: operators
spec:
  allow:
    logins: [ops]
"""


def test_admin_runs_a_cluster_on_etcd(etcd_url: str, tmp_path: pathlib.Path) -> None:
    cluster = start_cluster(tmp_path / "on-etcd", "on-etcd", config={"storage": {"url": etcd_url}})
    try:
        spec = tmp_path / "role.yaml"
        spec.write_text(ROLE)
        cluster.tetherctl("create", "-f", str(spec))
        assert "operators" in cluster.tetherctl("get", "role/operators").stdout
        cluster.add_user("alice", "correct horse battery", roles=["operators"])
        cluster.login("alice", "correct horse battery")
        assert not (cluster.data_dir / "backend.sqlite").exists()
    finally:
        cluster.stop()


def test_a_cluster_on_three_etcd_members_goes_on_when_one_dies(tmp_path: pathlib.Path) -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (scripts/kube-deps.sh installs Debian's etcd-server)")
    members = start_etcd(tmp_path / "etcd", members=3)
    try:
        cluster = start_cluster(
            tmp_path / "on-etcd", "on-etcd", config={"storage": {"url": members.url("/ha")}}
        )
        try:
            cluster.add_user("alice", "correct horse battery", roles=["access"])
            # the leader dies: the others elect a new one, and writes wait for it
            members.kill(members.leader())
            spec = tmp_path / "role.yaml"
            spec.write_text(ROLE)
            cluster.tetherctl("create", "-f", str(spec))
            assert "operators" in cluster.tetherctl("get", "role/operators").stdout
            cluster.login("alice", "correct horse battery")
            assert "Traceback" not in cluster.log_text()
        finally:
            cluster.stop()
    finally:
        members.stop()
