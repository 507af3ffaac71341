"""Accept TLS connections on one port and hand each to the handler its ALPN id names, or the
server name it asked for.

The proxy has one public port: reverse tunnels, the SSH front door and the web API all arrive
there and are told apart by ALPN (DESIGN.md, "Processes and services"). The auth service uses
the same listener with a single route. A handler receives the stream after the handshake, so it
can read the negotiated protocol and the peer's certificate; it owns the stream and closes it.
Connections are :class:`~tether.tlsstream.TLSStream`, the kernel's fast TLS stream, not
``trio.SSLStream`` (DESIGN.md, "The tunnel").

A client that can set only the TLS server name (SNI) is routed by it instead: a
:data:`ServerNameRouter` looks at the name in the SNI callback, during the handshake, and
may switch the connection to a context of the route's own (its certificate, its ALPN ids)
before OpenSSL answers; the route it chose then gets the stream whatever ALPN says. OpenSSL
takes the certificate, the ALPN ids and the CAs that verify the client's certificate from
the switched context, but keeps the verify mode (whether a client certificate is asked for
at all) of the context the connection started with.
"""

from __future__ import annotations

import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import attrs
import trio

from tether.config import HostPort
from tether.errors import ConfigError
from tether.tlsstream import TLSStream, detach_socket

__all__ = [
    "HTTP_ALPN",
    "ServerNameRoute",
    "ServerNameRouter",
    "TLSHandler",
    "listen_tls",
    "peer_address",
    "peer_certificate_der",
    "serve_tls",
]

#: The ALPN ids of the HTTP APIs (auth's, the proxy's web API).
HTTP_ALPN = ("h2", "http/1.1")

log = logging.getLogger(__name__)

TLSHandler = Callable[[TLSStream], Awaitable[None]]

#: How long a refused peer gets to read the TLS alert that says why (seconds).
REFUSE_GRACE = 2.0

#: ALPN id used when the client offered none (plain HTTPS clients such as curl always offer one).
DEFAULT_ROUTE = "http/1.1"


@attrs.frozen
class ServerNameRoute:
    """Where a TLS server name leads.

    :param context: the server context to finish the handshake with: it decides the
        certificate presented, the ALPN ids offered and the CAs a client certificate is
        verified against (not whether one is asked for: the listener's context decides that).
    :param handler: gets the stream after the handshake, whatever ALPN id was negotiated.
    :param name: what the route is, for logs.
    """

    context: ssl.SSLContext
    handler: TLSHandler
    name: str


#: Given the server name a client asked for (SNI), its route, or None to route by ALPN. Called
#: inside OpenSSL's handshake: it must be quick, and never block.
ServerNameRouter = Callable[[str], ServerNameRoute | None]


class _ServerNameChoices:
    """The routes the SNI callback chose, per connection, until the handshake is over.

    Kept by the TLS socket (weakly: a connection whose handshake fails is forgotten with it),
    since the callback knows the connection by that object only.
    """

    def __init__(self, router: ServerNameRouter) -> None:
        self._router = router
        self._chosen: weakref.WeakKeyDictionary[object, ServerNameRoute] = (
            weakref.WeakKeyDictionary()
        )

    def callback(self, connection: object, server_name: str | None, _: ssl.SSLContext) -> None:
        """``SSLContext.sni_callback``: switch a connection whose name has a route to the
        route's context. An exception here would fail the handshake with an internal error
        and only a traceback on stderr; a router's bug routes by ALPN instead, logged."""
        if server_name is None:
            return
        try:
            route = self._router(server_name)
        except Exception:
            log.exception("routing the TLS server name %r failed; routing by ALPN", server_name)
            return
        if route is None:
            return
        if not isinstance(connection, ssl.SSLSocket | ssl.SSLObject):
            log.warning("cannot switch the TLS context of %r", connection)
            return
        connection.context = route.context
        self._chosen[connection] = route

    def take(self, stream: TLSStream) -> ServerNameRoute | None:
        """The route chosen for ``stream``'s connection, if any (once)."""
        return self._chosen.pop(stream.socket, None)


def peer_certificate_der(stream: TLSStream) -> bytes | None:
    """The DER certificate the peer presented, or None (no client certificate)."""
    try:
        der = stream.getpeercert(binary_form=True)
    except (ValueError, AttributeError, OSError):  # no handshake yet, or the peer is gone
        return None
    return der if isinstance(der, bytes) and der else None


def _certificate_refused(error: BaseException) -> bool:
    """Whether a handshake failed on the peer's certificate, not on what it spoke."""
    return isinstance(error, ssl.SSLCertVerificationError) or (
        isinstance(error, ssl.SSLError) and "CERTIFICATE" in str(error.reason or "")
    )


