"""Run one end of a reverse tunnel as its own process, for tests and benchmarks.

The kernel's tunnel is exercised here exactly as it runs in a proxy (real TLS 1.3 with mutual
authentication, ALPN ``tether-tunnel/1``, the agent pool, the forward listener of the ``ssh
-R`` topology), without the rest of a cluster. Trust is set up by hand, by passing each side
the other's CA certificate file; trusted clusters automate that exchange.

    python -m tether.testing.tunnel_peer init --dir D --cluster NAME
    python -m tether.testing.tunnel_peer serve --dir D --trust-ca LEAF_CA_PEM
        [--forward CLUSTER=HOST:PORT]... [--proxy-id ID] [--peer-proxy ID=HOST:PORT]...
    python -m tether.testing.tunnel_peer agent --dir D --trust-ca ROOT_CA_PEM
        --tunnel-addr HOST:PORT [--allow HOST:PORT]... [--cert PEM --key PEM]

The serving side checks agents exactly as a proxy does (:func:`~tether.proxy.tunnels.
tunnel_authenticator` and :meth:`~tether.tunnel.server.TunnelServer.handle`), so the refusals
tests see are the production ones. An agent presents a certificate of its own cluster's CA,
or, with ``--cert``/``--key``, one issued elsewhere (a joined node's, a user's) to dial a real
cluster's proxy with.

Each running process writes ``D/<command>-<proxy id or cluster>.json`` with its addresses once
it is ready; SIGTERM makes a serving process send GOAWAY to its agents and exit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import pathlib
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import attrs
import trio
from cryptography import x509
from cryptography.x509.oid import NameOID

from tether import pki
from tether.proxy.tunnels import tunnel_authenticator
from tether.testing.cluster import stop_process
from tether.tlsserver import serve_tls
from tether.tlsstream import TLSStream
from tether.tunnel.agent import AgentPool, Backoff
from tether.tunnel.control import ProxyInfo
from tether.tunnel.forward import TargetDialer, serve_forward
from tether.tunnel.mux import MuxConfig
from tether.tunnel.server import TUNNEL_ALPN, TunnelServer
from tether.tunnel.transport import (
    HEARTBEAT_INTERVAL,
    IncomingStream,
    KeepAlive,
    StreamHandler,
    TunnelTimings,
)

__all__ = [
    "PeerProcess",
    "init_cluster",
    "load_cluster",
    "main",
    "serve_tunnels",
    "start_agent",
    "start_agents",
    "start_echo",
    "start_serve",
]

log = logging.getLogger("tether.testing.tunnel_peer")

CERT_TTL = datetime.timedelta(days=1)


def _authorities(directory: pathlib.Path) -> pki.ClusterAuthorities:
    meta = json.loads((directory / "cluster.json").read_text())
    return pki.ClusterAuthorities.load_or_create(directory / "keys", meta["cluster"])


def _proxy_identity(
    authorities: pki.ClusterAuthorities, name: str, kind: str = "proxy"
) -> tuple[x509.Certificate, pki.PrivateKey]:
    key = pki.generate_private_key()
    identity = pki.Identity(
        username=name,
        cluster=authorities.cluster,
        roles=(),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + CERT_TTL,
        kind=kind,
    )
    cert = pki.issue_x509_cert(
        authorities.tls,
        key.public_key(),
        identity,
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
        server=True,
    )
    return cert, key


def _write_info(directory: pathlib.Path, name: str, info: dict[str, Any]) -> None:
    path = directory / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **info}))
    tmp.replace(path)


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


async def _stop_on_signal(server: TunnelServer | None, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            if server is not None:
                await server.goaway_all("tunnel peer stopping")
                await trio.sleep(0.5)
            scope.cancel()
            return


async def serve_tunnels(
    authorities: pki.ClusterAuthorities,
    trusted: list[x509.Certificate],
    *,
    proxy_id: str = "proxy-1",
    port: int = 0,
    peers: Sequence[ProxyInfo] = (),
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    timings: TunnelTimings | None = None,
    task_status: trio.TaskStatus[tuple[TunnelServer, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve tunnels from clusters whose CA is in ``trusted`` on 127.0.0.1 until cancelled;
    reports the server and its address."""
    cert, key = _proxy_identity(authorities, proxy_id)
    context = pki.server_ssl_context(
        cert, key, client_cas=trusted, client_auth="required", alpn=[TUNNEL_ALPN]
    )
    # the handler refuses anything older than TLS 1.3; this context also serves tests that
    # check that refusal, so it does not forbid 1.2 at the handshake
    # each CA under the cluster its subject names, as a proxy keeps them by the cluster they
    # were stored for
    by_cluster: dict[str, list[x509.Certificate]] = {}
    for ca in trusted:
        for org in ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
            by_cluster.setdefault(str(org.value), []).append(ca)
    address: dict[str, str] = {}

    def proxies() -> list[ProxyInfo]:
        return [ProxyInfo(proxy_id, address.get("tunnel", "")), *peers]

    server = TunnelServer(
        proxy_id=proxy_id,
        cluster=authorities.cluster,
        authenticate=tunnel_authenticator(authorities.cluster, lambda: by_cluster),
        proxies=proxies,
        keep_alive=KeepAlive(heartbeat_interval),
        timings=timings,
    )
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(serve_tls, "127.0.0.1", port, context, {TUNNEL_ALPN: server.handle})
        )
        address["tunnel"] = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started((server, address["tunnel"]))


