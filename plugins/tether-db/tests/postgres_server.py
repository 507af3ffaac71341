"""One private PostgreSQL per test run, configured as the database service expects a
database to be: TLS with a server certificate from a "db" CA, and certificate
authentication (``hostssl ... cert``) of clients whose certificates a "db client" CA signed,
their subject exactly ``CN=<database user>``.

The server runs as the ``postgres`` OS user (``initdb`` and ``postgres`` refuse root) in a
temporary directory it owns, on a free port of 127.0.0.1, with a Unix socket in that
directory on which the ``postgres`` superuser is trusted, for setup only.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["FixtureCA", "PostgresServer", "free_port", "postgres_server", "start_postgres"]

#: The name the server's certificate carries, as a database's ``server_name``.
SERVER_NAME = "postgres.db.test"
#: A user pg_hba.conf asks for a password (a database not set up for certificates).
PASSWORD_USER = "carol"


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on (as long as nobody takes it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@attrs.frozen
class FixtureCA:
    """A certificate authority made for the tests."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> FixtureCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    def issue(
        self, common_name: str, *, dns: str | None = None
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A leaf certificate whose subject is exactly ``CN=common_name``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
        )
        if dns is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return key, builder.sign(self.key, hashes.SHA256())

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@attrs.frozen
class PostgresServer:
    """The running server and what a test needs to reach it."""

    host: str
    port: int
    server_name: str
    socket_dir: Path
    db_ca: FixtureCA | None
    client_ca: FixtureCA | None
    workdir: Path

    def client_context(self, db_user: str, *, client_ca: FixtureCA | None = None) -> ssl.SSLContext:
        """What ``Session.server_tls(db_user)`` returns in production: a client certificate
        with ``CN=db_user`` (from the db client CA unless ``client_ca`` is another) and
        verification of the server against the db CA."""
        issuer = client_ca or self.client_ca
        assert issuer is not None and self.db_ca is not None, "a server of the test CAs"
        key, cert = issuer.issue(db_user)
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = Path(tmp, "c.pem"), Path(tmp, "k.pem")
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_path.write_bytes(_key_pem(key))
            context = ssl.create_default_context(cadata=self.db_ca.pem().decode())
            context.load_cert_chain(cert_path, key_path)
        return context

    def admin(self, sql: str, *, database: str = "postgres") -> str:
        """Run SQL as the superuser over the setup socket; returns psql's unaligned output."""
        result = subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "psql",
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql as postgres failed: {result.stderr.strip()}")
        return result.stdout


def _server_bin_dir() -> Path:
    """Where initdb, pg_ctl and postgres are: on PATH, or where Debian keeps them."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
    )
    if not versions:
        pytest.fail(
            "PostgreSQL's server (initdb, pg_ctl, postgres) is not installed: "
            "run scripts/system-deps.sh as root, or install the postgresql package"
        )
    return versions[-1].parent


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Start the run's private PostgreSQL with users ``alice``, ``bob`` and ``carol``
    (password only) and databases ``shop`` (alice's) and ``hr`` (bob's); stop it at the end."""
    db_ca, client_ca = FixtureCA.create("test db CA"), FixtureCA.create("test db client CA")
    server_key, server_cert = db_ca.issue(SERVER_NAME, dns=SERVER_NAME)
    workdir = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    try:
        with start_postgres(
            workdir,
            cert=server_cert.public_bytes(serialization.Encoding.PEM),
            key=_key_pem(server_key),
            client_cas=client_ca.pem(),
            server_name=SERVER_NAME,
        ) as server:
            server.admin("CREATE DATABASE shop OWNER alice")
            server.admin("CREATE DATABASE hr OWNER bob")
            yield attrs.evolve(server, db_ca=db_ca, client_ca=client_ca)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def start_postgres(
    workdir: Path, *, cert: bytes, key: bytes, client_cas: bytes, server_name: str
) -> Iterator[PostgresServer]:
    """A private PostgreSQL in ``workdir`` (which the ``postgres`` OS user is given) set up as
    ``docs/databases.md`` says, with these TLS files (``ssl_cert_file``, ``ssl_key_file``,
    ``ssl_ca_file``) and ``hostssl ... cert``, and the roles ``alice``, ``bob`` and ``carol``
    (password only); stopped when the block ends."""
    bin_dir = _server_bin_dir()
    if shutil.which("psql") is None:
        pytest.fail("psql is not installed: run scripts/system-deps.sh as root")
    workdir.mkdir(parents=True, exist_ok=True)
    postgres = pwd.getpwnam("postgres")
    data, run = workdir / "data", workdir / "run"
    files = {"server.crt": cert, "server.key": key, "client-ca.crt": client_cas}
    run.mkdir()
    for name, content in files.items():
        (workdir / name).write_bytes(content)
        os.chmod(workdir / name, 0o600)
    for path in (workdir, run, *(workdir / name for name in files)):
        os.chown(path, postgres.pw_uid, postgres.pw_gid)
    port = free_port()
    _as_postgres(
        str(bin_dir / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(data), "--no-sync"
    )
    (data / "pg_hba.conf").write_text(
        "local all postgres trust\n"
        f"hostssl all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
        "hostssl all all 127.0.0.1/32 cert\n"
    )
    options = " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-p {port}",
            f"-c unix_socket_directories={run}",
            "-c ssl=on",
            f"-c ssl_cert_file={workdir / 'server.crt'}",
            f"-c ssl_key_file={workdir / 'server.key'}",
            f"-c ssl_ca_file={workdir / 'client-ca.crt'}",
            "-c fsync=off",
            "-c max_connections=50",
        ]
    )
    log = str(workdir / "log")
    _as_postgres(str(bin_dir / "pg_ctl"), "start", "-w", "-D", str(data), "-l", log, "-o", options)
    server = PostgresServer(
        host="127.0.0.1",
        port=port,
        server_name=server_name,
        socket_dir=run,
        db_ca=None,
        client_ca=None,
        workdir=workdir,
    )
    try:
        server.admin(
            "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;"
            f" CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD 'not-used';"
        )
        yield server
    finally:
        _as_postgres(str(bin_dir / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(data))
