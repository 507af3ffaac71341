"""Certificate authorities and certificates: who a user or component is, provably.

Each cluster has three CAs (:class:`ClusterAuthorities`): SSH user, SSH host and X.509. Login
issues an SSH user certificate and an X.509 certificate for the same key, both carrying the
same :class:`Identity`; every service turns a certificate back into an identity with
:func:`verify_ssh_user_cert` or :func:`verify_x509_cert`, which share one verification path
(signature, identity, validity window, principal) and fail with a distinct
:class:`~tether.errors.TrustError` subclass per reason.
"""

from __future__ import annotations

from ._authority import (
    ClusterAuthorities,
    SSHCertAuthority,
    X509CertAuthority,
    ca_pin,
    check_ca_pin,
    declared_from_record,
    declared_record,
    declared_unit,
    load_declared,
    save_declared,
    signing_hash,
)
from ._errors import (
    CertificateExpired,
    CertificateNotYetValid,
    CertificateTampered,
    MalformedCertificate,
    PrincipalNotAllowed,
    UnknownAuthority,
)
from ._identity import IDENTITY_KINDS, HostIdentity, Identity
from ._keys import (
    WEB_ALGORITHM,
    PrivateKey,
    PublicKey,
    SubjectPublicKey,
    cert_to_pem,
    certs_to_pem,
    generate_private_key,
    key_algorithm,
    known_hosts_ca_line,
    load_cert,
    load_certs,
    load_private_key,
    load_public_key,
    private_key_to_openssh,
    private_key_to_pem,
    public_key_to_pem,
    spki_fingerprint,
    ssh_fingerprint,
    ssh_public_key_line,
    write_secret_file,
)
from ._ssh import (
    SSH_CLUSTER_EXTENSION,
    SSH_IDENTITY_EXTENSION,
    issue_ssh_host_cert,
    issue_ssh_user_cert,
    verify_ssh_host_cert,
    verify_ssh_user_cert,
)
from ._tls import (
    UnexpectedPeerKind,
    check_peer_kind,
    client_ssl_context,
    identity_from_peer,
    present_certificate,
    server_ssl_context,
)
from ._verify import CLOCK_SKEW
from ._x509 import (
    IDENTITY_URI_SCHEME,
    TETHER_IDENTITY_OID,
    issue_x509_cert,
    read_x509_identity,
    sign_subject_cert,
    split_host_addresses,
    verify_x509_cert,
    x509_host_names,
)

__all__ = [
    "CLOCK_SKEW",
    "IDENTITY_KINDS",
    "IDENTITY_URI_SCHEME",
    "SSH_CLUSTER_EXTENSION",
    "SSH_IDENTITY_EXTENSION",
    "TETHER_IDENTITY_OID",
    "WEB_ALGORITHM",
    "CertificateExpired",
    "CertificateNotYetValid",
    "CertificateTampered",
    "ClusterAuthorities",
    "HostIdentity",
    "Identity",
    "MalformedCertificate",
    "PrincipalNotAllowed",
    "PrivateKey",
    "PublicKey",
    "SSHCertAuthority",
    "SubjectPublicKey",
    "UnexpectedPeerKind",
    "UnknownAuthority",
    "X509CertAuthority",
    "ca_pin",
    "cert_to_pem",
    "certs_to_pem",
    "check_ca_pin",
    "check_peer_kind",
    "client_ssl_context",
    "declared_from_record",
    "declared_record",
    "declared_unit",
    "generate_private_key",
    "identity_from_peer",
    "issue_ssh_host_cert",
    "issue_ssh_user_cert",
    "issue_x509_cert",
    "key_algorithm",
    "known_hosts_ca_line",
    "load_cert",
    "load_certs",
    "load_declared",
    "load_private_key",
    "load_public_key",
    "present_certificate",
    "private_key_to_openssh",
    "private_key_to_pem",
    "public_key_to_pem",
    "read_x509_identity",
    "save_declared",
    "server_ssl_context",
    "sign_subject_cert",
    "signing_hash",
    "spki_fingerprint",
    "split_host_addresses",
    "ssh_fingerprint",
    "ssh_public_key_line",
    "verify_ssh_host_cert",
    "verify_ssh_user_cert",
    "verify_x509_cert",
    "write_secret_file",
    "x509_host_names",
]
