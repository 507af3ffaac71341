"""Lightweight tunnel-mode nodes: what a root sees of many nodes, without a tetherd each.

What a root's proxy and auth see of a node in tunnel mode is its join, its tunnel, its trust
watch and its heartbeats; its SSH server is reached only through the tunnel, when a user asks.
So each lightweight node here does exactly those, with the kernel's own code and the calls a
node's agent (:class:`tether.node.agent.NodeAgent`) makes, in its order:

1. the join (:func:`tether.node.join.join_cluster`): the proxy verified with the CA pin, then
   ``POST /webapi/join`` with the node token, the host role ``Node`` (the SSH protocol's) and
   the public halves of a fresh Ed25519 key: a host certificate (SSH and X.509) comes back;
2. an :class:`tether.auth.http_client.AuthClient` to the proxy with that certificate
   (:func:`tether.node.join.host_client_context`): the trust read once over HTTPS;
3. a tunnel: an :class:`tether.tunnel.agent.AgentPool` dialling the proxy with ALPN
   ``tether-tunnel/1`` and the host certificate, accepting only a ``proxy`` certificate; the
   trust then followed through it, as :class:`tether.trust.cache.TrustCache` follows it (read
   on a ``@trust`` stream when the revision the proxy names in its answers moves);
4. its ``node`` resource (the SSH plugin's :data:`tether_ssh.inventory.NODE`, ``use_tunnel``)
   published at start over HTTPS (``PUT /v1/presence``, as the agent checks its first
   heartbeat), then in the tunnel's heartbeats (at the cluster's keep-alive interval, which
   the proxy names in its hello) with the TTL the agent derives from that keep-alive
   (:attr:`tether.tunnel.transport.KeepAlive.entry_ttl`), which the proxy relays to auth in
   batches (or over HTTPS every :data:`tether.node.agent.HEARTBEAT_INTERVAL` if the proxy does
   not relay them), as the agent sends them;
5. renewal of its certificates at two thirds of their lifetime
   (:func:`tether.node.join.keep_renewed`), new tunnels after it.

A lightweight node serves nothing: every stream the proxy opens through its tunnel is refused.
Many nodes run in one process (``python nodes.py --first 1 --count 2500 ...``, a few such
processes per run), never in the harness. Besides the fleet's events (:mod:`_benchlib.fleet`:
``generated``, ``joined`` with the join's seconds, ``failed``, ``connected``), a process
reports ``heartbeats`` every few seconds: nodes that published, heartbeats sent and refused,
the latency of those of the last period, and the first errors.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

if __name__ == "__main__":  # run as a script: find _benchlib as the harnesses do
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _benchlib.fleet import (
    ProcessFleet,
    emit,
    exit_when_parent_goes,
    raise_fd_limit,
    report_tunnels,
)

__all__ = ["NodeFleet", "fleet", "processes_needed"]

HERE = os.path.abspath(__file__)
HEARTBEAT_REPORT_INTERVAL = 2.0  # seconds between heartbeat reports
JOIN_TIMEOUT = 120.0  # a root that slow to answer one node is broken, not slow
#: sockets a node holds: its tunnel, and for a while after its start the HTTPS connection of
#: its first trust read and heartbeat (kept 25 s)
SOCKETS_PER_NODE = 2
#: open files a nodes process needs besides its nodes' sockets
FD_MARGIN = 200


def processes_needed(count: int) -> int:
    """The fewest processes ``count`` nodes fit in, each under this machine's hard limit on
    open files (which a process without CAP_SYS_RESOURCE cannot raise)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 1
    per_process = max(1, (hard - FD_MARGIN) // SOCKETS_PER_NODE)
    return max(1, -(-count // per_process))


class _Heartbeats:
    """The process's heartbeat figures, reported and reset every period."""

    def __init__(self) -> None:
        self.published: set[str] = set()
        #: nodes whose tunnel's heartbeats carry their entry (their proxy relays it)
        self.relayed: set[str] = set()
        self.sent = 0
        self.refused = 0
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    def ok(self, name: str, seconds: float) -> None:
        self.published.add(name)
        self.sent += 1
        self.latencies.append(seconds)

    def failed(self, error: str) -> None:
        self.refused += 1
        self.errors[error] = self.errors.get(error, 0) + 1

    def report(self) -> dict[str, Any]:
        got, self.latencies = sorted(self.latencies), []
        return {
            "nodes_published": len(self.published),
            "nodes_relayed": len(self.relayed),
            "sent": self.sent,
            "refused": self.refused,
            "period_latency_median_s": round(statistics.median(got), 4) if got else None,
            "period_latency_max_s": round(got[-1], 4) if got else None,
            "period_count": len(got),
            "errors": sorted(self.errors, key=self.errors.__getitem__, reverse=True)[:3],
        }


async def run_nodes(args: argparse.Namespace, out: IO[str]) -> None:
    """Join and run the nodes, ``args.concurrency`` joins at a time; runs until the process
    is ended."""
    import trio
    from tether_ssh.inventory import NODE, NodeSpec

    from tether import __version__
    from tether.auth.http_client import AuthClient
    from tether.config import HostPort
    from tether.errors import TetherError
    from tether.node.agent import ENTRY_TTL, HEARTBEAT_INTERVAL
    from tether.node.join import (
        JoinedIdentity,
        host_client_context,
        join_cluster,
        keep_renewed,
        renew_identity,
    )
    from tether.pki import present_certificate
    from tether.resources import resource_to_dict
    from tether.tlsstream import TLSStream
    from tether.token_types import NODE_ROLE
    from tether.tunnel.agent import AgentPool
    from tether.tunnel.server import TUNNEL_ALPN
    from tether.tunnel.transport import IncomingStream

    names = [f"{args.prefix}{i}" for i in range(args.first, args.first + args.count)]
    emit(out, "generated", count=len(names), seconds=0.0)  # each key is made as its node joins
    pools: dict[str, AgentPool] = {}
    limiter = trio.CapacityLimiter(args.concurrency)
    beats = _Heartbeats()
    failures = (TetherError, OSError, trio.TooSlowError)

    async def refuse(request: IncomingStream) -> None:
        request.reject("a benchmark's lightweight node serves nothing")

    async def publish(api: AuthClient, name: str, document: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            await api.publish(document, ENTRY_TTL)
        except failures as exc:  # the agent logs it and tries at the next heartbeat
            beats.failed(f"{type(exc).__name__}: {exc}"[:200])
            return
        beats.ok(name, time.perf_counter() - started)

    async def heartbeat(
        api: AuthClient, pool: AgentPool, name: str, document: dict[str, Any]
    ) -> None:
        while True:
            await trio.sleep(HEARTBEAT_INTERVAL.total_seconds())
            if pool.relays_inventory():
                beats.relayed.add(name)
                continue  # the tunnel's heartbeats carry it
            beats.relayed.discard(name)
            await publish(api, name, document)

    async def follow_trust(api: AuthClient, pool: AgentPool, known: str | None) -> None:
        # what TrustCache.run does over the wire; the snapshots are not the root's cost
        seen = known
        while True:
            if not pool.follows_trust():
                with trio.move_on_after(HEARTBEAT_INTERVAL.total_seconds()):
                    await pool.wait_follows_trust()
                if not pool.follows_trust():  # an older proxy: watch over HTTPS
                    async with contextlib.aclosing(api.watch_trust(seen)) as snapshots:
                        async for _ in snapshots:
                            pass
            await pool.wait_trust(seen)
            if pool.follows_trust():
                moved_to = pool.trust_revision()
                with contextlib.suppress(*failures, trio.BrokenResourceError):
                    await pool.read_trust()
                seen = moved_to

    async def node(name: str, nursery: trio.Nursery) -> None:
        host = str(uuid.uuid4())
        async with limiter:
            started = time.perf_counter()
            try:
                with trio.fail_after(JOIN_TIMEOUT):
                    joined = await join_cluster(
                        args.proxy,
                        args.token,
                        host_id=host,
                        hostname=name,
                        role="node",
                        ca_pin=args.ca_pin,
                        roles=(NODE_ROLE,),
                    )
            except failures as exc:  # the others go on
                emit(out, "failed", node=name, error=f"{type(exc).__name__}: {exc}")
                return
            join_s = time.perf_counter() - started
        emit(out, "joined", node=name, join_s=round(join_s, 4))
        api = AuthClient(f"https://{args.proxy}", host_client_context(joined))
        try:
            first = await api.trust()
        except failures as exc:
            emit(out, "failed", node=name, error=f"trust: {type(exc).__name__}: {exc}")
            await api.aclose()
            return
        tunnel_context = host_client_context(joined, alpn=[TUNNEL_ALPN], peer_kinds=("proxy",))

        async def dial(addr: str) -> trio.abc.Stream:
            target = HostPort.parse(addr)
            return await TLSStream.connect(
                target.connect_host,
                target.port,
                tunnel_context,
                server_hostname=target.connect_host,
            )

        spec = NodeSpec(hostname=name, addr="", use_tunnel=True, version=__version__)
        document = resource_to_dict(NODE.new(host, spec, labels={}))
        pool = AgentPool(
            cluster=joined.identity.cluster,
            tunnel_addr=args.proxy,
            dial=dial,
            handle_stream=refuse,
            # the TTL of the keep-alive the proxy named, as the agent sends it
            inventory=lambda: {"ttl": pool.keep_alive().entry_ttl, "entries": [document]},
        )
        pools[name] = pool
        nursery.start_soon(follow_trust, api, pool, first.get("revision"))
        await nursery.start(pool.run)
        await publish(api, name, document)
        nursery.start_soon(heartbeat, api, pool, name, document)

        async def renew() -> Any:
            renewed: JoinedIdentity = await renew_identity(api, hostname=name)
            await api.present_certificate(renewed.tls_cert, renewed.private_key)
            present_certificate(tunnel_context, renewed.tls_cert, renewed.private_key)
            pool.replace_tunnels("the node renewed its certificate")
            return renewed.tls_cert

        nursery.start_soon(keep_renewed, f"node {host}", joined.tls_cert, renew)

    async def report_heartbeats() -> None:
        while True:
            await trio.sleep(HEARTBEAT_REPORT_INTERVAL)
            emit(out, "heartbeats", **beats.report())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report_tunnels, out, pools)
        nursery.start_soon(report_heartbeats)
        for name in names:
            nursery.start_soon(node, name, nursery)


def _main(argv: list[str]) -> int:
    import trio

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", required=True, help="the cluster's proxy, HOST:PORT")
    parser.add_argument("--ca-pin", required=True, help="the cluster's CA pin")
    parser.add_argument("--token", required=True, help="a node token")
    parser.add_argument("--prefix", default="node", help="node names are PREFIX<index>")
    parser.add_argument("--first", type=int, required=True, help="the first node's index")
    parser.add_argument("--count", type=int, required=True, help="how many nodes")
    parser.add_argument("--concurrency", type=int, default=4, help="joins at a time")
    args = parser.parse_args(argv)
    raise_fd_limit(args.count * SOCKETS_PER_NODE + 100)
    threading.Thread(target=exit_when_parent_goes, daemon=True).start()
    trio.run(run_nodes, args, sys.stdout)
    return 0


# --- the harness's side -----------------------------------------------------------------------


class NodeFleet(ProcessFleet):
    """The lightweight nodes' processes, owned: ``with NodeFleet(...) as fleet:``.

    :param token: a node token (one for every node: a token is valid until it expires).
    :param first: the first node's index (node names are ``PREFIX<index>``).
    :param count: how many nodes, split evenly over ``processes`` processes.
    """

    script = HERE
    default_prefix = "node"

    def heartbeats(self) -> dict[str, Any]:
        """The processes' latest ``heartbeats`` reports, summed (latencies: the worst median)."""
        reports = list(self.snapshot().latest.get("heartbeats", {}).values())
        medians = [r["period_latency_median_s"] for r in reports if r["period_latency_median_s"]]
        return {
            "nodes_published": sum(int(r["nodes_published"]) for r in reports),
            "nodes_relayed": sum(int(r.get("nodes_relayed", 0)) for r in reports),
            "sent": sum(int(r["sent"]) for r in reports),
            "refused": sum(int(r["refused"]) for r in reports),
            "period_latency_median_s_worst": max(medians, default=None),
            "period_latency_max_s": max(
                (r["period_latency_max_s"] for r in reports if r["period_latency_max_s"]),
                default=None,
            ),
            "errors": sorted({e for r in reports for e in r.get("errors", [])})[:5],
        }


@contextlib.contextmanager
def fleet(**kwargs: Any) -> Iterator[NodeFleet]:
    """:class:`NodeFleet` as a function (what the harness looks up, so tests can stub it)."""
    with NodeFleet(**kwargs) as running:
        yield running


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
