"""OpenSSH certificates: issuing them for users and hosts, and verifying them.

The certificates are standard OpenSSH ones (``ssh-keygen -L`` reads them; ``sshd`` with
``TrustedUserCAKeys`` accepts them). Tether's own data rides in extensions named with an
``@tether.dev`` domain, which OpenSSH ignores, as the certificate protocol requires for unknown
extensions. No critical options are issued, and certificates that carry any are refused:
Tether cannot enforce them, and ignoring a critical option would grant more than was signed.
"""

from __future__ import annotations

import datetime
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

import attrs
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
)

from ._authority import SSHCertAuthority
from ._errors import (
    HOSTILE_ISSUER_HINT,
    CertificateTampered,
    MalformedCertificate,
    UnknownAuthority,
)
from ._identity import HostIdentity, Identity
from ._keys import SubjectPublicKey, load_public_key
from ._verify import CLOCK_SKEW, Envelope, utc_now, verify_envelope

__all__ = [
    "SSH_CLUSTER_EXTENSION",
    "SSH_IDENTITY_EXTENSION",
    "SSHTrustAnchor",
    "issue_ssh_host_cert",
    "issue_ssh_user_cert",
    "verify_ssh_host_cert",
    "verify_ssh_user_cert",
]

#: User certificates: compact JSON of :meth:`Identity.to_json`.
SSH_IDENTITY_EXTENSION = "tether-identity@tether.dev"
#: Host certificates: the name of the cluster whose host CA signed it.
SSH_CLUSTER_EXTENSION = "tether-cluster@tether.dev"


#: A trusted SSH CA: its authority object, public key, or OpenSSH public key line.
SSHTrustAnchor: TypeAlias = (
    SSHCertAuthority
    | ed25519.Ed25519PublicKey
    | ec.EllipticCurvePublicKey
    | rsa.RSAPublicKey
    | str
    | bytes
)
SSHTrustedCAs: TypeAlias = Sequence[SSHTrustAnchor] | Mapping[str, Sequence[SSHTrustAnchor]]

_UNBOUND = ""  # cluster key for CAs given as a plain sequence: trusted for any cluster


def _subject_key(public_key: SubjectPublicKey | str | bytes) -> SubjectPublicKey:
    return load_public_key(public_key) if isinstance(public_key, str | bytes) else public_key


def _timestamp(when: datetime.datetime) -> int:
    return int(when.timestamp())


def issue_ssh_user_cert(
    ca: SSHCertAuthority,
    public_key: SubjectPublicKey | str | bytes,
    identity: Identity,
    *,
    now: datetime.datetime | None = None,
    permit_port_forwarding: bool = True,
    permit_agent_forwarding: bool = False,
) -> str:
    """Sign an OpenSSH user certificate for *public_key* that carries *identity*.

    Returns the certificate line ``"ssh-ed25519-cert-v01@openssh.com AAAA... user@cluster"``.
    Principals are ``identity.logins``; an identity without logins gets one unusable principal,
    because an empty principal list would mean *every* login to OpenSSH. Valid from one minute
    before *now* (clock skew) until ``identity.expires``.
    """
    if ca.purpose != "user":
        raise ValueError(f"user certificates must be signed by a user CA, not a {ca.purpose} CA")
    if identity.cluster != ca.cluster:
        raise ValueError(
            f"identity of cluster {identity.cluster!r} cannot be signed by the CA of {ca.cluster!r}"
        )
    when = utc_now(now)
    if identity.expires <= when:
        raise ValueError(f"identity of {identity.label} has already expired")
    principals = identity.logins or (f"-tether-nologin-{uuid.uuid4()}",)
    builder = (
        SSHCertificateBuilder()
        .public_key(_subject_key(public_key))
        .serial(secrets.randbits(64))
        .type(SSHCertificateType.USER)
        .key_id(identity.username.encode())
        .valid_principals([login.encode() for login in principals])
        .valid_after(_timestamp(when - CLOCK_SKEW))
        .valid_before(_timestamp(identity.expires))
        .add_extension(b"permit-pty", b"")
        .add_extension(SSH_IDENTITY_EXTENSION.encode(), identity.to_json_bytes())
    )
    if permit_port_forwarding:
        builder = builder.add_extension(b"permit-port-forwarding", b"")
    if permit_agent_forwarding:
        builder = builder.add_extension(b"permit-agent-forwarding", b"")
    cert = builder.sign(ca.private_key)
    return f"{cert.public_bytes().decode()} {identity.label}"


