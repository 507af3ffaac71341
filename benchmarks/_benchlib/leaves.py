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
whenever that changes), as every fleet does (:mod:`_benchlib.fleet`). It exits when its stdin
closes (the harness is done or gone).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

if __name__ == "__main__":  # run as a script: find _benchlib as the harnesses do
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _benchlib.fleet import (
    ProcessFleet,
    emit,
    exit_when_parent_goes,
    now_ns,
    raise_fd_limit,
    report_tunnels,
)

__all__ = ["LeafFleet", "fleet", "now_ns"]

HERE = os.path.abspath(__file__)
CERT_TTL = datetime.timedelta(days=1)
HANDSHAKE_TIMEOUT = 120.0  # a root that slow to answer one leaf is broken, not slow


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
    emit(out, "generated", leaves=len(names), seconds=round(time.perf_counter() - started, 3))
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
                emit(out, "failed", leaf=name, error=f"{type(exc).__name__}: {exc}")
                return
            t2 = time.perf_counter()
        emit(out, "joined", leaf=name, trust_s=round(t1 - t0, 4), validate_s=round(t2 - t1, 4))
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

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report_tunnels, out, pools)
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
    raise_fd_limit(args.count * 2 + 100)
    threading.Thread(target=exit_when_parent_goes, daemon=True).start()
    trio.run(run_leaves, args, sys.stdout)
    return 0


# --- the harness's side -----------------------------------------------------------------------


class LeafFleet(ProcessFleet):
    """The lightweight leaves' processes, owned: ``with LeafFleet(...) as fleet:``.

    :param first: the first leaf's index (leaf names are ``PREFIX<index>``).
    :param count: how many leaves, split evenly over ``processes`` processes.
    """

    script = HERE
    default_prefix = "leaf"


@contextlib.contextmanager
def fleet(**kwargs: Any) -> Iterator[LeafFleet]:
    """:class:`LeafFleet` as a function (what the harness looks up, so tests can stub it)."""
    with LeafFleet(**kwargs) as running:
        yield running


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
