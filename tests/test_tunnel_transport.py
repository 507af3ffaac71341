"""The tunnel's trio driver, server and agent pool, over in-memory transports.

Timeouts, pings and backoff run on trio's autojump clock, so a 45-second dead-peer timeout
takes no real time. Real TLS and real processes are in test_tunnel_processes.py.
"""

from __future__ import annotations

import contextlib
import datetime
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from tether.pki import Identity
from tether.testing.memory import MemoryTLSStream, memory_tls_stream_pair
from tether.tunnel import Connection, ErrorCode, MuxConfig
from tether.tunnel import _frames as fr
from tether.tunnel._frames import FrameType
from tether.tunnel.agent import AgentPool, Backoff
from tether.tunnel.control import ControlChannel, Hello, ProxyInfo, hello_message
from tether.tunnel.heartbeats import (
    HeartbeatRecord,
    HeartbeatRecorder,
    InventoryRecorder,
    InventoryReport,
)
from tether.tunnel.mux import REPLY_FLOOD_FACTOR
from tether.tunnel.server import ClusterOffline, TargetRefused, TunnelServer
from tether.tunnel.transport import (
    HEARTBEAT_INTERVAL,
    HEARTBEATS_MISSED,
    IncomingStream,
    KeepAlive,
    MuxStream,
    StreamRefused,
    TunnelConnection,
    TunnelTimings,
)


def leaf_identity(cluster: str = "leaf") -> Identity:
    return Identity(
        username=f"{cluster}-proxy",
        cluster=cluster,
        roles=(),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
        kind="proxy",
    )


async def echo(request: IncomingStream) -> None:
    if request.target != "echo":
        request.reject(f"no such target {request.target!r}")
        return
    stream = request.accept()
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


async def connected_pair(
    nursery: trio.Nursery,
    handler: Callable[[IncomingStream], Any] | None = echo,
    *,
    timings: TunnelTimings | None = None,
    config: MuxConfig | None = None,
) -> tuple[TunnelConnection, TunnelConnection]:
    a, b = trio.testing.memory_stream_pair()
    dialer = TunnelConnection(a, Connection("dialer", config), timings=timings, name="dialer")
    listener = TunnelConnection(
        b,
        Connection("listener", config),
        handle_stream=handler,
        timings=timings,
        name="listener",
    )
    await nursery.start(dialer.run)
    await nursery.start(listener.run)
    return dialer, listener


async def test_mux_streams_behave_like_half_closeable_trio_streams(nursery: trio.Nursery) -> None:
    async def maker() -> tuple[MuxStream, MuxStream]:
        accepted: trio.MemorySendChannel[MuxStream]
        accepted, incoming = trio.open_memory_channel[MuxStream](1)

        async def keep(request: IncomingStream) -> None:
            await accepted.send(request.accept())
            await trio.sleep_forever()

        dialer, _ = await connected_pair(nursery, keep)
        ours = await dialer.open_stream("anything")
        return ours, await incoming.receive()

    await trio.testing.check_half_closeable_stream(maker, None)


async def test_echo_round_trip_of_a_large_transfer(nursery: trio.Nursery) -> None:
    dialer, _ = await connected_pair(nursery)
    stream = await dialer.open_stream("echo")
    payload = bytes(range(256)) * 40_000  # 10 MB, more than every window

    async def send() -> None:
        await stream.send_all(payload)
        await stream.send_eof()

    received = bytearray()
    async with trio.open_nursery() as inner:
        inner.start_soon(send)
        while data := await stream.receive_some():
            received += data
    assert bytes(received) == payload


async def test_refused_target_names_the_reason(nursery: trio.Nursery) -> None:
    dialer, _ = await connected_pair(nursery)
    with pytest.raises(StreamRefused, match="no such target 'nowhere'"):
        await dialer.open_stream("nowhere")


