"""The example protocol through trust, with real processes: a root user reaches the echo
service of a node in a leaf, through the root's proxy, the leaf's tunnel, the leaf's proxy
and the node's own tunnel, with nothing of the plugin but its four hooks.

Root cluster ``root``; leaf cluster ``leaf`` with a node in tunnel mode serving echo (labels
``env=dev``); the leaf maps ``access`` to ``visitor`` (every node) and ``contractor`` to
``contractor`` (only ``env=staging`` nodes).

The same through a route name: a plain ``ssl`` client that sets only the TLS server name
``route_server_name("echo", "leaf", "leaf-node")``, as kubectl does with ``tls-server-name``,
and sends no first line; what the proxy refuses comes back as the plugin's one line.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator

import attrs
import pytest
import trio
from tether_echo.cli import ALPN, TITLE

from tether.api import (
    ROUTE_NAME_SUFFIX,
    AccessDenied,
    NotFound,
    TetherError,
    current_profile,
    open_target_stream,
    profile_ssl_context,
    route_server_name,
)
from tether.testing.certificates import login_context
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    start_cluster,
    start_node,
    stop_process,
    wait_for,
)
from tether.testing.roles import VISITOR_ROLE
from tether.testing.trusted_clusters import trusted_cluster_yaml

PASSWORD = "correct horse battery staple"
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "tether_echo"

#: the leaf maps the root's access to visitor, and contractor to its own contractor
ROLE_MAP = {"access": ["visitor"], "contractor": ["contractor"]}

CONTRACTOR_ROLE = """\
kind: role
version: v7
metadata:
  name: contractor
spec:
  allow:
    node_labels: {env: staging}
