"""The proxy's side of reverse tunnels: who may dial in, and where their heartbeats go.

Tunnels arrive on the proxy's one public port with ALPN ``tether-tunnel/1``. Their peers are
verified through the kernel's one path (:func:`tether.pki.identity_from_peer`) against the CAs
this cluster trusts (its own now, for nodes in tunnel mode; trusted leaf clusters' once they
join). Heartbeats are written to storage in batches under ``/tunnels/<cluster>/<proxy>/<agent>``
with a TTL, so a tunnel that stops reporting disappears by itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import trio
from cryptography import x509

from tether import pki
from tether.backend import Backend, Op
from tether.tunnel.control import ProxyInfo
from tether.tunnel.heartbeats import HeartbeatRecord, HeartbeatRecorder
from tether.tunnel.server import TunnelServer

__all__ = ["HEARTBEAT_PREFIX", "build_tunnel_server"]

HEARTBEAT_PREFIX = "/tunnels/"
#: a tunnel that has not heartbeated for this long is forgotten by storage
HEARTBEAT_TTL = 600.0


def _heartbeat_writer(backend: Backend) -> Callable[[Sequence[HeartbeatRecord]], object]:
    async def write(batch: Sequence[HeartbeatRecord]) -> None:
        ops = [
            Op.put(
                f"{HEARTBEAT_PREFIX}{r.cluster}/{r.proxy_id}/{r.agent}",
                json.dumps(
                    {
                        "cluster": r.cluster,
                        "proxy": r.proxy_id,
                        "agent": r.agent,
                        "last_heartbeat": r.time,
                        "status": dict(r.status),
                    },
                    default=str,
                ).encode(),
                ttl=HEARTBEAT_TTL,
            )
            for r in batch
        ]
        await backend.apply(ops)

    return write


def build_tunnel_server(
    *,
    proxy_id: str,
    cluster: str,
    trusted_cas: Callable[[], Sequence[x509.Certificate]],
    public_addr: Callable[[], str],
    backend: Backend,
    heartbeat_flush_interval: float = 5.0,
) -> tuple[TunnelServer, HeartbeatRecorder]:
    """A tunnel server for this proxy and the recorder whose ``run`` must be started too."""

    def authenticate(stream: trio.abc.Stream) -> pki.Identity:
        identity = pki.identity_from_peer(stream, trusted_cas())  # type: ignore[arg-type]
        if identity is None:
            raise pki.UnknownAuthority(
                "no client certificate", hint="tunnel agents present their cluster certificate"
            )
        if identity.cluster != cluster and identity.kind != "proxy":
            # a leaf connects through its proxies; its nodes reach only their own proxy
            raise pki.UnknownAuthority(
                f"{identity.kind} {identity.username!r} of cluster {identity.cluster!r} may "
                "not open a tunnel here: only a trusted leaf's proxies may"
            )
        return identity

    recorder = HeartbeatRecorder(
        _heartbeat_writer(backend),  # type: ignore[arg-type]
        flush_interval=heartbeat_flush_interval,
    )
    server = TunnelServer(
        proxy_id=proxy_id,
        cluster=cluster,
        authenticate=authenticate,
        proxies=lambda: [ProxyInfo(proxy_id, public_addr())],
        recorder=recorder,
    )
    return server, recorder
