"""The service's HTTP relay in memory: kubectl's side and the API server's side are memory
streams the test speaks raw HTTP/1.1 on, so that what only timing shows is seen for sure:
a response goes on while the server is still sending it, a client that leaves ends the server's
connection, a refusal leaves the connection usable, an upgrade becomes a byte relay."""

from __future__ import annotations

import json

import trio
import trio.testing
from tether_kube.forward import Admitted, Gate, Headers, Refused, serve_http

GET_WATCH = b"GET /api/v1/namespaces/team/configmaps?watch=true HTTP/1.1\r\nHost: proxy\r\n\r\n"


class Recorder:
    """A gate that lets everything through but ``/forbidden``, and remembers what it saw."""

    def __init__(self) -> None:
        self.answered: list[int] = []
        self.sessions: list[str] = []

    async def admit(self, method: bytes, target: bytes, headers: Headers) -> Admitted:
        if target.startswith(b"/forbidden"):
            raise Refused(403, "Tether: not for you")
        return Admitted(method, target, [*headers, (b"impersonate-user", b"alice")], target)

    async def answered_(self, context: object, code: int) -> None:
        self.answered.append(code)

    async def refused(self, method: bytes, target: bytes, refusal: Refused) -> None:
        self.answered.append(refusal.code)

    async def session(self, context: object, phase: str) -> None:
        self.sessions.append(phase)

    def gate(self) -> Gate:
        return Gate(
            admit=self.admit, answered=self.answered_, refused=self.refused, session=self.session
        )


async def _read_until(stream: trio.abc.Stream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


def _unreachable(error: BaseException) -> Refused:
    return Refused(503, f"unreachable: {error}")


def _relay(nursery: trio.Nursery, recorder: Recorder) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Start the relay between two memory stream pairs: kubectl's end and the API server's."""
    client, service_side = trio.testing.memory_stream_pair()
    upstream_service_side, server = trio.testing.memory_stream_pair()

    async def connect() -> trio.abc.Stream:
        return upstream_service_side

    nursery.start_soon(
        lambda: serve_http(service_side, connect, recorder.gate(), unreachable=_unreachable)
    )
    return client, server


async def test_a_watch_response_is_passed_on_while_the_server_still_sends_it() -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        client, server = _relay(nursery, recorder)
        await client.send_all(GET_WATCH)
        request = await _read_until(server, b"\r\n\r\n")
        assert b"impersonate-user: alice" in request.lower()
        await server.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        event = b'{"type":"ADDED"}\n'
        await server.send_all(b"%x\r\n%s\r\n" % (len(event), event))
        # the event arrives although the server has not finished its response
        received = await _read_until(client, b'{"type":"ADDED"}')
        assert b"200 OK" in received and event in received
        # kubectl is stopped: its connection ends, and so does the server's
        await client.aclose()
        with trio.fail_after(5):
            assert await _read_until(server, b"never") == b""
        nursery.cancel_scope.cancel()
    assert recorder.answered == [200]


async def test_a_refused_request_gets_a_status_and_the_connection_goes_on() -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        client, server = _relay(nursery, recorder)
        await client.send_all(b"GET /forbidden HTTP/1.1\r\nHost: proxy\r\n\r\n")
        refused = await _read_until(client, b"}")
        head, _, body = refused.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403 ")
        assert json.loads(body) == {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Tether: not for you", "reason": "Forbidden", "code": 403,
        }  # fmt: skip
        await client.send_all(b"GET /version HTTP/1.1\r\nHost: proxy\r\n\r\n")
        await _read_until(server, b"\r\n\r\n")
        await server.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        assert (await _read_until(client, b"{}")).startswith(b"HTTP/1.1 200 ")
        nursery.cancel_scope.cancel()
    assert recorder.answered == [403, 200]


async def test_an_upgrade_becomes_a_byte_relay_and_is_a_session() -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        client, server = _relay(nursery, recorder)
        await client.send_all(
            b"POST /api/v1/namespaces/team/pods/web/exec?command=sh HTTP/1.1\r\nHost: proxy\r\n"
            b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: "
            b"v4.channel.k8s.io\r\n\r\n"
        )
        request = await _read_until(server, b"\r\n\r\n")
        assert b"upgrade: SPDY/3.1" in request or b"Upgrade: SPDY/3.1" in request
        assert b"connection: Upgrade" in request or b"Connection: Upgrade" in request
        await server.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            b"\r\nframes from the server"
        )
        assert b"frames from the server" in await _read_until(client, b"frames from the server")
        await client.send_all(b"frames from kubectl")
        assert await _read_until(server, b"kubectl") == b"frames from kubectl"
        await client.aclose()
        with trio.fail_after(5):
            assert await _read_until(server, b"never") == b""
        nursery.cancel_scope.cancel()
    assert recorder.answered == [101]
    assert recorder.sessions == ["start", "end"]


async def test_an_api_server_that_cannot_be_reached_is_a_503_status() -> None:
    client, service_side = trio.testing.memory_stream_pair()
    recorder = Recorder()

    async def connect() -> trio.abc.Stream:
        raise OSError(111, "Connection refused")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_http(service_side, connect, recorder.gate(), unreachable=_unreachable)
        )
        await client.send_all(b"GET /version HTTP/1.1\r\nHost: proxy\r\n\r\n")
        answer = await _read_until(client, b"}")
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"unreachable: [Errno 111] Connection refused" in answer
