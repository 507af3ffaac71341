"""``tetherd start``: run the services ``tether.yaml`` enables, in one trio nursery.

Start order matters: storage, then auth (CAs, preset roles, the local admin identity), then the
proxy (which is a client of auth), then plugin services. Once everything listens, the daemon
writes ``data_dir/process.json`` with the real addresses (ports may be 0 in configuration), which
``tetherctl -c`` and the test fixtures read.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import pathlib
import signal
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tether import pki
from tether.asgi import ASGIHandler
from tether.auth.http_api import build_app as build_auth_app
from tether.auth.http_client import AuthClient
from tether.auth.service import AuthService
from tether.backend import Backend, open_backend
from tether.config import Config, HostPort
from tether.datadir import PROCESS_FILE, admin_identity_paths
from tether.errors import ConfigError
from tether.node.join import (
    JoinedIdentity,
    keep_renewed,
    load_or_join,
    renew_identity,
    renewal_due,
    save_identity,
)
from tether.plugins import TetherPluginManager
from tether.protocols import ProtocolHandler, ProxyConnection, ProxyContext, collect_protocols
from tether.proxy.front_door import serve_front_door
from tether.proxy.peers import ProxyPeers
from tether.proxy.root_tunnels import RootTunnels
from tether.proxy.routing import Router
from tether.proxy.trust_cache import ProxyTrust
from tether.proxy.tunnels import build_tunnel_server
from tether.proxy.web import ProxyWebInfo, build_web_app
from tether.ratelimit import RateLimiter
from tether.services import Service, ServiceContext
from tether.tlsserver import TLSHandler, peer_address, serve_tls
from tether.tlsstream import TLSStream
from tether.trust import ClusterTrust
from tether.tunnel.server import TUNNEL_ALPN, TunnelServer

__all__ = ["run_daemon", "wait_for_stop_signal"]

log = logging.getLogger(__name__)

#: the local admin identity's lifetime: long, as its key and certificate are two files that
#: ``tetherctl -c`` could read halfway through a renewal
ADMIN_TTL = datetime.timedelta(days=365)
HTTP_ALPN = ("h2", "http/1.1")


def _write_private(path: pathlib.Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_secret_file(path, data.encode() if isinstance(data, str) else data)


def _server_names(config: Config, *hosts: str) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses to put in a server certificate: loopback, the node name
    and every configured host but listen-on-every-interface ones."""
    named = [h for h in hosts if h not in ("0.0.0.0", "::")]
    ips, dns = pki.split_host_addresses(["localhost", config.nodename, "127.0.0.1", "::1", *named])
    return sorted(dns), sorted(ips)


def _server_identity(
    auth: AuthService,
    config: Config,
    kind: str,
    *hosts: str,
    ttl: datetime.timedelta,
) -> tuple[x509.Certificate, pki.PrivateKey]:
    """A fresh key and a certificate naming every address clients may use for this daemon,
    of a type browsers and stock TLS clients accept."""
    key = pki.generate_private_key(pki.WEB_ALGORITHM)
    dns, ips = _server_names(config, *hosts)
    cert = auth.issue_system_certificate(
        kind,
        config.nodename,
        key.public_key(),
        ttl=ttl,
        dns_names=dns,
        ip_addresses=ips,
    )
    return cert, key


