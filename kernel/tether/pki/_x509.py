"""X.509 certificates for mutual TLS: issuing them from an identity, and verifying them.

The certificate is a plain TLS client (and optionally server) certificate that ``openssl
verify`` accepts; the Tether identity rides in one non-critical extension under
:data:`TETHER_IDENTITY_OID`, so TLS stacks that do not know it simply ignore it.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Sequence
from typing import TypeAlias

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._authority import X509CertAuthority, signing_hash
from ._errors import CertificateTampered, MalformedCertificate, UnknownAuthority
from ._identity import Identity
from ._keys import SubjectPublicKey, load_cert, load_public_key
from ._verify import CLOCK_SKEW, Envelope, utc_now, verify_envelope

__all__ = [
    "TETHER_IDENTITY_OID",
    "X509TrustAnchor",
    "issue_x509_cert",
    "verify_x509_cert",
    "x509_host_names",
]

#: Tether's private OID for the identity extension (value: a DER UTF8String holding the
#: compact JSON of :meth:`Identity.to_json`). It lives under the ``2.25`` arc, where an OID is
#: derived from a random UUID (ITU-T X.667): unique without registering an enterprise number.
TETHER_IDENTITY_OID = x509.ObjectIdentifier("2.25.202323475416061642231168755390122179760")


#: A trusted X.509 CA: its certificate, or the authority object holding it.
X509TrustAnchor: TypeAlias = x509.Certificate | X509CertAuthority

_UTF8STRING = 0x0C


def _der_utf8string(text: bytes) -> bytes:
    """Wrap *text* in a DER UTF8String, so the extension value is well-formed ASN.1 that
    ``openssl asn1parse`` and ``openssl x509 -text`` display as text."""
    length = len(text)
    if length < 0x80:
        header = bytes([_UTF8STRING, length])
    else:
        size = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([_UTF8STRING, 0x80 | len(size)]) + size
    return header + text


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
        .add_extension(
            x509.UnrecognizedExtension(
                TETHER_IDENTITY_OID, _der_utf8string(identity.to_json_bytes())
            ),
            critical=False,
        )
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
    trusted_cas: Sequence[X509TrustAnchor],
    now: datetime.datetime | None = None,
) -> Identity:
    """Verify an X.509 certificate (object, DER or PEM) and return the identity it carries.

    The CA that signed it must be among *trusted_cas* and its subject's organisation must be
    the cluster the identity names, so one cluster's CA cannot vouch for another's users. The
    returned identity's ``expires`` is the certificate's ``notAfter``.
    """
    parsed = _parse(cert)
    label = _unverified_label(parsed)
    signers: list[x509.Certificate] = []

    def decode() -> Identity:
        identity = _embedded_identity(parsed)
        common_names = parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [attr.value for attr in common_names] != [identity.username]:
            raise ValueError("subject and identity name different users")
        ca_clusters = [
            attr.value
            for attr in signers[0].subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        ]
        if ca_clusters != [identity.cluster]:
            raise UnknownAuthority(
                f"certificate of {label} claims cluster {identity.cluster!r} but is signed by "
                f"the CA of {', '.join(map(str, ca_clusters)) or 'an unnamed cluster'}",
                hint="the issuing cluster is misconfigured or hostile; check its trust settings",
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


def _embedded_identity(parsed: x509.Certificate) -> Identity:
    """The identity JSON in the private extension, unverified; ValueError when absent."""
    try:
        ext = parsed.extensions.get_extension_for_oid(TETHER_IDENTITY_OID).value
    except x509.ExtensionNotFound:
        raise ValueError("no Tether identity extension (not issued by Tether)") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise ValueError("identity extension has an unexpected type")
    return Identity.from_json(_parse_der_utf8string(ext.value))


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


def _signature_checker(
    cert: x509.Certificate,
    trusted_cas: Sequence[X509TrustAnchor],
    label: str,
    signers: list[x509.Certificate],
) -> Callable[[], None]:
    """Build the envelope's signature step; it appends the verifying CA to *signers*.

    The certificate's authority key identifier (or, lacking one, its issuer name) picks the
    CA it claims; a claimed, trusted CA whose signature does not verify means tampering, no
    claimed trusted CA at all means an unknown authority.
    """

    def check() -> None:
        cas = [ca.certificate if isinstance(ca, X509CertAuthority) else ca for ca in trusted_cas]
        claimed_key = _key_id(cert, x509.AuthorityKeyIdentifier)
        if claimed_key is not None:
            candidates = [ca for ca in cas if _key_id(ca, x509.SubjectKeyIdentifier) == claimed_key]
        else:
            candidates = [ca for ca in cas if ca.subject == cert.issuer]
        if not candidates:
            raise UnknownAuthority(
                f"certificate of {label} is signed by a CA this cluster does not trust",
                hint="log in to this cluster or to one it trusts",
            )
        for ca in candidates:
            try:
                cert.verify_directly_issued_by(ca)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                continue
            signers.append(ca)
            return
        raise CertificateTampered(
            f"certificate of {label} does not match its CA signature; it was altered",
            hint="log in again to get a fresh certificate",
        )

    return check
