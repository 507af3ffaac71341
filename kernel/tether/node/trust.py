"""A node's copy of its cluster's trust: the :class:`~tether.trust.ClusterTrust` proxies hold.

The node decides with the same snapshot and the same code as its proxies
(:meth:`~tether.trust.ClusterTrust.local_roles`), through the same cache class, so it offers
the same surface (``current``, ``on_change``, ``run``, ``verify_client``). Until the auth
service's snapshot carries the SSH user CAs and roles a node needs and lets nodes read it, the
node assembles it from the resources it may read (cert authorities, trusted clusters, roles):
the same facts, and the only part that differs from the proxy's cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cryptography import x509

from tether import pki
from tether.auth.http_client import AuthClient
from tether.proxy.trust_cache import ProxyTrust
from tether.resources import CertAuthoritySpec, KindRegistry, Resource, resource_from_dict
from tether.trust import ClusterTrust

__all__ = ["NodeTrust", "read_cluster_trust"]

log = logging.getLogger(__name__)


class NodeTrust(ProxyTrust):
    """The trust a node acts on; re-read as a proxy's is."""

    async def refresh(self) -> None:
        """Read the trust from auth now; tell the listeners when it changed.

        :raises TetherError: auth could not be asked, or answered nonsense.
        """
        async with self._lock:
            fresh = await read_cluster_trust(
                self._auth, self._registry, self.cluster_name, self.current.own_cas
            )
            changed = fresh != self.current
            self.current = fresh
        if changed:
            for callback in self.on_change:
                await callback()


async def read_cluster_trust(
    api: AuthClient,
    registry: KindRegistry,
    cluster_name: str,
    own_cas: Sequence[x509.Certificate],
) -> ClusterTrust:
    """Assemble ``cluster_name``'s trust from the resources auth shows a host of it, as auth
    assembles its own (:meth:`tether.auth.service.AuthService.other_tls_cas`).

    :param own_cas: the cluster's X.509 CAs, as the host learnt them when it joined.
    """

    async def read(kind: str) -> list[Resource]:
        docs = await api.get_resources(kind)
        return [resource_from_dict(doc, registry, source=f"{kind} from auth") for doc in docs]

    trusted = {tc.metadata.name: tc for tc in await read("trusted_cluster")}
    tls: dict[str, list[x509.Certificate]] = {}
    ssh_user: dict[str, list[str]] = {}
    for ca in await read("cert_authority"):
        spec: CertAuthoritySpec = ca.spec
        name = spec.cluster_name
        if spec.type == "tls" and name != cluster_name:
            certs = [pki.load_cert(pem.encode()) for pem in spec.active_keys.tls]
            tls.setdefault(name, []).extend(certs)
        elif spec.type == "user":
            active = name == cluster_name or (name in trusted and trusted[name].spec.enabled)
            if active:  # a disabled trust deactivates the root's user CA here
                keys = [*spec.active_keys.ssh, *spec.additional_trusted_keys.ssh]
                ssh_user.setdefault(name, []).extend(keys)
    return ClusterTrust.build(
        cluster_name, own_cas, tls, trusted.values(), ssh_user, await read("role")
    )
