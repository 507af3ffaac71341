"""The dial request (tether.dial): what any hop may send, and the one-line errors for what it
must not. Garbage, wrong types and oversize fields are refused with a ControlError, never a
crash; a client cannot speak for the proxy (``client``, ``user_cert``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from tether.dial import (
    DIAL,
    LIST,
    MAX_FIELD,
    DialedTarget,
    DialRequest,
    host_cas_answer,
    parse_host_cas,
    parse_targets,
    targets_answer,
)
from tether.tunnel.control import MAX_LISTING, MAX_MESSAGE, ControlChannel, ControlError


def test_a_dial_request_survives_the_round_trip_as_strings() -> None:
    request = DialRequest(op=DIAL, cluster="leaf", target="env=prod", port=2022)
    fields = request.to_fields()
    assert fields == {"type": "dial", "cluster": "leaf", "target": "env=prod", "port": "2022"}
    assert all(isinstance(value, str) for value in fields.values())
    assert DialRequest.from_fields(fields) == request


def test_the_first_proxy_overwrites_what_a_client_says_of_itself() -> None:
    fields = {
        "type": "dial",
        "cluster": "main",
        "target": "web-1",
        "client": "10.9.9.9:1",
        "user_cert": "Zm9yZ2Vk",
    }
    forwarded = DialRequest.from_fields(fields).from_client("127.0.0.1:5000", "cmVhbA==")
    assert (forwarded.client, forwarded.user_cert) == ("127.0.0.1:5000", "cmVhbA==")


def test_unknown_fields_are_ignored() -> None:
    request = DialRequest.from_fields({"type": "list", "cluster": "main", "future": "x"})
    assert request == DialRequest(op=LIST, cluster="main")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "hello"}, "expected a dial, list or host_cas request, got 'hello'"),
        ({"type": 3, "cluster": "main"}, "expected a dial, list or host_cas request, got '3'"),
        ({"type": "dial"}, "needs a non-empty string 'cluster'"),
        ({"type": "dial", "cluster": "main"}, "needs a non-empty string 'target'"),
        ({"type": "dial", "cluster": ["main"], "target": "x"}, "'cluster' must be a string"),
        ({"type": "dial", "cluster": "main", "target": "x", "port": 22}, "'port' must be a"),
        ({"type": "dial", "cluster": "main", "target": "x", "port": "-1"}, "port must be"),
        ({"type": "dial", "cluster": "main", "target": "x", "port": "65536"}, "port must be"),
        ({"type": "dial", "cluster": "main", "target": "x", "port": "\uff12"}, "port must"),
        ({"type": "dial", "cluster": "main", "target": "x" * (MAX_FIELD + 1)}, "longer than"),
        ({"type": "list", "cluster": "main", "user_cert": None}, "'user_cert' must be a"),
    ],
)
def test_malformed_requests_are_refused_with_one_line(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ControlError) as refused:
        DialRequest.from_fields(fields)
    assert message in refused.value.message
    assert "\n" not in refused.value.message and len(refused.value.message) <= 200


@given(st.dictionaries(st.text(max_size=12), st.none() | st.booleans() | st.integers() | st.text()))
def test_any_json_object_is_a_request_or_a_control_error(fields: dict[str, Any]) -> None:
    try:
        request = DialRequest.from_fields(fields)
    except ControlError:
        return
    assert DialRequest.from_fields(request.to_fields()) == request


async def _read_line(payload: bytes) -> dict[str, Any] | None:
    sender, receiver = trio.testing.memory_stream_pair()
    await sender.send_all(payload)
    await sender.aclose()
    return await ControlChannel(receiver).receive()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "control message is not JSON"),
        (b"[1, 2]\n", "control message has no type"),
        (b"\xff\xfe\n", "control message is not JSON"),
        (b"[" * 60_000 + b"\n", "control message is not JSON"),  # nested too deep to parse
        # Python's parser takes these, JSON has them not: relayed on, they would not encode
        (b'{"type":"heartbeat","inventory":{"ttl":NaN}}\n', "control message is not JSON"),
        (b'{"type":"heartbeat","w":-Infinity}\n', "control message is not JSON"),
        (b'{"type":"heartbeat","w":1e999}\n', "control message is not JSON"),
        (b"{" * (MAX_MESSAGE + 10), f"control message longer than {MAX_MESSAGE} bytes"),
        # the whole line, newline included, in one read: as long, so refused alike
        (
            b'{"type":"dial","pad":"' + b"x" * MAX_MESSAGE + b'"}\n',
            f"control message longer than {MAX_MESSAGE} bytes",
        ),
    ],
)
async def test_lines_that_are_no_request_are_refused_with_one_line(
    payload: bytes, message: str
) -> None:
    with pytest.raises(ControlError, match=message):
        await _read_line(payload)


def test_a_dialed_answer_names_the_target_and_its_clusters_host_cas() -> None:
    dialed = DialedTarget(
        kind="node", id="3f2c", name="web-1", addr="", use_tunnel=True, host_cas=("ssh-ed25519 A",)
    )
    assert DialedTarget.from_answer(dialed.answer()) == dialed
    plain = DialedTarget(kind="node", id="3f2c", name="web-1", addr="10.0.0.5:22")
    assert "host_cas" not in plain.answer()
    assert DialedTarget.from_answer(plain.answer()) == plain


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"type": "nodes"}, "expected a dialed answer"),
        ({"type": "dialed"}, "has no target"),
        ({"type": "dialed", "target": {"kind": "node", "id": 1}}, "lacks kind, id, name"),
        (
            {"type": "dialed", "target": {"kind": "n", "id": "i", "name": "x", "addr": ""}},
            "lacks use_tunnel",
        ),
        (
            {
                "type": "dialed",
                "target": {"kind": "n", "id": "i", "name": "x", "addr": "", "use_tunnel": True},
                "host_cas": [1],
            },
            "host_cas holds something else",
        ),
    ],
)
def test_malformed_answers_are_a_control_error(answer: dict[str, Any], message: str) -> None:
    with pytest.raises(ControlError, match=message):
        DialedTarget.from_answer(answer)


def test_list_and_host_cas_answers() -> None:
    assert parse_targets(targets_answer([{"kind": "node"}])) == [{"kind": "node"}]
    assert parse_host_cas(host_cas_answer(["ssh-ed25519 A"])) == ["ssh-ed25519 A"]
    with pytest.raises(ControlError):
        parse_targets({"type": "targets", "targets": ["not a document"]})
    with pytest.raises(ControlError):
        parse_host_cas({"type": "targets", "targets": []})


async def test_a_listing_of_thousands_of_targets_fits_where_a_request_would_not() -> None:
    # `tether ls` on a cluster of 3,000 nodes is answered in megabytes, arriving a TLS record
    # at a time; a request stays capped at MAX_MESSAGE
    targets = [{"kind": "node", "metadata": {"name": f"node-{i}"}} for i in range(5000)]
    line = json.dumps({"type": "targets", "targets": targets}).encode() + b"\n"
    assert len(line) > MAX_MESSAGE
    for limit in (MAX_LISTING, MAX_MESSAGE):
        client, server = trio.testing.memory_stream_pair()
        channel = ControlChannel(server, max_message=limit)
        received: list[Any] = []

        async def receive(channel: ControlChannel = channel, into: list[Any] = received) -> None:
            try:
                into.append(await channel.receive())
            except ControlError as exc:
                into.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for start in range(0, len(line), 16 * 1024):
                await client.send_all(line[start : start + 16 * 1024])
                await trio.testing.wait_all_tasks_blocked()
                if received:
                    break
        [answer] = received
        if limit == MAX_LISTING:
            assert len(answer["targets"]) == 5000
        else:
            assert isinstance(answer, ControlError) and "longer than" in str(answer)
