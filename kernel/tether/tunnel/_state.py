"""The stream state machine: every legal transition of a tunnel stream, in one table.

Everything that decides whether a stream may send or receive a frame lives here (h11's rule
for ``_state.py``); :mod:`tether.tunnel.mux` only looks transitions up. A pair that is missing
from :data:`TRANSITIONS` is illegal: for a ``SEND_*`` input that is the local caller's bug, for
a ``RECV_*`` input it is a protocol violation by the peer.

States are seen from this side of the connection. A stream is opened by one side (OPEN) and
accepted (OPEN_OK) or rejected (OPEN_FAIL) by the other; the opener sends nothing else until it
is accepted. Each direction is then closed independently with FIN, and RST closes both at once
from any live state. A CLOSED stream is forgotten by the mux, so frames that race with a close
are handled by the mux (it ignores them), not by this table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

__all__ = [
    "CAN_RECEIVE_DATA",
    "CAN_SEND_DATA",
    "TRANSITIONS",
    "Input",
    "StreamState",
    "next_state",
]


class StreamState(enum.Enum):
    """Where one stream is, from this side's point of view."""

    IDLE = "idle"
    #: We sent OPEN and wait for OPEN_OK or OPEN_FAIL.
    OPENING_LOCAL = "opening-local"
    #: The peer sent OPEN and waits for us to accept or reject.
    OPENING_REMOTE = "opening-remote"
    OPEN = "open"
    #: We sent FIN: we send no more data, the peer still may.
    HALF_CLOSED_LOCAL = "half-closed-local"
    #: The peer sent FIN: it sends no more data, we still may.
    HALF_CLOSED_REMOTE = "half-closed-remote"
    CLOSED = "closed"


class Input(enum.Enum):
    """Frames sent or received on a stream, as inputs to the state machine."""

    SEND_OPEN = "send-open"
    SEND_OPEN_OK = "send-open-ok"
    SEND_OPEN_FAIL = "send-open-fail"
    SEND_DATA = "send-data"
    SEND_WINDOW = "send-window"
    SEND_FIN = "send-fin"
    SEND_RST = "send-rst"
    RECV_OPEN = "recv-open"
    RECV_OPEN_OK = "recv-open-ok"
    RECV_OPEN_FAIL = "recv-open-fail"
    RECV_DATA = "recv-data"
    RECV_WINDOW = "recv-window"
    RECV_FIN = "recv-fin"
    RECV_RST = "recv-rst"


_S = StreamState
_I = Input

_LIVE: Final = (
    _S.OPENING_LOCAL,
    _S.OPENING_REMOTE,
    _S.OPEN,
    _S.HALF_CLOSED_LOCAL,
    _S.HALF_CLOSED_REMOTE,
)

#: (state, input) -> next state. The only place stream states change.
TRANSITIONS: Final[Mapping[tuple[StreamState, Input], StreamState]] = {
    # Opening: the opener waits for the verdict and may give up (RST) meanwhile.
    (_S.IDLE, _I.SEND_OPEN): _S.OPENING_LOCAL,
    (_S.IDLE, _I.RECV_OPEN): _S.OPENING_REMOTE,
    (_S.OPENING_LOCAL, _I.RECV_OPEN_OK): _S.OPEN,
    (_S.OPENING_LOCAL, _I.RECV_OPEN_FAIL): _S.CLOSED,
    (_S.OPENING_REMOTE, _I.SEND_OPEN_OK): _S.OPEN,
    (_S.OPENING_REMOTE, _I.SEND_OPEN_FAIL): _S.CLOSED,
    # Both directions open.
    (_S.OPEN, _I.SEND_DATA): _S.OPEN,
    (_S.OPEN, _I.RECV_DATA): _S.OPEN,
    (_S.OPEN, _I.SEND_WINDOW): _S.OPEN,
    (_S.OPEN, _I.RECV_WINDOW): _S.OPEN,
    (_S.OPEN, _I.SEND_FIN): _S.HALF_CLOSED_LOCAL,
    (_S.OPEN, _I.RECV_FIN): _S.HALF_CLOSED_REMOTE,
    # We finished sending: we still receive (and credit) data; the peer still credits ours.
    (_S.HALF_CLOSED_LOCAL, _I.RECV_DATA): _S.HALF_CLOSED_LOCAL,
    (_S.HALF_CLOSED_LOCAL, _I.SEND_WINDOW): _S.HALF_CLOSED_LOCAL,
    (_S.HALF_CLOSED_LOCAL, _I.RECV_WINDOW): _S.HALF_CLOSED_LOCAL,
    (_S.HALF_CLOSED_LOCAL, _I.RECV_FIN): _S.CLOSED,
    # The peer finished sending: we still send data and receive credit for it.
    (_S.HALF_CLOSED_REMOTE, _I.SEND_DATA): _S.HALF_CLOSED_REMOTE,
    (_S.HALF_CLOSED_REMOTE, _I.RECV_WINDOW): _S.HALF_CLOSED_REMOTE,
    (_S.HALF_CLOSED_REMOTE, _I.SEND_FIN): _S.CLOSED,
    # Either side may abort a stream from any live state.
    **{(state, _I.SEND_RST): _S.CLOSED for state in _LIVE},
    **{(state, _I.RECV_RST): _S.CLOSED for state in _LIVE},
}

#: Derived from the table, for the hot paths that only ask "may data flow this way?".
CAN_SEND_DATA: Final = frozenset(s for (s, i) in TRANSITIONS if i is _I.SEND_DATA)
CAN_RECEIVE_DATA: Final = frozenset(s for (s, i) in TRANSITIONS if i is _I.RECV_DATA)


def next_state(state: StreamState, event: Input) -> StreamState | None:
    """Return the state after ``event``, or None when the table forbids it."""
    return TRANSITIONS.get((state, event))
