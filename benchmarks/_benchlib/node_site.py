"""The many-nodes benchmark's real cluster: one ``tetherd`` with auth and proxy, and one node.

:func:`node_site` starts, on 127.0.0.1, a cluster ``root`` (auth and proxy in one real
``tetherd``), a node ``bench-node`` joined through the proxy in tunnel mode with a node token
(``start_node(..., tunnel=True)``: its own ``tetherd``, serving SSH), and a user ``bench``
(role ``access``, login ``root``) logged in with ``tether login``. The lightweight nodes
(:mod:`_benchlib.nodes`) join the same proxy with a node token this site made.

Every process started here is stopped by its pid when the block exits, whatever the exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping

from _benchlib.daemon_settings import LOG
from _benchlib.procs import run_until_ok
from _benchlib.ssh_sites import user_env
from _benchlib.trust_site import FLEET_RATE_LIMIT, console_script

__all__ = ["NODE", "NodeSite", "listed_nodes", "node_site"]

CLUSTER = "root"
NODE = "bench-node"
LOGIN = "root"  # the harness runs as root, as ssh_session.py's sessions do
USER = "bench"
PASSWORD = "bench-password-not-secret"  # a throwaway cluster on loopback
#: one node token for every node of the run (a token is valid until it expires, for any
#: number of joins)
TOKEN_TTL = "4h"
#: how long the real node may take to be listed and reachable
READY_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class NodeSite:
    """What the harness needs of the running cluster."""

    root_pid: int
    proxy: str
    ca_pin: str
    #: a node token for the lightweight nodes
    token: str
    #: the logged-in user's environment, for ``tether`` commands
    user_env: Mapping[str, str]
    tether: tuple[str, ...]
    #: ``tetherctl -c CONFIG`` as the cluster's local admin
    tetherctl: tuple[str, ...]
    node: str = NODE
    login: str = LOGIN
    #: pid of the real node's tetherd, for the report
    node_pid: int = 0

    def ssh_argv(self, command: str = "true") -> list[str]:
        return [*self.tether, "ssh", f"{self.login}@{self.node}", command]

    def ls_argv(self) -> list[str]:
        return [*self.tether, "ls"]

    def get_nodes_argv(self) -> list[str]:
        return [*self.tetherctl, "get", "nodes", "--format=json"]


def listed_nodes(get_nodes_stdout: str) -> list[str]:
    """The node host names ``tetherctl get nodes --format=json`` shows."""
    docs = json.loads(get_nodes_stdout or "[]")
    if isinstance(docs, dict):
        docs = [docs]
    return [str((doc.get("spec") or {}).get("hostname", "")) for doc in docs]


def ls_rows(ls_stdout: str) -> int:
    """The nodes ``tether ls`` printed: its table's rows below the header and rule."""
    return sum(1 for line in ls_stdout.splitlines()[2:] if line.strip())


@contextlib.contextmanager
def node_site() -> Iterator[NodeSite]:
    """Start the cluster and its real node; yield once a session to the node works."""
    from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_node

    with tempfile.TemporaryDirectory(prefix="tether-bench-nodes-") as tmpdir:
        base = pathlib.Path(tmpdir)
        started: list[RunningCluster | RunningNode] = []
        try:
            # every node joins from 127.0.0.1 here, as a fleet behind one NAT would: the proxy
            # is told to expect that many from one address, as its config file says to
            cluster = start_cluster(
                base / CLUSTER, CLUSTER, config={**FLEET_RATE_LIMIT, "log": LOG}
            )
            started.append(cluster)
            node = start_node(cluster, base / NODE, NODE, tunnel=True, config={"log": LOG})
            started.append(node)
            cluster.add_user(USER, PASSWORD, roles=["access"], logins=[LOGIN])
            cluster.login(USER, PASSWORD)
            added = cluster.tetherctl(
                "tokens", "add", "--type=node", f"--ttl={TOKEN_TTL}", "--format=json"
            )
            site = NodeSite(
                root_pid=cluster.process.pid,
                proxy=cluster.proxy_addr,
                ca_pin=cluster.ca_pin,
                token=str(json.loads(added.stdout)["token"]),
                user_env=user_env(TETHER_HOME=str(cluster.user_home(USER))),
                tether=tuple(console_script("tether")),
                tetherctl=(*console_script("tetherctl"), "-c", str(cluster.config_path)),
                node_pid=node.process.pid,
            )
            _wait_listed(site)
            # the node's tunnel comes up a little after the node starts
            run_until_ok(site.ssh_argv(), dict(site.user_env), time.monotonic() + READY_TIMEOUT)
            yield site
        finally:
            for process in reversed(started):
                process.stop()


def _wait_listed(site: NodeSite) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        done = subprocess.run(
            site.get_nodes_argv(), capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode == 0 and site.node in listed_nodes(done.stdout):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{site.node} was not listed in {READY_TIMEOUT:.0f}s: "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        time.sleep(0.5)
