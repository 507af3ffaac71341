"""The proxy service: the one public port, assembled.

It serves, by ALPN (DESIGN.md, "Processes and services"): the web API (``h2``,
``http/1.1``), reverse tunnels from leaves and nodes (``tether-tunnel/1``), and each protocol
plugin's ids, through the front door and the router (:mod:`tether.proxy.front_door`,
:mod:`tether.proxy.routing`) for protocols that reach targets; and by server name, the route
names of protocols that claim a prefix (:mod:`tether.proxy.server_names`). It keeps the
cluster's trust (the CAs tunnels and users are verified against), its tunnels to the roots
this cluster trusts, the list of its peer proxies, and its certificate renewed. Everything it
knows of the cluster it asks auth, in this process or elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tether import pki
from tether.asgi import ASGIHandler, EventRecorder
from tether.auth.http_client import AuthClient
from tether.auth.in_process import IN_PROCESS_URL, InProcessAuth
from tether.auth.service import AuthService
from tether.config import Config, HostPort
from tether.errors import ConfigError
from tether.node.join import keep_renewed
from tether.protocols import ProtocolHandler, ProxyConnection, ProxyContext, collect_protocols
from tether.proxy.audit import ProxyAudit
from tether.proxy.front_door import serve_front_door, serve_route_name
from tether.proxy.identity import ProxyIdentity
from tether.proxy.peers import ProxyPeers
from tether.proxy.root_tunnels import RootTunnels
from tether.proxy.routing import Router
from tether.proxy.server_names import ServerNameRoutes
from tether.proxy.tunnels import build_tunnel_server
from tether.proxy.web import ProxyWebInfo, build_web_app
from tether.ratelimit import RateLimiter
from tether.resources import KindRegistry
from tether.route_names import RouteName
from tether.services import ServiceContext
from tether.tlsserver import HTTP_ALPN, TLSHandler, listen_tls, peer_address
from tether.tlsstream import TLSStream
from tether.trust import ClusterTrust
from tether.trust.cache import TrustCache
from tether.tunnel.server import TUNNEL_ALPN, TunnelServer
from tether.tunnel.transport import KeepAlive

__all__ = ["start_proxy"]

log = logging.getLogger(__name__)


async def start_proxy(
    config: Config,
    me: ProxyIdentity,
    auth_urls: Sequence[str],
    stack: contextlib.AsyncExitStack,
    nursery: trio.Nursery,
    ctx: ServiceContext,
    *,
    local_auth: AuthService | None = None,
    local_auth_app: Any = None,
) -> str:
    """Serve the proxy's one public port. Everything it knows of the cluster it asks auth,
    at ``auth_urls``, whether auth runs in this process or elsewhere (high availability:
    several proxies, and several auth servers on one store between which it fails over).

    :param local_auth_app: the auth API's ASGI app when auth runs in this process: called
        directly (:class:`~tether.auth.in_process.InProcessAuth`), not over loopback HTTPS.
    """
    listen = config.proxy_service.listen_addr
    # only auth answers there: a node's certificate, from the same CA, could feed the proxy
    # another trust
    client_ctx = pki.client_ssl_context(
        trusted_cas=list(me.cas), cert=me.cert, key=me.key, peer_kinds=("auth",)
    )
    in_process = InProcessAuth(local_auth_app, me.cert) if local_auth_app is not None else None
    auth_client = await stack.enter_async_context(
        AuthClient(
            IN_PROCESS_URL if in_process is not None else auth_urls,
            client_ctx,
            transport=in_process,
        )
    )
    operator_web = _operator_web_identity(config)
    web_cert, web_key = operator_web or (me.cert, me.key)
    if web_cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.ED25519:
        log.warning(
            "the proxy's web certificate is signed with Ed25519 (this cluster's X.509 CA predates "
            "ECDSA P-256 ones), which browsers refuse; set proxy_service.https_cert_file"
        )
    protocols = collect_protocols(ctx.pm.hook.tether_protocols())
    server_ctx = pki.server_ssl_context(
        web_cert,
        web_key,
        client_cas=list(me.cas),
        client_auth="optional",
        alpn=(*HTTP_ALPN, TUNNEL_ALPN, *protocols.by_alpn),
    )
    # the proxy's own certificate, whatever the web port presents: kubeconfigs pin the CA
    named_routes = ServerNameRoutes(protocols.by_server_name_prefix, me.cert, me.key, me.cas)
    trust = TrustCache(
        auth_client,
        ctx.pm,
        ClusterTrust(me.cluster_name, me.cas),
        local=local_auth.trust_feed if local_auth is not None else None,
    )
    # The real port is known only after binding; the app reads it through this holder.
    holder: dict[str, ProxyWebInfo] = {}
    peers = ProxyPeers(
        auth_client,
        me.host_id,
        lambda: holder["info"].public_addr,
        # read only once peers.run starts, after root_tunnels is built below
        lambda: root_tunnels.connected(),
    )
    keep_alive = (
        local_auth.context.keep_alive
        if local_auth is not None
        else _keep_alive(await auth_client.cluster())
    )
    # its refusals are audited through a backlog of its own, sent to auth by one task
    proxy_audit = ProxyAudit(pathlib.Path(config.data_dir))
    nursery.start_soon(proxy_audit.run, auth_client.record_events)
    tunnels, recorders = build_tunnel_server(
        proxy_id=me.host_id,
        cluster=me.cluster_name,
        trusted_cas=lambda: trust.current.tunnel_cas(),
        proxies=peers.proxies,
        write_heartbeats=auth_client.record_tunnel_heartbeats,
        publish_relayed=auth_client.publish_relayed,
        trust=trust,
        record_event=proxy_audit.record_event,
        keep_alive=keep_alive,
    )

    # Leaves' proxies present certificates of their own CAs: trusted for tunnels (not for the
    # auth API), added to the TLS context as leaves join. OpenSSL cannot forget a CA, so a
    # removed leaf is refused by the tunnel server's own check, which reads the current list.
    loaded: set[bytes] = set()  # what the TLS context holds already (it only ever grows)
    # each cluster's CAs checked against ``loaded`` already, by the identity of the tuple
    # that holds them (a snapshot hands on the same tuple while a cluster's CAs do not
    # change): a join then fingerprints the new leaf's CA, not every leaf's
    checked: Mapping[str, tuple[x509.Certificate, ...]] = {}

    async def reload_trust() -> None:
        nonlocal checked
        others = trust.current.others
        for name, cas in others.items():
            if checked.get(name) is cas:
                continue
            for cert in cas:
                fingerprint = cert.fingerprint(hashes.SHA256())
                if fingerprint not in loaded:  # reloading all of them made joins O(N^2)
                    pem = pki.cert_to_pem(cert).decode()
                    server_ctx.load_verify_locations(cadata=pem)
                    named_routes.trust(pem)  # a route name's client is verified there
                    loaded.add(fingerprint)
        checked = others
        for cluster in tunnels.cluster_names():  # a leaf no longer trusted loses its tunnels
            if cluster != me.cluster_name and cluster not in others:
                await tunnels.disconnect(cluster, f"cluster {cluster!r} is no longer trusted")

    async def push_trust() -> None:
        tunnels.trust_moved()

    trust.on_change.append(reload_trust)
    trust.on_change.append(push_trust)
    await nursery.start(trust.run)  # its first read calls reload_trust if others are trusted
    for recorder in recorders:
        await nursery.start(recorder.run)
    ctx.on_stop.append(tunnels.goaway_all)
    rate = config.proxy_service.rate_limit
    limiter = RateLimiter(average=rate.average, burst=rate.burst, period=rate.period)
    web = _LazyHandler(
        holder,
        auth_client,
        tunnels,
        limiter,
        config.proxy_service.max_request_body,
        trust,
        KindRegistry.from_plugins(ctx.pm),
        proxy_audit.record_event,
    )
    proxy_ctx = ProxyContext(
        cluster_name=me.cluster_name,
        public_addr=lambda: holder["info"].public_addr,
        auth=auth_client,
        tunnels=tunnels,
        verify_client=trust.verify_client,
        record_event=proxy_audit.record_event,
    )
    router = Router(proxy_ctx, {handler.name: handler for handler in protocols.handlers})
    root_tunnels = RootTunnels(trust=trust, cert=me.cert, key=me.key, router=router)
    trust.on_change.append(root_tunnels.changed)
    await nursery.start(root_tunnels.run)
    routes: dict[str, TLSHandler] = {
        **dict.fromkeys(HTTP_ALPN, web),
        TUNNEL_ALPN: tunnels.handle,
        **{
            alpn: _protocol_route(handler, proxy_ctx, router)
            for alpn, handler in protocols.by_alpn.items()
        },
    }
    by_name = named_routes.router(partial(_route_name_route, proxy=proxy_ctx, router=router))
    port = await listen_tls(
        nursery, "proxy_service.listen_addr", listen, server_ctx, routes, server_names=by_name
    )
    if local_auth is not None:  # no host may register the proxy's port as its own
        local_auth.service_addrs["proxy"] = HostPort(listen.host, port)
    public = config.proxy_service.public_addr
    public_addr = str(public) if public else f"{_public_host(listen.host)}:{port}"
    holder["info"] = ProxyWebInfo(
        cluster_name=me.cluster_name,
        public_addr=public_addr,
        listen_addr=f"{listen.host}:{port}",
        ca_pems=tuple(pki.cert_to_pem(c).decode() for c in me.cas),
    )
    await nursery.start(peers.run)

    async def renew() -> x509.Certificate:
        cert, key = await me.renew(auth_client)
        await auth_client.present_certificate(cert, key)
        if operator_web is None:
            pki.present_certificate(server_ctx, cert, key)
        named_routes.present_certificate(cert, key)
        root_tunnels.present_certificate(cert, key)  # roots close tunnels whose certificate expired
        return cert

    nursery.start_soon(keep_renewed, f"proxy {me.host_id}", me.cert, renew)
    log.info("proxy service listening on %s:%d (public address %s)", listen.host, port, public_addr)
    return f"{listen.connect_host}:{port}"


def _protocol_route(handler: ProtocolHandler, proxy: ProxyContext, router: Router) -> TLSHandler:
    """The ALPN route of a plugin's protocol: the front door for a protocol that reaches
    targets, the plugin's own ``serve`` for one served at the proxy."""
    serve = handler.serve or partial(serve_front_door, handler, router)
    return partial(_serve_connection, handler, proxy, serve)


