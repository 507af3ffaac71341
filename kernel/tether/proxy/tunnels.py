"""The proxy's side of reverse tunnels: who may dial in, and where their heartbeats go.

Tunnels arrive on the proxy's one public port with ALPN ``tether-tunnel/1``. Their peers are
verified through the kernel's one path (:func:`tether.pki.identity_from_peer`) against the CAs
stored under the cluster their certificate claims (its own, for nodes in tunnel mode; a
trusted leaf's once it joined), so a leaf cannot open tunnels under another leaf's name or
this cluster's; every refused certificate is audited as ``tunnel.refused``. Heartbeats go to
the auth service in batches (``PUT /v1/tunnels/heartbeats``), which stores them with a TTL,
so a tunnel that stops reporting disappears by itself; so do the inventory entries this
cluster's nodes send in them (``PUT /v1/presence/relayed``, each entry with the certificate of
the node whose tunnel sent it, which auth verifies and checks the entry against).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio
from cryptography import x509

from tether import pki
from tether.asgi import EventRecorder
from tether.tunnel.control import ProxyInfo
from tether.tunnel.heartbeats import (
    HeartbeatRecorder,
    InventoryRecorder,
    InventoryReport,
    InventoryWriter,
    Writer,
)
from tether.tunnel.server import Authenticator, TrustSource, TunnelServer
from tether.tunnel.transport import KeepAlive

__all__ = ["build_tunnel_server", "tunnel_authenticator"]

#: stores relayed inventory entries (``AuthClient.publish_relayed``): each is (the host's
#: certificate, the entry, its TTL, None or, to remove it, how long ago it was relayed)
RelayPublisher = Callable[
    [Sequence[tuple[bytes, Mapping[str, Any], float, float | None]]],
    Awaitable[Sequence[str | None]],
]


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
    publish_relayed: RelayPublisher | None = None,
    trust: TrustSource | None = None,
    record_event: EventRecorder | None = None,
    heartbeat_flush_interval: float = 5.0,
    keep_alive: KeepAlive | None = None,
) -> tuple[TunnelServer, list[HeartbeatRecorder | InventoryRecorder]]:
    """A tunnel server for this proxy and the recorders whose ``run`` must be started too.

    :param trusted_cas: the CAs that may open tunnels right now, by cluster (see
        :func:`tunnel_authenticator`).
    :param proxies: every proxy of this cluster right now, told to agents so that they keep
        a tunnel to each.
    :param write_heartbeats: stores a batch of heartbeats (the auth client's
        :meth:`~tether.auth.http_client.AuthClient.record_tunnel_heartbeats`).
    :param publish_relayed: stores a batch of the inventory entries this cluster's nodes
        send in their heartbeats, each as its node (the auth client's
        :meth:`~tether.auth.http_client.AuthClient.publish_relayed`); without it, nodes
        publish their entries to auth themselves.
    :param trust: the proxy's copy of the cluster's trust, which its nodes follow through
        their tunnels (see :class:`~tether.tunnel.server.TunnelServer`).
    :param record_event: audits refused tunnels and tunnels closed for cause (the proxy's
        :meth:`~tether.proxy.audit.ProxyAudit.record_event`).
    :param keep_alive: the cluster's keep-alive, as auth holds it (named to every agent).
    """

    async def audit(event: str, fields: Mapping[str, Any]) -> None:
        if record_event is not None:
            await record_event(event, "", fields, success=False)

    recorder = HeartbeatRecorder(write_heartbeats, flush_interval=heartbeat_flush_interval)
    inventory = None
    if publish_relayed is not None:
        inventory = InventoryRecorder(
            _relay(publish_relayed), flush_interval=heartbeat_flush_interval
        )
    server = TunnelServer(
        proxy_id=proxy_id,
        cluster=cluster,
        authenticate=tunnel_authenticator(cluster, trusted_cas),
        proxies=proxies,
        recorder=recorder,
        inventory=inventory,
        trust=trust,
        audit=audit,
        keep_alive=keep_alive,
    )
    return server, [recorder, *([inventory] if inventory is not None else [])]


def _relay(publish_relayed: RelayPublisher) -> InventoryWriter:
    """Relay reports to auth, every entry of every report in one call; says per report why
    auth refused any of its entries."""

    async def write(reports: Sequence[InventoryReport]) -> list[str | None]:
        entries = [
            (r.cert, entry, r.ttl_seconds, r.removed_relayed_ago)
            for r in reports
            for entry in r.entries
        ]
        refused = await publish_relayed(entries) if entries else []
        reasons: list[str | None] = []
        start = 0
        for report in reports:
            mine = refused[start : start + len(report.entries)]
            start += len(report.entries)
            reasons.append("; ".join(why for why in mine if why) or None)
        return reasons

    return write
