"""The control stream: what the two ends of a tunnel tell each other besides user traffic.

Right after connecting, the dialing side opens one stream to :data:`CONTROL_TARGET`. Both ends
then exchange newline-delimited JSON messages on it: the serving side says who it is and which
proxies exist (so an agent behind a load balancer knows which proxies it has not reached yet);
the dialing side reports heartbeats on an interval, each answered with the current proxy list.
Messages are small and rare, so JSON lines keep them readable in a packet capture.

A node in tunnel mode also sends its inventory entries in its heartbeats (``inventory``:
``{"ttl": seconds, "entries": [...]}``) when the hello says the proxy takes them
(``"inventory": true``), so that its one tunnel is all it holds open to the cluster; the
proxy relays them, as that node, and says in the next answer (``inventory_refused``) why
auth refused any. It follows the cluster's trust the same way: the proxy names its trust's
revision in each answer and pushes a ``trust`` message when it moves, and the node reads the
snapshot on a :data:`TRUST_TARGET` stream. See ``docs/tunnel-protocol.md``, "The control
stream".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from tether.errors import TetherError
from tether.tunnel.heartbeats import InventoryReport
from tether.tunnel.transport import HEARTBEATS_MISSED, KeepAlive

__all__ = [
    "CONTROL_TARGET",
    "MAX_LISTING",
    "TRUST_TARGET",
    "ControlChannel",
    "ControlError",
    "Hello",
    "ProxyInfo",
    "inventory_report",
]

CONTROL_TARGET = "@control"
#: the stream a node in tunnel mode opens to read its cluster's trust from its proxy: the
#: proxy writes the snapshot (the body of ``GET /v1/trust``) and closes it
TRUST_TARGET = "@trust"
#: a control message larger than this is a protocol violation (a peer trying to exhaust memory)
MAX_MESSAGE = 64 * 1024
#: the largest answer to a ``list`` request (``tether ls``): a target's document is a few
#: hundred bytes, and a cluster may have 10,000 nodes and more
MAX_LISTING = 64 * 1024 * 1024


class ControlError(TetherError):
    """The peer sent a control message that is malformed or out of place."""


@attrs.frozen
class ProxyInfo:
    """One proxy of the serving cluster: its id and the address agents may dial directly."""

    id: str
    addr: str = ""

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "addr": self.addr}

    @classmethod
    def from_json(cls, data: Any) -> ProxyInfo:
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
            raise ControlError(f"malformed proxy entry: {data!r}")
        addr = data.get("addr", "")
        return cls(id=data["id"], addr=addr if isinstance(addr, str) else "")


@attrs.frozen
class Hello:
    """The serving side's first message."""

    proxy_id: str
    cluster: str
    proxies: tuple[ProxyInfo, ...]
    heartbeat_interval: float
    #: the proxy takes this agent's inventory entries in its heartbeats (``inventory``) and
    #: relays them to auth; an older proxy does not say so, and its agents publish them to
    #: auth themselves
    inventory: bool = False
    #: the proxy names its trust snapshot's revision in each heartbeat's answer (``trust``)
    #: and serves the snapshot on a :data:`TRUST_TARGET` stream, for a node to follow it
    #: through its tunnel; an older proxy does not, and its nodes watch it over HTTPS
    trust: bool = False
    #: heartbeats the agent may miss before the proxy counts it as gone (the cluster's
    #: ``keep_alive_count_max``, with ``heartbeat_interval`` its ``keep_alive_interval``); an
    #: older proxy does not say, and its agents count the default
    keep_alive_count_max: int = HEARTBEATS_MISSED

    @property
    def keep_alive(self) -> KeepAlive:
        """The cluster's keep-alive, as this proxy named it: both ends of the tunnel use it."""
        return KeepAlive(self.heartbeat_interval, self.keep_alive_count_max)


