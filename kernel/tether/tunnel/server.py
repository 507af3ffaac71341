"""The serving side of reverse tunnels (a root cluster's proxy).

Agents (a leaf cluster's proxy, or a node in tunnel mode) dial the proxy's public port with
ALPN ``tether-tunnel/1``; :meth:`TunnelServer.handle` authenticates them by certificate, keeps
a registry of connected clusters and their tunnels, and :meth:`TunnelServer.dial` opens a
stream to a target on the far side over any healthy tunnel of that cluster. Trust is one way:
the serving side opens streams, and refuses every stream an agent tries to open except the
control stream.
"""

from __future__ import annotations

import datetime
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from tether.errors import TetherError
from tether.pki import Identity, MalformedCertificate, read_x509_identity
from tether.tunnel.control import (
    CONTROL_TARGET,
    TRUST_TARGET,
    ControlChannel,
    ControlError,
    Hello,
    ProxyInfo,
    hello_message,
    inventory_report,
)
from tether.tunnel.heartbeats import HeartbeatRecorder, InventoryRecorder
from tether.tunnel.mux import Connection, MuxConfig
from tether.tunnel.transport import (
    IncomingStream,
    KeepAlive,
    MuxStream,
    StreamRefused,
    TunnelClosed,
    TunnelConnection,
    TunnelTimings,
)

__all__ = [
    "TUNNEL_ALPN",
    "TUNNEL_KINDS",
    "ClusterOffline",
    "ClusterStatistics",
    "TargetRefused",
    "TrustSource",
    "TunnelRecord",
    "TunnelServer",
]

log = logging.getLogger(__name__)

TUNNEL_ALPN = "tether-tunnel/1"
#: identities that may dial tunnels: another cluster's proxies, and this cluster's nodes in
#: tunnel mode; a user's certificate never opens one
TUNNEL_KINDS = frozenset({"proxy", "node"})


class ClusterOffline(TetherError):
    """No healthy tunnel of that cluster is connected to this proxy."""


class TargetRefused(TetherError):
    """The cluster is online but refused (or could not reach) the target.

    :param reason: the peer's ``OPEN_FAIL`` reason as it sent it (``tether.dial.refusal_error``
        reads the error it describes).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@attrs.define(eq=False)
class TunnelRecord:
    """One connected tunnel, as the registry and heartbeats see it."""

    id: int
    cluster: str
    agent: str
    peer: str
    conn: TunnelConnection
    connected_at: float
    last_heartbeat: float
    status: Mapping[str, Any] = attrs.field(factory=dict)
    #: a tunnel from one of this cluster's own nodes, not from a leaf cluster's proxy
    own_node: bool = False

    @property
    def healthy(self) -> bool:
        return not self.conn.closed and not self.conn.draining


@attrs.frozen
class ClusterStatistics:
    """What one cluster's tunnels to this proxy carry right now (see
    :meth:`TunnelServer.statistics`).

    :param tunnels: healthy tunnels (open, not going away).
    :param streams: open streams through its tunnels, not counting their control streams.
    :param bytes_sent: stream data this proxy sent to the cluster since it started, over
        tunnels open and closed; it only grows.
    :param bytes_received: stream data the cluster sent here, counted the same way.
    """

    tunnels: int
    streams: int
    bytes_sent: int
    bytes_received: int


class TrustSource(Protocol):
    """The cluster's trust as a proxy holds it (:class:`tether.trust.cache.TrustCache`)."""

    @property
    def revision(self) -> str: ...

    def body(self) -> bytes: ...


Authenticator = Callable[[trio.abc.Stream], Identity]
#: records an audit event of this proxy: ``(event type, fields)``; every event it is given is a
#: refusal or a tunnel closed for cause
Auditor = Callable[[str, Mapping[str, Any]], Awaitable[None]]


