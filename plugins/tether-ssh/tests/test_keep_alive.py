"""The cluster's keep-alive (``auth_service.keep_alive_interval`` and ``keep_alive_count_max``):
every tunnel's agent heartbeats at it, and a host that vanishes is found gone after its count
of intervals; a tunnel-mode node whose process dies is unlisted at once, its proxy telling
auth as its tunnel closes.

Real ``tetherd`` processes on 127.0.0.1: a cluster, tunnel-mode nodes, a leaf cluster. A
process stopped with SIGSTOP keeps its TCP connections open and answers nothing, as a host
that lost power or network would: only the keep-alive finds it gone.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
from collections.abc import Iterator

import pytest

from tether.testing.cluster import RunningCluster, RunningNode, start_node, wait_for
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    trusted_cluster_yaml,
)

PASSWORD = "correct horse battery staple"
#: short enough that a test waits seconds (the defaults are 60 s and 3), long enough that a
#: loaded machine does not drop live tunnels
SHORT = {"keep_alive_interval": "2s", "keep_alive_count_max": 3}


def listed(cluster: RunningCluster) -> set[str]:
    """The host names ``tether ls`` lists to alice."""
    out = cluster.tether("alice", "ls", "--format=json").stdout
    return {node["spec"]["hostname"] for node in json.loads(out)}


def with_alice(cluster: RunningCluster) -> RunningCluster:
    cluster.add_user("alice", PASSWORD, roles=["access"], logins=["visitor"])
    cluster.login("alice", PASSWORD)
    return cluster


@pytest.fixture
def stopped() -> Iterator[list[RunningNode | RunningCluster]]:
    """Processes a test stopped with SIGSTOP: let go on the way out, to stop cleanly."""
    paused: list[RunningNode | RunningCluster] = []
    yield paused
    for process in paused:
        if process.process.poll() is None:
            os.kill(process.process.pid, signal.SIGCONT)


def test_a_killed_tunnel_node_is_unlisted_within_seconds(
    tether_cluster_factory: object, tmp_path: pathlib.Path
) -> None:
    # the default keep-alive: the node heartbeats every minute, its entry lives four minutes;
    # its proxy sees its tunnel close (the kernel resets a killed process's connections) and
    # has auth remove its entry at once
    cluster = with_alice(tether_cluster_factory("main"))  # type: ignore[operator]
    gone = start_node(cluster, tmp_path / "gone", "gone")
    stays = start_node(cluster, tmp_path / "stays", "stays")
    try:
        wait_for(lambda: {"gone", "stays"} <= listed(cluster), "both nodes to be listed")
        gone.stop(signal.SIGKILL)
        wait_for(lambda: "gone" not in listed(cluster), "the killed node to be unlisted", 15)
        assert "stays" in listed(cluster)
    finally:
        gone.stop()
        stays.stop()


def test_a_vanished_tunnel_node_is_unlisted_after_the_keep_alive(
    tether_cluster_factory: object,
    tmp_path: pathlib.Path,
    stopped: list[RunningNode | RunningCluster],
) -> None:
    cluster = with_alice(
        tether_cluster_factory("main", config={"auth_service": SHORT})  # type: ignore[operator]
    )
    node = start_node(cluster, tmp_path / "frozen", "frozen")
    try:
        wait_for(lambda: "frozen" in listed(cluster), "the node to be listed")
        os.kill(node.process.pid, signal.SIGSTOP)
        stopped.append(node)
        # the proxy finds the tunnel dead after 3 x 2 s of silence, and has its entry removed
        wait_for(lambda: "frozen" not in listed(cluster), "the frozen node to be unlisted", 30)
        os.kill(node.process.pid, signal.SIGCONT)
        # back, it redials and is listed again
        wait_for(lambda: "frozen" in listed(cluster), "the node to be listed again", 60)
    finally:
        node.stop()


def test_a_vanished_leaf_goes_offline_after_the_roots_keep_alive(
    tether_cluster_factory: object, stopped: list[RunningNode | RunningCluster]
) -> None:
    # the root's proxy names its keep-alive to the leaf's agents; the root's auth counts the
    # leaf offline once its tunnels have been silent for the count of intervals
    root = tether_cluster_factory("root", config={"auth_service": SHORT})  # type: ignore[operator]
    leaf = tether_cluster_factory("leaf")  # type: ignore[operator]
    create_trusted_cluster(leaf, trusted_cluster_yaml(root, invite(root)))
    wait_for(lambda: connection(root) == "online", "the leaf to come online", 60)
    os.kill(leaf.process.pid, signal.SIGSTOP)
    stopped.append(leaf)
    wait_for(lambda: connection(root) == "offline", "the frozen leaf to go offline", 30)
    os.kill(leaf.process.pid, signal.SIGCONT)
    wait_for(lambda: connection(root) == "online", "the leaf to come back", 60)
