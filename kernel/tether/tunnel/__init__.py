"""The reverse tunnel: a sans-IO multiplexer of streams over one connection.

:class:`Connection` is the protocol (``docs/tunnel-protocol.md`` is its wire format); drivers
that move its bytes over TLS, dial tunnels and serve them build on it and live next to it.
Everything public is re-exported here; the ``_``-prefixed modules are private.
"""

from tether.tunnel._errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
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
from tether.tunnel._state import StreamState
from tether.tunnel.mux import Connection, MuxConfig, MuxStatistics, Role

__all__ = [
    "Connection",
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCode",
    "Event",
    "GoAwayReceived",
    "LocalProtocolError",
    "MuxConfig",
    "MuxStatistics",
    "PingReceived",
    "PongReceived",
    "ProtocolError",
    "RemoteProtocolError",
    "Role",
    "StreamAccepted",
    "StreamClosedError",
    "StreamEnded",
    "StreamOpened",
    "StreamRejected",
    "StreamReset",
    "StreamState",
    "WindowUpdated",
]
