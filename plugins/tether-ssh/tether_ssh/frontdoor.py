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
node's own SSH port, and any other is refused unless it is that port: the front door leads to
a node's SSH server only, never to another service on its host.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import attrs
import trio

from tether import pki
from tether.auth.http_client import FORWARDED_CERT_HEADER
from tether.errors import AccessDenied, NotFound, TetherError, TrustError
from tether.protocols import ProtocolHandler, ProxyConnection, ProxyContext, RemoteRequest
from tether.resources import CERT_AUTHORITY, KindRegistry, Resource, resource_from_dict
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
    "PortRefused",
    "front_door",
    "list_nodes",
    "open_node_stream",
]

log = logging.getLogger(__name__)

FRONT_DOOR_ALPN = "tether-ssh/1"
#: The target a proxy opens through a node's tunnel to reach its SSH server.
SSH_TARGET = "ssh"
#: The protocol's name: the target a root's proxy opens at a leaf's proxy.
PROTOCOL = "ssh"
#: How long a client may take to say what it wants, and the proxy to reach the node.
REQUEST_TIMEOUT = 10.0
DIAL_TIMEOUT = 10.0

_NODES = KindRegistry([NODE, CERT_AUTHORITY], plugin="ssh")


class NodeOffline(TetherError):
    """The node is in the inventory but cannot be reached right now."""


class PortRefused(AccessDenied):
    """A client asked the front door for a port of a node's host other than its SSH port."""


@attrs.frozen
class DialedNode:
    """The node a front-door connection reached."""

    id: str
    hostname: str
    addr: str
    use_tunnel: bool
    #: the SSH host CAs of the node's cluster, as the proxy's auth knows them (a leaf's come
    #: from the trust handshake), for checking the node's host certificate
    host_cas: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hostname": self.hostname,
            "addr": self.addr,
            "use_tunnel": self.use_tunnel,
        }

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


async def _nodes(proxy: ProxyContext, headers: dict[str, str]) -> list[Resource]:
    """The nodes of this cluster the user whose certificate ``headers`` forward may see (a
    root's user too: auth maps their roles first)."""
    docs = await proxy.auth.get_resources("node", headers=headers)
    return [resource_from_dict(doc, _NODES, source="node from auth") for doc in docs]


async def _host_cas(proxy: ProxyContext, cluster: str) -> list[str]:
    """The SSH host CA lines of ``cluster`` (this one or a leaf), from this cluster's auth.

    One resource by name (``host/<cluster>``): listing every CA cost the root half a second
    of CPU per session with 1,000 leaves (benchmarks/many_leaves.py).
    """
    try:
        [doc] = await proxy.auth.get_resources("cert_authority", f"host/{cluster}")
    except NotFound:
        return []
    ca = resource_from_dict(doc, _NODES, source="cert_authority from auth")
    return [*ca.spec.active_keys.ssh, *ca.spec.additional_trusted_keys.ssh]


def _dialed(node: Resource) -> DialedNode:
    spec: NodeSpec = node.spec
    return DialedNode(
        id=node.metadata.name, hostname=spec.hostname, addr=spec.addr, use_tunnel=spec.use_tunnel
    )


def _check_port(spec: NodeSpec, port: int) -> None:
    """The front door leads to a node's SSH server only: a client's port (``tether ssh -p``)
    may name the port the node registered, never another service on its host. Anything else
    goes through SSH port forwarding, which the node allows or not by the user's roles.

    :raises PortRefused: another port, or any port for a node reached through its tunnel.
    """
    if not port:
        return
    forwarding = "reach other ports through SSH port forwarding (-L), which your roles govern"
    if spec.use_tunnel:
        raise PortRefused(
            f"node {spec.hostname!r} is reached through its tunnel, which leads only to its SSH "
            f"server; port {port} cannot be chosen",
            hint=f"leave out -p; {forwarding}",
        )
    registered = spec.addr.rpartition(":")[2]
    if str(port) != registered:
        raise PortRefused(
            f"node {spec.hostname!r} serves SSH on port {registered}; the front door connects "
            f"only there, not to port {port}",
            hint=f"leave out -p; {forwarding}",
        )


