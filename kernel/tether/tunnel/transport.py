"""Drive a :class:`~tether.tunnel.mux.Connection` over a byte stream, with trio.

The mux is sans-IO; this module is its thin driver. One :class:`TunnelConnection` owns three
tasks in its own nursery: a reader that feeds the transport's bytes to the mux and dispatches
the events, a writer that flushes what the mux queued, and a pinger that measures round-trip
time and declares the peer dead when PONGs stop coming (a half-open TCP connection never
errors on its own). Streams are :class:`MuxStream` objects that behave like any
``trio.abc.HalfCloseableStream``, so code written for a socket works over a tunnel; they live
in :mod:`tether.tunnel._streams` and are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from tether.errors import TetherError
from tether.tunnel._errors import ErrorCode, StreamClosedError
from tether.tunnel._events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
    WindowUpdated,
)
from tether.tunnel._state import StreamState
from tether.tunnel._streams import IncomingStream, MuxStream, StreamHandler, Waiter
from tether.tunnel.mux import Connection

__all__ = [
    "HEARTBEATS_MISSED",
    "HEARTBEAT_INTERVAL",
    "NODE_HEARTBEAT_INTERVAL",
    "IncomingStream",
    "KeepAlive",
    "MuxStream",
    "StreamHandler",
    "StreamRefused",
    "TunnelClosed",
    "TunnelConnection",
    "TunnelTimings",
]

log = logging.getLogger(__name__)

#: how much the reader asks the transport for at once: large reads keep per-byte cost low
RECEIVE_SIZE = 256 * 1024
#: how long closing or going away waits for the last frames (GOAWAY) to reach the wire
FLUSH_GRACE = 1.0


class TunnelClosed(TetherError):
    """The tunnel carrying this stream is gone (peer vanished, went away, or was closed)."""


#: How often an agent heartbeats on its tunnel's control stream by default: the cluster's
#: ``auth_service.keep_alive_interval`` (:class:`KeepAlive`), which the serving side names in its
#: hello. Every heartbeat costs the serving side a round trip and a stored record, so a root
#: with 10,000 tunnels serves 10,000 / HEARTBEAT_INTERVAL of them a second (at 10 s, half a
#: core). Teleport's agents heartbeat every 5 minutes (``keep_alive_interval``); anything under
#: the idle timeout of common load balancers (Azure's 4 minutes is the shortest) keeps the
#: connection through them.
HEARTBEAT_INTERVAL = 60.0
#: Heartbeats a tunnel may miss before its peer counts as gone by default: dead to the other
#: end of the tunnel, offline to ``tetherctl get rc`` (as Teleport's ``keep_alive_count_max``
#: and OpenSSH's ``ClientAliveCountMax``, 3).
HEARTBEATS_MISSED = 3
#: How often a node whose entries are published over HTTPS (a node joined to auth directly,
#: with no tunnel) renews them: nothing sees such a node go but its entries' expiry, so it
#: keeps its own short interval. A node in tunnel mode heartbeats at the cluster's keep-alive
#: interval: its proxy removes its entries when its tunnel closes.
NODE_HEARTBEAT_INTERVAL = 10.0
#: the least an entry relayed through a tunnel lives beyond the keep-alive's dead time
#: (``tether.auth.inventory.MIN_PUBLISH_TTL`` too, so that short test timings stay valid)
ENTRY_TTL_MARGIN = 5.0


@attrs.frozen
class KeepAlive:
    """The cluster's keep-alive: how often the agent of every tunnel heartbeats, and how many
    heartbeats it may miss before either end counts it as gone.

    Configured on the auth service (``auth_service.keep_alive_interval`` and
    ``keep_alive_count_max``, as Teleport's ``cluster_networking_config``), learned from auth by
    the cluster's proxies and named by a proxy in every tunnel's hello, so that both ends of a
    tunnel, and auth's offline status, use the same numbers.
    """

    interval: float = HEARTBEAT_INTERVAL
    count_max: int = HEARTBEATS_MISSED

    def __attrs_post_init__(self) -> None:
        if not self.interval > 0 or self.count_max < 1:
            raise ValueError(f"unusable keep-alive: every {self.interval}s, {self.count_max} max")

    @property
    def dead_after(self) -> float:
        """Seconds of silence after which a tunnel's peer is dead (a leaf offline)."""
        return self.interval * self.count_max

    @property
    def entry_ttl(self) -> float:
        """How long the inventory entries a node sends in its heartbeats live: until its
        tunnel is found dead, and a margin (a heartbeat, at least :data:`ENTRY_TTL_MARGIN`),
        so that a live node's entries never expire between heartbeats. A tunnel that closes
        has its node's entries removed at once; this bounds only a proxy that vanished."""
        return self.dead_after + max(self.interval, ENTRY_TTL_MARGIN)

    def timings(self, base: TunnelTimings | None = None) -> TunnelTimings:
        """``base`` (the defaults if None) pinging and giving up at this keep-alive's pace."""
        return attrs.evolve(
            base or TunnelTimings(), ping_interval=1.5 * self.interval, dead_after=self.dead_after
        )


class StreamRefused(TetherError):
    """The other side refused to open the stream; the reason says why (target refused...)."""


@attrs.frozen
class TunnelTimings:
    """How often to ping and when to give up on a silent peer.

    :param ping_interval: seconds a peer may be silent before it is PINGed (the keep-alive of
        a tunnel without heartbeats). Longer than :data:`HEARTBEAT_INTERVAL` by default, so
        that heartbeats and their answers are all an idle tunnel sends.
    :param dead_after: a peer that has not answered for this long is declared dead (by
        default, :data:`HEARTBEATS_MISSED` heartbeats).
    :param backlog_timeout: a peer that leaves the replies it asked for unread this long is
        sent away (:meth:`TunnelConnection.run` stops reading from it meanwhile): not a
        question of liveness, so shorter than ``dead_after``.
    :param open_timeout: how long :meth:`TunnelConnection.open_stream` waits for an answer.
    """

    ping_interval: float = 1.5 * HEARTBEAT_INTERVAL
    dead_after: float = HEARTBEATS_MISSED * HEARTBEAT_INTERVAL
    backlog_timeout: float = 45.0
    open_timeout: float = 30.0


class TunnelConnection:
    """A mux over one transport stream (TLS in production, memory streams in tests).

    Start it in a nursery the caller owns: ``await nursery.start(conn.run)``.
    ``handle_stream`` is called in the connection's own nursery for every stream the peer
    opens; it must accept or reject it (a handler that returns without answering rejects it).
    """

    def __init__(
        self,
        transport: trio.abc.Stream,
        mux: Connection,
        *,
        handle_stream: StreamHandler | None = None,
        timings: TunnelTimings | None = None,
        name: str = "tunnel",
    ) -> None:
        self.transport = transport
        self.mux = mux
        self.name = name
        self.timings = timings or TunnelTimings()
        self._handle_stream = handle_stream
        self._streams: dict[int, MuxStream] = {}
        self._opening: dict[int, trio.Event] = {}
        self._refusals: dict[int, str] = {}
        self._flush = Waiter()
        self._flushed = Waiter()
        self._stream_gone = Waiter()
        self._writing = False
        self._pings: dict[bytes, float] = {}
        self._last_heard = trio.current_time()
        self._held_back = False  # the reader waits for the peer to read its replies
        self._pinger_sleep = trio.CancelScope()
        self._closed_reason: str | None = None
        #: why this side is closing, once :meth:`aclose` began
        self._closing_reason: str | None = None
        self._going_away = False
        self._done = trio.Event()
        self._draining = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: last measured round-trip time in seconds, or None before the first measure (a
        #: PONG, or a request and its answer the owner timed, such as an agent's heartbeat)
        self.rtt: float | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    @property
    def going_away(self) -> bool:
        """The peer sent GOAWAY: no new streams here; move to another tunnel."""
        return self._going_away

    @property
    def draining(self) -> bool:
        """Either side sent GOAWAY: the tunnel takes no new streams."""
        return self._going_away or self.mux.goaway_sent

    async def wait_draining_or_closed(self) -> None:
        """Return once either side sent GOAWAY or the tunnel closed."""
        await self._draining.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until the connection ends; returns (does not raise) when the peer vanishes."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._reader)
                nursery.start_soon(self._pinger)
                task_status.started()
                await self._done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._finish(self._closed_reason or "tunnel closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.transport)

    async def wait_closed(self) -> None:
        await self._done.wait()

    async def aclose(self, reason: str = "closed by this side") -> None:
        """Close at once: tell the peer why (GOAWAY, flushed for at most a second), break
        every stream, close the transport."""
        if self.closed:
            return
        # a peer that hangs up as it reads the GOAWAY ends the transport while this waits for
        # the flush: that close is this one, and keeps its reason (audited, logged)
        self._closing_reason = reason
        if self.mux.terminated is None:
            self.mux.goaway(reason)
            self._flush_soon()
            await self._wait_flushed()
        self._finish(reason)

    async def _wait_flushed(self) -> None:
        """Give the writer up to :data:`FLUSH_GRACE` seconds to put what is queued on the
        wire (shielded: this runs while shutting down)."""
        with trio.move_on_after(FLUSH_GRACE) as scope:
            scope.shield = True
            while not self.closed and (self._writing or self.mux.pending_output):
                await self._flushed.wait()

    async def goaway(self, reason: str = "going away") -> None:
        """Graceful shutdown: the peer opens no new streams and moves elsewhere; streams that
        are running finish. Close with :meth:`aclose` when they have."""
        if self.mux.terminated is None:
            self.mux.goaway(reason)
            self._draining.set()
            self._flush_soon()
            await self._wait_flushed()
        await trio.lowlevel.checkpoint()

    def _finish(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = self._closing_reason or reason
            log.debug("%s closed: %s", self.name, self._closed_reason)
        for stream in list(self._streams.values()):
            stream._break(f"tunnel closed: {reason}")
        for sid, event in self._opening.items():
            self._refusals.setdefault(sid, f"tunnel closed: {reason}")
            event.set()
        self._done.set()
        self._draining.set()
        self._flush.wake()
        self._flushed.wake()
        self._stream_gone.wake()

    # --- streams -----------------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams open on this tunnel now; cheap, for picking the least busy tunnel."""
        return len(self._streams)

    def statistics(self) -> dict[str, Any]:
        stats = self.mux.statistics()
        return {
            "streams": len(self._streams),
            "bytes_sent": stats.bytes_sent,
            "bytes_received": stats.bytes_received,
            "rtt": self.rtt,
        }

    async def open_stream(
        self, target: str, metadata: Mapping[str, str] | None = None
    ) -> MuxStream:
        """Ask the peer for a stream to ``target``.

        :raises StreamRefused: the peer refused (the reason is its message).
        :raises TunnelClosed: the tunnel is closed or going away.
        """
        if self.closed:
            raise TunnelClosed(f"{self.name} is closed: {self._closed_reason}")
        if self._going_away:
            raise TunnelClosed(f"{self.name} is going away")
        sid = self.mux.open_stream(target, metadata)
        answered = trio.Event()
        self._opening[sid] = answered
        stream = self._register(sid, target, dict(metadata or {}))
        self._flush_soon()
        try:
            with trio.fail_after(self.timings.open_timeout):
                await answered.wait()
        except trio.TooSlowError:
            self._close_stream(stream)
            raise StreamRefused(
                f"{self.name}: no answer to opening {target!r} in {self.timings.open_timeout}s"
            ) from None
        except BaseException:
            self._close_stream(stream)
            raise
        finally:
            self._opening.pop(sid, None)
        refusal = self._refusals.pop(sid, None)
        if refusal is not None:
            self._forget(sid)
            if self.closed:
                raise TunnelClosed(refusal)
            raise StreamRefused(refusal)
        return stream

    def _register(self, sid: int, target: str, metadata: Mapping[str, str]) -> MuxStream:
        stream = MuxStream(self, sid, target, metadata)
        self._streams[sid] = stream
        return stream

    def _forget(self, sid: int) -> MuxStream | None:
        stream = self._streams.pop(sid, None)
        if stream is not None:
            self._stream_gone.wake()
        return stream

    async def wait_streams_at_most(self, count: int) -> None:
        """Return once at most ``count`` streams are open here, or the tunnel closed (a
        tunnel going away is closed once the streams running on it are done)."""
        while len(self._streams) > count and not self.closed:
            await self._stream_gone.wait()

    def _consumed(self, sid: int, count: int) -> None:
        if count and self.mux.terminated is None:
            try:
                self.mux.acknowledge_received_data(sid, count)
            except StreamClosedError:
                return
            self._flush_soon()

    def _close_stream(self, stream: MuxStream) -> None:
        """The application closed ``stream``: behave like closing a TCP socket.

        With nothing unread, our side sends FIN and the peer reads a clean end of stream;
        if the peer then still sends, the stream is reset (TCP's RST on data after close).
        With unread data, or a broken stream, it is reset at once.
        """
        sid = stream.stream_id
        if self.mux.terminated is not None or sid not in self._streams:
            self._forget(sid)
            return
        if self.mux.stream_state(sid) is StreamState.CLOSED:
            self._forget(sid)
            return
        if stream._buffered or stream._broken is not None or sid in self._opening:
            self._reset(stream, "closed by the application with data unread")
            return
        if not stream._sent_eof:
            stream._sent_eof = True
            try:
                self.mux.end_stream(sid)
            except StreamClosedError:
                self._forget(sid)
                return
            self._flush_soon()
        if self.mux.stream_state(sid) is StreamState.CLOSED:
            self._forget(sid)
        # else: kept until the peer's FIN (or reset on its next DATA)

    def _reset(self, stream: MuxStream, reason: str) -> None:
        sid = stream.stream_id
        self._forget(sid)
        # unread bytes still hold connection credit: give it back before forgetting them
        if stream._buffered:
            self._consumed(sid, stream._buffered)
            stream._chunks.clear()
            stream._buffered = 0
        if self.mux.terminated is None and self.mux.stream_state(sid) is not StreamState.CLOSED:
            try:
                self.mux.reset_stream(sid, reason)
            except StreamClosedError:
                return
            self._flush_soon()

    # --- tasks -------------------------------------------------------------------------------

    def _flush_soon(self) -> None:
        if self.mux.pending_output or self.mux.terminated is not None:
            self._flush.wake()

    async def _writer(self) -> None:
        try:
            while not self.closed:
                data = self.mux.data_to_send()
                if data:
                    self._writing = True
                    try:
                        await self.transport.send_all(data)
                    finally:
                        self._writing = False
                        self._flushed.wake()
                else:
                    if self.mux.terminated is not None:
                        self._finish(self.mux.terminated.reason or "connection terminated")
                        return
                    await self._flush.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._finish(f"transport failed while sending: {exc or type(exc).__name__}")

    async def _reader(self) -> None:
        try:
            while not self.closed:
                if self.mux.backlogged:
                    await self._wait_backlog_sent()
                    continue
                data = await self.transport.receive_some(RECEIVE_SIZE)
                self._last_heard = trio.current_time()
                events = self.mux.receive_data(data)
                for event in events:
                    self._dispatch(event)
                self._flush_soon()
                if not data:
                    self._finish("the peer closed the connection")
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._finish(f"transport failed while receiving: {exc or type(exc).__name__}")

    async def _wait_backlog_sent(self) -> None:
        """Read nothing more from a peer while the replies it asked for wait unsent: a peer
        that does not read must not make this side queue. One that keeps them waiting for the
        backlog timeout (or the dead-peer timeout, if shorter) gets GOAWAY and is closed."""
        limit = min(self.timings.backlog_timeout, self.timings.dead_after)
        self._held_back = True
        try:
            with trio.move_on_after(limit):
                while self.mux.backlogged and not self.closed:
                    await self._flushed.wait()
                self._last_heard = trio.current_time()  # it read what was sent: alive
                return
        finally:
            self._held_back = False
        reason = f"the peer did not read the replies to its own requests for {limit:g}s"
        log.warning("%s: %s; closing it", self.name, reason)
        if self.mux.terminated is None:
            self.mux.goaway(reason, ErrorCode.ENHANCE_YOUR_CALM)
            self._flush_soon()
        self._finish(reason)

    def retime(self, timings: TunnelTimings) -> None:
        """Ping and give up at ``timings`` from now on: an agent learns its cluster's keep-alive
        from the hello, after its connection runs."""
        self.timings = timings
        self._pinger_sleep.cancel()

    async def _pinger(self) -> None:
        """PING a peer only once it has been silent for ``ping_interval``: a peer heard from
        meanwhile (its heartbeats, their answers, stream data) proved alive, and a root with
        a thousand leaves saves two wake-ups per tunnel per interval."""
        pinged = trio.current_time()
        while not self.closed:
            # read each time: an agent adopts the keep-alive its proxy names in the hello
            interval = self.timings.ping_interval
            self._pinger_sleep = trio.CancelScope()
            with self._pinger_sleep:
                await trio.sleep_until(max(self._last_heard, pinged) + interval)
            if self._pinger_sleep.cancelled_caught:
                continue  # retimed: sleep to the new deadline
            silent = trio.current_time() - self._last_heard
            if silent < interval:
                continue  # heard from it while asleep
            pinged = trio.current_time()
            # unheard because this side stopped reading: the reader judges that peer itself
            if silent >= self.timings.dead_after and not self._held_back:
                self._finish(f"peer did not answer for {silent:.1f}s (dead or half-open)")
                return
            if self.mux.terminated is None:
                payload = self.mux.ping()
                self._pings[payload] = trio.current_time()
                if len(self._pings) > 16:  # unanswered pings of a silent peer
                    self._pings.pop(next(iter(self._pings)))
                self._flush_soon()

    # --- events ------------------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is None:
                self._consumed(event.stream_id, len(event.data))
            elif stream._closed:
                self._consumed(event.stream_id, len(event.data))
                self._reset(stream, "data sent to a closed stream")
            else:
                stream._deliver(event.data)
        elif isinstance(event, WindowUpdated):
            if event.stream_id == 0:
                for stream in self._streams.values():
                    stream._window_changed()
            else:
                target = self._streams.get(event.stream_id)
                if target is not None:
                    target._window_changed()
        elif isinstance(event, StreamOpened):
            self._incoming(event)
        elif isinstance(event, StreamAccepted):
            waiter = self._opening.get(event.stream_id)
            if waiter is not None:
                waiter.set()
        elif isinstance(event, StreamRejected):
            self._refusals[event.stream_id] = event.reason
            waiter = self._opening.get(event.stream_id)
            if waiter is not None:
                waiter.set()
            else:
                rejected = self._forget(event.stream_id)
                if rejected is not None:
                    rejected._break(f"refused: {event.reason}")
        elif isinstance(event, StreamEnded):
            ended = self._streams.get(event.stream_id)
            if ended is not None:
                ended._end()
                if ended._closed and self.mux.stream_state(ended.stream_id) is StreamState.CLOSED:
                    self._forget(ended.stream_id)
        elif isinstance(event, StreamReset):
            reset = self._forget(event.stream_id)
            if reset is not None:
                reset._break(f"stream reset by peer: {event.reason or 'no reason given'}")
        elif isinstance(event, PongReceived):
            sent = self._pings.pop(event.payload, None)
            if sent is not None:
                self.rtt = trio.current_time() - sent
        elif isinstance(event, GoAwayReceived):
            self._going_away = True
            self._draining.set()
            log.info("%s: peer is going away: %s", self.name, event.reason or "no reason given")
        elif isinstance(event, ConnectionTerminated):
            who = "peer" if event.by_peer else "this side"
            self._finish(f"connection terminated by {who}: {event.reason or event.error_code}")

    def _incoming(self, event: StreamOpened) -> None:
        request = IncomingStream(self, event.stream_id, event.target, event.metadata)
        if self._handle_stream is None or self._nursery is None:
            request.reject("this side accepts no streams")
            return
        self._nursery.start_soon(self._run_handler, request)

    async def _run_handler(self, request: IncomingStream) -> None:
        assert self._handle_stream is not None
        try:
            await self._handle_stream(request)
        except Exception as exc:
            log.exception("%s: handler for %r failed", self.name, request.target)
            if not request.answered and self.mux.terminated is None:
                request.reject(f"handler failed: {type(exc).__name__}")
        else:
            if not request.answered and self.mux.terminated is None:
                request.reject("not accepted")
        finally:
            if request.stream is not None:
                await request.stream.aclose()
