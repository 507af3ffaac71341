"""A cluster upgraded to a release that records host ids holds no record of the hosts that
joined before it: each host's next heartbeat records its id, so that a node token cannot take
it over meanwhile. Real processes on 127.0.0.1; the upgrade is played by removing the records
from the stopped cluster's storage.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from tether.backend import open_backend
from tether.builtins import sqlite_backend
from tether.errors import AccessDenied
from tether.node.join import join_cluster
from tether.plugins import TetherPluginManager
from tether.testing.cluster import RunningCluster, start_cluster, start_node, wait_for
from tether.testing.http import free_port

HOST_IDS = "/host_ids/"  # where auth records who holds each host id
NODES = "/nodes/"  # the SSH plugin's inventory


async def forget(cluster: RunningCluster, host_id: str) -> None:
    """Remove what a release before host-id records would not have stored: the record, and
    the node's inventory entry (so that it shows again only once the node has published)."""
    pm = TetherPluginManager()
    pm.register(sqlite_backend, name="sqlite")
    url = f"sqlite://{cluster.directory / 'data' / 'backend.sqlite'}"
    async with open_backend(url, pm) as backend:
        assert await backend.delete(HOST_IDS + host_id)
        assert await backend.delete(NODES + host_id)


def listed(cluster: RunningCluster, host_id: str) -> bool:
    nodes = cluster.tetherctl("get", "node", "--format=json", check=False)
    return nodes.returncode == 0 and host_id in nodes.stdout


async def test_a_node_joined_before_host_ids_were_recorded_keeps_its_id_from_a_token(
    tmp_path: pathlib.Path,
) -> None:
    # fixed ports: the node finds the restarted cluster where it left it
    ports = {
        "auth_service": {"listen_addr": f"127.0.0.1:{free_port()}"},
        "proxy_service": {"listen_addr": f"127.0.0.1:{free_port()}"},
    }
    cluster = start_cluster(tmp_path / "main", "main", config=ports)
    node = start_node(cluster, tmp_path / "node", "legacy", tunnel=False)
    try:
        host_id = (tmp_path / "node" / "data" / "host_uuid").read_text().strip()
        wait_for(lambda: listed(cluster, host_id), "the node in the inventory")
        cluster.stop()
        await forget(cluster, host_id)
        cluster = start_cluster(tmp_path / "main", "main", config=ports)
        wait_for(lambda: listed(cluster, host_id), "the node's first heartbeat after the upgrade")

        token = cluster.tetherctl("tokens", "add", "--type=node", "--format=json").stdout
        with pytest.raises(AccessDenied, match=f"host id '{host_id}' is held by node"):
            await join_cluster(
                cluster.proxy_addr,
                json.loads(token)["token"],
                host_id=host_id,
                hostname="attacker",
                addresses=["127.0.0.1"],
                ca_pin=cluster.ca_pin,
            )
    finally:
        node.stop()
        cluster.stop()
