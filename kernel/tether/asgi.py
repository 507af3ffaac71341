"""Serve an ASGI application on a TLS stream that was already accepted and handshaken.

hypercorn's trio ``TCPServer`` drives one connection given a stream object, which is what the
proxy's ALPN router has after the handshake (DESIGN.md: the HTTP server must accept connections
the router hands over). The peer's certificate travels to the application in the ASGI
connection state as ``scope["state"]["tether.peer_cert"]`` (DER bytes or None), where request
handlers verify it against the CAs they trust. The stream is a
:class:`~tether.tlsstream.TLSStream`, which offers what hypercorn reads from a ``trio.SSLStream``.

:class:`BodyLimit` caps request bodies: hypercorn hands the application a body in pieces as it
arrives and stops reading the socket while the application does not take them, so counting
the pieces bounds what a request can make the process hold.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from tether.config import ByteSize
from tether.errors import TetherError
from tether.ratelimit import RateLimiter
from tether.tlsserver import peer_address, peer_certificate_der
from tether.tlsstream import TLSStream
from tether.wire import error_to_json

__all__ = ["PEER_CERT_STATE", "ASGIHandler", "BodyLimit", "RefusedBody", "audit_refused_bodies"]

log = logging.getLogger(__name__)

PEER_CERT_STATE = "tether.peer_cert"

#: ``async def refused(scope, size)``: told of each body refused, ``size`` as the client
#: declared it (``Content-Length``) or ``None`` when a body without one grew over the limit
RefusedBody = Callable[[dict[str, Any], int | None], Awaitable[None]]

#: ``async def record(event_type, user, fields, *, success)``: an audit recorder, the auth
#: service's ``audit_event`` or a proxy's ``ProxyAudit.record_event``
EventRecorder = Callable[..., Awaitable[None]]


def audit_refused_bodies(
    record: EventRecorder, limiter: RateLimiter, event_type: str
) -> RefusedBody:
    """Audit each refused request body as ``event_type``, within the client's rate: a refusal
    spends one of its requests, and one over its rate is answered, not audited, so that a
    flood of refusals cannot flood the audit log."""

    async def refused(scope: dict[str, Any], declared: int | None) -> None:
        host = (scope.get("client") or ("unknown",))[0]
        if limiter.take(host, trio.current_time()):
            return
        event = {
            "client": host,
            "method": scope["method"],
            "path": scope["path"],
            "reason": "request body too large",
            "content_length": declared,
        }
        try:
            await record(event_type, "", event, success=False)
        except (TetherError, OSError) as exc:
            log.warning("could not audit a refused request from %s: %s", host, exc)

    return refused


def _declared_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 and h2 refuse a malformed one before the application
    return None


class BodyLimit:
    """ASGI middleware: refuse a request whose body is over ``max_body`` bytes with 413.

    A declared ``Content-Length`` over the limit is refused before any of the body is read;
    a body without one (chunked, or HTTP/2 without the header) is counted as it arrives and
    refused as soon as it passes the limit: the application then hears that the client went
    away, and nothing it answers is sent.

    :param setting: the configuration setting that raises the limit, named in the answer.
    :param refused: awaited for each refusal (to audit it), after the answer is sent.
    :param anonymous_only: limit only requests whose client presented no certificate (the
        TLS handshake verified any it presented).
    """

    def __init__(
        self,
        app: Any,
        *,
        max_body: int,
        setting: str,
        refused: RefusedBody | None = None,
        anonymous_only: bool = False,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self._setting = setting
        self._refused = refused
        self._anonymous_only = anonymous_only

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (
            self._anonymous_only and scope.get("state", {}).get(PEER_CERT_STATE)
        ):
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body:
            await self._refuse(scope, send, declared)
            return
        received = 0
        over = started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    over = True
                    if not started:
                        await self._refuse(scope, send, None)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if over:
                return  # the 413 went out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, scope: dict[str, Any], send: Any, declared: int | None) -> None:
        size = f"of {declared} bytes " if declared is not None else ""
        error = TetherError(
            f"request body {size}is over the {ByteSize(self.max_body)} this server reads",
            hint=f"send a smaller one, or raise {self._setting}",
        )
        client = scope.get("client") or ("a client",)
        log.info("refused %s %s from %s: %s", scope["method"], scope["path"], client[0], error)
        body = json.dumps(error_to_json(error)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if scope.get("http_version", "1.1").startswith("1."):  # HTTP/2 forbids the header
            headers.append((b"connection", b"close"))  # the unread rest ends this connection
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if self._refused is not None:
            await self._refused(scope, declared)


#: How long a server keeps an idle client connection open (seconds).
KEEP_ALIVE_TIMEOUT = 30.0


class ASGIHandler:
    """A :data:`tether.tlsserver.TLSHandler` that serves ``app`` over HTTP/1.1 or HTTP/2."""

    def __init__(self, app: Any, *, keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT) -> None:
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
        try:
            await TCPServer(self._app, self._config, self._context, state, stream)  # type: ignore[arg-type]
        except* KeyError:
            # hypercorn 0.18's HTTP/2 looks up the stream of each DATA frame unguarded, so data
            # still arriving for a request already answered (a 413, a 429) raises KeyError
            # (pgjones/hypercorn#329). It ends this connection only, whose answer has been
            # sent: a known, harmless end, not logged as a failure of the web route.
            log.debug("HTTP/2 connection from %s ended after an early answer", peer_address(stream))