async def _listen(
    nursery: trio.Nursery,
    field: str,
    listen: HostPort,
    ctx: ssl.SSLContext,
    routes: Mapping[str, TLSHandler],
) -> int:
    """Serve ``routes`` (ALPN id -> handler) on ``listen``; returns the bound port."""
    try:
        listeners = await nursery.start(serve_tls, listen.host, listen.port, ctx, routes)
    except OSError as exc:
        raise ConfigError(
            f"{field}: cannot listen on {listen}: {exc.strerror or exc}",
            hint="choose a free port or a local address",
        ) from None
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _start_auth(
    config: Config,
    pm: TetherPluginManager,
    backend: Backend,
    nursery: trio.Nursery,
) -> tuple[AuthService, str]:
    auth = await AuthService.open(config=config, pm=pm, backend=backend)
    data_dir = pathlib.Path(config.data_dir)
    # auth's server certificate lasts as long as a host's, and is renewed the same way
    ttl = config.auth_service.host_cert_ttl

    async def write_admin_identity() -> x509.Certificate:
        """The local admin identity ``tetherctl -c`` reads at each run."""
        admin_key = pki.generate_private_key()
        admin_cert = auth.issue_system_certificate(
            "admin", "admin", admin_key.public_key(), ttl=ADMIN_TTL
        )
        cert_path, key_path, ca_path = admin_identity_paths(data_dir)
        _write_private(key_path, pki.private_key_to_pem(admin_key))
        _write_private(cert_path, pki.cert_to_pem(admin_cert))
        _write_private(ca_path, pki.certs_to_pem(auth.trusted_tls_cas()))
        return admin_cert

    admin_cert = await write_admin_identity()
    listen = config.auth_service.listen_addr
    server_cert, server_key = _server_identity(auth, config, "auth", listen.host, ttl=ttl)
    ctx = pki.server_ssl_context(
        server_cert,
        server_key,
        client_cas=auth.trusted_tls_cas(),
        # optional: hosts joining directly have no certificate yet; every route but the
        # anonymous join ones refuses a request without one (see tether.auth.http_api)
        client_auth="optional",
        alpn=HTTP_ALPN,
    )
    handler = ASGIHandler(build_auth_app(auth))
    routes = dict.fromkeys(HTTP_ALPN, handler)
    port = await _listen(nursery, "auth_service.listen_addr", listen, ctx, routes)
    auth.service_addrs["auth service"] = HostPort(listen.host, port)

    async def renew_server_certificate() -> x509.Certificate:
        cert, key = _server_identity(auth, config, "auth", listen.host, ttl=ttl)
        pki.present_certificate(ctx, cert, key)  # new connections get it; open ones go on
        await auth.hold_own_host_id()
        return cert

    nursery.start_soon(keep_renewed, "auth service", server_cert, renew_server_certificate)
    nursery.start_soon(keep_renewed, "local admin identity", admin_cert, write_admin_identity)
    addr = f"{listen.connect_host}:{port}"
    log.info(
        "auth service listening on %s:%d (cluster %s, CA pin %s)",
        listen.host,
        port,
        auth.cluster_name,
        auth.ca_pin,
    )
    return auth, addr


#: Gets a proxy new certificates, given its client of auth (which presents the current ones).
_Renewal = Callable[[AuthClient], Awaitable[tuple[x509.Certificate, pki.PrivateKey]]]


@attrs.frozen
class _ProxyIdentity:
    """Who a proxy is: its cluster, host id, certificate and the cluster CAs it trusts; and
    how it renews the certificate, which it does while it runs."""

    cluster_name: str
    host_id: str
    cert: x509.Certificate
    key: pki.PrivateKey
    cas: tuple[x509.Certificate, ...]
    renew: _Renewal


def _local_proxy_identity(auth: AuthService, config: Config) -> _ProxyIdentity:
    """A proxy in auth's own process: auth issues its certificate, no token needed, for a
    host's lifetime (``auth_service.host_cert_ttl``), and renews it the same way."""
    listen = config.proxy_service.listen_addr
    public = config.proxy_service.public_addr
    hosts = (listen.host, public.host if public else "")
    ttl = config.auth_service.host_cert_ttl

    async def renew(_api: AuthClient) -> tuple[x509.Certificate, pki.PrivateKey]:
        return _server_identity(auth, config, "proxy", *hosts, ttl=ttl)

    cert, key = _server_identity(auth, config, "proxy", *hosts, ttl=ttl)
    return _ProxyIdentity(
        config.cluster_name, config.nodename, cert, key, tuple(auth.trusted_tls_cas()), renew
    )


