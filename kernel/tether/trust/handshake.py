"""Trust between clusters: the handshake of the guide's step 4, on both sides.

The leaf's auth service, when an administrator creates a ``trusted_cluster``, calls the root's
web API with the invitation token and the leaf's public CAs; the root checks the token,
stores the leaf's host and X.509 CAs (so that its clients can verify the leaf's nodes and its
proxy can verify the leaf's tunnels), creates the ``remote_cluster`` and answers with its own
public CAs, which the leaf stores as trusted. Trust goes one way: the root never trusts the
leaf's user CA, so a leaf cannot log anyone in to the root.

A token lets a cluster join under a name, never take one over: a name that already has a
``remote_cluster`` joins again only with the CAs stored for it (the leaf re-creating its
trusted_cluster), and each X.509 CA must be a CA whose subject names the joining cluster.
Replacing a leaf's CAs is the root administrator's act (``tetherctl rm rc/NAME`` first).
Every refusal is audited as ``trusted_cluster.refused``, on whichever side refused.

Each side acts through a :class:`HandshakeParty`: the few things of its auth service the
handshake needs (storage, kinds, CAs, the token check, audit), never the service itself.

The leaf verifies the root's web certificate with the CA pin when the trusted_cluster names
one (``spec.ca_pin``, sha256 of the root X.509 CA's public key), else with the system's trust
store, as a browser would; a certificate that fails gets the guide's message.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import tether
from tether import pki
from tether.backend import Backend, Op
from tether.client.web import establish_trust, proxy_call
from tether.errors import AlreadyExists, CompareFailed, TetherError, TrustError
from tether.resources import (
    KindRegistry,
    Resource,
    make_resource,
    resource_from_bytes,
    resource_to_bytes,
)
from tether.wire import string_field

__all__ = [
    "MISCONFIGURED_TLS",
    "Audit",
    "HandshakeParty",
    "TrustExchange",
    "ca_resources",
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


class Audit(Protocol):
    """Records an audit event in the party's cluster."""

    def __call__(
        self, event_type: str, user: str, fields: Mapping[str, Any], *, success: bool = True
    ) -> Awaitable[None]: ...


