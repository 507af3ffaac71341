"""Tunnels arrive on the proxy's one public port, next to the web API, told apart by ALPN."""

from __future__ import annotations

import json
import pathlib
import shutil

from tether.testing.cluster import RunningCluster, wait_for
from tether.testing.tunnel_peer import start_agent, start_echo


def test_an_agent_tunnels_into_the_proxy_port_and_its_heartbeats_are_recorded(
    tether_cluster_factory: object, tmp_path: pathlib.Path
) -> None:
    cluster: RunningCluster = tether_cluster_factory("main")  # type: ignore[operator]
    echo = start_echo(tmp_path / "echo")
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    (agent_dir / "cluster.json").write_text(json.dumps({"cluster": "main"}))
    shutil.copytree(cluster.data_dir / "keys", agent_dir / "keys")
    agent = start_agent(
        agent_dir,
        cluster.data_dir / "admin" / "ca.pem",
        cluster.proxy_addr,
        "--allow",
        echo.info()["addr"],
        "--ping-interval",
        "1",
    )
    try:
        assert agent.info()["connected"] == ["main-node"]
        wait_for(lambda: "tunnel 1 from cluster main" in cluster.log_text(), "the tunnel")
        # the web API still answers on the same port
        assert cluster.tetherctl("status").returncode == 0
        wait_for(lambda: "tunnel heartbeats in one write" in cluster.log_text(), "heartbeats")

        cluster.stop()  # SIGTERM: the proxy tells its agents to move before it exits
        wait_for(lambda: "peer is going away" in agent.log(), "GOAWAY at the agent")
    finally:
        agent.stop()
        echo.stop()
