"""The SOCKS handshake behind ``tether ssh -D``, byte by byte as clients send it (RFC 1928 for
SOCKS5, the SOCKS4 and 4a notes); curl drives the real thing in test_ssh_habits.py."""

from __future__ import annotations

import pytest
from tether_ssh.socks import Outcome, SocksError, SocksHandshake, SocksRequest

SOCKS5_HELLO = b"\x05\x01\x00"  # version 5, one method: no authentication


def _feed(handshake: SocksHandshake, data: bytes, *, bytewise: bool) -> SocksRequest | None:
    request = None
    for chunk in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
        request = handshake.receive(chunk)
    return request


@pytest.mark.parametrize("bytewise", [False, True], ids=["at-once", "byte-by-byte"])
@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90", SocksRequest(5, "127.0.0.1", 8080)),
        (b"\x05\x01\x00\x03\x09localhost\x00\x50", SocksRequest(5, "localhost", 80)),
        (b"\x05\x01\x00\x04" + b"\x00" * 15 + b"\x01\x00\x16", SocksRequest(5, "::1", 22)),
    ],
    ids=["ipv4", "hostname", "ipv6"],
)
def test_socks5_client_names_its_destination(
    request_bytes: bytes, expected: SocksRequest, bytewise: bool
) -> None:
    handshake = SocksHandshake()
    assert _feed(handshake, SOCKS5_HELLO, bytewise=bytewise) is None
    assert handshake.data_to_send() == b"\x05\x00"  # no authentication, chosen
    early = b"" if bytewise else b"GET /"  # what a client sends before the reply comes
    assert _feed(handshake, request_bytes + early, bytewise=bytewise) == expected
    assert handshake.leftover() == early
    assert handshake.reply(Outcome.CONNECTED) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert handshake.reply(Outcome.NOT_ALLOWED)[1] == 0x02


@pytest.mark.parametrize("bytewise", [False, True], ids=["at-once", "byte-by-byte"])
def test_socks4_and_4a_clients_name_their_destination(bytewise: bool) -> None:
    socks4 = SocksHandshake()
    got = _feed(socks4, b"\x04\x01\x00\x50\x0a\x00\x00\x05alice\x00", bytewise=bytewise)
    assert got == SocksRequest(4, "10.0.0.5", 80)
    assert socks4.reply(Outcome.CONNECTED) == b"\x00\x5a\x00\x00\x00\x00\x00\x00"
    assert socks4.reply(Outcome.REFUSED)[1] == 0x5B
    socks4a = SocksHandshake()
    got = _feed(socks4a, b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.org\x00", bytewise=bytewise)
    assert got == SocksRequest(4, "example.org", 443)
    assert socks4a.leftover() == b""


@pytest.mark.parametrize(
    ("data", "problem", "reply"),
    [
        (b"GET / HTTP/1.1\r\n", "not a SOCKS request", b""),
        (b"\x05\x01\x02", "offers no method without authentication", b"\x05\xff"),
        (SOCKS5_HELLO + b"\x05\x02\x00\x01" + bytes(6), "SOCKS5 command 2 is not supported", None),
        (SOCKS5_HELLO + b"\x05\x01\x00\x09" + bytes(6), "address type 9 is not supported", None),
        (b"\x04\x02\x00\x50\x0a\x00\x00\x05\x00", "SOCKS4 command 2 is not supported", None),
        (b"\x04\x01\x00\x50\x0a\x00\x00\x05" + b"u" * 300, "too long", None),
    ],
    ids=["http", "auth-only", "bind", "address-type", "socks4-bind", "endless-user-id"],
)
def test_what_the_proxy_cannot_serve_is_refused_with_a_reply(
    data: bytes, problem: str, reply: bytes | None
) -> None:
    with pytest.raises(SocksError, match=problem) as refused:
        SocksHandshake().receive(data)
    if reply is not None:
        assert refused.value.reply == reply
    else:
        assert refused.value.reply and refused.value.reply[1] != 0  # an error code, not success
