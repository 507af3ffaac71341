"""A proxy's copy of its cluster's trust, kept in step with the auth service.

The proxy verifies client certificates itself, before it routes a connection (a root user's
certificate at a leaf proxy is role-mapped there), and accepts tunnels only from clusters its
cluster trusts. Both answers must be the auth service's, so the proxy holds a copy of auth's
:class:`~tether.trust.ClusterTrust` (``GET /v1/trust``): re-read every few seconds, and at
once when the auth service runs in the same process and announces a change. Whoever caches
something derived from it (the TLS context's CAs, the tunnels to roots) listens on
:attr:`ProxyTrust.on_change`.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable

import trio
from cryptography import x509

from tether import pki
from tether.auth.http_client import AuthClient
from tether.errors import TetherError
from tether.plugins import TetherPluginManager
from tether.resources import KindRegistry
from tether.trust import ClusterTrust

__all__ = ["POLL_INTERVAL", "ProxyTrust"]

log = logging.getLogger(__name__)

#: How often a proxy re-reads the trust when nothing announced a change. A proxy in another
#: process than auth learns of a new leaf or a disabled root within this.
POLL_INTERVAL = 3.0


class ProxyTrust:
    """The trust this proxy acts on.

    :param auth: a client of the auth API authenticated as this proxy.
    :param pm: the plugin manager (role-map strategies, resource kinds).
    :param initial: the trust known before the first read (this cluster's own CAs).
    """

    def __init__(self, auth: AuthClient, pm: TetherPluginManager, initial: ClusterTrust) -> None:
        self._auth = auth
        self._pm = pm
        self._registry = KindRegistry.from_plugins(pm)
        self.current = initial
        #: called, in order, after :attr:`current` changed
        self.on_change: list[Callable[[], Awaitable[None]]] = []
        self._parsed: dict[str, x509.Certificate] = {}
        self._lock = trio.Lock()
        self._revision: str | None = None  # of the snapshot held, as auth named it

    @property
    def cluster_name(self) -> str:
        return self.current.cluster_name

    def verify_client(self, cert: bytes | x509.Certificate) -> pki.Identity:
        """Verify a client certificate as the auth service would (see
        :meth:`tether.trust.ClusterTrust.verify_client`)."""
        now = datetime.datetime.now(datetime.UTC)
        return self.current.verify_client(cert, pm=self._pm, now=now)

    def _load_cert(self, pem: str) -> x509.Certificate:
        cert = self._parsed.get(pem)
        if cert is None:
            cert = self._parsed[pem] = pki.load_cert(pem)
        return cert

    async def refresh(self) -> None:
        """Read the trust from auth now; tell the listeners when it changed.

        :raises TetherError: auth could not be asked, or answered nonsense.
        """
        async with self._lock:  # two refreshes at once would race to set current
            body = await self._auth.trust(known=self._revision)
            if body.get("unchanged") is True and body.get("revision") == self._revision:
                return
            try:
                fresh = ClusterTrust.from_json(body, self._registry, self._load_cert)
            except ValueError as exc:
                raise TetherError(f"the auth service sent an unusable trust: {exc}") from None
            changed = fresh != self.current
            self.current = fresh
            self._revision = str(body.get("revision") or "") or None
            # certificates of clusters no longer trusted need not stay parsed
            live = {*fresh.own_cas, *(c for cas in fresh.others.values() for c in cas)}
            self._parsed = {pem: c for pem, c in self._parsed.items() if c in live}
        if changed:
            for callback in self.on_change:
                await callback()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the trust once (or fail to start), then every :data:`POLL_INTERVAL`."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(POLL_INTERVAL)
            try:
                await self.refresh()
            except TetherError as exc:
                # auth unreachable for a moment: keep acting on what we knew
                log.warning("could not refresh the cluster's trust: %s", exc)