class TunnelServer:
    """Accepts tunnels and dials through them.

    :param proxy_id: this proxy's id, told to agents so they know which proxies they reached.
    :param cluster: this side's cluster name.
    :param authenticate: returns the verified identity of a handshaken TLS stream's peer (its
        ``cluster`` is the connecting cluster) or raises a TrustError saying why not.
    :param proxies: the proxies of this cluster right now (for agents to reach them all).
    :param recorder: where leaf clusters' tunnels' heartbeats go (batched writes to storage,
        which a remote_cluster's ``connection`` is computed from); this cluster's own nodes'
        tunnels are not recorded there: no listing reads them (a node's inventory entry says
        it is alive), and a record per node joined and left was a write per node for nothing.
    :param inventory: where the inventory entries this cluster's nodes send in their
        heartbeats go (relayed to auth in batches, each as the node whose tunnel sent it);
        without it, nodes are told to publish them themselves.
    :param trust: this cluster's trust as this proxy holds it: its revision goes to this
        cluster's nodes in every heartbeat's answer, and a node that sees it move reads the
        snapshot through its tunnel (a stream to :data:`TRUST_TARGET`), instead of watching
        it over a connection of its own.
    :param audit: records refused tunnels and tunnels closed for cause (a flood, an expired
        certificate); they are logged either way.
    :param keep_alive: the cluster's keep-alive (as auth holds it): named in every tunnel's
        hello, for agents of every kind to heartbeat at, and what this side's ``timings``
        give up at unless given.
    """

    def __init__(
        self,
        *,
        proxy_id: str,
        cluster: str,
        authenticate: Authenticator,
        proxies: Callable[[], Sequence[ProxyInfo]],
        recorder: HeartbeatRecorder | None = None,
        inventory: InventoryRecorder | None = None,
        trust: TrustSource | None = None,
        keep_alive: KeepAlive | None = None,
        timings: TunnelTimings | None = None,
        mux_config: MuxConfig | None = None,
        audit: Auditor | None = None,
    ) -> None:
        self.proxy_id = proxy_id
        self.cluster = cluster
        self._authenticate = authenticate
        self._proxies = proxies
        self._recorder = recorder
        self._inventory = inventory
        self._trust = trust
        self.keep_alive = keep_alive or KeepAlive()
        self.timings = timings or self.keep_alive.timings()
        self.mux_config = mux_config
        self._audit = audit
        self._tunnels: dict[str, dict[int, TunnelRecord]] = {}
        #: the same tunnels by (cluster, agent): a node in tunnel mode is dialed through its
        #: own, found without going through the thousands of its cluster's others
        self._by_agent: dict[tuple[str, str], dict[int, TunnelRecord]] = {}
        #: (sent, received) stream bytes of each cluster's closed tunnels
        self._closed_bytes: dict[str, tuple[int, int]] = {}
        self._ids = itertools.count(1)
        self._changed = trio.lowlevel.ParkingLot()
        self._draining: str | None = None
        #: the control loops of nodes that take trust pushes
        self._trust_listeners: set[_TrustListener] = set()

    @property
    def heartbeat_interval(self) -> float:
        """How often every agent heartbeats (the cluster's keep-alive interval)."""
        return self.keep_alive.interval

    # --- the registry ------------------------------------------------------------------------

    def clusters(self) -> dict[str, list[TunnelRecord]]:
        """Connected clusters and their healthy tunnels."""
        return {
            name: healthy
            for name, records in self._tunnels.items()
            if (healthy := [r for r in records.values() if r.healthy])
        }

    def cluster_names(self) -> list[str]:
        """Clusters with a tunnel here, healthy or not; cheap, unlike :meth:`clusters`."""
        return list(self._tunnels)

    def statistics(self) -> dict[str, ClusterStatistics]:
        """Every cluster that has had a tunnel here since this proxy started, online or not."""
        result = {}
        for name in self._tunnels.keys() | self._closed_bytes.keys():
            records = list(self._tunnels.get(name, {}).values())
            sent, received = self._closed_bytes.get(name, (0, 0))
            streams = 0
            for record in records:
                stats = record.conn.statistics()
                sent += stats["bytes_sent"]
                received += stats["bytes_received"]
                # a registered tunnel's control stream is open until the tunnel ends
                streams += max(stats["streams"] - 1, 0)
            result[name] = ClusterStatistics(
                tunnels=sum(1 for r in records if r.healthy),
                streams=streams,
                bytes_sent=sent,
                bytes_received=received,
            )
        return result

    def is_online(self, cluster: str) -> bool:
        return cluster in self.clusters()

    async def wait_online(self, cluster: str, count: int = 1) -> None:
        """Wait until ``cluster`` has at least ``count`` healthy tunnels here."""
        while len(self.clusters().get(cluster, [])) < count:
            await self._changed.park()

    async def wait_offline(self, cluster: str) -> None:
        """Wait until ``cluster`` has no healthy tunnel here."""
        while self.is_online(cluster):
            await self._changed.park()

    def _notify(self) -> None:
        self._changed.unpark_all()

    # --- dialing -----------------------------------------------------------------------------

    async def dial(
        self,
        cluster: str,
        target: str,
        metadata: Mapping[str, str] | None = None,
        *,
        agent: str | None = None,
    ) -> MuxStream:
        """Open a stream to ``target`` in ``cluster`` over its least busy healthy tunnel.

        :param agent: only through the tunnels of this agent (a node in tunnel mode is the
            agent of its own tunnels, named by its host id); any agent of the cluster if None.
        :raises ClusterOffline: no tunnel of the cluster (or of that agent) is connected, or
            all failed.
        :raises TargetRefused: the cluster refused or could not reach the target.
        """
        # only this cluster's tunnels are looked at: a root with many leaves dials in the
        # same time as one with a single leaf
        records = (
            self._tunnels.get(cluster, {})
            if agent is None
            else self._by_agent.get((cluster, agent), {})
        )
        candidates = sorted(
            (record for record in records.values() if record.healthy),
            key=lambda r: r.conn.open_streams,
        )
        last_error = "no tunnel is connected" if agent is None else f"{agent} has no tunnel here"
        for record in candidates:
            try:
                return await record.conn.open_stream(target, metadata)
            except StreamRefused as exc:
                if record.conn.going_away:
                    # it sent GOAWAY as this OPEN crossed it (an agent moving to a new
                    # tunnel): the refusal is the tunnel's, not the target's
                    last_error = exc.message
                    continue
                raise TargetRefused(
                    f"cluster {cluster!r} refused {target!r}: {exc.message}", reason=exc.message
                ) from None
            except TunnelClosed as exc:
                last_error = exc.message
                continue
        raise ClusterOffline(
            f"cluster {cluster!r} is offline: {last_error}",
            hint="check that its agent runs and can reach this proxy's tunnel address",
        )

    def trust_moved(self) -> None:
        """The trust this proxy holds changed: tell this cluster's nodes now (each control
        loop sends the new revision, and the node reads the snapshot through its tunnel), not
        at their next heartbeat."""
        for listener in list(self._trust_listeners):
            listener.wake()

    async def disconnect(self, cluster: str, reason: str) -> None:
        """Close every tunnel of ``cluster`` now (its trust was removed)."""
        for record in list(self._tunnels.get(cluster, {}).values()):
            await record.conn.aclose(reason)

    async def goaway_all(self, reason: str = "proxy shutting down") -> None:
        """Tell every agent to move to another proxy now; running streams may finish. New
        tunnels are sent away at once from now on."""
        self._draining = reason
        for records in list(self._tunnels.values()):
            for record in list(records.values()):
                await record.conn.goaway(reason)
        self._notify()

    # --- serving -----------------------------------------------------------------------------

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one tunnel on a handshaken TLS stream until it closes (an ALPN handler)."""
        peer = _peer_name(stream)
        try:
            identity = self._authenticate(stream)
        except TetherError as exc:
            # the message, not the hint: a hint speaks to whoever holds the certificate (a
            # user told to log in elsewhere), not to the operator reading this log
            log.warning("tunnel from %s refused: %s", peer, exc.message)
            claimed = _claimed_identity(stream)
            if claimed is not None:  # anyone can connect without a certificate: logged only
                await self._record(
                    "tunnel.refused", {"peer": peer, **claimed, "reason": exc.message}
                )
            return
        version = _tls_version(stream)
        if version != "TLSv1.3":
            await self._refused(
                peer,
                identity,
                f"it negotiated {version or 'no TLS version this side can tell'}, "
                "tunnels need TLS 1.3",
            )
            return
        if identity.kind not in TUNNEL_KINDS:
            await self._refused(
                peer,
                identity,
                f"a {identity.kind} certificate ({identity.username} of cluster "
                f"{identity.cluster}) may not open tunnels",
            )
            return
        record: TunnelRecord | None = None

        own_node = identity.kind == "node" and identity.cluster == self.cluster

        async def handle_stream(request: IncomingStream) -> None:
            if request.target == TRUST_TARGET and own_node and self._trust is not None:
                await _send_trust(request.accept(), self._trust.body())
                return
            if request.target != CONTROL_TARGET:
                # trust is one way: a leaf never reaches into the root
                request.reject("this side does not accept streams through a tunnel")
                return
            assert record is not None  # set before the connection runs
            await self._control(record, request.accept(), own_node, stream)

        conn = TunnelConnection(
            stream,
            Connection("listener", self.mux_config),
            handle_stream=handle_stream,
            timings=self.timings,
            name=f"tunnel from {identity.cluster} ({peer})",
        )
        record = TunnelRecord(
            id=next(self._ids),
            cluster=identity.cluster,
            agent=identity.username,
            peer=peer,
            conn=conn,
            connected_at=trio.current_time(),
            last_heartbeat=trio.current_time(),
            own_node=own_node,
        )
        if self._draining is not None:
            await conn.goaway(self._draining)
        log.info("tunnel %d from cluster %s (%s) connected", record.id, record.cluster, peer)
        expired = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(conn.run)
                left = identity.expires - datetime.datetime.now(datetime.UTC)
                with trio.move_on_after(max(left.total_seconds(), 0.0)):
                    await conn.wait_closed()
                if not conn.closed:
                    # the agent renews before this and moves to new tunnels; one that did not
                    # has no certificate any more to be trusted by
                    expired = True
                    await conn.aclose(
                        f"the certificate of this tunnel expired at {identity.expires:%H:%M:%S} "
                        "UTC; renew it to reconnect"
                    )
        finally:
            self._unregister(record)
            if own_node and self._inventory is not None:
                # the node's last tunnel here closed (its process died, its host reset the
                # connection, or it stopped answering for the keep-alive's count): its
                # entries go now, not when they expire. One that moved to a new tunnel here
                # (a renewed certificate) keeps them, and so do all while this proxy shuts
                # down: that says nothing of the nodes, which move to another proxy
                others = self._by_agent.get((record.cluster, record.agent), {}).values()
                last = not any(r.healthy for r in others)
                self._inventory.forget(record.agent, remove=last and self._draining is None)
            log.info(
                "tunnel %d from cluster %s closed: %s",
                record.id,
                record.cluster,
                conn.closed_reason,
            )
        ended = conn.mux.terminated
        if expired or (ended is not None and not ended.by_peer and ended.error_code):
            await self._record(
                "tunnel.closed",
                {**_who(peer, identity), "tunnel": record.id, "reason": conn.closed_reason},
            )

    async def _refused(self, peer: str, identity: Identity, reason: str) -> None:
        log.warning("tunnel from %s refused: %s", peer, reason)
        await self._record("tunnel.refused", {**_who(peer, identity), "reason": reason})

    async def _record(self, event: str, fields: Mapping[str, Any]) -> None:
        """Audit ``event``; a failure is logged, never raised (the refusal stands)."""
        if self._audit is None:
            return
        try:
            await self._audit(event, fields)
        except (TetherError, OSError) as exc:
            log.warning("could not audit %s from %s: %s", event, fields.get("peer"), exc)

    async def _control(
        self, record: TunnelRecord, stream: MuxStream, own_node: bool, tls: trio.abc.Stream
    ) -> None:
        channel = ControlChannel(stream)
        # only this cluster's nodes publish inventory entries and follow this proxy's trust;
        # a leaf's proxy does neither here
        relay = self._inventory if own_node else None
        trust = self._trust if own_node else None
        hello = Hello(
            proxy_id=self.proxy_id,
            cluster=self.cluster,
            proxies=tuple(self._proxies()),
            # every agent heartbeats at the cluster's keep-alive: a node's entries ride its
            # heartbeats, live the keep-alive's count of them (and a margin), and are removed
            # when its tunnel closes
            heartbeat_interval=self.keep_alive.interval,
            keep_alive_count_max=self.keep_alive.count_max,
            inventory=relay is not None,
            trust=trust is not None,
        )
        await channel.send(hello_message(hello))
        self._register(record)
        named: str | None = None  # the trust revision this node was last told of
        pushes = False  # it reads a trust message at any time (its heartbeats say so)
        # the certificate the tunnel presented, read once: TLS 1.3 never changes it, and the
        # same bytes object each heartbeat makes comparing its reports cheap
        cert: bytes | None = None

        async def answer(message: dict[str, Any]) -> None:
            nonlocal named, pushes, cert
            if message["type"] != "heartbeat":
                raise ControlError(f"unexpected control message {message['type']!r}")
            record.last_heartbeat = trio.current_time()
            inventory = message.pop("inventory", None)
            if inventory is not None:
                if relay is None:
                    raise ControlError("this proxy takes no inventory entries from this tunnel")
                # whose entries they are is the tunnel's certificate, never the message
                if cert is None:
                    cert = _peer_der(tls)
                relay.record(inventory_report(record.agent, cert, inventory))
            record.status = {k: v for k, v in message.items() if k != "type"}
            # a leaf is online while its tunnels heartbeat; a node shows it is alive by
            # its inventory entries, and no listing reads a node's tunnel heartbeats
            if self._recorder is not None and not own_node:
                self._recorder.record(record.cluster, self.proxy_id, record.agent, record.status)
            reply: dict[str, Any] = {
                "type": "ack",
                "proxies": [p.to_json() for p in self._proxies()],
            }
            refused = relay.refusals(record.agent) if relay is not None else None
            if refused:
                reply["inventory_refused"] = refused
            if trust is not None:
                reply["trust"] = named = trust.revision
                pushes = message.get("trust_push") is True
            await channel.send(reply)

        listener = _TrustListener()
        if trust is not None:
            self._trust_listeners.add(listener)  # trust_moved wakes it to push
        try:
            while True:
                # one scope serves every wait until a trust move cancels it, not one per
                # message: entering a cancel scope costs as much as a task switch
                listener.scope = scope = trio.CancelScope()
                message: dict[str, Any] | None = None
                with scope:
                    while True:
                        if pushes and trust is not None and named != trust.revision:
                            named = trust.revision
                            await channel.send({"type": "trust", "revision": named})
                        listener.waiting = pushes
                        try:
                            message = await channel.receive()  # keeps a partial message
                        finally:
                            listener.waiting = False
                        if message is None or scope.cancel_called:
                            # woken as the message came: answer it outside the spent scope,
                            # whose next checkpoint would cancel the answer
                            break
                        await answer(message)
                if scope.cancelled_caught:
                    continue  # woken while waiting: push the new revision, wait anew
                if message is None:
                    break
                await answer(message)
        except ControlError as exc:
            log.warning("tunnel %d from %s: %s; closing it", record.id, record.cluster, exc)
            await record.conn.aclose(f"bad control message: {exc.message}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._trust_listeners.discard(listener)

    def _register(self, record: TunnelRecord) -> None:
        self._tunnels.setdefault(record.cluster, {})[record.id] = record
        self._by_agent.setdefault((record.cluster, record.agent), {})[record.id] = record
        if self._recorder is not None and not record.own_node:
            self._recorder.record(
                record.cluster, self.proxy_id, record.agent, {"connected": True}, urgent=True
            )
        self._notify()

    def _unregister(self, record: TunnelRecord) -> None:
        stats = record.conn.statistics()
        sent, received = self._closed_bytes.get(record.cluster, (0, 0))
        self._closed_bytes[record.cluster] = (
            sent + stats["bytes_sent"],
            received + stats["bytes_received"],
        )
        mine = self._by_agent.get((record.cluster, record.agent), {})
        mine.pop(record.id, None)
        if not mine:
            self._by_agent.pop((record.cluster, record.agent), None)
        records = self._tunnels.get(record.cluster, {})
        records.pop(record.id, None)
        if not records:
            self._tunnels.pop(record.cluster, None)
            if self._recorder is not None and not record.own_node:
                self._recorder.record(
                    record.cluster, self.proxy_id, record.agent, {"connected": False}, urgent=True
                )
        self._notify()


class _TrustListener:
    """A control loop that a trust move interrupts while it waits for the node's next
    message, so that it pushes the new revision at once. Only the wait is interrupted: a
    send cancelled midway would leave half a message on the stream."""

    __slots__ = ("scope", "waiting")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.waiting = False

    def wake(self) -> None:
        if self.waiting:
            self.scope.cancel()


def _who(peer: str, identity: Identity) -> dict[str, str]:
    return {
        "peer": peer,
        "agent_cluster": identity.cluster,  # "cluster" is the cluster recording the event
        "agent": identity.username,
        "kind": identity.kind,
    }


async def _send_trust(stream: MuxStream, body: bytes) -> None:
    """Answer a node's :data:`TRUST_TARGET` stream: the snapshot, then the end of it."""
    try:
        await stream.send_all(body)
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the node went; it asks again through its next tunnel
    finally:
        await stream.aclose()