def _not_json(name: str) -> Any:
    """Python's parser takes NaN and Infinity, which JSON has not: whatever a peer's message
    carries is passed on as JSON (a node's entries, relayed to auth), and one that cannot be
    encoded again would fail the relay of every node's."""
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    """A JSON number too large for a float (``1e999``) is no number either."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


class ControlChannel:
    """JSON lines over a stream, with a bound on message size."""

    def __init__(self, stream: trio.abc.Stream, *, max_message: int = MAX_MESSAGE) -> None:
        self.stream = stream
        self.max_message = max_message
        self._buffer = bytearray()

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.stream.send_all(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None when the peer closed the stream."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline > self.max_message:  # a whole line can arrive in one read
                raise ControlError(f"control message longer than {self.max_message} bytes")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                try:
                    message = json.loads(line, parse_constant=_not_json, parse_float=_finite)
                except (ValueError, RecursionError):  # RecursionError: nesting too deep
                    raise ControlError("control message is not JSON") from None
                if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                    raise ControlError("control message has no type")
                return message
            if len(self._buffer) > self.max_message:
                raise ControlError(f"control message longer than {self.max_message} bytes")
            data = await self.stream.receive_some()
            if not data:
                return None
            self._buffer += data

    def take_buffered(self) -> bytes:
        """Bytes received after the last message: they belong to what follows the exchange on
        this stream (a front door passes them on before splicing). Use the channel no more."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def hello_message(hello: Hello) -> dict[str, Any]:
    return {
        "type": "hello",
        "proxy_id": hello.proxy_id,
        "cluster": hello.cluster,
        "proxies": [p.to_json() for p in hello.proxies],
        "heartbeat_interval": hello.heartbeat_interval,
        "keep_alive_count_max": hello.keep_alive_count_max,
        **({"inventory": True} if hello.inventory else {}),
        **({"trust": True} if hello.trust else {}),
    }


def parse_hello(message: Mapping[str, Any]) -> Hello:
    if message.get("type") != "hello":
        raise ControlError(f"expected hello, got {message.get('type')!r}")
    proxy_id = message.get("proxy_id")
    cluster = message.get("cluster")
    interval = message.get("heartbeat_interval")
    proxies = message.get("proxies")
    if not isinstance(proxy_id, str) or not isinstance(cluster, str):
        raise ControlError("hello lacks proxy_id or cluster")
    if not isinstance(interval, int | float) or interval <= 0:
        raise ControlError("hello has no usable heartbeat_interval")
    if not isinstance(proxies, list):
        raise ControlError("hello has no proxy list")
    count = message.get("keep_alive_count_max", HEARTBEATS_MISSED)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ControlError("hello has no usable keep_alive_count_max")
    return Hello(
        proxy_id=proxy_id,
        cluster=cluster,
        proxies=tuple(ProxyInfo.from_json(p) for p in proxies),
        heartbeat_interval=float(interval),
        inventory=message.get("inventory") is True,
        trust=message.get("trust") is True,
        keep_alive_count_max=count,
    )


def parse_proxies(message: Mapping[str, Any]) -> tuple[ProxyInfo, ...]:
    proxies = message.get("proxies")
    if not isinstance(proxies, list):
        raise ControlError("message has no proxy list")
    return tuple(ProxyInfo.from_json(p) for p in proxies)


def inventory_report(agent: str, cert: bytes, inventory: Any) -> InventoryReport:
    """The ``inventory`` of a heartbeat from ``agent``, whose tunnel presented ``cert``.

    :raises ControlError: it is not ``{"ttl": seconds, "entries": [objects]}``.
    """
    if not isinstance(inventory, Mapping):
        raise ControlError("heartbeat inventory is not an object")
    ttl, entries = inventory.get("ttl"), inventory.get("entries")
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0 < ttl < math.inf:
        raise ControlError("heartbeat inventory has no usable ttl")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ControlError("heartbeat inventory entries are not a list of objects")
    return InventoryReport(agent=agent, cert=cert, entries=tuple(entries), ttl_seconds=float(ttl))