"""


@attrs.frozen
class Trust:
    root: RunningCluster
    leaf: RunningCluster
    node: RunningNode

    def echo(self, user: str, *args: str, input: str = "") -> tuple[int, str, str]:
        """``tether echo ARGS`` run by a root user against the leaf."""
        result = self.root.tether(user, "echo", *args, "--cluster=leaf", input=input, check=False)
        return result.returncode, result.stdout, result.stderr

    def refusal(self, user: str, target: str) -> TetherError:
        """What the client raises when ``user`` asks the root's proxy for the leaf's
        ``target`` and is refused."""
        profile = current_profile(self.root.user_home(user))
        assert profile is not None

        async def reach() -> None:
            stream, _ = await open_target_stream(
                profile.proxy,
                profile_ssl_context(profile, alpn=[ALPN]),
                alpn=ALPN,
                protocol=TITLE,
                cluster="leaf",
                target=target,
            )
            await stream.aclose()

        with pytest.raises(TetherError) as refused:
            trio.run(reach)
        return refused.value

    def by_route_name(
        self,
        user: str,
        target: str = "leaf-node",
        *,
        cluster: str = "leaf",
        client_cert: bool = True,
        at: RunningCluster | None = None,
        send: bytes = b"",
    ) -> list[bytes]:
        """What a client that sets only a server name gets at the root's proxy (or ``at``
        another's): ``user``'s login, with or without their certificate, verifying the proxy
        on the route name; its first line, and the line that comes back for ``send``."""
        profile = current_profile(self.root.user_home(user))
        assert profile is not None
        if at is None:
            at, context = self.root, profile_ssl_context(profile, client_cert=client_cert)
        else:
            context = login_context(profile, at)
        name = route_server_name("echo", cluster, target)
        return _exchange(at.proxy_addr, context, name, send)

    def leaf_events(self, event_type: str) -> list[dict[str, object]]:
        found = self.leaf.tetherctl("audit", "search", f"--type={event_type}", "--format=json")
        return list(json.loads(found.stdout))


def _exchange(addr: str, context: ssl.SSLContext, server_name: str, send: bytes) -> list[bytes]:
    """Connect to ``addr`` asking for ``server_name`` (hostname checking on); the first line,
    and the line that comes back for ``send``."""
    host, _, port = addr.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=30) as sock,
        context.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        reader = tls.makefile("rb")
        lines = [reader.readline()]
        if send:
            tls.sendall(send)
            lines.append(reader.readline())
        return lines


def _create(cluster: RunningCluster, directory: pathlib.Path, name: str, text: str) -> None:
    path = directory / f"{name}.yaml"
    path.write_text(text)
    cluster.tetherctl("create", str(path))


def _remote_connection(root: RunningCluster) -> str:
    (doc,) = json.loads(root.tetherctl("get", "rc/leaf", "--format=json").stdout)
    return str((doc.get("status") or {}).get("connection"))


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trust]:
    directory = tmp_path_factory.mktemp("echo")
    root = start_cluster(directory / "root", "root")
    started: list[RunningCluster | RunningNode] = [root]
    try:
        leaf = start_cluster(directory / "leaf", "leaf")
        started.append(leaf)
        echo = {"enabled": True, "labels": {"env": "dev"}}
        node = start_node(
            leaf,
            directory / "leaf-node",
            "leaf-node",
            config={"plugins": {"settings": {"echo": echo}}},
        )
        started.append(node)
        _create(leaf, directory, "visitor", VISITOR_ROLE)
        _create(leaf, directory, "contractor", CONTRACTOR_ROLE)
        _create(root, directory, "root-contractor", CONTRACTOR_ROLE)
        root.add_user("alice", PASSWORD, roles=["access"])
        root.add_user("carol", PASSWORD, roles=["auditor"])
        root.add_user("cora", PASSWORD, roles=["contractor"])
        for user in ("alice", "carol", "cora"):
            root.login(user, PASSWORD)
        invitation = root.tetherctl(
            "tokens", "add", "--type=trusted_cluster", "--ttl=5m", "--format=json"
        )
        token = str(json.loads(invitation.stdout)["token"])
        _create(
            leaf, directory, "trusted_cluster", trusted_cluster_yaml(root, token, role_map=ROLE_MAP)
        )
        wait_for(lambda: _remote_connection(root) == "online", "the leaf to come online")
        trust = Trust(root, leaf, node)
        # the node publishes its echo entry on its first heartbeat, and learns the root's CA
        # by the trust pushed from the leaf's auth
        wait_for(lambda: trust.echo("alice", "connect", "leaf-node")[0] == 0, "echo to answer")
        yield trust
    finally:
        for process in reversed(started):
            process.stop()


def test_root_user_reaches_the_leaf_nodes_echo_as_the_mapped_role(trust: Trust) -> None:
    code, out, err = trust.echo("alice", "connect", "leaf-node", input="ping\nsecond line\n")
    assert code == 0, err
    assert out == "ping\nsecond line\n"
    # the identity the plugin received on the node: the root's user with the leaf's role
    assert "echo leaf-node: hello alice of root (roles: visitor)" in err

    def started() -> list[dict[str, object]]:
        events = trust.leaf_events("echo.session.start")
        return [e for e in events if e.get("user") == "alice"]

    wait_for(started, "the node to audit the session at the leaf")
    assert started()[0]["node"] == "leaf-node"


def test_root_user_reaches_the_echo_by_its_labels(trust: Trust) -> None:
    code, out, err = trust.echo("alice", "connect", "env=dev", input="by labels\n")
    assert (code, out) == (0, "by labels\n"), err


def test_root_user_lists_the_leaf_echo_services_their_mapped_roles_reach(trust: Trust) -> None:
    code, out, err = trust.echo("alice", "ls", "-f", "json")
    assert code == 0, err
    assert [(e["spec"]["hostname"], e["metadata"]["labels"]) for e in json.loads(out)] == [
        ("leaf-node", {"env": "dev"})
    ]
    code, table, err = trust.echo("alice", "ls")
    assert code == 0, err
    assert table.splitlines()[2].split() == ["leaf-node", "env=dev"]


def test_unmapped_root_user_is_refused_with_the_reason(trust: Trust) -> None:
    code, out, err = trust.echo("carol", "connect", "leaf-node", input="ping\n")
    assert code != 0 and out == ""
    assert "no role of carol@root (auditor) maps to a role of cluster 'leaf'" in err
    # the leaf refused: the user meets its error as its class, through the root's proxy
    refused = trust.refusal("carol", "leaf-node")
    assert type(refused) is AccessDenied
    assert refused.message == "no role of carol@root (auditor) maps to a role of cluster 'leaf'"


def test_an_echo_missing_in_the_leaf_hints_the_echo_listing_of_the_leaf(trust: Trust) -> None:
    code, out, err = trust.echo("alice", "connect", "nosuchnode", input="ping\n")
    assert (code, out) == (1, "")
    assert err.strip() == (
        "ERROR: echo 'nosuchnode' not found in cluster 'leaf' "
        "(run `tether echo ls --cluster=leaf` to see the echos you can reach)"
    )
    refused = trust.refusal("alice", "nosuchnode")
    assert type(refused) is NotFound
    assert refused.hint == "run `tether echo ls --cluster=leaf` to see the echos you can reach"


def test_echo_hidden_by_labels_is_not_found(trust: Trust) -> None:
    # contractor maps to the leaf's contractor, whose node_labels select env=staging only
    code, out, err = trust.echo("cora", "connect", "leaf-node", input="ping\n")
    assert code != 0 and out == ""
    assert "echo 'leaf-node' not found in cluster 'leaf'" in err
    code, listed, err = trust.echo("cora", "ls", "-f", "json")
    assert (code, json.loads(listed)) == (0, []), err


def test_a_plaintext_client_reaches_the_echo_through_a_local_listener(trust: Trust) -> None:
    command = [sys.executable, "-m", "tether.cli.tether", "echo", "listen", "--cluster=leaf"]
    env = {**os.environ, "TETHER_HOME": str(trust.root.user_home("alice"))}
    listener = subprocess.Popen(
        [*command, "leaf-node"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    try:
        assert listener.stdout is not None
        said = listener.stdout.readline().decode()
        assert said.startswith("listening on 127.0.0.1:"), said + listener.stdout.read().decode()
        port = int(said.split()[2].rpartition(":")[2])
        # what nc or psql would do: plain TCP, no certificate, no ALPN, no server name
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            reader = conn.makefile("rb")
            hello = json.loads(reader.readline())
            assert (hello["type"], hello["user"], hello["roles"]) == ("hello", "alice", ["visitor"])
            conn.sendall(b"plain\n")
            assert reader.readline() == b"plain\n"
    finally:
        stop_process(listener)


def test_a_client_that_sets_only_a_server_name_reaches_the_leaf_nodes_echo(trust: Trust) -> None:
    # no ALPN id, no first line: the name says echo, leaf, leaf-node
    hello, echoed = trust.by_route_name("alice", send=b"by name\n")
    greeting = json.loads(hello)
    assert (greeting["type"], greeting["node"], greeting["user"]) == ("hello", "leaf-node", "alice")
    assert (greeting["cluster"], greeting["roles"]) == ("root", ["visitor"])
    assert echoed == b"by name\n"


def test_an_echo_missing_in_the_leaf_by_server_name_gets_the_refusal_line(trust: Trust) -> None:
    assert trust.by_route_name("alice", "nosuchnode") == [
        b"refused: echo 'nosuchnode' not found in cluster 'leaf' "
        b"(run `tether echo ls --cluster=leaf` to see the echos you can reach)\n"
    ]
    assert trust.by_route_name("alice", cluster="nosuch") == [
        b"refused: cluster 'nosuch' not found "
        b"(run `tether clusters` to see the clusters you can reach)\n"
    ]


def test_a_server_name_without_a_client_certificate_gets_the_refusal_line(trust: Trust) -> None:
    assert trust.by_route_name("alice", client_cert=False) == [
        b"refused: a client certificate is required (run `tether login` first)\n"
    ]


def test_the_leafs_refusal_of_an_unmapped_user_by_server_name_is_its_own(trust: Trust) -> None:
    def refusals() -> list[dict[str, object]]:
        events = trust.leaf_events("trust.stream.refused")
        return [e for e in events if "no role of carol@root" in str(e.get("reason"))]

    before = len(refusals())
    assert trust.by_route_name("carol") == [
        b"refused: no role of carol@root (auditor) maps to a role of cluster 'leaf' "
        b"(the role_map of trusted_cluster 'root' there decides)\n"
    ]
    # audited where it was refused, at the leaf, as on the ALPN front door
    wait_for(lambda: len(refusals()) > before, "the leaf to audit the refusal")


def test_the_route_names_certificate_verifies_against_the_root_clusters_ca(trust: Trust) -> None:
    # what a kubeconfig holds: the cluster's CA (tetherctl auth export --type=tls), nothing of
    # Tether's own client; hostname checking on, for the route name
    cas = trust.root.tetherctl("auth", "export", "--type=tls").stdout
    context = ssl.create_default_context(cadata=cas)
    assert context.check_hostname
    name = route_server_name("echo", "leaf", "leaf-node")
    host, _, port = trust.root.proxy_addr.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=30) as sock,
        context.wrap_socket(sock, server_hostname=name) as tls,
    ):
        names = [value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"]
        refused = tls.makefile("rb").readline()
    assert f"*.{ROUTE_NAME_SUFFIX}" in names
    assert refused.startswith(b"refused: a client certificate is required")


def test_a_root_user_reaches_the_echo_by_server_name_at_the_leafs_own_proxy(trust: Trust) -> None:
    # the leaf's proxy verifies the root's certificate on the route name too: it learned the
    # root's CA when the trust was made, after it started
    hello, echoed = trust.by_route_name("alice", at=trust.leaf, send=b"at the leaf\n")
    assert (json.loads(hello)["user"], json.loads(hello)["roles"]) == ("alice", ["visitor"])
    assert echoed == b"at the leaf\n"


def test_the_plugin_imports_only_the_public_api() -> None:
    imported = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    tether = {name for name in imported if name == "tether" or name.startswith("tether.")}
    assert tether == {"tether.api"}
