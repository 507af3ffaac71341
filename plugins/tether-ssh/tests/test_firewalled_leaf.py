"""The guide's claim with a real firewall: a leaf needs no open inbound port.

The leaf cluster (auth, proxy and its node ``leaf-node``) runs in a network namespace of its
own, its site, behind nftables rules that drop every connection the host tries to open to it
(``firewalled_site``, :mod:`tether.testing.netns`); the root cluster (auth and proxy) runs on
the host, its proxy on the host's end of the link to the site. The leaf's admin creates the
guide's trusted_cluster in the site; the leaf dials out to the root, and a root user reaches
the leaf's node through that tunnel while the host cannot open a connection to any of the
leaf's ports (the node, in tunnel mode, has none). Sessions run as the OS account
``visitor`` (needs root, as the site does).
"""

from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import sys

import pytest

from tether.testing.accounts import can_create_accounts
from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_node, wait_for
from tether.testing.netns import Site
from tether.testing.roles import VISITOR_ROLE
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    trusted_cluster_yaml,
)

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client"),
]

PASSWORD = "correct horse battery staple"


def _connect_from_host(addr: str) -> str:
    """What a connection from the host to ``addr`` meets: ``connected``, ``refused`` (nothing
    listens: the peer resets it) or ``dropped`` (no answer at all)."""
    host, port = addr.rsplit(":", 1)
    try:
        # across a veth pair an answer takes microseconds: a second without one is a drop
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "dropped"
    return "connected"


def _connect_in_site(site: Site, addr: str) -> int:
    """The exit status of a connection to ``addr`` opened in the site: 0 when it connects."""
    host, port = addr.rsplit(":", 1)
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=10).close()"
    ran = subprocess.run([*site.command_prefix, sys.executable, "-c", probe], check=False)
    return ran.returncode


def test_root_user_reaches_the_node_of_a_leaf_behind_a_firewall(
    firewalled_site: Site, os_user: pwd.struct_passwd, tmp_path: pathlib.Path
) -> None:
    site = firewalled_site
    started: list[RunningCluster | RunningNode] = []
    try:
        root = start_cluster(
            tmp_path / "root",
            "root",
            config={"proxy_service": {"listen_addr": f"{site.host_addr}:0"}},
        )
        started.append(root)
        root.add_user("alice", PASSWORD, roles=["access"], logins=["alice", "visitor"])

        in_site = {"listen_addr": f"{site.site_addr}:0"}
        leaf = start_cluster(
            tmp_path / "leaf",
            "leaf",
            config={"auth_service": in_site, "proxy_service": in_site},
            command_prefix=site.command_prefix,
        )
        started.append(leaf)
        # in tunnel mode, as the guide's nodes: it serves through its tunnel to the leaf's
        # proxy and listens nowhere
        node = start_node(leaf, tmp_path / "leaf-node", "leaf-node")
        started.append(node)
        role = tmp_path / "visitor.yaml"
        role.write_text(VISITOR_ROLE)
        leaf.tetherctl("create", str(role))
        create_trusted_cluster(leaf, trusted_cluster_yaml(root, invite(root, ttl="5m")))
        wait_for(lambda: connection(root) == "online", "the leaf's tunnel to the root")

        root.login("alice", PASSWORD)

        def ssh(command: str) -> subprocess.CompletedProcess[str]:
            return root.tether(
                "alice", "ssh", "--cluster=leaf", "visitor@leaf-node", command, check=False
            )

        # the leaf's node learns the root's user CA when the leaf's auth pushes the new trust
        wait_for(lambda: ssh("true").returncode == 0, "the leaf's node to trust the root")
        ran = ssh("id -un")
        assert (ran.returncode, ran.stdout) == (0, "visitor\n"), ran.stderr
        config = tmp_path / "ssh_config"
        config.write_text(root.tether("alice", "config").stdout)
        openssh = subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", "visitor@leaf-node.leaf", "id -un"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TETHER_HOME": str(root.user_home("alice"))},
            check=False,
        )
        assert (openssh.returncode, openssh.stdout) == (0, "visitor\n"), openssh.stderr

        # the firewall is real: the leaf's ports listen on the site's address, and every
        # connection the host tries to open to them meets the drop rule
        leaf_ports = [leaf.proxy_addr, leaf.auth_addr]
        dropped = site.dropped_connections()
        assert [_connect_from_host(addr) for addr in leaf_ports] == ["dropped"] * len(leaf_ports)
        assert site.dropped_connections() >= dropped + len(leaf_ports)
        assert [_connect_in_site(site, addr) for addr in leaf_ports] == [0] * len(leaf_ports)
    finally:
        for process in reversed(started):
            process.stop()
