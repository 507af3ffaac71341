"""Forward one kubectl connection's HTTP/1.1 requests to an API server: the service's I/O.

Each request is judged before anything of it is sent (:class:`Gate`); an admitted one goes to
the API server with the headers the gate chose, its body streamed as it arrives, and the
response comes back as the server sends it, so a watch's events or a follow of logs arrive
one by one and nothing is held whole. An upgrade (``kubectl exec``'s SPDY, a WebSocket) that
the server accepts with ``101 Switching Protocols`` becomes a byte relay both ways. A refusal
is a Kubernetes ``Status`` with the gate's code, and the connection goes on.

One API server connection serves one client connection's requests in turn (kubectl sends one
at a time on a connection); it is opened at the first admitted request and again if the
server closed it. A client that goes away ends the server's connection with it, even in the
middle of a watch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import attrs
import h11
import trio

from tether.api import splice
from tether_kube.status import status_body

__all__ = ["Admitted", "Gate", "Refused", "serve_http"]

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

#: The largest request or response head accepted (kubectl's are a few hundred bytes).
MAX_HEAD = 64 * 1024
#: How long a client may take to send a request's head once it started one.
HEAD_TIMEOUT = 30.0
#: Headers that belong to one hop, never forwarded as they came (an upgrade's ``Connection``
#: and ``Upgrade`` are put back where the request asks for one).
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"upgrade",
    }
)


class Refused(Exception):
    """The gate's no: answered with a ``Status`` of ``code`` saying ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class Admitted:
    """A request the gate let through: the head to send upstream, and what the gate wants
    back when it is answered (``context``, opaque here)."""

    method: bytes
    target: bytes
    headers: Headers
    context: object = None


@attrs.frozen
class Gate:
    """What the service decides about each request.

    :ivar admit: ``(method, target, headers) -> Admitted``; raises :class:`Refused`.
    :ivar answered: called with the admitted request's context and the response code (also
        for a refusal, with ``None`` as context and the refused request's code).
    :ivar refused: called with ``(method, target, Refused)`` for each refusal.
    :ivar session: called with the context and ``"start"`` or ``"end"`` around an upgraded
        connection (exec, attach, port-forward).
    """

    admit: Callable[[bytes, bytes, Headers], Awaitable[Admitted]]
    answered: Callable[[object, int], Awaitable[None]]
    refused: Callable[[bytes, bytes, Refused], Awaitable[None]]
    session: Callable[[object, str], Awaitable[None]]


def _upgrading(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"connection" and b"upgrade" in value.lower() for name, value in headers
    )


def _without_hop_by_hop(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    return [(n, v) for n, v in headers if n.lower() not in _HOP_BY_HOP]


def _upgrade_headers(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    upgrade = [(n, v) for n, v in headers if n.lower() == b"upgrade"]
    return [(b"connection", b"Upgrade"), *upgrade] if upgrade else []


class _Side:
    """One end of the relay: a stream and its h11 state."""

    def __init__(self, stream: trio.abc.Stream, role: type[h11.CLIENT] | type[h11.SERVER]) -> None:
        self.stream = stream
        self.h11 = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)

    async def next_event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(bytes(await self.stream.receive_some(65536)))

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)


