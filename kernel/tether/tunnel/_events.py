"""Events the multiplexer reports from :meth:`~tether.tunnel.mux.Connection.receive_data`.

Events are frozen, slotted, keyword-only dataclasses that validate their fields (h11's
``_events.py``): a driver may keep them, compare them in tests and log them, and an event that
exists is always well-formed. Validation is a few ``isinstance`` checks, cheap enough for the
bulk ``DataReceived`` path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tether.tunnel._errors import ErrorCode

__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "PingReceived",
    "PongReceived",
    "StreamAccepted",
    "StreamEnded",
    "StreamOpened",
    "StreamRejected",
    "StreamReset",
    "WindowUpdated",
]

_MAX_U32 = 2**32 - 1


def _check_id(name: str, value: object, *, allow_zero: bool = False) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not (0 if allow_zero else 1) <= value <= _MAX_U32
    ):
        raise ValueError(f"{name} must be an int in {int(not allow_zero)}..{_MAX_U32}: {value!r}")


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")


def _check_ping_payload(value: object) -> None:
    if not isinstance(value, bytes) or len(value) != 8:
        raise ValueError(f"ping payload must be 8 bytes: {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every mux event."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOpened(Event):
    """The peer opened a stream; answer with ``accept_stream`` or ``reject_stream``."""

    stream_id: int
    target: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_id("stream_id", self.stream_id)
        _check_str("target", self.target)
        if not self.target:
            raise ValueError("target must not be empty")
        for key, value in self.metadata.items():
            _check_str("metadata key", key)
            _check_str(f"metadata[{key!r}]", value)
        # A frozen event should not share a mutable dict with its creator.
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamAccepted(Event):
    """The peer accepted a stream we opened; data may flow both ways."""

    stream_id: int

    def __post_init__(self) -> None:
        _check_id("stream_id", self.stream_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRejected(Event):
    """A stream we opened will never be accepted: the peer refused it, or is going away."""

    stream_id: int
    reason: str

    def __post_init__(self) -> None:
        _check_id("stream_id", self.stream_id)
        _check_str("reason", self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived(Event):
    """Bytes for a stream; acknowledge them with ``acknowledge_received_data`` once consumed.

    One DATA frame may arrive as several events (the mux hands payload over as the transport
    delivers it rather than buffering whole frames).
    """

    stream_id: int
    data: bytes

    def __post_init__(self) -> None:
        _check_id("stream_id", self.stream_id)
        if not isinstance(self.data, bytes):
            raise TypeError(f"data must be bytes, not {type(self.data).__name__}")


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowUpdated(Event):
    """The peer gave more send credit to a stream, or to the connection when stream_id is 0.

    A driver blocked on ``send_data`` returning less than it offered waits for this.
    """

    stream_id: int
    delta: int

    def __post_init__(self) -> None:
        _check_id("stream_id", self.stream_id, allow_zero=True)
        _check_id("delta", self.delta)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded(Event):
    """The peer half-closed the stream (FIN): no more data will come from it."""

    stream_id: int

    def __post_init__(self) -> None:
        _check_id("stream_id", self.stream_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset(Event):
    """The peer aborted the stream (RST); it is closed in both directions."""

    stream_id: int
    reason: str

    def __post_init__(self) -> None:
        _check_id("stream_id", self.stream_id)
        _check_str("reason", self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReceived(Event):
    """The peer pinged; the matching PONG is already queued."""

    payload: bytes

    def __post_init__(self) -> None:
        _check_ping_payload(self.payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class PongReceived(Event):
    """The answer to a ping; match it to ``Connection.ping``'s return value by payload."""

    payload: bytes

    def __post_init__(self) -> None:
        _check_ping_payload(self.payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class GoAwayReceived(Event):
    """The peer shuts down gracefully: it takes no new streams; existing ones may finish.

    Streams we opened above ``last_stream_id`` were not processed and are reported as
    ``StreamRejected`` right after this event, so they can be retried on another tunnel.
    """

    last_stream_id: int
    reason: str

    def __post_init__(self) -> None:
        _check_id("last_stream_id", self.last_stream_id, allow_zero=True)
        _check_str("reason", self.reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionTerminated(Event):
    """The connection is over: every stream is dead and the mux takes no more input.

    ``by_peer`` tells whether the peer ended it (its GOAWAY with an error code, or the transport
    closing) or this side did (a protocol violation by the peer, or ``goaway`` with an error).
    """

    error_code: int
    reason: str
    by_peer: bool
    last_stream_id: int = 0

    def __post_init__(self) -> None:
        _check_id("error_code", self.error_code, allow_zero=True)
        _check_str("reason", self.reason)
        if not isinstance(self.by_peer, bool):
            raise TypeError("by_peer must be bool")
        _check_id("last_stream_id", self.last_stream_id, allow_zero=True)
        # Known codes become the enum so they print by name; unknown ones stay ints.
        with contextlib.suppress(ValueError):
            object.__setattr__(self, "error_code", ErrorCode(self.error_code))
