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

:class:`Connection` is built in three layers, one job each: the state and the bookkeeping every
frame and command shares (:mod:`tether.tunnel._core`), receiving and checking the peer's frames
(:mod:`tether.tunnel._receiving`), and here the commands and queries a driver calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from tether.tunnel import _frames as fr
from tether.tunnel._config import REPLY_FLOOD_FACTOR, MuxConfig, MuxStatistics
from tether.tunnel._core import Role, Stream, encode_reason
from tether.tunnel._errors import ErrorCode, LocalProtocolError, StreamClosedError
from tether.tunnel._events import ConnectionTerminated
from tether.tunnel._frames import FrameType
from tether.tunnel._receiving import ConnectionReceiver
from tether.tunnel._state import CAN_SEND_DATA, Input, StreamState, next_state

__all__ = ["REPLY_FLOOD_FACTOR", "Connection", "MuxConfig", "MuxStatistics", "Role"]

_DATA: Final = int(FrameType.DATA)
_HEADER_SIZE: Final = fr.HEADER_SIZE
_pack_header: Final = fr.HEADER.pack


class Connection(ConnectionReceiver):
    """One end of a multiplexed tunnel; see the module docstring for how to drive it.

    :param role: ``"dialer"`` for the side that opened the transport (it opens odd stream ids),
        ``"listener"`` for the side that accepted it (even ids).
    :param config: this side's limits; defaults are tuned for bulk transfer.
    """

    # ------------------------------------------------------------------ observing

    @property
    def terminated(self) -> ConnectionTerminated | None:
        """The event that ended the connection, or None while it is alive."""
        return self._terminated

    @property
    def goaway_sent(self) -> bool:
        """True once this side queued GOAWAY: it opens no new streams and accepts none.
        (Also in :meth:`statistics`, which a driver asking on every dial should not build.)"""
        return self._local_goaway

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
        self._streams[stream_id] = Stream(state, local=True, recv_window=window, send_window=0)
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
        refusal = fr.encode_reason_frame(FrameType.OPEN_FAIL, stream_id, encode_reason(reason))
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
        self._queue(fr.encode_reason_frame(FrameType.RST, stream_id, encode_reason(reason)))

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
        self._queue(fr.encode_goaway(self._highest_remote_id, error_code, encode_reason(reason)))
        self._local_goaway = True
        if error_code is not ErrorCode.NO_ERROR:
            self._terminate(error_code, reason, by_peer=False)
