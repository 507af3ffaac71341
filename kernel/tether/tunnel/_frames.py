"""The tunnel's wire format: frame types, the 12-byte header, and payload codecs.

Everything here is pure and stateless so that the state machine in :mod:`tether.tunnel.mux`
reads as protocol logic, not byte fiddling. ``docs/tunnel-protocol.md`` is the prose version of
this module; the two must agree.

Decoders take a ``memoryview`` of a complete payload and raise
:class:`~tether.tunnel._errors.RemoteProtocolError`: bytes on the wire come from the peer, so a
payload that does not decode is always the peer's fault.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Mapping
from typing import Final

from tether.tunnel._errors import ErrorCode, RemoteProtocolError

__all__ = [
    "CONNECTION_FRAMES",
    "FIXED_LENGTH",
    "HEADER",
    "HEADER_SIZE",
    "HELLO_MAGIC",
    "MAX_CONTROL_PAYLOAD",
    "MAX_FRAME_SIZE_LIMIT",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "MIN_FRAME_SIZE",
    "MIN_LENGTH",
    "PROTOCOL_VERSION",
    "FrameType",
    "decode_goaway",
    "decode_hello",
    "decode_open",
    "decode_reason",
    "decode_u32",
    "encode_goaway",
    "encode_hello",
    "encode_open",
    "encode_reason_frame",
    "encode_u32_frame",
    "frame",
]

#: type u8, flags u8, reserved u16, stream id u32, payload length u32; network byte order.
HEADER: Final = struct.Struct("!BBHII")
HEADER_SIZE: Final = HEADER.size

_U32: Final = struct.Struct("!I")
_OPEN_PREFIX: Final = struct.Struct("!IH")  # initial receive window, target length
_GOAWAY_PREFIX: Final = struct.Struct("!II")  # last stream id, error code
_HELLO: Final = struct.Struct("!4sHHII")  # magic, version, reserved, max frame, conn window

HELLO_MAGIC: Final = b"tthr"
PROTOCOL_VERSION: Final = 1

#: Stream ids and windows are u32 on the wire, but windows stay below 2**31 (as in HTTP/2) so
#: that a window plus an in-range increment can be detected as overflow before it wraps.
MAX_STREAM_ID: Final = 2**32 - 1
MAX_WINDOW: Final = 2**31 - 1

#: Bounds on the DATA payload size a side may announce in HELLO.
MIN_FRAME_SIZE: Final = 1024
MAX_FRAME_SIZE_LIMIT: Final = 16 * 1024 * 1024

#: Cap on every non-DATA payload (OPEN's target and metadata, reasons): the most a peer can make
#: us buffer for one control frame, whatever its header claims.
MAX_CONTROL_PAYLOAD: Final = 16 * 1024


class FrameType(enum.IntEnum):
    """Frame type codes; a peer that sends any other value is broken."""

    DATA = 0x0
    OPEN = 0x1
    OPEN_OK = 0x2
    OPEN_FAIL = 0x3
    WINDOW = 0x4
    FIN = 0x5
    RST = 0x6
    PING = 0x7
    PONG = 0x8
    GOAWAY = 0x9
    HELLO = 0xA


#: Frames about the whole connection: their stream id must be 0. WINDOW may be either.
CONNECTION_FRAMES: Final = frozenset(
    {FrameType.HELLO, FrameType.PING, FrameType.PONG, FrameType.GOAWAY}
)
#: Frames whose payload has exactly one legal length.
FIXED_LENGTH: Final[Mapping[int, int]] = {
    FrameType.HELLO: _HELLO.size,
    FrameType.OPEN_OK: 4,
    FrameType.WINDOW: 4,
    FrameType.FIN: 0,
    FrameType.PING: 8,
    FrameType.PONG: 8,
}
#: Frames whose payload has a fixed prefix.
MIN_LENGTH: Final[Mapping[int, int]] = {
    FrameType.OPEN: _OPEN_PREFIX.size + 1,  # a target is at least one byte
    FrameType.GOAWAY: _GOAWAY_PREFIX.size,
}


def frame(ftype: FrameType, stream_id: int, payload: bytes = b"") -> bytes:
    """Encode one complete frame (header and payload) as a single buffer."""
    return HEADER.pack(ftype, 0, 0, stream_id, len(payload)) + payload


def encode_u32_frame(ftype: FrameType, stream_id: int, value: int) -> bytes:
    """Encode OPEN_OK (initial window) or WINDOW (increment): a u32 payload."""
    return HEADER.pack(ftype, 0, 0, stream_id, 4) + _U32.pack(value)


def encode_hello(max_frame_size: int, connection_window: int) -> bytes:
    """Encode the HELLO every side sends first: what it accepts and its connection window."""
    payload = _HELLO.pack(HELLO_MAGIC, PROTOCOL_VERSION, 0, max_frame_size, connection_window)
    return frame(FrameType.HELLO, 0, payload)


def encode_open(stream_id: int, window: int, target: bytes, metadata: bytes) -> bytes:
    """Encode OPEN: the opener's receive window for this stream, the target, JSON metadata."""
    payload = _OPEN_PREFIX.pack(window, len(target)) + target + metadata
    return frame(FrameType.OPEN, stream_id, payload)


