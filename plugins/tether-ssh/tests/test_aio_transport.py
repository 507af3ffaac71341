"""The asyncio transport asyncssh runs on, driven over in-memory and real trio streams.

Each test plays one side of a connection: a recording asyncio protocol attached through
:class:`tether_ssh.aio_transport.StreamTunnel` (as asyncssh attaches its connection), and the
trio stream's far end, driven directly: what asyncssh would see when its peer half-closes,
reads slowly, vanishes, or when the connection's owner is cancelled.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
import trio_asyncio
from tether_ssh.aio_transport import StreamTransport, StreamTunnel, open_stream_tunnel


class Recorder(asyncio.Protocol):
    """A protocol that keeps what the transport tells it, with trio events to wait on."""

    def __init__(self, *, keep_open_on_eof: bool = False) -> None:
        self.received = bytearray()
        self.events: list[str] = []
        self.lost_with: Exception | None = None
        self.keep_open_on_eof = keep_open_on_eof
        self.arrived = trio.Event()
        self.eof = trio.Event()
        self.lost = trio.Event()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.arrived.set()

    def eof_received(self) -> bool:
        self.events.append("eof")
        self.eof.set()
        return self.keep_open_on_eof

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost_with = exc
        self.lost.set()

    async def wait_for(self, size: int) -> bytes:
        while len(self.received) < size:
            self.arrived = trio.Event()
            await self.arrived.wait()
        return bytes(self.received)


@pytest.fixture
async def loop() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop():
        yield


async def _attach(tunnel: StreamTunnel, protocol: Recorder) -> StreamTransport:
    transport, attached = await trio_asyncio.aio_as_trio(tunnel.create_connection)(
        lambda: protocol, "node", 22
    )
    assert attached is protocol and protocol.events == ["made"]
    return transport


async def _receive_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


async def test_bytes_cross_both_ways_and_the_peer_is_who_the_owner_says(loop: None) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    protocol = Recorder()
    async with open_stream_tunnel(ours, drain_timeout=1, peername=("203.0.113.7", 4242)) as tunnel:
        transport = await _attach(tunnel, protocol)
        assert transport.get_extra_info("peername") == ("203.0.113.7", 4242)
        assert transport.get_extra_info("socket") is None
        transport.write(b"SSH-2.0-")
        transport.writelines([b"Tether", b"\r\n"])
        assert await theirs.receive_some() == b"SSH-2.0-Tether\r\n"
        await theirs.send_all(b"SSH-2.0-peer\r\n")
        assert await protocol.wait_for(14) == b"SSH-2.0-peer\r\n"


async def test_the_peers_half_close_is_eof_and_ours_reaches_it(loop: None) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    protocol = Recorder(keep_open_on_eof=True)
    async with open_stream_tunnel(ours, drain_timeout=1) as tunnel:
        transport = await _attach(tunnel, protocol)
        await theirs.send_all(b"last words")
        await theirs.send_eof()
        with trio.fail_after(5):
            await protocol.eof.wait()
        assert protocol.received == b"last words" and not protocol.lost.is_set()
        # The other direction still works until we half-close it too.
        assert transport.can_write_eof()
        transport.write(b"reply")
        transport.write_eof()
        with pytest.raises(RuntimeError):
            transport.write(b"more")
        with trio.fail_after(5):
            assert await _receive_until_eof(theirs) == b"reply"
        transport.close()
        with trio.fail_after(5):
            await protocol.lost.wait()
    assert protocol.events == ["made", "eof", "lost"] and protocol.lost_with is None


async def test_eof_closes_the_transport_unless_the_protocol_keeps_it(loop: None) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    protocol = Recorder()  # as asyncssh: EOF ends the connection
    async with open_stream_tunnel(ours, drain_timeout=1) as tunnel:
        await _attach(tunnel, protocol)
        await theirs.send_eof()
        with trio.fail_after(5):
            await protocol.lost.wait()
        assert await _receive_until_eof(theirs) == b""
    assert protocol.events == ["made", "eof", "lost"] and protocol.lost_with is None


async def test_abort_still_sends_what_was_written_before_it(loop: None) -> None:
    """asyncssh writes its disconnect message and aborts at once; the peer must still get it."""
    ours, theirs = trio.testing.memory_stream_pair()
    protocol = Recorder()
    async with open_stream_tunnel(ours, drain_timeout=5) as tunnel:
        transport = await _attach(tunnel, protocol)
        transport.write(b"disconnect: bye")
        transport.abort()
        assert transport.is_closing()
        transport.write(b"ignored after close")
        with trio.fail_after(5):
            assert await _receive_until_eof(theirs) == b"disconnect: bye"
            await protocol.lost.wait()
    assert protocol.lost_with is None


async def test_a_slow_reader_pauses_the_writer_and_reading_resumes_it(loop: None) -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()  # send_all waits for the reader
    protocol = Recorder()
    async with open_stream_tunnel(ours, drain_timeout=1) as tunnel:
        transport = await _attach(tunnel, protocol)
        transport.set_write_buffer_limits(high=64, low=16)
        for _ in range(10):
            transport.write(b"x" * 32)
        assert protocol.events == ["made", "pause"]
        assert transport.get_write_buffer_size() == 320
        received = bytearray()
        with trio.fail_after(5):
            while len(received) < 320:
                received += await theirs.receive_some()
        await trio.testing.wait_all_tasks_blocked()
        assert protocol.events == ["made", "pause", "resume"]
        assert transport.get_write_buffer_size() == 0


async def test_paused_reading_holds_data_back_until_resumed(loop: None) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    protocol = Recorder()
    async with open_stream_tunnel(ours, drain_timeout=1) as tunnel:
        transport = await _attach(tunnel, protocol)
        await trio.testing.wait_all_tasks_blocked()  # the receiver waits in receive_some
        transport.pause_reading()
        assert not transport.is_reading()
        await theirs.send_all(b"held")
        await trio.testing.wait_all_tasks_blocked()
        assert protocol.received == b""
        await theirs.send_all(b" back")  # and no further receive while paused
        await trio.testing.wait_all_tasks_blocked()
        assert protocol.received == b""
        transport.resume_reading()
        with trio.fail_after(5):
            assert await protocol.wait_for(9) == b"held back"


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        client = await trio.testing.open_stream_to_socket_listener(listener)
        server = await listener.accept()
    return client, server


class _VanishingPeer(trio.abc.ReceiveStream):
    """The receiving half of a stream whose peer disappears at :meth:`vanish` (a tunnel lost
    with its node): receiving fails instead of ending."""

    def __init__(self) -> None:
        self._gone = trio.Event()

    def vanish(self) -> None:
        self._gone.set()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await self._gone.wait()
        raise trio.BrokenResourceError("the tunnel is gone")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_peer_that_vanishes_mid_transfer_is_a_connection_error(loop: None) -> None:
    to_peer, from_us = trio.testing.memory_stream_one_way_pair()
    peer = _VanishingPeer()
    protocol = Recorder()
    async with open_stream_tunnel(trio.StapledStream(to_peer, peer), drain_timeout=1) as tunnel:
        transport = await _attach(tunnel, protocol)
        transport.write(b"x" * 100_000)
        assert await from_us.receive_some(10) == b"x" * 10
        peer.vanish()
        with trio.fail_after(5):
            await protocol.lost.wait()
        assert transport.is_closing()
        transport.write(b"y")  # writes after the loss go nowhere, quietly
    assert protocol.events == ["made", "lost"]
    assert isinstance(protocol.lost_with, ConnectionResetError)
    assert str(protocol.lost_with) == "the connection broke while receiving: the tunnel is gone"


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        client = await trio.testing.open_stream_to_socket_listener(listener)
        server = await listener.accept()
    return client, server


async def test_a_reset_from_the_peers_kernel_loses_the_connection(loop: None) -> None:
    ours, theirs = await _tcp_pair()
    protocol = Recorder()
    async with open_stream_tunnel(ours, drain_timeout=1) as tunnel:
        transport = await _attach(tunnel, protocol)
        transport.write(b"x" * 100_000)
        assert await theirs.receive_some(10) == b"x" * 10
        # A crashed peer's kernel resets the connection, with our data unread. Which of our
        # tasks meets the reset first decides whether it is an error or an end (Linux reports
        # the error once); either way the protocol hears once that the connection is gone.
        theirs.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        theirs.socket.close()
        with trio.fail_after(5):
            await protocol.lost.wait()
    assert protocol.events[0] == "made" and protocol.events[-1] == "lost"
    assert protocol.events.count("lost") == 1
    assert protocol.lost_with is None or isinstance(protocol.lost_with, ConnectionResetError)


async def test_cancelling_the_owner_loses_the_connection_and_closes_the_stream(
    loop: None,
) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    protocol = Recorder()
    with trio.CancelScope() as owner:
        async with open_stream_tunnel(ours, drain_timeout=1) as tunnel:
            await _attach(tunnel, protocol)
            owner.cancel()
            await trio.sleep_forever()
    assert protocol.events == ["made", "lost"] and protocol.lost_with is None
    with trio.fail_after(5):
        assert await _receive_until_eof(theirs) == b""
    with pytest.raises(trio.BrokenResourceError):
        await theirs.send_all(b"anyone there?")


async def test_a_peer_that_stops_reading_holds_closing_up_only_for_the_drain_timeout(
    loop: None,
) -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()
    protocol = Recorder()
    with trio.fail_after(5):
        async with open_stream_tunnel(ours, drain_timeout=0.2) as tunnel:
            transport = await _attach(tunnel, protocol)
            transport.write(b"never read")
            transport.abort()
    assert protocol.events == ["made", "lost"]
    del theirs


async def test_a_second_connection_on_one_stream_is_refused(loop: None) -> None:
    ours, _theirs = trio.testing.memory_stream_pair()
    async with open_stream_tunnel(ours, drain_timeout=1) as tunnel:
        await _attach(tunnel, Recorder())
        with pytest.raises(OSError, match="already carries a connection"):
            await _attach(tunnel, Recorder())
