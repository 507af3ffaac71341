"""Route names on the proxy's one port: a client that sets only a TLS server name (kubectl's
``tls-server-name``) reaches a target with no ALPN id and no first line.

First the listener alone (tether.tlsserver), in one process with real TLS on 127.0.0.1: what
OpenSSL takes from the context the SNI callback switches to (the certificate, the ALPN ids,
the CAs a client certificate is verified against) and what it keeps from the listener's (the
verify mode), and the proxy's route contexts following its renewal and trust. Then a real
``tetherd`` with hooktest, whose ``hooktest-whoami`` protocol claims the prefix ``whoami``
(held to HTTP/1.1, no ``refuse``), and a node serving it through its tunnel; and a proxy
whose web port presents the operator's certificate.
"""

from __future__ import annotations

import datetime
import json
import logging
import pathlib
import socket
import ssl
from collections.abc import Iterator
from functools import partial

import attrs
import pytest
import tether_hooktest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tether import pki
from tether.client.profile import current_profile, profile_ssl_context
from tether.protocols import ProtocolHandler
from tether.proxy.server_names import ServerNameRoutes
from tether.resources import ResourceKind
from tether.route_names import ROUTE_NAME_WILDCARD, RouteName, route_server_name
from tether.targets import Target, TargetKind
from tether.testing.certificates import ClusterAuthorities, issue_x509_cert
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    served_certificate,
    start_cluster,
    start_node,
    wait_for,
)
from tether.tlsserver import ServerNameRoute, serve_tls
from tether.tlsstream import TLSStream

PASSWORD = "correct horse battery staple"
NODE = "whoami-node"
WEB_ALPN = ["h2", "http/1.1"]

# --- the listener alone ------------------------------------------------------------------------


@attrs.frozen
class Party:
    """A certificate and its key."""

    cert: x509.Certificate
    key: pki.PrivateKey


def _party(ca: ClusterAuthorities, name: str, kind: str, dns: list[str]) -> Party:
    key = pki.generate_private_key(pki.WEB_ALGORITHM)
    identity = pki.Identity(
        username=name,
        cluster=ca.cluster,
        roles=(),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
        kind=kind,
    )
    cert = issue_x509_cert(ca.tls, key.public_key(), identity, dns_names=dns, server=bool(dns))
    return Party(cert, key)


@attrs.frozen
class Met:
    """What one client met: the handler that served it, the ALPN id, the server's cluster
    (its certificate's organisation) and the client's identity as the server read it."""

    handler: str
    alpn: str | None
    server: str
    client: str | None


def _connect(port: int, server_name: str, alpn: list[str], client: Party | None, cas: str) -> Met:
    """A blocking stdlib TLS client, with hostname checking on, that reads one line."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=cas)
    context.set_alpn_protocols(alpn)
    if client is not None:
        pki.present_certificate(context, client.cert, client.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=server_name.encode()) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        served = pki.read_x509_identity(der)
        alpn = tls.selected_alpn_protocol()
        handler, user = tls.makefile("rb").readline().decode().split()
    return Met(handler, alpn, served.cluster, None if user == "-" else user)


@attrs.frozen
class Listener:
    port: int
    cas: str
    users: dict[str, Party]


@pytest.fixture
async def listener(nursery: trio.Nursery) -> Listener:
    """One port: the main context presents ``main``'s certificate, offers web ALPN ids and
    verifies clients against ``main``'s CA; a name under ``.route.test`` switches to a context
    presenting ``routes``'s certificate, offering ``http/1.1`` only, verifying clients against
    ``routes``'s CA and *requiring* a certificate; ``boom.test`` makes the router fail."""
    main, routes = ClusterAuthorities.generate("main"), ClusterAuthorities.generate("routes")
    server_main = _party(main, "proxy", "proxy", ["localhost"])
    server_routes = _party(routes, "proxy", "proxy", ["*.route.test"])
    main_ctx = pki.server_ssl_context(
        server_main.cert, server_main.key, client_cas=[main.tls], client_auth="optional",
        alpn=[*WEB_ALPN, "x/1"],
    )  # fmt: skip
    route_ctx = pki.server_ssl_context(
        server_routes.cert, server_routes.key, client_cas=[routes.tls], client_auth="required",
        alpn=["http/1.1"],
    )  # fmt: skip

    async def answer(handler: str, stream: TLSStream) -> None:
        der = stream.getpeercert(binary_form=True)
        user = pki.read_x509_identity(der).username if der else "-"
        await stream.send_all(f"{handler} {user}\n".encode())

    def router(name: str) -> ServerNameRoute | None:
        if name == "boom.test":
            raise RuntimeError("a router's bug")
        if name.endswith(".route.test"):
            return ServerNameRoute(route_ctx, partial(answer, "by-name"), "test route")
        return None

    routes_by_alpn = {alpn: partial(answer, f"alpn-{alpn}") for alpn in [*WEB_ALPN, "x/1"]}
    serve = partial(serve_tls, "127.0.0.1", 0, main_ctx, routes_by_alpn, server_names=router)
    listeners = await nursery.start(serve)
    cas = "".join(pki.cert_to_pem(ca.tls.certificate).decode() for ca in (main, routes))
    users = {
        "alice": _party(main, "alice", "user", []),
        "bob": _party(routes, "bob", "user", []),
    }
    return Listener(listeners[0].socket.getsockname()[1], cas, users)


