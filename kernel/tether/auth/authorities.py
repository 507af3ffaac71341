"""The cluster's certificate authorities: created on first start, published as
``cert_authority`` resources, and the certificates of the cluster's own daemons.

Separate from the other jobs because it runs before any of them (bootstrap) and is the only
one that touches the CA key files.
"""

from __future__ import annotations

import contextlib
import datetime
import pathlib
from collections.abc import Sequence
from typing import Any

from cryptography import x509

from tether import pki
from tether.auth.context import AuthContext
from tether.backend import Backend, Op
from tether.config import Config
from tether.errors import AlreadyExists, CompareFailed, NotFound
from tether.resources import KindRegistry, preset_roles, resource_to_bytes
from tether.trust.handshake import TrustExchange, ca_resources

__all__ = ["create_preset_roles", "issue_system_certificate", "load_authorities", "publish"]


def load_authorities(config: Config, declared: Sequence[str] = ()) -> pki.ClusterAuthorities:
    """Load the cluster's CAs from the data directory, creating them on first start, and the
    X.509 CAs of the ``declared`` types (``tether_cert_authorities``) the first time each is
    declared, with the X.509 CA's algorithm (what databases accept of the cluster's CA)."""
    keys_dir = pathlib.Path(config.data_dir) / "keys"
    authorities = pki.ClusterAuthorities.load_or_create(
        keys_dir,
        config.cluster_name,
        algorithm=config.auth_service.ca_algorithm,
        tls_algorithm=config.auth_service.tls_ca_algorithm,
    )
    return authorities.with_declared(
        keys_dir, declared, algorithm=config.auth_service.tls_ca_algorithm
    )


async def publish(ctx: AuthContext) -> None:
    """Store this cluster's public CAs, so that ``tetherctl get cert_authority`` shows them:
    the kernel's and those plugins declare (which the trust exchange never sends).

    Only those that differ from the stored ones are written, in one batch: a restart with the
    same CAs writes nothing, so the trust snapshot keeps the revision hosts hold (see
    :mod:`tether.auth.trust_feed`) and none of them downloads it again. Each write expects
    the stored item it compared with; when another auth server of the store wrote in between,
    the comparison starts again.
    """
    kind = ctx.registry.get("cert_authority")
    own = TrustExchange.of(ctx.cluster_name, ctx.authorities)
    resources = ca_resources(ctx.registry, own, ("user", "host", "tls"))
    for name, ca in ctx.authorities.declared.items():
        spec = {
            "type": name,
            "cluster_name": ctx.cluster_name,
            "active_keys": {"ssh": [], "tls": [ca.cert_pem().decode()]},
        }
        resources.append(ctx.make("cert_authority", ctx.cluster_name, spec))
    wanted = {kind.key(kind.ref_of(res)): resource_to_bytes(res) for res in resources}
    while True:
        changed = []
        for key, value in wanted.items():
            stored = await ctx.backend.get(key)
            if stored is None or stored.value != value:
                expected = 0 if stored is None else stored.revision
                changed.append(Op.put(key, value, expected_revision=expected))
        if not changed:
            return
        try:
            await ctx.backend.apply(changed)
            return
        except (AlreadyExists, CompareFailed, NotFound):
            continue  # written meanwhile by another auth server of the store: compare again


async def create_preset_roles(backend: Backend, registry: KindRegistry) -> None:
    """Create the preset roles that do not exist yet (an edited one is kept as it is)."""
    kind = registry.get("role")
    for role in preset_roles():
        with contextlib.suppress(AlreadyExists):
            await backend.create(kind.key(role.metadata.name), resource_to_bytes(role))


def issue_system_certificate(
    ctx: AuthContext,
    kind: str,
    name: str,
    public_key: Any,
    *,
    ttl: datetime.timedelta,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> x509.Certificate:
    """Issue the X.509 certificate of one of the cluster's own daemons (or the local
    admin identity ``tetherctl -c`` uses)."""
    identity = pki.Identity(
        username=name,
        cluster=ctx.cluster_name,
        roles=(),
        traits={},
        logins=(),
        expires=ctx.now() + ttl,
        kind=kind,
    )
    return pki.issue_x509_cert(
        ctx.authorities.tls,
        public_key,
        identity,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        server=kind in ("proxy", "auth"),
        now=ctx.now(),
    )
