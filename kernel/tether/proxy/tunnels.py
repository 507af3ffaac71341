"""The proxy's side of reverse tunnels: who may dial in, and where their heartbeats go.

Tunnels arrive on the proxy's one public port with ALPN ``tether-tunnel/1``. Their peers are
verified through the kernel's one path (:func:`tether.pki.identity_from_peer`) against the CAs
this cluster trusts (its own, for nodes in tunnel mode; trusted leaf clusters' once they
join). Heartbeats go to the auth service in batches (``PUT /v1/tunnels/heartbeats``), which
stores them with a TTL, so a tunnel that stops reporting disappears by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio
from cryptography import x509

from tether import pki
from tether.tunnel.control import ProxyInfo
from tether.tunnel.heartbeats import HeartbeatRecorder, Writer
from tether.tunnel.server import TunnelServer

__all__ = ["build_tunnel_server"]


def build_tunnel_server(
    *,
    proxy_id: str,
    cluster: str,
    trusted_cas: Callable[[], Sequence[x509.Certificate]],
    proxies: Callable[[], Sequence[ProxyInfo]],
    write_heartbeats: Writer,
    heartbeat_flush_interval: float = 5.0,
) -> tuple[TunnelServer, HeartbeatRecorder]:
    """A tunnel server for this proxy and the recorder whose ``run`` must be started too.

    :param proxies: every proxy of this cluster right now, told to agents so that they keep
        a tunnel to each.
    :param write_heartbeats: stores a batch of heartbeats (the auth client's
        :meth:`~tether.auth.client.AuthClient.record_tunnel_heartbeats`).
    """

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

    recorder = HeartbeatRecorder(write_heartbeats, flush_interval=heartbeat_flush_interval)
    server = TunnelServer(
        proxy_id=proxy_id,
        cluster=cluster,
        authenticate=authenticate,
        proxies=proxies,
        recorder=recorder,
    )
    return server, recorder
