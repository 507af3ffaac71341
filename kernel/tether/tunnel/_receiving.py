"""Receiving: parse the bytes a peer sent into frames, check them, and apply them.

Separate from the commands (:mod:`tether.tunnel.mux`) because this is where the peer is not
trusted: every header is checked before its payload is buffered, DATA payloads are handed out
as they arrive without being buffered (the hot path of a bulk transfer), and any violation
becomes a GOAWAY plus ``ConnectionTerminated`` instead of an exception. Sans-IO: no sockets,
no trio.
"""

from __future__ import annotations

from typing import Final

from tether.tunnel import _frames as fr
from tether.tunnel._core import ConnectionCore, Stream, encode_reason
from tether.tunnel._errors import ErrorCode, RemoteProtocolError
from tether.tunnel._events import (
    DataReceived,
    Event,
    GoAwayReceived,
    PingReceived,
    PongReceived,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
    WindowUpdated,
)
from tether.tunnel._frames import FrameType
from tether.tunnel._state import CAN_RECEIVE_DATA, Input, StreamState

__all__ = ["ConnectionReceiver"]

_DATA: Final = int(FrameType.DATA)
_MAX_TYPE: Final = max(FrameType)
_HEADER_SIZE: Final = fr.HEADER_SIZE
_unpack_header: Final = fr.HEADER.unpack_from
#: Largest copied DataReceived chunk. Below glibc's default mmap threshold (128 KiB): bigger
#: ``bytes`` objects may each cost an mmap/munmap pair, which measured 4-9x slower in bulk.
_MAX_DELIVERY: Final = 64 * 1024


