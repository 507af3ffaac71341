"""pytest fixtures for Tether and its plugins: real clusters, real processes, 127.0.0.1 only.

``tether_cluster`` is shared by the tests of a module (starting a cluster costs about a
second); tests that change cluster-wide state start their own with ``start_cluster``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tether.testing.cluster import RunningCluster, start_cluster

__all__ = ["tether_cluster", "tether_cluster_factory"]


@pytest.fixture(scope="module")
def tether_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    """A running single cluster named ``main`` (auth + proxy), shared within a module."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"), "main")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def tether_cluster_factory(tmp_path: pathlib.Path) -> Iterator[object]:
    """Start clusters of a test's own: ``tether_cluster_factory("leaf", config={...})``."""
    started: list[RunningCluster] = []

    def factory(name: str = "main", **kwargs: object) -> RunningCluster:
        cluster = start_cluster(tmp_path / name, name, **kwargs)  # type: ignore[arg-type]
        started.append(cluster)
        return cluster

    try:
        yield factory
    finally:
        for cluster in started:
            cluster.stop()