async def _dial_node(proxy: ProxyContext, peer: str, node: Resource, port: int) -> trio.abc.Stream:
    """A stream to ``node``'s SSH server: through its tunnel, or at its registered address."""
    spec: NodeSpec = node.spec
    _check_port(spec, port)
    if spec.use_tunnel:
        try:
            return await proxy.tunnels.dial(
                proxy.cluster_name, SSH_TARGET, {"client": peer}, agent=node.metadata.name
            )
        except (ClusterOffline, TargetRefused) as exc:
            raise NodeOffline(
                f"node {spec.hostname!r} is offline: its tunnel is not connected to this proxy",
                hint="check that the node's tetherd runs and reaches the proxy",
            ) from exc
    host, _, node_port = spec.addr.rpartition(":")
    try:
        with trio.fail_after(DIAL_TIMEOUT):
            return await trio.open_tcp_stream(host.strip("[]"), int(node_port))
    except (OSError, trio.TooSlowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or "timed out"
        raise NodeOffline(
            f"node {spec.hostname!r} at {spec.addr} is unreachable: {reason}",
            hint="check that the node's tetherd runs and its listen address is reachable",
        ) from None


async def _open_leaf(
    conn: ProxyConnection, cluster: str, metadata: dict[str, str]
) -> trio.abc.Stream:
    """A stream to the leaf's proxy for this user, if the user may see the leaf at all (a
    leaf hidden by cluster_labels is "not found", as one that does not exist)."""
    headers = conn.forwarded_headers()
    try:
        await conn.proxy.auth.get_resources("remote_cluster", cluster, headers=headers)
    except NotFound:
        raise NotFound(
            f"cluster {cluster!r} not found",
            hint="run `tether clusters` to see the clusters you can reach",
        ) from None
    # the leaf verifies the root-issued certificate itself and maps its roles
    metadata = {**metadata, "user_cert": headers[FORWARDED_CERT_HEADER]}
    try:
        return await conn.proxy.tunnels.dial(cluster, PROTOCOL, metadata)
    except ClusterOffline:
        raise NodeOffline(
            f"cluster {cluster!r} is offline: it has no tunnel to this proxy",
            hint="check the leaf's proxy and its trusted_cluster (spec.enabled)",
        ) from None
    except TargetRefused as exc:
        reason = exc.message.partition(": ")[2] or exc.message
        raise TetherError(reason, hint=f"run `tether ls --cluster={cluster}`") from None


async def _list_leaf(conn: ProxyConnection, cluster: str) -> list[dict[str, Any]]:
    stream = await _open_leaf(conn, cluster, {"op": "list"})
    try:
        with trio.fail_after(DIAL_TIMEOUT):
            answer = await ControlChannel(stream).receive()
    finally:
        await trio.aclose_forcefully(stream)
    if answer is None or answer["type"] != "nodes" or not isinstance(answer.get("nodes"), list):
        raise ControlError(f"the leaf cluster {cluster!r} answered {answer!r}")
    return list(answer["nodes"])


async def _dial_leaf(
    conn: ProxyConnection, cluster: str, node: str, port: int
) -> tuple[trio.abc.Stream, DialedNode, bytes]:
    """Reach a node of a leaf cluster: through the leaf's tunnel to its proxy, which finds the
    node and dials it (see :func:`serve_remote`); the leaf's node then checks the user."""
    metadata = {"op": "dial", "node": node, "port": str(port), "client": conn.peer}
    stream = await _open_leaf(conn, cluster, metadata)
    channel = ControlChannel(stream)
    try:
        with trio.fail_after(DIAL_TIMEOUT):
            answer = await channel.receive()
        if answer is None or answer["type"] != "dialed":
            raise ControlError(f"the leaf cluster {cluster!r} answered {answer!r}")
        dialed = DialedNode.from_json(answer.get("node"))
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, dialed, channel.take_buffered()


async def front_door(conn: ProxyConnection) -> None:
    """Serve one ``tether-ssh/1`` connection (the proxy's protocol handler)."""
    channel = ControlChannel(conn.stream)
    target: trio.abc.Stream | None = None
    early = b""  # bytes the node sent with a leaf's answer, for the client
    try:
        with trio.fail_after(REQUEST_TIMEOUT):
            message = await channel.receive()
        if message is None:
            return
        if message["type"] == "list":
            await _answer(channel, await _list(conn, _string(message, "cluster")))
            return
        if message["type"] == "host_cas":
            await _answer(channel, await _cluster_host_cas(conn, _string(message, "cluster")))
            return
        if message["type"] != "dial":
            raise ControlError(
                f"expected a dial, list or host_cas request, got {message['type']!r}"
            )
        identity = conn.identity()
        cluster = _string(message, "cluster")
        node_text = _string(message, "node")
        port = _port(message)
        if cluster == conn.proxy.cluster_name:
            query = NodeQuery.parse(node_text)
            nodes = await _nodes(conn.proxy, conn.forwarded_headers())
            node = resolve_node(nodes, query, cluster=cluster)
            try:
                target = await _dial_node(conn.proxy, conn.peer, node, port)
            except PortRefused as exc:
                await _audit_port_refused(conn, identity, node, port, exc.message)
                raise
            dialed = _dialed(node)
        else:
            target, dialed, early = await _dial_leaf(conn, cluster, node_text, port)
        # a leaf's host CA comes from the handshake; the client has its own cluster's from
        # the login, so the common case costs no second call to auth per session
        host_cas = (
            [] if cluster == conn.proxy.cluster_name else await _host_cas(conn.proxy, cluster)
        )
    except trio.TooSlowError:
        log.info("ssh front door: %s sent no request in time", conn.peer)
        if target is not None:
            await trio.aclose_forcefully(target)
        return
    except TetherError as exc:
        log.info("ssh front door: refused %s: %s", conn.peer, exc.message)
        if target is not None:
            await trio.aclose_forcefully(target)
        await _answer(channel, {"type": "error", **error_to_json(exc)})
        return
    log.info(
        "ssh front door: %s (%s) -> node %s of %s (%s)",
        identity.label,
        conn.peer,
        dialed.hostname,
        cluster,
        "tunnel" if dialed.use_tunnel else dialed.addr,
    )
    answer = {"type": "dialed", "node": dialed.to_json(), "host_cas": host_cas}
    try:
        await channel.send(answer)
        if early:
            await conn.stream.send_all(early)
        leftover = channel.take_buffered()
        if leftover:
            await target.send_all(leftover)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await trio.aclose_forcefully(target)
        return
    await splice(conn.stream, target)


async def _audit_port_refused(
    conn: ProxyConnection, identity: pki.Identity, node: Resource, port: int, reason: str
) -> None:
    """Record ``ssh.front_door.refused`` for a port the front door would not dial. A failure
    to audit is logged, not raised: the refusal stands either way."""
    fields = {
        "node": node.spec.hostname,
        "node_id": node.metadata.name,
        "port": port,
        "client": conn.peer,
        "reason": reason,
    }
    try:
        await conn.proxy.auth.record_event(
            "ssh.front_door.refused", identity.username, fields, success=False
        )
    except (TetherError, OSError) as exc:
        log.warning("could not audit a refused port for %s: %s", identity.label, exc)


async def _list(conn: ProxyConnection, cluster: str) -> dict[str, Any]:
    """The nodes of ``cluster`` this user may see (``tether ls``)."""
    conn.identity()
    if cluster == conn.proxy.cluster_name:
        nodes = await conn.proxy.auth.get_resources("node", headers=conn.forwarded_headers())
    else:
        nodes = await _list_leaf(conn, cluster)
    return {"type": "nodes", "nodes": nodes}


async def _cluster_host_cas(conn: ProxyConnection, cluster: str) -> dict[str, Any]:
    """The SSH host CAs of a cluster this user may see (``tether config``)."""
    conn.identity()
    if cluster != conn.proxy.cluster_name:
        try:
            await conn.proxy.auth.get_resources(
                "remote_cluster", cluster, headers=conn.forwarded_headers()
            )
        except NotFound:
            raise NotFound(f"cluster {cluster!r} not found") from None
    return {"type": "host_cas", "host_cas": await _host_cas(conn.proxy, cluster)}


async def serve_remote(req: RemoteRequest) -> None:
    """At a leaf's proxy: a root's proxy asks, through the leaf's tunnel, for a node here.

    Only nodes of this cluster's inventory are dialled, never an address the root names. The
    stream's first line says which node answered; then bytes flow between the root user's
    client and the node, which verifies the root-issued certificate and maps its roles.
    """
    request = req.request
    metadata = request.metadata
    # the root user's own certificate: this cluster's auth verifies it against the root's
    # CA and maps its roles, so the user sees and reaches what the mapped roles allow
    headers = {FORWARDED_CERT_HEADER: metadata.get("user_cert", "")}
    if metadata.get("op") == "list":
        try:
            docs = await req.proxy.auth.get_resources("node", headers=headers)
        except TetherError as exc:
            await req.refuse(exc.message, op="list")
            return
        stream = request.accept()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await ControlChannel(stream).send({"type": "nodes", "nodes": docs})
        await trio.aclose_forcefully(stream)
        return
    try:
        query = NodeQuery.parse(metadata.get("node", ""))
        port = int(metadata.get("port", "0") or 0)
        nodes = await _nodes(req.proxy, headers)
        node = resolve_node(nodes, query, cluster=req.proxy.cluster_name)
        peer = metadata.get("client", f"root cluster {req.cluster}")
        target = await _dial_node(req.proxy, peer, node, port)
    except (TetherError, ValueError) as exc:
        reason = exc.message if isinstance(exc, TetherError) else str(exc)
        await req.refuse(reason, node=metadata.get("node", ""), port=metadata.get("port", "0"))
        return
    stream = request.accept()
    try:
        await ControlChannel(stream).send({"type": "dialed", "node": _dialed(node).to_json()})
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await trio.aclose_forcefully(target)
        await trio.aclose_forcefully(stream)
        return
    await splice(stream, target)


async def _answer(channel: ControlChannel, message: dict[str, Any]) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await channel.send(message)


def protocol_handler() -> ProtocolHandler:
    return ProtocolHandler(
        name=PROTOCOL, alpn=(FRONT_DOOR_ALPN,), serve=front_door, serve_remote=serve_remote
    )


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


async def _connect(proxy: str, context: Any) -> TLSStream:
    host, _, port_text = proxy.rpartition(":")
    try:
        with trio.fail_after(REQUEST_TIMEOUT + DIAL_TIMEOUT):
            stream = await TLSStream.connect(
                host.strip("[]"), int(port_text), context, server_hostname=host.strip("[]")
            )
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, pki.UnexpectedPeerKind):
            raise TrustError(
                f"{proxy} is not the cluster's proxy: {cause}",
                hint="check the address; another host of the cluster answers there, which "
                "its administrator should know about",
            ) from None
        raise TetherError(
            f"cannot reach the proxy at {proxy}: {cause}",
            hint="check the address, or log in again with `tether login`",
        ) from None
    if stream.selected_alpn_protocol() != FRONT_DOOR_ALPN:
        await trio.aclose_forcefully(stream)
        raise TetherError(
            f"the proxy at {proxy} has no SSH front door",
            hint="install the tether-ssh plugin on the proxy",
        )
    return stream


