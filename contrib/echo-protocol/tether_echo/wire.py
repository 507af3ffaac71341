"""The echo protocol, sans-IO: the server's first line, then every byte sent comes back.

The first line the node sends is a JSON object: ``{"type": "hello", ...}`` naming the node
and the identity the plugin received (user, cluster, roles: on a leaf, the mapped ones), or
``{"type": "refused", "reason": "..."}`` before the node closes the stream. After ``hello``
the node echoes what it receives until the client closes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

__all__ = ["MAX_LINE", "Hello", "ProtocolError", "hello_line", "parse_first_line", "refused_line"]

#: The first line is short; a peer that sends more without a newline is not an echo server.
MAX_LINE = 16 * 1024


class ProtocolError(Exception):
    """The first line is not one of the two this protocol defines."""


@attrs.frozen(kw_only=True)
class Hello:
    """The node accepted the stream: who it serves, as it saw them."""

    node: str
    user: str
    cluster: str
    roles: tuple[str, ...]


def hello_line(hello: Hello) -> bytes:
    message = {
        "type": "hello",
        "node": hello.node,
        "user": hello.user,
        "cluster": hello.cluster,
        "roles": list(hello.roles),
    }
    return json.dumps(message).encode() + b"\n"


def refused_line(reason: str) -> bytes:
    return json.dumps({"type": "refused", "reason": reason}).encode() + b"\n"


def _strings(value: Any) -> Sequence[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError("hello's roles must be a list of strings")
    return value


def parse_first_line(line: bytes) -> Hello | str:
    """A :class:`Hello`, or the reason of a refusal.

    :raises ProtocolError: anything else.
    """
    try:
        message = json.loads(line)
    except ValueError:
        raise ProtocolError(f"expected a JSON line, got {line[:80]!r}") from None
    if not isinstance(message, dict):
        raise ProtocolError("expected a JSON object")
    if message.get("type") == "refused" and isinstance(message.get("reason"), str):
        return str(message["reason"])
    texts = [message.get(key) for key in ("node", "user", "cluster")]
    if message.get("type") != "hello" or not all(isinstance(t, str) for t in texts):
        raise ProtocolError(f"expected hello or refused, got {message.get('type')!r}")
    node, user, cluster = (str(t) for t in texts)
    return Hello(node=node, user=user, cluster=cluster, roles=tuple(_strings(message.get("roles"))))