async def test_slow_reader_holds_the_sender_back_instead_of_growing_memory(
    nursery: trio.Nursery,
) -> None:
    config = MuxConfig(stream_window=256 * 1024, connection_window=1024 * 1024)
    got: list[MuxStream] = []

    async def hold(request: IncomingStream) -> None:
        got.append(request.accept())
        await trio.sleep_forever()

    dialer, _ = await connected_pair(nursery, hold, config=config)
    stream = await dialer.open_stream("sink")
    sent = 0
    chunk = b"x" * 65536
    with trio.move_on_after(2):
        while True:
            await stream.send_all(chunk)
            sent += len(chunk)
    # the sender stopped at the stream window: the rest waits in the sender, not in memory
    assert sent <= 256 * 1024 + len(chunk)
    assert got[0]._buffered <= 256 * 1024
    # once the reader consumes, the sender can go on
    await got[0].receive_some()
    with trio.fail_after(2):
        await stream.send_all(chunk)


async def test_a_tunnel_counts_its_streams_and_drains_once_this_side_goes_away(
    nursery: trio.Nursery,
) -> None:
    dialer, _listener = await connected_pair(nursery)
    stream = await dialer.open_stream("echo")
    assert dialer.open_streams == 1
    assert not dialer.draining
    await dialer.goaway("moving")
    assert dialer.draining
    await stream.aclose()
    with trio.fail_after(5):
        await dialer.wait_streams_at_most(0)
    assert dialer.open_streams == 0


async def test_dead_peer_is_detected_by_missing_pongs(autojump_clock: Any) -> None:
    timings = TunnelTimings(ping_interval=5, dead_after=15)
    a, b = trio.testing.memory_stream_pair()
    conn = TunnelConnection(a, Connection("dialer"), timings=timings)
    # b is never read: like a half-open TCP connection, nothing errors, nothing answers
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        with trio.fail_after(30):
            await conn.wait_closed()
    assert conn.closed_reason is not None
    assert "did not answer" in conn.closed_reason
    del b


async def test_ping_measures_round_trip_time(autojump_clock: Any, nursery: trio.Nursery) -> None:
    dialer, _ = await connected_pair(nursery, timings=TunnelTimings(ping_interval=1))
    await trio.sleep(3)
    assert dialer.rtt is not None and dialer.rtt >= 0


async def test_a_peer_heard_from_within_the_ping_interval_is_not_pinged(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    # the dialer talks every 2 s (as an agent heartbeats), so the listener hears it and has
    # no reason to ping it; the dialer's answers prove the listener alive to it as well
    timings = TunnelTimings(ping_interval=5, dead_after=15)
    dialer, listener = await connected_pair(nursery, timings=timings)
    stream = await dialer.open_stream("echo")
    for _ in range(20):
        await stream.send_all(b"beat")
        assert await stream.receive_some() == b"beat"
        await trio.sleep(2)
    assert listener.rtt is None and dialer.rtt is None  # no PING went either way
    assert not listener.closed and not dialer.closed
    # once it falls silent, it is pinged again, and answers
    await trio.sleep(6)
    assert listener.rtt is not None


async def test_peer_vanishing_breaks_open_streams_with_a_clear_error(
    nursery: trio.Nursery,
) -> None:
    dialer, listener = await connected_pair(nursery)
    stream = await dialer.open_stream("echo")
    await listener.transport.aclose()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError, match="tunnel closed"):
        while True:
            await stream.receive_some()


async def test_a_peer_that_pings_and_never_reads_is_held_back_then_sent_away(
    autojump_clock: Any,
) -> None:
    # lockstep: a send returns only once the other side read it, so a peer that reads
    # nothing blocks the tunnel's writer at once, as a full TCP window would
    ours, flooder = trio.testing.lockstep_stream_pair()
    timings = TunnelTimings(ping_interval=5, dead_after=15)
    conn = TunnelConnection(ours, Connection("listener"), timings=timings, name="root")
    ping = fr.frame(FrameType.PING, 0, b"p" * 8)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        await flooder.send_all(fr.encode_hello(256 * 1024, 16 * 1024 * 1024))
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await flooder.send_all(ping * 1000)
                sent += 1000

    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        nursery.start_soon(flood)
        with trio.fail_after(60):
            await conn.wait_closed()
        nursery.cancel_scope.cancel()
    # the reader stopped once the PONGs it owed passed the bound: the flood stalled there
    assert sent * len(ping) <= (REPLY_FLOOD_FACTOR + 1) * MuxConfig().max_reply_backlog
    assert conn.mux.statistics().pending_output <= len(ping) * 1000
    assert conn.closed_reason is not None
    assert "did not read the replies to its own requests for 15s" in conn.closed_reason
    terminated = conn.mux.terminated
    assert terminated is not None and terminated.error_code is ErrorCode.ENHANCE_YOUR_CALM


