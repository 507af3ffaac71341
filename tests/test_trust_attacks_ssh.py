"""Attacks on a leaf's name, seen from a root user's ``tether ssh`` and ``tether ls``.

Root cluster ``root``; the real leaf ``leaf2`` with its node ``leaf2-node`` (label
``side: real``), trusted by the root. An attacker holds a live trusted_cluster token and runs
an SSH server of its own: first a whole tetherd cluster also named leaf2 (its node labelled
``side: impostor``) that tries to re-join under leaf2's name with its own CAs; then a leaf
``evil`` whose handshake carries a CA naming leaf2, followed by a tunnel under leaf2's name
that would receive root users' streams and certificates. Root users must keep landing on
the real leaf2. Sessions run as the OS account ``visitor`` (needs root).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import trio

from tether import pki
from tether.errors import TetherError
from tether.testing.accounts import can_create_accounts
from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_node, wait_for
from tether.testing.impostor import (
    TunnelAttempt,
    exchange,
    forge_certificate,
    handshake,
    hold_tunnel,
)
from tether.testing.roles import VISITOR_ROLE

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH tools"),
]

PASSWORD = "correct horse battery staple"


@attrs.frozen
class Setup:
    root: RunningCluster
    leaf2: RunningCluster
    directory: pathlib.Path

    def invite(self) -> str:
        added = self.root.tetherctl("tokens", "add", "--type=trusted_cluster", "--format=json")
        return str(json.loads(added.stdout)["token"])

    def trust_root(self, leaf: RunningCluster, *, check: bool = True) -> Any:
        path = self.directory / f"trusted-{time.monotonic_ns()}.yaml"
        path.write_text(
            f"kind: trusted_cluster\nversion: v2\nmetadata:\n  name: root\nspec:\n"
            f"  enabled: true\n  token: {self.invite()}\n"
            f"  web_proxy_addr: {self.root.proxy_addr}\n  tunnel_addr: {self.root.proxy_addr}\n"
            f"  ca_pin: {self.root.ca_pin}\n"
            "  role_map: [{remote: access, local: [visitor]}]\n"
        )
        return leaf.tetherctl("create", str(path), check=check)

    def leaf2_nodes(self) -> list[dict[str, str]] | str:
        """The labels of the nodes ``tether ls --cluster=leaf2`` shows, or why it failed."""
        listed = self.root.tether("alice", "ls", "--cluster=leaf2", "-f", "json", check=False)
        if listed.returncode != 0:
            return listed.stderr
        return [n["metadata"]["labels"] for n in json.loads(listed.stdout)]

    def ssh(self, *command: str) -> tuple[int, str, str]:
        ran = self.root.tether(
            "alice", "ssh", "--cluster=leaf2", "visitor@leaf2-node", *command, check=False
        )
        return ran.returncode, ran.stdout, ran.stderr


def online(root: RunningCluster, name: str) -> bool:
    found = root.tetherctl("get", f"rc/{name}", "--format=json", check=False)
    if found.returncode != 0:
        return False
    docs = json.loads(found.stdout)
    doc = docs[0] if isinstance(docs, list) else docs
    return bool((doc.get("status") or {}).get("connection") == "online")


def audit(cluster: RunningCluster, event_type: str) -> list[dict[str, Any]]:
    found = cluster.tetherctl("audit", "search", f"--type={event_type}", "--format=json")
    return list(json.loads(found.stdout))


def start_leaf(directory: pathlib.Path, side: str) -> tuple[RunningCluster, RunningNode]:
    """A cluster named leaf2 with a node leaf2-node (labelled ``side``) and the visitor role."""
    leaf = start_cluster(directory / side, "leaf2")
    try:
        node = start_node(leaf, directory / f"{side}-node", "leaf2-node", labels={"side": side})
    except BaseException:
        leaf.stop()
        raise
    role = directory / f"{side}-visitor.yaml"
    role.write_text(VISITOR_ROLE)
    leaf.tetherctl("create", str(role))
    return leaf, node


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, os_user: object
) -> Iterator[tuple[Setup, list[RunningCluster | RunningNode]]]:
    directory = tmp_path_factory.mktemp("attacks")
    root = start_cluster(directory / "root", "root")
    started: list[RunningCluster | RunningNode] = [root]
    try:
        leaf2, node = start_leaf(directory, "real")
        started += [leaf2, node]
        root.add_user("alice", PASSWORD, roles=["access"], logins=["visitor"])
        root.login("alice", PASSWORD)
        found = Setup(root, leaf2, directory)
        found.trust_root(leaf2)
        wait_for(lambda: online(root, "leaf2"), "leaf2 to come online")
        wait_for(lambda: found.ssh("true")[0] == 0, "leaf2's node to trust the root")
        yield found, started
    finally:
        for process in reversed(started):
            process.stop()


def test_impostor_with_a_valid_token_cannot_take_over_the_leaf_users_ssh_to(
    setup: tuple[Setup, list[RunningCluster | RunningNode]],
) -> None:
    trust, started = setup
    impostor, impostor_node = start_leaf(trust.directory, "impostor")
    started += [impostor, impostor_node]
    refused = trust.trust_root(impostor, check=False)
    assert refused.returncode == 1
    assert "cluster 'leaf2' is already a leaf of 'root' with other CAs" in refused.stderr
    assert "`tetherctl rm rc/leaf2` on the root" in refused.stderr
    refusal = audit(trust.root, "trusted_cluster.refused")[-1]
    assert (refusal["leaf"], refusal["success"]) == ("leaf2", False)

    # root users still land on the real leaf2, whose host certificate they verify
    assert trust.leaf2_nodes() == [{"side": "real"}]
    for _ in range(3):
        code, out, err = trust.ssh("id -un")
        assert (code, out) == (0, "visitor\n"), err
    wait_for(lambda: bool(audit(trust.leaf2, "ssh.session.start")), "leaf2 to audit the sessions")
    assert audit(impostor, "ssh.session.start") == []
    assert online(trust.root, "leaf2")


async def _join_and_impersonate(
    trust: Setup, forged: pki.ClusterAuthorities, while_held: Callable[[], None]
) -> tuple[str | None, TunnelAttempt]:
    """As the attacker: the handshake as ``evil`` with a CA that names leaf2, then a tunnel
    as leaf2 signed by it, held while root users work. Returns the handshake's refusal (None
    if accepted) and what the tunnel got."""
    refusal: str | None = None
    try:
        await handshake(trust.root, {"token": trust.invite(), "leaf": exchange("evil", forged)})
    except TetherError as exc:
        refusal = str(exc)
    cert, key = forge_certificate(forged.tls, "leaf2", "leaf2-proxy")
    return refusal, await hold_tunnel(trust.root, cert, key, "leaf2", while_held)


def test_leaf_with_a_ca_naming_another_leaf_never_receives_its_users_streams(
    setup: tuple[Setup, list[RunningCluster | RunningNode]],
) -> None:
    trust, _ = setup
    forged = pki.ClusterAuthorities.generate("leaf2")  # the attacker's CA, O=leaf2
    listings: list[list[dict[str, str]] | str] = []

    def users_work() -> None:
        # a long session keeps a stream open on the real leaf2's tunnel, so the root would
        # send the next streams over any other tunnel registered as leaf2 (the least busy)
        started = len(audit(trust.leaf2, "ssh.session.start"))
        command = [sys.executable, "-m", "tether.cli.tether", "ssh", "--cluster=leaf2"]
        env = {**os.environ, "TETHER_HOME": str(trust.root.user_home("alice"))}
        with subprocess.Popen([*command, "visitor@leaf2-node", "sleep 5"], env=env) as busy:
            wait_for(
                lambda: len(audit(trust.leaf2, "ssh.session.start")) > started,
                "the long session to start",
            )
            for _ in range(3):
                listings.append(trust.leaf2_nodes())
            assert busy.wait(30) == 0

    refusal, tunnel = trio.run(_join_and_impersonate, trust, forged, users_work)
    assert [r.get("user_cert", "")[:8] for r in tunnel.streams] == [], (
        "the attacker must never receive a stream, nor a user's certificate"
    )
    assert listings == [[{"side": "real"}]] * 3
    assert tunnel.connected == []
    assert refusal is not None
    assert "the X.509 CA of 'evil' names cluster leaf2 in its subject, not 'evil'" in refusal
    assert not online(trust.root, "evil")
    assert online(trust.root, "leaf2")
