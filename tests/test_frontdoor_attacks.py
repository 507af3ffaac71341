"""Attacks on the SSH front door: reaching another port of a node's host, and registering an
address that is not the node's.

The front door connects only to a node's registered SSH address; anything else goes through
SSH port forwarding, which the roles govern. Here a user who can merely see a node (no
logins) asks for another port of its host, where a service this test runs listens on
127.0.0.1: with ``tether ssh -p`` and with a raw front-door request, at the root and through
a leaf. A client writes another user's certificate and address into its dial request. And a
node registers the proxy's, auth's or a foreign address. Real processes: a root
and a leaf cluster, each with a node in direct mode (the proxy dials it); sessions run as the
OS account ``visitor`` (needs root).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import pathlib
import pwd
import shutil
import socket
import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding
from tether_ssh.frontdoor import FRONT_DOOR_ALPN
from tether_ssh.inventory import NODE, NodeSpec

from tether import pki
from tether.auth.http_client import AuthClient
from tether.client.profile import current_profile, profile_ssl_context
from tether.errors import AccessDenied
from tether.node.join import load_identity
from tether.resources import resource_to_dict
from tether.testing.accounts import can_create_accounts
from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_node, wait_for
from tether.testing.roles import VISITOR_ROLE
from tether.tlsstream import TLSStream
from tether.tunnel.control import ControlChannel

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH tools"),
]

PASSWORD = "correct horse battery staple"
NODE_TTL = datetime.timedelta(seconds=40)
SECRET = b"internal service: not for the front door\n"
ROLES = (
    """
kind: role
version: v7
metadata:
  name: viewer
spec:
  allow:
    node_labels: {'*': '*'}
---
"""
    + VISITOR_ROLE
)


@attrs.frozen
class LocalService:
    """A TCP service on 127.0.0.1 of the nodes' host, which no user was given."""

    port: int
    connections: list[str]


@contextlib.contextmanager
def local_service() -> Iterator[LocalService]:
    listener = socket.create_server(("127.0.0.1", 0))
    service = LocalService(listener.getsockname()[1], [])

    def serve() -> None:
        while True:
            try:
                conn, addr = listener.accept()
            except OSError:
                return
            service.connections.append(f"{addr[0]}:{addr[1]}")
            with conn, contextlib.suppress(OSError):
                conn.sendall(SECRET)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        listener.close()
        thread.join(timeout=5)


@attrs.frozen
class Clusters:
    root: RunningCluster
    leaf: RunningCluster
    root_node: RunningNode
    leaf_node: RunningNode
    service: LocalService
    directory: pathlib.Path

    def node_addr(self, cluster: RunningCluster, user: str = "alice") -> str:
        """The address the node of ``cluster`` registered, as ``tether ls`` shows it."""
        args = ["ls", "-f", "json"] + ([] if cluster is self.root else ["--cluster=leaf"])
        (node,) = json.loads(self.root.tether(user, *args).stdout)
        return str(node["spec"]["addr"])

    def ssh(self, user: str, *args: str) -> tuple[int, str, str]:
        result = self.root.tether(user, "ssh", *args, check=False)
        return result.returncode, result.stdout, result.stderr


def audit(cluster: RunningCluster, event_type: str) -> list[dict[str, Any]]:
    out = cluster.tetherctl("audit", "search", f"--type={event_type}", "--format=json").stdout
    return list(json.loads(out))


@pytest.fixture(scope="module")
def clusters(
    tmp_path_factory: pytest.TempPathFactory, os_user: pwd.struct_passwd
) -> Iterator[Clusters]:
    directory = tmp_path_factory.mktemp("frontdoor")
    started: list[RunningCluster | RunningNode] = []
    try:
        with local_service() as service:
            root = start_cluster(directory / "root", "root")
            started.append(root)
            leaf = start_cluster(directory / "leaf", "leaf")
            started.append(leaf)
            root_node = start_node(root, directory / "root-node", "root-node", tunnel=False)
            started.append(root_node)
            leaf_node = start_node(leaf, directory / "leaf-node", "leaf-node", tunnel=False)
            started.append(leaf_node)
            roles = directory / "roles.yaml"
            roles.write_text(ROLES)
            for cluster in (root, leaf):
                cluster.tetherctl("create", str(roles))
            # mallory sees every node and may log in to none; alice logs in as visitor
            root.add_user("mallory", PASSWORD, roles=["viewer"])
            root.add_user("alice", PASSWORD, roles=["visitor"])
            root.login("mallory", PASSWORD)
            root.login("alice", PASSWORD)
            token = json.loads(
                root.tetherctl("tokens", "add", "--type=trusted_cluster", "--format=json").stdout
            )["token"]
            trusted = directory / "trusted_cluster.yaml"
            trusted.write_text(
                f"""
kind: trusted_cluster
version: v2
metadata:
  name: root
spec:
  enabled: true
  token: "{token}"
  web_proxy_addr: {root.proxy_addr}
  tunnel_addr: {root.proxy_addr}
  ca_pin: {root.ca_pin}
  role_map:
    - remote: viewer
      local: [viewer]
    - remote: visitor
      local: [visitor]
"""
            )
            leaf.tetherctl("create", str(trusted))
            setup = Clusters(root, leaf, root_node, leaf_node, service, directory)
            # the leaf's node learns the root's user CA on its next refresh (a few seconds)
            wait_for(
                lambda: setup.ssh("alice", "--cluster=leaf", "visitor@leaf-node", "true")[0] == 0,
                "the leaf's node to trust the root",
            )
            yield setup
    finally:
        for process in reversed(started):
            process.stop()


