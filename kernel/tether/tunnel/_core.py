"""The state one end of a tunnel keeps, and the bookkeeping every frame and command shares.

:class:`ConnectionCore` holds the streams, the windows both ways, the output queue and the
termination; its helpers are the only code that changes them outside a frame handler or a
command. It is separate from receiving (:mod:`tether.tunnel._receiving`) and from the public
commands (:mod:`tether.tunnel.mux`) so that each of those reads as one job over a state whose
rules (the transition table, the reply backlog, connection credit) live here once.
Sans-IO: no sockets, no trio.
"""

from __future__ import annotations

import itertools
from typing import Final, Literal

from tether.tunnel import _frames as fr
from tether.tunnel._config import REPLY_FLOOD_FACTOR, MuxConfig
from tether.tunnel._errors import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    StreamClosedError,
)
from tether.tunnel._events import ConnectionTerminated
from tether.tunnel._frames import FrameType
from tether.tunnel._state import Input, StreamState, next_state

__all__ = ["ConnectionCore", "Role", "Stream", "encode_reason"]

Role = Literal["dialer", "listener"]


class Stream:
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


class ConnectionCore:
    """The state of one end of a tunnel, and the helpers that keep it consistent."""

    def __init__(self, role: Role, config: MuxConfig | None = None) -> None:
        if role not in ("dialer", "listener"):
            raise ValueError(f"role must be 'dialer' or 'listener', not {role!r}")
        self.role: Final = role
        self.config: Final = config if config is not None else MuxConfig()
        self._streams: dict[int, Stream] = {}
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

    def _live_stream(self, stream_id: int) -> Stream:
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

    def _forget(self, stream_id: int, stream: Stream) -> None:
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


def encode_reason(reason: str) -> bytes:
    """Encode a reason for the wire, truncated so the frame stays under the control cap."""
    if not isinstance(reason, str):
        raise LocalProtocolError(f"reason must be str, not {type(reason).__name__}")
    return reason.encode("utf-8")[: fr.MAX_CONTROL_PAYLOAD - 8]