def _route_name_route(
    handler: ProtocolHandler, route: RouteName, *, proxy: ProxyContext, router: Router
) -> TLSHandler:
    """The route of a connection that asked for one of ``handler``'s route names."""
    return partial(
        _serve_connection, handler, proxy, partial(serve_route_name, handler, router, route)
    )


async def _serve_connection(
    handler: ProtocolHandler,
    proxy: ProxyContext,
    serve: Callable[[ProxyConnection], Awaitable[None]],
    stream: TLSStream,
) -> None:
    alpn = stream.selected_alpn_protocol() or ""
    conn = ProxyConnection(stream=stream, peer=peer_address(stream), alpn=alpn, proxy=proxy)
    try:
        await serve(conn)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("%s connection from %s ended: %s", handler.name, conn.peer, exc)


def _operator_web_identity(config: Config) -> tuple[Any, Any] | None:
    """The certificate and key the operator configured for the proxy's web port, if any."""
    cert_file = config.proxy_service.https_cert_file
    key_file = config.proxy_service.https_key_file
    if not (cert_file and key_file):
        return None
    try:
        cert = pki.load_cert(pathlib.Path(cert_file).read_bytes())
        key = pki.load_private_key(pathlib.Path(key_file).read_bytes())
    except OSError as exc:
        raise ConfigError(f"proxy_service https certificate: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"proxy_service https certificate or key is unusable: {exc}") from None
    return cert, key


def _public_host(host: str) -> str:
    return "localhost" if host in ("0.0.0.0", "::", "127.0.0.1", "") else host


class _LazyHandler:
    """Builds the web app on first use, once the proxy knows its own port."""

    def __init__(
        self,
        holder: dict[str, ProxyWebInfo],
        auth: AuthClient,
        tunnels: TunnelServer,
        limiter: RateLimiter,
        max_body: int,
        trust: TrustCache,
        kinds: KindRegistry,
        record_event: EventRecorder,
    ) -> None:
        self._holder = holder
        self._record_event = record_event
        self._auth = auth
        self._tunnels = tunnels
        self._limiter = limiter
        self._max_body = max_body
        self._trust = trust
        self._kinds = kinds
        self._handler: ASGIHandler | None = None

    async def __call__(self, stream: TLSStream) -> None:
        if self._handler is None:
            app = build_web_app(
                self._holder["info"],
                self._auth,
                limiter=self._limiter,
                max_body=self._max_body,
                tunnels=self._tunnels,
                trust=self._trust,
                kinds=self._kinds,
                record_event=self._record_event,
            )
            self._handler = ASGIHandler(app)
        await self._handler(stream)


def _keep_alive(cluster: Mapping[str, Any]) -> KeepAlive:
    """The cluster's keep-alive from auth's ``GET /v1/cluster``: the interval and count every
    tunnel's agent is told in its hello. An auth too old to say has the defaults, which its
    offline status counts with too."""
    interval = cluster.get("keep_alive_interval")
    count = cluster.get("keep_alive_count_max")
    if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
        return KeepAlive()
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        return KeepAlive()
    return KeepAlive(float(interval), count)
