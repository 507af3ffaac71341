"""The node agent serves any protocol plugin: hooktest's ``hooktest-whoami`` on a node in
tunnel mode, reached through the leaf proxy's hooktest dialer.

Root cluster ``root``, leaf cluster ``leaf`` trusting it (``access`` -> ``visitor``), and a
node of the leaf in tunnel mode serving hooktest's node protocol (next to SSH, when that
plugin is installed). The agent, not the plugin, refuses a protocol the node does not serve,
verifies the forwarded user certificate with the cluster's trust and hands the plugin the
role-mapped identity."""

from __future__ import annotations

import base64
import json
import pathlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import tether_hooktest
import trio
from cryptography.hazmat.primitives import serialization

from tether import pki
from tether.client.profile import current_profile, profile_ssl_context
from tether.config import Config, default_config
from tether.errors import ConfigError
from tether.hookspecs import hookimpl
from tether.node.agent import agent_services
from tether.plugins import get_plugin_manager
from tether.services import ServiceContext
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    start_cluster,
    start_node,
    wait_for,
)
from tether.testing.impostor import forge_certificate
from tether.testing.roles import VISITOR_ROLE

PASSWORD = "correct horse battery staple"


@attrs.frozen
class Site:
    root: RunningCluster
    leaf: RunningCluster
    node: RunningNode
    host_id: str
    context: ssl.SSLContext  # lena of the leaf, offering hooktest's dialer

    def dial(self, protocol: str, **request: Any) -> str:
        """Ask the leaf proxy for a stream to ``protocol`` on the node; all it answers."""
        host, port = self.leaf.proxy_addr.rsplit(":", 1)
        body = {"protocol": protocol, "node": self.host_id, "target": "db-1", **request}
        with (
            socket.create_connection((host, int(port)), timeout=20) as raw,
            self.context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(json.dumps(body).encode())
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
        return answer.decode()


def _user_cert(cluster: RunningCluster, user: str) -> str:
    """``user``'s X.509 certificate from their login profile, as a proxy forwards it."""
    profile = current_profile(cluster.user_home(user))
    assert profile is not None
    der = pki.load_cert(profile.tls_cert_file.read_bytes()).public_bytes(serialization.Encoding.DER)
    return base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("agent")
    hooks = {tether_hooktest.LOG_ENV: str(directory / "hooks.jsonl")}
    started: list[RunningCluster | RunningNode] = []
    try:
        root = start_cluster(directory / "root", "root")
        started.append(root)
        leaf = start_cluster(directory / "leaf", "leaf", env=hooks)
        started.append(leaf)
        node = start_node(
            leaf,
            directory / "node",
            "agent-node",
            env={**hooks, tether_hooktest.AGENT_ENV: "1"},
        )
        started.append(node)
        role = directory / "visitor.yaml"
        role.write_text(VISITOR_ROLE)
        leaf.tetherctl("create", str(role))
        leaf.add_user("lena", PASSWORD, roles=["access"])
        leaf.login("lena", PASSWORD)
        root.add_user("alice", PASSWORD, roles=["access"], logins=["alice", "visitor"])
        root.login("alice", PASSWORD)
        invitation = json.loads(
            root.tetherctl("tokens", "add", "--type=trusted_cluster", "--format=json").stdout
        )
        trusted = directory / "trusted_cluster.yaml"
        trusted.write_text(
            "kind: trusted_cluster\nversion: v2\nmetadata:\n  name: root\nspec:\n"
            f'  enabled: true\n  token: "{invitation["token"]}"\n'
            f"  tunnel_addr: {root.proxy_addr}\n  web_proxy_addr: {root.proxy_addr}\n"
            f"  ca_pin: {root.ca_pin}\n"
            '  role_map:\n    - remote: "access"\n      local: ["visitor"]\n'
        )
        leaf.tetherctl("create", str(trusted))
        profile = current_profile(leaf.user_home("lena"))
        assert profile is not None
        context = profile_ssl_context(profile, alpn=[tether_hooktest.DIAL_ALPN])
        host_id = (node.directory / "data" / "host_uuid").read_text().strip()
        yield Site(root, leaf, node, host_id, context)
    finally:
        for process in reversed(started):
            process.stop()


def test_the_agent_hands_its_protocol_a_stream_with_the_users_identity(site: Site) -> None:
    answer = site.dial(tether_hooktest.AGENT_PROTOCOL)
    assert answer.startswith("ok\nlena@leaf as access for db-1 from 127.0.0.1:"), answer


def test_a_stream_for_a_protocol_the_node_does_not_serve_is_refused(site: Site) -> None:
    answer = site.dial("telnet")
    assert answer.startswith("refused: "), answer
    assert "this node serves no protocol 'telnet'; it serves 'hooktest-whoami'" in answer


def test_a_root_user_reaches_the_leaf_protocol_with_mapped_roles(site: Site) -> None:
    alice = _user_cert(site.root, "alice")

    def mapped() -> bool:
        # the node reads the new trust within its refresh period
        return site.dial(tether_hooktest.AGENT_PROTOCOL, user_cert=alice).startswith("ok\n")

    wait_for(mapped, "the node to trust the root")
    answer = site.dial(tether_hooktest.AGENT_PROTOCOL, user_cert=alice)
    assert answer.startswith("ok\nalice@root as visitor for db-1 from "), answer

    def audited() -> bool:
        found = site.leaf.tetherctl(
            "audit", "search", "--type=trust.login.mapped", "--format=json"
        ).stdout
        events = [e for e in json.loads(found) if e.get("node") == "agent-node"]
        return bool(events) and events[-1]["local_roles"] == ["visitor"]

    wait_for(audited, "the node's trust.login.mapped event")


def test_a_forwarded_certificate_of_an_untrusted_ca_is_refused_by_the_agent(
    site: Site,
) -> None:
    impostor = pki.ClusterAuthorities.generate("root")
    cert, _ = forge_certificate(impostor.tls, "root", "mallory", kind="user")
    forged = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    answer = site.dial(tether_hooktest.AGENT_PROTOCOL, user_cert=forged)
    assert answer.startswith("refused: "), answer
    assert "not from this cluster or a cluster it trusts" in answer
    garbled = site.dial(tether_hooktest.AGENT_PROTOCOL, user_cert="%%%")
    assert garbled.startswith("refused: "), garbled
    assert "the forwarded user certificate is not base64" in garbled

    def audited() -> list[str]:
        found = site.leaf.tetherctl(
            "audit", "search", "--type=node.stream.denied", "--format=json"
        ).stdout
        events = json.loads(found)
        assert all(e["protocol"] == tether_hooktest.AGENT_PROTOCOL for e in events)
        return [e["reason"] for e in events if e.get("node") == "agent-node"]

    wait_for(lambda: len(audited()) >= 2, "the node's refusals in the audit log")
    assert any("not from this cluster or a cluster it trusts" in r for r in audited())
    assert "the forwarded user certificate is not base64" in audited()


def test_the_agent_ran_the_protocol_in_tunnel_mode(site: Site) -> None:
    log = pathlib.Path(site.node.directory.parent / "hooks.jsonl").read_text()
    runs = [json.loads(line) for line in log.splitlines()]
    assert {
        "hook": "tether_agent_protocols.run",
        "host_id": site.host_id,
        "tunnel": True,
    } in runs


# --- which protocols a daemon's agent serves --------------------------------------------------


class _Echo:
    """A plugin claiming the node protocol ``echo`` (registered twice, as two plugins)."""

    @hookimpl
    def tether_agent_protocols(self, config: Config) -> list[Any]:
        return [_Named("echo")]


@attrs.frozen
class _Named:
    name: str


async def test_a_daemon_without_node_protocols_runs_no_agent_and_one_named_twice_stops_it() -> None:
    config = default_config()
    async with trio.open_nursery() as nursery:
        pm = get_plugin_manager(autoload=False)
        assert agent_services(ServiceContext(config=config, pm=pm, nursery=nursery)) == []
        pm.register(_Echo(), name="echo-a")
        pm.register(_Echo(), name="echo-b")
        with pytest.raises(ConfigError, match="two plugins serve the node protocol echo"):
            agent_services(ServiceContext(config=config, pm=pm, nursery=nursery))