def issue_ssh_host_cert(
    ca: SSHCertAuthority,
    public_key: SubjectPublicKey | str | bytes,
    *,
    host_id: str,
    principals: Sequence[str],
    cluster: str,
    ttl: datetime.timedelta,
    now: datetime.datetime | None = None,
) -> str:
    """Sign an OpenSSH host certificate for a node or proxy of *cluster*.

    Key id is *host_id*; principals are *host_id* followed by *principals* (host names and
    addresses clients dial), so a host can always be reached by its id. The cluster name rides
    in the :data:`SSH_CLUSTER_EXTENSION` extension.
    """
    if ca.purpose != "host":
        raise ValueError(f"host certificates must be signed by a host CA, not a {ca.purpose} CA")
    if cluster != ca.cluster:
        raise ValueError(
            f"host of cluster {cluster!r} cannot be signed by the CA of {ca.cluster!r}"
        )
    if not host_id or any(ch.isspace() for ch in host_id):
        raise ValueError(f"host_id must be a non-empty name without whitespace: {host_id!r}")
    if ttl <= datetime.timedelta(0):
        raise ValueError("ttl must be positive")
    when = utc_now(now)
    names = list(dict.fromkeys([host_id, *principals]))
    cert = (
        SSHCertificateBuilder()
        .public_key(_subject_key(public_key))
        .serial(secrets.randbits(64))
        .type(SSHCertificateType.HOST)
        .key_id(host_id.encode())
        .valid_principals([name.encode() for name in names])
        .valid_after(_timestamp(when - CLOCK_SKEW))
        .valid_before(_timestamp(when + ttl))
        .add_extension(SSH_CLUSTER_EXTENSION.encode(), cluster.encode())
        .sign(ca.private_key)
    )
    return f"{cert.public_bytes().decode()} {host_id}@{cluster}"


def verify_ssh_user_cert(
    cert_line: str | bytes,
    *,
    trusted_cas: SSHTrustedCAs,
    principal: str | None = None,
    now: datetime.datetime | None = None,
) -> Identity:
    """Verify an OpenSSH user certificate and return the identity it carries.

    *trusted_cas* is either a sequence of CAs trusted for any cluster, or a mapping from
    cluster name to that cluster's CAs; with a mapping, a certificate is accepted only if it
    was signed by a CA of the cluster its identity names (a leaf trusting the root's user CA
    must not accept root-signed certificates that claim to be from the leaf). *principal*, when
    given, is the login the holder asks for. The returned identity's ``expires`` is the
    certificate's ``valid_before``.
    """
    cert = _parse(cert_line, SSHCertificateType.USER, "user certificate")
    claimed = _unverified_identity(cert)
    username = _text(cert.key_id) or "unknown user"
    label = f"{username}@{claimed.cluster}" if claimed else username
    signers: list[str] = []

    def decode() -> Identity:
        _refuse_critical_options(cert, label)
        raw = cert.extensions.get(SSH_IDENTITY_EXTENSION.encode())
        if raw is None:
            raise _not_from_tether(label, SSH_IDENTITY_EXTENSION)
        identity = Identity.from_json(raw)
        if identity.username != _text(cert.key_id):
            raise MalformedCertificate(
                f"certificate of {label} names {_text(cert.key_id)!r} in its key id but "
                f"{identity.username!r} in its identity",
                hint=HOSTILE_ISSUER_HINT,
            )
        _check_cluster_binding(signers, identity.cluster, label)
        return attrs.evolve(identity, expires=_from_timestamp(cert.valid_before))

    envelope = Envelope(
        what="certificate",
        label=label,
        not_before=_from_timestamp(cert.valid_after),
        not_after=_from_timestamp(cert.valid_before),
        check_signature=_signature_checker(cert, trusted_cas, label, signers),
        decode=decode,
        principals=tuple(_text(p) for p in cert.valid_principals),
        renew_hint="run `tether login` again",
    )
    return verify_envelope(envelope, principal=principal, now=now)


def verify_ssh_host_cert(
    cert_line: str | bytes,
    *,
    trusted_cas: SSHTrustedCAs,
    principal: str | None = None,
    now: datetime.datetime | None = None,
) -> HostIdentity:
    """Verify an OpenSSH host certificate; *principal* is the host name the client dialled.

    *trusted_cas* works as in :func:`verify_ssh_user_cert`, keyed by the cluster the
    certificate's :data:`SSH_CLUSTER_EXTENSION` names.
    """
    cert = _parse(cert_line, SSHCertificateType.HOST, "host certificate")
    host_id = _text(cert.key_id) or "unknown host"
    claimed_cluster = _text(cert.extensions.get(SSH_CLUSTER_EXTENSION.encode(), b""))
    label = f"{host_id}@{claimed_cluster}" if claimed_cluster else host_id
    signers: list[str] = []

    def decode() -> HostIdentity:
        _refuse_critical_options(cert, label)
        if not claimed_cluster:
            raise _not_from_tether(label, SSH_CLUSTER_EXTENSION)
        _check_cluster_binding(signers, claimed_cluster, label)
        return HostIdentity(
            host_id=host_id,
            cluster=claimed_cluster,
            principals=tuple(_text(p) for p in cert.valid_principals),
            expires=_from_timestamp(cert.valid_before),
        )

    envelope = Envelope(
        what="host certificate",
        label=label,
        not_before=_from_timestamp(cert.valid_after),
        not_after=_from_timestamp(cert.valid_before),
        check_signature=_signature_checker(cert, trusted_cas, label, signers),
        decode=decode,
        principals=tuple(_text(p) for p in cert.valid_principals),
        renew_hint="a host renews its certificate while it runs; one that was stopped past "
        "the expiry joins again with a new token",
    )
    return verify_envelope(envelope, principal=principal, now=now)


