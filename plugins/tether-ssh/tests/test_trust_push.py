"""Trust changes reach the leaf's node as they are stored, so no session waits for them.

Nodes and proxies follow auth's trust snapshot by a watch (``GET /v1/trust?wait=...``), not by
polling: once ``tetherctl get rc`` shows the leaf online, the first ``tether ssh
--cluster=leaf`` succeeds; so does the first one after the trust is enabled again; and a
changed role applies to the very next session. Each test builds its own root, leaf and
tunnel-mode node; sessions run as the OS account ``visitor`` (needs root).
"""

from __future__ import annotations

import pathlib
import pwd
import shutil
from collections.abc import Iterator

import attrs
import pytest

from tether.testing.accounts import can_create_accounts
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    start_cluster,
    start_node,
    wait_for,
)
from tether.testing.roles import VISITOR_ROLE
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    trusted_cluster_yaml,
)

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH tools"),
]

PASSWORD = "correct horse battery staple"


@attrs.frozen
class Pair:
    """A root with the user alice (``access``) and a leaf with a node, not yet trusting."""

    root: RunningCluster
    leaf: RunningCluster
    node: RunningNode
    directory: pathlib.Path

    def create_on_leaf(self, text: str, *args: str) -> None:
        path = self.directory / "resource.yaml"
        path.write_text(text)
        self.leaf.tetherctl("create", *args, str(path))

    def trust_root(self, *, enabled: bool = True, token: str = "") -> None:
        text = trusted_cluster_yaml(self.root, token, enabled=enabled)
        create_trusted_cluster(self.leaf, text, "--force")

    def invite(self) -> str:
        return invite(self.root)

    def connection(self) -> str:
        return connection(self.root)

    def ssh(self, *command: str) -> tuple[int, str, str]:
        result = self.root.tether(
            "alice", "ssh", "--cluster=leaf", "visitor@leaf-node", *command, check=False
        )
        return result.returncode, result.stdout, result.stderr


@pytest.fixture
def pair(tmp_path: pathlib.Path, os_user: pwd.struct_passwd) -> Iterator[Pair]:
    started: list[RunningCluster | RunningNode] = []
    try:
        root = start_cluster(tmp_path / "root", "root")
        started.append(root)
        leaf = start_cluster(tmp_path / "leaf", "leaf")
        started.append(leaf)
        node = start_node(leaf, tmp_path / "leaf-node", "leaf-node")
        started.append(node)
        root.add_user("alice", PASSWORD, roles=["access"], logins=["visitor"])
        root.login("alice", PASSWORD)
        pair = Pair(root, leaf, node, tmp_path)
        pair.create_on_leaf(VISITOR_ROLE)
        yield pair
    finally:
        for process in reversed(started):
            process.stop()


def test_the_first_ssh_once_the_leaf_is_online_succeeds(pair: Pair) -> None:
    pair.trust_root(token=pair.invite())
    wait_for(lambda: pair.connection() == "online", "the leaf to come online")
    status, out, err = pair.ssh("id -un")  # the first try: no retry
    assert (status, out) == (0, "visitor\n"), err


def test_the_first_ssh_after_the_trust_is_enabled_again_succeeds(pair: Pair) -> None:
    pair.trust_root(token=pair.invite())
    wait_for(lambda: pair.connection() == "online", "the leaf to come online")
    pair.trust_root(enabled=False)
    wait_for(lambda: pair.connection() == "offline", "the leaf to go offline")
    pair.trust_root(enabled=True)
    wait_for(lambda: pair.connection() == "online", "the leaf to come back")
    status, _, err = pair.ssh("true")
    assert status == 0, err


def test_a_changed_role_applies_to_the_next_session(pair: Pair) -> None:
    pair.trust_root(token=pair.invite())
    wait_for(lambda: pair.connection() == "online", "the leaf to come online")
    assert pair.ssh("true")[0] == 0
    pair.create_on_leaf(VISITOR_ROLE.replace("logins: [visitor]", "logins: [nobody]"), "--force")
    status, _, err = pair.ssh("true")
    assert status != 0 and "visitor" in err, err
    pair.create_on_leaf(VISITOR_ROLE, "--force")
    status, _, err = pair.ssh("true")
    assert status == 0, err
