"""A hostile peer: random and mutated frames fed to the multiplexer in random splits.

The mux faces the network, so whatever arrives, ``receive_data`` must not raise and the
connection must end up sane: alive with consistent bookkeeping, or terminated with a GOAWAY
queued that says why. Bounded so the suite stays fast; ``HYPOTHESIS_PROFILE=dev`` or a larger
``max_examples`` digs deeper.
"""

from __future__ import annotations

import itertools
import random
import struct

from hypothesis import given
from hypothesis import strategies as st

from tether.tunnel import (
    Connection,
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    LocalProtocolError,
    MuxConfig,
    StreamOpened,
    StreamState,
)
from tether.tunnel import _frames as fr
from tether.tunnel._frames import FrameType

CONFIG = MuxConfig(
    max_frame_size=2048, stream_window=4096, connection_window=8192, max_concurrent_streams=4
)
HELLO = fr.encode_hello(CONFIG.max_frame_size, CONFIG.connection_window)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def frames_are_well_formed(data: bytes) -> list[int]:
    """Check our own output parses; return its frame types."""
    types = []
    pos = 0
    while pos < len(data):
        ftype, flags, reserved, _, length = fr.HEADER.unpack_from(data, pos)
        assert ftype in set(FrameType)
        assert flags == reserved == 0
        pos += fr.HEADER_SIZE + length
        assert pos <= len(data)
        types.append(ftype)
    return types


def feed_like_a_driver(conn: Connection, chunks: list[bytes]) -> list[object]:
    """Feed chunks as a driver would: accept streams, acknowledge data, stop at the end."""
    seen: list[object] = []
    for chunk in chunks:
        for event in conn.receive_data(chunk):
            seen.append(event)
            # Events describe a whole chunk: by the time a driver sees StreamOpened, a later
            # frame of the same chunk may have reset the stream or ended the connection.
            if isinstance(event, StreamOpened):
                if conn.stream_state(event.stream_id) is StreamState.OPENING_REMOTE:
                    conn.accept_stream(event.stream_id)
            elif isinstance(event, DataReceived):
                conn.acknowledge_received_data(event.stream_id, len(event.data))
        assert_sane(conn)
    return seen


def assert_sane(conn: Connection) -> None:
    """What must hold after any input, hostile or not."""
    stats = conn.statistics()
    assert 0 <= stats.receive_window <= fr.MAX_WINDOW
    assert 0 <= stats.send_window <= fr.MAX_WINDOW
    if not stats.terminated:  # the fuzz driver acknowledges everything while it can
        assert stats.unacknowledged_bytes == 0
    # Memory a peer can pin: one header plus one control payload, never a DATA payload.
    assert len(conn._buf) <= fr.HEADER_SIZE + fr.MAX_CONTROL_PAYLOAD
    remote = [sid for sid in conn.open_stream_ids() if sid % 2 == 1]
    assert len(remote) <= CONFIG.max_concurrent_streams
    for stream_id in conn.open_stream_ids():
        assert conn.local_send_window(stream_id) >= 0


def assert_ended_sanely(conn: Connection, events: list[object]) -> None:
    output = conn.data_to_send()
    types = frames_are_well_formed(output)
    terminated = conn.terminated
    if terminated is None:
        assert not any(isinstance(e, ConnectionTerminated) for e in events)
        conn.ping()  # still usable
        return
    assert events[-1] is terminated
    if not terminated.by_peer:
        assert terminated.error_code != ErrorCode.NO_ERROR
        assert types[-1] == FrameType.GOAWAY
        assert terminated.reason
    assert conn.receive_data(HELLO) == []
    try:
        conn.open_stream("x")
    except LocalProtocolError:
        pass
    else:  # pragma: no cover
        raise AssertionError("a terminated connection opened a stream")


