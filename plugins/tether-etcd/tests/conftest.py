"""Fixtures of the tether-etcd tests: etcd members of their own, started on free ports in a
temporary directory with Debian's ``etcd`` (``etcd-server``, installed by
``scripts/kube-deps.sh``), and stopped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tether.testing.etcd import EtcdCluster, etcd_binary, start_etcd


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One etcd member for the whole run (each test writes under a prefix of its own)."""
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (scripts/kube-deps.sh installs Debian's etcd-server)")
    cluster = start_etcd(tmp_path_factory.mktemp("etcd"), members=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_url(etcd: EtcdCluster) -> str:
    """An ``etcd://`` URL with a prefix no other test writes under."""
    return etcd.url(f"/test-{uuid.uuid4().hex[:12]}")
