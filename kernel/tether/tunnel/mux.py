"""The sans-IO tunnel multiplexer: bytes in, events out; commands in, bytes to send out.

A :class:`Connection` is one end of a reverse tunnel. It owns no socket and imports no trio: a
driver feeds it what the transport received (:meth:`Connection.receive_data`), reacts to the
events it returns, calls commands (:meth:`Connection.open_stream`,
:meth:`Connection.send_data`, ...) and writes :meth:`Connection.data_to_send` to the transport.
That keeps every protocol decision testable in memory, byte split by byte split.

Hot paths, because a tunnel must move bulk data faster than ``ssh -R``:

* receiving never buffers DATA payloads: a DATA header is checked once, then its payload is
  handed out as the transport delivers it, as ``bytes`` with at most one copy (none when a whole
  ``bytes`` chunk is payload). Only headers and small control frames are ever buffered, so the
  receive buffer is bounded by ``12 + MAX_CONTROL_PAYLOAD`` whatever a header claims;
* sending keeps DATA payloads given as ``bytes`` as memoryview slices and joins everything
  queued once in :meth:`Connection.data_to_send`;
* WINDOW updates are batched: credit goes back once half a window has been consumed.

What a peer makes this side queue is bounded too. DATA is bounded by the windows. Replies
(a PONG for each PING, an OPEN_FAIL for each OPEN refused) are not, so the mux counts the reply
bytes waiting to be sent: from ``max_reply_backlog`` on, :attr:`Connection.backlogged` tells
the driver to stop reading until the transport took them, and a peer that piles up
``REPLY_FLOOD_FACTOR`` times that (it sends requests and never reads the answers) is sent
GOAWAY ``ENHANCE_YOUR_CALM`` and the connection ends.

Flow control follows HTTP/2. Each side announces its connection receive window in HELLO and
each stream's receive window in OPEN / OPEN_OK; the application acknowledges bytes it has
consumed, which is what returns credit to the peer. Acknowledge every byte of every
``DataReceived``, even after its stream closed: the connection window is shared, and bytes never
acknowledged are credit lost for good.

The events of one ``receive_data`` call describe the connection as it is after the whole
chunk: a ``StreamOpened`` may be followed in the same list by that stream's ``StreamReset``, or
by ``ConnectionTerminated``. A driver that acts on events in order must expect
:class:`~tether.tunnel.StreamClosedError` (or check :meth:`Connection.stream_state`) when it
answers an event whose stream a later event closed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from tether.tunnel import _frames as fr
from tether.tunnel._errors import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    StreamClosedError,
)
from tether.tunnel._events import (
    ConnectionTerminated,
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
from tether.tunnel._state import CAN_RECEIVE_DATA, CAN_SEND_DATA, Input, StreamState, next_state

__all__ = ["Connection", "MuxConfig", "MuxStatistics", "Role"]

Role = Literal["dialer", "listener"]

_DATA: Final = int(FrameType.DATA)
_HELLO: Final = int(FrameType.HELLO)
_MAX_TYPE: Final = max(FrameType)
_HEADER_SIZE: Final = fr.HEADER_SIZE
_unpack_header: Final = fr.HEADER.unpack_from
_pack_header: Final = fr.HEADER.pack
#: Largest copied DataReceived chunk. Below glibc's default mmap threshold (128 KiB): bigger
#: ``bytes`` objects may each cost an mmap/munmap pair, which measured 4-9x slower in bulk.
_MAX_DELIVERY: Final = 64 * 1024
#: A reply backlog this many times ``max_reply_backlog`` ends the connection: a driver that
#: stops reading at the bound never gets there, one read of requests more than fills it.
REPLY_FLOOD_FACTOR: Final = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class MuxConfig:
    """What one side of a tunnel accepts; both sides may differ.

    :param max_frame_size: largest DATA payload this side accepts, announced in HELLO. Frames
        sent are the smaller of both sides' values. Large frames make bulk transfer cheap per
        byte; the cap bounds what a lying header could make either side expect.
    :param stream_window: receive window of every stream, announced in OPEN / OPEN_OK.
    :param connection_window: receive window shared by all streams, announced in HELLO.
    :param max_concurrent_streams: live streams the peer may have opened at once; further OPENs
        are answered with OPEN_FAIL.
    :param max_reply_backlog: bytes of replies to the peer's frames (PONG, OPEN_FAIL) that may
        wait unsent before the driver stops reading from the peer (:attr:`Connection.
        backlogged`); :data:`REPLY_FLOOD_FACTOR` times this ends the connection.
    """

    max_frame_size: int = 256 * 1024
    stream_window: int = 4 * 1024 * 1024
    connection_window: int = 16 * 1024 * 1024
    max_concurrent_streams: int = 1024
    max_reply_backlog: int = 64 * 1024

    def __post_init__(self) -> None:
        bounds = {
            "max_frame_size": (fr.MIN_FRAME_SIZE, fr.MAX_FRAME_SIZE_LIMIT),
            "stream_window": (1, fr.MAX_WINDOW),
            "connection_window": (1, fr.MAX_WINDOW),
            "max_concurrent_streams": (0, fr.MAX_STREAM_ID),
            # at least one reply of the largest size fits
            "max_reply_backlog": (fr.HEADER_SIZE + fr.MAX_CONTROL_PAYLOAD, fr.MAX_WINDOW),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"MuxConfig.{name} must be an int in {low}..{high}: {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MuxStatistics:
    """A snapshot of one connection, for ``tetherd`` status pages and tests."""

    open_streams: int
    streams_opened_locally: int
    streams_opened_by_peer: int
    bytes_sent: int
    bytes_received: int
    send_window: int
    receive_window: int
    unacknowledged_bytes: int
    pending_output: int
    reply_backlog: int
    local_goaway: bool
    remote_goaway: bool
    terminated: bool


class _Stream:
    """Per-stream bookkeeping: kept tiny (slots, ints, no buffers) so idle streams cost little.

    ``recv_window`` is what the peer may still send; ``recv_unacked`` what was delivered and not
    yet acknowledged; ``recv_credit`` what was acknowledged but not yet returned in a WINDOW.
    """

    __slots__ = (
        "local",
        "recv_credit",
        "recv_initial",
        "recv_unacked",
        "recv_window",
        "send_window",
        "state",
    )

    def __init__(self, state: StreamState, *, local: bool, recv_window: int, send_window: int):
        self.state = state
        self.local = local
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_initial = recv_window
        self.recv_unacked = 0
        self.recv_credit = 0


class Connection:
    """One end of a multiplexed tunnel; see the module docstring for how to drive it.

    :param role: ``"dialer"`` for the side that opened the transport (it opens odd stream ids),
        ``"listener"`` for the side that accepted it (even ids).
    :param config: this side's limits; defaults are tuned for bulk transfer.
    """

    def __init__(self, role: Role, config: MuxConfig | None = None) -> None:
        if role not in ("dialer", "listener"):
            raise ValueError(f"role must be 'dialer' or 'listener', not {role!r}")
        self.role: Final = role
        self.config: Final = config if config is not None else MuxConfig()
        self._streams: dict[int, _Stream] = {}
        self._next_local_id = 1 if role == "dialer" else 2
        self._remote_parity = 0 if role == "dialer" else 1
        self._highest_remote_id = 0
        self._remote_open = 0  # live streams the peer opened, for max_concurrent_streams

        # Receive side: a partial header or control frame, or the DATA payload in progress.
        self._buf = bytearray()
        self._pending_header: tuple[int, int, int, int, int] | None = None
        self._data_stream = 0
        self._data_remaining = 0
        self._hello_received = False

        # Connection-level flow control, both directions.
        self._send_window = 0  # until the peer's HELLO says otherwise
        self._peer_max_frame = fr.MIN_FRAME_SIZE
        self._recv_window = self.config.connection_window
        self._recv_unacked = 0
        self._recv_credit = 0

        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        self._replies = 0  # bytes of replies to the peer in _out
        self._local_goaway = False
        self._remote_goaway = False
        self._terminated: ConnectionTerminated | None = None
        self._ping_ids = itertools.count(1)
        self._opened_locally = 0
        self._opened_by_peer = 0
        self._bytes_sent = 0
        self._bytes_received = 0

        self._queue(fr.encode_hello(self.config.max_frame_size, self.config.connection_window))

    # ------------------------------------------------------------------ observing

    @property
    def terminated(self) -> ConnectionTerminated | None:
        """The event that ended the connection, or None while it is alive."""
        return self._terminated

    @property
    def pending_output(self) -> int:
        """Bytes queued for the transport; a driver wakes its writer only when this is > 0."""
        return self._out_size

    @property
    def reply_backlog(self) -> int:
        """Bytes of replies to the peer's frames (PONG, OPEN_FAIL) queued and not yet taken by
        :meth:`data_to_send`."""
        return self._replies

    @property
    def backlogged(self) -> bool:
        """True while the peer's replies pile up past ``max_reply_backlog``: a driver stops
        reading from the peer until :meth:`data_to_send` took them (and the transport sent
        them), so a peer that does not read cannot make this side queue without bound."""
        return self._replies >= self.config.max_reply_backlog

    def stream_state(self, stream_id: int) -> StreamState:
        """Where a stream is; CLOSED for streams that are over or were never opened, and for
        every stream once the connection is terminated."""
        stream = self._streams.get(stream_id)
        return stream.state if stream is not None else StreamState.CLOSED

    def open_stream_ids(self) -> list[int]:
        """Ids of every live stream, in opening order per side."""
        return sorted(self._streams)

    def local_send_window(self, stream_id: int) -> int:
        """How many bytes ``send_data`` would accept on this stream right now.

        A query never raises: a stream that cannot send (opening, half-closed, closed, never
        opened, or the connection is over) has a window of 0.
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.state not in CAN_SEND_DATA:
            return 0
        return max(0, min(stream.send_window, self._send_window))

    def statistics(self) -> MuxStatistics:
        """A snapshot of counters and windows."""
        return MuxStatistics(
            open_streams=len(self._streams),
            streams_opened_locally=self._opened_locally,
            streams_opened_by_peer=self._opened_by_peer,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            send_window=self._send_window,
            receive_window=self._recv_window,
            unacknowledged_bytes=self._recv_unacked,
            pending_output=self._out_size,
            reply_backlog=self._replies,
            local_goaway=self._local_goaway,
            remote_goaway=self._remote_goaway,
            terminated=self._terminated is not None,
        )

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        """Everything queued for the transport, as one buffer (empty when nothing is)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 and type(out[0]) is bytes else b"".join(out)
        out.clear()
        self._out_size = 0
        self._replies = 0
        return data

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    def _queue_reply(self, data: bytes) -> None:
        """Queue a reply to a frame the peer sent; the peer must not pile them up unread."""
        self._queue(data)
        self._replies += len(data)
        if self._replies > REPLY_FLOOD_FACTOR * self.config.max_reply_backlog:
            raise RemoteProtocolError(
                f"peer left more than {self._replies} bytes of replies unread (PONGs, refused "
                "OPENs) while it kept sending requests",
                error_code=ErrorCode.ENHANCE_YOUR_CALM,
            )

    # ------------------------------------------------------------------ commands

    def open_stream(self, target: str, metadata: Mapping[str, str] | None = None) -> int:
        """Queue an OPEN for ``target`` and return the new stream's id.

        The stream carries no data until the peer answers: ``StreamAccepted`` (send away) or
        ``StreamRejected``.
        """
        self._check_alive()
        if self._local_goaway:
            raise LocalProtocolError("cannot open a stream after sending GOAWAY")
        if self._remote_goaway:
            raise LocalProtocolError(
                "the peer sent GOAWAY and accepts no new streams",
                hint="open the stream over another tunnel",
            )
        if not isinstance(target, str) or not target:
            raise LocalProtocolError(f"stream target must be a non-empty str: {target!r}")
        meta = dict(metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise LocalProtocolError("stream metadata must map str to str")
        target_bytes = target.encode("utf-8")
        meta_bytes = json.dumps(meta, separators=(",", ":")).encode("utf-8") if meta else b""
        if len(target_bytes) > 0xFFFF or 6 + len(target_bytes) + len(meta_bytes) > (
            fr.MAX_CONTROL_PAYLOAD
        ):
            raise LocalProtocolError(
                f"stream target and metadata exceed {fr.MAX_CONTROL_PAYLOAD} bytes"
            )
        stream_id = self._next_local_id
        if stream_id > fr.MAX_STREAM_ID:
            raise LocalProtocolError(
                "this connection has used up its stream ids", hint="open a new tunnel"
            )
        self._next_local_id += 2
        self._opened_locally += 1
        state = self._transition(StreamState.IDLE, Input.SEND_OPEN)
        window = self.config.stream_window
        self._streams[stream_id] = _Stream(state, local=True, recv_window=window, send_window=0)
        self._queue(fr.encode_open(stream_id, window, target_bytes, meta_bytes))
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        """Accept a stream the peer opened (``StreamOpened``); data may then flow both ways."""
        stream = self._live_stream(stream_id)
        stream.state = self._transition(stream.state, Input.SEND_OPEN_OK)
        self._queue(fr.encode_u32_frame(FrameType.OPEN_OK, stream_id, stream.recv_window))

    def reject_stream(self, stream_id: int, reason: str) -> None:
        """Refuse a stream the peer opened, telling it why."""
        stream = self._live_stream(stream_id)
        stream.state = self._transition(stream.state, Input.SEND_OPEN_FAIL)
        self._forget(stream_id, stream)
        # counted as a reply (it answers the peer's OPEN), never refused here: the OPENs it
        # answers were bounded by max_concurrent_streams when they arrived
        refusal = fr.encode_reason_frame(FrameType.OPEN_FAIL, stream_id, _reason(reason))
        self._queue(refusal)
        self._replies += len(refusal)

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as the windows allow; return how many bytes that was.

        Fewer bytes than offered (possibly 0) means a window is exhausted: wait for
        ``WindowUpdated`` on this stream or on the connection (id 0), then send the rest.
        """
        stream = self._live_stream(stream_id)
        if stream.state not in CAN_SEND_DATA:
            self._transition(stream.state, Input.SEND_DATA)  # raises, naming the state
        view = memoryview(data)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        count = min(len(view), stream.send_window, self._send_window)
        if count <= 0:
            return 0
        # The caller may reuse a mutable buffer once we return; only bytes can be queued by
        # reference.
        view = view[:count] if type(data) is bytes else memoryview(view[:count].tobytes())
        step = self._peer_max_frame
        out = self._out
        for offset in range(0, count, step):
            chunk = view[offset : offset + step]
            out.append(_pack_header(_DATA, 0, 0, stream_id, len(chunk)))
            out.append(chunk)
        self._out_size += count + _HEADER_SIZE * len(range(0, count, step))
        stream.send_window -= count
        self._send_window -= count
        self._bytes_sent += count
        return count

    def acknowledge_received_data(self, stream_id: int, count: int) -> None:
        """Tell the mux the application consumed ``count`` bytes delivered on ``stream_id``.

        This is what returns credit to the peer, batched into one WINDOW per half window. Call
        it for every delivered byte, also after the stream closed (then only the connection's
        window is credited). A no-op once the connection is terminated.
        """
        if self._terminated is not None:
            return
        if not isinstance(count, int) or count < 0:
            raise LocalProtocolError(f"acknowledged byte count must be an int >= 0: {count!r}")
        if count > self._recv_unacked:
            raise LocalProtocolError(
                f"acknowledging {count} bytes, but only {self._recv_unacked} were delivered "
                "and not yet acknowledged"
            )
        if count == 0:
            return
        stream = self._streams.get(stream_id)
        if stream is not None:
            if count > stream.recv_unacked:
                raise LocalProtocolError(
                    f"acknowledging {count} bytes on stream {stream_id}, but only "
                    f"{stream.recv_unacked} were delivered there and not yet acknowledged"
                )
            stream.recv_unacked -= count
            if next_state(stream.state, Input.SEND_WINDOW) is not None:
                stream.recv_credit += count
                if stream.recv_credit >= max(1, stream.recv_initial >> 1):
                    self._queue(
                        fr.encode_u32_frame(FrameType.WINDOW, stream_id, stream.recv_credit)
                    )
                    stream.recv_window += stream.recv_credit
                    stream.recv_credit = 0
        elif not self._was_opened(stream_id):
            raise StreamClosedError(stream_id)
        self._recv_unacked -= count
        self._credit_connection(count)

    def end_stream(self, stream_id: int) -> None:
        """Half-close the stream (FIN): we send no more data; the peer still may."""
        stream = self._live_stream(stream_id)
        stream.state = self._transition(stream.state, Input.SEND_FIN)
        if stream.state is StreamState.CLOSED:
            self._forget(stream_id, stream)
        self._queue(fr.frame(FrameType.FIN, stream_id))

    def reset_stream(self, stream_id: int, reason: str = "") -> None:
        """Abort the stream in both directions (RST), also while it is still opening."""
        stream = self._live_stream(stream_id)
        stream.state = self._transition(stream.state, Input.SEND_RST)
        self._forget(stream_id, stream)
        self._queue(fr.encode_reason_frame(FrameType.RST, stream_id, _reason(reason)))

    def ping(self, payload: bytes | None = None) -> bytes:
        """Queue a PING and return its 8-byte payload; the peer's PONG carries the same bytes."""
        self._check_alive()
        if payload is None:
            payload = next(self._ping_ids).to_bytes(8, "big")
        if not isinstance(payload, bytes) or len(payload) != 8:
            raise LocalProtocolError(f"ping payload must be 8 bytes: {payload!r}")
        self._queue(fr.frame(FrameType.PING, 0, payload))
        return payload

    def goaway(self, reason: str = "", error_code: ErrorCode = ErrorCode.NO_ERROR) -> None:
        """Tell the peer we are going away.

        With ``NO_ERROR`` this is graceful: no new streams either way, existing ones finish, and
        the driver closes the transport when ``statistics().open_streams`` reaches 0. With any
        other code the connection is terminated at once (the driver should flush
        ``data_to_send`` and close); ``ENHANCE_YOUR_CALM`` (the peer does not read) also drops
        what was queued before, so that only the GOAWAY is left to send.
        """
        self._check_alive()
        error_code = ErrorCode(error_code)
        if error_code is ErrorCode.ENHANCE_YOUR_CALM:
            self._drop_output()
        self._queue(fr.encode_goaway(self._highest_remote_id, error_code, _reason(reason)))
        self._local_goaway = True
        if error_code is not ErrorCode.NO_ERROR:
            self._terminate(error_code, reason, by_peer=False)

    # ------------------------------------------------------------------ receiving

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
                fr.encode_goaway(self._highest_remote_id, exc.error_code, _reason(str(exc)))
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
        self._streams[stream_id] = _Stream(
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
        if stream_id == 0:
            self._send_window += delta
            if self._send_window > fr.MAX_WINDOW:
                raise RemoteProtocolError(
                    f"WINDOW overflows the connection send window past {fr.MAX_WINDOW}",
                    error_code=ErrorCode.FLOW_CONTROL_ERROR,
                )
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                self._check_closed(stream_id, "WINDOW")
                return
            stream.state = self._transition(stream.state, Input.RECV_WINDOW, stream_id, remote=True)
            stream.send_window += delta
            if stream.send_window > fr.MAX_WINDOW:
                raise RemoteProtocolError(
                    f"WINDOW overflows the send window of stream {stream_id} past {fr.MAX_WINDOW}",
                    error_code=ErrorCode.FLOW_CONTROL_ERROR,
                )
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

    # ------------------------------------------------------------------ helpers

    def _transition(
        self, state: StreamState, event: Input, stream_id: int = 0, *, remote: bool = False
    ) -> StreamState:
        """Look a transition up in the table; a missing one is the caller's or the peer's bug."""
        new = next_state(state, event)
        if new is None:
            what = event.value.removeprefix("send-").removeprefix("recv-").upper()
            if remote:
                raise RemoteProtocolError(
                    f"peer sent {what.replace('-', '_')} on stream {stream_id} "
                    f"in state {state.value}"
                )
            raise LocalProtocolError(
                f"cannot send {what.replace('-', '_')} on a stream in state {state.value}"
            )
        return new

    def _live_stream(self, stream_id: int) -> _Stream:
        self._check_alive()
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(stream_id)
        return stream

    def _check_alive(self) -> None:
        if self._terminated is not None:
            raise LocalProtocolError(
                f"the tunnel connection is terminated: {self._terminated.reason}",
                hint="open a new tunnel",
            )

    def _was_opened(self, stream_id: int) -> bool:
        """Whether ``stream_id`` was opened on this connection at some point."""
        if stream_id & 1 == self._remote_parity:
            return 0 < stream_id <= self._highest_remote_id
        return 0 < stream_id < self._next_local_id

    def _check_closed(self, stream_id: int, what: str) -> None:
        """A frame for a stream we do not track: fine if it closed already, else a violation.

        Frames racing with a close (DATA or WINDOW in flight when we sent RST, an OPEN_OK for a
        stream we gave up on) are legal and ignored; closed streams are not remembered, which
        keeps memory flat at the price of not telling such races from a confused peer.
        """
        if not self._was_opened(stream_id):
            raise RemoteProtocolError(f"peer sent {what} on stream {stream_id}, never opened")

    def _forget(self, stream_id: int, stream: _Stream) -> None:
        del self._streams[stream_id]
        if not stream.local:
            self._remote_open -= 1

    def _drop_output(self) -> None:
        """Forget what is queued for a peer that reads nothing: it would only hold memory."""
        self._out.clear()
        self._out_size = 0
        self._replies = 0

    def _credit_connection(self, count: int) -> None:
        self._recv_credit += count
        if self._recv_credit >= max(1, self.config.connection_window >> 1):
            self._queue(fr.encode_u32_frame(FrameType.WINDOW, 0, self._recv_credit))
            self._recv_window += self._recv_credit
            self._recv_credit = 0

    def _terminate(
        self, code: int, reason: str, *, by_peer: bool, last_stream_id: int = 0
    ) -> ConnectionTerminated:
        event = ConnectionTerminated(
            error_code=code, reason=reason, by_peer=by_peer, last_stream_id=last_stream_id
        )
        self._terminated = event
        # Every stream dies with the connection; forgetting them makes stream_state say so.
        self._streams.clear()
        self._remote_open = 0
        self._buf.clear()
        self._pending_header = None
        self._data_remaining = 0
        return event


def _reason(reason: str) -> bytes:
    """Encode a reason for the wire, truncated so the frame stays under the control cap."""
    if not isinstance(reason, str):
        raise LocalProtocolError(f"reason must be str, not {type(reason).__name__}")
    return reason.encode("utf-8")[: fr.MAX_CONTROL_PAYLOAD - 8]
