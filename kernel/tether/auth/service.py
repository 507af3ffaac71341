"""The auth service: the cluster's certificate authorities, users, roles, tokens and audit.

This module assembles the auth service from its jobs, one module each, and the trust-snapshot
feed (:mod:`~tether.auth.trust_feed`); :mod:`tether.auth.http_api` maps HTTP requests onto it and
:mod:`tether.auth.http_client` calls it remotely. Every public method that acts for a caller
takes the caller's verified :class:`~tether.pki.Identity` first and checks it (role rules for
users; built-in system identities are trusted for their own duties only).

The jobs: :mod:`~tether.auth.authorities` (CA bootstrap), :mod:`~tether.auth.resource_store`
(resources and visibility), :mod:`~tether.auth.inventory` (hosts' reports and remote
clusters' status), :mod:`~tether.auth.host_ids`, :mod:`~tether.auth.users`,
:mod:`~tether.auth.login` (passwords and lockout), :mod:`~tether.auth.sso_logins`,
:mod:`~tether.auth.tokens`, :mod:`~tether.auth.joins`, :mod:`~tether.auth.signing`; they
share an :class:`~tether.auth.context.AuthContext`.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import attrs
from cryptography import x509

from tether import audit, pki
from tether.auth import authorities as ca_bootstrap
from tether.auth import trust_feed
from tether.auth.context import AuthContext
from tether.auth.host_ids import HostIds
from tether.auth.inventory import Inventory
from tether.auth.joins import JoinResult, Joins
from tether.auth.login import LoginResult, Logins
from tether.auth.remote_clusters import RemoteClusterCache, offline_after
from tether.auth.resource_store import ResourceStore
from tether.auth.signing import CertificateSigning
from tether.auth.sso_logins import SingleSignOn
from tether.auth.target_lookup import TargetIndex, target_kinds
from tether.auth.tokens import TokenInfo, Tokens
from tether.auth.trust_feed import TrustFeed
from tether.auth.users import Users
from tether.backend import Backend, Item
from tether.cert_authority_types import cert_authority_types
from tether.config import Config
from tether.connectors import IdentityConnector
from tether.errors import PluginError
from tether.plugins import TetherPluginManager
from tether.resources import KindRegistry, Resource, resource_from_bytes
from tether.trust import ClusterTrust
from tether.trust.handshake import HandshakeParty, establish_trust_with_root

__all__ = ["AuthService", "JoinResult", "LoginResult", "TokenInfo"]

log = logging.getLogger(__name__)


def _connectors(pm: TetherPluginManager) -> dict[str, IdentityConnector]:
    found: dict[str, IdentityConnector] = {}
    for impl in pm.hook.tether_identity_connectors.get_hookimpls():
        provided = cast("list[IdentityConnector]", impl.function() or [])
        for connector in provided:
            if connector.name in found:
                raise PluginError(
                    f"identity connector {connector.name!r} is provided twice "
                    f"(again by plugin {impl.plugin_name!r})"
                )
            found[connector.name] = connector
    return found


class AuthService:
    """Owns the cluster's CAs and state. Create with :meth:`open` (bootstraps on first start).

    A thin object: the methods callers use are those of the jobs it assembles, bound here
    under the names the HTTP API and the daemon call.
    """

    def __init__(
        self,
        *,
        config: Config,
        pm: TetherPluginManager,
        backend: Backend,
        registry: KindRegistry,
        authorities: pki.ClusterAuthorities,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.pm = pm
        self.backend = backend
        self.registry = registry
        self.authorities = authorities
        self.cluster_name = config.cluster_name
        self._clock = clock
        self.context = AuthContext(
            config=config,
            pm=pm,
            backend=backend,
            registry=registry,
            authorities=authorities,
            clock=clock,
        )
        ctx = self.context
        # what every job does, for callers and for the trust methods below
        self.now = ctx.now
        self.make = ctx.make
        self.audit_event = ctx.audit_event
        self.trusted_tls_cas = ctx.trusted_tls_cas
        self.connectors = _connectors(pm)
        #: what this cluster trusts, kept current by a watch on the store (the daemon runs
        #: its :meth:`~tether.auth.trust_feed.TrustFeed.run` for as long as auth serves)
        self.trust_feed = TrustFeed(
            cluster_name=self.cluster_name,
            own_cas=self.trusted_tls_cas(),
            backend=backend,
            registry=registry,
        )

        #: the remote_clusters with their status, kept current by a watch on the store (the
        #: daemon runs its :meth:`~tether.auth.remote_clusters.RemoteClusterCache.run`)
        self.remote_clusters = RemoteClusterCache(
            backend=backend,
            registry=registry,
            clock=ctx.clock,
            offline_after=offline_after(ctx.keep_alive),
        )
        #: the entries of the protocols' target kinds, described and indexed for routing's
        #: queries, kept current by a watch on the store (the daemon runs its
        #: :meth:`~tether.auth.target_lookup.TargetIndex.run`)
        self.targets = TargetIndex(
            lambda: target_kinds(pm.hook.tether_protocols()),
            backend=backend,
            decoded=ctx.decoded,
            clock=ctx.clock,
        )
        self.host_ids = HostIds(ctx)
        self.inventory = Inventory(ctx, host_ids=self.host_ids, targets=self.targets)
        self.resources = ResourceStore(
            ctx,
            handshake=self._handshake_if_needed,
            forget_cluster=self._forget_cluster,
            remote_clusters=self.remote_clusters,
            targets=self.targets,
        )
        self.tokens = Tokens(ctx, list_resources=self.resources.get_resources)
        self.users = Users(ctx, resources=self.resources, tokens=self.tokens)
        self.logins = Logins(ctx, self.connectors)
        self.sso = SingleSignOn(ctx, self.connectors, logins=self.logins)
        #: the X.509 CAs plugins declare, and who may have certificates signed by them
        self.signing = CertificateSigning(ctx, cert_authority_types(pm))
        self.joins = Joins(
            ctx, tokens=self.tokens, host_ids=self.host_ids, verify_client=self.verify_client
        )
        #: this cluster's side of the trusted-cluster handshake, either role
        self.handshake_party = HandshakeParty(
            cluster_name=self.cluster_name,
            authorities=authorities,
            backend=backend,
            registry=registry,
            check_token=self.tokens.check_token,
            audit=ctx.audit_event,
        )

        # what callers call, by job
        #: the addresses this cluster's services in this process listen on, by service (the
        #: daemon fills it once they are bound): no host may register one as its own
        self.service_addrs = self.inventory.service_addrs
        self.get_resources = self.resources.get_resources
        self.documents = self.resources.documents
        self.encoded_documents = self.resources.encoded_documents
        self.create_resources = self.resources.create_resources
        self.delete_resource = self.resources.delete_resource
        self.publish = self.inventory.publish
        self.record_tunnel_heartbeats = self.inventory.record_tunnel_heartbeats
        self.record_host_event = self.inventory.record_host_event
        self.record_host_events = self.inventory.record_host_events
        self.sign_certificate = self.signing.sign_certificate
        self.hold_own_host_id = self.host_ids.hold_own
        self.add_user = self.users.add_user
        self.update_user = self.users.update_user
        self.complete_signup = self.users.complete_signup
        self.login_password = self.logins.login_password
        self.list_connectors = self.sso.list_connectors
        self.begin_sso = self.sso.begin_sso
        self.complete_sso = self.sso.complete_sso
        self.collect_sso = self.sso.collect_sso
        self.add_token = self.tokens.add_token
        self.list_tokens = self.tokens.list_tokens
        self.join = self.joins.join
        self.issue_host_identity = self.joins.issue_host_identity
        self.renew_host_identity = self.joins.renew_host_identity

    @classmethod
    async def open(
        cls,
        *,
        config: Config,
        pm: TetherPluginManager,
        backend: Backend,
        clock: Callable[[], float] = time.time,
    ) -> AuthService:
        """Load or create the CAs, publish them as ``cert_authority`` resources, and create
        the preset roles that do not exist yet."""
        registry = KindRegistry.from_plugins(pm)
        declared = cert_authority_types(pm)
        service = cls(
            config=config,
            pm=pm,
            backend=backend,
            registry=registry,
            authorities=await ca_bootstrap.load_authorities(config, backend, list(declared)),
            clock=clock,
        )
        await ca_bootstrap.publish(service.context)
        await service.trust_feed.load()
        await service.hold_own_host_id()
        await ca_bootstrap.create_preset_roles(backend, registry)
        return service

    @property
    def ca_pin(self) -> str:
        return self.context.ca_pin

    def issue_system_certificate(
        self,
        kind: str,
        name: str,
        public_key: Any,
        *,
        ttl: datetime.timedelta,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> x509.Certificate:
        """See :func:`tether.auth.authorities.issue_system_certificate`."""
        return ca_bootstrap.issue_system_certificate(
            self.context,
            kind,
            name,
            public_key,
            ttl=ttl,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )

    async def delete_token(self, identity: pki.Identity, token: str) -> str:
        await self.delete_resource(identity, "token", token)
        return f'token "{token}" has been deleted'

    async def search_audit(
        self, identity: pki.Identity, query: audit.AuditQuery
    ) -> list[audit.AuditEvent]:
        await self.context.authorize(identity, "event", "list")
        return await audit.search(self.pm, attrs.evolve(query, cluster=self.cluster_name))

    async def _handshake_if_needed(self, trusted: Resource, existing: Item | None) -> None:
        """Run the handshake with a trusted_cluster's root before it is stored, if it needs
        one (:meth:`_needs_handshake`)."""
        if await self._needs_handshake(trusted, existing):
            await establish_trust_with_root(self.handshake_party, trusted)

    # --- trust ---------------------------------------------------------------------------

    async def other_tls_cas(self) -> dict[str, list[x509.Certificate]]:
        """The X.509 CAs of the clusters this one trusts (its leaves' and its root's)."""
        return await trust_feed.other_tls_cas(self.backend, self.registry, self.cluster_name)

    async def _needs_handshake(self, trusted: Resource, existing: Item | None) -> bool:
        """Whether creating ``trusted`` must run the handshake with its root.

        The first time, yes. Afterwards the clusters know each other's CAs, so a changed role
        map or enabled flag applies without a (by then expired) token; the guide's edit flow
        reads the resource back with the token hidden. A new token, though, asks for a new
        handshake: that is how trust is restored after the root removed its remote_cluster.
        """
        if not await self.trusts(trusted.metadata.name):
            return True
        token = trusted.spec.token
        if not token:
            return False
        if existing is None:
            return True
        return bool(token != resource_from_bytes(existing.value, self.registry).spec.token)

    async def trusts(self, cluster: str) -> bool:
        """Whether this cluster holds another cluster's X.509 CA (a handshake happened)."""
        return await trust_feed.trusts(self.backend, self.registry, self.cluster_name, cluster)

    async def _forget_cluster(self, cluster: str) -> None:
        """Remove another cluster's CAs: the trust between the two ends here."""
        if cluster == self.cluster_name:
            return
        kind = self.registry.get("cert_authority")
        for ca_type in ("user", "host", "tls"):
            await self.backend.delete(kind.key(f"{ca_type}/{cluster}"))

    @property
    def trust(self) -> ClusterTrust:
        """What this cluster trusts now (see :mod:`tether.auth.trust_feed`)."""
        return self.trust_feed.current

    def verify_client(self, cert: bytes | x509.Certificate) -> pki.Identity:
        """Verify a client certificate: one of this cluster's, or a user of a trusted root
        (role-mapped); see :meth:`tether.trust.ClusterTrust.verify_client`."""
        return self.trust_feed.verify_client(cert, pm=self.pm, now=self.now())
