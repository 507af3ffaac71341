"""Certificates signed by the X.509 CAs plugins declare (``tether_cert_authorities``): a
database server's certificate for its admin (``tetherctl auth sign``), a short-lived client
certificate for the database service on a host, per session.

A job of its own because the rule of who may is neither a resource rule nor a login: the
cluster's admin, users whose roles allow verb ``sign`` on kind ``cert_authority``, and hosts
carrying one of the host roles the CA type names. Every signing, and every refusal, is
audited as ``cert.issued``.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping, Sequence

from tether import audit, pki
from tether.auth.context import AuthContext
from tether.cert_authority_types import (
    SIGNING_RULE,
    CertAuthorityType,
    CertUsage,
    SignedCertificate,
)
from tether.durations import format_duration
from tether.errors import AccessDenied, NotFound, TetherError
from tether.route_names import ROUTE_NAME_SUFFIX, is_route_domain

__all__ = ["CertificateSigning"]

#: host identity kinds that may sign when one of their roles is among a CA type's host roles
_HOST_KINDS = ("node", "proxy")


class CertificateSigning:
    """Signs with the declared CAs for those allowed, and audits it."""

    def __init__(self, ctx: AuthContext, types: Mapping[str, CertAuthorityType]) -> None:
        self._ctx = ctx
        self.types = dict(types)

    async def sign_certificate(
        self,
        identity: pki.Identity,
        ca_type: str,
        public_key_pem: str,
        common_name: str,
        *,
        usage: CertUsage,
        ttl: datetime.timedelta,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> SignedCertificate:
        """Sign a certificate for ``public_key_pem`` with the CA of ``ca_type``: subject
        exactly ``CN=<common_name>``, the DNS names and IP addresses as its SAN, ``usage``
        server or client, valid for ``ttl``.

        :raises NotFound: no plugin declares ``ca_type``.
        :raises AccessDenied: ``identity`` may not (see the module's docstring).
        :raises TetherError: the request does not fit the CA type (usage, TTL, names, key).
        """
        found = self.types.get(ca_type)
        ca = self._ctx.authorities.declared.get(ca_type)
        if found is None or ca is None:
            known = ", ".join(sorted(self.types)) or "none"
            raise NotFound(
                f"no CA type {ca_type!r} is declared in this cluster; declared: {known}",
                hint="install the plugin that declares it on the auth server and restart it",
            )
        fields = {
            "ca_type": ca_type,
            "subject": f"CN={common_name}",
            "usage": usage,
            "ttl": format_duration(ttl),
            "dns_names": list(dns_names),
            "ip_addresses": list(ip_addresses),
            "by": identity.kind,
        }
        try:
            await self._authorize(identity, found, usage)
            _check_request(found, common_name, usage, ttl, dns_names, ip_addresses)
            now = self._ctx.now()
            certificate = pki.sign_subject_cert(
                ca,
                public_key_pem,
                common_name,
                server=usage == "server",
                expires=now + ttl,
                dns_names=dns_names,
                ip_addresses=ip_addresses,
                now=now,
            )
        except TetherError as exc:
            await self._ctx.audit_event(
                audit.CERT_ISSUED,
                identity.username,
                {**fields, "error": exc.message},
                success=False,
            )
            raise
        except ValueError as exc:  # the public key, by pki
            error = f"cannot sign a certificate for that public key: {exc}"
            await self._ctx.audit_event(
                audit.CERT_ISSUED, identity.username, {**fields, "error": error}, success=False
            )
            raise TetherError(error, hint="send a PEM SubjectPublicKeyInfo") from None
        fields["serial"] = format(certificate.serial_number, "x")
        await self._ctx.audit_event(audit.CERT_ISSUED, identity.username, fields)
        return SignedCertificate(
            certificate=pki.cert_to_pem(certificate).decode(), ca_certs=(ca.cert_pem().decode(),)
        )

    async def _authorize(
        self, identity: pki.Identity, ca_type: CertAuthorityType, usage: CertUsage
    ) -> None:
        if identity.cluster != self._ctx.cluster_name:
            raise AccessDenied(
                f"{identity.label} is not of this cluster and may not have certificates "
                f"signed by its {ca_type.name} CA"
            )
        if identity.kind == "admin":
            return
        if identity.kind == "user":
            roleset = await self._ctx.roleset(identity.roles)
            kind, verb = SIGNING_RULE
            try:
                roleset.check_rule(kind, verb)
            except AccessDenied as exc:
                raise AccessDenied(
                    f"user {identity.username!r} may not have certificates signed by the "
                    f"{ca_type.name} CA: {exc.message}",
                    hint=f"a role needs a rule allowing verb {verb!r} on kind {kind!r}",
                ) from None
            return
        held = [role for role in identity.roles if role in ca_type.host_roles]
        if identity.kind in _HOST_KINDS and held:
            return
        wanted = ", ".join(ca_type.host_roles)
        rule = f"only hosts with role {wanted} may" if wanted else "no host may"
        raise AccessDenied(
            f"{identity.kind} {identity.username!r} may not have {usage} certificates signed by "
            f"the {ca_type.name} CA: {rule}"
        )


def _check_request(
    ca_type: CertAuthorityType,
    common_name: str,
    usage: CertUsage,
    ttl: datetime.timedelta,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
) -> None:
    if usage not in ca_type.usages:
        raise TetherError(
            f"the {ca_type.name} CA signs {' and '.join(ca_type.usages)} certificates, "
            f"not {usage} certificates"
        )
    if ttl <= datetime.timedelta(0):
        raise TetherError("the certificate's TTL must be positive")
    if ttl > ca_type.max_ttl:
        raise TetherError(
            f"TTL {format_duration(ttl)} is more than the {ca_type.name} CA signs "
            f"({format_duration(ca_type.max_ttl)})",
            hint=f"ask for {format_duration(ca_type.max_ttl)} or less",
        )
    if any(ch in common_name for ch in "/,=+\n\r\0") or common_name != common_name.strip():
        raise TetherError(
            f"common name {common_name!r} may not contain / , = + or surrounding spaces",
            hint="it is the whole subject (CN=<name>), which peers compare as a string",
        )
    if usage == "server" and not (dns_names or ip_addresses):
        raise TetherError(
            "a server certificate needs at least one DNS name or IP address",
            hint="name the host clients reach the server by",
        )
    for name in dns_names:
        if not name or any(ch.isspace() or ch in "/,@" for ch in name):
            raise TetherError(f"{name!r} is not a DNS name")
        if is_route_domain(name):
            # no client trusts these CAs for route names; refused so that none ever could
            raise TetherError(
                f"{name!r} is under {ROUTE_NAME_SUFFIX}, the proxies' route names, which "
                "only the cluster's own CA names, for its proxies",
                hint="name the server by its own host names",
            )
    for address in ip_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise TetherError(f"{address!r} is not an IP address") from None
