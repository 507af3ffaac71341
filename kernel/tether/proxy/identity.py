"""Who a proxy is: its certificate, from auth in its own process or by joining a remote auth.

A proxy in auth's process gets its certificate from auth directly, no token needed; a proxy
of its own (``tetherd start --roles=proxy --auth-server=... --token=...``) joins once with a
proxy token, like a node (:mod:`tether.node.join`), and keeps the identity in its data
directory. Either way it renews the certificate while it runs, and the certificate names,
besides the proxy's hosts, :data:`~tether.route_names.ROUTE_NAME_WILDCARD`: the proxy presents
it to clients that ask for a route name (:mod:`tether.proxy.server_names`).
"""

from __future__ import annotations

import datetime
import logging
import pathlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
from cryptography import x509

from tether import pki
from tether.auth.http_client import AuthClient
from tether.config import Config
from tether.errors import ConfigError
from tether.node.join import (
    host_client_context,
    load_or_join_first_reachable,
    renew_and_save,
)
from tether.route_names import ROUTE_NAME_WILDCARD

if TYPE_CHECKING:
    from tether.auth.service import AuthService

__all__ = [
    "ProxyIdentity",
    "Renewal",
    "joined_proxy_identity",
    "local_proxy_identity",
    "server_identity",
    "server_names",
]

log = logging.getLogger(__name__)

#: Gets a proxy new certificates, given its client of auth (which presents the current ones).
Renewal = Callable[["AuthClient"], Awaitable[tuple[x509.Certificate, pki.PrivateKey]]]


@attrs.frozen
class ProxyIdentity:
    """Who a proxy is: its cluster, host id, certificate and the cluster CAs it trusts; and
    how it renews the certificate, which it does while it runs."""

    cluster_name: str
    host_id: str
    cert: x509.Certificate
    key: pki.PrivateKey
    cas: tuple[x509.Certificate, ...]
    renew: Renewal


def server_names(config: Config, *hosts: str) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses to put in a server certificate: loopback, the node name
    and every configured host but listen-on-every-interface ones."""
    named = [h for h in hosts if h not in ("0.0.0.0", "::")]
    ips, dns = pki.split_host_addresses(["localhost", config.nodename, "127.0.0.1", "::1", *named])
    return sorted(dns), sorted(ips)


def server_identity(
    auth: AuthService,
    config: Config,
    kind: str,
    *hosts: str,
    ttl: datetime.timedelta,
) -> tuple[x509.Certificate, pki.PrivateKey]:
    """A fresh key and a certificate from ``auth`` (in this process) naming every address
    clients may use for this daemon, of a type browsers and stock TLS clients accept. Auth's
    own server certificate is issued the same way."""
    key = pki.generate_private_key(pki.WEB_ALGORITHM)
    dns, ips = server_names(config, *hosts)
    cert = auth.issue_system_certificate(
        kind,
        config.nodename,
        key.public_key(),
        ttl=ttl,
        dns_names=dns,
        ip_addresses=ips,
    )
    return cert, key


def local_proxy_identity(auth: AuthService, config: Config) -> ProxyIdentity:
    """A proxy in auth's own process: auth issues its certificate, no token needed, for a
    host's lifetime (``auth_service.host_cert_ttl``), and renews it the same way."""
    listen = config.proxy_service.listen_addr
    public = config.proxy_service.public_addr
    hosts = (listen.host, public.host if public else "", ROUTE_NAME_WILDCARD)
    ttl = config.auth_service.host_cert_ttl

    async def renew(_api: AuthClient) -> tuple[x509.Certificate, pki.PrivateKey]:
        renewed = server_identity(auth, config, "proxy", *hosts, ttl=ttl)
        await auth.hold_own_host_id()  # the host's id, as long as the new certificate lasts
        return renewed

    cert, key = server_identity(auth, config, "proxy", *hosts, ttl=ttl)
    return ProxyIdentity(
        config.cluster_name, config.nodename, cert, key, tuple(auth.trusted_tls_cas()), renew
    )


async def joined_proxy_identity(config: Config) -> tuple[ProxyIdentity, list[str]]:
    """A proxy of its own (``tetherd start --roles=proxy --auth-server=... --token=...``):
    it joins auth once with a proxy token and keeps the identity in its data directory.

    Returns the identity and the auth servers' URLs (``join.auth_servers``: several auth
    servers of one cluster; the first that can be reached is joined).
    """
    join = config.join
    if not join.auth_addresses:
        raise ConfigError(
            "a proxy without an auth service in its process needs the auth server's address",
            hint="pass --auth-server=HOST:PORT (and --token with a proxy token the first time)",
        )
    listen = config.proxy_service.listen_addr
    public = config.proxy_service.public_addr
    hosts = (listen.host, public.host if public else "", ROUTE_NAME_WILDCARD)
    dns, ips = server_names(config, *hosts)
    directory = pathlib.Path(config.data_dir) / "proxy"
    servers = [str(addr) for addr in join.auth_addresses]
    auth_urls = [f"https://{server}" for server in servers]
    addresses = [*dns, *ips]
    joined = await load_or_join_first_reachable(
        directory,
        servers,
        join.token,
        role="proxy",
        host_id=config.nodename,
        hostname=config.nodename,
        addresses=addresses,
        ca_pin=join.ca_pin,
        insecure=join.insecure,
        auth_urls=auth_urls,
        peer_kinds=("auth",),
    )

    hostname = joined.identity.username
    if ROUTE_NAME_WILDCARD not in pki.x509_host_names(joined.tls_cert):
        # joined before proxies answered to route names: renew now, which adds the name
        # (auth lets a proxy's renewal add it), rather than fail every route name's
        # handshake until the certificate's next renewal
        context = host_client_context(joined, peer_kinds=("auth",), insecure=join.insecure)
        async with AuthClient(auth_urls, context) as api:
            joined = await renew_and_save(
                api, directory, hostname=hostname, addresses=addresses, role="proxy"
            )
        log.info("proxy %s renewed its certificate to answer to route names", hostname)

    async def renew(api: AuthClient) -> tuple[x509.Certificate, pki.PrivateKey]:
        renewed = await renew_and_save(
            api, directory, hostname=hostname, addresses=addresses, role="proxy"
        )
        return renewed.tls_cert, renewed.private_key

    identity = ProxyIdentity(
        joined.identity.cluster,
        joined.identity.username,
        joined.tls_cert,
        joined.private_key,
        joined.tls_cas,
        renew,
    )
    return identity, auth_urls
