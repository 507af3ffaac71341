"""The tunnel multiplexer as its drivers meet it: two ends wired back to back in memory.

No sockets: a :class:`ConnectionPair` moves bytes between a dialer and a listener (h11's
``tests/helpers.py`` idea), and the violation tests play a hand-written peer that sends raw
frames. The stateful model test at the end drives both ends with arbitrary interleavings and
byte splits and compares them with a simple model.
"""

from __future__ import annotations

import itertools
import pathlib
import re
import struct
import tracemalloc
import types
from collections.abc import Sequence
from dataclasses import FrozenInstanceError, dataclass, field

import hypothesis
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import tether.tunnel as tunnel
from tether.tunnel import (
    Connection,
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    Event,
    GoAwayReceived,
    LocalProtocolError,
    MuxConfig,
    PingReceived,
    PongReceived,
    StreamAccepted,
    StreamClosedError,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
    StreamState,
    WindowUpdated,
)
from tether.tunnel import _frames as fr
from tether.tunnel._frames import FrameType

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "tunnel-protocol.md"


# --------------------------------------------------------------------------- helpers


class ConnectionPair:
    """A dialer and a listener whose bytes are moved by hand, so tests control every step."""

    def __init__(self, dialer: MuxConfig | None = None, listener: MuxConfig | None = None) -> None:
        self.dialer = Connection("dialer", dialer)
        self.listener = Connection("listener", listener)
        assert self.pump() == ([], [])  # the HELLOs cross and produce no events

    def peer(self, conn: Connection) -> Connection:
        return self.listener if conn is self.dialer else self.dialer

    def deliver(self, sender: Connection, chunk_size: int | None = None) -> list[Event]:
        """Move everything ``sender`` queued to its peer; return the peer's events."""
        data = sender.data_to_send()
        if not data:
            return []
        receiver = self.peer(sender)
        if chunk_size is None:
            return receiver.receive_data(data)
        events: list[Event] = []
        for i in range(0, len(data), chunk_size):
            events += receiver.receive_data(data[i : i + chunk_size])
        return events

    def pump(self) -> tuple[list[Event], list[Event]]:
        """Deliver both ways until quiet; return (dialer's events, listener's events)."""
        at_dialer: list[Event] = []
        at_listener: list[Event] = []
        while True:
            to_listener = self.deliver(self.dialer)
            to_dialer = self.deliver(self.listener)
            if not to_listener and not to_dialer and not self._queued():
                return at_dialer, at_listener
            at_listener += to_listener
            at_dialer += to_dialer

    def _queued(self) -> bool:
        return bool(self.dialer.statistics().pending_output) or bool(
            self.listener.statistics().pending_output
        )

    def open_accepted(self, target: str = "node-1:22") -> int:
        """Open a stream from the dialer and accept it at the listener."""
        stream_id = self.dialer.open_stream(target)
        _, at_listener = self.pump()
        assert at_listener == [StreamOpened(stream_id=stream_id, target=target)]
        self.listener.accept_stream(stream_id)
        at_dialer, _ = self.pump()
        assert at_dialer == [StreamAccepted(stream_id=stream_id)]
        return stream_id