def _refused(proxy: str, exc: BaseException) -> TetherError:
    """What a connection the proxy broke off means. With TLS 1.3 the proxy judges the
    client certificate after the client's handshake ends, so its verdict (an alert)
    arrives on the first read."""
    reason = str(exc.__cause__ or exc)
    if "EXPIRED" in reason.upper():
        return AccessDenied(
            "the proxy refused your certificate: it has expired", hint="run `tether login`"
        )
    return TetherError(
        f"the proxy at {proxy} closed the connection: {reason or 'no reason given'}",
        hint="log in again with `tether login`",
    )


async def _ask(
    proxy: str, context: Any, request: dict[str, Any]
) -> tuple[TLSStream, ControlChannel, dict[str, Any]]:
    """Connect to the front door, send one request, and read the proxy's answer.

    :raises TetherError: the answer is an error (raised as its kind, with its hint), the
        proxy broke the connection, or it answered something else than a message.
    """
    stream = await _connect(proxy, context)
    channel = ControlChannel(stream)
    try:
        await channel.send(request)
        with trio.fail_after(REQUEST_TIMEOUT + DIAL_TIMEOUT):
            answer = await channel.receive()
        if answer is None:
            raise AccessDenied(
                f"the proxy at {proxy} closed the connection",
                hint="your certificate may have expired: run `tether login`",
            )
        if answer["type"] == "error":
            raise error_from_json(answer, 400)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise _refused(proxy, exc) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, channel, answer


