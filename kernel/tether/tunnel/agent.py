"""The dialing side of reverse tunnels: an agent pool that keeps one tunnel to every proxy.

A leaf cluster's proxy (or a node in tunnel mode) dials the other side's tunnel address, which
may be a load balancer in front of several proxies. Each tunnel's hello names the proxy it
reached and lists all of them, so the pool keeps dialing until it holds a tunnel to every
advertised proxy (directly, when a proxy advertises its own address). Lost tunnels are redialed
with capped exponential backoff and jitter; a GOAWAY (a proxy shutting down gracefully) makes
the pool dial a replacement at once while the old tunnel drains. When the agent renews its
certificate, :meth:`AgentPool.replace_tunnels` does the same from this side: new tunnels with
the new certificate, GOAWAY on the old ones, which close once their streams are done.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import attrs
import trio

from tether.errors import TetherError
from tether.tunnel.control import (
    CONTROL_TARGET,
    TRUST_TARGET,
    ControlChannel,
    ControlError,
    Hello,
    ProxyInfo,
    parse_hello,
    parse_proxies,
)
from tether.tunnel.mux import Connection, MuxConfig
from tether.tunnel.transport import (
    KeepAlive,
    StreamHandler,
    TunnelClosed,
    TunnelConnection,
    TunnelTimings,
)

__all__ = ["AgentPool", "Backoff"]

log = logging.getLogger(__name__)

Dialer = Callable[[str], Awaitable[trio.abc.Stream]]
#: the largest trust snapshot read through a tunnel (a root with thousands of leaves sends
#: megabytes)
MAX_TRUST = 256 * 1024 * 1024


@attrs.frozen
class Backoff:
    """Capped exponential backoff with jitter, so a fleet of agents does not reconnect in step.

    :param initial: the first delay in seconds.
    :param maximum: the cap.
    :param multiplier: growth per failed attempt.
    :param jitter: fraction of each delay that is randomised (0.5: 50%..100% of it).
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        rng = rng or random.Random()
        delay = self.initial
        while True:
            yield delay * (1 - self.jitter * rng.random())
            delay = min(self.maximum, delay * self.multiplier)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@attrs.define(eq=False)
class _Tunnel:
    proxy_id: str
    conn: TunnelConnection
    hello: Hello
    #: why it is being replaced: the next tunnel to its proxy takes its place, then it drains
    retiring: str | None = None
    #: the revision of the cluster's trust its proxy named in its last answer (hello.trust)
    trust_revision: str | None = None


