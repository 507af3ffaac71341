"""What a protocol plugin hands the proxy, and what the proxy hands back per connection.

The proxy has one public port and tells protocols apart by ALPN (DESIGN.md, "Processes and
services"), or, for clients that can set only a TLS server name, by a route name
(:mod:`tether.route_names`). A plugin's :class:`ProtocolHandler` claims ALPN ids and a route
name prefix through ``tether_protocols``.
A protocol that reaches targets declares their kind; the kernel then routes each connection
(:mod:`tether.proxy.routing`) and hands the plugin a :class:`DialedConnection`: the client's
stream, a connected stream to the target and the verified identity. The plugin never dials,
routes or checks trust. A protocol served at the proxy itself gets the raw
:class:`ProxyConnection`: the TLS stream, the caller's identity (verified only when asked, so
the handler decides how to report a refusal in its own framing) and the proxy's means of
reaching the cluster. The kernel knows nothing of the protocol beyond that.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import attrs
import trio

from tether import pki
from tether.auth.http_client import FORWARDED_CERT_HEADER
from tether.dial import DialedTarget
from tether.errors import AccessDenied, PluginError, TetherError
from tether.route_names import PREFIX
from tether.targets import TargetKind
from tether.tlsserver import peer_certificate_der
from tether.tunnel.forward import splice

if TYPE_CHECKING:
    from tether.auth.http_client import AuthClient
    from tether.tlsstream import TLSStream
    from tether.tunnel.server import TunnelServer

__all__ = [
    "DialedConnection",
    "ProtocolHandler",
    "Protocols",
    "ProxyConnection",
    "ProxyContext",
    "collect_protocols",
    "relay_bytes",
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
        leaf cluster or a node in tunnel mode (:mod:`tether.proxy.routing` does it for
        protocols).
    :param verify_client: verifies a DER client certificate against the cluster's CAs.
    :param record_event: ``await record_event(event_type, user, fields, success=...)``
        records an audit event of this proxy (what it refused): queued in order and kept,
        on disk if need be, until auth records it, so it never fails and never waits for
        auth (prefer it to ``auth.record_event``, which fails while auth is unreachable).
    """

    cluster_name: str
    public_addr: Callable[[], str]
    auth: AuthClient
    tunnels: TunnelServer
    verify_client: Callable[[bytes], pki.Identity]
    record_event: Callable[..., Awaitable[None]]


@attrs.define
class ProxyConnection:
    """One client connection that negotiated a plugin's ALPN id, or asked for one of its route
    names; the handler owns ``stream``.

    :param alpn: the ALPN id negotiated, ``""`` for none (a route name's connection may
        negotiate none).
    """

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
class DialedConnection:
    """A client connection the kernel has routed to its target: what a protocol that reaches
    targets gets once the dial succeeded. The handler owns both streams.

    :param client: the client's stream, after the dial exchange (bytes the client sent
        past its request are delivered first).
    :param target: the stream to the target (its server, end to end).
    :param identity: the client's verified identity.
    :param dialed: which target it is.
    :param conn: the client connection (its peer address and the proxy).
    """

    client: trio.abc.Stream
    target: trio.abc.Stream
    identity: pki.Identity
    dialed: DialedTarget
    conn: ProxyConnection


async def relay_bytes(dialed: DialedConnection) -> None:
    """Copy bytes both ways until both sides are done: for protocols whose session runs end
    to end between the client and the target (SSH), so that the proxy holds no key of it."""
    await splice(dialed.client, dialed.target)