def frames_in(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split encoded output into (type, stream id, payload), checking it is well-formed."""
    out = []
    pos = 0
    while pos < len(data):
        ftype, flags, reserved, stream_id, length = fr.HEADER.unpack_from(data, pos)
        assert flags == 0
        assert reserved == 0
        payload = data[pos + fr.HEADER_SIZE : pos + fr.HEADER_SIZE + length]
        assert len(payload) == length
        out.append((ftype, stream_id, payload))
        pos += fr.HEADER_SIZE + length
    return out


def goaway_in(data: bytes) -> tuple[int, ErrorCode, str]:
    """The (last stream id, code, reason) of the GOAWAY in ``data``."""
    goaways = [payload for ftype, _, payload in frames_in(data) if ftype == FrameType.GOAWAY]
    assert len(goaways) == 1
    last, code, reason = fr.decode_goaway(memoryview(goaways[0]))
    return last, ErrorCode(code), reason


def data_of(events: Sequence[Event], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


def peer_hello(config: MuxConfig | None = None) -> bytes:
    config = config or MuxConfig()
    return fr.encode_hello(config.max_frame_size, config.connection_window)


def raw_peer_of(role: tunnel.Role = "listener", config: MuxConfig | None = None) -> Connection:
    """A Connection that already got a valid HELLO from a hand-played peer."""
    conn = Connection(role, config)
    conn.data_to_send()
    assert conn.receive_data(peer_hello()) == []
    return conn


def open_frame(stream_id: int, target: bytes = b"db:5432", metadata: bytes = b"") -> bytes:
    return fr.encode_open(stream_id, 4 * 1024 * 1024, target, metadata)


# --------------------------------------------------------------------------- public surface


def test_public_api_is_what_all_claims() -> None:
    # isidentifier: pytest's assertion rewriting adds "@py_builtins" to the kernel's modules.
    public = {name for name in dir(tunnel) if name.isidentifier() and not name.startswith("_")}
    # submodules (mux, and the drivers: transport, server, agent, ...) are importable by name
    modules = {n for n in public if isinstance(getattr(tunnel, n), types.ModuleType)}
    assert public - modules == set(tunnel.__all__)
    for name in tunnel.__all__:
        obj = getattr(tunnel, name)
        if isinstance(obj, type):
            assert obj.__module__.startswith("tether.tunnel"), name


def test_mux_is_sans_io() -> None:
    package = pathlib.Path(tunnel.__file__).parent
    for name in ("mux.py", "_frames.py", "_events.py", "_state.py", "_errors.py"):
        path = package / name
        source = path.read_text()
        for module in ("trio", "socket", "ssl", "asyncio", "selectors"):
            assert not re.search(rf"^\s*(import|from) {module}\b", source, re.M), (path, module)


def test_protocol_doc_lists_every_frame_type_with_its_code() -> None:
    text = DOCS.read_text()
    for ftype in FrameType:
        assert re.search(rf"\|\s*{ftype.value:#x}\s*\|\s*`{ftype.name}`\s*\|", text, re.I), ftype


def test_events_are_frozen_keyword_only_and_validate() -> None:
    event = DataReceived(stream_id=1, data=b"x")
    with pytest.raises(FrozenInstanceError):
        event.stream_id = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        DataReceived(1, b"x")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="stream_id"):
        DataReceived(stream_id=0, data=b"x")
    with pytest.raises(TypeError, match="data must be bytes"):
        DataReceived(stream_id=1, data=bytearray(b"x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="8 bytes"):
        PingReceived(payload=b"short")
    with pytest.raises(ValueError, match="target"):
        StreamOpened(stream_id=2, target="")
    with pytest.raises(TypeError, match="metadata"):
        StreamOpened(stream_id=2, target="x", metadata={"k": 1})  # type: ignore[dict-item]
    assert not hasattr(event, "__dict__")
    terminated = ConnectionTerminated(error_code=2, reason="r", by_peer=True)
    assert terminated.error_code is ErrorCode.FLOW_CONTROL_ERROR
    assert ConnectionTerminated(error_code=99, reason="r", by_peer=True).error_code == 99


def test_config_rejects_impossible_limits() -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        MuxConfig(max_frame_size=10)
    with pytest.raises(ValueError, match="stream_window"):
        MuxConfig(stream_window=0)
    with pytest.raises(ValueError, match="connection_window"):
        MuxConfig(connection_window=2**31)
    with pytest.raises(ValueError, match="role"):
        Connection("server")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- streams


def test_dialer_opens_odd_stream_ids_and_listener_even() -> None:
    pair = ConnectionPair()
    assert [pair.dialer.open_stream("a") for _ in range(3)] == [1, 3, 5]
    assert [pair.listener.open_stream("b") for _ in range(3)] == [2, 4, 6]
    at_dialer, at_listener = pair.pump()
    assert [e.stream_id for e in at_listener if isinstance(e, StreamOpened)] == [1, 3, 5]
    assert [e.stream_id for e in at_dialer if isinstance(e, StreamOpened)] == [2, 4, 6]


def test_root_opens_stream_to_leaf_target_with_metadata() -> None:
    pair = ConnectionPair()
    stream_id = pair.listener.open_stream("node-7:22", {"user": "alice", "cluster": "root"})
    assert pair.listener.stream_state(stream_id) is StreamState.OPENING_LOCAL
    at_dialer, _ = pair.pump()
    assert at_dialer == [
        StreamOpened(
            stream_id=stream_id,
            target="node-7:22",
            metadata={"user": "alice", "cluster": "root"},
        )
    ]
    assert pair.dialer.stream_state(stream_id) is StreamState.OPENING_REMOTE
    pair.dialer.accept_stream(stream_id)
    _, at_listener = pair.pump()
    assert at_listener == [StreamAccepted(stream_id=stream_id)]
    assert pair.listener.stream_state(stream_id) is StreamState.OPEN
    assert pair.dialer.stream_state(stream_id) is StreamState.OPEN


def test_leaf_rejects_stream_to_unknown_target_with_reason() -> None:
    pair = ConnectionPair()
    stream_id = pair.listener.open_stream("not-in-inventory:22")
    pair.pump()
    pair.dialer.reject_stream(stream_id, "target is not in this cluster's inventory")
    _, at_listener = pair.pump()
    assert at_listener == [
        StreamRejected(stream_id=stream_id, reason="target is not in this cluster's inventory")
    ]
    assert pair.listener.open_stream_ids() == pair.dialer.open_stream_ids() == []


def test_bytes_flow_both_ways_and_half_closes_end_the_stream() -> None:
    pair = ConnectionPair()
    stream_id = pair.open_accepted()
    assert pair.dialer.send_data(stream_id, b"SSH-2.0-client\r\n") == 16
    assert pair.listener.send_data(stream_id, bytearray(b"SSH-2.0-server\r\n")) == 16
    at_dialer, at_listener = pair.pump()
    assert at_listener == [DataReceived(stream_id=stream_id, data=b"SSH-2.0-client\r\n")]
    assert at_dialer == [DataReceived(stream_id=stream_id, data=b"SSH-2.0-server\r\n")]

    pair.dialer.end_stream(stream_id)
    assert pair.dialer.stream_state(stream_id) is StreamState.HALF_CLOSED_LOCAL
    _, at_listener = pair.pump()
    assert at_listener == [StreamEnded(stream_id=stream_id)]
    assert pair.listener.stream_state(stream_id) is StreamState.HALF_CLOSED_REMOTE
    # The direction still open keeps working after the other one closed.
    assert pair.listener.send_data(stream_id, memoryview(b"bye")) == 3
    pair.listener.end_stream(stream_id)
    at_dialer, _ = pair.pump()
    assert at_dialer == [
        DataReceived(stream_id=stream_id, data=b"bye"),
        StreamEnded(stream_id=stream_id),
    ]
    assert pair.dialer.stream_state(stream_id) is StreamState.CLOSED
    assert pair.listener.stream_state(stream_id) is StreamState.CLOSED
    assert pair.dialer.statistics().open_streams == 0


def test_opener_may_not_send_before_the_stream_is_accepted() -> None:
    pair = ConnectionPair()
    stream_id = pair.dialer.open_stream("x")
    with pytest.raises(LocalProtocolError, match="opening-local"):
        pair.dialer.send_data(stream_id, b"early")
    with pytest.raises(LocalProtocolError, match="opening-local"):
        pair.dialer.end_stream(stream_id)
    assert pair.dialer.local_send_window(stream_id) == 0


def test_reset_aborts_stream_and_late_data_is_dropped_but_credited() -> None:
    config = MuxConfig(connection_window=64 * 1024, stream_window=64 * 1024)
    pair = ConnectionPair(config, config)
    stream_id = pair.open_accepted()
    pair.listener.send_data(stream_id, b"x" * 40_000)  # in flight while the dialer resets
    pair.dialer.reset_stream(stream_id, "user hung up")
    assert pair.dialer.stream_state(stream_id) is StreamState.CLOSED
    at_listener = pair.deliver(pair.dialer)
    assert at_listener == [StreamReset(stream_id=stream_id, reason="user hung up")]
    at_dialer = pair.deliver(pair.listener)
    assert at_dialer == []  # the late DATA is discarded, not an error
    pair.pump()
    # ...and its connection credit came back without any application acknowledging it.
    assert pair.listener.statistics().send_window == 64 * 1024
    with pytest.raises(StreamClosedError):
        pair.dialer.send_data(stream_id, b"more")
    with pytest.raises(StreamClosedError):
        pair.dialer.reset_stream(stream_id)


def test_opener_can_give_up_on_a_stream_still_opening() -> None:
    pair = ConnectionPair()
    stream_id = pair.dialer.open_stream("slow-target")
    pair.pump()
    pair.dialer.reset_stream(stream_id, "timeout")
    pair.listener.accept_stream(stream_id)  # crosses the RST on the wire
    at_dialer, at_listener = pair.pump()
    assert at_dialer == []  # the late OPEN_OK is ignored
    assert at_listener == [StreamReset(stream_id=stream_id, reason="timeout")]
    assert not pair.dialer.terminated
    assert not pair.listener.terminated


def test_data_survives_byte_by_byte_delivery() -> None:
    pair = ConnectionPair()
    stream_id = pair.open_accepted()
    payload = bytes(range(256)) * 20
    pair.dialer.send_data(stream_id, payload)
    pair.dialer.ping(b"12345678")
    pair.dialer.end_stream(stream_id)
    events = pair.deliver(pair.dialer, chunk_size=1)
    assert data_of(events, stream_id) == payload
    assert events[-2:] == [PingReceived(payload=b"12345678"), StreamEnded(stream_id=stream_id)]


def test_bulk_data_is_split_into_the_smaller_announced_frame_size() -> None:
    pair = ConnectionPair(MuxConfig(max_frame_size=64 * 1024), MuxConfig(max_frame_size=16 * 1024))
    stream_id = pair.open_accepted()
    assert pair.dialer.send_data(stream_id, b"a" * 100_000) == 100_000
    sizes = [len(p) for t, _, p in frames_in(pair.dialer.data_to_send()) if t == FrameType.DATA]
    assert sizes == [16 * 1024] * 6 + [100_000 - 6 * 16 * 1024]


def test_whole_bytes_chunk_of_payload_is_delivered_without_copy() -> None:
    pair = ConnectionPair()
    stream_id = pair.open_accepted()
    pair.dialer.send_data(stream_id, b"z" * 1000)
    wire = pair.dialer.data_to_send()
    header, payload = wire[: fr.HEADER_SIZE], wire[fr.HEADER_SIZE :]
    assert pair.listener.receive_data(header) == []
    (event,) = pair.listener.receive_data(payload)
    assert isinstance(event, DataReceived)
    assert event.data is payload


def test_a_big_frame_read_whole_arrives_in_bounded_chunks() -> None:
    pair = ConnectionPair()
    stream_id = pair.open_accepted()
    payload = bytes(range(256)) * 1024  # one 256 KiB frame
    pair.dialer.send_data(stream_id, payload)
    wire = pair.dialer.data_to_send()
    events = pair.listener.receive_data(wire)
    assert data_of(events, stream_id) == payload
    # Copies stay small (see mux._MAX_DELIVERY); a read that is all payload is passed as is.
    assert max(len(e.data) for e in events if isinstance(e, DataReceived)) == 64 * 1024
    pair.dialer.send_data(stream_id, payload)
    wire = pair.dialer.data_to_send()
    assert pair.listener.receive_data(wire[: fr.HEADER_SIZE]) == []
    tail = wire[fr.HEADER_SIZE :]
    (event,) = pair.listener.receive_data(tail)
    assert isinstance(event, DataReceived) and event.data is tail


def test_receive_accepts_bytearray_and_memoryview() -> None:
    pair = ConnectionPair()
    stream_id = pair.open_accepted()
    pair.dialer.send_data(stream_id, b"hello world")
    wire = bytearray(pair.dialer.data_to_send())
    events = pair.listener.receive_data(memoryview(wire)[:15])
    events += pair.listener.receive_data(wire[15:])
    wire[:] = b"\0" * len(wire)  # the caller reuses its buffer; delivered data must not change
    assert data_of(events, stream_id) == b"hello world"


# --------------------------------------------------------------------------- flow control


def test_sender_never_exceeds_windows_and_resumes_after_window_update() -> None:
    config = MuxConfig(max_frame_size=1024, stream_window=4096, connection_window=1 << 20)
    pair = ConnectionPair(config, config)
    stream_id = pair.open_accepted()
    assert pair.dialer.local_send_window(stream_id) == 4096
    assert pair.dialer.send_data(stream_id, b"a" * 10_000) == 4096
    assert pair.dialer.send_data(stream_id, b"a") == 0  # blocked, not an error
    _, at_listener = pair.pump()
    assert len(data_of(at_listener, stream_id)) == 4096

    pair.listener.acknowledge_received_data(stream_id, 1000)  # below half a window: no WINDOW
    assert pair.listener.data_to_send() == b""
    pair.listener.acknowledge_received_data(stream_id, 1048)
    at_dialer, _ = pair.pump()
    assert at_dialer == [WindowUpdated(stream_id=stream_id, delta=2048)]
    assert pair.dialer.local_send_window(stream_id) == 2048
    assert pair.dialer.send_data(stream_id, b"b" * 10_000) == 2048


def test_window_updates_are_batched_not_one_per_data_frame() -> None:
    config = MuxConfig(max_frame_size=1024, stream_window=64 * 1024)
    pair = ConnectionPair(config, config)
    stream_id = pair.open_accepted()
    for _ in range(64):
        pair.dialer.send_data(stream_id, b"x" * 1024)
        for event in pair.deliver(pair.dialer):
            assert isinstance(event, DataReceived)
            pair.listener.acknowledge_received_data(stream_id, len(event.data))
    windows = [f for f in frames_in(pair.listener.data_to_send()) if f[0] == FrameType.WINDOW]
    assert [(sid, fr.decode_u32(memoryview(p))) for _, sid, p in windows] == [
        (stream_id, 32 * 1024),
        (stream_id, 32 * 1024),
    ]


def test_connection_window_is_shared_by_all_streams() -> None:
    config = MuxConfig(max_frame_size=1024, stream_window=8192, connection_window=10_000)
    pair = ConnectionPair(config, config)
    first, second = pair.open_accepted(), pair.open_accepted()
    assert pair.dialer.send_data(first, b"1" * 8192) == 8192
    assert pair.dialer.local_send_window(second) == 10_000 - 8192
    assert pair.dialer.send_data(second, b"2" * 8192) == 10_000 - 8192
    pair.pump()
    # Acknowledging on one stream frees connection credit that the other stream can use.
    pair.listener.acknowledge_received_data(first, 8192)
    at_dialer, _ = pair.pump()
    assert WindowUpdated(stream_id=0, delta=8192) in at_dialer
    assert pair.dialer.send_data(second, b"2" * 8192) == 8192 - (10_000 - 8192)


def test_acknowledging_after_the_stream_closed_still_credits_the_connection() -> None:
    config = MuxConfig(max_frame_size=1024, stream_window=4096, connection_window=4096)
    pair = ConnectionPair(config, config)
    stream_id = pair.open_accepted()
    pair.dialer.send_data(stream_id, b"q" * 4096)
    pair.dialer.end_stream(stream_id)
    pair.pump()
    pair.listener.end_stream(stream_id)
    pair.pump()
    assert pair.listener.stream_state(stream_id) is StreamState.CLOSED
    assert pair.listener.statistics().unacknowledged_bytes == 4096
    pair.listener.acknowledge_received_data(stream_id, 4096)
    at_dialer, _ = pair.pump()
    assert at_dialer == [WindowUpdated(stream_id=0, delta=4096)]
    other = pair.open_accepted()
    assert pair.dialer.local_send_window(other) == 4096


def test_acknowledging_more_than_was_delivered_is_a_local_error() -> None:
    pair = ConnectionPair()
    stream_id = pair.open_accepted()
    pair.dialer.send_data(stream_id, b"abc")
    pair.pump()
    with pytest.raises(LocalProtocolError, match="only 3"):
        pair.listener.acknowledge_received_data(stream_id, 4)
    with pytest.raises(StreamClosedError):
        pair.listener.acknowledge_received_data(99, 1)
    pair.listener.acknowledge_received_data(stream_id, 3)


def test_tiny_windows_still_credit_without_zero_increments() -> None:
    config = MuxConfig(max_frame_size=1024, stream_window=1, connection_window=1)
    pair = ConnectionPair(config, config)
    stream_id = pair.open_accepted()
    for i, byte in enumerate(b"slow"):
        assert pair.dialer.send_data(stream_id, b"slow"[i:]) == 1
        (received,) = pair.deliver(pair.dialer)
        assert received == DataReceived(stream_id=stream_id, data=bytes([byte]))
        pair.listener.acknowledge_received_data(stream_id, 0)  # a no-op, never WINDOW(0)
        pair.listener.acknowledge_received_data(stream_id, 1)
        at_dialer, _ = pair.pump()
        assert {e.stream_id for e in at_dialer if isinstance(e, WindowUpdated)} == {0, stream_id}
    assert pair.dialer.terminated is None and pair.listener.terminated is None


def test_events_of_one_chunk_describe_the_state_after_the_whole_chunk() -> None:
    conn = raw_peer_of("listener")
    opened, reset = conn.receive_data(open_frame(1) + fr.encode_reason_frame(FrameType.RST, 1, b""))
    assert opened == StreamOpened(stream_id=1, target="db:5432")
    assert reset == StreamReset(stream_id=1, reason="")
    assert conn.stream_state(1) is StreamState.CLOSED
    with pytest.raises(StreamClosedError):
        conn.accept_stream(1)  # the driver answers an event whose stream is already gone
    assert conn.local_send_window(1) == 0  # queries never raise


def test_every_stream_is_closed_once_the_connection_is_terminated() -> None:
    pair = ConnectionPair()
    stream_id = pair.open_accepted()
    pair.listener.receive_data(b"")
    assert pair.listener.stream_state(stream_id) is StreamState.CLOSED
    assert pair.listener.statistics().open_streams == 0
    assert pair.listener.local_send_window(stream_id) == 0
    pair.listener.acknowledge_received_data(stream_id, 0)  # bookkeeping after the end is a no-op


# --------------------------------------------------------------------------- limits, goaway, ping


def test_streams_beyond_the_concurrency_limit_are_refused_not_fatal() -> None:
    pair = ConnectionPair(listener=MuxConfig(max_concurrent_streams=2))
    ids = [pair.dialer.open_stream(f"t{i}") for i in range(3)]
    at_dialer, at_listener = pair.pump()
    assert [e.stream_id for e in at_listener if isinstance(e, StreamOpened)] == ids[:2]
    assert at_dialer == [
        StreamRejected(stream_id=ids[2], reason="too many concurrent streams (limit 2)")
    ]
    # Closing one frees a slot.
    pair.listener.reject_stream(ids[0], "no")
    fourth = pair.dialer.open_stream("t3")
    _, at_listener = pair.pump()
    assert StreamOpened(stream_id=fourth, target="t3") in at_listener


def test_graceful_goaway_lets_existing_streams_finish_and_refuses_new_ones() -> None:
    pair = ConnectionPair()
    existing = pair.open_accepted()
    unseen = pair.dialer.open_stream("queued")  # still in the dialer's buffer
    pair.listener.goaway("proxy restarting")
    at_dialer = pair.deliver(pair.listener)
    assert at_dialer == [
        GoAwayReceived(last_stream_id=existing, reason="proxy restarting"),
        StreamRejected(stream_id=unseen, reason="peer is going away: proxy restarting"),
    ]
    with pytest.raises(LocalProtocolError, match="GOAWAY"):
        pair.dialer.open_stream("new")
    with pytest.raises(LocalProtocolError, match="GOAWAY"):
        pair.listener.open_stream("new")
    at_dialer, at_listener = pair.pump()  # the unseen OPEN is refused; its OPEN_FAIL ignored
    assert at_dialer == [] and at_listener == []
    pair.dialer.send_data(existing, b"still works")
    pair.dialer.end_stream(existing)
    pair.listener.end_stream(existing)
    _, at_listener = pair.pump()
    assert data_of(at_listener, existing) == b"still works"
    assert pair.listener.statistics().open_streams == 0
    assert not pair.listener.terminated
    stats = pair.dialer.statistics()
    assert stats.remote_goaway and not stats.local_goaway


def test_goaway_sent_says_at_once_whether_this_side_went_away() -> None:
    pair = ConnectionPair()
    assert not pair.listener.goaway_sent and not pair.dialer.goaway_sent
    pair.listener.goaway("proxy restarting")
    pair.pump()
    assert pair.listener.goaway_sent and pair.listener.statistics().local_goaway
    assert not pair.dialer.goaway_sent  # it received one, it sent none


def test_goaway_with_error_terminates_both_ends() -> None:
    pair = ConnectionPair()
    pair.open_accepted()
    pair.dialer.goaway("shutting down hard", ErrorCode.INTERNAL_ERROR)
    assert pair.dialer.terminated is not None
    assert pair.dialer.terminated.by_peer is False
    at_listener = pair.deliver(pair.dialer)
    assert at_listener == [
        ConnectionTerminated(
            error_code=ErrorCode.INTERNAL_ERROR,
            reason="shutting down hard",
            by_peer=True,
            last_stream_id=0,
        )
    ]
    with pytest.raises(LocalProtocolError, match="terminated"):
        pair.listener.open_stream("x")
    assert pair.listener.receive_data(b"anything") == []


def test_ping_is_answered_with_pong_carrying_the_same_payload() -> None:
    pair = ConnectionPair()
    first = pair.dialer.ping()
    second = pair.dialer.ping()
    assert first != second and len(first) == len(second) == 8
    at_dialer, at_listener = pair.pump()
    assert at_listener == [PingReceived(payload=first), PingReceived(payload=second)]
    assert at_dialer == [PongReceived(payload=first), PongReceived(payload=second)]
    with pytest.raises(LocalProtocolError, match="8 bytes"):
        pair.dialer.ping(b"short")


def test_transport_close_terminates_cleanly_or_mid_frame() -> None:
    pair = ConnectionPair()
    assert pair.listener.receive_data(b"") == [
        ConnectionTerminated(error_code=ErrorCode.NO_ERROR, reason="transport closed", by_peer=True)
    ]
    pair = ConnectionPair()
    stream_id = pair.open_accepted()
    pair.dialer.send_data(stream_id, b"abcdef")
    pair.listener.receive_data(pair.dialer.data_to_send()[:-2])
    (event,) = pair.listener.receive_data(b"")
    assert isinstance(event, ConnectionTerminated)
    assert event.error_code is ErrorCode.PROTOCOL_ERROR
    assert "middle of a frame" in event.reason


def test_local_misuse_raises_and_leaves_the_connection_usable() -> None:
    pair = ConnectionPair()
    stream_id = pair.open_accepted()
    with pytest.raises(StreamClosedError, match="stream 41"):
        pair.dialer.send_data(41, b"x")
    with pytest.raises(LocalProtocolError, match="non-empty str"):
        pair.dialer.open_stream("")
    with pytest.raises(LocalProtocolError, match="str to str"):
        pair.dialer.open_stream("x", {"a": 1})  # type: ignore[dict-item]
    with pytest.raises(LocalProtocolError, match="exceed"):
        pair.dialer.open_stream("x" * 20_000)
    with pytest.raises(LocalProtocolError, match="state open"):
        pair.dialer.accept_stream(stream_id)  # it is ours, and open
    pair.dialer.end_stream(stream_id)
    with pytest.raises(LocalProtocolError, match="half-closed-local"):
        pair.dialer.send_data(stream_id, b"after fin")
    with pytest.raises(LocalProtocolError, match="half-closed-local"):
        pair.dialer.end_stream(stream_id)
    assert pair.dialer.terminated is None
    pair.pump()
    assert pair.open_accepted() > stream_id


def test_statistics_count_streams_bytes_and_windows() -> None:
    pair = ConnectionPair()
    stream_id = pair.open_accepted()
    pair.dialer.send_data(stream_id, b"x" * 1000)
    stats = pair.dialer.statistics()
    assert stats.streams_opened_locally == 1
    assert stats.bytes_sent == 1000
    assert stats.send_window == 16 * 1024 * 1024 - 1000
    assert stats.pending_output == 1000 + fr.HEADER_SIZE
    pair.pump()
    stats = pair.listener.statistics()
    assert stats.streams_opened_by_peer == 1
    assert stats.bytes_received == 1000
    assert stats.unacknowledged_bytes == 1000
    assert stats.receive_window == 16 * 1024 * 1024 - 1000


def test_an_idle_stream_costs_well_under_a_kilobyte_in_the_mux() -> None:
    pair = ConnectionPair()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ids = [pair.dialer.open_stream("node:22") for _ in range(1000)]
        pair.pump()
        for stream_id in ids:
            pair.listener.accept_stream(stream_id)
        pair.pump()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_stream_both_ends = (after - before) / 1000
    assert per_stream_both_ends < 1024, per_stream_both_ends


# --------------------------------------------------------------------------- peer violations


@dataclass
class Violation:
    """A hand-played peer's frames after HELLO, and what the mux must say about them."""

    frames: list[bytes]
    code: ErrorCode
    reason: str
    setup: str = "none"  # "open-remote": the peer opened stream 1 and we accepted it
    config: MuxConfig = field(default_factory=MuxConfig)


def _hdr(ftype: int, stream_id: int, length: int, flags: int = 0, reserved: int = 0) -> bytes:
    return struct.pack("!BBHII", ftype, flags, reserved, stream_id, length)


def _window(stream_id: int, delta: int) -> bytes:
    return fr.encode_u32_frame(FrameType.WINDOW, stream_id, delta)


def _data(stream_id: int, payload: bytes) -> bytes:
    return fr.frame(FrameType.DATA, stream_id, payload)


P = ErrorCode.PROTOCOL_ERROR
F = ErrorCode.FLOW_CONTROL_ERROR
S = ErrorCode.FRAME_SIZE_ERROR
SMALL = MuxConfig(max_frame_size=1024, stream_window=2048, connection_window=3000)

VIOLATIONS = {
    "unknown frame type": Violation([_hdr(0x42, 0, 0)], P, "unknown frame type 0x42"),
    "nonzero flags": Violation([_hdr(FrameType.PING, 0, 8, flags=1) + b"x" * 8], P, "nonzero"),
    "nonzero reserved": Violation([_hdr(FrameType.FIN, 1, 0, reserved=7)], P, "nonzero"),
    "second HELLO": Violation([peer_hello()], P, "HELLO twice"),
    "DATA longer than announced, from its header alone": Violation(
        [_hdr(FrameType.DATA, 1, 2**32 - 1)], S, "exceeds the announced maximum"
    ),
    "control frame over the cap": Violation(
        [_hdr(FrameType.RST, 1, fr.MAX_CONTROL_PAYLOAD + 1)], S, "RST frame has length"
    ),
    "WINDOW of the wrong length": Violation(
        [_hdr(FrameType.WINDOW, 0, 3) + b"abc"], S, "must be 4"
    ),
    "PING on a stream": Violation([_hdr(FrameType.PING, 1, 8) + b"x" * 8], P, "must be 0"),
    "FIN on stream 0": Violation([fr.frame(FrameType.FIN, 0)], P, "FIN frame on stream 0"),
    "OPEN with the dialer's parity from the listener": Violation(
        [open_frame(2)], P, "the dialer opens odd ids"
    ),
    "OPEN reusing an id": Violation([open_frame(1), open_frame(1)], P, "not above its last"),
    "OPEN with a target that does not fit": Violation(
        [fr.frame(FrameType.OPEN, 1, struct.pack("!IH", 10, 200) + b"ab")], P, "does not fit"
    ),
    "OPEN with a target that is not UTF-8": Violation(
        [open_frame(1, target=b"\xff\xfe")], P, "not valid UTF-8"
    ),
    "OPEN with metadata that is not JSON": Violation(
        [open_frame(1, metadata=b"{nope")], P, "not valid JSON"
    ),
    "OPEN with nested metadata": Violation(
        [open_frame(1, metadata=b'{"a": {"b": 1}}')], P, "JSON object of strings"
    ),
    "DATA on a stream never opened": Violation([_data(7, b"x")], P, "DATA on stream 7, never"),
    "WINDOW on a stream never opened": Violation([_window(9, 1)], P, "never opened"),
    "OPEN_OK for a stream we never opened": Violation(
        [fr.encode_u32_frame(FrameType.OPEN_OK, 2, 10)], P, "OPEN_OK on stream 2, never"
    ),
    "OPEN_OK for a stream the peer opened": Violation(
        [fr.encode_u32_frame(FrameType.OPEN_OK, 1, 10)],
        P,
        "OPEN_OK on stream 1 in state open",
        setup="open-remote",
    ),
    "DATA before the stream was accepted": Violation(
        [open_frame(1), _data(1, b"x")], P, "DATA on stream 1 in state opening-remote"
    ),
    "DATA after FIN": Violation(
        [fr.frame(FrameType.FIN, 1), _data(1, b"x")], P, "half-closed-remote", setup="open-remote"
    ),
    "DATA beyond the stream window": Violation(
        [_data(1, b"x" * 1024), _data(1, b"x" * 1024), _data(1, b"x")],
        F,
        "exceeds its window of 0",
        setup="open-remote",
        config=SMALL,
    ),
    "DATA beyond the connection window": Violation(
        [open_frame(3), *[_data(1, b"x" * 1000)] * 2, _data(3, b"x" * 1001)],
        F,
        "exceeds the connection window of 1000",
        setup="open-remote",
        config=SMALL,
    ),
    "WINDOW with increment 0": Violation([_window(0, 0)], F, "increment 0"),
    "WINDOW overflowing the connection window": Violation(
        [_window(0, fr.MAX_WINDOW)], F, "overflows the connection"
    ),
    "WINDOW overflowing a stream window": Violation(
        [_window(1, fr.MAX_WINDOW)], F, "overflows the send window of stream 1", setup="open-remote"
    ),
}


@pytest.mark.parametrize("case", VIOLATIONS.values(), ids=list(VIOLATIONS))
def test_peer_violation_gets_goaway_and_terminates(case: Violation) -> None:
    conn = raw_peer_of("listener", case.config)
    if case.setup == "open-remote":
        assert conn.receive_data(open_frame(1))
        conn.accept_stream(1)
        conn.data_to_send()
    events = conn.receive_data(b"".join(case.frames))
    assert events, "a violation must be reported"
    terminated = events[-1]
    assert isinstance(terminated, ConnectionTerminated)
    assert terminated.by_peer is False
    assert terminated.error_code is case.code
    assert case.reason in terminated.reason
    _, code, reason = goaway_in(conn.data_to_send())
    assert code is case.code
    assert case.reason in reason
    assert conn.terminated == terminated
    # the refused frame changed nothing: no window past the most a peer may grant
    assert 0 <= conn.statistics().send_window <= fr.MAX_WINDOW
    for stream_id in conn.open_stream_ids():
        assert 0 <= conn.local_send_window(stream_id) <= fr.MAX_WINDOW
    assert conn.receive_data(_window(0, 1)) == []  # input after the end is ignored
    with pytest.raises(LocalProtocolError, match="terminated"):
        conn.ping()


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (_window(0, 5), "expected HELLO as the first frame, got WINDOW"),
        (_data(1, b"x"), "expected HELLO as the first frame, got DATA"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "unknown frame type 0x47"),
        (fr.frame(FrameType.HELLO, 0, b"nope" + bytes(12)), "bad HELLO magic"),
        (
            fr.frame(FrameType.HELLO, 0, struct.pack("!4sHHII", b"tthr", 2, 0, 4096, 4096)),
            "version 2",
        ),
        (
            fr.frame(FrameType.HELLO, 0, struct.pack("!4sHHII", b"tthr", 1, 0, 10, 4096)),
            "max frame",
        ),
    ],
)
def test_peer_that_does_not_open_with_a_valid_hello_is_refused(first: bytes, reason: str) -> None:
    conn = Connection("listener")
    conn.data_to_send()
    events = conn.receive_data(first)
    assert isinstance(events[-1], ConnectionTerminated)
    assert reason in events[-1].reason
    assert reason in goaway_in(conn.data_to_send())[2]