@attrs.frozen
class HandshakeParty:
    """One cluster's side of the handshake: what it needs of its auth service.

    :param cluster_name: this cluster's name.
    :param authorities: its CAs (their public halves are sent to the other side).
    :param backend: where the other cluster's CAs and the ``remote_cluster`` are stored.
    :param registry: the resource kinds.
    :param check_token: checks an invitation token of a role (the root's side).
    :param audit: records the handshake's outcome.
    """

    cluster_name: str
    authorities: pki.ClusterAuthorities
    backend: Backend
    registry: KindRegistry
    check_token: Callable[[str, str], Awaitable[Resource]]
    audit: Audit

    def make(self, kind: str, name: str, spec: Mapping[str, Any]) -> Resource:
        return make_resource(self.registry, kind, name, spec)


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
        """Read one side's CAs; each must be usable, and each X.509 CA a CA of that cluster.

        :raises TetherError: the exchange is malformed or a CA is unusable, saying which.
        """
        try:
            ssh = data["ssh"]
            exchange = cls(
                cluster=str(data["cluster"]),
                version=str(data["version"]),
                ssh={str(k): tuple(str(line) for line in v) for k, v in ssh.items()},
                tls=tuple(str(pem) for pem in data["tls"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise TetherError(
                f"malformed trust exchange: {exc.__class__.__name__} {exc}",
                hint="both clusters must run Tether; check the address of the other one",
            ) from None
        if not _NAME.match(exchange.cluster):
            raise TetherError(f"cluster name {exchange.cluster!r} is not valid")
        for ca_type, lines in exchange.ssh.items():
            for line in lines:
                try:
                    pki.load_public_key(line)
                except ValueError as exc:
                    raise TetherError(
                        f"the SSH {ca_type} CA of {exchange.cluster!r} is unusable: {exc}"
                    ) from None
        for pem in exchange.tls:
            try:
                cert = pki.load_cert(pem.encode())
            except ValueError as exc:
                raise TetherError(
                    f"the X.509 CA of {exchange.cluster!r} is unusable: {exc}"
                ) from None
            _check_ca_of(cert, exchange.cluster)
        return exchange

    def require(self, ca_types: Sequence[str]) -> None:
        """:raises TetherError: one of ``ca_types`` ("user", "host", "tls") is missing."""
        for ca_type in ca_types:
            if not (self.tls if ca_type == "tls" else self.ssh.get(ca_type)):
                raise TetherError(
                    f"malformed trust exchange: cluster {self.cluster!r} sent no {ca_type} CA",
                    hint="both clusters must run Tether; check the address of the other one",
                )

    def fingerprints(self, ca_types: Sequence[str]) -> dict[str, frozenset[bytes]]:
        """The CAs of ``ca_types`` in a form that compares equal whatever their comments."""
        return {
            ca_type: _fingerprints(self.tls if ca_type == "tls" else self.ssh.get(ca_type, ()))
            for ca_type in ca_types
        }

    @classmethod
    def of(cls, cluster: str, authorities: pki.ClusterAuthorities) -> TrustExchange:
        """The public halves of cluster ``cluster``'s own CAs: the kernel's three only, never
        those plugins declare (``authorities.declared``), which are this cluster's alone."""
        a = authorities
        return cls(
            cluster=cluster,
            version=tether.__version__,
            ssh={"user": (a.ssh_user.public_key_line(),), "host": (a.ssh_host.public_key_line(),)},
            tls=(pki.cert_to_pem(a.tls.certificate).decode(),),
        )


def ca_resources(
    registry: KindRegistry, exchange: TrustExchange, types: Sequence[str]
) -> list[Resource]:
    """The ``cert_authority`` resources of ``types`` ("user", "host", "tls") that record a
    cluster's public CAs, its own or another's."""
    out = []
    for ca_type in types:
        ssh = list(exchange.ssh.get(ca_type, ())) if ca_type != "tls" else []
        tls = list(exchange.tls) if ca_type == "tls" else []
        spec = {
            "type": ca_type,
            "cluster_name": exchange.cluster,
            "active_keys": {"ssh": ssh, "tls": tls},
        }
        out.append(make_resource(registry, "cert_authority", exchange.cluster, spec))
    return out


def _check_ca_of(cert: x509.Certificate, cluster: str) -> None:
    """A cluster's X.509 CA is a CA and names that cluster: tunnels and users are checked
    against the subject of the CA that signed them."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise TetherError(
            f"the X.509 CA of {cluster!r} is not a CA certificate (BasicConstraints CA is not set)",
            hint="a cluster sends its own X.509 CA, which Tether makes on its first start",
        )
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if names != [cluster]:
        raise TetherError(
            f"the X.509 CA of {cluster!r} names cluster {', '.join(names) or 'none'} in its "
            f"subject, not {cluster!r}",
            hint="a cluster joins under its own name (cluster_name), with its own CA",
        )


def _fingerprints(keys: Sequence[str]) -> frozenset[bytes]:
    """SSH key lines without their comments, or X.509 PEMs as DER."""
    out = set()
    for key in keys:
        if key.startswith("-----BEGIN"):
            out.add(pki.load_cert(key.encode()).public_bytes(Encoding.DER))
        else:
            out.add(pki.ssh_public_key_line(pki.load_public_key(key)).encode())
    return frozenset(out)


async def store_cas(party: HandshakeParty, exchange: TrustExchange, types: Sequence[str]) -> None:
    """Store the other cluster's public CAs as ``cert_authority`` resources."""
    kind = party.registry.get("cert_authority")
    for res in ca_resources(party.registry, exchange, types):
        await party.backend.put(kind.key_for(res), resource_to_bytes(res))


async def _stored_fingerprints(party: HandshakeParty, cluster: str) -> dict[str, frozenset[bytes]]:
    """The fingerprints of the leaf CAs stored under ``cluster``; empty if none are."""
    kind = party.registry.get("cert_authority")
    found = {}
    for ca_type in LEAF_CA_TYPES:
        item = await party.backend.get(kind.key(f"{ca_type}/{cluster}"))
        if item is not None:
            keys = resource_from_bytes(item.value, party.registry).spec.active_keys
            found[ca_type] = _fingerprints([*keys.ssh, *keys.tls])
    return found


async def _record_leaf(party: HandshakeParty, leaf: TrustExchange) -> bool:
    """Store the leaf's CAs and its ``remote_cluster``, unless its name is taken; returns
    whether anything was new.

    :raises TetherError: the name is this cluster's root, or a leaf holds it with other CAs.
    """
    name = leaf.cluster
    trusted_kind = party.registry.get("trusted_cluster")
    if await party.backend.get(trusted_kind.key(name)) is not None:
        raise AlreadyExists(
            f"cluster {name!r} is a root of cluster {party.cluster_name!r}; it cannot also join "
            "as its leaf",
            hint="every cluster needs a name of its own (cluster_name in tether.yaml)",
        )
    remote_kind = party.registry.get("remote_cluster")
    remote_key = remote_kind.key(name)
    remote = await party.backend.get(remote_key)
    stored = await _stored_fingerprints(party, name)
    ops = []
    if remote is not None or stored:
        if stored != leaf.fingerprints(LEAF_CA_TYPES):
            raise AlreadyExists(
                f"cluster {name!r} is already a leaf of {party.cluster_name!r} with other CAs; "
                "a handshake cannot replace them",
                hint=f"to replace that leaf, run `tetherctl rm rc/{name}` on the root "
                "first, then create the trusted_cluster on the leaf again",
            )
    else:
        ca_kind = party.registry.get("cert_authority")
        for res in ca_resources(party.registry, leaf, LEAF_CA_TYPES):
            ops.append(Op.put(ca_kind.key_for(res), resource_to_bytes(res), expected_revision=0))
    if remote is None:
        res = party.make("remote_cluster", name, {})
        ops.append(Op.put(remote_key, resource_to_bytes(res), expected_revision=0))
    if not ops:
        return False
    try:
        await party.backend.apply(ops)
    except (AlreadyExists, CompareFailed):
        raise AlreadyExists(
            f"another cluster joined as {name!r} at the same moment",
            hint="create the trusted_cluster again: a leaf with the same CAs joins",
        ) from None
    return True


async def validate_leaf(party: HandshakeParty, request: Mapping[str, Any]) -> TrustExchange:
    """The root's side: check the invitation and the leaf's CAs, trust the leaf's host and
    X.509 CAs under its name (unless that name is a leaf with other CAs already), create the
    ``remote_cluster``, and answer with the root's CAs.

    :param request: the leaf's handshake: ``token`` and ``leaf`` (a :class:`TrustExchange`).
    :raises AccessDenied: the token is unknown, expired or not a trusted_cluster token.
    :raises AlreadyExists: the name is held by a leaf with other CAs, or by this cluster's root.
    :raises TetherError: a malformed exchange, versions too far apart, a CA that is no CA of
        the joining cluster, or a leaf that claims the root's name.
    """
    raw = request.get("leaf")
    claimed = raw.get("cluster") if isinstance(raw, Mapping) else None
    try:
        await party.check_token(string_field(dict(request), "token"), "TrustedCluster")
        leaf = TrustExchange.from_json(raw)
        leaf.require(LEAF_CA_TYPES)
        if leaf.cluster == party.cluster_name:
            raise TetherError(
                f"the leaf cluster has the root's name {leaf.cluster!r}",
                hint="every cluster needs a name of its own (cluster_name in tether.yaml)",
            )
        check_version(tether.__version__, leaf.version)
        new = await _record_leaf(party, leaf)
    except TetherError as exc:
        await party.audit(
            "trusted_cluster.refused",
            "",
            {"leaf": str(claimed or "")[:253], "reason": exc.message},
            success=False,
        )
        raise
    await party.audit(
        "trusted_cluster.joined",
        "",
        {"leaf": leaf.cluster, "version": leaf.version, "again": not new},
    )
    log.info("leaf cluster %s joined (Tether %s)", leaf.cluster, leaf.version)
    return TrustExchange.of(party.cluster_name, party.authorities)


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


async def establish_trust_with_root(
    party: HandshakeParty, trusted_cluster: Resource
) -> TrustExchange:
    """The leaf's side, run when a ``trusted_cluster`` is created: the handshake, then the
    root's CAs stored as trusted. A refusal (by either side) is audited here too."""
    name = trusted_cluster.metadata.name
    try:
        root = await _handshake(party, trusted_cluster)
    except TetherError as exc:
        await party.audit(
            "trusted_cluster.refused", "", {"root": name, "reason": exc.message}, success=False
        )
        raise
    await store_cas(party, root, ROOT_CA_TYPES)
    await party.audit("trusted_cluster.established", "", {"root": root.cluster})
    log.info("trusted root cluster %s at %s", root.cluster, trusted_cluster.spec.web_proxy_addr)
    return root


async def _handshake(party: HandshakeParty, trusted_cluster: Resource) -> TrustExchange:
    spec = trusted_cluster.spec
    name = trusted_cluster.metadata.name
    addr = str(spec.web_proxy_addr)
    context = await _root_context(addr, spec.ca_pin or None)
    body = await proxy_call(
        addr,
        "POST",
        "/webapi/trustedclusters/validate",
        context,
        json={
            "token": spec.token,
            "leaf": TrustExchange.of(party.cluster_name, party.authorities).to_json(),
        },
    )
    root = TrustExchange.from_json(body.get("root") if isinstance(body, Mapping) else None)
    root.require(ROOT_CA_TYPES)
    if root.cluster != name:
        raise TetherError(
            f"the root cluster at {addr} is called {root.cluster!r}, not {name!r}",
            hint=f"set metadata.name of the trusted_cluster to {root.cluster!r}",
        )
    check_version(root.version, tether.__version__)
    return root
