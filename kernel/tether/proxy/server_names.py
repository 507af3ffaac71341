"""The proxy's route names: which protocol a TLS connection that asked for a route name goes
to, and the TLS context it finishes its handshake with.

A client that can set only a server name (kubectl's ``tls-server-name``) asks for a route
name (:mod:`tether.route_names`); the protocol that claims its prefix gets the connection
whatever ALPN ids the client offered (:data:`tether.tlsserver.ServerNameRouter`). Each such
protocol has a context of its own, switched to in the SNI callback, because what the client
must meet differs from the web port's:

- the proxy's own certificate, issued by the cluster's CA and naming the route wildcard,
  even where the operator gave the web port a public one (``proxy_service.https_cert_file``):
  a kubeconfig pins the cluster's CA, not a public one;
- the protocol's ``server_name_alpn`` only, so that kubectl, which offers ``h2`` first,
  speaks the protocol the plugin relays (empty: none is negotiated);
- client certificates verified against the same CAs as on the main context. OpenSSL verifies
  a switched connection against the *switched* context's CAs (and asks for a certificate as
  the main context says, optionally), so this context trusts what the main one trusts, and
  :meth:`ServerNameRoutes.trust` and :meth:`ServerNameRoutes.present_certificate` keep it so.

An unknown prefix, or a name that is no route name (``localhost``, the proxy's public host),
stays on the main context and is routed by ALPN, as before route names existed.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Mapping

from cryptography import x509

from tether import pki
from tether.protocols import ProtocolHandler
from tether.route_names import RouteName, parse_route_server_name
from tether.tlsserver import ServerNameRoute, ServerNameRouter, TLSHandler

__all__ = ["RouteServer", "ServerNameRoutes"]

#: Serves one connection of a protocol to the route it asked for.
RouteServer = Callable[[ProtocolHandler, RouteName], TLSHandler]


class ServerNameRoutes:
    """The route name prefixes of the proxy's protocols, each with its TLS context.

    :param protocols: route name prefix -> the protocol that claims it.
    :param cert: the proxy's own certificate (from the cluster's CA), and ``key`` its key.
    :param cas: the CAs client certificates are verified against, as on the main context.
    """

    def __init__(
        self,
        protocols: Mapping[str, ProtocolHandler],
        cert: x509.Certificate,
        key: pki.PrivateKey,
        cas: Iterable[x509.Certificate],
    ) -> None:
        trusted = list(cas)
        self._routes = {
            prefix: (
                handler,
                pki.server_ssl_context(
                    cert,
                    key,
                    client_cas=trusted,
                    # what OpenSSL applies is the main context's mode: it is the same
                    client_auth="optional",
                    alpn=handler.server_name_alpn,
                ),
            )
            for prefix, handler in protocols.items()
        }

    @property
    def contexts(self) -> list[ssl.SSLContext]:
        """Every route's TLS context."""
        return [context for _, context in self._routes.values()]

    def trust(self, ca_pem: str) -> None:
        """Verify client certificates against ``ca_pem`` too (a leaf's CA, as the main
        context learns it)."""
        for context in self.contexts:
            context.load_verify_locations(cadata=ca_pem)

    def present_certificate(self, cert: x509.Certificate, key: pki.PrivateKey) -> None:
        """Present the proxy's renewed certificate from now on."""
        for context in self.contexts:
            pki.present_certificate(context, cert, key)

    def router(self, serve: RouteServer) -> ServerNameRouter:
        """The SNI router of the proxy's listener: a route name whose prefix a protocol
        claims goes to ``serve(protocol, route)`` on that protocol's context."""

        def route(server_name: str) -> ServerNameRoute | None:
            name = parse_route_server_name(server_name)
            found = self._routes.get(name.prefix) if name is not None else None
            if name is None or found is None:
                return None
            handler, context = found
            return ServerNameRoute(context, serve(handler, name), f"{handler.name} route name")

        return route
