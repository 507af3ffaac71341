"""Errors of the tunnel multiplexer, split by whose fault they are (as in h11).

A :class:`LocalProtocolError` is a bug in the code driving the mux (sending on a closed stream,
acknowledging bytes it never received); it is raised from the call that made the mistake and
leaves the connection usable. A :class:`RemoteProtocolError` is the peer breaking the protocol;
it never escapes :meth:`~tether.tunnel.mux.Connection.receive_data`: the mux turns it into a
GOAWAY carrying :attr:`ProtocolError.error_code` and the message, and a ``ConnectionTerminated``
event.
"""

from __future__ import annotations

import enum

from tether.errors import TetherError

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "StreamClosedError",
]


class ErrorCode(enum.IntEnum):
    """Why a connection ended, as carried in GOAWAY (u32 on the wire)."""

    #: Graceful: no new streams, the existing ones finish.
    NO_ERROR = 0
    #: The peer sent something the protocol forbids (bad id, wrong state, garbage).
    PROTOCOL_ERROR = 1
    #: The peer sent more than a window allowed, or overflowed a window.
    FLOW_CONTROL_ERROR = 2
    #: A frame header announced a length that type may not have.
    FRAME_SIZE_ERROR = 3
    #: This side hit a problem of its own and gives up on the connection.
    INTERNAL_ERROR = 4
    #: The peer kept sending frames that need an answer (PINGs, OPENs refused) while it did
    #: not read the answers: more piled up than this side keeps for it.
    ENHANCE_YOUR_CALM = 5


class ProtocolError(TetherError):
    """Base of the mux's errors: a one-line message, an optional hint, a GOAWAY error code."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        error_code: ErrorCode = ErrorCode.PROTOCOL_ERROR,
    ) -> None:
        super().__init__(message, hint=hint)
        self.error_code = error_code


class LocalProtocolError(ProtocolError):
    """The local caller used the mux wrongly; nothing was sent and the connection is intact."""


class StreamClosedError(LocalProtocolError):
    """The local caller acted on a stream that is closed, or was never opened.

    Separate because a driver can race a peer's RST with its own write and may want to ignore
    exactly this case.
    """

    def __init__(self, stream_id: int, *, hint: str | None = None) -> None:
        super().__init__(f"stream {stream_id} is closed or was never opened", hint=hint)
        self.stream_id = stream_id


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection is over."""
