"""Serve an ASGI application on a TLS stream that was already accepted and handshaken.

hypercorn's trio ``TCPServer`` drives one connection given a stream object, which is what the
proxy's ALPN router has after the handshake (DESIGN.md: the HTTP server must accept connections
the router hands over). The peer's certificate travels to the application in the ASGI
connection state as ``scope["state"]["tether.peer_cert"]`` (DER bytes or None), where request
handlers verify it against the CAs they trust.
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from tether.tlsserver import peer_certificate_der

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

    async def __call__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        state = ConnectionState({PEER_CERT_STATE: peer_certificate_der(stream)})
        await TCPServer(self._app, self._config, self._context, state, stream)