class AgentPool:
    """Keeps tunnels from this cluster to every proxy of the other side.

    :param cluster: this side's cluster name (for logs; the certificate says it to the peer).
    :param tunnel_addr: ``host:port`` to dial (a load balancer or one proxy).
    :param dial: opens a handshaken TLS stream (ALPN ``tether-tunnel/1``) to an address.
    :param handle_stream: serves each stream the other side opens through a tunnel.
    :param status: extra fields for each heartbeat (e.g. node counts).
    :param inventory: this host's inventory entries, ``{"ttl": seconds, "entries": [...]}``,
        sent in the heartbeats of one tunnel whose proxy takes them (its hello says so): the
        proxy relays them to auth (see :meth:`relays_inventory`).
    """

    def __init__(
        self,
        *,
        cluster: str,
        tunnel_addr: str,
        dial: Dialer,
        handle_stream: StreamHandler,
        timings: TunnelTimings | None = None,
        backoff: Backoff | None = None,
        mux_config: MuxConfig | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        inventory: Callable[[], dict[str, Any]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cluster = cluster
        self.tunnel_addr = tunnel_addr
        self._dial = dial
        self._handle_stream = handle_stream
        self.timings = timings or TunnelTimings()
        self.backoff = backoff or Backoff()
        self.mux_config = mux_config
        self._status = status or dict
        self._inventory = inventory
        self._rng = rng or random.Random()
        self._tunnels: dict[str, _Tunnel] = {}
        self._known: dict[str, ProxyInfo] = {}
        self._seekers = 0
        self._changed = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self.last_error: str | None = None
        self.dial_attempts = 0

    # --- observing ---------------------------------------------------------------------------

    def connected_proxies(self) -> list[str]:
        return sorted(pid for pid, t in self._tunnels.items() if not t.conn.closed)

    def known_proxies(self) -> list[str]:
        return sorted(self._known)

    def relays_inventory(self) -> bool:
        """Whether a tunnel carries this host's inventory entries now (its proxy relays them
        to auth), so that the host need not publish them itself."""
        return self._inventory is not None and self._carrier("inventory") is not None

    def keep_alive(self) -> KeepAlive:
        """The cluster's keep-alive as the proxy of the tunnel carrying this host's entries
        (else of any tunnel) named it; the default before any tunnel is up, or from a proxy
        too old to name it."""
        tunnel = self._carrier("inventory") or next(iter(self._tunnels.values()), None)
        return tunnel.hello.keep_alive if tunnel is not None else KeepAlive()

    def follows_trust(self) -> bool:
        """Whether a tunnel's proxy names its trust's revision in its answers and serves it
        (see :meth:`wait_trust` and :meth:`read_trust`)."""
        return self._carrier("trust") is not None

    async def wait_follows_trust(self) -> None:
        """Wait until a tunnel's proxy serves the trust it follows."""
        while not self.follows_trust():
            await self._changed.park()

    async def wait_trust(self, seen: str | None) -> None:
        """Wait until the trust revision the proxy names is another than ``seen``, or no
        tunnel follows trust any more."""
        while True:
            carrier = self._carrier("trust")
            if carrier is None or carrier.trust_revision not in (None, seen):
                return
            await self._changed.park()

    def trust_revision(self) -> str | None:
        """The trust revision the proxy followed named last, if any."""
        carrier = self._carrier("trust")
        return carrier.trust_revision if carrier is not None else None

    async def read_trust(self) -> bytes:
        """The cluster's trust snapshot as the proxy followed holds it (what ``GET /v1/trust``
        answers), read through its tunnel.

        :raises TunnelClosed: no tunnel follows trust, or it closed meanwhile.
        :raises ControlError: the snapshot is larger than :data:`MAX_TRUST`.
        """
        carrier = self._carrier("trust")
        if carrier is None:
            raise TunnelClosed("no tunnel to a proxy that serves the trust")
        body = bytearray()
        async with await carrier.conn.open_stream(TRUST_TARGET) as stream:
            while chunk := await stream.receive_some():
                body += chunk
                if len(body) > MAX_TRUST:
                    raise ControlError(f"the proxy's trust is larger than {MAX_TRUST} bytes")
        return bytes(body)

    def _carrier(self, feature: str) -> _Tunnel | None:
        """The one tunnel that carries ``feature`` ("inventory": its heartbeats carry this
        host's entries, which each proxy would otherwise store once; "trust": its answers name
        the trust followed): the first, by proxy id, of those whose hello offers it."""
        carriers = [
            t
            for t in self._tunnels.values()
            if getattr(t.hello, feature) and not t.conn.closed and not t.conn.draining
        ]
        return min(carriers, key=lambda t: t.proxy_id, default=None)

    async def wait_connected(self, count: int = 1) -> None:
        """Wait until tunnels to at least ``count`` distinct proxies are up."""
        while len(self.connected_proxies()) < count:
            await self._changed.park()

    def _notify(self) -> None:
        self._changed.unpark_all()

    def replace_tunnels(self, reason: str) -> None:
        """Move to new tunnels (after a renewal: ``dial`` presents the new certificate now).

        A new tunnel is dialled to every proxy held; once it is up, the old one is sent
        GOAWAY, so the other side opens nothing more on it, and closes when the streams
        running on it are done.
        """
        for tunnel in list(self._tunnels.values()):
            if tunnel.retiring is None and not tunnel.conn.draining:
                log.info("replacing the tunnel to proxy %s: %s", tunnel.proxy_id, reason)
                tunnel.retiring = reason
                self._spawn_seeker(self._known.get(tunnel.proxy_id))

    # --- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; reports started at once (tunnels come up in the background)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._spawn_seeker(None)
            task_status.started()

    def _spawn_seeker(self, proxy: ProxyInfo | None) -> None:
        assert self._nursery is not None
        self._seekers += 1
        self._nursery.start_soon(self._seek, proxy)

    def _missing(self) -> list[ProxyInfo]:
        return [
            p
            for pid, p in self._known.items()
            if pid not in self._tunnels or self._tunnels[pid].retiring is not None
        ]

    async def _seek(self, proxy: ProxyInfo | None) -> None:
        """Keep one tunnel up: to ``proxy`` when it has an address, else via tunnel_addr to
        whichever proxy we do not hold yet."""
        delays = self.backoff.delays(self._rng)
        while True:
            addr = proxy.addr if proxy is not None and proxy.addr else self.tunnel_addr
            connected = False
            try:
                connected = await self._connect_once(addr)
            except* (TetherError, OSError, trio.BrokenResourceError, trio.TooSlowError) as group:
                first = _first_leaf(group)
                self.last_error = f"{addr}: {first or type(first).__name__}"
                log.warning("tunnel to %s failed: %s", addr, self.last_error)
            if connected:
                delays = self.backoff.delays(self._rng)  # a tunnel that worked resets backoff
                if self._missing():
                    continue
            elif self._seekers > max(1, len(self._known)):
                self._seekers -= 1  # more seekers than proxies: this one is not needed
                return
            await trio.sleep(next(delays))

    async def _connect_once(self, addr: str) -> bool:
        """Dial, learn which proxy answered, and serve the tunnel until it ends.

        Returns True when a tunnel was established (and has now ended), False when the dial
        reached a proxy we already hold.
        """
        self.dial_attempts += 1
        with trio.fail_after(self.timings.open_timeout):
            stream = await self._dial(addr)
        conn = TunnelConnection(
            stream,
            Connection("dialer", self.mux_config),
            handle_stream=self._handle_stream,
            timings=self.timings,
            name=f"tunnel to {addr}",
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(conn.run)
            try:
                with trio.fail_after(self.timings.open_timeout):
                    control = ControlChannel(await conn.open_stream(CONTROL_TARGET))
                    first = await control.receive()
                if first is None:
                    raise ControlError("the proxy closed the control stream")
                hello = parse_hello(first)
                # both ends of the tunnel give up on a silent peer at the cluster's keep-alive
                conn.retime(hello.keep_alive.timings(self.timings))
            except BaseException:
                await conn.aclose("control stream failed")
                raise
            held = self._tunnels.get(hello.proxy_id)
            if held is not None and not held.conn.closed and held.retiring is None:
                await conn.aclose("already connected to this proxy")
                return False
            tunnel = _Tunnel(hello.proxy_id, conn, hello)
            self._tunnels[hello.proxy_id] = tunnel
            if held is not None and held.retiring is not None:
                await held.conn.goaway(held.retiring)  # replaced: it drains from now on
            self._learn(hello.proxies)
            self.last_error = None
            log.info("tunnel to proxy %s (%s) is up", hello.proxy_id, addr)
            self._notify()
            try:
                await self._heartbeat(tunnel, control)
            finally:
                if self._tunnels.get(hello.proxy_id) is tunnel:
                    del self._tunnels[hello.proxy_id]
                self._notify()
                await conn.aclose(conn.closed_reason or "heartbeat loop ended")
        log.info("tunnel to proxy %s closed: %s", hello.proxy_id, conn.closed_reason)
        return True

    async def _heartbeat(self, tunnel: _Tunnel, control: ControlChannel) -> None:
        conn = tunnel.conn
        interval = tunnel.hello.heartbeat_interval
        replaced = False
        while not conn.closed:
            if conn.draining and not replaced:
                # the proxy is shutting down, or this side moves to new tunnels: dial a
                # replacement now, let this one drain
                replaced = True
                if self._tunnels.get(tunnel.proxy_id) is tunnel:  # else a new one took over
                    del self._tunnels[tunnel.proxy_id]
                    self._spawn_seeker(None)
                self._notify()
            if replaced and conn.statistics()["streams"] <= 1:
                return  # only the control stream is left
            status = {"type": "heartbeat", "cluster": self.cluster, **self._status()}
            inventory = self._inventory if self._carrier("inventory") is tunnel else None
            carries = inventory is not None
            if inventory is not None:
                status["inventory"] = inventory()
            if tunnel.hello.trust:
                status["trust_push"] = True  # this side reads a trust message at any time
            rtt = conn.rtt
            if rtt is not None:
                status["rtt_ms"] = round(rtt * 1000, 3)
            try:
                sent = trio.current_time()
                await control.send(status)
                with trio.move_on_after(conn.timings.dead_after):
                    answer = await self._receive(tunnel, control)
                    if answer is None:
                        return
                    if answer["type"] == "ack":
                        # the answer proves the proxy alive, so the tunnel sends it no PINGs:
                        # the round trip is measured here instead
                        conn.rtt = trio.current_time() - sent
                        self._answered(tunnel, answer)
                failed: list[BaseException] = []
                with trio.move_on_after(interval):
                    async with trio.open_nursery() as nursery:
                        # what the proxy pushes meanwhile (its trust moved) is read at once
                        nursery.start_soon(self._read_pushes, tunnel, control, nursery, failed)
                        if self._inventory is not None and not carries:
                            # the tunnel carrying this host's entries closed (its proxy has
                            # them removed): this one carries them from its next heartbeat,
                            # sent now rather than up to an interval later
                            nursery.start_soon(self._wait_carrier, tunnel, nursery.cancel_scope)
                        if replaced:
                            await conn.wait_streams_at_most(1)
                        else:
                            await conn.wait_draining_or_closed()
                        nursery.cancel_scope.cancel()
                if failed:
                    raise failed[0]
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            except ControlError as exc:
                await conn.aclose(f"bad control message: {exc.message}")
                return

    async def _wait_carrier(self, tunnel: _Tunnel, wake: trio.CancelScope) -> None:
        """Cancel ``wake`` once ``tunnel`` is the one to carry this host's entries."""
        while self._carrier("inventory") is not tunnel:
            await self._changed.park()
        wake.cancel()

    async def _receive(self, tunnel: _Tunnel, control: ControlChannel) -> dict[str, Any] | None:
        """The next message that answers a heartbeat; a trust message read on the way is
        taken in. None when the proxy closed the control stream."""
        while True:
            message = await control.receive()
            if message is None or message["type"] != "trust":
                return message
            self._trust_named(tunnel, message)

    async def _read_pushes(
        self,
        tunnel: _Tunnel,
        control: ControlChannel,
        nursery: trio.Nursery,
        failed: list[BaseException],
    ) -> None:
        """Take in what the proxy sends between heartbeats (ControlChannel.receive keeps a
        partly read message when cancelled, for the next heartbeat's answer): its trust
        pushes, and an answer that came after this side stopped waiting for it (a proxy
        slower than ``dead_after``), taken as any answer; a failure ends the wait and goes in
        ``failed``, for the heartbeat loop to raise."""
        try:
            while (message := await self._receive(tunnel, control)) is not None:
                if message["type"] == "ack":
                    self._answered(tunnel, message)
            failed.append(trio.ClosedResourceError("the proxy closed the control stream"))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ControlError) as exc:
            failed.append(exc)
        nursery.cancel_scope.cancel()

    def _answered(self, tunnel: _Tunnel, answer: dict[str, Any]) -> None:
        """Take in a heartbeat's answer: the proxies, the trust named, any refusal."""
        self._learn(parse_proxies(answer))
        self._trust_named(tunnel, answer)
        refused = answer.get("inventory_refused")
        if refused:
            log.warning("auth refused this host's inventory entries: %s", refused)

    def _trust_named(self, tunnel: _Tunnel, message: dict[str, Any]) -> None:
        """Note the trust revision the proxy named in an answer or a push."""
        revision = message.get("trust" if message["type"] == "ack" else "revision")
        if tunnel.hello.trust and isinstance(revision, str) and revision != tunnel.trust_revision:
            tunnel.trust_revision = revision
            self._notify()

    def _learn(self, proxies: tuple[ProxyInfo, ...]) -> None:
        """Remember the advertised proxies and start seeking the ones we lack."""
        self._known = {proxy.id: proxy for proxy in proxies}
        # one seeker per proxy: the first tunnel's seeker counts for the proxy it reached
        for proxy in self._missing():
            if len(self._known) <= self._seekers:
                break
            self._spawn_seeker(proxy if proxy.addr else None)
