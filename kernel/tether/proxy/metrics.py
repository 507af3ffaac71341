"""Prometheus metrics on the proxy's public port: ``GET /metrics``.

Tunnel metrics are read from the :class:`~tether.tunnel.server.TunnelServer` when Prometheus
scrapes, so nothing has to update gauges as tunnels come and go. Each web app has a registry
of its own rather than the library's global one, so several proxies can run in one process.

The metrics show which clusters reach this proxy, so scraping needs a certificate of this
cluster: the local admin's (``data_dir/admin``) or a user's whose roles allow ``read`` on the
resource kind ``metrics`` (the ``editor`` preset role does, through its ``*`` rule). Auth
verifies the certificate; the proxy only checks its kind and roles.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import tether
from tether import pki
from tether.asgi import PEER_CERT_STATE
from tether.auth.http_client import FORWARDED_CERT_HEADER, AuthClient
from tether.errors import AccessDenied
from tether.rbac import RoleSet
from tether.resources import ROLE, KindRegistry, resource_from_dict
from tether.tunnel.server import TunnelServer

__all__ = ["METRICS_KIND", "ProxyCollector", "authorize_scrape", "build_registry", "metrics_route"]

#: the resource kind a role rule names to allow scraping: ``{resources: [metrics], verbs: [read]}``
METRICS_KIND = "metrics"

_SCRAPE_HINT = (
    "scrape with the cluster's admin identity, or as a user whose roles allow read on metrics"
)


class ProxyCollector(Collector):
    """This proxy's build and its tunnels, per connected cluster.

    ``kind`` is ``node`` for this cluster's own nodes in tunnel mode and ``leaf`` for the
    proxies of trusted leaf clusters.
    """

    def __init__(self, tunnels: TunnelServer | None) -> None:
        self._tunnels = tunnels

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily(
            "tether_build", "Tether version", value={"version": tether.__version__}
        )
        if self._tunnels is None:
            return
        labels = ["cluster", "kind"]
        connected = GaugeMetricFamily(
            "tether_remote_cluster_connected",
            "1 while the cluster has a healthy tunnel to this proxy, 0 once it has none",
            labels=labels,
        )
        tunnels = GaugeMetricFamily(
            "tether_tunnels", "Healthy tunnels of the cluster to this proxy", labels=labels
        )
        streams = GaugeMetricFamily(
            "tether_tunnel_streams",
            "Open streams through the cluster's tunnels (control streams not counted)",
            labels=labels,
        )
        transferred = CounterMetricFamily(
            "tether_tunnel_bytes",
            "Stream data through the cluster's tunnels since this proxy started",
            labels=[*labels, "direction"],
        )
        for cluster, stats in sorted(self._tunnels.statistics().items()):
            kind = "node" if cluster == self._tunnels.cluster else "leaf"
            connected.add_metric([cluster, kind], 1 if stats.tunnels else 0)
            tunnels.add_metric([cluster, kind], stats.tunnels)
            streams.add_metric([cluster, kind], stats.streams)
            transferred.add_metric([cluster, kind, "sent"], stats.bytes_sent)
            transferred.add_metric([cluster, kind, "received"], stats.bytes_received)
        yield from (connected, tunnels, streams, transferred)


def build_registry(tunnels: TunnelServer | None) -> CollectorRegistry:
    """A registry with the process, Python and proxy metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(ProxyCollector(tunnels))
    return registry


async def authorize_scrape(
    der: bytes | None, auth: AuthClient, cluster: str, kinds: KindRegistry | None = None
) -> pki.Identity:
    """Return the caller's identity if it may read this proxy's metrics.

    :param der: the caller's client certificate, as the TLS handshake gave it.
    :raises AccessDenied: no certificate, another cluster's, or one that may not read metrics.
    """
    if not der:
        raise AccessDenied("a client certificate is required to read metrics", hint=_SCRAPE_HINT)
    headers = {FORWARDED_CERT_HEADER: base64.b64encode(der).decode()}
    identity = pki.Identity.from_json(await auth.call("GET", "/v1/whoami", headers=headers))
    who = f"{identity.kind} {identity.username!r} of cluster {identity.cluster!r}"
    if identity.cluster != cluster:
        raise AccessDenied(
            f"{who} may not read the metrics of cluster {cluster!r}", hint=_SCRAPE_HINT
        )
    if identity.kind == "admin":
        return identity
    if identity.kind != "user":
        raise AccessDenied(f"{who} may not read metrics", hint=_SCRAPE_HINT)
    # the process's registry reads the fields plugins add to roles (tether_role_fields)
    kinds = kinds or KindRegistry([ROLE])
    roles = [
        resource_from_dict(doc, kinds)
        for doc in await auth.get_resources(ROLE.name)
        if doc.get("metadata", {}).get("name") in identity.roles
    ]
    try:
        RoleSet(roles).check_rule(METRICS_KIND, "read")
    except AccessDenied as exc:
        raise AccessDenied(f"{who} may not read metrics: {exc.message}", hint=exc.hint) from None
    return identity


def metrics_route(
    cluster: str,
    auth: AuthClient,
    tunnels: TunnelServer | None,
    kinds: KindRegistry | None = None,
) -> Route:
    """``GET /metrics`` for the proxy of ``cluster``, in the format the scraper asks for."""
    registry = build_registry(tunnels)

    async def metrics(request: Request) -> Response:
        der = request.scope.get("state", {}).get(PEER_CERT_STATE)
        await authorize_scrape(der, auth, cluster, kinds)
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), headers={"content-type": content_type})

    return Route("/metrics", metrics, methods=["GET"])