async def _joined_proxy_identity(config: Config) -> tuple[_ProxyIdentity, str]:
    """A proxy of its own (``tetherd start --roles=proxy --auth-server=... --token=...``):
    it joins auth once with a proxy token and keeps the identity in its data directory.

    Returns the identity and the auth service's URL.
    """
    join = config.join
    if join.auth_server is None:
        raise ConfigError(
            "a proxy without an auth service in its process needs the auth server's address",
            hint="pass --auth-server=HOST:PORT (and --token with a proxy token the first time)",
        )
    listen = config.proxy_service.listen_addr
    public = config.proxy_service.public_addr
    dns, ips = _server_names(config, listen.host, public.host if public else "")
    directory = pathlib.Path(config.data_dir) / "proxy"
    joined = await load_or_join(
        directory,
        str(join.auth_server),
        join.token,
        role="proxy",
        host_id=config.nodename,
        hostname=config.nodename,
        addresses=[*dns, *ips],
        ca_pin=join.ca_pin,
        insecure=join.insecure,
    )
    if renewal_due(joined) <= datetime.datetime.now(datetime.UTC):
        # due already (it was stopped a while): renewed before it serves with them
        joined = await _renew_proxy_identity(joined, f"https://{join.auth_server}", [*dns, *ips])
        await trio.to_thread.run_sync(save_identity, directory, joined)

    async def renew(api: AuthClient) -> tuple[x509.Certificate, pki.PrivateKey]:
        renewed = await renew_identity(
            api, hostname=joined.identity.username, addresses=[*dns, *ips], role="proxy"
        )
        await trio.to_thread.run_sync(save_identity, directory, renewed)
        return renewed.tls_cert, renewed.private_key

    identity = _ProxyIdentity(
        joined.identity.cluster,
        joined.identity.username,
        joined.tls_cert,
        joined.private_key,
        joined.tls_cas,
        renew,
    )
    return identity, f"https://{join.auth_server}"


async def _renew_proxy_identity(
    joined: JoinedIdentity, auth_url: str, addresses: Sequence[str]
) -> JoinedIdentity:
    context = pki.client_ssl_context(
        trusted_cas=list(joined.tls_cas),
        cert=joined.tls_cert,
        key=joined.private_key,
        peer_kinds=("auth",),
    )
    async with AuthClient(auth_url, context) as api:
        renewed = await renew_identity(
            api, hostname=joined.identity.username, addresses=addresses, role="proxy"
        )
    log.info(
        "proxy %s renewed its certificates; they expire at %s",
        joined.identity.username,
        renewed.tls_cert.not_valid_after_utc.isoformat(),
    )
    return renewed


