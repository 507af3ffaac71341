"""The node agent serves any protocol plugin: hooktest's ``hooktest-whoami`` on a node in
tunnel mode, reached through the kernel's routing like every protocol.

Root cluster ``root``, leaf cluster ``leaf`` trusting it (``access`` -> ``visitor``), and a
node of the leaf in tunnel mode serving hooktest's node protocol (next to SSH, when that
plugin is installed). Hooktest declares the protocol's ALPN id and target kind; the proxies
find the node, open the stream through its tunnel and forward the user's certificate. The
agent, not the plugin, refuses a protocol the node does not serve, verifies the forwarded
user certificate with the cluster's trust and hands the plugin the role-mapped identity."""

from __future__ import annotations

import json
import pathlib
import ssl
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import tether_hooktest
import trio

from tether import pki
from tether.client.dial import open_target_stream
from tether.client.profile import current_profile, profile_ssl_context
from tether.config import Config, default_config
from tether.errors import AccessDenied, ConfigError, TetherError
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
NODE = "agent-node"


@attrs.frozen
class Site:
    root: RunningCluster
    leaf: RunningCluster
    node: RunningNode
    host_id: str


def _context(cluster: RunningCluster, user: str, alpn: str) -> ssl.SSLContext:
    """``user``'s login at ``cluster``, offering ``alpn`` to its proxy."""
    profile = current_profile(cluster.user_home(user))
    assert profile is not None
    return profile_ssl_context(profile, alpn=[alpn])