async def _send_status(client: _Side, refusal: Refused) -> None:
    body = status_body(refusal.code, refusal.message)
    await client.send(
        h11.Response(
            status_code=refusal.code,
            headers=[
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        )
    )
    await client.send(h11.Data(data=body))
    await client.send(h11.EndOfMessage())


async def _discard_body(client: _Side) -> None:
    while True:
        event = await client.next_event()
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
            return


async def serve_http(
    client_stream: trio.abc.Stream,
    connect: Callable[[], Awaitable[trio.abc.Stream]],
    gate: Gate,
    *,
    unreachable: Callable[[BaseException], Refused],
) -> None:
    """Serve ``client_stream``'s requests until it closes, forwarding what ``gate`` admits to
    the API server ``connect`` opens a stream to. ``unreachable(error)`` says what to answer
    when that fails. Closes the API server's stream; the caller closes the client's."""
    client = _Side(client_stream, h11.SERVER)
    server: _Side | None = None
    try:
        while True:
            try:
                event = await client.next_event()
            except h11.RemoteProtocolError as exc:
                await _answer_malformed(client, exc)
                return
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            assert isinstance(event, h11.Request), event
            request = event
            try:
                admitted = await gate.admit(request.method, request.target, list(request.headers))
            except Refused as refusal:
                await gate.refused(request.method, request.target, refusal)
                await _discard_body(client)
                await _send_status(client, refusal)
                if not _next_cycle(client):
                    return
                continue
            if server is None or server.h11.our_state is not h11.IDLE:
                if server is not None:
                    await trio.aclose_forcefully(server.stream)
                try:
                    server = _Side(await connect(), h11.CLIENT)
                except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                    server = None
                    failed = unreachable(exc)
                    await gate.refused(request.method, request.target, failed)
                    await _discard_body(client)
                    await _send_status(client, failed)
                    if not _next_cycle(client):
                        return
                    continue
            upgrade = _upgrading(request.headers)
            headers = admitted.headers + (_upgrade_headers(request.headers) if upgrade else [])
            await server.send(
                h11.Request(method=admitted.method, target=admitted.target, headers=headers)
            )
            await _forward_body(client, server)
            switched = await _forward_response(client, server, admitted, gate)
            if switched:
                await _relay_upgraded(client, server, admitted, gate)
                server = None
                return
            if not _next_cycle(client):
                return
            if server.h11.our_state is h11.DONE and server.h11.their_state is h11.DONE:
                server.h11.start_next_cycle()
            else:
                await trio.aclose_forcefully(server.stream)
                server = None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("kube: connection ended: %s", exc)
    except h11.LocalProtocolError as exc:  # the API server said something we cannot pass on
        log.info("kube: could not relay the API server's answer: %s", exc)
    except h11.RemoteProtocolError as exc:
        log.info("kube: the API server's answer is not HTTP/1.1: %s", exc)
    finally:
        if server is not None:
            await trio.aclose_forcefully(server.stream)


def _next_cycle(client: _Side) -> bool:
    """Ready the client's connection for its next request; False when it must close."""
    if client.h11.our_state is h11.DONE and client.h11.their_state is h11.DONE:
        client.h11.start_next_cycle()
        return True
    return False


async def _forward_body(client: _Side, server: _Side) -> None:
    """The request's body, as it arrives (none for an upgrade, whose bytes come after)."""
    while True:
        event = await client.next_event()
        if event is h11.PAUSED:  # an upgrade request: its body, if any, is the new protocol's
            await server.send(h11.EndOfMessage())
            return
        if isinstance(event, h11.ConnectionClosed):
            raise trio.BrokenResourceError("the client closed in the middle of a request")
        if isinstance(event, h11.Data):
            await server.send(event)
        elif isinstance(event, h11.EndOfMessage):
            await server.send(event)
            return


async def _forward_response(client: _Side, server: _Side, admitted: Admitted, gate: Gate) -> bool:
    """The API server's response, passed on as it comes; True when it switched protocols.

    While it streams, the client's side is watched: a client that closes (a ``kubectl get
    -w`` stopped with Ctrl-C) ends the response there, and its server connection with it.
    """
    while True:
        event = await server.next_event()
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                await client.send(event)
                await gate.answered(admitted.context, 101)
                return True
            continue  # 100 Continue and the like are this hop's
        break
    if isinstance(event, h11.ConnectionClosed):
        raise trio.BrokenResourceError("the API server closed without answering")
    assert isinstance(event, h11.Response), event
    await client.send(
        h11.Response(
            status_code=event.status_code,
            headers=_without_hop_by_hop(event.headers),
            reason=event.reason,
        )
    )
    await gate.answered(admitted.context, event.status_code)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_client_close, client, nursery.cancel_scope)
        while True:
            event = await server.next_event()
            if isinstance(event, h11.Data):
                await client.send(event)
            elif isinstance(event, h11.EndOfMessage):
                await client.send(h11.EndOfMessage())
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the API server closed in the middle of a response")
        nursery.cancel_scope.cancel()
    if nursery.cancel_scope.cancelled_caught and client.h11.our_state is not h11.DONE:
        raise trio.BrokenResourceError("the client went away during the response")
    return False


async def _watch_client_close(client: _Side, scope: trio.CancelScope) -> None:
    """Read ahead on the client's connection while a response streams: bytes are kept for
    the next request; the end of the stream cancels ``scope``."""
    try:
        while True:
            data = await client.stream.receive_some(65536)
            if not data:
                break
            client.h11.receive_data(bytes(data))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except h11.RemoteProtocolError:
        pass  # said again when the next request is read
    scope.cancel()


async def _relay_upgraded(client: _Side, server: _Side, admitted: Admitted, gate: Gate) -> None:
    """Relay the bytes of a switched protocol both ways until both ends are done."""
    client_early, _ = client.h11.trailing_data
    server_early, _ = server.h11.trailing_data
    await gate.session(admitted.context, "start")
    try:
        if client_early:
            await server.stream.send_all(client_early)
        if server_early:
            await client.stream.send_all(server_early)
        await splice(client.stream, server.stream)
    finally:
        with trio.CancelScope(shield=True):
            await gate.session(admitted.context, "end")


async def _answer_malformed(client: _Side, error: h11.RemoteProtocolError) -> None:
    """A request h11 cannot read: a 400 ``Status`` saying why, then the connection ends."""
    code = error.error_status_hint if 400 <= error.error_status_hint < 500 else 400
    refusal = Refused(code, f"malformed HTTP request: {error}")
    log.info("kube: %s", refusal.message)
    with contextlib.suppress(h11.LocalProtocolError):  # the connection cannot carry even that
        await _send_status(client, refusal)
