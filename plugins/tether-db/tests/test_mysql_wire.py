"""MySQL's protocol as the engine reads and writes it, in memory."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tether_db.mysql import wire
from tether_db.mysql.wire import Cap, Event, ProtocolError


def read_all(data: bytes, **kwargs: int) -> list[wire.Frame]:
    reader = wire.FrameReader(**kwargs)
    reader.receive_data(data)
    out = []
    while (f := reader.next_frame()) is not None:
        out.append(f)
    return out


def test_frames_split_a_long_packet_and_mark_its_continuations() -> None:
    payload = b"\x03" + b"x" * (wire.MAX_FRAME + 9)
    got = read_all(wire.frames(0, payload))
    assert [(f.seq, len(f.payload), f.continuation) for f in got] == [
        (0, wire.MAX_FRAME, False),
        (1, 10, True),
    ]
    assert b"".join(f.payload for f in got) == payload


def test_a_packet_of_exactly_one_full_frame_ends_with_an_empty_one() -> None:
    got = read_all(wire.frames(3, b"y" * wire.MAX_FRAME) + wire.frame(0, b"\x0e"))
    assert [(f.seq, len(f.payload), f.continuation) for f in got] == [
        (3, wire.MAX_FRAME, False),
        (4, 0, True),
        (0, 1, False),
    ]


def test_frames_arrive_byte_by_byte() -> None:
    data = wire.frame(0, b"\x03SELECT 1") + wire.frame(0, b"\x01")
    reader = wire.FrameReader()
    got = []
    for byte in data:
        reader.receive_data(bytes([byte]))
        while (f := reader.next_frame()) is not None:
            got.append(f.payload)
    assert got == [b"\x03SELECT 1", b"\x01"]


def test_a_length_over_the_bound_is_refused_from_the_header() -> None:
    reader = wire.FrameReader(max_payload=wire.MAX_HANDSHAKE_PAYLOAD)
    reader.receive_data(b"\xff\xff\xff\x01")
    with pytest.raises(ProtocolError, match="16777215 bytes announced"):
        reader.next_frame()


def test_a_relay_takes_frames_as_they_came_and_leaves_out_one_it_answers() -> None:
    reader = wire.FrameReader(keep_raw=True)
    first, second, third = wire.frame(1, b"\x01"), wire.frame(2, b"\xfbfile"), wire.frame(3, b"3")
    reader.receive_data(first + second + third[:2])
    assert reader.next_frame() is not None
    assert reader.next_frame() is not None
    assert reader.take_raw(but_last=True) == first
    reader.discard()
    assert reader.next_frame() is None
    reader.receive_data(third[2:])
    assert reader.next_frame() is not None
    assert reader.take_raw() == third
    assert reader.take_raw() == b""


def test_greeting_offers_no_tls_and_reads_back() -> None:
    payload = wire.build_greeting(
        server_version="8.0.0-tether",
        connection_id=7,
        scramble=b"abcdefghijklmnopqrst",
        capabilities=wire.OFFERED_CAPABILITIES,
    )
    greeting = wire.parse_greeting(payload)
    assert greeting.connection_id == 7
    assert greeting.scramble == b"abcdefghijklmnopqrst"
    assert greeting.auth_plugin == "mysql_native_password"
    assert not greeting.capabilities & Cap.SSL
    assert not greeting.capabilities & Cap.LOCAL_FILES
    assert greeting.capabilities & Cap.MULTI_RESULTS


def test_greeting_err_from_the_server_is_raised() -> None:
    with pytest.raises(wire.ServerErr, match="Too many connections"):
        wire.parse_greeting(wire.build_err(1040, "08004", "Too many connections"))


def test_handshake_response_reads_back_with_database_plugin_and_attributes() -> None:
    caps = wire.OFFERED_CAPABILITIES
    payload = wire.build_handshake_response(
        capabilities=caps,
        max_packet=1 << 24,
        charset=45,
        user="alice",
        auth_response=b"\x01" * 20,
        database="shop",
        auth_plugin="mysql_native_password",
        connect_attrs={"_client_name": "libmariadb", "program_name": "mariadb"},
    )
    response = wire.parse_handshake_response(payload)
    assert isinstance(response, wire.HandshakeResponse)
    assert (response.user, response.database, response.charset) == ("alice", "shop", 45)
    assert response.auth_response == b"\x01" * 20
    assert response.auth_plugin == "mysql_native_password"
    assert response.connect_attrs == {"_client_name": "libmariadb", "program_name": "mariadb"}


def test_handshake_response_without_database_or_lenenc_auth() -> None:
    caps = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH
    payload = wire.build_handshake_response(
        capabilities=caps,
        max_packet=0,
        charset=8,
        user="bob",
        auth_response=b"",
        database="",
        auth_plugin="mysql_native_password",
    )
    response = wire.parse_handshake_response(payload)
    assert isinstance(response, wire.HandshakeResponse)
    assert (response.user, response.database, response.auth_response) == ("bob", "", b"")


def test_ssl_request_is_recognised() -> None:
    payload = wire.build_ssl_request(capabilities=Cap.PROTOCOL_41, max_packet=1, charset=45)
    request = wire.parse_handshake_response(payload)
    assert isinstance(request, wire.SSLRequest)
    assert request.capabilities & Cap.SSL


def test_pre_41_client_is_refused() -> None:
    with pytest.raises(ProtocolError, match=r"pre-4\.1"):
        wire.parse_handshake_response(struct.pack("<I", Cap.LONG_PASSWORD) + b"\0" * 40)


def test_auth_response_longer_than_the_packet_is_refused() -> None:
    caps = Cap.PROTOCOL_41 | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
    payload = struct.pack("<IIB", caps, 0, 45) + b"\0" * 23 + b"alice\0" + b"\xfd\xff\xff\xff"
    with pytest.raises(ProtocolError, match="truncated"):
        wire.parse_handshake_response(payload)


def test_connect_attributes_over_the_bound_are_refused() -> None:
    caps = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.CONNECT_ATTRS
    head = struct.pack("<IIB", caps, 0, 45) + b"\0" * 23 + b"alice\0" + b"\0"
    payload = head + b"\xfd" + (1 << 20).to_bytes(3, "little") + b"k" * 10
    with pytest.raises(ProtocolError, match="connect attributes"):
        wire.parse_handshake_response(payload)


def test_err_reads_back() -> None:
    message = "role 'dev' does not allow 'bob'"
    err = wire.parse_err(wire.build_err(1045, "28000", message))
    assert (err.code, err.sqlstate, err.message) == (1045, "28000", message)


def test_statements_are_read_for_audit() -> None:
    assert wire.parse_command(b"\x03SELECT 1").statement == "SELECT 1"
    prepare = wire.parse_command(b"\x16SELECT * FROM t WHERE id = ?")
    assert (prepare.name, prepare.statement) == ("COM_STMT_PREPARE", "SELECT * FROM t WHERE id = ?")
    assert wire.parse_command(b"\x01").name == "COM_QUIT"
    assert wire.parse_command(b"\x02hr").argument == "hr"
    with pytest.raises(ProtocolError):
        wire.parse_command(b"")


@given(st.binary(max_size=400))
def test_parsers_refuse_garbage_with_a_protocol_error_only(data: bytes) -> None:
    for parse in (wire.parse_handshake_response, wire.parse_greeting, wire.parse_err):
        with contextlib.suppress(ProtocolError, wire.ServerErr):
            parse(data)


# -- following the server's answers ------------------------------------------------------------


def ok(status: int = 2) -> bytes:
    return b"\x00\x00\x00" + struct.pack("<HH", status, 0)


def eof(status: int = 2) -> bytes:
    return b"\xfe" + struct.pack("<HH", 0, status)


def feed(tracker: wire.ResponseTracker, *payloads: bytes) -> list[Event]:
    return [
        tracker.server_frame(wire.Frame(seq=i + 1, payload=p, continuation=False))
        for i, p in enumerate(payloads)
    ]


def test_local_infile_request_is_told_from_a_row_starting_with_null() -> None:
    tracker = wire.ResponseTracker()
    tracker.client_command(wire.COM_QUERY)
    # a result whose first row's first column is NULL (0xfb): a row, not a request
    assert feed(tracker, b"\x01", b"def-column", eof(), b"\xfb", eof()) == [
        Event.PART,
        Event.PART,
        Event.PART,
        Event.PART,
        Event.DONE,
    ]
    assert tracker.idle
    tracker.client_command(wire.COM_QUERY)
    assert feed(tracker, b"\xfb/etc/passwd") == [Event.LOCAL_INFILE]
    assert tracker.uploading
    tracker.client_upload_frame(b"data")
    tracker.client_upload_frame(b"")
    assert feed(tracker, ok()) == [Event.DONE]
    assert tracker.idle


def test_multi_results_are_followed_to_the_last() -> None:
    tracker = wire.ResponseTracker()
    tracker.client_command(wire.COM_QUERY)
    more = wire.SERVER_MORE_RESULTS_EXISTS | 2
    events = feed(tracker, b"\x01", b"col", eof(), b"\x011", eof(more), ok(more), b"\xfbfile")
    assert events[-1] is Event.LOCAL_INFILE  # a later result may ask for a file too
    tracker.client_upload_frame(b"")
    assert feed(tracker, b"\xff" + b"\x00" * 8) == [Event.DONE]
    assert tracker.idle


def test_prepare_and_execute_with_a_cursor() -> None:
    tracker = wire.ResponseTracker()
    tracker.client_command(wire.COM_STMT_PREPARE)
    prepare_ok = b"\x00" + struct.pack("<IHHBH", 1, 2, 1, 0, 0)
    events = feed(tracker, prepare_ok, b"param", eof(), b"col1", b"col2", eof())
    assert events[-1] is Event.DONE and events[:-1] == [Event.PART] * 5
    tracker.client_command(wire.COM_STMT_EXECUTE)
    cursor = wire.SERVER_STATUS_CURSOR_EXISTS | 2
    assert feed(tracker, b"\x02", b"col1", b"col2", eof(cursor))[-1] is Event.DONE
    tracker.client_command(wire.COM_STMT_FETCH)
    assert feed(tracker, b"\x00\x00row", b"\x00\x00row", eof(0x80)) == [
        Event.PART,
        Event.PART,
        Event.DONE,
    ]
    tracker.client_command(wire.COM_STMT_CLOSE)
    assert tracker.idle


def test_pipelined_commands_are_answered_in_turn() -> None:
    tracker = wire.ResponseTracker()
    tracker.client_command(wire.COM_PING)
    tracker.client_command(wire.COM_QUERY)
    assert feed(tracker, ok(), b"\xfbfile") == [Event.DONE, Event.LOCAL_INFILE]


def test_a_query_err_is_reported_and_unasked_packets_are_unsolicited() -> None:
    tracker = wire.ResponseTracker()
    assert feed(tracker, b"\xff\x00\x00") == [Event.UNSOLICITED]
    tracker.client_command(wire.COM_QUERY)
    assert feed(tracker, wire.build_err(1148, "42000", "no")) == [Event.QUERY_ERR]
    assert tracker.idle


def test_a_continuation_frame_is_never_read_as_a_packet() -> None:
    tracker = wire.ResponseTracker()
    tracker.client_command(wire.COM_QUERY)
    feed(tracker, b"\x01", b"col", eof())
    big_row = wire.Frame(seq=4, payload=b"\xfc" + b"r" * (wire.MAX_FRAME - 1), continuation=False)
    rest = wire.Frame(seq=5, payload=b"\xfe\x00\x00\x02\x00", continuation=True)
    assert tracker.server_frame(big_row) is Event.PART
    assert tracker.server_frame(rest) is Event.PART
    assert feed(tracker, eof()) == [Event.DONE]


def test_rows_are_skipped_up_to_what_may_end_them() -> None:
    tracker = wire.ResponseTracker()
    tracker.client_command(wire.COM_QUERY)
    reader = wire.FrameReader(keep_raw=True)
    rows = [wire.frame(4 + n, b"\x03abc") for n in range(3)]
    null_row = wire.frame(7, b"\xfb")
    data = wire.frame(1, b"\x01") + wire.frame(2, b"col") + wire.frame(3, eof())
    data += b"".join(rows) + null_row + wire.frame(8, eof()) + wire.frame(0, b"\x00")
    reader.receive_data(data)
    events = []
    skipped = 0
    while True:
        if tracker.in_rows:
            skipped += reader.skip_rows()
        f = reader.next_frame()
        if f is None:
            break
        events.append(tracker.server_frame(f))
    assert skipped == 4  # three rows and the one whose first column is NULL
    assert events == [Event.PART, Event.PART, Event.PART, Event.DONE, Event.UNSOLICITED]
    assert reader.take_raw() == data