async def _handle(
    routes: Mapping[str, TLSHandler],
    ssl_context: ssl.SSLContext,
    handshake_timeout: float,
    by_name: _ServerNameChoices | None,
    raw: trio.SocketStream,
) -> None:
    # Connections that end before a route has them (load balancers' TCP health checks,
    # scanners) are logged at DEBUG: on a public port they come every few seconds, and none
    # is an event an operator acts on. A certificate refused is one (an agent of an unknown
    # CA, a host whose certificate expired): INFO.
    try:
        # Web clients routinely hang up without close_notify; every route has its own framing.
        stream = TLSStream.wrap_server(detach_socket(raw), ssl_context, allow_ragged_eof=True)
    except (trio.BrokenResourceError, OSError) as exc:
        log.debug("TLS connection lost before the handshake: %s", exc)
        await trio.aclose_forcefully(raw)
        return
    try:
        with trio.fail_after(handshake_timeout):
            await stream.do_handshake()
    except trio.TooSlowError:
        log.debug("TLS handshake from %s timed out", peer_address(stream))
        await trio.aclose_forcefully(stream)
        return
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__ or exc
        level = logging.INFO if _certificate_refused(cause) else logging.DEBUG
        log.log(level, "TLS handshake from %s failed: %s", peer_address(stream), cause)
        await _refuse(stream)
        return
    named = by_name.take(stream) if by_name is not None else None
    if named is not None:
        handler: TLSHandler | None = named.handler
        route = named.name
    else:
        route = stream.selected_alpn_protocol() or DEFAULT_ROUTE
        handler = routes.get(route)
    if handler is None:  # the server context only offers routed ids, so this is a bug guard
        log.warning("no handler for ALPN %r from %s", route, peer_address(stream))
        await trio.aclose_forcefully(stream)
        return
    try:
        await handler(stream)
    except Exception:
        # A route's bug (a plugin's protocol, a library's) ends this connection only: the
        # port serves every user, tunnel and cluster. Cancellation is no Exception.
        log.exception("the %r handler failed on a connection from %s", route, peer_address(stream))
    finally:
        await trio.aclose_forcefully(stream)


async def _refuse(stream: TLSStream) -> None:
    """Close a connection whose handshake failed so that the peer learns why.

    OpenSSL has already written a TLS alert ("certificate expired", "unknown CA", "certificate
    required", ...) to the socket. Half-close and drain what the peer already sent (a TLS 1.3
    client sends its request before it sees our verdict): closing with unread data makes the
    kernel answer with a reset, which the peer may see instead of the alert. Bounded, so a
    peer that stops reading costs little.
    """
    raw = stream.detach_transport()
    with trio.move_on_after(REFUSE_GRACE):
        try:
            await raw.send_eof()
            while await raw.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await trio.aclose_forcefully(raw)


def peer_address(stream: TLSStream) -> str:
    """``host:port`` of the peer, for logs."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "a vanished peer"
    return f"{host}:{port}"


async def serve_tls(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    routes: Mapping[str, TLSHandler],
    *,
    server_names: ServerNameRouter | None = None,
    handshake_timeout: float = 10.0,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and dispatch each TLS connection by ALPN until cancelled, or
    by its server name where ``server_names`` gives it a route.

    ``ssl_context`` must offer exactly the ALPN ids in ``routes``; with ``server_names`` its
    SNI callback is set here (the context belongs to this listener). Reports the listeners
    through ``task_status`` so callers learn the real port when they asked for port 0.
    """
    by_name = None
    if server_names is not None:
        by_name = _ServerNameChoices(server_names)
        ssl_context.sni_callback = by_name.callback
    listeners = await trio.open_tcp_listeners(port, host=host)
    await trio.serve_listeners(
        partial(_handle, routes, ssl_context, handshake_timeout, by_name),
        listeners,
        task_status=task_status,
    )


async def listen_tls(
    nursery: trio.Nursery,
    field: str,
    listen: HostPort,
    ssl_context: ssl.SSLContext,
    routes: Mapping[str, TLSHandler],
    *,
    server_names: ServerNameRouter | None = None,
) -> int:
    """Serve ``routes`` (ALPN id -> handler), and ``server_names`` (see :func:`serve_tls`), on
    ``listen`` in ``nursery``; returns the bound port.

    :param field: the configuration field ``listen`` comes from, for the error.
    :raises ConfigError: the address cannot be listened on, said with what to do.
    """
    serve = partial(serve_tls, server_names=server_names)
    try:
        listeners = await nursery.start(serve, listen.host, listen.port, ssl_context, routes)
    except OSError as exc:
        raise ConfigError(
            f"{field}: cannot listen on {listen}: {exc.strerror or exc}",
            hint="choose a free port or a local address",
        ) from None
    port: int = listeners[0].socket.getsockname()[1]
    return port
