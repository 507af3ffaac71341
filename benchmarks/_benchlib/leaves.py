"""Lightweight leaf clusters: the handshakes and tunnels of many leaves, without a tetherd each.

What a root sees of a leaf is its handshake and its tunnel; the rest of a leaf (its auth
service, storage, nodes) never reaches the root. So each lightweight leaf here does only that,
with the kernel's own code and the same calls a leaf's ``tetherd`` makes:

1. its own CAs (:meth:`tether.pki.ClusterAuthorities.generate`);
2. the handshake (:func:`tether.trust.handshake.establish_trust_with_root`'s calls): the root proxy
   verified with the CA pin (:func:`tether.client.web.establish_trust`), then
   ``POST /webapi/trustedclusters/validate`` with the invitation token and the leaf's public
   CAs (:class:`tether.trust.handshake.TrustExchange`);
3. a tunnel: an :class:`tether.tunnel.agent.AgentPool` dialling the root proxy with ALPN
   ``tether-tunnel/1`` and a ``proxy`` certificate the leaf's own X.509 CA issued, verifying the
   root with the CA the handshake returned (as :mod:`tether.proxy.root_tunnels` does).

A lightweight leaf serves nothing: every stream the root opens through its tunnel is refused.
Many leaves run in one process (``python leaves.py --first 1 --count 499 ...``, a few such
processes per run), never in the harness, so the harness's figures are the root's alone. Each
leaf dials its tunnel as soon as its own handshake is done, as a real leaf's proxy does.

The process reports on stdout, one JSON line per event, with ``at`` on the system-wide
``CLOCK_MONOTONIC`` (nanoseconds) that the harness reads too: ``generated`` (CAs made),
``joined`` (one per leaf: the seconds of the pin check and of the validate call), ``failed``
(a handshake refused, with the message) and ``connected`` (how many leaves hold a tunnel,
whenever that changes). It exits when its stdin closes (the harness is done or gone).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

HERE = os.path.abspath(__file__)
CERT_TTL = datetime.timedelta(days=1)
REPORT_INTERVAL = 0.25  # seconds between checks of how many tunnels are up
HANDSHAKE_TIMEOUT = 120.0  # a root that slow to answer one leaf is broken, not slow


def now_ns() -> int:
    """The clock this process and the harness share (system-wide on Linux)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# --- the leaves' process ----------------------------------------------------------------------


def _emit(out: IO[str], event: str, **fields: Any) -> None:
    out.write(json.dumps({"event": event, "at": now_ns(), **fields}) + "\n")
    out.flush()


def _exit_when_parent_goes() -> None:
    """The leaves live exactly as long as their owner: stdin EOF (owner gone or done) ends them."""
    sys.stdin.read()
    os._exit(0)


