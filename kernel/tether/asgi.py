"""Serve an ASGI application on a TLS stream that was already accepted and handshaken.

hypercorn's trio ``TCPServer`` drives one connection given a stream object, which is what the
proxy's ALPN router has after the handshake (DESIGN.md: the HTTP server must accept connections
the router hands over). The peer's certificate travels to the application in the ASGI
connection state as ``scope["state"]["tether.peer_cert"]`` (DER bytes or None), where request
handlers verify it against the CAs they trust. The stream is a
:class:`~tether.tlsstream.TLSStream`, which offers what hypercorn reads from a ``trio.SSLStream``.
"""

from __future__ import annotations

from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from tether.tlsserver import peer_certificate_der
from tether.tlsstream import TLSStream

__all__ = ["PEER_CERT_STATE", "ASGIHandler"]

PEER_CERT_STATE = "tether.peer_cert"


class ASGIHandler:
    """A :data:`tether.tlsserver.TLSHandler` that serves ``app`` over HTTP/1.1 or HTTP/2."""

    def __init__(self, app: Any, *, keep_alive_timeout: float = 30.0) -> None:
        self._app = ASGIWrapper(app)
        self._config = HypercornConfig()
        self._config.keep_alive_timeout = keep_alive_timeout
        self._config.accesslog = None
        self._context = WorkerContext(None)

    async def __call__(self, stream: TLSStream) -> None:
        state = ConnectionState({PEER_CERT_STATE: peer_certificate_der(stream)})
        # TCPServer is annotated with trio.SSLStream but duck-types it: do_handshake,
        # selected_alpn_protocol, transport_stream.socket, send_all, receive_some, aclose,
        # and send_eof, whose absence (AttributeError) it takes to mean TLS.
        await TCPServer(self._app, self._config, self._context, state, stream)  # type: ignore[arg-type]
