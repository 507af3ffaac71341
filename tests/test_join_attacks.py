"""Attacks with a node token: taking another host's id, and answering where the proxy belongs.

A node token lets a joiner choose its host id and names, and every host certificate names
``localhost`` and the loopback addresses. So a joiner must not take a host id another host
holds, and clients that trust the proxy through the cluster's CA (the CA pin), and leaf
agents, accept only a certificate of kind proxy: a node's own, real certificate is refused
where the proxy is expected. Real ``tetherd`` processes on 127.0.0.1; the impostors are TLS
servers this test runs with a joined node's real certificate.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import socketserver
import ssl
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trio
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_public_identity,
)

from tether import pki
from tether.auth.http_client import AuthClient
from tether.client.web import establish_trust, proxy_call
from tether.errors import AccessDenied
from tether.node.join import (
    SERVER_KINDS,
    JoinedIdentity,
    host_client_context,
    join_cluster,
    renew_identity,
)
from tether.route_names import ROUTE_NAME_WILDCARD
from tether.testing.cluster import (
    RunningCluster,
    run_cli,
    served_certificate,
    start_cluster,
    start_proxy,
    wait_for,
)
from tether.testing.http import serve_in_thread
from tether.tunnel.server import TUNNEL_ALPN

PASSWORD = "correct horse battery staple"


def node_token(cluster: RunningCluster) -> str:
    out = cluster.tetherctl("tokens", "add", "--type=node", "--format=json").stdout
    return str(json.loads(out)["token"])


async def join_node(cluster: RunningCluster, host_id: str, hostname: str) -> JoinedIdentity:
    """Join ``cluster`` as a node with a fresh token, naming the loopback addresses (as a node
    listening on 127.0.0.1 does)."""
    return await join_cluster(
        cluster.proxy_addr,
        node_token(cluster),
        host_id=host_id,
        hostname=hostname,
        addresses=["127.0.0.1", "localhost"],
        ca_pin=cluster.ca_pin,
    )


def audit(cluster: RunningCluster, event_type: str) -> list[dict[str, object]]:
    out = cluster.tetherctl("audit", "search", f"--type={event_type}", "--format=json").stdout
    return list(json.loads(out))


def impostor_context(joined: JoinedIdentity, alpn: str) -> ssl.SSLContext:
    """A TLS server context presenting the node's real certificate, as the node could."""
    return pki.server_ssl_context(joined.tls_cert, joined.private_key, alpn=[alpn])