def _parse(cert_line: str | bytes, expected: SSHCertificateType, what: str) -> SSHCertificate:
    """Parse the container only; nothing in it is trusted until the signature is checked."""
    raw = cert_line.encode() if isinstance(cert_line, str) else bytes(cert_line)
    hint = "pass the -cert.pub line that `tether login` wrote"
    try:
        cert = serialization.load_ssh_public_identity(raw.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise MalformedCertificate(f"not a valid SSH {what}: {exc}", hint=hint) from exc
    if not isinstance(cert, SSHCertificate):
        raise MalformedCertificate(f"not a valid SSH {what}: this is a plain public key", hint=hint)
    if cert.type != expected:
        other = "host" if cert.type == SSHCertificateType.HOST else "user"
        raise MalformedCertificate(f"not a valid SSH {what}: this is an SSH {other} certificate")
    return cert


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _from_timestamp(value: int) -> datetime.datetime:
    """OpenSSH uses 2**64-1 for "forever", beyond what datetime can hold."""
    try:
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.datetime.max.replace(tzinfo=datetime.UTC)


def _unverified_identity(cert: SSHCertificate) -> Identity | None:
    """Best-effort read of the claimed identity, to name the holder in error messages."""
    raw = cert.extensions.get(SSH_IDENTITY_EXTENSION.encode())
    if raw is None:
        return None
    try:
        return Identity.from_json(raw)
    except ValueError:
        return None


def _key_bytes(key: SSHTrustAnchor) -> bytes:
    """Canonical OpenSSH wire form of a CA key, for comparing keys whatever form they came in."""
    if isinstance(key, SSHCertAuthority):
        key = key.public_key
    elif isinstance(key, str | bytes):
        key = load_public_key(key)
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _trusted_keys(trusted_cas: SSHTrustedCAs) -> dict[bytes, list[str]]:
    """Map each trusted CA key to the clusters it is trusted for (``""``: any cluster)."""
    by_cluster: Mapping[str, Sequence[SSHTrustAnchor]] = (
        trusted_cas if isinstance(trusted_cas, Mapping) else {_UNBOUND: trusted_cas}
    )
    keys: dict[bytes, list[str]] = {}
    for cluster, anchors in by_cluster.items():
        if isinstance(anchors, str | bytes):
            raise TypeError("trusted CAs must be a sequence of keys, not a single key line")
        for anchor in anchors:
            keys.setdefault(_key_bytes(anchor), []).append(cluster)
    return keys


def _signature_checker(
    cert: SSHCertificate, trusted_cas: SSHTrustedCAs, label: str, signers: list[str]
) -> Callable[[], None]:
    """Build the envelope's signature step; it records the signer's clusters in *signers*."""

    def check() -> None:
        trusted = _trusted_keys(trusted_cas)
        try:
            signer = cert.signature_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise MalformedCertificate(f"certificate of {label} has an unreadable CA key") from exc
        if signer not in trusted:
            raise UnknownAuthority(
                f"certificate of {label} is signed by a CA this cluster does not trust",
                hint="log in to this cluster or to one it trusts",
            )
        try:
            cert.verify_cert_signature()
        except (InvalidSignature, ValueError) as exc:
            raise CertificateTampered(
                f"certificate of {label} does not match its CA signature; it was altered",
                hint="log in again to get a fresh certificate",
            ) from exc
        signers.extend(trusted[signer])

    return check


def _check_cluster_binding(signers: list[str], cluster: str, label: str) -> None:
    if _UNBOUND in signers or cluster in signers:
        return
    raise UnknownAuthority(
        f"certificate of {label} claims cluster {cluster!r} but is signed by a CA of "
        f"{', '.join(sorted(signers))}",
        hint=HOSTILE_ISSUER_HINT,
    )


def _not_from_tether(label: str, extension: str) -> MalformedCertificate:
    return MalformedCertificate(
        f"certificate of {label} has no {extension} extension: a Tether CA did not issue it",
        hint="use the certificate that `tether login` (or the host's join) wrote",
    )


def _refuse_critical_options(cert: SSHCertificate, label: str) -> None:
    if cert.critical_options:
        names = ", ".join(sorted(_text(name) for name in cert.critical_options))
        raise MalformedCertificate(
            f"certificate of {label} carries critical options Tether does not enforce: {names}",
            hint="Tether issues none; ignoring one would grant more than was signed",
        )