def _raise_fd_limit(needed: int) -> None:
    """One socket per tunnel: lift the soft limit on open files to the hard one if short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_leaves(args: argparse.Namespace, out: IO[str]) -> None:
    """Generate the leaves' CAs, then join and connect them, ``args.concurrency`` handshakes
    at a time; runs until the process is ended."""
    import trio

    from tether import __version__, pki
    from tether.client.web import establish_trust, proxy_call
    from tether.config import HostPort
    from tether.errors import TetherError
    from tether.tlsstream import TLSStream
    from tether.trust.handshake import TrustExchange
    from tether.tunnel.agent import AgentPool
    from tether.tunnel.server import TUNNEL_ALPN
    from tether.tunnel.transport import IncomingStream

    names = [f"{args.prefix}{i}" for i in range(args.first, args.first + args.count)]
    started = time.perf_counter()
    authorities = {name: pki.ClusterAuthorities.generate(name) for name in names}
    _emit(out, "generated", leaves=len(names), seconds=round(time.perf_counter() - started, 3))
    pools: dict[str, AgentPool] = {}
    limiter = trio.CapacityLimiter(args.concurrency)

    def exchange(a: pki.ClusterAuthorities) -> dict[str, Any]:
        return TrustExchange(
            cluster=a.cluster,
            version=__version__,
            ssh={"user": (a.ssh_user.public_key_line(),), "host": (a.ssh_host.public_key_line(),)},
            tls=(pki.cert_to_pem(a.tls.certificate).decode(),),
        ).to_json()

    def proxy_certificate(a: pki.ClusterAuthorities) -> tuple[Any, pki.PrivateKey]:
        key = pki.generate_private_key()
        identity = pki.Identity(
            username=f"{a.cluster}-proxy",
            cluster=a.cluster,
            roles=(),
            traits={},
            logins=(),
            expires=datetime.datetime.now(datetime.UTC) + CERT_TTL,
            kind="proxy",
        )
        cert = pki.issue_x509_cert(
            a.tls,
            key.public_key(),
            identity,
            dns_names=["localhost"],
            ip_addresses=["127.0.0.1"],
            server=True,
        )
        return cert, key

    async def refuse(request: IncomingStream) -> None:
        request.reject("a benchmark's lightweight leaf serves nothing")

    async def join(name: str, nursery: trio.Nursery) -> None:
        a = authorities[name]
        async with limiter:
            t0 = time.perf_counter()
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    context = await establish_trust(args.proxy, insecure=False, ca_pin=args.ca_pin)
                    t1 = time.perf_counter()
                    body = await proxy_call(
                        args.proxy,
                        "POST",
                        "/webapi/trustedclusters/validate",
                        context,
                        json={"token": args.token, "leaf": exchange(a)},
                    )
                root = TrustExchange.from_json(body.get("root"))
            except (TetherError, OSError, trio.TooSlowError) as exc:  # the others go on
                _emit(out, "failed", leaf=name, error=f"{type(exc).__name__}: {exc}")
                return
            t2 = time.perf_counter()
        _emit(out, "joined", leaf=name, trust_s=round(t1 - t0, 4), validate_s=round(t2 - t1, 4))
        cert, key = proxy_certificate(a)
        tls = pki.client_ssl_context(
            trusted_cas=[pki.load_cert(pem.encode()) for pem in root.tls],
            cert=cert,
            key=key,
            alpn=[TUNNEL_ALPN],
        )

        async def dial(addr: str) -> trio.abc.Stream:
            # as tether.proxy.root_tunnels dials: the root's certificate names its address
            hp = HostPort.parse(addr)
            return await TLSStream.connect(
                hp.connect_host, hp.port, tls, server_hostname=hp.connect_host
            )

        pool = AgentPool(cluster=name, tunnel_addr=args.proxy, dial=dial, handle_stream=refuse)
        pools[name] = pool
        await nursery.start(pool.run)

    async def report() -> None:
        last: tuple[int, int] | None = None
        while True:
            connected = sum(1 for pool in pools.values() if pool.connected_proxies())
            failing = sum(1 for pool in pools.values() if pool.last_error)
            if (connected, failing) != last:
                last = (connected, failing)
                errors = sorted({p.last_error for p in pools.values() if p.last_error})
                _emit(
                    out,
                    "connected",
                    count=connected,
                    pools=len(pools),
                    dial_attempts=sum(p.dial_attempts for p in pools.values()),
                    failing=failing,
                    errors=errors[:3],
                )
            await trio.sleep(REPORT_INTERVAL)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        for name in names:
            nursery.start_soon(join, name, nursery)


def _main(argv: list[str]) -> int:
    import trio

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", required=True, help="the root proxy, HOST:PORT")
    parser.add_argument("--ca-pin", required=True, help="the root's CA pin")
    parser.add_argument("--token", required=True, help="a trusted_cluster invitation token")
    parser.add_argument("--prefix", default="leaf", help="leaf names are PREFIX<index>")
    parser.add_argument("--first", type=int, required=True, help="the first leaf's index")
    parser.add_argument("--count", type=int, required=True, help="how many leaves")
    parser.add_argument("--concurrency", type=int, default=4, help="handshakes at a time")
    args = parser.parse_args(argv)
    _raise_fd_limit(args.count * 2 + 100)
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    trio.run(run_leaves, args, sys.stdout)
    return 0


# --- the harness's side -----------------------------------------------------------------------


@dataclasses.dataclass
class FleetState:
    """What the leaves' processes have reported so far (times on the shared clock, ns)."""

    generated: int = 0
    joined: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: per process: the latest ``connected`` report
    connected: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: (at, total connected) whenever the total changed
    connected_timeline: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    @property
    def connected_count(self) -> int:
        return sum(int(r["count"]) for r in self.connected.values())


