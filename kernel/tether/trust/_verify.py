"""Verifying a client certificate against a cluster's trust: its own CAs and its roots'.

Both the auth service and every proxy of a cluster verify client certificates (the proxy
before it routes a connection, auth before it answers a request). They must agree exactly,
so the decision lives here, pure, and each keeps a :class:`ClusterTrust` snapshot of what it
needs: the auth service reads it from storage, proxies and nodes from the auth API (which
pushes every change, see :mod:`tether.auth.trust_feed`). Nodes decide SSH certificates too, so
the snapshot also carries the active SSH user CAs and the cluster's roles.
"""

from __future__ import annotations

import datetime
import functools
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from cryptography import x509

from tether import pki
from tether.errors import AccessDenied
from tether.plugins import TetherPluginManager
from tether.rbac import RoleSet
from tether.resources import KindRegistry, Resource, resource_from_dict, resource_to_dict
from tether.trust import _decision
from tether.trust._decision import AuditFn

__all__ = ["ClusterTrust", "TrustedRoot"]


@attrs.frozen
class TrustedRoot:
    """A root cluster this one trusts: its X.509 CAs and the leaf's trusted_cluster for it."""

    cas: tuple[x509.Certificate, ...]
    trusted_cluster: Resource


@attrs.frozen
class ClusterTrust:
    """What one cluster trusts at one moment.

    :param cluster_name: this cluster.
    :param own_cas: this cluster's X.509 CAs (its hosts, admins and users).
    :param others: every other cluster whose X.509 CA this one holds (leaves and roots), by
        name: their proxies may open tunnels here.
    :param roots: of those, the roots: the clusters a trusted_cluster names.
    :param ssh_user_cas: the SSH user CA lines a node accepts user certificates from, by
        cluster: this cluster's and each enabled root's (a disabled trust deactivates its
        root's CA; a leaf's users never log in here).
    :param roles: the cluster's roles by name, which nodes authorize SSH logins with.
    """

    cluster_name: str
    own_cas: tuple[x509.Certificate, ...]
    others: Mapping[str, tuple[x509.Certificate, ...]] = attrs.field(factory=dict)
    roots: Mapping[str, TrustedRoot] = attrs.field(factory=dict)
    ssh_user_cas: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    roles: Mapping[str, Resource] = attrs.field(factory=dict)

    @classmethod
    def build(
        cls,
        cluster_name: str,
        own_cas: Iterable[x509.Certificate],
        others: Mapping[str, Sequence[x509.Certificate]],
        trusted_clusters: Iterable[Resource],
        *,
        user_cas: Mapping[str, Sequence[str]] | None = None,
        roles: Iterable[Resource] = (),
    ) -> ClusterTrust:
        """Assemble the snapshot; a trusted_cluster whose handshake has not stored the root's
        CA yet is not a root (yet).

        :param user_cas: every SSH user CA line this cluster holds, by cluster; only this
            cluster's and its enabled roots' are kept (:attr:`ssh_user_cas`).
        """
        roots = {
            tc.metadata.name: TrustedRoot(tuple(others[tc.metadata.name]), tc)
            for tc in trusted_clusters
            if others.get(tc.metadata.name)
        }
        active = {cluster_name, *(n for n, r in roots.items() if r.trusted_cluster.spec.enabled)}
        return cls(
            cluster_name=cluster_name,
            own_cas=tuple(own_cas),
            others={name: tuple(cas) for name, cas in others.items()},
            roots=roots,
            ssh_user_cas={
                name: tuple(lines)
                for name, lines in (user_cas or {}).items()
                if name in active and lines
            },
            roles={role.metadata.name: role for role in roles},
        )

    def to_json(self, *, pem_of: Callable[[x509.Certificate], str] | None = None) -> dict[str, Any]:
        """The snapshot as the auth API sends it to the cluster's proxies and nodes (public
        halves only: certificates, trusted_clusters without their tokens, roles).

        :param pem_of: encodes one certificate as PEM; a caller that holds the PEMs it parsed
            the certificates from passes a lookup (a root with a thousand leaves encodes a
            thousand per snapshot otherwise).
        """
        encode = pem_of or (lambda cert: pki.cert_to_pem(cert).decode())

        def pems(certs: Iterable[x509.Certificate]) -> list[str]:
            return [encode(c) for c in certs]

        return {
            "cluster_name": self.cluster_name,
            "own_cas": pems(self.own_cas),
            "others": {name: pems(cas) for name, cas in self.others.items()},
            "trusted_clusters": [resource_to_dict(r.trusted_cluster) for r in self.roots.values()],
            "ssh_user_cas": {name: list(lines) for name, lines in self.ssh_user_cas.items()},
            "roles": [resource_to_dict(role) for role in self.roles.values()],
        }

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        registry: KindRegistry,
        load_cert: Callable[[str], x509.Certificate] | None = None,
    ) -> ClusterTrust:
        """Read :meth:`to_json`'s form back.

        :param load_cert: parses one PEM certificate; a caller that reads the snapshot again
            and again passes a caching one (a root with a thousand leaves sends a thousand).
        :raises ValueError: a field is missing or of the wrong type.
        """
        parse = load_cert or pki.load_cert
        try:
            others = {
                str(name): [parse(pem) for pem in pems] for name, pems in data["others"].items()
            }
            trusted = [
                resource_from_dict(doc, registry, source="trusted_clusters")
                for doc in data["trusted_clusters"]
            ]
            user_cas = {
                str(name): [str(line) for line in lines]
                for name, lines in data["ssh_user_cas"].items()
            }
            roles = [resource_from_dict(doc, registry, source="roles") for doc in data["roles"]]
            return cls.build(
                str(data["cluster_name"]),
                [parse(p) for p in data["own_cas"]],
                others,
                trusted,
                user_cas=user_cas,
                roles=roles,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed trust snapshot: {exc!r}") from None

    def tunnel_cas(self) -> Mapping[str, tuple[x509.Certificate, ...]]:
        """The CAs whose certificates may open tunnels here, by the cluster each speaks for:
        this cluster's own (its nodes in tunnel mode) and each leaf's. A tunnel certificate is
        verified only against the CAs stored under the cluster it claims, so no leaf can speak
        for another, nor for this cluster; a root never dials its leaves.

        Worked out once per snapshot (every tunnel of a thousand leaves asks): a change of
        trust is a new snapshot, which works it out again.
        """
        return self._tunnel_cas

    @functools.cached_property
    def _tunnel_cas(self) -> Mapping[str, tuple[x509.Certificate, ...]]:
        leaves = {name: cas for name, cas in self.others.items() if name not in self.roots}
        return types.MappingProxyType({**leaves, self.cluster_name: self.own_cas})

    def verify_client(
        self,
        cert: bytes | x509.Certificate,
        *,
        pm: TetherPluginManager,
        now: datetime.datetime,
        audit: AuditFn | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> pki.Identity:
        """Verify a client certificate: one of this cluster's, or a user of a trusted root.

        A root-issued user certificate (the guide: a root user's certificate presented at the
        leaf) is verified against that root's X.509 CA while the trust is enabled, and comes
        back with the local roles its roles map to through the trusted_cluster's role_map, so
        everything after this (rules, node visibility) sees leaf roles only.

        :param audit: receives ``trust.login.mapped`` for a root's user (see
            :meth:`local_roles`); proxies, verifying every connection, pass none.
        :param where: fields naming where the decision was taken, for that event.
        :raises TrustError: not a certificate of this cluster or of an enabled trusted root
            (hosts and admins of other clusters never count here).
        :raises AccessDenied: a root's host, a disabled trust, or no role maps.
        """
        try:
            return pki.verify_x509_cert(cert, trusted_cas=list(self.own_cas), now=now)
        except pki.UnknownAuthority:
            if not self.roots:
                raise
        for root, trusted in self.roots.items():
            try:
                identity = pki.verify_x509_cert(cert, trusted_cas=list(trusted.cas), now=now)
            except pki.UnknownAuthority:
                continue
            # pki binds a certificate's cluster to its issuer already; the decision reads the
            # role_map of the cluster the identity names, so never let the two differ
            if identity.cluster != root:
                raise AccessDenied(
                    f"{identity.label} is signed by the CA of cluster {root!r}, not its own"
                )
            local = self.local_roles(identity, pm=pm, audit=audit, where=where)
            return attrs.evolve(identity, roles=local)
        raise pki.UnknownAuthority(
            "the certificate is not from this cluster or a cluster it trusts",
            hint="log in to this cluster, or to a root cluster it trusts",
        )

    def local_roles(
        self,
        identity: pki.Identity,
        *,
        pm: TetherPluginManager,
        audit: AuditFn | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> tuple[str, ...]:
        """The roles a verified identity holds here: the one trust decision, for X.509 and
        SSH certificates alike (see :func:`tether.trust._decision.local_roles`)."""
        return _decision.local_roles(self, identity, pm=pm, audit=audit, where=where)

    def role_set(
        self,
        names: Iterable[str],
        *,
        identity: pki.Identity,
        audit: AuditFn | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> RoleSet:
        """This cluster's roles named ``names``; missing ones skipped (and audited as
        ``trust.role.missing``)."""
        return _decision.role_set(self, names, identity=identity, audit=audit, where=where)
