"""The many-leaves benchmark's real clusters: a root, its one real leaf and the leaf's node.

:func:`trust_site` starts, on 127.0.0.1, the guide's setup with real ``tetherd`` processes, as
``plugins/tether-ssh/tests/test_trusted_clusters.py`` does: a root cluster ``root``, a leaf
cluster ``leaf0`` with a node ``leaf-node`` joined in tunnel mode and a role ``visitor``
(login ``visitor``, every node), a ``trusted_cluster`` on the leaf mapping the root's
``access`` to ``visitor``, and a root user ``bench`` (role ``access``, login ``visitor``)
logged in with ``tether login``. Sessions run as the OS account ``visitor`` (created here when
missing, which needs root). The lightweight leaves (:mod:`_benchlib.leaves`) join the same root
with the invitation token this site made.

Every process started here is stopped by its pid when the block exits, whatever the exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import pwd
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from _benchlib.daemon_settings import LOG
from _benchlib.procs import run_until_ok
from _benchlib.ssh_sites import user_env

if TYPE_CHECKING:  # the harness imports tether's testing helpers only when a site starts
    from tether.testing.cluster import RunningCluster

ROOT = "root"
LEAF = "leaf0"
NODE = "leaf-node"
LOGIN = "visitor"
USER = "bench"
PASSWORD = "bench-password-not-secret"  # a throwaway cluster on loopback
#: one invitation for every leaf of the run (a trusted_cluster token is valid until it expires)
TOKEN_TTL = "2h"
#: how long the real leaf may take to come online and its node to trust the root's users
READY_TIMEOUT = 60.0
#: the root's per-address rate on joins, high enough for every leaf of a run at once
FLEET_RATE_LIMIT = {"proxy_service": {"rate_limit": {"average": 100_000, "burst": 100_000}}}

VISITOR_ROLE = """\
kind: role
version: v7
metadata:
  name: visitor
spec:
  allow:
    logins: [visitor]
    node_labels: {'*': '*'}
"""

TRUSTED_CLUSTER = """\
kind: trusted_cluster
version: v2
metadata:
  name: root
spec:
  enabled: true
  token: "{token}"
  tunnel_addr: {proxy}
  web_proxy_addr: {proxy}
  ca_pin: {ca_pin}
  role_map:
    - remote: "access"
      local: ["visitor"]
"""


def console_script(name: str) -> list[str]:
    """A Tether console script next to this interpreter (what users run), else ``python -m``."""
    script = pathlib.Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", f"tether.cli.{name}"]


@dataclasses.dataclass(frozen=True)
class TrustSite:
    """The running site, as the harness uses it: commands, addresses and the root's pid."""

    root_pid: int
    root_proxy: str
    root_ca_pin: str
    #: a trusted_cluster invitation token of the root, for the lightweight leaves
    token: str
    #: the root user's environment (``TETHER_HOME``) for ``tether`` commands
    user_env: Mapping[str, str]
    tether: tuple[str, ...]
    #: ``tetherctl -c ROOT_CONFIG`` as the root's local admin
    root_tetherctl: tuple[str, ...]
    leaf: str = LEAF
    node: str = NODE
    login: str = LOGIN
    #: pids of the real leaf's processes (its tetherd and its node), for the report
    leaf_pids: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def ssh_argv(self, command: str = "true") -> list[str]:
        return [*self.tether, "ssh", f"--cluster={self.leaf}", f"{self.login}@{self.node}", command]

    def clusters_argv(self) -> list[str]:
        return [*self.tether, "clusters"]

    def get_rc_argv(self) -> list[str]:
        return [*self.root_tetherctl, "get", "rc", "--format=json"]


def online_leaves(get_rc_stdout: str) -> list[str]:
    """The remote clusters ``tetherctl get rc --format=json`` shows online."""
    docs = json.loads(get_rc_stdout or "[]")
    if isinstance(docs, dict):
        docs = [docs]
    return [
        str(doc["metadata"]["name"])
        for doc in docs
        if (doc.get("status") or {}).get("connection") == "online"
    ]


def trust_root(root: RunningCluster, leaf: RunningCluster, base: pathlib.Path) -> str:
    """The guide's trust, by its commands: the leaf's role ``visitor``, the root's user
    ``bench`` (role ``access``, login ``visitor``) logged in, an invitation of the root and
    the leaf's ``trusted_cluster`` with it; returns the invitation token."""
    role = base / "visitor.yaml"
    role.write_text(VISITOR_ROLE)
    leaf.tetherctl("create", str(role))
    root.add_user(USER, PASSWORD, roles=["access"], logins=[LOGIN])
    root.login(USER, PASSWORD)
    added = root.tetherctl(
        "tokens", "add", "--type=trusted_cluster", f"--ttl={TOKEN_TTL}", "--format=json"
    )
    token = str(json.loads(added.stdout)["token"])
    trusted = base / "trusted_cluster.yaml"
    trusted.write_text(
        TRUSTED_CLUSTER.format(token=token, proxy=root.proxy_addr, ca_pin=root.ca_pin)
    )
    leaf.tetherctl("create", str(trusted))
    return token


@contextlib.contextmanager
def trust_site() -> Iterator[TrustSite]:
    """Start the root, the real leaf and its node; yield once a session to the node works."""
    from tether.testing.accounts import can_create_accounts, os_account
    from tether.testing.cluster import RunningNode, start_cluster, start_node

    if not can_create_accounts():
        try:
            pwd.getpwnam(LOGIN)
        except KeyError:
            raise RuntimeError(
                f"sessions run as the OS account {LOGIN!r}, which is missing and cannot be "
                "created here (needs root and useradd): run as root or create it"
            ) from None
    with (
        os_account(LOGIN),
        tempfile.TemporaryDirectory(prefix="tether-bench-leaves-") as tmpdir,
    ):
        base = pathlib.Path(tmpdir)
        started: list[RunningCluster | RunningNode] = []
        try:
            # every leaf joins from 127.0.0.1 here, as a fleet behind one NAT would: the root
            # is told to expect that many from one address, as its config file says to
            root = start_cluster(base / ROOT, ROOT, config={**FLEET_RATE_LIMIT, "log": LOG})
            started.append(root)
            leaf = start_cluster(base / LEAF, LEAF, config={"log": LOG})
            started.append(leaf)
            node = start_node(leaf, base / NODE, NODE, config={"log": LOG})
            started.append(node)
            token = trust_root(root, leaf, base)
            site = TrustSite(
                root_pid=root.process.pid,
                root_proxy=root.proxy_addr,
                root_ca_pin=root.ca_pin,
                token=token,
                user_env=user_env(TETHER_HOME=str(root.user_home(USER))),
                tether=tuple(console_script("tether")),
                root_tetherctl=(*console_script("tetherctl"), "-c", str(root.config_path)),
                leaf_pids={
                    f"{LEAF} tetherd": leaf.process.pid,
                    f"{NODE} tetherd": node.process.pid,
                },
            )
            _wait_online(site)
            # the leaf's node learns the root's user CA on its next refresh (a few seconds)
            run_until_ok(site.ssh_argv(), dict(site.user_env), time.monotonic() + READY_TIMEOUT)
            yield site
        finally:
            for process in reversed(started):
                process.stop()


def _wait_online(site: TrustSite) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        done = subprocess.run(
            site.get_rc_argv(), capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode == 0 and site.leaf in online_leaves(done.stdout):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{site.leaf} did not come online at the root in {READY_TIMEOUT:.0f}s: "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        time.sleep(0.5)