class ConnectionReceiver(ConnectionCore):
    """Turns the peer's bytes into events; :class:`~tether.tunnel.mux.Connection` adds the
    commands."""

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the transport; return the events they complete, in order.

        ``b""`` means the transport closed. A peer breaking the protocol never raises here: the
        mux queues a GOAWAY saying why and returns ``ConnectionTerminated`` as the last event.
        After termination, input is ignored.
        """
        events: list[Event] = []
        if self._terminated is not None:
            return events
        view = memoryview(data)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        if not view:
            partial = bool(self._buf or self._pending_header or self._data_remaining)
            events.append(
                self._terminate(
                    ErrorCode.PROTOCOL_ERROR if partial else ErrorCode.NO_ERROR,
                    "transport closed in the middle of a frame" if partial else "transport closed",
                    by_peer=True,
                )
            )
            return events
        try:
            self._receive(data if type(data) is bytes else None, view, events)
        except RemoteProtocolError as exc:
            if exc.error_code == ErrorCode.ENHANCE_YOUR_CALM:
                self._drop_output()
            self._queue(
                fr.encode_goaway(self._highest_remote_id, exc.error_code, encode_reason(str(exc)))
            )
            events.append(self._terminate(exc.error_code, str(exc), by_peer=False))
        return events

    def _receive(self, whole: bytes | None, view: memoryview, events: list[Event]) -> None:
        """Parse frames out of ``view``; buffer only headers and control payloads."""
        size = len(view)
        pos = 0
        buf = self._buf
        while pos < size and self._terminated is None:
            remaining = self._data_remaining
            if remaining:
                if whole is not None and pos == 0 and remaining >= size:
                    take = size
                    chunk = whole  # the whole read is payload: hand it over uncopied
                else:
                    take = min(remaining, size - pos, _MAX_DELIVERY)
                    chunk = view[pos : pos + take].tobytes()
                pos += take
                self._data_remaining = remaining - take
                self._deliver(chunk, events)
                continue

            header = self._pending_header
            if header is None:
                if buf or size - pos < _HEADER_SIZE:
                    take = min(_HEADER_SIZE - len(buf), size - pos)
                    buf += view[pos : pos + take]
                    pos += take
                    if len(buf) < _HEADER_SIZE:
                        return
                    header = _unpack_header(buf)
                    buf.clear()
                else:
                    header = _unpack_header(view, pos)
                    pos += _HEADER_SIZE
                ftype, flags, reserved, stream_id, length = header
                if ftype == _DATA and self._hello_received and not flags and not reserved:
                    self._start_data(stream_id, length)
                    continue
                self._check_header(ftype, flags, reserved, stream_id, length)
                if length == 0:
                    self._dispatch(ftype, stream_id, memoryview(b""), events)
                    continue
                self._pending_header = header

            ftype, _, _, stream_id, length = header
            if not buf and size - pos >= length:
                payload = view[pos : pos + length]
                pos += length
            else:
                take = min(length - len(buf), size - pos)
                buf += view[pos : pos + take]
                pos += take
                if len(buf) < length:
                    return
                payload = memoryview(bytes(buf))
                buf.clear()
            self._pending_header = None
            self._dispatch(ftype, stream_id, payload, events)

    def _check_header(self, ftype: int, flags: int, reserved: int, stream_id: int, n: int) -> None:
        """Refuse a header before buffering its payload: this is the cap on peer memory use."""
        if ftype > _MAX_TYPE:
            raise RemoteProtocolError(f"unknown frame type {ftype:#x}")
        kind = FrameType(ftype)
        if not self._hello_received and kind is not FrameType.HELLO:
            raise RemoteProtocolError(f"expected HELLO as the first frame, got {kind.name}")
        if flags or reserved:
            raise RemoteProtocolError(f"{kind.name} frame has nonzero flags or reserved bits")
        fixed = fr.FIXED_LENGTH.get(kind)
        if fixed is not None and n != fixed:
            raise RemoteProtocolError(
                f"{kind.name} frame has length {n}, must be {fixed}",
                error_code=ErrorCode.FRAME_SIZE_ERROR,
            )
        if kind is FrameType.DATA:
            if n > self.config.max_frame_size:
                raise RemoteProtocolError(
                    f"DATA frame of {n} bytes exceeds the announced maximum of "
                    f"{self.config.max_frame_size}",
                    error_code=ErrorCode.FRAME_SIZE_ERROR,
                )
        elif n > fr.MAX_CONTROL_PAYLOAD or n < fr.MIN_LENGTH.get(kind, 0):
            raise RemoteProtocolError(
                f"{kind.name} frame has length {n}, outside "
                f"{fr.MIN_LENGTH.get(kind, 0)}..{fr.MAX_CONTROL_PAYLOAD}",
                error_code=ErrorCode.FRAME_SIZE_ERROR,
            )
        if kind in fr.CONNECTION_FRAMES:
            if stream_id != 0:
                raise RemoteProtocolError(f"{kind.name} frame on stream {stream_id}, must be 0")
        elif stream_id == 0 and kind is not FrameType.WINDOW:
            raise RemoteProtocolError(f"{kind.name} frame on stream 0")

    def _start_data(self, stream_id: int, length: int) -> None:
        """Check a DATA header against state and windows; its payload follows."""
        if length > self.config.max_frame_size or stream_id == 0:
            self._check_header(_DATA, 0, 0, stream_id, length)  # raises the precise error
        if length > self._recv_window:
            raise RemoteProtocolError(
                f"DATA of {length} bytes on stream {stream_id} exceeds the connection window "
                f"of {self._recv_window}",
                error_code=ErrorCode.FLOW_CONTROL_ERROR,
            )
        self._recv_window -= length
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_closed(stream_id, "DATA")
            # A stream we closed while the peer was still sending: drop the bytes, and give
            # their connection credit back at once since no application will acknowledge them.
            self._data_stream = 0
            self._credit_connection(length)
        else:
            if stream.state not in CAN_RECEIVE_DATA:
                self._transition(stream.state, Input.RECV_DATA, stream_id, remote=True)
            if length > stream.recv_window:
                raise RemoteProtocolError(
                    f"DATA of {length} bytes on stream {stream_id} exceeds its window of "
                    f"{stream.recv_window}",
                    error_code=ErrorCode.FLOW_CONTROL_ERROR,
                )
            stream.recv_window -= length
            self._data_stream = stream_id
        self._data_remaining = length

    def _deliver(self, chunk: bytes, events: list[Event]) -> None:
        stream_id = self._data_stream
        if not stream_id:
            return  # DATA for a closed stream: credited in full when its header arrived
        stream = self._streams.get(stream_id)
        if stream is None:
            # Closed locally while this frame was arriving: the rest is dropped, as above.
            self._credit_connection(len(chunk))
            return
        stream.recv_unacked += len(chunk)
        self._recv_unacked += len(chunk)
        self._bytes_received += len(chunk)
        events.append(DataReceived(stream_id=stream_id, data=chunk))

    def _dispatch(
        self, ftype: int, stream_id: int, payload: memoryview, events: list[Event]
    ) -> None:
        if ftype == FrameType.WINDOW:
            self._on_window(stream_id, fr.decode_u32(payload), events)
        elif ftype == FrameType.OPEN:
            self._on_open(stream_id, payload, events)
        elif ftype == FrameType.OPEN_OK:
            self._on_open_ok(stream_id, fr.decode_u32(payload), events)
        elif ftype == FrameType.OPEN_FAIL:
            self._on_open_fail(stream_id, fr.decode_reason(payload), events)
        elif ftype == FrameType.FIN:
            self._on_fin(stream_id, events)
        elif ftype == FrameType.RST:
            self._on_rst(stream_id, fr.decode_reason(payload), events)
        elif ftype == FrameType.PING:
            ping = bytes(payload)
            self._queue_reply(fr.frame(FrameType.PONG, 0, ping))
            events.append(PingReceived(payload=ping))
        elif ftype == FrameType.PONG:
            events.append(PongReceived(payload=bytes(payload)))
        elif ftype == FrameType.GOAWAY:
            self._on_goaway(payload, events)
        elif ftype == FrameType.HELLO:
            self._on_hello(payload)
        else:  # pragma: no cover - _check_header admits known types only
            raise RemoteProtocolError(f"unknown frame type {ftype:#x}")

    def _on_hello(self, payload: memoryview) -> None:
        if self._hello_received:
            raise RemoteProtocolError("peer sent HELLO twice")
        max_frame, window = fr.decode_hello(payload)
        self._hello_received = True
        self._peer_max_frame = min(max_frame, self.config.max_frame_size)
        self._send_window = window

    def _on_open(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if stream_id & 1 != self._remote_parity:
            opener = "listener" if self.role == "dialer" else "dialer"
            parity = "odd" if self._remote_parity else "even"
            raise RemoteProtocolError(
                f"peer opened stream {stream_id}, but the {opener} opens {parity} ids"
            )
        if stream_id <= self._highest_remote_id:
            raise RemoteProtocolError(
                f"peer opened stream {stream_id}, not above its last stream "
                f"{self._highest_remote_id}"
            )
        window, target, metadata = fr.decode_open(payload)
        self._highest_remote_id = stream_id
        refusal = None
        if self._local_goaway:
            refusal = "connection is going away"
        elif self._remote_open >= self.config.max_concurrent_streams:
            refusal = f"too many concurrent streams (limit {self.config.max_concurrent_streams})"
        if refusal is not None:
            self._queue_reply(
                fr.encode_reason_frame(FrameType.OPEN_FAIL, stream_id, refusal.encode("utf-8"))
            )
            return
        state = self._transition(StreamState.IDLE, Input.RECV_OPEN, stream_id, remote=True)
        self._streams[stream_id] = Stream(
            state, local=False, recv_window=self.config.stream_window, send_window=window
        )
        self._remote_open += 1
        self._opened_by_peer += 1
        events.append(StreamOpened(stream_id=stream_id, target=target, metadata=metadata))

    def _on_open_ok(self, stream_id: int, window: int, events: list[Event]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_closed(stream_id, "OPEN_OK")
            return
        stream.state = self._transition(stream.state, Input.RECV_OPEN_OK, stream_id, remote=True)
        stream.send_window = window
        events.append(StreamAccepted(stream_id=stream_id))

    def _on_open_fail(self, stream_id: int, reason: str, events: list[Event]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_closed(stream_id, "OPEN_FAIL")
            return
        stream.state = self._transition(stream.state, Input.RECV_OPEN_FAIL, stream_id, remote=True)
        self._forget(stream_id, stream)
        events.append(StreamRejected(stream_id=stream_id, reason=reason))

    def _on_window(self, stream_id: int, delta: int, events: list[Event]) -> None:
        if delta == 0:
            raise RemoteProtocolError(
                f"WINDOW with increment 0 on stream {stream_id}",
                error_code=ErrorCode.FLOW_CONTROL_ERROR,
            )
        # an overflowing increment is refused before it is applied: the terminated connection's
        # statistics keep the last window the peer validly granted
        if stream_id == 0:
            if self._send_window + delta > fr.MAX_WINDOW:
                raise RemoteProtocolError(
                    f"WINDOW overflows the connection send window past {fr.MAX_WINDOW}",
                    error_code=ErrorCode.FLOW_CONTROL_ERROR,
                )
            self._send_window += delta
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                self._check_closed(stream_id, "WINDOW")
                return
            stream.state = self._transition(stream.state, Input.RECV_WINDOW, stream_id, remote=True)
            if stream.send_window + delta > fr.MAX_WINDOW:
                raise RemoteProtocolError(
                    f"WINDOW overflows the send window of stream {stream_id} past {fr.MAX_WINDOW}",
                    error_code=ErrorCode.FLOW_CONTROL_ERROR,
                )
            stream.send_window += delta
        events.append(WindowUpdated(stream_id=stream_id, delta=delta))

    def _on_fin(self, stream_id: int, events: list[Event]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_closed(stream_id, "FIN")
            return
        stream.state = self._transition(stream.state, Input.RECV_FIN, stream_id, remote=True)
        if stream.state is StreamState.CLOSED:
            self._forget(stream_id, stream)
        events.append(StreamEnded(stream_id=stream_id))

    def _on_rst(self, stream_id: int, reason: str, events: list[Event]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_closed(stream_id, "RST")
            return
        stream.state = self._transition(stream.state, Input.RECV_RST, stream_id, remote=True)
        self._forget(stream_id, stream)
        events.append(StreamReset(stream_id=stream_id, reason=reason))

    def _on_goaway(self, payload: memoryview, events: list[Event]) -> None:
        last_stream_id, code, reason = fr.decode_goaway(payload)
        if code != ErrorCode.NO_ERROR:
            events.append(
                self._terminate(code, reason, by_peer=True, last_stream_id=last_stream_id)
            )
            return
        self._remote_goaway = True
        events.append(GoAwayReceived(last_stream_id=last_stream_id, reason=reason))
        # Streams we opened that the peer never saw will not be answered; say so now, so the
        # driver can retry them elsewhere. A late OPEN_FAIL for them is then ignored.
        for stream_id, stream in list(self._streams.items()):
            if stream_id > last_stream_id and stream.state is StreamState.OPENING_LOCAL:
                stream.state = self._transition(stream.state, Input.RECV_OPEN_FAIL)
                self._forget(stream_id, stream)
                events.append(
                    StreamRejected(stream_id=stream_id, reason=f"peer is going away: {reason}")
                )
