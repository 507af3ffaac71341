"""Connecting to targets: an address connects directly, a name is resolved, failures are OSError."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio

from tether.tcpdial import open_tcp


async def _listener(nursery: trio.Nursery, host: str) -> int:
    async def answer(stream: trio.SocketStream) -> None:
        await stream.send_all(b"hello")

    listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host=host))
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_target_named_by_address_or_name_is_reached(host: str) -> None:
    async with trio.open_nursery() as nursery:
        port = await _listener(nursery, "127.0.0.1")
        stream = await open_tcp(host, port)
        assert await stream.receive_some(5) == b"hello"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_bracketed_ipv6_target_is_reached() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    async with trio.open_nursery() as nursery:
        try:
            port = await _listener(nursery, "::1")
        except OSError:
            pytest.skip("no IPv6 loopback here")
        stream = await open_tcp("[::1]", port)
        assert stream.socket.family == socket.AF_INET6
        assert await stream.receive_some(5) == b"hello"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_target_that_refuses_is_an_oserror_and_leaks_no_socket() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(OSError):
            await open_tcp("127.0.0.1", port)