async def serve(
    args: argparse.Namespace, authorities: pki.ClusterAuthorities, trusted: list[x509.Certificate]
) -> None:
    directory = pathlib.Path(args.dir)
    async with trio.open_nursery() as nursery:
        server, tunnel_addr = await nursery.start(
            partial(
                serve_tunnels,
                authorities,
                trusted,
                proxy_id=args.proxy_id,
                port=args.port,
                peers=[ProxyInfo(*p.split("=", 1)) for p in args.peer_proxy],
                heartbeat_interval=args.heartbeat_interval,
                timings=TunnelTimings(ping_interval=args.ping_interval, dead_after=args.dead_after),
            )
        )
        nursery.start_soon(_stop_on_signal, server, nursery.cancel_scope)
        forwards = {}
        for spec in args.forward:
            cluster, target = spec.split("=", 1)
            fl = await nursery.start(serve_forward, server, cluster, target)
            forwards[spec] = f"127.0.0.1:{fl[0].socket.getsockname()[1]}"
        log.info("serving tunnels on %s", tunnel_addr)
        while True:
            _write_info(
                directory,
                f"serve-{args.proxy_id}",
                {
                    "tunnel_addr": tunnel_addr,
                    "forwards": forwards,
                    "proxy_id": args.proxy_id,
                    "tunnels": sum(len(r) for r in server.clusters().values()),
                },
            )
            await trio.sleep(0.5)


async def _hold(request: IncomingStream) -> None:
    """Accept and keep the stream open until the other side ends it (idle-stream figures)."""
    stream = request.accept()
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some():
            pass


def _stream_handler(args: argparse.Namespace) -> StreamHandler:
    dialer = TargetDialer(args.allow)

    async def handle(request: IncomingStream) -> None:
        if args.hold_target and request.target == args.hold_target:
            await _hold(request)
        else:
            await dialer(request)

    return handle


async def agent(
    args: argparse.Namespace, authorities: pki.ClusterAuthorities, trusted: list[x509.Certificate]
) -> None:
    directory = pathlib.Path(args.dir)
    cert, key = _agent_identity(args, authorities)
    context = _agent_context(args, trusted, cert, key)
    #: what the last tunnel negotiated, for a benchmark's record: ``TLSv1.3 TLS_AES_...``
    negotiated: dict[str, str] = {}

    async def dial(addr: str) -> trio.abc.Stream:
        host, port = _split_addr(addr)
        stream = await TLSStream.connect(host, port, context, server_hostname="localhost")
        cipher = stream.socket.cipher()
        negotiated["tls"] = f"{stream.version()} {cipher[0] if cipher else 'unknown'}"
        return stream

    pool = AgentPool(
        cluster=authorities.cluster,
        tunnel_addr=args.tunnel_addr,
        dial=dial,
        handle_stream=_stream_handler(args),
        timings=TunnelTimings(ping_interval=args.ping_interval, dead_after=args.dead_after),
        backoff=Backoff(initial=args.backoff_initial, maximum=args.backoff_max),
        mux_config=MuxConfig(max_concurrent_streams=args.max_streams),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, None, nursery.cancel_scope)
        await nursery.start(pool.run)
        await pool.wait_connected(1)
        _write_info(directory, f"agent-{authorities.cluster}", {"cluster": authorities.cluster})
        while True:
            await trio.sleep(0.2)
            _write_info(
                directory,
                f"agent-{authorities.cluster}",
                {
                    "cluster": authorities.cluster,
                    "connected": pool.connected_proxies(),
                    "known": pool.known_proxies(),
                    "dial_attempts": pool.dial_attempts,
                    "last_error": pool.last_error,
                    **negotiated,
                },
            )