async def _met(listener: Listener, name: str, alpn: list[str], user: str | None) -> Met:
    client = listener.users[user] if user else None
    return await trio.to_thread.run_sync(_connect, listener.port, name, alpn, client, listener.cas)


async def test_a_routed_name_gets_the_routes_certificate_and_alpn_whatever_was_offered_first(
    listener: Listener,
) -> None:
    met = await _met(listener, "a.route.test", ["h2", "http/1.1"], "bob")
    assert met == Met(handler="by-name", alpn="http/1.1", server="routes", client="bob")
    # nothing in common: none negotiated, and the route still has the connection
    met = await _met(listener, "a.route.test", ["h2", "x/1"], "bob")
    assert met == Met(handler="by-name", alpn=None, server="routes", client="bob")


async def test_a_routed_client_certificate_is_verified_against_the_routes_cas(
    listener: Listener,
) -> None:
    # alice's CA is the main context's only: on the route, OpenSSL verifies with the route's
    with pytest.raises(ssl.SSLError, match=r"UNKNOWN_CA|unknown ca"):
        await _met(listener, "a.route.test", ["http/1.1"], "alice")
    # and bob's CA is the route's only: on the main context it is refused
    with pytest.raises(ssl.SSLError, match=r"UNKNOWN_CA|unknown ca"):
        await _met(listener, "localhost", ["http/1.1"], "bob")


async def test_whether_a_client_certificate_is_asked_for_is_the_listeners_choice(
    listener: Listener,
) -> None:
    # the route's context requires one, but the connection keeps the main context's verify
    # mode (optional): a route that must have a certificate checks for it after the handshake
    met = await _met(listener, "a.route.test", ["http/1.1"], None)
    assert met == Met(handler="by-name", alpn="http/1.1", server="routes", client=None)


@pytest.mark.parametrize("name", ["localhost", "other.test", "a.route.test.example"])
async def test_a_name_without_a_route_is_routed_by_alpn(listener: Listener, name: str) -> None:
    met = await trio.to_thread.run_sync(
        partial(_connect_unverified, listener.port, name, ["h2", "http/1.1"])
    )
    assert met == ("alpn-h2", "h2", "main")


async def test_a_router_that_fails_leaves_the_connection_to_alpn(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="tether.tlsserver"):
        met = await trio.to_thread.run_sync(
            partial(_connect_unverified, listener.port, "boom.test", ["x/1"])
        )
    assert met == ("alpn-x/1", "x/1", "main")
    assert "routing the TLS server name 'boom.test' failed; routing by ALPN" in caplog.text