def test_violation_after_valid_frames_reports_their_events_first() -> None:
    conn = raw_peer_of("listener")
    events = conn.receive_data(
        open_frame(1) + fr.frame(FrameType.PING, 0, b"p" * 8) + _hdr(0x77, 0, 0)
    )
    assert [type(e) for e in events] == [StreamOpened, PingReceived, ConnectionTerminated]
    last, _, _ = goaway_in(conn.data_to_send())
    assert last == 1  # the GOAWAY names the last stream it processed


# --------------------------------------------------------------------------- reply backlog

BOUNDED = MuxConfig(max_reply_backlog=fr.HEADER_SIZE + fr.MAX_CONTROL_PAYLOAD)
PING = fr.frame(FrameType.PING, 0, b"p" * 8)


def test_a_peer_that_pings_without_reading_the_pongs_tells_the_driver_to_stop_reading() -> None:
    conn = raw_peer_of("listener", BOUNDED)
    pings = -(-BOUNDED.max_reply_backlog // len(PING))  # the first that reaches the bound
    events = conn.receive_data(PING * (pings - 1))
    assert len(events) == pings - 1 and not conn.backlogged
    conn.receive_data(PING)
    assert conn.backlogged
    assert conn.reply_backlog == conn.statistics().reply_backlog == pings * len(PING)
    # once the transport took the PONGs, the driver reads again
    assert len(frames_in(conn.data_to_send())) == pings
    assert not conn.backlogged and conn.reply_backlog == 0
    assert conn.terminated is None


def test_a_peer_that_floods_pings_without_reading_gets_goaway_and_its_pongs_are_dropped() -> None:
    conn = raw_peer_of("listener", BOUNDED)
    flood = PING * (4 * BOUNDED.max_reply_backlog // len(PING) + 1)
    events = conn.receive_data(flood)
    terminated = events[-1]
    assert isinstance(terminated, ConnectionTerminated)
    assert terminated.error_code is ErrorCode.ENHANCE_YOUR_CALM
    assert "replies unread" in terminated.reason
    out = conn.data_to_send()
    # nothing queued for a peer that reads nothing is kept but the GOAWAY
    assert [ftype for ftype, _, _ in frames_in(out)] == [FrameType.GOAWAY]
    assert goaway_in(out)[1] is ErrorCode.ENHANCE_YOUR_CALM


def test_opens_refused_without_reading_the_refusals_count_as_replies_too() -> None:
    config = MuxConfig(max_concurrent_streams=0, max_reply_backlog=BOUNDED.max_reply_backlog)
    conn = raw_peer_of("listener", config)
    stream_id = 1
    while not conn.backlogged:
        assert conn.receive_data(open_frame(stream_id)) == []
        stream_id += 2
    assert conn.terminated is None
    flood = b"".join(open_frame(i) for i in range(stream_id, stream_id + 4000, 2))
    terminated = conn.receive_data(flood)[-1]
    assert isinstance(terminated, ConnectionTerminated)
    assert terminated.error_code is ErrorCode.ENHANCE_YOUR_CALM


def test_refusals_the_application_sends_count_and_replies_reset_when_taken() -> None:
    conn = raw_peer_of("listener", BOUNDED)
    stream_id = 1
    while not conn.backlogged:
        conn.receive_data(open_frame(stream_id))
        conn.reject_stream(stream_id, "this side accepts no streams")
        stream_id += 2
    assert conn.terminated is None  # a local reply never ends the connection itself
    conn.data_to_send()
    assert conn.reply_backlog == 0


def test_pings_a_peer_reads_the_answers_of_never_pile_up() -> None:
    pair = ConnectionPair(listener=BOUNDED)
    for _ in range(200):
        for _ in range(50):
            pair.dialer.ping()
        pair.pump()
        assert not pair.listener.backlogged
    assert pair.listener.terminated is None


def test_goaway_for_a_peer_that_reads_nothing_drops_what_was_queued_for_it() -> None:
    conn = raw_peer_of("listener", BOUNDED)
    conn.receive_data(PING * 10)
    conn.goaway("does not read", ErrorCode.ENHANCE_YOUR_CALM)
    out = conn.data_to_send()
    assert [ftype for ftype, _, _ in frames_in(out)] == [FrameType.GOAWAY]
    assert conn.terminated is not None


def test_reply_backlog_bound_must_hold_one_reply() -> None:
    with pytest.raises(ValueError, match="max_reply_backlog"):
        MuxConfig(max_reply_backlog=100)


# --------------------------------------------------------------------------- stateful model


SIDES = ("dialer", "listener")
MODEL_CONFIG = MuxConfig(
    max_frame_size=1024, stream_window=2048, connection_window=3000, max_concurrent_streams=1000
)


@dataclass
class ModelStream:
    """What a simple model expects of one stream, per side."""

    opener: str
    known: dict[str, bool] = field(default_factory=dict)
    answered: bool = False  # the acceptor accepted or rejected
    accepted_seen: bool = False  # the opener saw StreamAccepted
    rejected: bool = False  # the acceptor rejected it
    rejected_seen: bool = False  # the opener saw StreamRejected
    fin_sent: dict[str, bool] = field(default_factory=dict)
    fin_seen: dict[str, bool] = field(default_factory=dict)
    reset: dict[str, bool] = field(default_factory=dict)  # this side sent or saw RST
    reset_any: bool = False
    sent: dict[str, bytearray] = field(default_factory=dict)
    received: dict[str, bytearray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for side in SIDES:
            self.known.setdefault(side, side == self.opener)
            self.fin_sent.setdefault(side, False)
            self.fin_seen.setdefault(side, False)
            self.reset.setdefault(side, False)
            self.sent.setdefault(side, bytearray())
            self.received.setdefault(side, bytearray())

    def expected_state(self, side: str) -> StreamState:
        if not self.known[side] or self.reset[side]:
            return StreamState.CLOSED
        if self.fin_sent[side] and self.fin_seen[side]:
            return StreamState.CLOSED
        if side == self.opener:
            if self.rejected_seen:
                return StreamState.CLOSED
            if not self.accepted_seen:
                return StreamState.OPENING_LOCAL
        elif not self.answered:
            return StreamState.OPENING_REMOTE
        elif self.rejected:
            return StreamState.CLOSED
        if self.fin_sent[side]:
            return StreamState.HALF_CLOSED_LOCAL
        if self.fin_seen[side]:
            return StreamState.HALF_CLOSED_REMOTE
        return StreamState.OPEN


SENDING = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
LIVE = tuple(s for s in StreamState if s not in (StreamState.CLOSED, StreamState.IDLE))


def other(side: str) -> str:
    return "listener" if side == "dialer" else "dialer"


class TunnelModel(RuleBasedStateMachine):
    """Both ends driven by arbitrary commands, bytes delivered in arbitrary splits.

    The invariants: each side's stream states equal the model's, data arrives in order and
    intact (a prefix of what was sent until everything is delivered), no window is ever
    exceeded (the receiver would terminate) and, once everything is delivered and acknowledged,
    every byte of credit is back.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ends = {side: Connection(side, MODEL_CONFIG) for side in SIDES}  # type: ignore[arg-type]
        self.wire: dict[str, bytearray] = {side: bytearray() for side in SIDES}
        self.model: dict[int, ModelStream] = {}
        self.unacked: dict[tuple[str, int], int] = {}
        self.pings: dict[str, list[bytes]] = {side: [] for side in SIDES}
        self.written = 0

    # -- plumbing

    def _collect(self, side: str) -> None:
        self.wire[side] += self.ends[side].data_to_send()

    def _feed(self, receiver: str, chunk: bytes) -> None:
        for event in self.ends[receiver].receive_data(chunk):
            self._observe(receiver, event)

    def _observe(self, side: str, event: Event) -> None:
        assert not isinstance(event, ConnectionTerminated | GoAwayReceived), event
        if isinstance(event, PingReceived | PongReceived | WindowUpdated):
            if isinstance(event, PongReceived):
                assert event.payload == self.pings[side].pop(0)
            return
        stream = self.model[event.stream_id]  # type: ignore[attr-defined]
        if isinstance(event, StreamOpened):
            assert stream.opener == other(side)
            stream.known[side] = True
        elif isinstance(event, StreamAccepted):
            assert side == stream.opener
            stream.accepted_seen = True
        elif isinstance(event, StreamRejected):
            assert side == stream.opener
            stream.rejected_seen = True
        elif isinstance(event, DataReceived):
            stream.received[side] += event.data
            assert stream.sent[other(side)].startswith(stream.received[side])
            key = (side, event.stream_id)
            self.unacked[key] = self.unacked.get(key, 0) + len(event.data)
        elif isinstance(event, StreamEnded):
            stream.fin_seen[side] = True
        elif isinstance(event, StreamReset):
            stream.reset[side] = True
        else:  # pragma: no cover
            raise AssertionError(event)

    def _where(self, *states: StreamState) -> list[tuple[str, int]]:
        """Every (side, stream id) whose model state is one of ``states``."""
        return [
            (side, sid)
            for sid, stream in sorted(self.model.items())
            for side in SIDES
            if stream.expected_state(side) in states
        ]

    def _owed(self) -> list[tuple[str, int]]:
        return sorted(key for key, count in self.unacked.items() if count)

    @initialize()
    def establish_a_stream_each_way(self) -> None:
        """Start with live streams: random programs are short, and data needs accepted streams."""
        for side in SIDES:
            self.open_stream(side=side, name=f"from-{side}")
        for side in SIDES:
            self._deliver(side, [10_000], everything=True)
        for side, stream_id in self._where(StreamState.OPENING_REMOTE):
            self.model[stream_id].answered = True
            self.ends[side].accept_stream(stream_id)
        for side in SIDES:
            self._deliver(side, [10_000], everything=True)

    # -- rules (preconditions keep hypothesis from wasting steps on impossible commands)

    @precondition(lambda self: len({sid for _, sid in self._where(*LIVE)}) < 3)
    @rule(side=st.sampled_from(SIDES), name=st.text(min_size=1, max_size=20))
    def open_stream(self, side: str, name: str) -> None:
        stream_id = self.ends[side].open_stream(name, {"by": side})
        assert stream_id not in self.model
        assert stream_id % 2 == (1 if side == "dialer" else 0)
        self.model[stream_id] = ModelStream(opener=side)

    @precondition(lambda self: self._where(StreamState.OPENING_REMOTE))
    @rule(data=st.data(), accept=st.booleans())
    def answer(self, data: st.DataObject, accept: bool) -> None:
        side, stream_id = data.draw(st.sampled_from(self._where(StreamState.OPENING_REMOTE)))
        stream = self.model[stream_id]
        stream.answered = True
        if accept:
            self.ends[side].accept_stream(stream_id)
        else:
            stream.rejected = True
            self.ends[side].reject_stream(stream_id, "no")

    @precondition(lambda self: self._where(*SENDING))
    @rule(data=st.data(), size=st.integers(1, 3000))
    def write(self, data: st.DataObject, size: int) -> None:
        side, stream_id = data.draw(st.sampled_from(self._where(*SENDING)))
        # A running pattern rather than drawn bytes: sizes large enough to exhaust windows are
        # cheap, and any lost, duplicated or reordered byte shows up in the comparison.
        payload = bytes((self.written + i) % 251 for i in range(size))
        self.written += size
        conn = self.ends[side]
        window = conn.local_send_window(stream_id)
        sent = conn.send_data(stream_id, payload)
        assert sent == min(len(payload), window)
        if sent < size:
            hypothesis.event("a window held a writer back")
        self.model[stream_id].sent[side] += payload[:sent]

    @precondition(lambda self: self._where(*SENDING))
    @rule(data=st.data(), now=st.integers(0, 2))
    def half_close(self, data: st.DataObject, now: int) -> None:
        if now:
            return
        side, stream_id = data.draw(st.sampled_from(self._where(*SENDING)))
        self.ends[side].end_stream(stream_id)
        self.model[stream_id].fin_sent[side] = True

    @precondition(lambda self: self._where(*LIVE))
    @rule(data=st.data(), now=st.integers(0, 3))
    def reset(self, data: st.DataObject, now: int) -> None:
        if now:
            return  # rules are drawn uniformly; resetting less often lets more streams live
        side, stream_id = data.draw(st.sampled_from(self._where(*LIVE)))
        self.ends[side].reset_stream(stream_id, "reset by model")
        self.model[stream_id].reset[side] = True
        self.model[stream_id].reset_any = True

    @precondition(lambda self: self._owed())
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        side, stream_id = data.draw(st.sampled_from(self._owed()))
        count = data.draw(st.integers(1, self.unacked[side, stream_id]))
        self.ends[side].acknowledge_received_data(stream_id, count)
        self.unacked[side, stream_id] -= count

    @rule(side=st.sampled_from(SIDES))
    def ping(self, side: str) -> None:
        self.pings[side].append(self.ends[side].ping())

    @rule(
        splits=st.lists(st.integers(1, 700), min_size=1, max_size=6),
        everything=st.booleans(),
    )
    def deliver_to_listener(self, splits: list[int], everything: bool) -> None:
        self._deliver("dialer", splits, everything)

    @rule(
        splits=st.lists(st.integers(1, 700), min_size=1, max_size=6),
        everything=st.booleans(),
    )
    def deliver_to_dialer(self, splits: list[int], everything: bool) -> None:
        self._deliver("listener", splits, everything)

    def _deliver(self, side: str, splits: list[int], everything: bool) -> None:
        """Deliver bytes in flight in chunks of the drawn sizes (cycled, if ``everything``)."""
        self._collect(side)
        wire = self.wire[side]
        sizes = itertools.cycle(splits) if everything else iter(splits)
        for size in sizes:
            if not wire:
                break
            chunk = bytes(wire[:size])
            del wire[:size]
            self._feed(other(side), chunk)

    # -- invariants

    @invariant()
    def states_match_the_model(self) -> None:
        for stream_id, stream in self.model.items():
            for side in SIDES:
                assert self.ends[side].stream_state(stream_id) is stream.expected_state(side), (
                    stream_id,
                    side,
                    stream,
                )

    @invariant()
    def windows_never_go_negative(self) -> None:
        for conn in self.ends.values():
            assert conn.terminated is None
            stats = conn.statistics()
            assert stats.send_window >= 0
            assert stats.receive_window >= 0
            for stream_id in conn.open_stream_ids():
                assert conn.local_send_window(stream_id) >= 0
            assert stats.unacknowledged_bytes == sum(
                count for (side, _), count in self.unacked.items() if self.ends[side] is conn
            )

    def teardown(self) -> None:
        # Deliver everything both ways, acknowledge every byte, deliver the credit back.
        for _ in range(2):
            for _ in range(50):
                for side in SIDES:
                    self._collect(side)
                    if self.wire[side]:
                        chunk = bytes(self.wire[side])
                        self.wire[side].clear()
                        self._feed(other(side), chunk)
                if not any(self.wire.values()) and not any(
                    conn.statistics().pending_output for conn in self.ends.values()
                ):
                    break
            for (side, stream_id), count in self.unacked.items():
                if count:
                    self.ends[side].acknowledge_received_data(stream_id, count)
            self.unacked.clear()
        self.states_match_the_model()
        for stream_id, stream in self.model.items():
            for side in SIDES:
                if stream.reset_any:
                    assert stream.sent[other(side)].startswith(stream.received[side])
                else:
                    assert stream.received[side] == stream.sent[other(side)], stream_id
        dialer, listener = self.ends["dialer"], self.ends["listener"]
        # No credit leaked: what each side may send is what the other expects to receive.
        assert dialer.statistics().send_window == listener.statistics().receive_window
        assert listener.statistics().send_window == dialer.statistics().receive_window
        for conn in self.ends.values():
            stats = conn.statistics()
            assert stats.receive_window > MODEL_CONFIG.connection_window // 2
            assert stats.unacknowledged_bytes == 0
        assert self.pings == {side: [] for side in SIDES}


test_two_ends_agree_with_a_simple_model_under_any_interleaving = TunnelModel.TestCase
