"""X.509 certificates for mutual TLS: issuing them from an identity, and verifying them.

The certificate is a plain TLS client (and optionally server) certificate that ``openssl
verify`` accepts; the Tether identity rides in a URI of its subject alternative names
(:data:`IDENTITY_URI_SCHEME`), where every TLS stack reads it without knowing it, as SPIFFE
puts its IDs. Certificates issued before carry it in a private extension
(:data:`TETHER_IDENTITY_OID`) instead, which is still read: its OID has an arc of 128 bits,
which Go's X.509 parser refuses (``malformed extension OID field``), so kubectl and every
other Go client could not load a Tether certificate.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._authority import X509CertAuthority, signing_hash
from ._errors import (
    HOSTILE_ISSUER_HINT,
    CertificateTampered,
    MalformedCertificate,
    UnknownAuthority,
)
from ._identity import Identity
from ._keys import SubjectPublicKey, load_cert, load_public_key
from ._verify import CLOCK_SKEW, Envelope, utc_now, verify_envelope

__all__ = [
    "IDENTITY_URI_SCHEME",
    "TETHER_IDENTITY_OID",
    "X509TrustAnchor",
    "X509TrustedCAs",
    "issue_x509_cert",
    "sign_subject_cert",
    "verify_x509_cert",
    "x509_host_names",
]

#: The scheme of the subject alternative name that carries the identity:
#: ``tether-identity:`` and the compact JSON of :meth:`Identity.to_json`, base64url-encoded
#: without padding (a URI is ASCII; names and traits need not be).
IDENTITY_URI_SCHEME = "tether-identity"

#: The private OID of the identity extension of certificates issued before the identity moved
#: to a subject alternative name (value: a DER UTF8String holding the compact JSON); read,
#: never written. It lives under the ``2.25`` arc (an OID derived from a random UUID, ITU-T
#: X.667), whose 128-bit arc Go's parser refuses.
TETHER_IDENTITY_OID = x509.ObjectIdentifier("2.25.202323475416061642231168755390122179760")


#: A trusted X.509 CA: its certificate, or the authority object holding it.
X509TrustAnchor: TypeAlias = x509.Certificate | X509CertAuthority
#: CAs trusted for any cluster, or each cluster's CAs by its name.
X509TrustedCAs: TypeAlias = Sequence[X509TrustAnchor] | Mapping[str, Sequence[X509TrustAnchor]]

_UNBOUND = ""  # cluster key for CAs given as a plain sequence: trusted for any cluster

_UTF8STRING = 0x0C


def _parse_der_utf8string(data: bytes) -> bytes:
    if len(data) < 2 or data[0] != _UTF8STRING:
        raise ValueError("identity extension is not a UTF8String")
    first = data[1]
    if first < 0x80:
        length, offset = first, 2
    else:
        size = first & 0x7F
        if size == 0 or size > 4 or len(data) < 2 + size:
            raise ValueError("identity extension has a bad length")
        length, offset = int.from_bytes(data[2 : 2 + size], "big"), 2 + size
    if len(data) != offset + length:
        raise ValueError("identity extension has a bad length")
    return data[offset:]


def issue_x509_cert(
    ca: X509CertAuthority,
    public_key: SubjectPublicKey | str | bytes,
    identity: Identity,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    server: bool = False,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """Sign an X.509 certificate for *public_key* that carries *identity*.

    Subject ``CN=<username>, O=<cluster>``; extended key usage clientAuth, plus serverAuth when
    *server* (which then needs at least one DNS name or IP address for hostname checks). Valid
    from one minute before *now* until ``identity.expires``.
    """
    if identity.cluster != ca.cluster:
        raise ValueError(
            f"identity of cluster {identity.cluster!r} cannot be signed by the CA of {ca.cluster!r}"
        )
    if server and not (dns_names or ip_addresses):
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    when = utc_now(now)
    if identity.expires <= when:
        raise ValueError(f"identity of {identity.label} has already expired")
    key = load_public_key(public_key) if isinstance(public_key, str | bytes) else public_key
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.cluster),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.username),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(when - CLOCK_SKEW)
        .not_valid_after(identity.expires)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA keys may do TLS 1.2 key transport; EC and Ed25519 keys only sign
                key_encipherment=isinstance(key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(_authority_key_identifier(ca.certificate), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    names.append(x509.UniformResourceIdentifier(_identity_uri(identity)))
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.private_key, signing_hash(ca.private_key))


def _identity_uri(identity: Identity) -> str:
    encoded = base64.urlsafe_b64encode(identity.to_json_bytes()).rstrip(b"=").decode()
    return f"{IDENTITY_URI_SCHEME}:{encoded}"


def sign_subject_cert(
    ca: X509CertAuthority,
    public_key: SubjectPublicKey | str | bytes,
    common_name: str,
    *,
    server: bool,
    expires: datetime.datetime,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """Sign a plain certificate for a peer outside Tether (a database server, or Tether's
    client of one): subject exactly ``CN=<common_name>``, no identity extension.

    Unlike :func:`issue_x509_cert` the subject carries no organisation: MariaDB's
    ``REQUIRE SUBJECT '/CN=alice'`` compares the whole subject. Extended key usage is
    serverAuth when *server* (which then needs a DNS name or IP address), else clientAuth.
    """
    if not common_name:
        raise ValueError("a certificate needs a common name")
    if server and not (dns_names or ip_addresses):
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    when = utc_now(now)
    if expires <= when:
        raise ValueError("the certificate would have expired already")
    key = load_public_key(public_key) if isinstance(public_key, str | bytes) else public_key
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(when - CLOCK_SKEW)
        .not_valid_after(expires)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(_authority_key_identifier(ca.certificate), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.private_key, signing_hash(ca.private_key))


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def verify_x509_cert(
    cert: x509.Certificate | bytes,
    *,
    trusted_cas: X509TrustedCAs,
    now: datetime.datetime | None = None,
) -> Identity:
    """Verify an X.509 certificate (object, DER or PEM) and return the identity it carries.

    The CA that signed it must be among *trusted_cas* and its subject's organisation must be
    the cluster the identity names, so one cluster's CA cannot vouch for another's users.
    *trusted_cas* is either a sequence of CAs, or a mapping from cluster name to that
    cluster's CAs; with a mapping, a certificate is accepted only if a CA stored under the
    cluster its identity names signed it (the subject of a CA another cluster handed over
    proves nothing). The returned identity's ``expires`` is the certificate's ``notAfter``.
    """
    parsed = _parse(cert)
    label = _unverified_label(parsed)
    signers: list[tuple[x509.Certificate, tuple[str, ...]]] = []

    def decode() -> Identity:
        raw = _identity_extension(parsed)
        if raw is None:
            raise MalformedCertificate(
                f"certificate of {label} has no Tether identity extension: a Tether CA did not "
                "issue it",
                hint="use the certificate that `tether login` (or the host's join) wrote",
            )
        identity = _decode_identity(raw)
        common_names = [
            str(attr.value) for attr in parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
        if common_names != [identity.username]:
            raise MalformedCertificate(
                f"certificate of {label} names {', '.join(common_names) or 'nobody'} in its "
                f"subject but {identity.username!r} in its identity",
                hint=HOSTILE_ISSUER_HINT,
            )
        signer, clusters = signers[0]
        if _UNBOUND not in clusters and identity.cluster not in clusters:
            raise UnknownAuthority(
                f"certificate of {label} claims cluster {identity.cluster!r} but is signed by "
                f"a CA of {', '.join(sorted(clusters))}",
                hint=HOSTILE_ISSUER_HINT,
            )
        ca_clusters = [
            attr.value for attr in signer.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        ]
        if ca_clusters != [identity.cluster]:
            raise UnknownAuthority(
                f"certificate of {label} claims cluster {identity.cluster!r} but is signed by "
                f"the CA of {', '.join(map(str, ca_clusters)) or 'an unnamed cluster'}",
                hint=HOSTILE_ISSUER_HINT,
            )
        return attrs.evolve(identity, expires=parsed.not_valid_after_utc)

    envelope = Envelope(
        what="certificate",
        label=label,
        not_before=parsed.not_valid_before_utc,
        not_after=parsed.not_valid_after_utc,
        check_signature=_signature_checker(parsed, trusted_cas, label, signers),
        decode=decode,
        principals=None,
        renew_hint="run `tether login` again",
    )
    return verify_envelope(envelope, principal=None, now=now)


def split_host_addresses(values: Sequence[str]) -> tuple[list[str], list[str]]:
    """(IP addresses, DNS names) among host names and addresses for a certificate's
    subject alternative names; empty values and duplicates dropped, order kept."""
    ips: list[str] = []
    names: list[str] = []
    for value in dict.fromkeys(v for v in values if v):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            names.append(value)
        else:
            ips.append(value)
    return ips, names


def x509_host_names(cert: x509.Certificate | bytes) -> frozenset[str]:
    """The DNS names and IP addresses a certificate names (its subject alternative names), as
    :func:`split_host_addresses` took them; empty for a certificate without any."""
    parsed = cert if isinstance(cert, x509.Certificate) else x509.load_der_x509_certificate(cert)
    try:
        sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    ips = (str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
    return frozenset([*sans.get_values_for_type(x509.DNSName), *ips])


def read_x509_identity(cert: x509.Certificate | bytes) -> Identity:
    """The identity in a certificate WITHOUT verifying it.

    Only for showing holders their own certificate (``tether status``), which must work after
    expiry too; anything that grants access goes through :func:`verify_x509_cert`.
    """
    parsed = _parse(cert)
    try:
        identity = _embedded_identity(parsed)
    except ValueError as exc:
        raise MalformedCertificate(
            f"no usable Tether identity in this certificate: {exc}"
        ) from None
    return attrs.evolve(identity, expires=parsed.not_valid_after_utc)


def _identity_extension(parsed: x509.Certificate) -> bytes | None:
    """The identity's JSON, unverified, from the subject alternative name or (a certificate
    issued before) the private extension; None when there is none.

    :raises ValueError: more than one identity, or one that is not well-formed.
    """
    prefix = f"{IDENTITY_URI_SCHEME}:"
    try:
        sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        uris: list[str] = []
    else:
        uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    carried = [u.removeprefix(prefix) for u in uris if u.startswith(prefix)]
    try:
        ext = parsed.extensions.get_extension_for_oid(TETHER_IDENTITY_OID).value
    except x509.ExtensionNotFound:
        legacy = None
    else:
        if not isinstance(ext, x509.UnrecognizedExtension):
            raise ValueError("identity extension has an unexpected type")
        legacy = _parse_der_utf8string(ext.value)
    if len(carried) + (legacy is not None) > 1:
        raise ValueError("the certificate carries more than one identity")
    if legacy is not None:
        return legacy
    if not carried:
        return None
    encoded = carried[0]
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        raise ValueError("the identity name is not base64url") from None


def _decode_identity(raw: bytes) -> Identity:
    return Identity.from_json(raw)


def _embedded_identity(parsed: x509.Certificate) -> Identity:
    """The identity JSON in the private extension, unverified; ValueError when absent."""
    raw = _identity_extension(parsed)
    if raw is None:
        raise ValueError("no Tether identity extension (not issued by Tether)")
    return _decode_identity(raw)


def _parse(cert: x509.Certificate | bytes) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    try:
        return load_cert(bytes(cert))
    except ValueError as exc:
        raise MalformedCertificate(
            f"not a valid X.509 certificate: {exc}",
            hint="pass the certificate file that `tether login` wrote",
        ) from exc


def _unverified_label(cert: x509.Certificate) -> str:
    """``user@cluster`` from the unverified subject, to name the holder in error messages."""
    try:
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    except ValueError:
        return "unknown user"
    user = str(cn[0].value) if cn else "unknown user"
    return f"{user}@{org[0].value!s}" if org else user


def _key_id(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_class(kind).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return value.key_identifier
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest
    return None


#: subject key identifiers of trusted CAs, by the identity of the certificate object (kept in
#: the entry, so an id is never reused while it is cached): a root with a thousand leaves
#: looks through a thousand CAs per certificate it verifies, and parsing each one's
#: extensions every time made verification the bulk of a join
_SUBJECT_KEY_IDS: dict[int, tuple[x509.Certificate, bytes | None]] = {}
_SUBJECT_KEY_IDS_MAX = 16384


def _subject_key_id(ca: x509.Certificate) -> bytes | None:
    """``_key_id(ca, SubjectKeyIdentifier)``, remembered per certificate object."""
    hit = _SUBJECT_KEY_IDS.get(id(ca))
    if hit is not None and hit[0] is ca:
        return hit[1]
    if len(_SUBJECT_KEY_IDS) >= _SUBJECT_KEY_IDS_MAX:
        _SUBJECT_KEY_IDS.clear()
    found = _key_id(ca, x509.SubjectKeyIdentifier)
    _SUBJECT_KEY_IDS[id(ca)] = (ca, found)
    return found


def _trust_anchors(trusted_cas: X509TrustedCAs) -> list[tuple[x509.Certificate, str]]:
    """Each trusted CA certificate with a cluster it is trusted for (``""``: any)."""
    by_cluster: Mapping[str, Sequence[X509TrustAnchor]] = (
        trusted_cas if isinstance(trusted_cas, Mapping) else {_UNBOUND: trusted_cas}
    )
    return [
        (ca.certificate if isinstance(ca, X509CertAuthority) else ca, cluster)
        for cluster, cas in by_cluster.items()
        for ca in cas
    ]


def _signature_checker(
    cert: x509.Certificate,
    trusted_cas: X509TrustedCAs,
    label: str,
    signers: list[tuple[x509.Certificate, tuple[str, ...]]],
) -> Callable[[], None]:
    """Build the envelope's signature step; it appends the verifying CA (and the clusters it
    is trusted for) to *signers*.

    The certificate's authority key identifier (or, lacking one, its issuer name) picks the
    CA it claims; a claimed, trusted CA whose signature does not verify means tampering, no
    claimed trusted CA at all means an unknown authority.
    """

    def check() -> None:
        anchors = _trust_anchors(trusted_cas)
        claimed_key = _key_id(cert, x509.AuthorityKeyIdentifier)
        if claimed_key is not None:
            candidates = [a for a in anchors if _subject_key_id(a[0]) == claimed_key]
        else:
            candidates = [a for a in anchors if a[0].subject == cert.issuer]
        if not candidates:
            raise UnknownAuthority(
                f"certificate of {label} is signed by a CA this cluster does not trust",
                hint="log in to this cluster or to one it trusts",
            )
        for ca, _ in candidates:
            try:
                cert.verify_directly_issued_by(ca)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                continue
            # one CA may be stored under several names: it is trusted for each of them
            signers.append((ca, tuple(name for other, name in candidates if other == ca)))
            return
        raise CertificateTampered(
            f"certificate of {label} does not match its CA signature; it was altered",
            hint="log in again to get a fresh certificate",
        )

    return check
