"""A cluster's three certificate authorities, and keeping their keys on disk.

Each cluster signs SSH user certificates, SSH host certificates and X.509 certificates with
three separate keys, so that trusting a cluster's users (a leaf trusting the root's user CA)
never implies trusting its hosts, and the reverse. The keys are created once, on the first start
of auth, and must then never change silently: every client and trusted cluster pins them.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import stat
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.errors import TrustError

from ._errors import UnknownAuthority
from ._keys import (
    WEB_ALGORITHM,
    PrivateKey,
    PublicKey,
    cert_to_pem,
    generate_private_key,
    key_algorithm,
    known_hosts_ca_line,
    load_cert,
    load_private_key,
    private_key_to_openssh,
    private_key_to_pem,
    spki_fingerprint,
    ssh_fingerprint,
    ssh_public_key_line,
    write_secret_file,
)

__all__ = [
    "ClusterAuthorities",
    "SSHCertAuthority",
    "X509CertAuthority",
    "ca_pin",
    "check_ca_pin",
    "declared_from_record",
    "declared_record",
    "declared_unit",
    "load_declared",
    "save_declared",
    "signing_hash",
]

#: How long a generated X.509 CA certificate is valid. Rotation is a separate, explicit act.
CA_VALIDITY = datetime.timedelta(days=3650)

_MANIFEST = "manifest.json"
_SSH_USER_KEY = "ssh_user_ca"
_SSH_HOST_KEY = "ssh_host_ca"
_TLS_KEY = "tls_ca.key"
_TLS_CERT = "tls_ca.crt"
_CA_FILES = (_SSH_USER_KEY, _SSH_HOST_KEY, _TLS_KEY, _TLS_CERT)


def signing_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """The digest to sign with: Ed25519 hashes internally, ECDSA P-256 pairs with SHA-256."""
    return None if not isinstance(key, ec.EllipticCurvePrivateKey) else hashes.SHA256()


@attrs.frozen(eq=False)
class SSHCertAuthority:
    """One SSH CA key of *cluster*; *purpose* is ``"user"`` or ``"host"``."""

    cluster: str
    purpose: str = attrs.field(validator=attrs.validators.in_(("user", "host")))
    private_key: PrivateKey = attrs.field(repr=False)

    @property
    def public_key(self) -> PublicKey:
        """The CA's public key, what verifiers trust."""
        return self.private_key.public_key()

    def public_key_line(self) -> str:
        """The CA as an OpenSSH key line, e.g. for sshd's ``TrustedUserCAKeys`` file."""
        return ssh_public_key_line(self.public_key, f"tether-{self.purpose}-ca@{self.cluster}")

    def known_hosts_line(self, cluster: str | None = None) -> str:
        """A ``known_hosts`` line that makes OpenSSH trust host certificates from this CA
        (see :func:`known_hosts_ca_line`)."""
        return known_hosts_ca_line(self.public_key_line(), cluster)

    @property
    def fingerprint(self) -> str:
        """``SHA256:<base64>`` of the CA's key, as ``ssh-keygen -l`` prints it."""
        return ssh_fingerprint(self.public_key)


@attrs.frozen(eq=False)
class X509CertAuthority:
    """The X.509 CA of *cluster*: its key and self-signed certificate."""

    cluster: str
    private_key: PrivateKey = attrs.field(repr=False)
    certificate: x509.Certificate

    def cert_pem(self) -> bytes:
        """The CA certificate as PEM, what clients and ``openssl verify -CAfile`` read."""
        return cert_to_pem(self.certificate)

    def pin(self) -> str:
        """The CA pin (see :func:`ca_pin`)."""
        return ca_pin(self.certificate)

    @classmethod
    def create(
        cls,
        cluster: str,
        private_key: PrivateKey,
        *,
        now: datetime.datetime | None = None,
        unit: str = "Tether X.509 CA",
    ) -> X509CertAuthority:
        """Make a self-signed CA certificate for *cluster* with *private_key*.

        The subject's organisation is the cluster name: verification checks it against the
        cluster an identity claims, so a CA cannot vouch for another cluster's users.
        *unit* (the organisational unit) tells a cluster's CAs apart: the kernel's, and those
        plugins declare (``Tether db CA``), which must never be mistaken for one another.
        """
        when = now or datetime.datetime.now(datetime.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                x509.NameAttribute(NameOID.COMMON_NAME, cluster),
            ]
        )
        public_key = private_key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(when - datetime.timedelta(minutes=1))
            .not_valid_after(when + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
            )
            .sign(private_key, signing_hash(private_key))
        )
        return cls(cluster=cluster, private_key=private_key, certificate=cert)


