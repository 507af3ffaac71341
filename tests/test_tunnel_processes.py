"""Reverse tunnels between real processes over real mutual TLS on 127.0.0.1, and their faults.

A root side serves tunnels and exposes a forward listener (the ``ssh -R`` topology); a leaf
agent dials it and lets it reach one echo server. Then the root is killed, stopped, frozen,
doubled, and approached with a certificate from a CA it does not trust.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import signal
import socket
import time
from collections.abc import Iterator

import attrs
import pytest

from tether.testing.tunnel_peer import (
    PeerProcess,
    init_cluster,
    start_agent,
    start_echo,
    start_serve,
)

FAST = ("--ping-interval", "0.5", "--dead-after", "2")


@attrs.define
class Topology:
    root_dir: pathlib.Path
    leaf_dir: pathlib.Path
    root_ca: pathlib.Path
    leaf_ca: pathlib.Path
    echo_addr: str
    processes: list[PeerProcess]

    def serve(self, *args: str, proxy_id: str = "proxy-1") -> PeerProcess:
        peer = start_serve(
            self.root_dir,
            self.leaf_ca,
            "--forward",
            f"leaf={self.echo_addr}",
            *FAST,
            *args,
            proxy_id=proxy_id,
        )
        self.processes.append(peer)
        return peer

    def agent(self, tunnel_addr: str, *args: str, wait: bool = True) -> PeerProcess:
        peer = start_agent(
            self.leaf_dir,
            self.root_ca,
            tunnel_addr,
            "--allow",
            self.echo_addr,
            *FAST,
            *args,
            wait=wait,
        )
        self.processes.append(peer)
        return peer


@pytest.fixture
def topology(tmp_path: pathlib.Path) -> Iterator[Topology]:
    root_ca = init_cluster(tmp_path / "root", "root")
    leaf_ca = init_cluster(tmp_path / "leaf", "leaf")
    echo = start_echo(tmp_path / "echo")
    topo = Topology(
        tmp_path / "root", tmp_path / "leaf", root_ca, leaf_ca, echo.info()["addr"], [echo]
    )
    try:
        yield topo
    finally:
        for peer in reversed(topo.processes):
            peer.stop(signal.SIGKILL)


def forward_addr(serve: PeerProcess) -> tuple[str, int]:
    addr = next(iter(serve.info()["forwards"].values()))
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def echo_through(serve: PeerProcess, payload: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(forward_addr(serve), timeout=timeout) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := conn.recv(1 << 16):
            received += chunk
    return bytes(received)


def eventually_echoes(serve: PeerProcess, payload: bytes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if echo_through(serve, payload, timeout=5) == payload:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"no echo through {serve.info()} in {timeout}s: {last}\n{serve.log()}")


def test_forwarded_connection_crosses_a_mutually_authenticated_tls_tunnel(
    topology: Topology,
) -> None:
    root = topology.serve()
    topology.agent(root.info()["tunnel_addr"])
    payload = bytes(range(256)) * 8192  # 2 MiB
    assert echo_through(root, payload) == payload
    assert "tunnel 1 from cluster leaf" in root.log()


def test_agent_reconnects_after_the_root_proxy_is_killed(topology: Topology) -> None:
    root = topology.serve()
    tunnel_addr = root.info()["tunnel_addr"]
    port = tunnel_addr.rsplit(":", 1)[1]
    agent = topology.agent(tunnel_addr)

    running = socket.create_connection(forward_addr(root), timeout=10)
    running.sendall(b"before")
    assert running.recv(16) == b"before"
    root.stop(signal.SIGKILL)
    # the open stream fails clearly: the client's connection is closed, not left hanging
    running.settimeout(10)
    with contextlib.suppress(ConnectionResetError):
        assert running.recv(16) == b""
    running.close()
    agent.wait_for(lambda info: info.get("connected") == [], timeout=10)

    again = topology.serve("--port", port)
    agent.wait_for(lambda info: info.get("connected") == ["proxy-1"], timeout=20)
    eventually_echoes(again, b"after restart")


def test_traffic_continues_on_the_other_root_proxy_when_one_stops(topology: Topology) -> None:
    first = topology.serve(proxy_id="proxy-1")
    first_addr = first.info()["tunnel_addr"]
    second = topology.serve("--peer-proxy", f"proxy-1={first_addr}", proxy_id="proxy-2")
    second_addr = second.info()["tunnel_addr"]
    first.stop()
    first = topology.serve(
        "--port",
        first_addr.rsplit(":", 1)[1],
        "--peer-proxy",
        f"proxy-2={second_addr}",
        proxy_id="proxy-1",
    )
    agent = topology.agent(first_addr)
    agent.wait_for(lambda info: info.get("connected") == ["proxy-1", "proxy-2"], timeout=20)

    first.stop(signal.SIGTERM)  # graceful: GOAWAY, the agent moves at once
    agent.wait_for(lambda info: info.get("connected") == ["proxy-2"], timeout=10)
    payload = b"still flowing" * 1000
    assert echo_through(second, payload) == payload


def test_half_open_connection_is_detected_by_ping(topology: Topology) -> None:
    root = topology.serve()
    agent = topology.agent(root.info()["tunnel_addr"])
    root.process.send_signal(signal.SIGSTOP)  # alive but silent: nothing errors at TCP level
    try:
        agent.wait_for(lambda info: info.get("connected") == [], timeout=10)
    finally:
        root.process.send_signal(signal.SIGCONT)
    agent.wait_for(lambda info: info.get("connected") == ["proxy-1"], timeout=20)
    eventually_echoes(root, b"back again")


def test_agent_with_a_certificate_from_an_unknown_ca_is_refused_and_others_unaffected(
    topology: Topology, tmp_path: pathlib.Path
) -> None:
    root = topology.serve()
    tunnel_addr = root.info()["tunnel_addr"]
    topology.agent(tunnel_addr)

    init_cluster(tmp_path / "intruder", "leaf")  # same name, different CA
    intruder = start_agent(tmp_path / "intruder", topology.root_ca, tunnel_addr, *FAST, wait=False)
    topology.processes.append(intruder)
    deadline = time.monotonic() + 10
    while "TLS handshake" not in root.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "TLS handshake" in root.log()
    assert intruder.info().get("connected") in (None, [])
    payload = b"legitimate traffic"
    assert echo_through(root, payload) == payload


def test_root_cannot_reach_targets_the_leaf_did_not_allow(topology: Topology) -> None:
    root = start_serve(topology.root_dir, topology.leaf_ca, "--forward", "leaf=127.0.0.1:22", *FAST)
    topology.processes.append(root)
    agent = topology.agent(root.info()["tunnel_addr"])
    with socket.create_connection(forward_addr(root), timeout=10) as conn:
        conn.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            assert conn.recv(16) == b""
    assert "not in this cluster's inventory" in agent.log()


def wait_for_log(peer: PeerProcess, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in peer.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert text in peer.log(), peer.log()


def test_a_user_certificate_of_a_trusted_cluster_cannot_open_a_tunnel(
    topology: Topology, tmp_path: pathlib.Path
) -> None:
    root = topology.serve()
    tunnel_addr = root.info()["tunnel_addr"]
    topology.agent(tunnel_addr)
    impostor_dir = tmp_path / "impostor"
    impostor_dir.mkdir()
    # the leaf's own CA, but a user's certificate: trusted signature, wrong kind of identity
    (impostor_dir / "cluster.json").write_text((topology.leaf_dir / "cluster.json").read_text())
    shutil.copytree(topology.leaf_dir / "keys", impostor_dir / "keys")
    impostor = start_agent(
        impostor_dir, topology.root_ca, tunnel_addr, "--kind", "user", *FAST, wait=False
    )
    topology.processes.append(impostor)
    # refused by the proxy's own check: of another cluster, only its proxies may dial in
    wait_for_log(root, "user 'leaf-agent' of cluster 'leaf' may not open a tunnel here")
    assert impostor.info().get("connected") in (None, [])
    assert echo_through(root, b"others unaffected") == b"others unaffected"


def test_a_tunnel_over_tls_1_2_is_refused(topology: Topology, tmp_path: pathlib.Path) -> None:
    root = topology.serve()
    tunnel_addr = root.info()["tunnel_addr"]
    old = start_agent(
        topology.leaf_dir, topology.root_ca, tunnel_addr, "--tls-version", "1.2", *FAST, wait=False
    )
    topology.processes.append(old)
    wait_for_log(root, "it negotiated TLSv1.2, tunnels need TLS 1.3")
    assert old.info().get("connected") in (None, [])


def test_a_target_that_stops_reading_holds_the_sender_back_with_bounded_memory(
    topology: Topology,
) -> None:
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(1)
    stalled_addr = f"127.0.0.1:{stalled.getsockname()[1]}"
    root = start_serve(
        topology.root_dir, topology.leaf_ca, "--forward", f"leaf={stalled_addr}", *FAST
    )
    topology.processes.append(root)
    agent = start_agent(
        topology.leaf_dir,
        topology.root_ca,
        root.info()["tunnel_addr"],
        "--allow",
        stalled_addr,
        *FAST,
    )
    topology.processes.append(agent)

    def rss(peer: PeerProcess) -> int:
        with open(f"/proc/{peer.process.pid}/statm") as f:
            return int(f.read().split()[1]) * 4096

    before = {"root": rss(root), "leaf": rss(agent)}
    sent = 0
    with socket.create_connection(forward_addr(root), timeout=10) as client:
        held, _ = stalled.accept()  # accepted, never read
        client.settimeout(3)
        chunk = b"x" * (1 << 20)
        with contextlib.suppress(TimeoutError):
            while sent < 2 << 30:
                sent += client.send(chunk)
        held.close()
    stalled.close()
    # windows (4 MiB per stream) plus socket buffers hold the sender back long before 2 GiB
    assert sent < 256 << 20, sent
    for name, peer in (("root", root), ("leaf", agent)):
        grown = rss(peer) - before[name]
        assert grown < 64 << 20, f"{name} grew by {grown} bytes"
