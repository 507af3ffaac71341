"""PostgreSQL's wire protocol in memory: what the engine reads and writes, byte by byte."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tether_db.postgres import wire

_PROTOCOL_3_0 = 196608


def startup(params: bytes, code: int = _PROTOCOL_3_0) -> bytes:
    return struct.pack("!II", 8 + len(params), code) + params


def read_all_startup(data: bytes) -> list[object]:
    parser = wire.StartupParser()
    parser.feed(data)
    events = []
    while (event := parser.next_event()) is not None:
        events.append(event)
        if isinstance(event, wire.StartupMessage | wire.CancelRequest):
            break
    return events


def test_psql_startup_after_ssl_request_names_user_and_database() -> None:
    packet = startup(b"user\0alice\0database\0shop\0application_name\0psql\0\0")
    parser = wire.StartupParser()
    parser.feed(wire.ssl_request() + packet + b"Q\0\0\0")
    assert parser.next_event() == wire.SSLRequest()
    message = parser.next_event()
    assert isinstance(message, wire.StartupMessage)
    assert (message.user, message.database) == ("alice", "shop")
    assert message.parameters["application_name"] == "psql"
    assert message.raw == packet
    assert bytes(parser.buffer) == b"Q\0\0\0"  # the next message stays for the relay


def test_database_defaults_to_the_user() -> None:
    (message,) = read_all_startup(startup(b"user\0bob\0\0"))
    assert isinstance(message, wire.StartupMessage)
    assert message.database == "bob"


def test_gssenc_request_then_startup() -> None:
    gssenc = struct.pack("!II", 8, 80877104)
    events = read_all_startup(gssenc + startup(b"user\0alice\0\0"))
    assert events[0] == wire.GSSENCRequest()


def test_cancel_request_carries_pid_and_key() -> None:
    (event,) = read_all_startup(wire.cancel_request(4242, b"\x01\x02\x03\x04"))
    assert event == wire.CancelRequest(pid=4242, key=b"\x01\x02\x03\x04")


@given(st.binary(min_size=1, max_size=300), st.integers(1, 40))
def test_startup_arrives_in_any_split(tail: bytes, split: int) -> None:
    data = wire.ssl_request() + startup(b"user\0alice\0database\0shop\0\0") + tail
    parser = wire.StartupParser()
    events: list[object] = []
    for start in range(0, len(data), split):
        parser.feed(data[start : start + split])
        while not any(isinstance(e, wire.StartupMessage) for e in events) and (
            event := parser.next_event()
        ):
            events.append(event)
    assert isinstance(events[-1], wire.StartupMessage)
    assert bytes(parser.buffer) == tail


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"GET / HTTP/1.1\r\n", "not a PostgreSQL startup packet"),
        (struct.pack("!II", 0x7FFF_FFFF, _PROTOCOL_3_0), "length 2147483647"),
        (b"\0\0\0\x03", "length 3"),
        (startup(b"user\0alice\0\0", code=2 << 16), "protocol 2.0"),
        (startup(b"database\0shop\0\0"), "names no database user"),
        (startup(b"user\0alice"), "not NUL-terminated"),
        (startup(b"user\0alice\0\0extra"), "bytes after its parameter list"),
        (struct.pack("!III", 12, 80877102, 1), "CancelRequest is too short"),
        (struct.pack("!III", 9, 80877103, 0)[:9], "SSLRequest has a body"),
    ],
)
def test_bad_startup_is_refused_with_a_reason(data: bytes, words: str) -> None:
    parser = wire.StartupParser()
    parser.feed(data)
    with pytest.raises(wire.ProtocolError, match=words):
        parser.next_event()


def test_hostile_startup_length_is_refused_before_its_bytes_arrive() -> None:
    parser = wire.StartupParser()
    parser.feed(struct.pack("!I", 50_000))
    with pytest.raises(wire.ProtocolError, match="expected 8 to 10000"):
        parser.next_event()


@given(st.binary(max_size=200))
def test_garbage_startup_never_crashes_the_parser(data: bytes) -> None:
    parser = wire.StartupParser()
    parser.feed(data)
    try:
        for _ in range(len(data) + 1):
            if parser.next_event() is None:
                break
    except wire.ProtocolError as error:
        assert error.message


def query(sql: bytes) -> bytes:
    return b"Q" + struct.pack("!I", len(sql) + 5) + sql + b"\0"


def parse(name: bytes, sql: bytes) -> bytes:
    body = name + b"\0" + sql + b"\0" + struct.pack("!H", 0)
    return b"P" + struct.pack("!I", len(body) + 4) + body


def test_query_and_parse_come_whole_and_the_rest_passes_through() -> None:
    sync = b"S\0\0\0\x04"
    bind = b"B" + struct.pack("!I", 4 + 12) + b"\0\0\0\0\0\0\0\0\0\0\0\0"
    stream = query(b"select 1") + parse(b"s1", b"select $1") + bind + sync
    parser = wire.FrontendParser()
    parser.feed(stream)
    events = []
    while (event := parser.next_event()) is not None:
        events.append(event)
    assert [wire.statement_text(e) for e in events[:2]] == ["select 1", "select $1"]
    assert isinstance(events[0], wire.FrontendMessage)
    assert b"".join(e.raw if isinstance(e, wire.FrontendMessage) else e.data for e in events) == (
        stream
    )
    assert parser.at_boundary


def test_large_copy_data_streams_through_without_waiting_for_the_whole() -> None:
    parser = wire.FrontendParser()
    head = b"d" + struct.pack("!I", 100_000_004) + b"row 1\n"
    parser.feed(head)
    assert parser.next_event() == wire.Passthrough(data=head)
    assert parser.next_event() is None
    assert not parser.at_boundary
    parser.feed(b"row 2\n")
    assert parser.next_event() == wire.Passthrough(data=b"row 2\n")


def test_statement_is_not_given_before_all_of_it_arrived() -> None:
    parser = wire.FrontendParser()
    whole = query(b"select 'a long statement'")
    parser.feed(whole[:10])
    assert parser.next_event() is None
    parser.feed(whole[10:])
    event = parser.next_event()
    assert isinstance(event, wire.FrontendMessage)
    assert wire.statement_text(event) == "select 'a long statement'"


def test_hostile_statement_length_is_refused_at_once() -> None:
    parser = wire.FrontendParser()
    parser.feed(b"Q" + struct.pack("!I", 0x7FFF_FFFF))
    with pytest.raises(wire.ProtocolError, match="the most this service relays is"):
        parser.next_event()


def test_message_shorter_than_its_length_field_is_refused() -> None:
    parser = wire.FrontendParser()
    parser.feed(b"B\0\0\0\x02")
    with pytest.raises(wire.ProtocolError, match="length 2"):
        parser.next_event()


def test_statement_in_another_encoding_is_audited_not_refused() -> None:
    parser = wire.FrontendParser()
    parser.feed(query("select 'café'".encode("latin-1")))
    event = parser.next_event()
    assert isinstance(event, wire.FrontendMessage)
    assert wire.statement_text(event) == "select 'caf\ufffd'"


@given(st.binary(max_size=300))
def test_garbage_after_startup_never_crashes_the_parser(data: bytes) -> None:
    parser = wire.FrontendParser()
    parser.feed(data)
    try:
        while (event := parser.next_event()) is not None:
            if isinstance(event, wire.FrontendMessage):
                wire.statement_text(event)
    except wire.ProtocolError as error:
        assert error.message


def test_error_response_reads_back_as_written() -> None:
    data = wire.error_response("FATAL", "28000", 'role "dba" denies "bob"', hint="ask an admin")
    parser = wire.BackendParser()
    parser.feed(data)
    message = parser.next_event()
    assert message is not None
    assert message.raw == data
    fields = wire.error_response_fields(message)
    assert fields["S"] == fields["V"] == "FATAL"
    assert (fields["C"], fields["M"], fields["H"]) == (
        "28000",
        'role "dba" denies "bob"',
        "ask an admin",
    )


def test_error_response_without_hint_has_no_hint_field() -> None:
    parser = wire.BackendParser()
    parser.feed(wire.error_response("FATAL", "08006", "gone"))
    message = parser.next_event()
    assert message is not None
    assert "H" not in wire.error_response_fields(message)


def test_backend_key_data_round_trips() -> None:
    parser = wire.BackendParser()
    parser.feed(wire.backend_key_data(77, b"\xaa\xbb\xcc\xdd"))
    message = parser.next_event()
    assert message is not None
    assert wire.parse_backend_key_data(message) == wire.BackendKeyData(
        pid=77, key=b"\xaa\xbb\xcc\xdd"
    )


def test_authentication_ok_and_password_request() -> None:
    parser = wire.BackendParser()
    parser.feed(b"R\0\0\0\x08\0\0\0\0" + b"R\0\0\0\x08\0\0\0\x03")
    ok, password = parser.next_event(), parser.next_event()
    assert ok is not None and password is not None
    assert wire.parse_authentication(ok).code == wire.AUTH_OK
    assert wire.parse_authentication(password).code == 3


def test_hostile_backend_length_during_login_is_refused() -> None:
    parser = wire.BackendParser()
    parser.feed(b"R" + struct.pack("!I", 0x4000_0000))
    with pytest.raises(wire.ProtocolError, match="during startup"):
        parser.next_event()
