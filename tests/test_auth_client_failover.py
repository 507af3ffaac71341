"""An auth client given several auth servers fails over without replaying a write.

Real sockets on 127.0.0.1: one server that reads each request and hangs up without answering
(an auth server killed while the request was under way), one that answers, and a port nothing
listens on. Plain HTTP, as TLS plays no part in which request goes where.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
from collections.abc import AsyncIterator

import pytest
import trio

from tether.auth.http_client import AuthClient
from tether.errors import ConnectionLost, Unreachable


class Server:
    """Counts the requests it read; answers ``{"ok": true}``, or hangs up when ``dies``."""

    def __init__(self, *, dies: bool) -> None:
        self.dies = dies
        self.requests: list[bytes] = []
        self.url = ""

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        self.requests.append(data.split(b" ", 1)[0])
        if self.dies:
            await stream.aclose()
            return
        body = b'{"ok": true}'
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        await stream.aclose()


@pytest.fixture
async def servers(nursery: trio.Nursery) -> AsyncIterator[tuple[Server, Server]]:
    dying, answering = Server(dies=True), Server(dies=False)
    for server in (dying, answering):
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
        )
        server.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    yield dying, answering


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_read_whose_server_hung_up_is_asked_of_the_next_server(
    servers: tuple[Server, Server],
) -> None:
    dying, answering = servers
    async with AuthClient([dying.url, answering.url], ssl.create_default_context()) as client:
        assert await client.call("GET", "/v1/cluster") == {"ok": True}
        assert (dying.requests, answering.requests) == ([b"GET"], [b"GET"])
        assert client.base_url == answering.url  # and it stays there
        await client.call("GET", "/v1/cluster")
        assert (dying.requests, answering.requests) == ([b"GET"], [b"GET", b"GET"])


async def test_a_write_whose_server_hung_up_is_not_replayed_elsewhere(
    servers: tuple[Server, Server],
) -> None:
    dying, answering = servers
    async with AuthClient([dying.url, answering.url], ssl.create_default_context()) as client:
        with pytest.raises(ConnectionLost, match=r"connection to 127\.0\.0\.1:\d+ failed") as lost:
            await client.call("POST", "/v1/login/password", json={"username": "alice"})
    # the caller learns which auth server failed, that the login may have been done, and
    # that another auth server takes it again
    assert lost.value.message.startswith(
        f"auth server {dying.url} failed while handling the request, which it may or may not "
        "have done"
    )
    assert lost.value.hint == "try again: the cluster's other auth servers take the next request"
    assert dying.requests == [b"POST"]
    assert answering.requests == []  # the login may have been applied: not sent twice


async def test_a_write_no_server_received_goes_to_the_next_one_and_stays_there(
    servers: tuple[Server, Server], caplog: pytest.LogCaptureFixture
) -> None:
    _, answering = servers
    down = _closed_port()
    caplog.set_level(logging.WARNING, logger="tether.auth.http_client")
    async with AuthClient([down, answering.url], ssl.create_default_context()) as client:
        for _ in range(3):
            assert await client.call("POST", "/v1/resources", json={}) == {"ok": True}
    assert answering.requests == [b"POST"] * 3
    failovers = [r.getMessage() for r in caplog.records if "requests go to" in r.getMessage()]
    assert len(failovers) == 1, failovers  # logged once, not once per request
    assert "Connection refused" in failovers[0]


async def test_a_frozen_server_is_passed_over_without_waiting_the_whole_timeout(
    servers: tuple[Server, Server], caplog: pytest.LogCaptureFixture
) -> None:
    _, answering = servers
    caplog.set_level(logging.WARNING, logger="tether.auth.http_client")
    # a frozen auth server: its kernel completes TCP handshakes, the TLS one never starts
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(16)
        url = f"https://127.0.0.1:{frozen.getsockname()[1]}"
        async with AuthClient(
            [url, answering.url], ssl.create_default_context(), timeout=120
        ) as client:
            # the user's deadline, far shorter than the request timeout: nothing reached
            # the frozen server, so even a write goes on to the next one
            with trio.fail_after(60):
                assert await client.call("POST", "/v1/login/password", json={}) == {"ok": True}
            assert client.base_url == answering.url
    assert answering.requests == [b"POST"]
    (failover,) = [r.getMessage() for r in caplog.records if "requests go to" in r.getMessage()]
    assert f"cannot connect to {url.removeprefix('https://')}" in failover


async def test_no_server_reachable_names_each_one() -> None:
    first, second = _closed_port(), _closed_port()
    async with AuthClient([first, second], ssl.create_default_context()) as client:
        with pytest.raises(Unreachable) as refused:
            await client.call("GET", "/v1/cluster")
    message = str(refused.value)
    assert message.startswith("no auth server could be reached")
    assert first.removeprefix("http://") in message and second.removeprefix("http://") in message