@contextlib.contextmanager
def impostor_web(
    node: JoinedIdentity, cluster: RunningCluster
) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An HTTPS server on 127.0.0.1 with ``node``'s real certificate that plays the proxy's
    web API: it hands out the cluster's (public) CA as the real proxy does, and records every
    request that reaches it.

    Yields its address and the list of ``(method, path)`` it received.
    """
    context = impostor_context(node, "http/1.1")
    ca_pems = [pki.cert_to_pem(c).decode() for c in node.tls_cas]
    received: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            received.append(("GET", self.path))
            if self.path == "/webapi/cluster-ca":
                self._answer(200, {"cluster_name": cluster.name, "tls_ca_certs": ca_pems})
            else:
                self._answer(200, {"ok": True})

        def do_POST(self) -> None:
            received.append(("POST", self.path))
            self._answer(200, {})

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serve_in_thread(server) as addr:
        yield addr, received


@contextlib.contextmanager
def impostor_tunnel(node: JoinedIdentity) -> Iterator[tuple[str, list[bytes]]]:
    """A TLS server on 127.0.0.1 with ``node``'s real certificate that accepts tunnel
    connections and records what each client sent after the handshake (nothing, when the
    client refused the certificate)."""
    context = impostor_context(node, TUNNEL_ALPN)
    received: list[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while chunk := self.request.recv(65536):
                    data += chunk
            received.append(data)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True

        def get_request(self) -> tuple[ssl.SSLSocket, object]:
            sock, addr = self.socket.accept()
            return context.wrap_socket(sock, server_side=True), addr

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that aborts the handshake is what the test expects

    with serve_in_thread(Server(("127.0.0.1", 0), Handler)) as addr:
        yield addr, received


@pytest.fixture(scope="module")
def victim(tether_cluster: RunningCluster) -> Iterator[JoinedIdentity]:
    """A node of the cluster that joined with a token of its own."""
    yield trio.run(join_node, tether_cluster, "victim-node", "victim")


async def test_node_token_cannot_take_the_host_id_of_a_joined_node(
    tether_cluster: RunningCluster, victim: JoinedIdentity
) -> None:
    cluster = tether_cluster
    with pytest.raises(AccessDenied) as refused:
        await join_node(cluster, "victim-node", "attacker")
    assert "host id 'victim-node' is held by node 'victim' until" in refused.value.message
    assert "a join cannot take another host's id" in refused.value.message
    (event,) = [e for e in audit(cluster, "host.join.failed") if e["user"] == "victim-node"]
    assert event["success"] is False and "is held by node 'victim'" in str(event["reason"])
    joined = [e["user"] for e in audit(cluster, "host.joined")]
    assert joined.count("victim-node") == 1, "no certificate was issued for the taken id"

    # the same token holder joins under an id of its own
    own = await join_node(cluster, "attacker-node", "attacker")
    assert (own.identity.username, own.identity.kind) == ("attacker-node", "node")


async def test_node_token_replaying_a_hosts_public_keys_gets_certificates_it_cannot_use(
    tether_cluster: RunningCluster,
) -> None:
    # a host that holds its id may send its join again with the same keys (its first answer
    # was lost); the keys are public, so a token holder can send that join too
    cluster = tether_cluster
    victim = await join_node(cluster, "victim-replayed", "victim-2")
    tls_key = victim.tls_cert.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )
    ssh_key = load_ssh_public_identity(victim.ssh_host_cert.encode()).public_key()
    context = await establish_trust(
        cluster.proxy_addr, insecure=False, ca_pin=cluster.ca_pin, peer_kinds=SERVER_KINDS
    )

    async def replay(ssh_public_key: str) -> dict[str, object]:
        body = {
            "token": node_token(cluster),
            "role": "node",
            "host_id": "victim-replayed",
            "hostname": "attacker",
            "addresses": ["127.0.0.1", "localhost"],
            "ssh_public_key": ssh_public_key,
            "tls_public_key": tls_key.decode(),
        }
        answer: dict[str, object] = await proxy_call(
            cluster.proxy_addr, "POST", "/webapi/join", context, json=body
        )
        return answer

    # the victim's TLS key with a key of its own for SSH: that would be an SSH host
    # certificate it could answer with as the victim; refused
    own = pki.generate_private_key()
    with pytest.raises(AccessDenied, match="host id 'victim-replayed' is held by node"):
        await replay(pki.ssh_public_key_line(own.public_key()))

    answer = await replay(pki.ssh_public_key_line(ssh_key))
    stolen = pki.load_cert(str(answer["tls_cert"]).encode())
    assert pki.read_x509_identity(stolen.public_bytes(Encoding.DER)).username == "victim-replayed"
    # what it got certifies the victim's keys, whose private halves it does not have ...
    assert pki.spki_fingerprint(stolen.public_key()) == pki.spki_fingerprint(
        victim.tls_cert.public_key()
    )
    certified = load_ssh_public_identity(str(answer["ssh_host_cert"]).encode()).public_key()
    assert pki.ssh_fingerprint(certified) == pki.ssh_fingerprint(ssh_key)
    # ... so no TLS stack presents the certificate with a key of its own
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        pki.client_ssl_context(trusted_cas=list(victim.tls_cas), cert=stolen, key=own)
    # and without the certificate, auth does not take it for the victim
    anonymous = pki.client_ssl_context(trusted_cas=list(victim.tls_cas))
    async with AuthClient(f"https://{cluster.proxy_addr}", anonymous) as api:
        with pytest.raises(AccessDenied):
            await renew_identity(api, hostname="victim-2", addresses=["127.0.0.1"])

    # the victim's own certificates still work: it renews with them, as the same host
    async with AuthClient(f"https://{cluster.proxy_addr}", host_client_context(victim)) as api:
        renewed = await renew_identity(api, hostname="victim-2", addresses=["127.0.0.1"])
    assert (renewed.identity.username, renewed.identity.kind) == ("victim-replayed", "node")
    # and its id stays its own: a join with another key is refused
    with pytest.raises(AccessDenied, match="host id 'victim-replayed' is held by node 'victim-2'"):
        await join_node(cluster, "victim-replayed", "attacker")


async def test_node_token_cannot_take_the_host_id_of_auth_and_its_proxy(
    tether_cluster: RunningCluster,
) -> None:
    # auth and the proxy in its process hold certificates named after this host (nodename)
    cluster = tether_cluster
    with pytest.raises(AccessDenied) as refused:
        await join_node(cluster, "main-node", "attacker")
    assert "host id 'main-node' is held by auth 'main-node' until" in refused.value.message
    (event,) = [e for e in audit(cluster, "host.join.failed") if e["user"] == "main-node"]
    assert event["success"] is False and "is held by auth 'main-node'" in str(event["reason"])


@pytest.mark.parametrize(
    ("host_id", "name"),
    [
        ("attacker-routes", ROUTE_NAME_WILDCARD),
        ("attacker-route", "kube-6c656166-70726f64.tether.cluster.local"),
        ("attacker-wildcard", "*.example.com"),
    ],
)
async def test_node_token_cannot_get_the_proxies_route_names_or_any_wildcard(
    tether_cluster: RunningCluster, host_id: str, name: str
) -> None:
    # with *.tether.cluster.local a node could answer kubectl wherever a route name leads,
    # and kubectl checks only the name and the cluster's CA, not the kind of host
    cluster = tether_cluster
    with pytest.raises(AccessDenied) as refused:
        await join_cluster(
            cluster.proxy_addr,
            node_token(cluster),
            host_id=host_id,
            hostname="attacker",
            addresses=["127.0.0.1", "localhost", name],
            ca_pin=cluster.ca_pin,
        )
    assert refused.value.message.startswith("a node may not ")
    assert repr(name) in refused.value.message
    (event,) = [e for e in audit(cluster, "host.join.failed") if e["user"] == host_id]
    assert event["success"] is False and repr(name) in str(event["reason"])
    assert host_id not in [e["user"] for e in audit(cluster, "host.joined")]


def test_the_proxy_beside_auth_presents_a_certificate_naming_the_route_wildcard(
    tether_cluster: RunningCluster,
) -> None:
    served = served_certificate(tether_cluster.proxy_addr)
    assert ROUTE_NAME_WILDCARD in pki.x509_host_names(served)
    assert pki.read_x509_identity(served.public_bytes(Encoding.DER)).kind == "proxy"


def test_tether_login_with_the_ca_pin_refuses_a_node_certificate_where_the_proxy_belongs(
    tether_cluster: RunningCluster, victim: JoinedIdentity
) -> None:
    cluster = tether_cluster
    cluster.add_user("alice", PASSWORD, roles=["access", "editor"], logins=["alice"])
    with impostor_web(victim, cluster) as (addr, received):
        result = cluster.tether(
            "alice",
            "login",
            f"--proxy={addr}",
            "--user=alice",
            "--password-stdin",
            f"--ca-pin={cluster.ca_pin}",
            input=PASSWORD + "\n",
            check=False,
        )
    assert result.returncode != 0
    assert (
        f"{addr} is not the server this connection expects: the server presented the "
        "certificate of node 'victim-node' of cluster 'main', where only a proxy's is accepted"
    ) in result.stderr, result.stderr
    # the pin check reads the CA anonymously; nothing with a secret reached the impostor
    assert received == [("GET", "/webapi/cluster-ca")]

    # the real proxy, with the same pin, is accepted
    cluster.login("alice", PASSWORD)


def test_tetherctl_through_the_proxy_refuses_a_node_certificate_where_the_proxy_belongs(
    tether_cluster: RunningCluster, victim: JoinedIdentity
) -> None:
    cluster = tether_cluster
    cluster.add_user("bob", PASSWORD, roles=["access", "editor"], logins=["bob"])
    cluster.login("bob", PASSWORD)
    assert cluster.as_user("bob", "tetherctl", "get", "roles", "--format=json").returncode == 0
    home = cluster.user_home("bob")
    with impostor_web(victim, cluster) as (addr, received):
        # the network sends bob's client to the node instead of the proxy (bob's profile, as
        # `tether login` wrote it, now names the impostor's address)
        real = home / "keys" / cluster.proxy_addr.replace(":", "_")
        moved = home / "keys" / addr.replace(":", "_")
        shutil.copytree(real, moved)
        meta = json.loads((moved / "profile.json").read_text())
        (moved / "profile.json").write_text(json.dumps({**meta, "proxy": addr}))
        (home / "current-profile").write_text(addr + "\n")
        result = cluster.as_user("bob", "tetherctl", "get", "roles", check=False)
        # and the SSH front door (tether ls), which speaks TLS without httpx
        listed = cluster.as_user("bob", "tether", "ls", check=False)
    refusal = (
        "the server presented the certificate of node 'victim-node' of cluster 'main', where "
        "only a proxy's is accepted"
    )
    assert result.returncode != 0
    assert refusal in result.stderr, result.stderr
    assert listed.returncode != 0
    assert f"{addr} is not the cluster's proxy: {refusal}" in listed.stderr, listed.stderr
    assert received == [], "bob's certificate and request never reached the impostor"


def test_leaf_agent_refuses_a_root_node_certificate_at_the_root_tunnel_address(
    tether_cluster: RunningCluster, victim: JoinedIdentity, tmp_path: pathlib.Path
) -> None:
    root = tether_cluster
    leaf = start_cluster(tmp_path / "leaf", "leaf")
    try:
        with impostor_tunnel(victim) as (addr, received):
            invitation = json.loads(
                root.tetherctl("tokens", "add", "--type=trusted_cluster", "--format=json").stdout
            )["token"]
            # the handshake goes to the real root; the tunnels to where the attacker listens
            trusted = tmp_path / "trusted_cluster.yaml"
            trusted.write_text(
                f"""
