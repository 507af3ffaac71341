"""The proxy's side of reverse tunnels: who may dial in, and where their heartbeats go.

Tunnels arrive on the proxy's one public port with ALPN ``tether-tunnel/1``. Their peers are
verified through the kernel's one path (:func:`tether.pki.identity_from_peer`) against the CAs
stored under the cluster their certificate claims (its own, for nodes in tunnel mode; a
trusted leaf's once it joined), so a leaf cannot open tunnels under another leaf's name or
this cluster's; every refused certificate is audited as ``tunnel.refused``. Heartbeats go to
the auth service in batches (``PUT /v1/tunnels/heartbeats``), which stores them with a TTL,
so a tunnel that stops reporting disappears by itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio
from cryptography import x509

from tether import pki
from tether.tunnel.control import ProxyInfo
from tether.tunnel.heartbeats import HeartbeatRecorder, Writer
from tether.tunnel.server import Authenticator, TunnelServer

__all__ = ["build_tunnel_server", "tunnel_authenticator"]

#: records an audit event of this proxy (``AuthClient.record_event``)
EventRecorder = Callable[..., Awaitable[None]]


def tunnel_authenticator(
    cluster: str, trusted_cas: Callable[[], Mapping[str, Sequence[x509.Certificate]]]
) -> Authenticator:
    """Who may dial a tunnel into this cluster's proxy: the check every tunnel goes through
    (tests' tunnel peers too, so that its refusals are the ones tested).

    :param trusted_cas: the CAs that may open tunnels right now, by the cluster each speaks
        for (:meth:`tether.trust.ClusterTrust.tunnel_cas`): a certificate is accepted only
        from a CA stored under the cluster it names.
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

    return authenticate


def build_tunnel_server(
    *,
    proxy_id: str,
    cluster: str,
    trusted_cas: Callable[[], Mapping[str, Sequence[x509.Certificate]]],
    proxies: Callable[[], Sequence[ProxyInfo]],
    write_heartbeats: Writer,
    record_event: EventRecorder | None = None,
    heartbeat_flush_interval: float = 5.0,
) -> tuple[TunnelServer, HeartbeatRecorder]:
    """A tunnel server for this proxy and the recorder whose ``run`` must be started too.

    :param trusted_cas: the CAs that may open tunnels right now, by cluster (see
        :func:`tunnel_authenticator`).
    :param proxies: every proxy of this cluster right now, told to agents so that they keep
        a tunnel to each.
    :param write_heartbeats: stores a batch of heartbeats (the auth client's
        :meth:`~tether.auth.http_client.AuthClient.record_tunnel_heartbeats`).
    :param record_event: audits refused tunnels and tunnels closed for cause (the auth
        client's :meth:`~tether.auth.http_client.AuthClient.record_event`).
    """

    async def audit(event: str, fields: Mapping[str, Any]) -> None:
        if record_event is not None:
            await record_event(event, "", fields, success=False)

    recorder = HeartbeatRecorder(write_heartbeats, flush_interval=heartbeat_flush_interval)
    server = TunnelServer(
        proxy_id=proxy_id,
        cluster=cluster,
        authenticate=tunnel_authenticator(cluster, trusted_cas),
        proxies=proxies,
        recorder=recorder,
        audit=audit,
    )
    return server, recorder
