"""Tether-only tunnel figures: stream open latency, memory per idle stream, CPU of idle tunnels.

The serving side runs in this process (so its memory and timings can be read directly) or, for
the CPU figure, as its own ``tunnel_peer serve`` process; leaf agents are always separate
processes, over real mutual TLS on 127.0.0.1.
"""

from __future__ import annotations

import gc
import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import trio

from _benchlib.procs import cpu_seconds
from tether.testing.tunnel_peer import (
    init_cluster,
    load_cluster,
    serve_tunnels,
    start_agent,
    start_agents,
    start_echo,
    start_serve,
)

HOLD = "@hold"


@contextmanager
def _clusters() -> Iterator[tuple[pathlib.Path, pathlib.Path, pathlib.Path, pathlib.Path]]:
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        base = pathlib.Path(tmp)
        root_ca = init_cluster(base / "root", "root")
        leaf_ca = init_cluster(base / "leaf", "leaf")
        yield base / "root", root_ca, base / "leaf", leaf_ca


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _with_leaf(
    fn: Any,
    root_dir: pathlib.Path,
    root_ca: pathlib.Path,
    leaf_dir: pathlib.Path,
    leaf_ca: pathlib.Path,
    *agent_args: str,
) -> Any:
    """Serve tunnels here, start a leaf agent process, and run ``fn(server, agent_pid)`` once
    its tunnel is up."""
    authorities, trusted = load_cluster(root_dir, leaf_ca)
    async with trio.open_nursery() as nursery:
        server, addr = await nursery.start(partial(serve_tunnels, authorities, trusted))
        agent = start_agent(leaf_dir, root_ca, addr, *agent_args, wait=False)
        try:
            with trio.fail_after(30):
                await server.wait_online("leaf")
            return await fn(server, agent.process.pid)
        finally:
            agent.stop()
            nursery.cancel_scope.cancel()


def open_latency_ms(opens: int) -> dict[str, Any]:
    """Median and p99 of ``server.dial`` to a TCP echo target, one tunnel, sequential; and
    the CPU each open cost the serving process and the leaf's agent process.

    The clock stops when ``dial`` returns, which is when the stream is usable: the OPEN went
    over TLS, the leaf connected to the target on loopback and its OPEN_OK came back, so the
    first byte can be sent at once and nothing a user of the stream waits for is left out.
    Closing the stream is not timed, but its work (FIN both ways, the leaf closing the target
    connection) runs meanwhile and is in the CPU figures.
    """
    with _clusters() as (root_dir, root_ca, leaf_dir, leaf_ca):
        echo = start_echo(root_dir.parent / "echo")
        target = echo.info()["addr"]

        async def measure(server: Any, agent_pid: int) -> tuple[list[float], float, float]:
            samples = []
            leaf_cpu = cpu_seconds(agent_pid)
            root_cpu = time.process_time()
            for _ in range(opens):
                started = time.perf_counter()
                stream = await server.dial("leaf", target)
                samples.append(time.perf_counter() - started)
                await stream.aclose()
            root_cpu = time.process_time() - root_cpu
            leaf_cpu = cpu_seconds(agent_pid) - leaf_cpu
            return samples, root_cpu, leaf_cpu

        try:
            samples, root_cpu, leaf_cpu = trio.run(
                _with_leaf, measure, root_dir, root_ca, leaf_dir, leaf_ca, "--allow", target
            )
        finally:
            echo.stop()
    samples.sort()
    return {
        "median": round(statistics.median(samples) * 1000, 3),
        "p99": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3),
        "cpu_us_per_open": {
            "root": round(root_cpu / opens * 1e6),
            "leaf": round(leaf_cpu / opens * 1e6),
        },
    }


def idle_stream_bytes(streams: int) -> int:
    """Growth of this process's resident memory per stream, with ``streams`` idle streams open
    on one tunnel (serving side: mux state, stream objects, bookkeeping)."""
    with _clusters() as (root_dir, root_ca, leaf_dir, leaf_ca):

        async def measure(server: Any, agent_pid: int) -> int:
            warm = [await server.dial("leaf", HOLD) for _ in range(100)]
            for stream in warm:
                await stream.aclose()
            gc.collect()
            before = _rss_bytes()
            held = [await server.dial("leaf", HOLD) for _ in range(streams)]
            gc.collect()
            after = _rss_bytes()
            for stream in held:
                await stream.aclose()
            return (after - before) // streams

        return int(
            trio.run(
                _with_leaf,
                measure,
                root_dir,
                root_ca,
                leaf_dir,
                leaf_ca,
                "--hold-target",
                HOLD,
                "--max-streams",
                str(streams + 200),
            )
        )


def idle_tunnels_cpu_percent(tunnels: int, seconds: float) -> float:
    """CPU of one serving process (% of one core) holding ``tunnels`` idle tunnels that
    heartbeat every 5 s and ping every 15 s, averaged over ``seconds``."""
    with _clusters() as (root_dir, root_ca, leaf_dir, leaf_ca):
        root = start_serve(
            root_dir,
            leaf_ca,
            "--heartbeat-interval",
            "5",
            "--ping-interval",
            "15",
            "--dead-after",
            "45",
        )
        agents = start_agents(
            leaf_dir,
            root_ca,
            root.info()["tunnel_addr"],
            tunnels,
            "--ping-interval",
            "15",
            "--dead-after",
            "45",
        )
        try:
            root.wait_for(lambda info: info.get("tunnels", 0) >= tunnels, timeout=300)
            time.sleep(2)  # let the connection storm settle
            before = cpu_seconds(root.process.pid)
            time.sleep(seconds)
            used = cpu_seconds(root.process.pid) - before
        finally:
            agents.stop()
            root.stop()
    return round(used / seconds * 100, 2)