async def _start_proxy(
    config: Config,
    me: _ProxyIdentity,
    auth_url: str,
    stack: contextlib.AsyncExitStack,
    nursery: trio.Nursery,
    ctx: ServiceContext,
) -> str:
    """Serve the proxy's one public port. Everything it knows of the cluster it asks auth,
    at ``auth_url``, whether auth runs in this process or elsewhere (high availability:
    several proxies, one auth)."""
    listen = config.proxy_service.listen_addr
    # only auth answers there: a node's certificate, from the same CA, could feed the proxy
    # another trust
    client_ctx = pki.client_ssl_context(
        trusted_cas=list(me.cas), cert=me.cert, key=me.key, peer_kinds=("auth",)
    )
    auth_client = await stack.enter_async_context(AuthClient(auth_url, client_ctx))
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
        alpn=(*HTTP_ALPN, TUNNEL_ALPN, *protocols),
    )
    trust = ProxyTrust(auth_client, ctx.pm, ClusterTrust(me.cluster_name, me.cas))
    local_auth: AuthService | None = ctx.extras.get("auth")
    if local_auth is not None:  # in auth's process: hear of changes at once, not by polling
        local_auth.on_trust_change.append(trust.refresh)
    # The real port is known only after binding; the app reads it through this holder.
    holder: dict[str, ProxyWebInfo] = {}
    peers = ProxyPeers(auth_client, me.host_id, lambda: holder["info"].public_addr)
    tunnels, recorder = build_tunnel_server(
        proxy_id=me.host_id,
        cluster=me.cluster_name,
        trusted_cas=lambda: trust.current.tunnel_cas(),
        proxies=peers.proxies,
        write_heartbeats=auth_client.record_tunnel_heartbeats,
        record_event=auth_client.record_event,
    )

    # Leaves' proxies present certificates of their own CAs: trusted for tunnels (not for the
    # auth API), added to the TLS context as leaves join. OpenSSL cannot forget a CA, so a
    # removed leaf is refused by the tunnel server's own check, which reads the current list.
    loaded: set[bytes] = set()  # what the TLS context holds already (it only ever grows)

    async def reload_trust() -> None:
        others = trust.current.others
        for cert in (c for cas in others.values() for c in cas):
            fingerprint = cert.fingerprint(hashes.SHA256())
            if fingerprint not in loaded:  # reloading all of them made joins O(N^2)
                server_ctx.load_verify_locations(cadata=pki.cert_to_pem(cert).decode())
                loaded.add(fingerprint)
        for cluster in tunnels.clusters():  # a leaf whose trust was removed loses its tunnels
            if cluster != me.cluster_name and cluster not in others:
                await tunnels.disconnect(cluster, f"cluster {cluster!r} is no longer trusted")

    trust.on_change.append(reload_trust)
    await nursery.start(trust.run)  # its first read calls reload_trust if others are trusted
    await nursery.start(recorder.run)
    ctx.extras["tunnel_server"] = tunnels
    ctx.on_stop.append(tunnels.goaway_all)
    rate = config.proxy_service.rate_limit
    limiter = RateLimiter(average=rate.average, burst=rate.burst, period=rate.period)
    web = _LazyHandler(holder, auth_client, tunnels, limiter, config.proxy_service.max_request_body)
    proxy_ctx = ProxyContext(
        cluster_name=me.cluster_name,
        public_addr=lambda: holder["info"].public_addr,
        auth=auth_client,
        tunnels=tunnels,
        verify_client=trust.verify_client,
    )
    ctx.extras["proxy"] = proxy_ctx
    router = Router(proxy_ctx, {handler.name: handler for handler in protocols.values()})
    root_tunnels = RootTunnels(trust=trust, cert=me.cert, key=me.key, router=router)
    trust.on_change.append(root_tunnels.changed)
    await nursery.start(root_tunnels.run)
    ctx.extras["root_tunnels"] = root_tunnels
    routes: dict[str, TLSHandler] = {
        **dict.fromkeys(HTTP_ALPN, web),
        TUNNEL_ALPN: tunnels.handle,
        **{
            alpn: _protocol_route(handler, proxy_ctx, router) for alpn, handler in protocols.items()
        },
    }
    port = await _listen(nursery, "proxy_service.listen_addr", listen, server_ctx, routes)
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
        root_tunnels.present_certificate(cert, key)  # roots close tunnels whose certificate expired
        return cert

    nursery.start_soon(keep_renewed, f"proxy {me.host_id}", me.cert, renew)
    log.info("proxy service listening on %s:%d (public address %s)", listen.host, port, public_addr)
    return f"{listen.connect_host}:{port}"


def _protocol_route(handler: ProtocolHandler, proxy: ProxyContext, router: Router) -> TLSHandler:
    """The ALPN route of a plugin's protocol: the front door for a protocol that reaches
    targets, the plugin's own ``serve`` for one served at the proxy."""

    async def route(stream: TLSStream) -> None:
        alpn = stream.selected_alpn_protocol() or ""
        conn = ProxyConnection(stream=stream, peer=peer_address(stream), alpn=alpn, proxy=proxy)
        try:
            if handler.serve is not None:
                await handler.serve(conn)
            else:
                await serve_front_door(handler, router, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("%s connection from %s ended: %s", handler.name, conn.peer, exc)

    return route


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
    ) -> None:
        self._holder = holder
        self._auth = auth
        self._tunnels = tunnels
        self._limiter = limiter
        self._max_body = max_body
        self._handler: ASGIHandler | None = None

    async def __call__(self, stream: TLSStream) -> None:
        if self._handler is None:
            app = build_web_app(
                self._holder["info"],
                self._auth,
                limiter=self._limiter,
                max_body=self._max_body,
                tunnels=self._tunnels,
            )
            self._handler = ASGIHandler(app)
        await self._handler(stream)