def ca_pin(ca_cert: x509.Certificate | PublicKey) -> str:
    """``"sha256:<hex>"`` of the CA's SubjectPublicKeyInfo DER.

    The pin names the key, not the certificate, so re-issuing the CA certificate with the same
    key keeps pins valid; it equals
    ``openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum``.
    """
    key = ca_cert.public_key() if isinstance(ca_cert, x509.Certificate) else ca_cert
    return spki_fingerprint(key)


def check_ca_pin(ca_cert: x509.Certificate, pin: str) -> None:
    """Raise :class:`UnknownAuthority` unless *ca_cert* has *pin* (case-insensitive hex)."""
    expected = pin.strip().lower()
    if not expected.startswith("sha256:"):
        raise UnknownAuthority(
            f"CA pin {pin!r} is not of the form sha256:<hex>",
            hint="copy the pin that `tetherctl tokens add` printed",
        )
    actual = ca_pin(ca_cert)
    if actual != expected:
        raise UnknownAuthority(
            f"CA certificate {ca_cert.subject.rfc4514_string()} has pin {actual}, "
            f"expected {expected}",
            hint="check the pin and the address of the cluster you are joining",
        )


@attrs.frozen(eq=False)
class ClusterAuthorities:
    """The three CAs of one cluster, and the X.509 CAs its plugins declare.

    :ivar declared: X.509 CAs by the name of their type (``db``, ``db_client``), created by
        :meth:`with_declared`; this cluster's own, never sent to another cluster.
    """

    cluster: str
    ssh_user: SSHCertAuthority
    ssh_host: SSHCertAuthority
    tls: X509CertAuthority
    declared: Mapping[str, X509CertAuthority] = attrs.field(factory=dict)

    def with_declared(
        self, keys_dir: pathlib.Path, names: Sequence[str], *, algorithm: str = WEB_ALGORITHM
    ) -> ClusterAuthorities:
        """These CAs and the declared X.509 CAs *names*, loaded from *keys_dir*
        (``ca_<name>.key`` and ``ca_<name>.crt``) or created there with keys of *algorithm*
        the first time a name is declared.

        The files of a type no longer declared (its plugin uninstalled) stay where they are,
        unread, so that reinstalling the plugin finds the same CA.
        """
        declared = dict(self.declared)
        for name in names:
            declared[name] = _load_or_create_declared(
                pathlib.Path(keys_dir), self.cluster, name, algorithm
            )
        return attrs.evolve(self, declared=declared)

    def fingerprints(self) -> dict[str, str]:
        """Each CA's fingerprint by type: ``tls`` its pin (what ``--ca-pin`` takes), ``user``
        and ``host`` as ``ssh-keygen -l`` prints them."""
        return {
            "tls": self.tls.pin(),
            "user": self.ssh_user.fingerprint,
            "host": self.ssh_host.fingerprint,
        }

    @classmethod
    def generate(
        cls, cluster: str, *, algorithm: str = "ed25519", tls_algorithm: str = WEB_ALGORITHM
    ) -> ClusterAuthorities:
        """Make three fresh CAs in memory (tests, and the first start of auth): the SSH CAs'
        keys of *algorithm*, the X.509 CA's of *tls_algorithm*.

        The X.509 CA signs the proxy's web certificate, which browsers refuse when the
        signature is Ed25519, hence its own default.
        """
        return cls(
            cluster=cluster,
            ssh_user=SSHCertAuthority(cluster, "user", generate_private_key(algorithm)),
            ssh_host=SSHCertAuthority(cluster, "host", generate_private_key(algorithm)),
            tls=X509CertAuthority.create(cluster, generate_private_key(tls_algorithm)),
        )

    def to_record(self) -> dict[str, str]:
        """The three CAs' keys and the X.509 CA certificate as text, for storing them where
        several auth servers of the cluster read them (:meth:`from_record` reads it back)."""
        return {
            "cluster": self.cluster,
            "ssh_user_key": private_key_to_openssh(self.ssh_user.private_key).decode(),
            "ssh_host_key": private_key_to_openssh(self.ssh_host.private_key).decode(),
            "tls_key": private_key_to_pem(self.tls.private_key).decode(),
            "tls_cert": self.tls.cert_pem().decode(),
        }

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], cluster: str, *, where: str
    ) -> ClusterAuthorities:
        """The CAs of :meth:`to_record`, checked as those read from files are (the cluster's,
        a certificate matching its key); *where* names the record in errors."""
        if record.get("cluster") != cluster:
            raise TrustError(
                f"the CA keys in {where} belong to cluster {record.get('cluster')!r}, "
                f"not {cluster!r}",
                hint="fix cluster_name in the configuration, or the storage it points to",
            )
        try:
            user_key = load_private_key(str(record["ssh_user_key"]).encode())
            host_key = load_private_key(str(record["ssh_host_key"]).encode())
            tls_key = load_private_key(str(record["tls_key"]).encode())
            tls_cert = load_cert(str(record["tls_cert"]).encode())
        except (KeyError, ValueError) as exc:
            raise TrustError(f"cannot load the CA keys in {where}: {exc}") from exc
        return cls._checked(cluster, user_key, host_key, tls_key, tls_cert, where=where)

    @classmethod
    def _checked(
        cls,
        cluster: str,
        user_key: PrivateKey,
        host_key: PrivateKey,
        tls_key: PrivateKey,
        tls_cert: x509.Certificate,
        *,
        where: str,
        cert_where: str | None = None,
    ) -> ClusterAuthorities:
        """The CAs, once checked; *where* (and *cert_where*, the certificate's file) name
        what they were read from in errors."""
        mixed = "it holds CAs of different clusters; restore a backup"
        orgs = tls_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if [attr.value for attr in orgs] != [cluster]:
            cert_in = cert_where or f"in {where}"
            raise TrustError(
                f"X.509 CA certificate {cert_in} is not for cluster {cluster!r}", hint=mixed
            )
        if ca_pin(tls_cert) != ca_pin(tls_key.public_key()):
            raise TrustError(f"X.509 CA certificate and key in {where} do not match", hint=mixed)
        for key in (user_key, host_key, tls_key):
            key_algorithm(key)  # refuses curves Tether does not use
        return cls(
            cluster=cluster,
            ssh_user=SSHCertAuthority(cluster, "user", user_key),
            ssh_host=SSHCertAuthority(cluster, "host", host_key),
            tls=X509CertAuthority(cluster=cluster, private_key=tls_key, certificate=tls_cert),
        )

    @classmethod
    def load(cls, keys_dir: pathlib.Path, cluster: str) -> ClusterAuthorities | None:
        """The CAs of *cluster* in *keys_dir*, or None when it holds none yet (checked as
        :meth:`load_or_create` does)."""
        keys_dir = pathlib.Path(keys_dir)
        if not keys_dir.exists():
            return None
        _check_private_path(keys_dir, directory=True)
        if not any((keys_dir / name).exists() for name in (_MANIFEST, *_CA_FILES)):
            return None
        return cls._load(keys_dir, cluster)

    def save(self, keys_dir: pathlib.Path) -> None:
        """Write these CAs into *keys_dir*, which must hold none yet (created 0700)."""
        keys_dir = pathlib.Path(keys_dir)
        if not keys_dir.exists():
            keys_dir.mkdir(mode=0o700, parents=True)
            os.chmod(keys_dir, 0o700)  # mkdir's mode is filtered by the umask
        _check_private_path(keys_dir, directory=True)
        self._write(keys_dir)

    @classmethod
    def load_or_create(
        cls,
        keys_dir: pathlib.Path,
        cluster: str,
        *,
        algorithm: str = "ed25519",
        tls_algorithm: str = WEB_ALGORITHM,
    ) -> ClusterAuthorities:
        """Load the CAs of *cluster* from *keys_dir*, generating them on first use.

        *algorithm* and *tls_algorithm* (see :meth:`generate`) apply only when generating;
        existing keys are loaded as they are.
        Refuses (``TrustError``) to use keys another user could read or replace, keys of a
        different cluster, and a half-written directory: silently regenerating any CA would
        invalidate every certificate and trust relation issued under it.
        """
        existing = cls.load(keys_dir, cluster)
        if existing is not None:
            return existing
        authorities = cls.generate(cluster, algorithm=algorithm, tls_algorithm=tls_algorithm)
        authorities.save(keys_dir)
        return authorities

    def _write(self, keys_dir: pathlib.Path) -> None:
        """Write every CA file, the manifest last: its presence means the set is complete."""
        write_secret_file(
            keys_dir / _SSH_USER_KEY, private_key_to_openssh(self.ssh_user.private_key)
        )
        write_secret_file(
            keys_dir / _SSH_HOST_KEY, private_key_to_openssh(self.ssh_host.private_key)
        )
        write_secret_file(keys_dir / _TLS_KEY, private_key_to_pem(self.tls.private_key))
        write_secret_file(keys_dir / _TLS_CERT, self.tls.cert_pem())
        manifest = {
            "version": 1,
            "cluster": self.cluster,
            "algorithm": key_algorithm(self.ssh_user.private_key),
            "tls_algorithm": key_algorithm(self.tls.private_key),
        }
        write_secret_file(keys_dir / _MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")

    @classmethod
    def _load(cls, keys_dir: pathlib.Path, cluster: str) -> ClusterAuthorities:
        missing = [name for name in (_MANIFEST, *_CA_FILES) if not (keys_dir / name).exists()]
        if missing:
            raise TrustError(
                f"CA keys in {keys_dir} are incomplete: {', '.join(missing)} missing",
                hint="restore them from a backup; if this cluster never ran, empty the directory",
            )
        for name in (_MANIFEST, *_CA_FILES):
            _check_private_path(keys_dir / name, directory=False)
        manifest = _read_manifest(keys_dir / _MANIFEST)
        if manifest.get("cluster") != cluster:
            raise TrustError(
                f"CA keys in {keys_dir} belong to cluster {manifest.get('cluster')!r}, "
                f"not {cluster!r}",
                hint="fix cluster_name in the configuration or point keys_dir elsewhere",
            )
        try:
            user_key = load_private_key((keys_dir / _SSH_USER_KEY).read_bytes())
            host_key = load_private_key((keys_dir / _SSH_HOST_KEY).read_bytes())
            tls_key = load_private_key((keys_dir / _TLS_KEY).read_bytes())
            tls_cert = load_cert((keys_dir / _TLS_CERT).read_bytes())
        except ValueError as exc:
            raise TrustError(f"cannot load CA keys from {keys_dir}: {exc}") from exc
        return cls._checked(
            cluster,
            user_key,
            host_key,
            tls_key,
            tls_cert,
            where=str(keys_dir),
            cert_where=f"in {keys_dir / _TLS_CERT}",
        )


def declared_unit(name: str) -> str:
    """The organisational unit in the subject of the declared CA *name*."""
    return f"Tether {name} CA"


def _load_or_create_declared(
    keys_dir: pathlib.Path, cluster: str, name: str, algorithm: str
) -> X509CertAuthority:
    existing = load_declared(keys_dir, cluster, name)
    if existing is not None:
        return existing
    ca = X509CertAuthority.create(
        cluster, generate_private_key(algorithm), unit=declared_unit(name)
    )
    save_declared(keys_dir, name, ca)
    return ca


def save_declared(keys_dir: pathlib.Path, name: str, ca: X509CertAuthority) -> None:
    """Write the declared X.509 CA *name* into *keys_dir* (``ca_<name>.key`` and ``.crt``)."""
    write_secret_file(keys_dir / f"ca_{name}.key", private_key_to_pem(ca.private_key))
    write_secret_file(keys_dir / f"ca_{name}.crt", ca.cert_pem())


def declared_record(ca: X509CertAuthority) -> dict[str, str]:
    """The declared X.509 CA as text, for storing it (:func:`declared_from_record`)."""
    return {
        "cluster": ca.cluster,
        "key": private_key_to_pem(ca.private_key).decode(),
        "cert": ca.cert_pem().decode(),
    }


def declared_from_record(
    record: Mapping[str, Any], cluster: str, name: str, *, where: str
) -> X509CertAuthority:
    """The declared X.509 CA *name* of :func:`declared_record`, checked as from files."""
    try:
        key = load_private_key(str(record["key"]).encode())
        cert = load_cert(str(record["cert"]).encode())
    except (KeyError, ValueError) as exc:
        raise TrustError(f"cannot load the {name} CA in {where}: {exc}") from exc
    return _checked_declared(cluster, name, key, cert, where=where)


def load_declared(keys_dir: pathlib.Path, cluster: str, name: str) -> X509CertAuthority | None:
    """The declared X.509 CA *name* in *keys_dir*, or None when it holds none yet."""
    key_path = keys_dir / f"ca_{name}.key"
    cert_path = keys_dir / f"ca_{name}.crt"
    present = [path for path in (key_path, cert_path) if path.exists()]
    if not present:
        return None
    if len(present) != 2:
        missing = cert_path if key_path.exists() else key_path
        raise TrustError(
            f"the {name} CA in {keys_dir} is incomplete: {missing.name} is missing",
            hint="restore it from a backup; if no certificate of this CA was ever used, "
            f"remove {present[0].name} and start again",
        )
    for path in present:
        _check_private_path(path, directory=False)
    try:
        key = load_private_key(key_path.read_bytes())
        cert = load_cert(cert_path.read_bytes())
    except ValueError as exc:
        raise TrustError(f"cannot load the {name} CA from {keys_dir}: {exc}") from exc
    return _checked_declared(
        cluster, name, key, cert, where=str(keys_dir), cert_where=str(cert_path)
    )


def _checked_declared(
    cluster: str,
    name: str,
    key: PrivateKey,
    cert: x509.Certificate,
    *,
    where: str,
    cert_where: str | None = None,
) -> X509CertAuthority:
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if [attr.value for attr in orgs] != [cluster]:
        raise TrustError(
            f"the {name} CA certificate {cert_where or 'in ' + where} is not for cluster "
            f"{cluster!r}",
            hint="it holds CAs of different clusters; restore a backup",
        )
    if ca_pin(cert) != ca_pin(key.public_key()):
        raise TrustError(
            f"the {name} CA certificate and key in {where} do not match",
            hint="it holds CAs of different clusters; restore a backup",
        )
    key_algorithm(key)
    return X509CertAuthority(cluster=cluster, private_key=key, certificate=cert)


def _read_manifest(path: pathlib.Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrustError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise TrustError(f"{path} is not a JSON object")
    return manifest


def _check_private_path(path: pathlib.Path, *, directory: bool) -> None:
    """Refuse CA material that another local user could read, or replace.

    Same rule as OpenSSH for private keys: owned by us, no group or other permissions, and a
    regular file (a symlink could point anywhere).
    """
    info = path.lstat()
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    if not kind_ok:
        expected = "a directory" if directory else "a regular file (not a symlink)"
        raise TrustError(f"{path} must be {expected}")
    if info.st_uid != os.getuid():
        raise TrustError(
            f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()})",
            hint="run tetherd as the user that owns its data directory",
        )
    mode = stat.S_IMODE(info.st_mode)
    wanted = 0o700 if directory else 0o600
    if mode & 0o077:
        raise TrustError(
            f"{path} has permissions {mode:04o}, too open for CA keys",
            hint=f"run chmod {wanted:o} {path}",
        )
