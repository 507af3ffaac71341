"""The streams of a tunnel as trio streams: what handlers and openers read and write.

Separate from the connection driver (:mod:`tether.tunnel.transport`) because this is the
application's side of a tunnel: a :class:`MuxStream` buffers what arrived, hands credit back
as the application consumes it and waits for window when sending, so that code written for a
socket works over a tunnel; an :class:`IncomingStream` is a peer's request to open one. The
driver feeds them through their ``_deliver``/``_end``/``_break``/``_window_changed`` methods.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import attrs
import trio

from tether.tunnel._errors import StreamClosedError
from tether.tunnel._state import StreamState

if TYPE_CHECKING:
    from tether.tunnel.transport import TunnelConnection

__all__ = ["IncomingStream", "MuxStream", "StreamHandler", "Waiter"]


class Waiter:
    """A condition tasks wait on until something changed; cheap when nobody waits."""

    __slots__ = ("_lot",)

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()

    async def wait(self) -> None:
        await self._lot.park()

    def wake(self) -> None:
        if self._lot:
            self._lot.unpark_all()


class MuxStream(trio.abc.HalfCloseableStream):
    """One stream of a tunnel. Create through :meth:`TunnelConnection.open_stream` or
    :meth:`IncomingStream.accept`.

    ``receive_some`` returns what arrived (credit goes back to the peer as the application
    consumes it, so a slow reader holds the peer back instead of growing memory);
    ``send_all`` returns once the mux took every byte, waiting for window when the peer reads
    slowly; ``send_eof`` half-closes; ``aclose`` closes like a TCP socket (see
    :meth:`TunnelConnection._close_stream`).
    """

    def __init__(
        self,
        conn: TunnelConnection,
        stream_id: int,
        target: str,
        metadata: Mapping[str, str],
    ) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.target = target
        self.metadata = metadata
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._sent_eof = False
        self._closed = False
        self._broken: str | None = None
        self._readable = Waiter()
        self._writable = Waiter()
        self._receiving = False
        self._sending = False

    def __repr__(self) -> str:
        return f"<MuxStream {self.stream_id} to {self.target!r}>"

    # --- fed by the connection's reader ---------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._readable.wake()

    def _end(self) -> None:
        self._eof = True
        self._readable.wake()

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self._readable.wake()
        self._writable.wake()

    def _window_changed(self) -> None:
        self._writable.wake()

    # --- trio.abc.HalfCloseableStream ------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while not self._chunks:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                if self._eof:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                if self._broken is not None:
                    raise trio.BrokenResourceError(self._broken)
                await self._readable.wait()
                waited = True
            data = self._take(max_bytes)
            self.conn._consumed(self.stream_id, len(data))
            if not waited:  # waiting was this call's checkpoint already (a task switch less)
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    def _take(self, max_bytes: int | None) -> bytes:
        # Hand over as many whole chunks as fit in one piece: one join costs less than the
        # extra task switches and syscalls of passing bulk data on in small pieces.
        chunks = self._chunks
        first = chunks.popleft()
        if max_bytes is not None and len(first) > max_bytes:
            data = first[:max_bytes]
            chunks.appendleft(first[max_bytes:])
        elif chunks and (max_bytes is None or len(first) + len(chunks[0]) <= max_bytes):
            parts = [first]
            size = len(first)
            while chunks and (max_bytes is None or size + len(chunks[0]) <= max_bytes):
                part = chunks.popleft()
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        else:
            data = first
        self._buffered -= len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data)
            if view.itemsize != 1 or view.ndim != 1:
                view = view.cast("B")
            self._check_sendable()
            while view:
                self._check_sendable()
                try:
                    taken = self.conn.mux.send_data(self.stream_id, view)
                except StreamClosedError:
                    raise trio.BrokenResourceError(self._broken or "stream was reset") from None
                if taken:
                    view = view[taken:]
                    self.conn._flush_soon()
                else:
                    await self._writable.wait()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._sent_eof:
            raise trio.ClosedResourceError("send_eof was called on this stream")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._check_sendable()
        while self.conn.mux.local_send_window(self.stream_id) == 0 and self._broken is None:
            await self._writable.wait()
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._sent_eof or self._broken is not None:
            return
        self._sent_eof = True
        try:
            self.conn.mux.end_stream(self.stream_id)
        except StreamClosedError:
            return
        self.conn._flush_soon()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.conn._close_stream(self)
            self._readable.wake()
            self._writable.wake()
        await trio.lowlevel.checkpoint()


@attrs.define
class IncomingStream:
    """A stream the peer asked to open; the handler accepts or rejects it."""

    conn: TunnelConnection
    stream_id: int
    target: str
    metadata: Mapping[str, str]
    answered: bool = False
    stream: MuxStream | None = None

    def accept(self) -> MuxStream:
        """Accept: data may flow both ways. Returns the stream to use; it is closed when the
        handler returns (as a socket server closes a connection when its handler ends)."""
        self.answered = True
        stream = self.conn._register(self.stream_id, self.target, self.metadata)
        self.stream = stream
        self.conn.mux.accept_stream(self.stream_id)
        self.conn._flush_soon()
        return stream

    def reject(self, reason: str) -> None:
        """Refuse with a reason the opener's :class:`StreamRefused` will carry; nothing to
        do once the stream is gone (the peer reset it, or the tunnel ended meanwhile)."""
        self.answered = True
        if self.conn.mux.stream_state(self.stream_id) is StreamState.CLOSED:
            return
        self.conn.mux.reject_stream(self.stream_id, reason)
        self.conn._flush_soon()


StreamHandler = Callable[[IncomingStream], Awaitable[None]]