async def wait_for_stop_signal() -> None:
    """Return when SIGTERM or SIGHUP arrives (trio gives a signal to the newest receiver
    only, so a process running several daemons watches once, for all of them)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            return


async def _stop_gracefully(
    cancel_scope: trio.CancelScope, ctx: ServiceContext, stop: trio.Event | None
) -> None:
    if stop is None:
        await wait_for_stop_signal()
    else:
        await stop.wait()
    # graceful steps first (tunnel agents told to move), each given a moment
    for step in ctx.on_stop:
        with trio.move_on_after(2):
            await step()
    cancel_scope.cancel()


async def run_daemon(
    config: Config,
    pm: TetherPluginManager,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until stopped: by SIGTERM or SIGHUP, or when given, by ``stop`` being set (its
    owner watches the signals); either way cleanly. Cancelling (Ctrl-C) stops it at once."""
    # the data directory first, 0700: plugins configured next create directories inside it
    data_dir = trio.Path(config.data_dir)
    await data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pm.hook.tether_configure(config=config)
    process_file = pathlib.Path(data_dir / PROCESS_FILE)
    # Resources that own nurseries of their own (the backend's TTL reaper) are entered before
    # the daemon's nursery so that they close after every task that uses them.
    async with contextlib.AsyncExitStack() as stack:
        backend = None
        if config.auth_service.enabled:
            backend = await stack.enter_async_context(open_backend(config.storage_url, pm))
        async with trio.open_nursery() as nursery:
            await _run_services(
                config, pm, backend, stack, nursery, process_file, stop, task_status
            )


async def _run_services(
    config: Config,
    pm: TetherPluginManager,
    backend: Backend | None,
    stack: contextlib.AsyncExitStack,
    nursery: trio.Nursery,
    process_file: pathlib.Path,
    stop: trio.Event | None,
    task_status: trio.TaskStatus[dict[str, Any]],
) -> None:
    info: dict[str, Any] = {"pid": os.getpid(), "cluster_name": config.cluster_name}
    ctx = ServiceContext(config=config, pm=pm, nursery=nursery)
    nursery.start_soon(_stop_gracefully, nursery.cancel_scope, ctx, stop)
    if backend is not None:
        auth, auth_addr = await _start_auth(config, pm, backend, nursery)
        info["auth_addr"] = auth_addr
        info["ca_pin"] = auth.ca_pin
        ctx.extras["auth"] = auth
        if config.proxy_service.enabled:
            me = _local_proxy_identity(auth, config)
            info["proxy_addr"] = await _start_proxy(
                config, me, f"https://{auth_addr}", stack, nursery, ctx
            )
    elif config.proxy_service.enabled:
        me, auth_url = await _joined_proxy_identity(config)
        info["cluster_name"] = me.cluster_name
        info["ca_pin"] = pki.ca_pin(me.cas[0])
        info["proxy_addr"] = await _start_proxy(config, me, auth_url, stack, nursery, ctx)
    ctx.extras.update(info)
    services: list[Service] = [s for group in pm.hook.tether_services(ctx=ctx) for s in group]
    for service in services:
        log.info("starting service %s", service.name)
        await nursery.start(service.run)
    _write_private(process_file, json.dumps(info, indent=2))
    task_status.started(info)
    try:
        await trio.sleep_forever()
    finally:
        _remove(process_file)


def _remove(path: pathlib.Path) -> None:
    # synchronous on purpose: it runs while the daemon is being cancelled
    path.unlink(missing_ok=True)