def test_user_who_only_sees_a_node_cannot_reach_another_port_with_tether_ssh_p(
    clusters: Clusters,
) -> None:
    port = clusters.service.port
    ssh_port = clusters.node_addr(clusters.root).rsplit(":", 1)[1]
    code, out, err = clusters.ssh("mallory", "-p", str(port), "visitor@root-node", "true")
    assert code == 255
    assert (
        f"node 'root-node' serves SSH on port {ssh_port}; the front door connects only there, "
        f"not to port {port}"
    ) in err, err
    assert "SSH port forwarding (-L), which your roles govern" in err
    assert SECRET.decode().strip() not in out + err

    refused = [e for e in audit(clusters.root, "proxy.dial.refused") if e["port"] == port]
    assert refused and refused[0]["user"] == "mallory" and refused[0]["success"] is False
    assert refused[0]["node"] == "root-node" and "not to port" in refused[0]["reason"]
    assert refused[0]["protocol"] == "ssh"

    # through a leaf: the leaf refuses its own node's other ports, and audits it
    leaf_ssh_port = clusters.node_addr(clusters.leaf).rsplit(":", 1)[1]
    code, out, err = clusters.ssh(
        "mallory", "--cluster=leaf", "-p", str(port), "visitor@leaf-node", "true"
    )
    assert code == 255
    assert (
        f"node 'leaf-node' serves SSH on port {leaf_ssh_port}; the front door connects only "
        f"there, not to port {port}"
    ) in err, err

    def leaf_refusals() -> list[dict[str, Any]]:
        events = audit(clusters.leaf, "trust.stream.refused")
        return [e for e in events if e.get("port") == str(port)]

    wait_for(lambda: bool(leaf_refusals()), "the leaf to audit the refused port")
    assert leaf_refusals()[0]["root"] == "root"
    assert clusters.service.connections == [], "nobody reached the local service"


async def _front_door(
    clusters: Clusters, user: str, request: dict[str, Any]
) -> tuple[dict[str, Any] | None, bytes]:
    """Send one raw request to the root proxy's front door (ALPN tether-ssh/1) with
    ``user``'s certificate; the answer, and the first bytes after it (if dialed)."""
    profile = current_profile(clusters.root.user_home(user))
    assert profile is not None
    context = profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN])
    host, port = clusters.root.proxy_addr.rsplit(":", 1)
    stream = await TLSStream.connect(host, int(port), context, server_hostname=host)
    try:
        channel = ControlChannel(stream)
        await channel.send(request)
        with trio.fail_after(20):
            answer = await channel.receive()
            after = channel.take_buffered()
            if answer is not None and answer["type"] == "dialed" and not after:
                after = await stream.receive_some(4096)
        return answer, after
    finally:
        await trio.aclose_forcefully(stream)


async def test_raw_front_door_request_for_another_port_is_refused_at_the_root_and_the_leaf(
    clusters: Clusters,
) -> None:
    port = clusters.service.port
    for cluster, node in (("root", "root-node"), ("leaf", "leaf-node")):
        request = {"type": "dial", "cluster": cluster, "target": node, "port": str(port)}
        answer, after = await _front_door(clusters, "mallory", request)
        assert answer is not None and answer["type"] == "error", (answer, after)
        assert f"the front door connects only there, not to port {port}" in str(
            answer["error"]["message"]
        )
        assert after == b""
        # the registered port (0: the node's own) still leads to the node's SSH server
        answer, after = await _front_door(clusters, "mallory", {**request, "port": "0"})
        assert answer is not None and answer["type"] == "dialed", answer
        assert after.startswith(b"SSH-2.0-"), after
    assert clusters.service.connections == [], "nobody reached the local service"


