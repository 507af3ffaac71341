"""The node's own decision, in memory: the echo service checks the roles it is handed
against its labels, names the identity it received, and audits both outcomes."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
import trio
import trio.testing
from tether_echo.agent import EchoProtocol

from tether.api import AgentContext, AgentStream, Config, Identity
from tether.testing.roles import role_set

DEV_ONLY = """\
kind: role
version: v7
metadata:
  name: dev-only
spec:
  allow:
    node_labels: {env: dev}
"""


def _identity() -> Identity:
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    return Identity(
        username="alice", cluster="root", roles=("dev-only",), traits={}, logins=(), expires=expires
    )


async def _session(labels: dict[str, str], send: bytes) -> tuple[bytes, list[tuple[str, Any]]]:
    """What a client of a node labelled ``labels`` reads after sending ``send``, and what the
    node audited."""
    audited: list[tuple[str, Any]] = []
    agent = AgentContext(
        config=Config(),
        host_id="3f2c",
        cluster_name="leaf",
        tunnel_mode=True,
        # echo presents no certificate and takes no trust decision of its own: the agent
        # verified and mapped the identity before serve, so these are never read
        credentials=None,
        audit=lambda kind, fields: audited.append((kind, dict(fields))),
        pm=None,
        trust=lambda: None,
    )
    echo = EchoProtocol("web-1", labels)
    await echo.run(agent)
    client, server = trio.testing.memory_stream_pair()
    stream = AgentStream(
        stream=server, client="192.0.2.7:4000", identity=_identity(), roles=role_set(DEV_ONLY)
    )
    received = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo.serve, stream)
        await client.send_all(send)
        with trio.move_on_after(1):
            while data := await client.receive_some():
                received += data
                if received.count(b"\n") == 1 + send.count(b"\n"):
                    break
        await client.aclose()
    return received, audited


async def test_a_node_whose_labels_the_roles_select_greets_and_echoes() -> None:
    received, audited = await _session({"env": "dev"}, b"ping\n")
    hello, echoed = received.splitlines(keepends=True)
    assert json.loads(hello) == {
        "type": "hello",
        "node": "web-1",
        "user": "alice",
        "cluster": "root",
        "roles": ["dev-only"],
    }
    assert echoed == b"ping\n"
    assert audited == [
        (
            "echo.session.start",
            {"protocol": "echo", "node": "web-1", "client": "192.0.2.7:4000", "user": "alice"},
        )
    ]


@pytest.mark.parametrize("labels", [{"env": "prod"}, {}])
async def test_a_node_the_roles_do_not_select_refuses_with_the_reason(
    labels: dict[str, str],
) -> None:
    received, audited = await _session(labels, b"")
    refusal = json.loads(received)
    assert refusal["type"] == "refused"
    assert "node_labels of roles dev-only do not match echo 'web-1'" in refusal["reason"]
    [(kind, fields)] = audited
    assert (kind, fields["user"], fields["reason"]) == (
        "echo.session.denied",
        "alice",
        refusal["reason"],
    )