async def echo(args: argparse.Namespace) -> None:
    """A TCP echo server: the kind of target a leaf lets the root reach."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            while data := await stream.receive_some(256 * 1024):
                await stream.send_all(data)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, None, nursery.cancel_scope)
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        _write_info(pathlib.Path(args.dir), "echo", {"addr": f"127.0.0.1:{port}"})


def _agent_identity(
    args: argparse.Namespace, authorities: pki.ClusterAuthorities
) -> tuple[x509.Certificate, pki.PrivateKey]:
    """The certificate the agent presents: ``--cert``/``--key`` if given, else a new one of
    its cluster's CA, of kind ``--kind``."""
    if args.cert:
        cert = pki.load_cert(pathlib.Path(args.cert).read_bytes())
        return cert, pki.load_private_key(pathlib.Path(args.key).read_bytes())
    return _proxy_identity(authorities, f"{authorities.cluster}-agent", args.kind)


def _agent_context(
    args: argparse.Namespace,
    trusted: list[x509.Certificate],
    cert: x509.Certificate,
    key: pki.PrivateKey,
) -> ssl.SSLContext:
    context = pki.client_ssl_context(trusted_cas=trusted, cert=cert, key=key, alpn=[TUNNEL_ALPN])
    # tunnels are TLS 1.3 only; --tls-version 1.2 exists to test that servers refuse it
    version = ssl.TLSVersion.TLSv1_2 if args.tls_version == "1.2" else ssl.TLSVersion.TLSv1_3
    context.minimum_version = version
    context.maximum_version = version
    return context


async def agents(
    args: argparse.Namespace, authorities: pki.ClusterAuthorities, trusted: list[x509.Certificate]
) -> None:
    """Many idle agents in one process, each with its own TLS tunnel (for load figures)."""
    cert, key = _agent_identity(args, authorities)
    context = _agent_context(args, trusted, cert, key)

    async def dial(addr: str) -> trio.abc.Stream:
        host, port = _split_addr(addr)
        return await TLSStream.connect(host, port, context, server_hostname="localhost")

    pools = [
        AgentPool(
            cluster=authorities.cluster,
            tunnel_addr=args.tunnel_addr,
            dial=dial,
            handle_stream=_stream_handler(args),
            timings=TunnelTimings(ping_interval=args.ping_interval, dead_after=args.dead_after),
            backoff=Backoff(initial=args.backoff_initial, maximum=args.backoff_max),
        )
        for _ in range(args.count)
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, None, nursery.cancel_scope)
        for pool in pools:
            await nursery.start(pool.run)
        while True:
            connected = sum(1 for pool in pools if pool.connected_proxies())
            _write_info(pathlib.Path(args.dir), "agents", {"connected": connected})
            await trio.sleep(0.5)


def init(args: argparse.Namespace) -> None:
    directory = pathlib.Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cluster.json").write_text(json.dumps({"cluster": args.cluster}))
    authorities = pki.ClusterAuthorities.load_or_create(directory / "keys", args.cluster)
    (directory / "ca.pem").write_bytes(pki.cert_to_pem(authorities.tls.certificate))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tether.testing.tunnel_peer")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init")
    p.add_argument("--dir", required=True)
    p.add_argument("--cluster", required=True)
    p = sub.add_parser("echo")
    p.add_argument("--dir", required=True)
    for name in ("serve", "agent", "agents"):
        p = sub.add_parser(name)
        p.add_argument("--dir", required=True)
        p.add_argument("--trust-ca", required=True)
        p.add_argument("--ping-interval", type=float, default=5.0)
        p.add_argument("--dead-after", type=float, default=15.0)
        p.add_argument("--debug", action="store_true")
    serve_p = sub.choices["serve"]
    serve_p.add_argument("--port", type=int, default=0)
    serve_p.add_argument("--proxy-id", default="proxy-1")
    serve_p.add_argument("--forward", action="append", default=[])
    serve_p.add_argument("--peer-proxy", action="append", default=[])
    serve_p.add_argument("--heartbeat-interval", type=float, default=2.0)
    for name in ("agent", "agents"):
        agent_p = sub.choices[name]
        agent_p.add_argument("--tunnel-addr", required=True)
        agent_p.add_argument("--allow", action="append", default=[])
        agent_p.add_argument("--hold-target", default="")
        agent_p.add_argument("--kind", default="proxy", help="identity kind of the agent's cert")
        agent_p.add_argument("--cert", default="", help="present this certificate (PEM) instead")
        agent_p.add_argument("--key", default="", help="the private key (PEM) of --cert")
        agent_p.add_argument("--tls-version", choices=["1.2", "1.3"], default="1.3")
        agent_p.add_argument("--max-streams", type=int, default=MuxConfig().max_concurrent_streams)
        agent_p.add_argument("--backoff-initial", type=float, default=0.2)
        agent_p.add_argument("--backoff-max", type=float, default=2.0)
    sub.choices["agents"].add_argument("--count", type=int, default=100)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "debug", False) else logging.INFO,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
        stream=sys.stderr,
    )
    if args.command == "init":
        init(args)
        return 0
    if args.command == "echo":
        trio.run(echo, args)
        return 0
    authorities, trusted = load_cluster(pathlib.Path(args.dir), pathlib.Path(args.trust_ca))
    commands = {"serve": serve, "agent": agent, "agents": agents}
    trio.run(commands[args.command], args, authorities, trusted)
    return 0