def test_tether_ssh_to_the_registered_port_still_works(
    clusters: Clusters, os_user: pwd.struct_passwd
) -> None:
    for cluster, node in ((clusters.root, "root-node"), (clusters.leaf, "leaf-node")):
        ssh_port = clusters.node_addr(cluster).rsplit(":", 1)[1]
        extra = [] if cluster is clusters.root else ["--cluster=leaf"]
        code, out, err = clusters.ssh("alice", *extra, "-p", ssh_port, f"visitor@{node}", "id -un")
        assert (code, out) == (0, "visitor\n"), err


async def test_node_cannot_register_an_address_its_certificate_does_not_name_or_the_clusters_own(
    clusters: Clusters,
) -> None:
    root = clusters.root
    joined = load_identity(clusters.directory / "root-node" / "data" / "host")
    assert joined is not None
    host_id = joined.identity.username
    registered = clusters.node_addr(root)
    context = pki.client_ssl_context(
        trusted_cas=list(joined.tls_cas), cert=joined.tls_cert, key=joined.private_key
    )
    proxy_port = root.proxy_addr.rsplit(":", 1)[1]
    auth_port = root.auth_addr.rsplit(":", 1)[1]
    attempts = {
        f"127.0.0.1:{proxy_port}": "it is the address of this cluster's proxy",
        f"127.0.0.1:{auth_port}": "it is the address of this cluster's auth service",
        "192.0.2.7:22": "may register an address only on a host its certificate names",
    }
    async with AuthClient(f"https://{root.auth_addr}", context) as api:
        for addr, reason in attempts.items():
            entry = NODE.new(host_id, NodeSpec(hostname="root-node", addr=addr))
            with pytest.raises(AccessDenied) as refused:
                await api.publish(resource_to_dict(entry), NODE_TTL)
            assert reason in refused.value.message, (addr, refused.value.message)
        # its own address, which its certificate names, is accepted as before
        entry = NODE.new(host_id, NodeSpec(hostname="root-node", addr=registered))
        await api.publish(resource_to_dict(entry), NODE_TTL)

    events = [e for e in audit(root, "host.publish.refused") if e["user"] == host_id]
    reasons = [str(e["reason"]) for e in events]
    for addr, reason in attempts.items():
        assert any(addr in r and reason in r for r in reasons), (addr, reasons)
    assert clusters.node_addr(root) == registered


def test_node_configured_with_the_proxy_address_is_refused_at_start(clusters: Clusters) -> None:
    root = clusters.root
    with pytest.raises(AssertionError) as failed:
        start_node(
            root,
            clusters.directory / "sneaky-node",
            "sneaky-node",
            tunnel=False,
            ssh_service={"public_addr": root.proxy_addr},
        )
    assert f"may not register {root.proxy_addr}: it is the address of this cluster's" in str(
        failed.value
    )
    assert "sneaky-node" not in root.tether("alice", "ls").stdout


async def test_a_client_cannot_speak_for_another_user_through_the_dial_request(
    clusters: Clusters,
) -> None:
    # eve sees no node; she writes mallory's certificate (who sees them all) and another
    # address into her request: the proxy takes both from the TLS connection instead
    blind = clusters.directory / "blind.yaml"
    blind.write_text("kind: role\nversion: v7\nmetadata:\n  name: blind\nspec:\n  allow: {}\n")
    clusters.root.tetherctl("create", str(blind))
    clusters.root.add_user("eve", PASSWORD, roles=["blind"])
    clusters.root.login("eve", PASSWORD)
    mallory = current_profile(clusters.root.user_home("mallory"))
    assert mallory is not None
    der = pki.load_cert(mallory.tls_cert_file.read_bytes()).public_bytes(Encoding.DER)
    spoofed = {"user_cert": base64.b64encode(der).decode(), "client": "192.0.2.1:1"}

    answer, _ = await _front_door(clusters, "eve", {"type": "list", "cluster": "root", **spoofed})
    assert answer == {"type": "targets", "targets": []}
    request = {"type": "dial", "cluster": "root", "target": "root-node", **spoofed}
    answer, after = await _front_door(clusters, "eve", request)
    assert answer is not None and answer["type"] == "error", answer
    assert "node 'root-node' not found in cluster 'root'" in answer["error"]["message"]
    assert after == b""
