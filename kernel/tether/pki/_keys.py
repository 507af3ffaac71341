"""Key generation, key and certificate encodings, and writing secrets to disk.

Tether keys are Ed25519 by default (small, fast, no parameter choices to get wrong) and ECDSA
P-256 where a peer cannot do Ed25519: browsers and many TLS stacks refuse Ed25519 certificates,
so the X.509 CA and the certificates of the proxy's web port are P-256. The same key pair
backs a user's SSH and X.509 certificates, so keys travel in two encodings: OpenSSH for
anything ``ssh`` reads, PEM (PKCS#8, SubjectPublicKeyInfo, X.509) for anything TLS reads.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

__all__ = [
    "ALGORITHMS",
    "WEB_ALGORITHM",
    "PrivateKey",
    "PublicKey",
    "SubjectPublicKey",
    "cert_to_pem",
    "certs_to_pem",
    "generate_private_key",
    "key_algorithm",
    "known_hosts_ca_line",
    "load_cert",
    "load_certs",
    "load_private_key",
    "load_public_key",
    "private_key_to_openssh",
    "private_key_to_pem",
    "public_key_to_pem",
    "spki_fingerprint",
    "ssh_fingerprint",
    "ssh_public_key_line",
    "write_secret_file",
]

#: Keys Tether generates and signs with.
PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
#: Keys Tether certifies. RSA is accepted here only because some users' agents hold RSA keys.
SubjectPublicKey: TypeAlias = (
    ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
)

ALGORITHMS: tuple[str, ...] = ("ed25519", "ecdsa-p256")
#: For a certificate a browser or a stock TLS client must accept, and for the CA that signs it:
#: Mozilla's "intermediate" profile allows ECDSA (P-256, P-384) and RSA, not Ed25519.
WEB_ALGORITHM = "ecdsa-p256"


def generate_private_key(algorithm: str = "ed25519") -> PrivateKey:
    """Generate a fresh key pair: ``"ed25519"`` (default) or ``"ecdsa-p256"``."""
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")


def key_algorithm(key: PrivateKey | PublicKey) -> str:
    """Name the algorithm of *key* in the vocabulary :func:`generate_private_key` takes."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    raise ValueError(f"unsupported elliptic curve {key.curve.name}; Tether uses P-256")


def _check_private_key(key: object) -> PrivateKey:
    """Refuse key types Tether does not sign with, so a stray RSA or DSA key fails loudly."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key_algorithm(key)  # names the curve it refuses
        return key
    raise ValueError(f"unsupported private key type {type(key).__name__}; use Ed25519 or P-256")


def _check_public_key(key: object) -> SubjectPublicKey:
    if isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key
    raise ValueError(f"unsupported public key type {type(key).__name__}")


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Encode *key* as unencrypted PKCS#8 PEM, the form TLS libraries load.

    Unencrypted because the daemons must start unattended; file permissions protect it.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_to_openssh(key: PrivateKey) -> bytes:
    """Encode *key* in OpenSSH's private key format, so ``ssh -i`` and ``ssh-add`` accept it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def load_private_key(data: str | bytes) -> PrivateKey:
    """Load an unencrypted private key in PKCS#8/traditional PEM or OpenSSH format."""
    raw = _as_bytes(data)
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in raw:
            key: object = serialization.load_ssh_private_key(raw, password=None)
        else:
            key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"cannot read private key: {exc}") from exc
    return _check_private_key(key)


def public_key_to_pem(key: SubjectPublicKey) -> bytes:
    """Encode *key* as SubjectPublicKeyInfo PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(data: str | bytes) -> SubjectPublicKey:
    """Load a public key from an OpenSSH line (``ssh-ed25519 AAAA... comment``) or PEM.

    Login requests carry the client's key in whichever form it has; both certificates are
    issued for the same key.
    """
    raw = _as_bytes(data).strip()
    try:
        if raw.startswith(b"-----BEGIN"):
            key: object = serialization.load_pem_public_key(raw)
        else:
            key = serialization.load_ssh_public_key(raw)
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"cannot read public key: {exc}") from exc
    return _check_public_key(key)


def ssh_public_key_line(public_key: SubjectPublicKey | PrivateKey, comment: str = "") -> str:
    """Format *public_key* as one OpenSSH line: ``"ssh-ed25519 AAAA... comment"``.

    This is the form of ``authorized_keys``, ``TrustedUserCAKeys`` and, prefixed with
    ``@cert-authority <hosts>``, of ``known_hosts``. A private key is accepted for convenience.
    """
    if isinstance(public_key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        public_key = public_key.public_key()
    if "\n" in comment or "\r" in comment:
        raise ValueError("an SSH key comment must be a single line")
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return f"{line} {comment}" if comment else line


def known_hosts_ca_line(ca_key_line: str, cluster: str | None = None) -> str:
    """A ``known_hosts`` line that makes OpenSSH trust the host certificates the SSH host CA
    ``ca_key_line`` signs: of ``cluster``'s hosts (``*.CLUSTER,CLUSTER``, the names ``tether
    config`` gives them), or of any host when ``cluster`` is None."""
    hosts = f"*.{cluster},{cluster}" if cluster else "*"
    return f"@cert-authority {hosts} {ca_key_line.strip()}"


def spki_fingerprint(key: PublicKeyTypes) -> str:
    """``"sha256:<hex>"`` of a public key's SubjectPublicKeyInfo DER: names the key whatever
    certificate carries it (``openssl pkey -pubin -outform der | sha256sum``)."""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def ssh_fingerprint(key: SubjectPublicKey | PrivateKey | str) -> str:
    """``"SHA256:<base64>"`` of an SSH public key (a key, or an OpenSSH public key line), as
    ``ssh-keygen -l`` prints it (``ssh-keygen -L`` for a certificate's signing CA, and OpenSSH
    for a host key it does not know yet).

    :raises ValueError: ``key`` is a string that is no OpenSSH public key line.
    """
    key_line = key if isinstance(key, str) else ssh_public_key_line(key)
    fields = key_line.split()
    if len(fields) < 2:
        raise ValueError(f"not an OpenSSH public key line: {key_line[:40]!r}")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except ValueError as exc:
        raise ValueError(f"not an OpenSSH public key line: {exc}") from exc
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """Encode *cert* as PEM, the form ``openssl`` and the ``ssl`` module read."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(data: str | bytes) -> x509.Certificate:
    """Load one X.509 certificate from PEM or DER (the first one, if PEM holds several)."""
    raw = _as_bytes(data)
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise ValueError(f"cannot read X.509 certificate: {exc}") from exc


def load_certs(data: str | bytes) -> list[x509.Certificate]:
    """Load every certificate of a PEM bundle, e.g. a file of trusted CAs."""
    try:
        return x509.load_pem_x509_certificates(_as_bytes(data))
    except ValueError as exc:
        raise ValueError(f"cannot read X.509 certificates: {exc}") from exc


def certs_to_pem(certs: Sequence[x509.Certificate]) -> bytes:
    """Concatenate *certs* as one PEM bundle."""
    return b"".join(cert_to_pem(cert) for cert in certs)


def write_secret_file(path: pathlib.Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write *data* to *path* atomically, readable only by the owner.

    The temporary file is created with the final mode (never world-readable, not even for an
    instant), fsynced, then renamed over *path*, so a crash leaves either the old or the new
    content and a reader never sees half a key.
    """
    path = pathlib.Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: pathlib.Path) -> None:
    """Persist a rename: without this, a power cut can forget the new directory entry."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself already happened
    finally:
        os.close(fd)