async def list_nodes(proxy: str, context: Any, *, cluster: str) -> list[dict[str, Any]]:
    """The nodes of ``cluster`` (this proxy's or a leaf's) the user may see, as documents.

    :param context: as for :func:`open_node_stream`.
    """
    stream, _, answer = await _ask(proxy, context, {"type": "list", "cluster": cluster})
    await trio.aclose_forcefully(stream)
    if answer["type"] != "nodes" or not isinstance(answer.get("nodes"), list):
        raise ControlError(f"unexpected answer {answer['type']!r} from the proxy")
    return list(answer["nodes"])


async def cluster_host_cas(proxy: str, context: Any, *, cluster: str) -> list[str]:
    """The SSH host CA lines of ``cluster`` (this proxy's or a leaf's), from the proxy.

    :param context: as for :func:`open_node_stream`.
    """
    stream, _, answer = await _ask(proxy, context, {"type": "host_cas", "cluster": cluster})
    await trio.aclose_forcefully(stream)
    found = answer.get("host_cas")
    if answer["type"] != "host_cas" or not isinstance(found, list):
        raise ControlError(f"unexpected answer {answer['type']!r} from the proxy")
    return [str(line) for line in found]


async def open_node_stream(
    proxy: str,
    context: Any,
    *,
    cluster: str,
    node: str,
    port: int = 0,
) -> tuple[trio.abc.Stream, DialedNode]:
    """Reach ``node`` of ``cluster`` (this proxy's or a leaf's) through the front door.

    :param context: an ``ssl.SSLContext`` that verifies the proxy, presents the user's X.509
        certificate and offers ALPN ``tether-ssh/1``
        (:func:`tether.client.profile.profile_ssl_context`).
    :returns: the byte stream to the node's SSH server, and which node it is.
    :raises NotFound, AccessDenied, NodeOffline: what the proxy said, with its hint.
    :raises TetherError: the proxy cannot be reached or does not speak the front door.
    """
    request = {"type": "dial", "cluster": cluster, "node": node, "port": port}
    stream, channel, answer = await _ask(proxy, context, request)
    try:
        if answer["type"] != "dialed":
            raise ControlError(f"unexpected answer {answer['type']!r} from the proxy")
        host_cas = answer.get("host_cas") or []
        if not isinstance(host_cas, list) or not all(isinstance(x, str) for x in host_cas):
            raise ControlError("the proxy's answer has malformed host_cas")
        dialed = attrs.evolve(DialedNode.from_json(answer.get("node")), host_cas=tuple(host_cas))
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return _Prefixed(stream, channel.take_buffered()), dialed
