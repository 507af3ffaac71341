"""pytest fixtures for Tether and its plugins: real clusters, real processes, 127.0.0.1 only.

``tether_cluster`` is shared by the tests of a module (starting a cluster costs about a
second); tests that change cluster-wide state start their own with ``start_cluster``.
``os_user`` is the real OS account a protocol plugin's sessions run as. ``kube_apiserver`` is
a real Kubernetes API server shared by the whole run (:mod:`tether.testing.kube`), and
``kube_node`` a node of it that runs pods (:mod:`tether.testing.kube_node`).
``firewalled_site`` is a network namespace that accepts no inbound connection, for a cluster
that must work from behind a firewall (:mod:`tether.testing.netns`).
"""

from __future__ import annotations

import pathlib
import pwd
import shutil
import tempfile
import warnings
from collections.abc import Iterator

import pytest

from tether.testing.accounts import can_create_accounts, os_account
from tether.testing.cluster import RunningCluster, start_cluster, stop_forgotten_daemons
from tether.testing.kube import KubeAPIServer, kube_components, start_kube_apiserver
from tether.testing.kube_node import (
    KubeNode,
    kube_node_components,
    leftovers,
    start_kube_node,
)
from tether.testing.netns import Site, SiteUnavailable
from tether.testing.netns import firewalled_site as open_firewalled_site

__all__ = [
    "firewalled_site",
    "kube_apiserver",
    "kube_node",
    "os_user",
    "stopped_daemons",
    "tether_cluster",
    "tether_cluster_factory",
]


@pytest.fixture(scope="session", autouse=True)
def stopped_daemons() -> Iterator[None]:
    """At the end of the run, stop every ``tetherd`` a test started and forgot, with a
    warning naming it: a daemon that outlives the run keeps ports, tunnels and files busy."""
    yield
    for command in stop_forgotten_daemons():
        warnings.warn(f"a test left this daemon running; stopped it: {command}", stacklevel=1)


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


@pytest.fixture(scope="module")
def os_user() -> Iterator[pwd.struct_passwd]:
    """The OS account ``visitor`` (the guide's login) that sessions run as, shared within a
    module: created here and removed after unless it already exists (see
    :mod:`tether.testing.accounts`). Creating it needs root; without, the test is skipped."""
    if not can_create_accounts():
        pytest.skip("creates the OS account 'visitor' (needs root and useradd)")
    with os_account("visitor") as account:
        yield account


@pytest.fixture
def firewalled_site() -> Iterator[Site]:
    """A network namespace of the test's own behind nftables rules that drop every connection
    the host opens to it (:mod:`tether.testing.netns`): start a cluster in it with
    ``start_cluster(..., command_prefix=firewalled_site.command_prefix)``, listening on
    ``firewalled_site.site_addr``; it reaches the host at ``firewalled_site.host_addr``.
    Removed after the test with whatever still runs in it. Needs root, ``ip`` and ``nft``;
    skipped otherwise, with the reason."""
    try:
        with open_firewalled_site() as site:
            yield site
    except SiteUnavailable as unavailable:
        pytest.skip(str(unavailable))


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeAPIServer]:
    """A Kubernetes API server (etcd, kube-apiserver and kube-controller-manager 1.20.2 on
    127.0.0.1, RBAC on) shared by the whole run, with the administrator's kubeconfig and
    Debian's kubectl 1.20 (``kube_apiserver.kubectl(...)``); stopped at the end. Tests that
    use it run last; it waits for the components' background build, or skips the test with
    the reason (see :mod:`tether.testing.kube`). Tests change it only in namespaces of their
    own."""
    components = kube_components()
    # outside pytest's 0700 temporary tree, and removed at the end (etcd's data included)
    directory = pathlib.Path(tempfile.mkdtemp(prefix="tether-kube-"))
    try:
        with start_kube_apiserver(directory, components=components) as server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def kube_node(kube_apiserver: KubeAPIServer) -> Iterator[KubeNode]:
    """A node of ``kube_apiserver`` that runs pods (Debian's containerd and runc, a kubelet
    1.20.2 built from Debian's source), shared within a module (about 8 s to start) and
    stopped after it, the machine put back as it was: a machine has one node at a time, and
    between modules a test may start its own. Only ``hostNetwork`` pods bound to it run
    (``kube_node.pod(name, command)`` writes one); ``kubectl exec``, ``attach``, ``logs``
    and ``port-forward`` reach them. Needs root; waits for the components like
    ``kube_apiserver``, or skips the test with the reason (see
    :mod:`tether.testing.kube_node`)."""
    components = kube_node_components()
    directory = pathlib.Path(tempfile.mkdtemp(prefix="tether-kube-node-"))
    try:
        with start_kube_node(kube_apiserver, directory, components=components) as node:
            yield node
    finally:
        # nothing is mounted under it any more (the node's exit saw to it), or it stays
        if not leftovers(directory):
            shutil.rmtree(directory, ignore_errors=True)
