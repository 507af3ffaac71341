"""Trust between clusters: the handshake of the guide's step 4, on both sides.

The leaf's auth service, when an administrator creates a ``trusted_cluster``, calls the root's
web API with the invitation token and the leaf's public CAs; the root checks the token,
stores the leaf's host and X.509 CAs (so that its clients can verify the leaf's nodes and its
proxy can verify the leaf's tunnels), creates the ``remote_cluster`` and answers with its own
public CAs, which the leaf stores as trusted. Trust goes one way: the root never trusts the
leaf's user CA, so a leaf cannot log anyone in to the root.

The leaf verifies the root's web certificate with the CA pin when the trusted_cluster names
one (``spec.ca_pin``, sha256 of the root X.509 CA's public key), else with the system's trust
store, as a browser would; a certificate that fails gets the guide's message.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

import tether
from tether import pki
from tether.client.web import establish_trust, proxy_call
from tether.errors import TetherError, TrustError
from tether.resources import Resource, resource_to_bytes

if TYPE_CHECKING:
    from tether.auth.service import AuthService

__all__ = [
    "MISCONFIGURED_TLS",
    "TrustExchange",
    "check_version",
    "establish_trust_with_root",
    "validate_leaf",
]

log = logging.getLogger(__name__)

#: The guide's message for a root whose web certificate cannot be verified.
MISCONFIGURED_TLS = "The trusted cluster uses misconfigured HTTP/TLS certificate."
_VERSION = re.compile(r"^(\d+)\.")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
#: The CA types a root keeps of a leaf: host (its nodes) and tls (its tunnels), never user.
LEAF_CA_TYPES = ("host", "tls")
ROOT_CA_TYPES = ("user", "host", "tls")


def _major(version: str) -> int:
    found = _VERSION.match(version)
    if found is None:
        raise TetherError(f"version {version!r} is not a release version (MAJOR.MINOR.PATCH)")
    return int(found.group(1))


def check_version(root_version: str, leaf_version: str) -> None:
    """The guide's rule: the leaf runs the root's major version or the one before it.

    :raises TetherError: naming both versions.
    """
    root, leaf = _major(root_version), _major(leaf_version)
    if leaf not in (root, root - 1):
        raise TetherError(
            f"the leaf cluster runs Tether {leaf_version} and the root {root_version}: a leaf "
            "must run the root's major version or the one before it",
            hint="upgrade the older cluster first",
        )


@attrs.frozen
class TrustExchange:
    """One side's public CAs as the handshake carries them: type -> SSH lines and PEMs."""

    cluster: str
    version: str
    ssh: Mapping[str, tuple[str, ...]]
    tls: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "version": self.version,
            "ssh": {k: list(v) for k, v in self.ssh.items()},
            "tls": list(self.tls),
        }

    @classmethod
    def from_json(cls, data: Any) -> TrustExchange:
        try:
            ssh = data["ssh"]
            exchange = cls(
                cluster=str(data["cluster"]),
                version=str(data["version"]),
                ssh={str(k): tuple(str(line) for line in v) for k, v in ssh.items()},
                tls=tuple(str(pem) for pem in data["tls"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise TetherError(f"malformed trust exchange: {exc}") from None
        if not _NAME.match(exchange.cluster):
            raise TetherError(f"cluster name {exchange.cluster!r} is not valid")
        for pem in exchange.tls:
            try:
                pki.load_cert(pem.encode())
            except ValueError as exc:
                raise TetherError(
                    f"the X.509 CA of {exchange.cluster!r} is unusable: {exc}"
                ) from None
        return exchange

    @classmethod
    def of(cls, auth: AuthService) -> TrustExchange:
        a = auth.authorities
        return cls(
            cluster=auth.cluster_name,
            version=tether.__version__,
            ssh={"user": (a.ssh_user.public_key_line(),), "host": (a.ssh_host.public_key_line(),)},
            tls=(pki.cert_to_pem(a.tls.certificate).decode(),),
        )


def _ca_resources(
    auth: AuthService, exchange: TrustExchange, types: Sequence[str]
) -> list[Resource]:
    out = []
    for ca_type in types:
        ssh = list(exchange.ssh.get(ca_type, ())) if ca_type != "tls" else []
        tls = list(exchange.tls) if ca_type == "tls" else []
        spec = {
            "type": ca_type,
            "cluster_name": exchange.cluster,
            "active_keys": {"ssh": ssh, "tls": tls},
        }
        out.append(auth.make("cert_authority", exchange.cluster, spec))
    return out


async def store_cas(auth: AuthService, exchange: TrustExchange, types: Sequence[str]) -> None:
    """Store the other cluster's public CAs as ``cert_authority`` resources."""
    kind = auth.registry.get("cert_authority")
    for res in _ca_resources(auth, exchange, types):
        await auth.backend.put(kind.key_for(res), resource_to_bytes(res))


async def validate_leaf(auth: AuthService, token: str, leaf: TrustExchange) -> TrustExchange:
    """The root's side: check the invitation, trust the leaf's host and X.509 CAs, create the
    ``remote_cluster``, and answer with the root's CAs.

    :raises AccessDenied: the token is unknown, expired or not a trusted_cluster token.
    :raises TetherError: the versions are too far apart, or the leaf claims the root's name.
    """
    try:
        await auth.check_token(token, "TrustedCluster")
        if leaf.cluster == auth.cluster_name:
            raise TetherError(
                f"the leaf cluster has the root's name {leaf.cluster!r}",
                hint="every cluster needs a name of its own (cluster_name in tether.yaml)",
            )
        check_version(tether.__version__, leaf.version)
    except TetherError as exc:
        await auth.audit_event(
            "trusted_cluster.refused",
            "",
            {"leaf": leaf.cluster, "reason": exc.message},
            success=False,
        )
        raise
    await store_cas(auth, leaf, LEAF_CA_TYPES)
    kind = auth.registry.get("remote_cluster")
    existing = await auth.backend.get(kind.key(leaf.cluster))
    if existing is None:
        remote = auth.make("remote_cluster", leaf.cluster, {})
        await auth.backend.put(kind.key(leaf.cluster), resource_to_bytes(remote))
    await auth.audit_event(
        "trusted_cluster.joined", "", {"leaf": leaf.cluster, "version": leaf.version}
    )
    await auth.trust_changed()
    log.info("leaf cluster %s joined (Tether %s)", leaf.cluster, leaf.version)
    return TrustExchange.of(auth)


async def _root_context(web_proxy_addr: str, ca_pin: str | None) -> ssl.SSLContext:
    try:
        return await establish_trust(web_proxy_addr, insecure=False, ca_pin=ca_pin)
    except TrustError as exc:
        if ca_pin:
            raise  # the pin check says exactly what is wrong
        raise TrustError(
            f"{MISCONFIGURED_TLS} The root proxy at {web_proxy_addr} presents a certificate "
            f"this host does not trust ({exc.message})",
            hint="set spec.ca_pin to the root's CA pin (tetherctl tokens add prints it), or "
            "give the root proxy a certificate the system trusts (proxy_service.https_cert_file)",
        ) from None


async def establish_trust_with_root(auth: AuthService, trusted_cluster: Resource) -> TrustExchange:
    """The leaf's side, run when a ``trusted_cluster`` is created: the handshake, then the
    root's CAs stored as trusted."""
    spec = trusted_cluster.spec
    name = trusted_cluster.metadata.name
    addr = str(spec.web_proxy_addr)
    context = await _root_context(addr, spec.ca_pin or None)
    body = await proxy_call(
        addr,
        "POST",
        "/webapi/trustedclusters/validate",
        context,
        json={"token": spec.token, "leaf": TrustExchange.of(auth).to_json()},
    )
    root = TrustExchange.from_json(body.get("root"))
    if root.cluster != name:
        raise TetherError(
            f"the root cluster at {addr} is called {root.cluster!r}, not {name!r}",
            hint=f"set metadata.name of the trusted_cluster to {root.cluster!r}",
        )
    check_version(root.version, tether.__version__)
    await store_cas(auth, root, ROOT_CA_TYPES)
    await auth.audit_event("trusted_cluster.established", "", {"root": root.cluster})
    await auth.trust_changed()
    log.info("trusted root cluster %s at %s", root.cluster, addr)
    return root
