"""What a protocol plugin hands the proxy, and what the proxy hands back per connection.

The proxy has one public port and tells protocols apart by ALPN (DESIGN.md, "Processes and
services"). A plugin's :class:`ProtocolHandler` claims ALPN ids through ``tether_protocols``;
for each connection that negotiated one of them, the proxy calls ``serve`` with a
:class:`ProxyConnection`: the TLS stream, the caller's identity (verified only when asked, so
the handler decides how to report a refusal in its own framing) and the proxy's means of
reaching the cluster (the auth API and the reverse-tunnel server). The kernel knows nothing of
the protocol beyond that.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from tether import pki
from tether.auth.http_client import FORWARDED_CERT_HEADER
from tether.errors import AccessDenied, PluginError, TetherError
from tether.tlsserver import peer_certificate_der

if TYPE_CHECKING:
    from tether.auth.http_client import AuthClient
    from tether.tlsstream import TLSStream
    from tether.tunnel.server import TunnelServer
    from tether.tunnel.transport import IncomingStream

__all__ = [
    "ProtocolHandler",
    "ProxyConnection",
    "ProxyContext",
    "RemoteRequest",
    "collect_protocols",
]

log = logging.getLogger(__name__)

#: ALPN ids the kernel serves itself; a plugin may not claim them.
KERNEL_ALPN = frozenset({"h2", "http/1.1", "tether-tunnel/1"})


@attrs.frozen
class ProxyContext:
    """The proxy as protocol handlers see it.

    :param cluster_name: this proxy's cluster.
    :param public_addr: the address clients reach this proxy at (``host:port``).
    :param auth: a client of the auth API authenticated as this proxy; add the caller's
        certificate with :meth:`ProxyConnection.forwarded_headers` to act on their behalf.
    :param tunnels: the reverse-tunnel server: ``dial(cluster, target, agent=...)`` reaches a
        leaf cluster or a node in tunnel mode.
    :param verify_client: verifies a DER client certificate against the cluster's CAs.
    """

    cluster_name: str
    public_addr: Callable[[], str]
    auth: AuthClient
    tunnels: TunnelServer
    verify_client: Callable[[bytes], pki.Identity]


@attrs.define
class ProxyConnection:
    """One client connection that negotiated a plugin's ALPN id; the handler owns ``stream``."""

    stream: TLSStream
    peer: str
    alpn: str
    proxy: ProxyContext

    def certificate_der(self) -> bytes:
        """The client's DER certificate.

        :raises AccessDenied: the client presented none (run ``tether login``).
        """
        der = peer_certificate_der(self.stream)
        if der is None:
            raise AccessDenied("a client certificate is required", hint="run `tether login` first")
        return der

    def identity(self) -> pki.Identity:
        """The caller's verified identity (TLS already checked the chain; this reads and
        re-verifies the identity the certificate carries).

        :raises AccessDenied: no certificate was presented.
        :raises TrustError: the certificate is not a valid Tether identity of a trusted CA.
        """
        return self.proxy.verify_client(self.certificate_der())

    def forwarded_headers(self) -> dict[str, str]:
        """Headers that make an auth API call act as the caller, not as the proxy."""
        return {FORWARDED_CERT_HEADER: base64.b64encode(self.certificate_der()).decode()}


@attrs.frozen
class RemoteRequest:
    """A stream a root cluster's proxy opened through a leaf's tunnel, at the leaf's proxy.

    :param request: the incoming stream: ``target`` is the protocol's name, ``metadata`` what
        the root's handler sent; ``accept()`` it, or :meth:`refuse` it (which audits).
    :param cluster: the root cluster that opened it.
    :param proxy: this (leaf) proxy.
    """

    request: IncomingStream
    cluster: str
    proxy: ProxyContext

    async def refuse(self, reason: str, **fields: str) -> None:
        """Reject the stream with ``reason`` and audit the refusal here, on the leaf where it
        happened, as ``trust.stream.refused`` (with the root, the target, the reason and
        ``fields``). A failure to audit is logged, not raised: the refusal stands either way.
        """
        log.info("refused root cluster %s (%s): %s", self.cluster, self.request.target, reason)
        self.request.reject(reason)
        event = {"root": self.cluster, "target": self.request.target, "reason": reason, **fields}
        try:
            await self.proxy.auth.record_event("trust.stream.refused", "", event, success=False)
        except (TetherError, OSError) as exc:
            log.warning("could not audit a refused stream from %s: %s", self.cluster, exc)


@attrs.frozen
class ProtocolHandler:
    """A protocol served on the proxy's public port, and through leaves' tunnels.

    :param name: shown in logs and errors (``ssh``); also the tunnel target a root's proxy
        opens at a leaf's proxy for this protocol.
    :param alpn: the ALPN ids that select it (``tether-ssh/1``); unique across plugins.
    :param serve: ``async def serve(conn: ProxyConnection)``, called once per connection after
        the TLS handshake; returns when the connection is done (the proxy then closes it).
    :param serve_remote: ``async def serve_remote(req: RemoteRequest)``, called at a leaf's
        proxy for each stream a root's proxy opens to ``name`` through the leaf's tunnel;
        None when the protocol does not reach into leaf clusters.
    """

    name: str
    alpn: tuple[str, ...]
    serve: Callable[[ProxyConnection], Awaitable[None]]
    serve_remote: Callable[[RemoteRequest], Awaitable[None]] | None = None


def collect_protocols(results: Iterable[Iterable[object]]) -> dict[str, ProtocolHandler]:
    """Merge ``tether_protocols`` results into ALPN id -> handler.

    :raises PluginError: a result is not a ProtocolHandler, or an ALPN id is claimed twice
        (or is one of the kernel's own).
    """
    routes: dict[str, ProtocolHandler] = {}
    for handlers in results:
        for handler in handlers:
            if not isinstance(handler, ProtocolHandler):
                raise PluginError(
                    f"tether_protocols returned {handler!r}; expected ProtocolHandler objects"
                )
            for alpn in handler.alpn:
                if alpn in KERNEL_ALPN:
                    raise PluginError(
                        f"protocol {handler.name!r} claims ALPN id {alpn!r}, "
                        "which the kernel serves itself"
                    )
                if alpn in routes:
                    raise PluginError(
                        f"ALPN id {alpn!r} is claimed by protocols {routes[alpn].name!r} "
                        f"and {handler.name!r}",
                        hint="disable one of the plugins",
                    )
                routes[alpn] = handler
    return routes
