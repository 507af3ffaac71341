"""The SSH front door: ALPN ``tether-ssh/1`` on the proxy's public port.

The client presents its X.509 user certificate in the TLS handshake and sends one JSON line
naming the target; the proxy finds the node among the ones the user may see (asking auth *as
the user*), dials it (directly, or through the node's own reverse tunnel) and answers with one
line. From then on the proxy only copies bytes: the SSH session runs end to end between the
client and the node, which authenticates the user's SSH certificate itself. The proxy never
holds a key that could open a session.

Wire format (newline-delimited JSON, as the tunnel's control stream)::

    client -> proxy  {"type": "dial", "cluster": "main", "node": "web-1", "port": 0}
    proxy -> client  {"type": "dialed", "node": {"id": ..., "hostname": ..., "addr": ...}}
                 or  {"type": "error", "error": {"type": ..., "message": ..., "hint": ...}}

``node`` is a host name, host id, address, or labels (``env=prod``); ``port`` 0 means the
node's own SSH port.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import attrs
import trio

from tether.errors import AccessDenied, NotFound, TetherError
from tether.protocols import ProtocolHandler, ProxyConnection
from tether.resources import KindRegistry, Resource, resource_from_dict
from tether.tlsstream import TLSStream
from tether.tunnel.control import ControlChannel, ControlError
from tether.tunnel.forward import splice
from tether.tunnel.server import ClusterOffline, TargetRefused
from tether.wire import error_from_json, error_to_json
from tether_ssh.inventory import NODE, NodeQuery, NodeSpec, resolve_node

__all__ = [
    "FRONT_DOOR_ALPN",
    "SSH_TARGET",
    "DialedNode",
    "NodeOffline",
    "front_door",
    "open_node_stream",
]

log = logging.getLogger(__name__)

FRONT_DOOR_ALPN = "tether-ssh/1"
#: The target a proxy opens through a node's tunnel to reach its SSH server.
SSH_TARGET = "ssh"
#: How long a client may take to say what it wants, and the proxy to reach the node.
REQUEST_TIMEOUT = 10.0
DIAL_TIMEOUT = 10.0

_NODES = KindRegistry([NODE], plugin="ssh")


class NodeOffline(TetherError):
    """The node is in the inventory but cannot be reached right now."""


@attrs.frozen
class DialedNode:
    """The node a front-door connection reached."""

    id: str
    hostname: str
    addr: str
    use_tunnel: bool

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> DialedNode:
        if not isinstance(data, dict):
            raise ControlError("the proxy's answer has no node")
        try:
            return cls(
                id=str(data["id"]),
                hostname=str(data["hostname"]),
                addr=str(data["addr"]),
                use_tunnel=bool(data["use_tunnel"]),
            )
        except KeyError as exc:
            raise ControlError(f"the proxy's answer lacks node field {exc}") from None


# --- the proxy's side ----------------------------------------------------------------------


def _port(message: dict[str, Any]) -> int:
    port = message.get("port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ControlError(f"port must be a number from 0 to 65535, got {port!r}")
    return port


def _string(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise ControlError(f"the dial request needs a non-empty string {key!r}")
    return value


async def _visible_nodes(conn: ProxyConnection) -> list[Resource]:
    docs = await conn.proxy.auth.get_resources("node", headers=conn.forwarded_headers())
    return [resource_from_dict(doc, _NODES, source="node from auth") for doc in docs]


async def _dial_node(conn: ProxyConnection, node: Resource, port: int) -> trio.abc.Stream:
    spec: NodeSpec = node.spec
    if spec.use_tunnel:
        if port:
            raise TetherError(
                f"node {spec.hostname!r} is reached through its tunnel; a port cannot be chosen",
                hint="leave out -p",
            )
        try:
            return await conn.proxy.tunnels.dial(
                conn.proxy.cluster_name,
                SSH_TARGET,
                {"client": conn.peer},
                agent=node.metadata.name,
            )
        except (ClusterOffline, TargetRefused) as exc:
            raise NodeOffline(
                f"node {spec.hostname!r} is offline: its tunnel is not connected to this proxy",
                hint="check that the node's tetherd runs and reaches the proxy",
            ) from exc
    host, _, node_port = spec.addr.rpartition(":")
    try:
        with trio.fail_after(DIAL_TIMEOUT):
            return await trio.open_tcp_stream(host.strip("[]"), port or int(node_port))
    except (OSError, trio.TooSlowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or "timed out"
        raise NodeOffline(
            f"node {spec.hostname!r} at {host}:{port or node_port} is unreachable: {reason}",
            hint="check that the node's tetherd runs and its listen address is reachable",
        ) from None


async def front_door(conn: ProxyConnection) -> None:
    """Serve one ``tether-ssh/1`` connection (the proxy's protocol handler)."""
    channel = ControlChannel(conn.stream)
    target: trio.abc.Stream | None = None
    try:
        with trio.fail_after(REQUEST_TIMEOUT):
            message = await channel.receive()
        if message is None:
            return
        if message["type"] != "dial":
            raise ControlError(f"expected a dial request, got {message['type']!r}")
        identity = conn.identity()
        cluster = _string(message, "cluster")
        query = NodeQuery.parse(_string(message, "node"))
        port = _port(message)
        if cluster != conn.proxy.cluster_name:
            raise NotFound(
                f"cluster {cluster!r} not found",
                hint="run `tether clusters` to see the clusters you can reach",
            )
        node = resolve_node(await _visible_nodes(conn), query, cluster=cluster)
        target = await _dial_node(conn, node, port)
    except trio.TooSlowError:
        log.info("ssh front door: %s sent no request in time", conn.peer)
        return
    except TetherError as exc:
        log.info("ssh front door: refused %s: %s", conn.peer, exc.message)
        await _answer(channel, {"type": "error", **error_to_json(exc)})
        return
    spec: NodeSpec = node.spec
    dialed = DialedNode(
        id=node.metadata.name, hostname=spec.hostname, addr=spec.addr, use_tunnel=spec.use_tunnel
    )
    log.info(
        "ssh front door: %s (%s) -> node %s (%s)",
        identity.label,
        conn.peer,
        spec.hostname,
        "tunnel" if spec.use_tunnel else spec.addr,
    )
    try:
        await channel.send({"type": "dialed", "node": dialed.to_json()})
        leftover = channel.take_buffered()
        if leftover:
            await target.send_all(leftover)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await trio.aclose_forcefully(target)
        return
    await splice(conn.stream, target)


async def _answer(channel: ControlChannel, message: dict[str, Any]) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await channel.send(message)


def protocol_handler() -> ProtocolHandler:
    return ProtocolHandler(name="ssh", alpn=(FRONT_DOOR_ALPN,), serve=front_door)


# --- the client's side ---------------------------------------------------------------------


class _Prefixed(trio.abc.Stream):
    """A stream that first yields bytes already read past the proxy's answer."""

    def __init__(self, stream: TLSStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def open_node_stream(
    proxy: str,
    context: Any,
    *,
    cluster: str,
    node: str,
    port: int = 0,
) -> tuple[trio.abc.Stream, DialedNode]:
    """Reach ``node`` of ``cluster`` through the proxy's front door.

    :param context: an ``ssl.SSLContext`` that verifies the proxy, presents the user's X.509
        certificate and offers ALPN ``tether-ssh/1``
        (:func:`tether.client.profile.profile_ssl_context`).
    :returns: the byte stream to the node's SSH server, and which node it is.
    :raises NotFound, AccessDenied, NodeOffline: what the proxy said, with its hint.
    :raises TetherError: the proxy cannot be reached or does not speak the front door.
    """
    host, _, port_text = proxy.rpartition(":")
    try:
        with trio.fail_after(REQUEST_TIMEOUT + DIAL_TIMEOUT):
            stream = await TLSStream.connect(
                host.strip("[]"), int(port_text), context, server_hostname=host.strip("[]")
            )
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        cause = exc.__cause__ or exc
        raise TetherError(
            f"cannot reach the proxy at {proxy}: {cause}",
            hint="check the address, or log in again with `tether login`",
        ) from None
    try:
        if stream.selected_alpn_protocol() != FRONT_DOOR_ALPN:
            raise TetherError(
                f"the proxy at {proxy} has no SSH front door",
                hint="install the tether-ssh plugin on the proxy",
            )
        channel = ControlChannel(stream)
        await channel.send({"type": "dial", "cluster": cluster, "node": node, "port": port})
        with trio.fail_after(REQUEST_TIMEOUT + DIAL_TIMEOUT):
            answer = await channel.receive()
        if answer is None:
            raise AccessDenied(
                f"the proxy at {proxy} closed the connection",
                hint="your certificate may have expired: run `tether login`",
            )
        if answer["type"] == "error":
            raise error_from_json(answer, 400)
        if answer["type"] != "dialed":
            raise ControlError(f"unexpected answer {answer['type']!r} from the proxy")
        dialed = DialedNode.from_json(answer.get("node"))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        # TLS 1.3: the proxy judges the client certificate after the client's handshake
        # ends, so its verdict (an alert) arrives here, on the first read
        await trio.aclose_forcefully(stream)
        reason = str(exc.__cause__ or exc)
        if "EXPIRED" in reason.upper():
            raise AccessDenied(
                "the proxy refused your certificate: it has expired",
                hint="run `tether login`",
            ) from None
        raise TetherError(
            f"the proxy at {proxy} closed the connection: {reason or 'no reason given'}",
            hint="log in again with `tether login`",
        ) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return _Prefixed(stream, channel.take_buffered()), dialed