# --- driving peers from tests and benchmarks -------------------------------------------------


@attrs.define
class PeerProcess:
    """A running tunnel peer and the JSON file where it reports itself."""

    process: subprocess.Popen[bytes]
    info_path: pathlib.Path
    log_path: pathlib.Path

    def info(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.info_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        """Poll the info file until ``predicate`` holds; AssertionError with the log if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"peer exited {self.process.returncode}:\n{self.log()}")
            info = self.info()
            if info.get("pid") == self.process.pid and predicate(info):
                return info
            time.sleep(0.05)
        raise AssertionError(f"peer did not get there in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        stop_process(self.process, sig, timeout)


def _spawn(directory: pathlib.Path, name: str, *args: str) -> PeerProcess:
    info = directory / f"{name}.json"
    info.unlink(missing_ok=True)
    log_path = directory / f"{name}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tether.testing.tunnel_peer", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return PeerProcess(process, info, log_path)


def init_cluster(directory: pathlib.Path, cluster: str) -> pathlib.Path:
    """Create a cluster's CAs in ``directory``; returns its CA certificate file."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tether.testing.tunnel_peer",
            "init",
            "--dir",
            str(directory),
            "--cluster",
            cluster,
        ],
        check=True,
    )
    return directory / "ca.pem"


def start_serve(
    directory: pathlib.Path, trust_ca: pathlib.Path, *args: str, proxy_id: str = "proxy-1"
) -> PeerProcess:
    peer = _spawn(
        directory,
        f"serve-{proxy_id}",
        "serve",
        "--dir",
        str(directory),
        "--trust-ca",
        str(trust_ca),
        "--proxy-id",
        proxy_id,
        *args,
    )
    peer.wait_for(lambda info: "tunnel_addr" in info)
    return peer


def start_agent(
    directory: pathlib.Path,
    trust_ca: pathlib.Path,
    tunnel_addr: str,
    *args: str,
    wait: bool = True,
) -> PeerProcess:
    cluster = json.loads((directory / "cluster.json").read_text())["cluster"]
    peer = _spawn(
        directory,
        f"agent-{cluster}",
        "agent",
        "--dir",
        str(directory),
        "--trust-ca",
        str(trust_ca),
        "--tunnel-addr",
        tunnel_addr,
        *args,
    )
    if wait:
        peer.wait_for(lambda info: bool(info.get("connected")))
    return peer


def start_agents(
    directory: pathlib.Path, trust_ca: pathlib.Path, tunnel_addr: str, count: int, *args: str
) -> PeerProcess:
    """``count`` agents of the cluster in ``directory`` in one process."""
    return _spawn(
        directory,
        "agents",
        "agents",
        "--dir",
        str(directory),
        "--trust-ca",
        str(trust_ca),
        "--tunnel-addr",
        tunnel_addr,
        "--count",
        str(count),
        *args,
    )


def load_cluster(
    directory: pathlib.Path, trust_ca: pathlib.Path
) -> tuple[pki.ClusterAuthorities, list[x509.Certificate]]:
    """A cluster made by :func:`init_cluster` and the CAs it trusts, for in-process serving."""
    return _authorities(directory), pki.load_certs(trust_ca.read_bytes())


def start_echo(directory: pathlib.Path) -> PeerProcess:
    directory.mkdir(parents=True, exist_ok=True)
    peer = _spawn(directory, "echo", "echo", "--dir", str(directory))
    peer.wait_for(lambda info: "addr" in info)
    return peer


if __name__ == "__main__":
    sys.exit(main())
