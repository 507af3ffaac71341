"""A host's copy of its cluster's trust, kept in step with the auth service by a watch.

A proxy verifies client certificates itself, before it routes a connection (a root user's
certificate at a leaf proxy is role-mapped there), and accepts tunnels only from clusters its
cluster trusts; a node accepts SSH user certificates of its cluster's and its enabled roots'
CAs and authorizes them with the cluster's roles. Every answer must be the auth service's, so
each host holds a copy of auth's :class:`~tether.trust.ClusterTrust`: read once at start, then
pushed by auth on every stored change (``GET /v1/trust?known=REV&wait=SECONDS``, see
:meth:`tether.auth.http_client.AuthClient.watch_trust`), whichever auth server of the cluster
made it. Whoever caches something derived from it (the TLS context's CAs, the tunnels to
roots, a node's roles) listens on :attr:`TrustCache.on_change`.

A proxy also answers its nodes' watches from its copy (:class:`~tether.trust.watches.
TrustWatches`): the same body under the same revision as auth's, so that nodes in tunnel mode
cost auth nothing, however many watch through one proxy.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import trio
from cryptography import x509

from tether import pki
from tether.auth.http_client import AuthClient
from tether.errors import TetherError
from tether.plugins import TetherPluginManager
from tether.resources import KindRegistry
from tether.trust import ClusterTrust
from tether.trust.watches import TrustWatches

__all__ = ["TrustCache"]

log = logging.getLogger(__name__)


class LocalTrust(Protocol):
    """The auth service's own snapshot (:class:`~tether.auth.trust_feed.TrustFeed`), for a
    host in the same process."""

    @property
    def current(self) -> ClusterTrust: ...

    @property
    def revision(self) -> str: ...

    def body(self) -> bytes: ...

    async def wait_changed(self, known: str | None) -> None: ...


class TunnelTrust(Protocol):
    """A node's tunnels, when a proxy they reach serves the trust it follows
    (:class:`tether.tunnel.agent.AgentPool`)."""

    def follows_trust(self) -> bool: ...

    async def wait_follows_trust(self) -> None: ...

    async def wait_trust(self, seen: str | None) -> None: ...

    def trust_revision(self) -> str | None: ...

    async def read_trust(self) -> bytes: ...


#: after a failed read of the trust through a tunnel, the next tries after this (seconds)
TUNNEL_RETRY = 1.0


class TrustCache(TrustWatches):
    """The trust this host (a proxy, a node) acts on.

    :param auth: a client of the auth API authenticated as this host.
    :param pm: the plugin manager (role-map strategies, resource kinds).
    :param initial: the trust known before the first read (this cluster's own CAs).
    :param local: the auth service's snapshot when auth runs in this process: followed
        directly, the same snapshot under the same revision, without encoding, sending and
        parsing all of it at each change (a megabyte per join on a root with a thousand
        leaves).
    :param tunnel: a node's tunnels: while a proxy they reach names its trust's revision in
        its heartbeats' answers, the trust is read through the tunnel when that revision
        moves, and the node holds no connection of its own to watch it (its tunnel is the
        one it needs); else it is watched over HTTPS.
    """

    def __init__(
        self,
        auth: AuthClient,
        pm: TetherPluginManager,
        initial: ClusterTrust,
        *,
        local: LocalTrust | None = None,
        tunnel: TunnelTrust | None = None,
    ) -> None:
        super().__init__()
        self._local = local
        self._tunnel = tunnel
        self._auth = auth
        self._pm = pm
        self._registry = KindRegistry.from_plugins(pm)
        self.current = initial
        #: called, in order, after :attr:`current` changed
        self.on_change: list[Callable[[], Awaitable[None]]] = []
        self._parsed: dict[str, x509.Certificate] = {}
        self._lock = trio.Lock()
        self._revision: str | None = None  # of the snapshot held, as auth named it
        self._body: Mapping[str, Any] = {}  # as auth sent it
        self._encoded: bytes | None = None  # the same, as this host sends it on

    @property
    def cluster_name(self) -> str:
        return self.current.cluster_name

    @property
    def revision(self) -> str:
        """The name auth gave the snapshot held; ``""`` before the first read."""
        return self._revision or ""

    def body(self) -> bytes:
        """The snapshot held, as auth sent it (its revision included)."""
        if self._local is not None:
            # auth's own, encoded once per snapshot however many read it; never older than
            # the revision held here, so a reader is not sent back in time
            return self._local.body()
        if self._encoded is None:
            self._encoded = json.dumps(self._body, separators=(",", ":")).encode()
        return self._encoded

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
        if self._local is not None:
            await self._take_local(self._local)
            return
        await self._apply(await self._auth.trust(known=self._revision))

    async def _apply(self, body: Mapping[str, Any]) -> None:
        async with self._lock:  # two answers at once would race to set current
            if body.get("unchanged") is True and body.get("revision") == self._revision:
                return
            try:
                fresh = ClusterTrust.from_json(body, self._registry, self._load_cert)
            except ValueError as exc:
                raise TetherError(f"the auth service sent an unusable trust: {exc}") from None
            changed = fresh != self.current
            self.current = fresh
            revision = str(body.get("revision") or "") or None
            self._body, self._encoded = body, None
            if revision != self._revision:
                self._revision = revision
                self._revision_moved()
            # certificates of clusters no longer trusted need not stay parsed; by identity,
            # as a certificate's hash and equality cost microseconds each, a thousand leaves
            # a few milliseconds per change
            live = {id(c) for c in fresh.own_cas}
            live.update(id(c) for cas in fresh.others.values() for c in cas)
            self._parsed = {pem: c for pem, c in self._parsed.items() if id(c) in live}
        if changed:
            for callback in self.on_change:
                await callback()

    async def _follow_local(self, local: LocalTrust) -> None:
        """Take auth's snapshot whenever its revision moves (auth in this process)."""
        while True:
            await local.wait_changed(self._revision)
            await self._take_local(local)

    async def _take_local(self, local: LocalTrust) -> None:
        async with self._lock:
            fresh = local.current
            changed = fresh != self.current
            self.current = fresh
            if local.revision != self._revision:
                self._revision = local.revision
                self._revision_moved()
        if changed:
            for callback in self.on_change:
                await callback()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the trust once (or fail to start), then apply each change auth pushes.

        While auth cannot be reached the host acts on what it knew (the watch asks again with
        backoff and logs the outage once).
        """
        if self._local is not None:
            await self._take_local(self._local)
            task_status.started()
            await self._follow_local(self._local)
            return
        await self.refresh()
        task_status.started()
        if self._tunnel is None:
            await self._watch()
            return
        tunnel = self._tunnel
        seen = self._revision
        while True:
            if not tunnel.follows_trust():
                async with trio.open_nursery() as nursery:  # until a tunnel follows it
                    nursery.start_soon(self._watch_until_followed, tunnel, nursery.cancel_scope)
                    nursery.start_soon(self._watch)
                seen = self._revision
            await tunnel.wait_trust(seen)
            if not tunnel.follows_trust():
                continue
            moved_to = tunnel.trust_revision()
            try:
                await self._apply(json.loads(await tunnel.read_trust()))
            except (TetherError, ValueError, trio.BrokenResourceError) as exc:
                log.warning("could not read the cluster's trust through the tunnel: %s", exc)
                await trio.sleep(TUNNEL_RETRY)
                continue
            # what the proxy named, even if it holds a newer one now: read once per move
            seen = moved_to if moved_to is not None else self._revision

    async def _watch(self) -> None:
        """Apply each change auth pushes, over HTTPS."""
        async with contextlib.aclosing(self._auth.watch_trust(self._revision)) as snapshots:
            async for body in snapshots:
                try:
                    await self._apply(body)
                except TetherError as exc:
                    log.warning("the cluster's trust did not change here: %s", exc)

    @staticmethod
    async def _watch_until_followed(tunnel: TunnelTrust, scope: trio.CancelScope) -> None:
        await tunnel.wait_follows_trust()
        scope.cancel()