kind: trusted_cluster
version: v2
metadata:
  name: main
spec:
  enabled: true
  token: "{invitation}"
  web_proxy_addr: {root.proxy_addr}
  tunnel_addr: {addr}
  ca_pin: {root.ca_pin}
  role_map:
    - remote: access
      local: [access]
"""
            )
            leaf.tetherctl("create", str(trusted))
            refusal = (
                "the server presented the certificate of node 'victim-node' of cluster "
                "'main', where only a proxy's is accepted"
            )
            wait_for(lambda: refusal in leaf.log_text(), "the leaf's agent to refuse the node")
            wait_for(lambda: bool(received), "the impostor to see the connection end")
        assert set(received) == {b""}, "the leaf sent nothing over a tunnel to the node"
        (doc,) = json.loads(root.tetherctl("get", "rc/leaf", "--format=json").stdout)
        assert doc["status"]["connection"] == "offline"
    finally:
        leaf.stop()


def test_joined_proxy_refuses_a_node_certificate_where_auth_belongs(
    tether_cluster: RunningCluster, victim: JoinedIdentity, tmp_path: pathlib.Path
) -> None:
    cluster = tether_cluster
    proxy = start_proxy(cluster, tmp_path / "proxy-2", "proxy-2")
    proxy.stop()
    with impostor_web(victim, cluster) as (addr, received):
        # restarted from its data directory (no token), sent to the node instead of auth
        args = [
            f"--auth-server={addr}" if arg.startswith("--auth-server=") else arg
            for arg in proxy.args
            if not arg.startswith("--token=")
        ]
        refused = run_cli("tetherd", "start", *args, check=False, timeout=60)
    assert refused.returncode == 1
    assert (
        f"{addr} is not the server this connection expects: the server presented the "
        "certificate of node 'victim-node' of cluster 'main', where only an auth's is accepted"
    ) in refused.stderr, refused.stderr
    assert received == [], "the proxy asked the node for nothing"