class LeafFleet:
    """The lightweight leaves' processes, owned: ``with LeafFleet(...) as fleet:``.

    :param first: the first leaf's index (leaf names are ``PREFIX<index>``).
    :param count: how many leaves, split evenly over ``processes`` processes.
    """

    def __init__(
        self,
        *,
        proxy: str,
        ca_pin: str,
        token: str,
        first: int,
        count: int,
        processes: int = 2,
        concurrency: int = 4,
        prefix: str = "leaf",
    ) -> None:
        self.proxy = proxy
        self.ca_pin = ca_pin
        self.token = token
        self.first = first
        self.count = count
        self.processes = max(1, min(processes, count)) if count else 0
        self.concurrency = concurrency
        self.prefix = prefix
        self.procs: list[subprocess.Popen[str]] = []
        self.started_ns = 0
        self.state = FleetState()
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._stderr: list[list[str]] = []

    def _argv(self, first: int, count: int) -> list[str]:
        return [
            sys.executable,
            "-u",
            HERE,
            "--proxy",
            self.proxy,
            "--ca-pin",
            self.ca_pin,
            "--token",
            self.token,
            "--prefix",
            self.prefix,
            "--first",
            str(first),
            "--count",
            str(count),
            "--concurrency",
            str(max(1, self.concurrency // max(1, self.processes))),
        ]

    def __enter__(self) -> LeafFleet:
        self.started_ns = now_ns()
        base, extra = divmod(self.count, self.processes) if self.processes else (0, 0)
        first = self.first
        try:
            for i in range(self.processes):
                n = base + (1 if i < extra else 0)
                proc = subprocess.Popen(
                    self._argv(first, n),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                first += n
                self.procs.append(proc)
                lines: list[str] = []
                self._stderr.append(lines)
                for target, args in ((self._read, (i, proc)), (self._drain, (proc, lines))):
                    thread = threading.Thread(target=target, args=args, daemon=True)
                    thread.start()
                    self._readers.append(thread)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # the leaves exit on stdin EOF
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for thread in self._readers:
            thread.join(5)
        for proc in procs:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def _read(self, index: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self._note(index, record)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _note(self, index: int, record: dict[str, Any]) -> None:
        event = record.get("event")
        state = self.state
        if event == "generated":
            state.generated += int(record["leaves"])
        elif event == "joined":
            state.joined.append(record)
        elif event == "failed":
            state.failed.append(record)
        elif event == "connected":
            before = state.connected_count
            state.connected[index] = record
            if state.connected_count != before:
                state.connected_timeline.append((int(record["at"]), state.connected_count))

    @staticmethod
    def _drain(proc: subprocess.Popen[str], lines: list[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            del lines[:-20]  # keep the tail, for messages

    def stderr_tail(self) -> str:
        return " | ".join(line for lines in self._stderr for line in lines[-3:])

    def snapshot(self) -> FleetState:
        """A copy of the state, consistent at one moment."""
        with self._cond:
            s = self.state
            return FleetState(
                generated=s.generated,
                joined=list(s.joined),
                failed=list(s.failed),
                connected=dict(s.connected),
                connected_timeline=list(s.connected_timeline),
            )

    def wait_until(self, predicate: Callable[[FleetState], bool], timeout: float) -> bool:
        """Wait until ``predicate(state)`` holds; False after ``timeout`` seconds, or at once if
        every process has exited (the message is in :meth:`stderr_tail`)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.state):
                left = deadline - time.monotonic()
                if left <= 0 or all(proc.poll() is not None for proc in self.procs):
                    return predicate(self.state)
                self._cond.wait(min(left, 1.0))
            return True

    def seconds_since_start(self, at_ns: int) -> float:
        return round((at_ns - self.started_ns) / 1e9, 3)


@contextlib.contextmanager
def fleet(**kwargs: Any) -> Iterator[LeafFleet]:
    """:class:`LeafFleet` as a function (what the harness looks up, so tests can stub it)."""
    with LeafFleet(**kwargs) as running:
        yield running


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
