"""A Tether cluster whose auth service keeps everything in etcd: the admin's resources and
the users' logins work as on SQLite, and the keys live under the URL's prefix."""

from __future__ import annotations

import pathlib

from tether.testing.cluster import start_cluster

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
