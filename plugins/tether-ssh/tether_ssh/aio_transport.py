"""asyncssh on a trio stream: an asyncio transport whose bytes go straight to the stream.

asyncssh runs on an asyncio transport. The first way to give it one over a trio stream was a
``socket.socketpair()``: asyncssh owned one end and trio tasks copied between the other end
and the stream. Each chunk then cost two more syscalls, a kernel copy and a wake-up of each
loop, per direction and per side, and every SSH packet asyncssh wrote was a ``send`` of its
own. Measured through a node in tunnel mode, dropping the socket pair cut the node's CPU per
MB by a sixth and the client's by a tenth (``git log`` has the figures).

:class:`StreamTransport` skips the socket. ``write`` appends to a buffer that a trio task sends
on the stream, many packets in one ``send_all``; a trio task hands what the stream receives to
the protocol's ``data_received``. trio_asyncio runs asyncio's callbacks in trio's thread, so
both tasks call the protocol directly (in the loop's context, as asyncio would) and asyncssh
calls the transport's methods directly; nothing crosses a thread or a socket.

The trio side owns everything: :func:`open_stream_tunnel` runs the two tasks in its nursery
and yields a :class:`StreamTunnel`, which asyncssh's ``tunnel`` option accepts
(``asyncssh.connect(..., tunnel=tunnel)``, ``asyncssh.connect_reverse(..., tunnel=tunnel)``
for a server) and whose ``create_connection`` attaches asyncssh's connection to the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
import trio_asyncio

__all__ = ["StreamTransport", "StreamTunnel", "open_stream_tunnel"]

log = logging.getLogger(__name__)

#: How much one receive takes from the stream: large, so bulk data costs few wake-ups.
_CHUNK = 256 * 1024
#: Unsent bytes above which the protocol is asked to pause writing, and below which it may go
#: on. asyncssh's connection ignores both (its channels' SSH windows bound what it writes), but
#: asyncio protocols are owed them.
_HIGH_WATER = 4 * _CHUNK
_LOW_WATER = _CHUNK
#: Errors that mean the stream is gone: the peer left, or it was closed under us.
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class StreamTransport(asyncio.Transport):
    """An asyncio transport over a trio stream; its trio side is run by :func:`open_stream_tunnel`.

    Differences from a socket transport, each on purpose:

    - ``abort()`` still sends what was written before it. asyncssh disconnects by writing its
      disconnect message and aborting at once; a socket has taken those bytes into the kernel
      by then, so the peer still learns why. The owner bounds how long the last bytes may take.
    - ``write_eof()`` half-closes only streams that can (:class:`trio.abc.HalfCloseableStream`,
      such as a tunnel's stream); TLS cannot, and ``can_write_eof()`` says so.
    - Closing ends the stream's sending side after the last byte (EOF on a half-closeable
      stream, ``aclose`` otherwise); the owner closes the stream itself when it is done.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: asyncio.BaseProtocol,
        loop: asyncio.AbstractEventLoop,
        extra: dict[str, Any],
    ) -> None:
        super().__init__(extra)
        self._stream = stream
        self._protocol = protocol
        self._loop = loop
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._in_flight = 0
        self._high_water, self._low_water = _HIGH_WATER, _LOW_WATER
        self._writing_paused = False
        self._eof_wanted = False
        self._closing = False
        self._lost = False
        self._reading = trio.Event()
        self._reading.set()
        self._receiving = trio.CancelScope()  # cancelled when reading stops for good
        self._wake_sender = trio.Event()
        self._done = trio.Event()  # the protocol has had connection_lost

    # --- asyncio.Transport: called by the protocol --------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_wanted:
            raise RuntimeError("cannot write after write_eof()")
        if self._closing or not data:
            return  # as a socket transport does after close: the bytes have nowhere to go
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        self._wake_sender.set()
        if not self._writing_paused and self.get_write_buffer_size() > self._high_water:
            self._writing_paused = True
            self._call_protocol("pause_writing")

    def write_eof(self) -> None:
        if not self.can_write_eof():
            raise NotImplementedError("this stream cannot half-close (TLS)")
        if self._closing or self._eof_wanted:
            return
        self._eof_wanted = True
        self._wake_sender.set()

    def can_write_eof(self) -> bool:
        return isinstance(self._stream, trio.abc.HalfCloseableStream)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._receiving.cancel()
        self._wake_sender.set()

    def abort(self) -> None:
        self.close()  # see the class docstring: what was written still goes out

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        if self._reading.is_set():
            self._reading = trio.Event()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set() and not self._closing

    def get_write_buffer_size(self) -> int:
        return self._buffered + self._in_flight

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = _HIGH_WATER if high is None else high
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    # --- the trio side ------------------------------------------------------------------------

    async def wait_closed(self) -> None:
        """Until the transport closed and the protocol has had ``connection_lost``."""
        await self._done.wait()

    def lose(self, exc: Exception | None) -> None:
        """End the transport now and tell the protocol (once): the stream failed, or its owner
        stopped it."""
        self._closing = True
        self._receiving.cancel()
        self._wake_sender.set()
        if self._lost:
            return
        self._lost = True
        self._buffer.clear()
        self._buffered = 0
        try:
            self._call_protocol("connection_lost", exc)
        finally:
            self._done.set()

    def _call_protocol(self, name: str, *args: Any) -> Any:
        """Call a protocol callback in the loop's context, as asyncio would call it.

        An error there is the protocol's bug, not the stream's: it is logged and ends the
        connection, as asyncio's own transports do.
        """
        token = trio_asyncio.current_loop.set(self._loop)
        try:
            return getattr(self._protocol, name)(*args)
        except Exception as exc:  # a broken protocol must not take the owner's nursery down
            log.exception("ssh: %s of %r failed", name, self._protocol)
            if name != "connection_lost":
                self.lose(exc)
            return None
        finally:
            trio_asyncio.current_loop.reset(token)

    async def receive_loop(self) -> None:
        """Hand what the stream receives to the protocol until EOF, an error, or closing."""
        with self._receiving:
            try:
                while not self._closing:
                    await self._reading.wait()
                    data = await self._stream.receive_some(_CHUNK)
                    await self._reading.wait()  # paused while the receive was under way
                    if self._closing:
                        return
                    if not data:
                        if not self._call_protocol("eof_received"):
                            self.close()
                        return
                    self._call_protocol("data_received", data)
            except _STREAM_ERRORS as exc:
                if not self._closing:  # else the sender closed it, and tells the protocol
                    self.lose(_connection_error(exc, "receiving"))

    async def send_loop(self) -> None:
        """Send what the protocol writes; once closing, send the rest, end the stream's sending
        side, and tell the protocol the connection is lost."""
        eof_sent = False
        try:
            while not self._lost:
                if self._buffer:
                    data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
                    self._buffer.clear()
                    self._in_flight, self._buffered = len(data), 0
                    await self._stream.send_all(data)
                    self._in_flight = 0
                    if self._writing_paused and self.get_write_buffer_size() <= self._low_water:
                        self._writing_paused = False
                        self._call_protocol("resume_writing")
                elif (self._eof_wanted or self._closing) and not eof_sent:
                    eof_sent = True
                    if isinstance(self._stream, trio.abc.HalfCloseableStream):
                        await self._stream.send_eof()
                    elif self._closing:
                        await self._stream.aclose()
                elif self._closing:
                    self.lose(None)
                else:
                    self._wake_sender = trio.Event()
                    await self._wake_sender.wait()
        except _STREAM_ERRORS as exc:
            self.lose(_connection_error(exc, "sending"))