def encode_reason_frame(ftype: FrameType, stream_id: int, reason: bytes) -> bytes:
    """Encode OPEN_FAIL or RST, whose whole payload is a UTF-8 reason."""
    return frame(ftype, stream_id, reason)


def encode_goaway(last_stream_id: int, error_code: int, reason: bytes) -> bytes:
    """Encode GOAWAY: the last peer stream processed, an error code, a UTF-8 reason."""
    return frame(FrameType.GOAWAY, 0, _GOAWAY_PREFIX.pack(last_stream_id, error_code) + reason)


def decode_u32(payload: memoryview) -> int:
    """Decode the u32 of OPEN_OK or WINDOW (the length was checked with the header)."""
    value: int = _U32.unpack_from(payload)[0]
    return value


def decode_reason(payload: memoryview) -> str:
    """Decode a human-readable reason; it is only ever shown, so bad UTF-8 is replaced."""
    return bytes(payload).decode("utf-8", "replace")


def decode_hello(payload: memoryview) -> tuple[int, int]:
    """Decode HELLO into ``(max_frame_size, connection_window)``, refusing foreign peers."""
    magic, version, reserved, max_frame, window = _HELLO.unpack_from(payload)
    if magic != HELLO_MAGIC:
        raise RemoteProtocolError(
            "peer is not speaking the tether tunnel protocol (bad HELLO magic)",
            hint="check that the peer is a tether proxy or agent",
        )
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"peer speaks tunnel protocol version {version}, this side speaks {PROTOCOL_VERSION}",
            hint="run the same tether version on both ends",
        )
    if reserved != 0:
        raise RemoteProtocolError("HELLO has nonzero reserved bits")
    if not MIN_FRAME_SIZE <= max_frame <= MAX_FRAME_SIZE_LIMIT:
        raise RemoteProtocolError(
            f"HELLO announces max frame size {max_frame}, outside "
            f"{MIN_FRAME_SIZE}..{MAX_FRAME_SIZE_LIMIT}"
        )
    if window > MAX_WINDOW:
        raise RemoteProtocolError(
            f"HELLO announces connection window {window} above {MAX_WINDOW}",
            error_code=ErrorCode.FLOW_CONTROL_ERROR,
        )
    return max_frame, window


def decode_open(payload: memoryview) -> tuple[int, str, dict[str, str]]:
    """Decode OPEN into ``(window, target, metadata)``.

    The target names what the acceptor should connect to, so it must decode exactly; metadata
    is a flat JSON object of strings so that nothing nested or typed leaks through the tunnel.
    """
    window, target_len = _OPEN_PREFIX.unpack_from(payload)
    if window > MAX_WINDOW:
        raise RemoteProtocolError(
            f"OPEN announces stream window {window} above {MAX_WINDOW}",
            error_code=ErrorCode.FLOW_CONTROL_ERROR,
        )
    start = _OPEN_PREFIX.size
    end = start + target_len
    if target_len == 0 or end > len(payload):
        raise RemoteProtocolError(f"OPEN target length {target_len} does not fit its frame")
    try:
        target = bytes(payload[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("OPEN target is not valid UTF-8") from None
    raw = bytes(payload[end:])
    metadata: dict[str, str] = {}
    if raw:
        try:
            decoded = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise RemoteProtocolError("OPEN metadata is not valid JSON") from None
        if not isinstance(decoded, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in decoded.items()
        ):
            raise RemoteProtocolError("OPEN metadata is not a JSON object of strings")
        metadata = decoded
    return window, target, metadata


def decode_goaway(payload: memoryview) -> tuple[int, int, str]:
    """Decode GOAWAY into ``(last_stream_id, error_code, reason)``."""
    last_stream_id, error_code = _GOAWAY_PREFIX.unpack_from(payload)
    return last_stream_id, error_code, decode_reason(payload[_GOAWAY_PREFIX.size :])
