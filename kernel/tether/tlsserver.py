"""Accept TLS connections on one port and hand each to the handler its ALPN id names.

The proxy has one public port: reverse tunnels, the SSH front door and the web API all arrive
there and are told apart by ALPN (DESIGN.md, "Processes and services"). The auth service uses
the same listener with a single route. A handler receives the stream after the handshake, so it
can read the negotiated protocol and the peer's certificate; it owns the stream and closes it.
Connections are :class:`~tether.tlsstream.TLSStream`, the kernel's fast TLS stream, not
``trio.SSLStream`` (DESIGN.md, "The tunnel").
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import trio

from tether.config import HostPort
from tether.errors import ConfigError
from tether.tlsstream import TLSStream, detach_socket

__all__ = [
    "HTTP_ALPN",
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
    alpn = stream.selected_alpn_protocol() or DEFAULT_ROUTE
    handler = routes.get(alpn)
    if handler is None:  # the server context only offers routed ids, so this is a bug guard
        log.warning("no handler for ALPN %r from %s", alpn, peer_address(stream))
        await trio.aclose_forcefully(stream)
        return
    try:
        await handler(stream)
    except Exception:
        # A route's bug (a plugin's protocol, a library's) ends this connection only: the
        # port serves every user, tunnel and cluster. Cancellation is no Exception.
        log.exception("the %r handler failed on a connection from %s", alpn, peer_address(stream))
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
    handshake_timeout: float = 10.0,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and dispatch each TLS connection by ALPN until cancelled.

    ``ssl_context`` must offer exactly the ALPN ids in ``routes``. Reports the listeners
    through ``task_status`` so callers learn the real port when they asked for port 0.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    await trio.serve_listeners(
        partial(_handle, routes, ssl_context, handshake_timeout),
        listeners,
        task_status=task_status,
    )


async def listen_tls(
    nursery: trio.Nursery,
    field: str,
    listen: HostPort,
    ssl_context: ssl.SSLContext,
    routes: Mapping[str, TLSHandler],
) -> int:
    """Serve ``routes`` (ALPN id -> handler) on ``listen`` in ``nursery``; returns the bound
    port.

    :param field: the configuration field ``listen`` comes from, for the error.
    :raises ConfigError: the address cannot be listened on, said with what to do.
    """
    try:
        listeners = await nursery.start(serve_tls, listen.host, listen.port, ssl_context, routes)
    except OSError as exc:
        raise ConfigError(
            f"{field}: cannot listen on {listen}: {exc.strerror or exc}",
            hint="choose a free port or a local address",
        ) from None
    port: int = listeners[0].socket.getsockname()[1]
    return port