@attrs.frozen(kw_only=True)
class ProtocolHandler:
    """A protocol served on the proxy's public port, and through leaves' tunnels.

    A protocol either reaches targets, and then declares ``target_kind``: the kernel answers
    the front door's dial exchange on its ALPN ids (``docs/tunnel-protocol.md``), finds the
    target among those the user may see in the cluster asked for (through any tunnel hops),
    connects to it and calls ``relay``; or it is served at the proxy itself, and then gives
    ``serve``, which gets the raw connection.

    A protocol that reaches targets may also be reached by clients that can set nothing but a
    TLS server name (kubectl): with ``server_name_prefix``, a TLS connection that asks for a
    route name with that prefix (:func:`tether.route_names.route_server_name`) comes to it
    whatever ALPN ids it offered, and the kernel routes it to the cluster and target the name
    carries, with no dial exchange: no first line is read, no answer written.

    :param name: shown in logs and errors (``ssh``); also the tunnel target a proxy opens at
        a leaf's proxy, and at a node in tunnel mode, for this protocol.
    :param alpn: the ALPN ids that select it (``tether-ssh/1``); unique across plugins.
    :param target_kind: the kind of target it reaches (SSH: ``node``).
    :param relay: ``async def relay(dialed: DialedConnection)``, called once a dial
        succeeded; by default, bytes are copied both ways (:func:`relay_bytes`).
    :param title: the protocol's name in sentences (``SSH``); ``name`` by default.
    :param port_hint: what to tell a user who asked for another port than the target's own
        (how this protocol reaches other ports, if it does).
    :param serve: ``async def serve(conn: ProxyConnection)`` for a protocol served at the
        proxy, called once per connection after the TLS handshake.
    :param server_name_prefix: the start of its route names' label (``kube``): lower-case
        letters and digits, unique across plugins; needs ``target_kind``.
    :param server_name_alpn: the ALPN ids the proxy offers on a route name's connection, for
        a client that speaks several protocols and must be held to one (``("http/1.1",)``);
        empty: none is negotiated.
    :param refuse: ``async def refuse(conn: ProxyConnection, error: TetherError)``, called
        when the kernel refuses a route name's connection (no client certificate, no such
        target or cluster, access denied, target offline): such a connection has no answer
        line, so the protocol says why in its own framing (an HTTP status). Without it the
        kernel closes the connection, having logged why.
    """

    name: str
    alpn: tuple[str, ...]
    target_kind: TargetKind | None = None
    relay: Callable[[DialedConnection], Awaitable[None]] = relay_bytes
    title: str = ""
    port_hint: str = ""
    serve: Callable[[ProxyConnection], Awaitable[None]] | None = None
    server_name_prefix: str = ""
    server_name_alpn: tuple[str, ...] = ()
    refuse: Callable[[ProxyConnection, TetherError], Awaitable[None]] | None = None

    def __attrs_post_init__(self) -> None:
        if (self.target_kind is None) == (self.serve is None):
            raise PluginError(
                f"protocol {self.name!r} must give either a target_kind (the kernel routes to "
                "its targets) or serve (it is served at the proxy), not both or neither"
            )
        if self.server_name_prefix and self.target_kind is None:
            raise PluginError(
                f"protocol {self.name!r} gives a server_name_prefix but no target_kind: a "
                "route name selects a target, which the kernel finds by the protocol's kind"
            )
        if self.server_name_prefix and not PREFIX.fullmatch(self.server_name_prefix):
            raise PluginError(
                f"protocol {self.name!r}: server_name_prefix {self.server_name_prefix!r} must "
                "be lower-case letters and digits (the start of a DNS label, before its '-')"
            )
        if self.server_name_alpn and not self.server_name_prefix:
            raise PluginError(
                f"protocol {self.name!r} gives server_name_alpn but no server_name_prefix: "
                "those ALPN ids are offered only on its route names' connections"
            )

    @property
    def display_name(self) -> str:
        return self.title or self.name


@attrs.frozen
class Protocols:
    """The plugins' protocols on the proxy's port, by what selects each on a connection.

    :param handlers: every protocol, in the order the plugins gave them.
    :param by_alpn: ALPN id -> the protocol that claims it.
    :param by_server_name_prefix: route name prefix -> the protocol that claims it.
    """

    handlers: tuple[ProtocolHandler, ...]
    by_alpn: Mapping[str, ProtocolHandler]
    by_server_name_prefix: Mapping[str, ProtocolHandler]


def collect_protocols(results: Iterable[Iterable[object]]) -> Protocols:
    """Merge ``tether_protocols`` results.

    :raises PluginError: a result is not a ProtocolHandler, an ALPN id is claimed twice (or
        is one of the kernel's own), or a route name prefix is claimed twice.
    """
    handlers: list[ProtocolHandler] = []
    routes: dict[str, ProtocolHandler] = {}
    prefixes: dict[str, ProtocolHandler] = {}
    for returned in results:
        for handler in returned:
            if not isinstance(handler, ProtocolHandler):
                raise PluginError(
                    f"tether_protocols returned {handler!r}; expected ProtocolHandler objects"
                )
            handlers.append(handler)
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
            prefix = handler.server_name_prefix
            if prefix and prefix in prefixes:
                raise PluginError(
                    f"server name prefix {prefix!r} is claimed by protocols "
                    f"{prefixes[prefix].name!r} and {handler.name!r}",
                    hint="disable one of the plugins",
                )
            if prefix:
                prefixes[prefix] = handler
    return Protocols(tuple(handlers), routes, prefixes)