def _connection_error(exc: BaseException, doing: str) -> ConnectionError:
    """The stream's failure as the error an asyncio protocol expects from a socket."""
    error = ConnectionResetError(f"the connection broke while {doing}: {exc or type(exc).__name__}")
    error.__cause__ = exc
    return error


class StreamTunnel:
    """What asyncssh's ``tunnel`` option takes: the one connection it opens goes on the stream.

    Made by :func:`open_stream_tunnel`; asyncssh calls :meth:`create_connection` once, on the
    asyncio loop. *peername* and *sockname* answer ``get_extra_info`` (asyncssh logs them, and
    a server puts the peer in ``SSH_CLIENT``); a stream has no socket, so ``'socket'`` is None.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        peername: tuple[str, int] | None = None,
        sockname: tuple[str, int] | None = None,
    ) -> None:
        self._stream = stream
        self._extra: dict[str, Any] = {"peername": peername, "sockname": sockname, "socket": None}
        self.transport: StreamTransport | None = None
        self._attached = trio.Event()

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
    ) -> tuple[StreamTransport, asyncio.BaseProtocol]:
        """Attach a new protocol to the stream, as ``loop.create_connection`` would to a socket."""
        if self.transport is not None:
            raise OSError("this stream already carries a connection")
        protocol = protocol_factory()
        transport = StreamTransport(
            self._stream, protocol, asyncio.get_running_loop(), dict(self._extra)
        )
        self.transport = transport
        transport._call_protocol("connection_made", transport)
        self._attached.set()
        return transport, protocol

    async def wait_drained(self) -> None:
        """(trio) Until the connection's last bytes went out and it is closed."""
        if self.transport is not None:
            await self.transport.wait_closed()

    async def _run(self) -> None:
        await self._attached.wait()
        assert self.transport is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.transport.receive_loop)
            nursery.start_soon(self.transport.send_loop)


@contextlib.asynccontextmanager
async def open_stream_tunnel(
    stream: trio.abc.Stream,
    *,
    drain_timeout: float,
    peername: tuple[str, int] | None = None,
    sockname: tuple[str, int] | None = None,
) -> AsyncIterator[StreamTunnel]:
    """A :class:`StreamTunnel` on *stream*, whose transport's tasks run for the block.

    When the block ends, the connection's last bytes (asyncssh's disconnect message) get up to
    *drain_timeout* seconds to go out; then the tasks stop, the protocol learns the connection
    is lost if it has not yet (so an SSH server hangs its sessions up when its owner is
    cancelled), and *stream* is closed.
    """
    tunnel = StreamTunnel(stream, peername=peername, sockname=sockname)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tunnel._run)
            try:
                yield tunnel
                if tunnel.transport is not None:
                    tunnel.transport.close()
                    with trio.move_on_after(drain_timeout):
                        await tunnel.transport.wait_closed()
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if tunnel.transport is not None:
            tunnel.transport.lose(None)
        await trio.aclose_forcefully(stream)