def reach(
    proxy: RunningCluster,
    context: ssl.SSLContext,
    *,
    cluster: str = "leaf",
    alpn: str = tether_hooktest.WHOAMI_ALPN,
    target: str = NODE,
) -> str:
    """Reach ``target`` of ``cluster`` through ``proxy``'s front door, as a client of the
    protocol does; the line the node's protocol answers."""

    async def run() -> str:
        stream, _ = await open_target_stream(
            proxy.proxy_addr,
            context,
            alpn=alpn,
            protocol="hooktest",
            cluster=cluster,
            target=target,
        )
        answer = b""
        async with stream:
            with trio.fail_after(20):
                while not answer.endswith(b"\n"):
                    chunk = await stream.receive_some()
                    if not chunk:
                        break
                    answer += chunk
        return answer.decode()

    return trio.run(run)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("agent")
    hooks = {tether_hooktest.LOG_ENV: str(directory / "hooks.jsonl")}
    started: list[RunningCluster | RunningNode] = []
    try:
        root = start_cluster(directory / "root", "root", env=hooks)
        started.append(root)
        leaf = start_cluster(directory / "leaf", "leaf", env=hooks)
        started.append(leaf)
        node = start_node(
            leaf,
            directory / "node",
            NODE,
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
        host_id = (node.directory / "data" / "host_uuid").read_text().strip()
        lena = _context(leaf, "lena", tether_hooktest.WHOAMI_ALPN)

        def published() -> bool:
            try:
                return reach(leaf, lena).startswith("lena@leaf")
            except TetherError:  # until the node's entry and tunnel are there
                return False

        wait_for(published, "the node's hooktest_whoami entry and tunnel")
        yield Site(root, leaf, node, host_id)
    finally:
        for process in reversed(started):
            process.stop()


def test_the_agent_hands_its_protocol_a_stream_with_the_users_identity(site: Site) -> None:
    lena = _context(site.leaf, "lena", tether_hooktest.WHOAMI_ALPN)
    answer = reach(site.leaf, lena)
    assert answer.startswith(f"lena@leaf as access for {NODE} from 127.0.0.1:"), answer
    assert reach(site.leaf, lena, target=site.host_id).startswith("lena@leaf as access"), answer


def test_a_stream_for_a_protocol_the_node_does_not_serve_is_refused(site: Site) -> None:
    lena = _context(site.leaf, "lena", tether_hooktest.ABSENT_ALPN)
    with pytest.raises(TetherError) as refused:
        reach(site.leaf, lena, alpn=tether_hooktest.ABSENT_ALPN)
    assert "this node serves no protocol 'hooktest-absent'; it serves 'hooktest-whoami'" in (
        refused.value.message
    )


def test_a_root_user_reaches_the_leaf_protocol_with_mapped_roles(site: Site) -> None:
    alice = _context(site.root, "alice", tether_hooktest.WHOAMI_ALPN)

    def mapped() -> bool:
        # the leaf's proxy and node learn the root's CA by push; the leaf's tunnel to the
        # root comes up after the handshake
        try:
            return reach(site.root, alice).startswith("alice@root")
        except TetherError:
            return False

    wait_for(mapped, "the root user to reach the leaf's node")
    answer = reach(site.root, alice)
    assert answer.startswith(f"alice@root as visitor for {NODE} from "), answer

    def audited() -> bool:
        found = site.leaf.tetherctl(
            "audit", "search", "--type=trust.login.mapped", "--format=json"
        ).stdout
        events = [e for e in json.loads(found) if e.get("node") == NODE]
        return bool(events) and events[-1]["local_roles"] == ["visitor"]

    wait_for(audited, "the node's trust.login.mapped event")


def test_a_certificate_of_an_untrusted_ca_never_reaches_the_agent(site: Site) -> None:
    impostor = pki.ClusterAuthorities.generate("root")
    cert, key = forge_certificate(impostor.tls, "root", "mallory", kind="user")
    lena = _context(site.leaf, "lena", tether_hooktest.WHOAMI_ALPN)
    forged = lena  # lena's login trusts the proxy; mallory presents her forged certificate
    forged.load_cert_chain(*_pem_files(site.root.directory, cert, key))
    with pytest.raises(TetherError) as refused:
        reach(site.leaf, forged)
    assert "unknown ca" in refused.value.message.lower()  # the kernel refused it in TLS
    log = pathlib.Path(site.node.directory.parent / "hooks.jsonl").read_text()
    served = [json.loads(line) for line in log.splitlines()]
    assert not [e for e in served if e.get("user") == "mallory"]


def test_the_agent_refuses_and_audits_a_forwarded_certificate_of_no_user(site: Site) -> None:
    """A host's certificate, of the leaf's own CA, passes the proxy (hosts may list the
    inventory) and reaches the agent, which serves users only: it refuses the stream, says
    why through the proxies, and audits the refusal."""
    cas = pki.ClusterAuthorities.load_or_create(site.leaf.data_dir / "keys", "leaf")
    cert, key = forge_certificate(cas.tls, "leaf", "rogue-proxy", kind="proxy")
    context = _context(site.leaf, "lena", tether_hooktest.WHOAMI_ALPN)
    context.load_cert_chain(*_pem_files(site.leaf.directory, cert, key))
    with pytest.raises(TetherError) as refused:
        reach(site.leaf, context)
    assert "is not a user" in refused.value.message, refused.value.message
    # the agent's error, as its class, named after the target that refused
    assert type(refused.value) is AccessDenied
    assert refused.value.message.startswith(f"{tether_hooktest.WHOAMI.name} '{NODE}' refused")

    def audited() -> list[str]:
        found = site.leaf.tetherctl(
            "audit", "search", "--type=node.stream.denied", "--format=json"
        ).stdout
        events = json.loads(found)
        assert all(e["protocol"] == tether_hooktest.AGENT_PROTOCOL for e in events)
        return [e["reason"] for e in events if e.get("node") == NODE]

    wait_for(lambda: bool(audited()), "the node's refusal in the audit log")
    assert any("is not a user" in reason for reason in audited())


def _pem_files(directory: pathlib.Path, cert: Any, key: pki.PrivateKey) -> tuple[str, str]:
    name = cert.subject.rfc4514_string().replace("=", "-").replace(",", "_")
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(pki.cert_to_pem(cert))
    key_file.write_bytes(pki.private_key_to_pem(key))
    return str(cert_file), str(key_file)


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
