"""A leaf proxy's tunnels to the root clusters it trusts (the guide's step 4, after the
handshake).

For every ``trusted_cluster`` that is enabled and whose handshake is done (the root's CAs are
stored), the leaf's proxy keeps an :class:`~tether.tunnel.agent.AgentPool` to the root's tunnel
address: one tunnel to each root proxy, re-dialled with backoff, authenticated both ways (the
leaf presents its proxy certificate, the root's certificate is checked against the root's CA
from the handshake). Disabling or removing the trusted_cluster closes them.

The root opens streams through these tunnels to reach the leaf's resources; each names a
protocol (``ssh``) and carries a dial request, which the leaf routes within its own inventory
(:meth:`tether.proxy.routing.Router.serve_remote`). The leaf serves only what its protocol
plugins serve: a stream to anything else is refused, never dialled.
"""

from __future__ import annotations

import logging
import ssl

import attrs
import trio
from cryptography import x509

from tether import pki
from tether.config import HostPort
from tether.proxy.routing import Router
from tether.tlsstream import TLSStream
from tether.trust.cache import TrustCache
from tether.tunnel.agent import AgentPool
from tether.tunnel.server import TUNNEL_ALPN
from tether.tunnel.transport import IncomingStream

__all__ = ["RootTunnels"]

log = logging.getLogger(__name__)


@attrs.define
class _Running:
    addr: str
    scope: trio.CancelScope
    context: ssl.SSLContext | None = None
    pool: AgentPool | None = None


class RootTunnels:
    """Keeps this leaf's tunnels to its trusted roots in step with the trusted_clusters.

    :param trust: this cluster's trust as the proxy holds it (the trusted_clusters and the
        roots' CAs).
    :param cert: this proxy's certificate, which roots verify with this leaf's CA.
    :param key: its private key.
    :param router: routes the streams roots open here to this cluster's targets.
    """

    def __init__(
        self,
        *,
        trust: TrustCache,
        cert: x509.Certificate,
        key: pki.PrivateKey,
        router: Router,
    ) -> None:
        self.trust = trust
        self._cert = cert
        self._key = key
        self._router = router
        self._running: dict[str, _Running] = {}
        self._wake = trio.Event()

    def connected(self) -> dict[str, list[str]]:
        """Root cluster -> the root proxies this leaf has a tunnel to."""
        return {
            name: run.pool.connected_proxies() if run.pool is not None else []
            for name, run in self._running.items()
        }

    def present_certificate(self, cert: x509.Certificate, key: pki.PrivateKey) -> None:
        """Present ``cert`` to the roots from now on (this proxy renewed its certificate):
        every pool moves to new tunnels that present it, and the old ones are sent GOAWAY, so
        streams running on them finish there (a root closes a tunnel once the certificate
        it was opened with expires)."""
        self._cert, self._key = cert, key
        for running in self._running.values():
            if running.context is not None:
                pki.present_certificate(running.context, cert, key)
            if running.pool is not None:
                running.pool.replace_tunnels("the leaf's proxy renewed its certificate")

    async def changed(self) -> None:
        """Re-read the trusted clusters now (a :attr:`TrustCache.on_change` listener)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await self._reconcile(nursery)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._reconcile(nursery)

    def _wanted(self) -> dict[str, str]:
        """Enabled, established trusted clusters -> the tunnel address to dial."""
        return {
            name: str(
                root.trusted_cluster.spec.tunnel_addr or root.trusted_cluster.spec.web_proxy_addr
            )
            for name, root in self.trust.current.roots.items()
            if root.trusted_cluster.spec.enabled
        }

    async def _reconcile(self, nursery: trio.Nursery) -> None:
        wanted = self._wanted()
        for name, running in list(self._running.items()):
            if wanted.get(name) != running.addr:
                log.info("closing the tunnels to root cluster %s", name)
                running.scope.cancel()
                del self._running[name]
        for name, addr in wanted.items():
            if name not in self._running:
                running = _Running(addr=addr, scope=trio.CancelScope())
                self._running[name] = running
                nursery.start_soon(self._keep_tunnels, name, running)

    async def _keep_tunnels(self, root: str, running: _Running) -> None:
        root_cas = list(self.trust.current.others.get(root, ()))
        # only the root's proxies: its nodes' certificates come from the same CA
        context = pki.client_ssl_context(
            trusted_cas=root_cas,
            cert=self._cert,
            key=self._key,
            alpn=[TUNNEL_ALPN],
            peer_kinds=("proxy",),
        )
        running.context = context  # a renewal replaces the certificate in it

        async def dial(addr: str) -> trio.abc.Stream:
            target = HostPort.parse(addr)
            return await TLSStream.connect(
                target.connect_host, target.port, context, server_hostname=target.connect_host
            )

        async def handle_stream(request: IncomingStream) -> None:
            await self._router.serve_remote(root, request)

        running.pool = AgentPool(
            cluster=self.trust.cluster_name,
            tunnel_addr=running.addr,
            dial=dial,
            handle_stream=handle_stream,
        )
        log.info("keeping tunnels to root cluster %s at %s", root, running.addr)
        with running.scope:
            await running.pool.run()
            await trio.sleep_forever()