@given(garbage=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_garbage_before_hello_is_refused_without_raising(garbage: bytes, cuts: list[int]) -> None:
    conn = Connection("listener", CONFIG)
    events = feed_like_a_driver(conn, split(garbage, cuts))
    assert_ended_sanely(conn, events)


def frame_strategy() -> st.SearchStrategy[bytes]:
    """Frames that are mostly plausible: right-ish types, small ids, lengths that often fit."""
    payload = st.one_of(
        st.binary(max_size=64),
        st.builds(lambda n: struct.pack("!I", n), st.integers(0, 2**32 - 1)),
        st.builds(
            lambda w, t, m: struct.pack("!IH", w, len(t)) + t + m,
            st.integers(0, 2**32 - 1),
            st.binary(min_size=1, max_size=12),
            st.sampled_from([b"", b"{}", b'{"a":"b"}', b"[1]", b"\xff"]),
        ),
    )

    @st.composite
    def one(draw: st.DrawFn) -> bytes:
        ftype = draw(st.one_of(st.sampled_from(list(FrameType)), st.integers(0, 255)))
        stream_id = draw(st.one_of(st.integers(0, 12), st.integers(0, 2**32 - 1)))
        body = draw(payload)
        length = len(body)
        if draw(st.integers(0, 9)) == 0:  # sometimes, a lying length
            length = draw(st.integers(0, 2**32 - 1))
        flags = draw(st.sampled_from([0, 0, 0, 0, 1]))
        return struct.pack("!BBHII", ftype, flags, 0, stream_id, length) + body

    return one()


@given(
    frames=st.lists(frame_strategy(), max_size=30),
    cuts=st.lists(st.integers(0, 4000), max_size=10),
)
def test_random_frames_after_hello_never_raise(frames: list[bytes], cuts: list[int]) -> None:
    conn = Connection("dialer", CONFIG)
    conn.data_to_send()
    events = feed_like_a_driver(conn, split(HELLO + b"".join(frames), cuts))
    assert_ended_sanely(conn, events)


def valid_session() -> bytes:
    """What a well-behaved listener sends a dialer: streams both ways, data, windows, pings."""
    dialer = Connection("dialer", CONFIG)
    listener = Connection("listener", CONFIG)
    listener.receive_data(dialer.data_to_send())
    wire = bytearray(listener.data_to_send())
    dialer.receive_data(bytes(wire))
    mine = dialer.open_stream("node:22", {"user": "alice"})
    listener.receive_data(dialer.data_to_send())
    listener.accept_stream(mine)
    theirs = [listener.open_stream(f"target-{i}", {"i": str(i)}) for i in range(3)]
    listener.send_data(mine, bytes(range(256)) * 8)
    listener.ping(b"pingpong")
    listener.end_stream(mine)
    listener.reset_stream(theirs[1], "changed my mind")
    wire += listener.data_to_send()
    wire += fr.encode_u32_frame(FrameType.WINDOW, 0, 1000)
    wire += fr.encode_goaway(mine, ErrorCode.NO_ERROR, b"draining")
    return bytes(wire)


SESSION = valid_session()


def session_dialer() -> Connection:
    """A dialer in the state the session expects: it opened stream 1."""
    conn = Connection("dialer", CONFIG)
    assert conn.open_stream("node:22", {"user": "alice"}) == 1
    conn.data_to_send()
    return conn


@given(
    seed=st.integers(0, 2**32 - 1),
    mutations=st.integers(1, 8),
    cuts=st.lists(st.integers(0, len(SESSION)), max_size=10),
)
def test_mutated_sessions_never_raise(seed: int, mutations: int, cuts: list[int]) -> None:
    rng = random.Random(seed)
    data = bytearray(SESSION)
    for _ in range(mutations):
        pos = rng.randrange(len(data))
        kind = rng.randrange(4)
        if kind == 0:
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[pos] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif kind == 2:
            del data[pos : pos + rng.randrange(1, 16)]
        else:
            data[pos:pos] = rng.randbytes(rng.randrange(1, 16))
    conn = session_dialer()
    events = feed_like_a_driver(conn, split(bytes(data), cuts))
    assert_ended_sanely(conn, events)


def test_the_unmutated_session_is_accepted() -> None:
    """The mutation test only means something if its seed session is valid."""
    conn = session_dialer()
    events = feed_like_a_driver(conn, [SESSION])
    assert conn.terminated is None, events
    assert conn.statistics().remote_goaway


def test_a_lying_length_does_not_make_us_buffer_it() -> None:
    conn = Connection("dialer", CONFIG)
    conn.data_to_send()
    conn.receive_data(HELLO)
    header = struct.pack("!BBHII", FrameType.OPEN, 0, 0, 2, 2**31)
    (event,) = conn.receive_data(header + b"x" * 100)
    assert isinstance(event, ConnectionTerminated)
    assert event.error_code is ErrorCode.FRAME_SIZE_ERROR
    assert len(conn._buf) == 0
