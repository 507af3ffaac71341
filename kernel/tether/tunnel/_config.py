"""What one side of a tunnel accepts, and a snapshot of one connection's counters.

Separate from the state machine because drivers, agents and servers build a
:class:`MuxConfig` from their own settings and read :class:`MuxStatistics` without needing
anything of how frames are parsed or streams tracked. Sans-IO like the rest of the mux.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tether.tunnel import _frames as fr

__all__ = ["REPLY_FLOOD_FACTOR", "MuxConfig", "MuxStatistics"]

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