def _peer_der(stream: trio.abc.Stream) -> bytes:
    """The certificate the peer of a handshaken TLS stream presented (DER)."""
    der = stream.getpeercert(True)  # type: ignore[attr-defined]
    if not der:  # authenticated by it: a tunnel has one
        raise ControlError("the tunnel's peer presented no certificate")
    return bytes(der)


def _claimed_identity(stream: trio.abc.Stream) -> dict[str, str] | None:
    """Who a refused peer's certificate claims to be, unverified (what a hostile peer chose to
    claim), or None when it presented no certificate."""
    getpeercert = getattr(stream, "getpeercert", None)
    der = getpeercert(True) if callable(getpeercert) else None
    if not der:
        return None
    try:
        return {"claimed": read_x509_identity(bytes(der)).label}
    except MalformedCertificate:
        return {"claimed": "a certificate without a Tether identity"}


def _tls_version(stream: trio.abc.Stream) -> str | None:
    """The TLS version ``stream`` negotiated, or None when it cannot say (then it is refused:
    a transport that cannot prove TLS 1.3 does not carry a tunnel)."""
    version = getattr(stream, "version", None)
    if not callable(version):
        return None
    negotiated = version()
    return negotiated if isinstance(negotiated, str) else None


def _peer_name(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None) or getattr(
        getattr(stream, "transport_stream", None), "socket", None
    )
    try:
        host, port = sock.getpeername()[:2]  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError, TypeError):
        return "unknown peer"
    return f"{host}:{port}"
