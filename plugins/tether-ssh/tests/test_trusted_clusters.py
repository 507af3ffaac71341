"""The guide's flow with real processes: a root user reaches a leaf's node through trust.

Root cluster ``root`` (auth + proxy), leaf cluster ``leaf`` (auth + proxy) with a node in
tunnel mode; the leaf trusts the root with the guide's trusted_cluster (``access`` ->
``visitor``). Sessions run as the OS account ``visitor`` created here (needs root).
"""

from __future__ import annotations

import json
import pathlib
import pwd
import shutil
import time
from collections.abc import Callable, Iterator

import attrs
import pytest

from tether.testing.accounts import can_create_accounts, os_account
from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_node

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH tools"),
]

PASSWORD = "correct horse battery staple"
VISITOR_ROLE = """
kind: role
version: v7
metadata:
  name: visitor
spec:
  allow:
    logins: [visitor]
    node_labels: {'*': '*'}
"""


def trusted_cluster_yaml(root: RunningCluster, token: str, *, enabled: bool = True) -> str:
    return f"""
kind: trusted_cluster
version: v2
metadata:
  name: root
spec:
  enabled: {"true" if enabled else "false"}
  token: "{token}"
  tunnel_addr: {root.proxy_addr}
  web_proxy_addr: {root.proxy_addr}
  ca_pin: {root.ca_pin}
  role_map:
    - remote: "access"
      local: ["visitor"]
"""


@attrs.frozen
class Trust:
    root: RunningCluster
    leaf: RunningCluster
    node: RunningNode
    directory: pathlib.Path

    def apply(self, text: str, *args: str) -> None:
        path = self.directory / "trusted_cluster.yaml"
        path.write_text(text)
        self.leaf.tetherctl("create", *args, str(path))

    def invite(self) -> str:
        added = self.root.tetherctl(
            "tokens", "add", "--type=trusted_cluster", "--ttl=5m", "--format=json"
        )
        invitation = json.loads(added.stdout)
        assert invitation["ca_pin"] == self.root.ca_pin
        return str(invitation["token"])

    def ssh(self, *command: str) -> tuple[int, str, str]:
        result = self.root.tether(
            "alice", "ssh", "--cluster=leaf", "visitor@leaf-node", *command, check=False
        )
        return result.returncode, result.stdout, result.stderr


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def connection(root: RunningCluster) -> str:
    found = json.loads(root.tetherctl("get", "rc/leaf", "--format=json").stdout)
    doc = found[0] if isinstance(found, list) else found
    return str((doc.get("status") or {}).get("connection"))


@pytest.fixture(scope="module")
def visitor() -> Iterator[pwd.struct_passwd]:
    with os_account("visitor") as account:
        yield account


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory, visitor: pwd.struct_passwd) -> Iterator[Trust]:
    directory = tmp_path_factory.mktemp("trust")
    root = start_cluster(directory / "root", "root")
    started: list[RunningCluster | RunningNode] = [root]
    try:
        leaf = start_cluster(directory / "leaf", "leaf")
        started.append(leaf)
        node = start_node(leaf, directory / "leaf-node", "leaf-node", labels={"env": "leaf"})
        started.append(node)
        role = directory / "visitor.yaml"
        role.write_text(VISITOR_ROLE)
        leaf.tetherctl("create", str(role))
        # as the guide says: authentication is the root's, so the root user gets the login
        root.add_user("alice", PASSWORD, roles=["access"], logins=["alice", "visitor"])
        root.login("alice", PASSWORD)
        yield Trust(root, leaf, node, directory)
    finally:
        for process in reversed(started):
            process.stop()


def test_root_user_reaches_the_leaf_node_as_the_mapped_visitor(
    trust: Trust, visitor: pwd.struct_passwd
) -> None:
    trust.apply(trusted_cluster_yaml(trust.root, trust.invite()))
    wait_for(lambda: connection(trust.root) == "online", "the leaf to come online")
    status, out, err = trust.ssh("pwd; id -un")
    assert status == 0, err
    assert out.split() == [visitor.pw_dir, "visitor"]


def test_disabling_the_trust_closes_access_and_enabling_restores_it(trust: Trust) -> None:
    assert trust.ssh("true")[0] == 0
    trust.apply(trusted_cluster_yaml(trust.root, "", enabled=False), "--force")
    wait_for(lambda: connection(trust.root) == "offline", "the leaf to go offline")
    status, _, err = trust.ssh("true")
    assert status == 255
    assert "cluster 'leaf' not found or offline" in err
    trust.apply(trusted_cluster_yaml(trust.root, "", enabled=True), "--force")
    wait_for(lambda: connection(trust.root) == "online", "the leaf to come back")
    wait_for(lambda: trust.ssh("true")[0] == 0, "access to come back")


def test_removing_the_trust_on_the_leaf_and_creating_it_again(trust: Trust) -> None:
    trust.leaf.tetherctl("rm", "trusted_cluster/root")
    wait_for(lambda: trust.ssh("true")[0] != 0, "access to end")
    trust.apply(trusted_cluster_yaml(trust.root, trust.invite()))
    wait_for(lambda: trust.ssh("true")[0] == 0, "access to come back")
