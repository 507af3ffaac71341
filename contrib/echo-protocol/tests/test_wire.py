"""The echo protocol's first line, both ways, in memory."""

from __future__ import annotations

import pytest
from tether_echo.wire import Hello, ProtocolError, hello_line, parse_first_line, refused_line


def test_hello_names_the_identity_the_node_received() -> None:
    hello = Hello(node="web-1", user="alice", cluster="root", roles=("visitor",))
    line = hello_line(hello)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_first_line(line.rstrip(b"\n")) == hello


def test_a_refusal_carries_its_reason() -> None:
    assert parse_first_line(refused_line("no role allows it").strip()) == "no role allows it"


@pytest.mark.parametrize(
    "line",
    [
        b"SSH-2.0-OpenSSH_9.6",
        b"[]",
        b'{"type": "hello"}',
        b'{"type": "hello", "node": "n", "user": "u", "cluster": "c", "roles": [1]}',
    ],
)
def test_anything_else_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_first_line(line)