@pytest.mark.parametrize(
    ("version", "said"),
    [(None, "no TLS version this side can tell"), ("TLSv1.2", "TLSv1.2")],
)
async def test_a_transport_that_cannot_prove_tls_1_3_carries_no_tunnel(
    autojump_clock: Any,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    version: str | None,
    said: str,
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    async def audit(event: str, fields: Any) -> None:
        events.append((event, dict(fields)))

    server = TunnelServer(
        proxy_id="p1",
        cluster="root",
        authenticate=lambda stream: leaf_identity(),
        proxies=lambda: [ProxyInfo("p1")],
        audit=audit,
    )
    ours, theirs = memory_tls_stream_pair(version)
    with trio.fail_after(5):
        await server.handle(theirs)  # returns at once: refused
    assert not server.is_online("leaf")
    assert f"it negotiated {said}, tunnels need TLS 1.3" in caplog.text
    assert events == [
        (
            "tunnel.refused",
            {
                "peer": "unknown peer",
                "agent_cluster": "leaf",
                "agent": "leaf-proxy",
                "kind": "proxy",
                "reason": f"it negotiated {said}, tunnels need TLS 1.3",
            },
        )
    ]
    del ours


async def test_a_tunnel_is_closed_when_its_certificate_expires(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    closed = trio.Event()
    events: list[dict[str, Any]] = []

    async def audit(event: str, fields: Any) -> None:
        if event == "tunnel.closed":
            events.append(dict(fields))
            closed.set()

    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    agent = attrs.evolve(leaf_identity(), expires=expires)
    network = FakeNetwork(nursery)
    p1 = network.add("p1", audit=audit)
    p1._authenticate = lambda stream: agent
    pool = pool_for(network)
    await nursery.start(pool.run)
    with trio.fail_after(20):
        await p1.wait_online("leaf")
    opened = trio.current_time()
    with trio.fail_after(40):
        await closed.wait()
    assert trio.current_time() - opened == pytest.approx(30, abs=1)
    [fields] = events
    assert fields["reason"].startswith("the certificate of this tunnel expired at")
    assert fields["agent_cluster"] == "leaf"


# --- server and agent pool ------------------------------------------------------------------


class FakeNetwork:
    """Proxies reachable through one 'load balancer' address, over memory streams."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.servers: dict[str, TunnelServer] = {}
        self.down: set[str] = set()
        self.order: list[str] = []
        self.turn = 0
        self.dials = 0
        self.failures_left = 0
        #: the certificate the agent's end presents (DER), as a node's tunnel does
        self.peer_cert: bytes | None = None

    def add(self, proxy_id: str, **kwargs: Any) -> TunnelServer:
        server = TunnelServer(
            proxy_id=proxy_id,
            cluster="root",
            authenticate=lambda stream: leaf_identity(),
            proxies=lambda: [ProxyInfo(pid) for pid in self.servers if pid not in self.down],
            **kwargs,
        )
        self.servers[proxy_id] = server
        self.order.append(proxy_id)
        return server

    async def dial(self, addr: str) -> trio.abc.Stream:
        self.dials += 1
        if self.failures_left:
            self.failures_left -= 1
            raise OSError("connection refused")
        up = [pid for pid in self.order if pid not in self.down]
        if not up:
            raise OSError("connection refused")
        pid = up[self.turn % len(up)]
        self.turn += 1
        ours, theirs = memory_tls_stream_pair()
        if self.peer_cert is not None:
            theirs = PresentingStream(theirs, "TLSv1.3", self.peer_cert)
        self.nursery.start_soon(self.servers[pid].handle, theirs)
        return ours


class PresentingStream(MemoryTLSStream):
    """The proxy's end of a memory tunnel whose agent presented ``cert``."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, version: str, cert: bytes) -> None:
        super().__init__(stream, version)
        self._cert = cert

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self._cert


def pool_for(network: FakeNetwork, **kwargs: Any) -> AgentPool:
    return AgentPool(
        cluster="leaf",
        tunnel_addr="lb:443",
        dial=network.dial,
        handle_stream=echo,
        backoff=kwargs.pop("backoff", Backoff(initial=1, maximum=8)),
        rng=random.Random(1),
        **kwargs,
    )


async def test_agent_keeps_a_tunnel_to_every_proxy_behind_a_load_balancer(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    network = FakeNetwork(nursery)
    p1, p2 = network.add("p1"), network.add("p2")
    network.turn = 0
    pool = pool_for(network)
    await nursery.start(pool.run)
    with trio.fail_after(30):
        await pool.wait_connected(2)
        await p1.wait_online("leaf")
        await p2.wait_online("leaf")
    assert pool.connected_proxies() == ["p1", "p2"]
    for server in (p1, p2):
        stream = await server.dial("leaf", "echo")
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"


@attrs.define
class MovingTrust:
    """A proxy's trust whose revision the test moves."""

    revision: str = "r1"

    def body(self) -> bytes:
        return b'{"revision": "%s"}' % self.revision.encode()


async def test_a_tunnel_node_is_told_of_every_trust_move_without_waiting_for_a_heartbeat(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    """The proxy pushes each new revision to a node waiting between heartbeats; the control
    loop's wait stays interruptible after the first move (its cancel scope is spent then)."""
    node = attrs.evolve(leaf_identity("root"), username="node-1", kind="node")
    trust = MovingTrust()
    network = FakeNetwork(nursery)
    p1 = network.add("p1", trust=trust, keep_alive=KeepAlive(interval=30))
    p1._authenticate = lambda stream: node
    pool = pool_for(network)
    await nursery.start(pool.run)
    with trio.fail_after(60):
        await pool.wait_follows_trust()
        await pool.wait_trust(None)
    assert pool.trust_revision() == "r1"
    for revision in ("r2", "r3", "r4"):
        await trio.sleep(7)  # between two heartbeats
        seen = pool.trust_revision()
        trust.revision = revision
        moved = trio.current_time()
        p1.trust_moved()
        with trio.fail_after(60):
            await pool.wait_trust(seen)
        assert pool.trust_revision() == revision
        assert trio.current_time() - moved < 1  # pushed, not named by the next heartbeat


async def test_serving_side_distinguishes_offline_cluster_from_refused_target(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    network = FakeNetwork(nursery)
    p1 = network.add("p1")
    with pytest.raises(ClusterOffline, match="cluster 'leaf' is offline"):
        await p1.dial("leaf", "echo")
    pool = pool_for(network)
    await nursery.start(pool.run)
    with trio.fail_after(30):
        await p1.wait_online("leaf")
    with pytest.raises(TargetRefused, match="no such target 'secret'"):
        await p1.dial("leaf", "secret")


async def test_agent_side_cannot_open_streams_into_the_serving_side(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    network = FakeNetwork(nursery)
    network.add("p1")
    pool = pool_for(network)
    await nursery.start(pool.run)
    with trio.fail_after(30):
        await pool.wait_connected(1)
    tunnel = next(iter(pool._tunnels.values()))
    with pytest.raises(StreamRefused, match="does not accept streams"):
        await tunnel.conn.open_stream("127.0.0.1:22")


async def test_agent_reconnects_with_capped_exponential_backoff(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    network = FakeNetwork(nursery)
    network.add("p1")
    network.failures_left = 6
    pool = pool_for(network, backoff=Backoff(initial=1, maximum=8, jitter=0))
    started = trio.current_time()
    await nursery.start(pool.run)
    with trio.fail_after(120):
        await pool.wait_connected(1)
    # six failures: waits of 1, 2, 4, 8, 8, 8 seconds (capped at 8)
    assert trio.current_time() - started == pytest.approx(31, abs=0.5)
    assert network.dials == 7
    assert pool.last_error is None


def test_backoff_jitter_spreads_delays_below_the_cap() -> None:
    delays = Backoff(initial=1, maximum=10, jitter=0.5).delays(random.Random(7))
    values = [next(delays) for _ in range(12)]
    assert all(0 < v <= 10 for v in values)
    assert values[-1] >= 5  # capped at 10, jittered down by at most half
    assert len(set(values)) == len(values)


async def test_goaway_makes_the_agent_move_to_another_proxy_at_once(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    network = FakeNetwork(nursery)
    p1, p2 = network.add("p1"), network.add("p2")
    pool = pool_for(network)
    await nursery.start(pool.run)
    with trio.fail_after(30):
        await pool.wait_connected(2)
    network.down.add("p1")
    before = trio.current_time()
    await p1.goaway_all("upgrading")
    with trio.fail_after(5):
        await p1.wait_offline("leaf")
    assert trio.current_time() - before < 5
    stream = await p2.dial("leaf", "echo")
    await stream.send_all(b"still here")
    assert await stream.receive_some() == b"still here"


async def test_heartbeats_reach_storage_in_batches_not_one_write_each(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    written: list[list[HeartbeatRecord]] = []

    async def write(batch: Any) -> None:
        written.append(list(batch))

    recorder = HeartbeatRecorder(write, flush_interval=10)
    await nursery.start(recorder.run)
    network = FakeNetwork(nursery)
    p1 = network.add("p1", recorder=recorder, keep_alive=KeepAlive(1))
    pools = []
    for _ in range(20):
        pool = pool_for(network)
        pools.append(pool)
        await nursery.start(pool.run)
    with trio.fail_after(30):
        for pool in pools:
            await pool.wait_connected(1)
    # a tunnel that comes up is written at once (tetherctl get rc must say online now),
    # long before the batch interval
    await trio.sleep(0.1)
    assert written and all(r.status == {"connected": True} for r in written[0])
    assert trio.current_time() < 10
    connected_writes, connected_records = recorder.writes, recorder.recorded
    await trio.sleep(31)
    # then 20 tunnels x ~30 heartbeats each, but a handful of writes
    assert recorder.recorded - connected_records >= 20 * 25
    assert 2 <= recorder.writes - connected_writes <= 5
    assert all(record.cluster == "leaf" for batch in written for record in batch)
    assert p1.is_online("leaf")


async def test_an_idle_tunnel_sends_one_heartbeat_round_trip_per_interval_and_no_pings(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    # what a root serving a thousand leaves pays for each: with the default timings, the
    # heartbeats and their answers are all an idle tunnel carries, one each way per interval
    written: list[HeartbeatRecord] = []

    async def write(batch: Any) -> None:
        written.extend(batch)

    recorder = HeartbeatRecorder(write, flush_interval=1)
    await nursery.start(recorder.run)
    network = FakeNetwork(nursery)
    p1 = network.add("p1", recorder=recorder)
    assert p1.heartbeat_interval == HEARTBEAT_INTERVAL
    pool = pool_for(network)
    await nursery.start(pool.run)
    with trio.fail_after(30):
        await p1.wait_online("leaf")
    [record] = p1.clusters()["leaf"]
    recorded = recorder.recorded
    await trio.sleep(20 * HEARTBEAT_INTERVAL)
    assert 19 <= recorder.recorded - recorded <= 21
    assert record.conn.rtt is None  # the proxy never had to PING the leaf
    assert not record.conn.closed and network.dials == 1
    assert TunnelTimings().ping_interval > HEARTBEAT_INTERVAL
    assert TunnelTimings().dead_after == HEARTBEATS_MISSED * HEARTBEAT_INTERVAL


async def test_a_heartbeat_answered_after_the_agent_stopped_waiting_keeps_the_tunnel(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    # a root starved of CPU answers a heartbeat later than dead_after: the agent has moved on
    # to reading pushes by then, and must take the late ack as an answer, not as a protocol
    # violation that closes the tunnel (each reconnection's handshake would starve the root
    # further)
    # the agent adopts the keep-alive the hello names: 5 s x 3 makes its dead_after 15 s
    interval, count = 5.0, 3
    timings = TunnelTimings(ping_interval=interval, dead_after=interval * count)
    heartbeats: list[float] = []
    tunnels: list[TunnelConnection] = []

    async def control(request: IncomingStream) -> None:
        channel = ControlChannel(request.accept())
        hello = Hello(
            proxy_id="p1",
            cluster="root",
            proxies=(ProxyInfo("p1"),),
            heartbeat_interval=interval,
            keep_alive_count_max=count,
        )
        await channel.send(hello_message(hello))
        while (message := await channel.receive()) is not None:
            assert message["type"] == "heartbeat"
            heartbeats.append(trio.current_time())
            if len(heartbeats) == 1:
                await trio.sleep(timings.dead_after + 2)  # the agent stopped waiting at 15 s
            await channel.send({"type": "ack", "proxies": [ProxyInfo("p1").to_json()]})

    async def slow_proxy(stream: trio.abc.Stream) -> None:
        conn = TunnelConnection(
            stream, Connection("listener"), handle_stream=control, timings=timings, name="slow"
        )
        tunnels.append(conn)
        async with trio.open_nursery() as inner:
            await inner.start(conn.run)
            await conn.wait_closed()

    async def dial(addr: str) -> trio.abc.Stream:
        ours, theirs = memory_tls_stream_pair()
        nursery.start_soon(slow_proxy, theirs)
        return ours

    pool = AgentPool(
        cluster="leaf",
        tunnel_addr="lb:443",
        dial=dial,
        handle_stream=echo,
        timings=timings,
        backoff=Backoff(initial=1, maximum=8),
        rng=random.Random(1),
    )
    await nursery.start(pool.run)
    with trio.fail_after(30):
        await pool.wait_connected(1)
    started = trio.current_time()
    await trio.sleep(10 * interval)
    assert not tunnels[0].closed, tunnels[0].closed_reason
    assert len(tunnels) == 1  # never redialled
    assert pool.connected_proxies() == ["p1"]
    # the late answer came at 17 s, the next heartbeat at the end of the interval after the
    # one the agent stopped waiting for, and every one since on time, on the same tunnel
    assert heartbeats[0] <= started + 1
    assert heartbeats[1] - heartbeats[0] == pytest.approx(timings.dead_after + interval, abs=1)
    assert len(heartbeats) >= 5


async def test_an_agent_that_renews_moves_to_new_tunnels_and_running_streams_finish(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    network = FakeNetwork(nursery)
    p1 = network.add("p1")
    pool = pool_for(network)
    await nursery.start(pool.run)
    with trio.fail_after(30):
        await p1.wait_online("leaf")
    [old] = p1.clusters()["leaf"]
    running = await p1.dial("leaf", "echo")
    await running.send_all(b"before")
    assert await running.receive_some() == b"before"

    pool.replace_tunnels("the agent renewed its certificate")
    with trio.fail_after(30):
        await old.conn.wait_draining_or_closed()
    [new] = p1.clusters()["leaf"]
    assert new is not old and network.dials == 2
    assert not old.conn.closed  # a stream runs on it
    await running.send_all(b"in flight")
    assert await running.receive_some() == b"in flight"
    fresh = await p1.dial("leaf", "echo")
    assert fresh.conn is new.conn
    await running.send_eof()
    assert await running.receive_some() == b""
    await running.aclose()
    with trio.fail_after(30):
        await old.conn.wait_closed()  # closed by the agent once its streams were done
    await fresh.send_all(b"after")
    assert await fresh.receive_some() == b"after"
    assert pool.connected_proxies() == ["p1"]


async def test_a_node_whose_carrying_tunnel_closes_sends_its_entries_through_another_at_once(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    # a node holds a tunnel to each of two proxies; its entries ride the first's heartbeats.
    # When that tunnel closes, that proxy has auth remove them, and the node sends them
    # through its other tunnel at once, not at that tunnel's next heartbeat a minute later
    relayed: dict[str, list[InventoryReport]] = {"p1": [], "p2": []}

    def writer(proxy: str) -> Callable[[Any], Any]:
        async def write(batch: Any) -> list[str | None]:
            relayed[proxy].extend(batch)
            return [None] * len(batch)

        return write

    network = FakeNetwork(nursery)
    network.peer_cert = b"the node's certificate"
    node = attrs.evolve(leaf_identity("root"), kind="node", username="n1")
    for proxy in ("p1", "p2"):
        recorder = InventoryRecorder(writer(proxy), flush_interval=1, clock=trio.current_time)
        await nursery.start(recorder.run)
        server = network.add(proxy, inventory=recorder)
        server._authenticate = lambda stream: node
    entry = {"kind": "node", "metadata": {"name": "n1"}}
    pool = AgentPool(
        cluster="root",
        tunnel_addr="lb:443",
        dial=network.dial,
        handle_stream=echo,
        backoff=Backoff(initial=1, maximum=8),
        rng=random.Random(1),
        inventory=lambda: {"ttl": pool.keep_alive().entry_ttl, "entries": [entry]},
    )
    await nursery.start(pool.run)
    with trio.fail_after(30):
        await pool.wait_connected(2)
    await trio.sleep(5)
    assert pool.keep_alive().interval == HEARTBEAT_INTERVAL
    assert [r.removed_relayed_ago for r in relayed["p1"]] == [None]
    assert relayed["p1"][0].cert == b"the node's certificate"
    assert relayed["p2"] == []  # one tunnel carries them
    closed_at = trio.current_time()
    await network.servers["p1"].disconnect("root", "a network fault")
    with trio.fail_after(HEARTBEAT_INTERVAL):
        while not relayed["p2"]:  # noqa: ASYNC110
            await trio.sleep(0.1)
    assert trio.current_time() - closed_at < 5  # of the virtual clock: no heartbeat waited for
    removal = relayed["p1"][1]
    assert removal.removed_relayed_ago == pytest.approx(5, abs=1.5)
    assert removal.entries == (entry,)


async def test_a_proxy_shutting_down_leaves_its_nodes_entries_listed(
    autojump_clock: Any, nursery: trio.Nursery
) -> None:
    # its tunnels close because it goes, not because its nodes did: they move to another
    # proxy, and their entries stay listed meanwhile
    relayed: list[InventoryReport] = []

    async def write(batch: Any) -> list[str | None]:
        relayed.extend(batch)
        return [None] * len(batch)

    network = FakeNetwork(nursery)
    network.peer_cert = b"the node's certificate"
    recorder = InventoryRecorder(write, flush_interval=1, clock=trio.current_time)
    await nursery.start(recorder.run)
    server = network.add("p1", inventory=recorder)
    server._authenticate = lambda stream: attrs.evolve(
        leaf_identity("root"), kind="node", username="n1"
    )
    entry = {"kind": "node", "metadata": {"name": "n1"}}
    pool = AgentPool(
        cluster="root",
        tunnel_addr="lb:443",
        dial=network.dial,
        handle_stream=echo,
        backoff=Backoff(initial=1, maximum=8),
        rng=random.Random(1),
        inventory=lambda: {"ttl": pool.keep_alive().entry_ttl, "entries": [entry]},
    )
    await nursery.start(pool.run)
    with trio.fail_after(30):
        await pool.wait_connected(1)
    await trio.sleep(5)
    [record] = server.clusters()["root"]
    await server.goaway_all("proxy shutting down")
    with trio.fail_after(30):
        await record.conn.wait_closed()
    await trio.sleep(5)
    assert relayed and all(r.removed_relayed_ago is None for r in relayed)


async def _close_with_a_peer_hanging_up_on_the_goaway(reason: str) -> TunnelConnection:
    """A tunnel closed with ``reason`` by this side, whose peer hangs up the moment the
    GOAWAY reaches it, while the close still waits for its flush."""
    a, b = trio.testing.memory_stream_pair()
    conn = TunnelConnection(a, Connection("listener"), name="closing")
    closing = trio.Event()

    async def hang_up_as_it_arrives() -> None:
        if closing.is_set():  # the GOAWAY is in: the peer reads it and hangs up at once
            await b.aclose()

    a.send_stream.send_all_hook = hang_up_as_it_arrives
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        await trio.testing.wait_all_tasks_blocked()
        closing.set()
        await conn.aclose(reason)
        await conn.wait_closed()
    return conn


async def test_a_close_keeps_its_reason_when_the_peer_hangs_up_on_its_goaway() -> None:
    # the proxy closes a tunnel whose certificate expired, saying why in its GOAWAY; an agent
    # that hangs up the moment it reads it must not turn the reason audited into "terminated
    # by peer". Which task trio runs first varies: twenty closes make every order happen
    for _ in range(20):
        conn = await _close_with_a_peer_hanging_up_on_the_goaway("the certificate expired")
        assert conn.closed_reason == "the certificate expired"
