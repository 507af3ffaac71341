"""The X.509 certificate authorities plugins declare (``tether_cert_authorities``) beside the
kernel's three, for peers outside Tether that authenticate with certificates: a database
trusts the CA that signs Tether's client certificates, Tether verifies the database's server
certificate with another.

A neutral module, so that the hookspecs, the auth service and the CLIs can all name it. The
auth service creates each declared CA on its first start (:mod:`tether.auth.authorities`) and
signs with it (:mod:`tether.auth.signing`); ``tetherctl auth export --type`` and ``tetherctl
auth sign --format`` offer what is declared.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, cast

import attrs

from tether.errors import PluginError

if TYPE_CHECKING:
    from tether.plugins import TetherPluginManager

__all__ = [
    "KERNEL_CA_TYPES",
    "SIGNING_RULE",
    "CertAuthorityType",
    "CertUsage",
    "SignedCertificate",
    "cert_authority_types",
]

#: ``server``: a server's certificate (serverAuth, DNS names or IP addresses required);
#: ``client``: a client's (clientAuth).
CertUsage = Literal["server", "client"]

#: The kernel's own CA types: a plugin may not declare these names.
KERNEL_CA_TYPES = ("user", "host", "tls")

#: The role rule a user needs to have a certificate signed by a declared CA: verb ``sign``
#: on kind ``cert_authority`` (verb ``create`` would also let them replace CAs).
SIGNING_RULE = ("cert_authority", "sign")

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@attrs.frozen(kw_only=True)
class CertAuthorityType:
    """An X.509 CA a plugin declares (one per cluster, created by auth on its first start).

    :ivar name: the CA's type, e.g. ``db``: ``tetherctl auth export --type=db``, and the
        ``cert_authority`` resource ``db/<cluster>``.
    :ivar description: what it is for, in a few words (``tetherctl auth export --help``).
    :ivar usages: what it signs: ``server`` and/or ``client`` certificates.
    :ivar max_ttl: the longest validity a certificate it signs may have; longer is refused.
    :ivar host_roles: the host roles (``Identity.roles`` of a host) whose hosts may have
        certificates signed by it, e.g. ``("Db",)`` for the database service's client
        certificates. The cluster's admin, and users whose roles allow verb ``sign`` on kind
        ``cert_authority``, may always.
    :ivar sign_format: the ``tetherctl auth sign --format`` value that writes a server's
        files with a certificate signed by this CA (``PREFIX.crt``, ``PREFIX.key``,
        ``PREFIX.cas``), or None for no format.
    :ivar format_trusts: the CA types whose certificates that format writes to
        ``PREFIX.cas``: the CAs the server trusts for its clients (``("db_client",)``).
    """

    name: str
    description: str
    usages: tuple[CertUsage, ...] = ("server", "client")
    max_ttl: datetime.timedelta = datetime.timedelta(days=365)
    host_roles: tuple[str, ...] = ()
    sign_format: str | None = None
    format_trusts: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.usages or not set(self.usages) <= {"server", "client"}:
            raise ValueError(f"CA type {self.name!r}: usages must be server and/or client")
        if self.max_ttl <= datetime.timedelta(0):
            raise ValueError(f"CA type {self.name!r}: max_ttl must be positive")


@attrs.frozen
class SignedCertificate:
    """A certificate a declared CA signed, and that CA's certificates (PEM).

    :ivar certificate: the signed certificate (PEM).
    :ivar ca_certs: the signing CA's certificates: what a peer verifying it trusts.
    """

    certificate: str
    ca_certs: tuple[str, ...]


def cert_authority_types(pm: TetherPluginManager) -> Mapping[str, CertAuthorityType]:
    """Every declared CA type by name, in registration order.

    :raises PluginError: a bad or kernel name, a name or format declared twice, or a format
        trusting an undeclared type; names the plugins.
    """
    types: dict[str, CertAuthorityType] = {}
    owners: dict[str, str] = {}
    formats: dict[str, str] = {}
    for impl in pm.hook.tether_cert_authorities.get_hookimpls():
        declared = cast("list[CertAuthorityType] | None", impl.function()) or []
        for ca_type in declared:
            where = f"plugin {impl.plugin_name!r}"
            if not _NAME.fullmatch(ca_type.name) or ca_type.name in KERNEL_CA_TYPES:
                raise PluginError(
                    f"{where} declares CA type {ca_type.name!r}: a name is lower-case letters, "
                    f"digits and _, and not one of the kernel's ({', '.join(KERNEL_CA_TYPES)})"
                )
            if ca_type.name in types:
                raise PluginError(
                    f"CA type {ca_type.name!r} is declared by plugin "
                    f"{owners[ca_type.name]!r} and again by {where}"
                )
            if ca_type.sign_format is not None:
                if ca_type.sign_format in formats:
                    raise PluginError(
                        f"format {ca_type.sign_format!r} of tetherctl auth sign is declared "
                        f"by CA types {formats[ca_type.sign_format]!r} and {ca_type.name!r}"
                    )
                formats[ca_type.sign_format] = ca_type.name
            types[ca_type.name] = ca_type
            owners[ca_type.name] = impl.plugin_name
    for ca_type in types.values():
        unknown = [name for name in ca_type.format_trusts if name not in types]
        if unknown:
            raise PluginError(
                f"CA type {ca_type.name!r} (plugin {owners[ca_type.name]!r}) names "
                f"undeclared CA types in format_trusts: {', '.join(unknown)}"
            )
    return types