def _connect_unverified(port: int, name: str, alpn: list[str]) -> tuple[str, str | None, str]:
    """The handler, the ALPN id and the server's cluster, verifying nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        line = tls.makefile("rb").readline().decode().split()
        return line[0], tls.selected_alpn_protocol(), pki.read_x509_identity(der).cluster


async def test_the_proxys_route_contexts_follow_its_renewal_and_its_trust(
    nursery: trio.Nursery,
) -> None:
    # what the proxy calls on renewal and when a leaf's CA arrives (tether.proxy.service)
    main, leaf = ClusterAuthorities.generate("main"), ClusterAuthorities.generate("leaf")
    first = _party(main, "proxy", "proxy", ["localhost", ROUTE_NAME_WILDCARD])
    kind = ResourceKind(name="widget", versions=("v1",), spec_type=dict, storage_prefix="/w/")
    handler = ProtocolHandler(
        name="widget",
        alpn=(),
        target_kind=TargetKind(
            kind, lambda r: Target(kind="widget", id="w", name="w"), list_command="tether ls"
        ),
        server_name_prefix="widget",
        server_name_alpn=("http/1.1",),
    )
    routes = ServerNameRoutes({"widget": handler}, first.cert, first.key, [main.tls.certificate])
    main_ctx = pki.server_ssl_context(
        first.cert, first.key, client_cas=[main.tls], client_auth="optional", alpn=["h2"]
    )

    async def answer(route: RouteName, stream: TLSStream) -> None:
        der = stream.getpeercert(binary_form=True)
        user = pki.read_x509_identity(der).username if der else "-"
        await stream.send_all(f"{route.target} {user}\n".encode())

    router = routes.router(lambda handler, route: partial(answer, route))
    serve = partial(serve_tls, "127.0.0.1", 0, main_ctx, {}, server_names=router)
    port = (await nursery.start(serve))[0].socket.getsockname()[1]
    cas = "".join(pki.cert_to_pem(ca.tls.certificate).decode() for ca in (main, leaf))
    name = route_server_name("widget", "main", "web-1")
    lena = _party(leaf, "lena", "user", [])
    connect = partial(_connect, port, name, ["h2", "http/1.1"])

    with pytest.raises(ssl.SSLError, match=r"UNKNOWN_CA|unknown ca"):
        await trio.to_thread.run_sync(connect, lena, cas)
    routes.trust(pki.cert_to_pem(leaf.tls.certificate).decode())
    met = await trio.to_thread.run_sync(connect, lena, cas)
    assert met == Met(handler="web-1", alpn="http/1.1", server="main", client="lena")

    renewed = _party(main, "proxy", "proxy", ["localhost", ROUTE_NAME_WILDCARD])
    routes.present_certificate(renewed.cert, renewed.key)
    presented = await trio.to_thread.run_sync(_presented, port, name)
    assert presented == renewed.cert.public_bytes(Encoding.DER)


def _presented(port: int, name: str) -> bytes | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=name) as tls,
    ):
        return tls.getpeercert(binary_form=True)


# --- a proxy -----------------------------------------------------------------------------------


@attrs.frozen
class Site:
    cluster: RunningCluster
    node: RunningNode

    def context(self, user: str | None, alpn: list[str]) -> ssl.SSLContext:
        """alice's login (the CA pin, a proxy's certificate only), with her certificate or
        without any."""
        profile = current_profile(self.cluster.user_home("alice"))
        assert profile is not None
        return profile_ssl_context(profile, client_cert=user is not None, alpn=alpn)


def _route_name(target: str = NODE, cluster: str = "main") -> str:
    return route_server_name(tether_hooktest.WHOAMI_PREFIX, cluster, target)


def _exchange(
    site: Site, server_name: str, alpn: list[str], *, user: str | None = "alice", send: bytes = b""
) -> tuple[str | None, bytes, str]:
    """Connect to the proxy asking for ``server_name``, send ``send``, read to the end; the
    ALPN id negotiated, what came back and our own address (as the proxy logs it)."""
    context = site.context(user, alpn)
    host, _, port = site.cluster.proxy_addr.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=20) as sock,
        context.wrap_socket(sock, server_hostname=server_name.encode()) as tls,
    ):
        me = "{}:{}".format(*tls.getsockname()[:2])
        if send:
            tls.sendall(send)
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
            if received.endswith(b"\n") and not send:
                break
        return tls.selected_alpn_protocol(), received, me


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("route-names")
    hooks = {tether_hooktest.LOG_ENV: str(directory / "hooks.jsonl")}
    cluster = start_cluster(directory / "main", "main", env=hooks)
    started: list[RunningCluster | RunningNode] = [cluster]
    try:
        node = start_node(
            cluster, directory / "node", NODE, env={**hooks, tether_hooktest.AGENT_ENV: "1"}
        )
        started.append(node)
        cluster.add_user("alice", PASSWORD, roles=["access"])
        cluster.login("alice", PASSWORD)
        site = Site(cluster, node)

        def answers() -> bool:
            try:
                return _exchange(site, _route_name(), ["http/1.1"])[1].startswith(b"alice@main")
            except OSError:
                return False

        wait_for(answers, "the node's hooktest_whoami entry and tunnel")
        yield site
    finally:
        for process in reversed(started):
            process.stop()


def _refusals(site: Site, peer: str) -> list[str]:
    return [
        line
        for line in site.cluster.log_text().splitlines()
        if f"hooktest-whoami front door: refused {peer}: " in line
    ]


def test_a_client_that_sets_only_a_server_name_reaches_the_target_with_no_first_line(
    site: Site,
) -> None:
    # kubectl offers h2 first; the protocol holds route names to HTTP/1.1. alice's login
    # verifies the proxy by the cluster's CA, the name and the certificate's kind (proxy)
    alpn, received, me = _exchange(site, _route_name(), ["h2", "http/1.1"])
    assert alpn == "http/1.1"
    assert received.decode() == f"alice@main as access for {NODE} from {me}\n"
    # the protocol's own ALPN id is no use there either; the name routes it all the same
    alpn, received, _ = _exchange(site, _route_name(), [tether_hooktest.WHOAMI_ALPN])
    assert alpn is None and received.startswith(b"alice@main as access")
    assert f"alice@main ({me}) -> hooktest_whoami {NODE} of main" in site.cluster.log_text()


@pytest.mark.parametrize(
    "name",
    [
        "localhost",
        route_server_name("nosuch", "main", NODE),  # a prefix no protocol claims
        "whoami-zz-zz.tether.cluster.local",  # no route name at all
    ],
)
def test_a_server_name_that_routes_nowhere_reaches_the_web_api(site: Site, name: str) -> None:
    ping = b"GET /webapi/ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    alpn, received, _ = _exchange(site, name, ["http/1.1"], send=ping)
    assert alpn == "http/1.1"
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), received
    assert json.loads(body)["cluster_name"] == "main"


def test_a_refused_route_name_is_closed_and_logged_once_when_the_protocol_gives_no_refuse(
    site: Site,
) -> None:
    alpn, received, me = _exchange(site, _route_name(), ["http/1.1"], user=None)
    assert (alpn, received) == ("http/1.1", b"")
    wait_for(lambda: _refusals(site, me), "the proxy to log the refusal")
    (refusal,) = _refusals(site, me)
    assert refusal.endswith("a client certificate is required")

    _, received, me = _exchange(site, _route_name("nosuch-node"), ["http/1.1"])
    assert received == b""
    wait_for(lambda: _refusals(site, me), "the proxy to log the refusal")
    (refusal,) = _refusals(site, me)
    assert "hooktest_whoami 'nosuch-node' not found in cluster 'main'" in refusal

    _, received, me = _exchange(site, _route_name(cluster="nosuch"), ["http/1.1"])
    assert received == b""
    wait_for(lambda: _refusals(site, me), "the proxy to log the refusal")
    (refusal,) = _refusals(site, me)
    assert refusal.endswith("cluster 'nosuch' not found")


def test_a_route_name_presents_the_proxys_own_certificate_naming_the_wildcard(site: Site) -> None:
    served = served_certificate(site.cluster.proxy_addr, _route_name())
    assert ROUTE_NAME_WILDCARD in pki.x509_host_names(served)
    identity = pki.read_x509_identity(served.public_bytes(Encoding.DER))
    assert (identity.kind, identity.cluster) == ("proxy", "main")


def test_the_operators_web_certificate_is_not_presented_for_route_names(
    tmp_path: pathlib.Path,
) -> None:
    # a public certificate for the web port; kubeconfigs pin the cluster's CA instead
    operator = ClusterAuthorities.generate("operator")
    web = _party(operator, "web", "proxy", ["localhost"])
    (tmp_path / "web.crt").write_bytes(pki.cert_to_pem(web.cert))
    pki.write_secret_file(tmp_path / "web.key", pki.private_key_to_pem(web.key))
    config = {
        "proxy_service": {
            "https_cert_file": str(tmp_path / "web.crt"),
            "https_key_file": str(tmp_path / "web.key"),
        }
    }
    hooks = {tether_hooktest.LOG_ENV: str(tmp_path / "hooks.jsonl")}
    cluster = start_cluster(tmp_path / "main", "main", config=config, env=hooks)
    try:
        assert served_certificate(cluster.proxy_addr, "localhost") == web.cert
        served = served_certificate(cluster.proxy_addr, _route_name())
        assert served != web.cert
        assert ROUTE_NAME_WILDCARD in pki.x509_host_names(served)
        # what a kubeconfig's client does: the cluster's CA, hostname checking on
        cas = cluster.tetherctl("auth", "export", "--type=tls").stdout
        context = ssl.create_default_context(cadata=cas)
        host, _, port = cluster.proxy_addr.rpartition(":")
        with (
            socket.create_connection((host, int(port)), timeout=10) as sock,
            context.wrap_socket(sock, server_hostname=_route_name().encode()) as tls,
        ):
            assert tls.getpeercert(binary_form=True) == served.public_bytes(Encoding.DER)
    finally:
        cluster.stop()
