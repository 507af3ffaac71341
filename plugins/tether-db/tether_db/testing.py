"""Private database servers set up as ``docs/databases.md`` says, for the plugin's tests and
for ``benchmarks/db_access.py``: a PostgreSQL (:func:`start_postgres`) and a MariaDB
(:func:`start_mariadb`), each on a free port of 127.0.0.1 in a directory of its own, with the
TLS files given, clients allowed in by their certificate's subject. The machine's own servers
are never touched.

PostgreSQL runs as the ``postgres`` OS user (``initdb`` and ``postgres`` refuse root) in a
directory it is given, with a Unix socket there on which the ``postgres`` superuser is
trusted, for setup only. MariaDB runs as root with ``--no-defaults`` and a socket on which its
root is trusted, for setup only. The certificate authority the tests make (:class:`TestCA`)
is here too, as the servers' handles use it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.testing.http import free_port

__all__ = [
    "DATABASES",
    "PASSWORD_USER",
    "SERVER_NAME",
    "USERS",
    "MariaDB",
    "PostgresServer",
    "TestCA",
    "free_port",
    "start_mariadb",
    "start_postgres",
]

# --- PostgreSQL -----------------------------------------------------------------------------

#: The name the server's certificate carries, as a database's ``server_name``.
SERVER_NAME = "postgres.db.test"
#: A user pg_hba.conf asks for a password (a database not set up for certificates).
PASSWORD_USER = "carol"


@attrs.frozen
class PostgresServer:
    """The running server and what a test needs to reach it."""

    host: str
    port: int
    server_name: str
    socket_dir: Path
    db_ca: TestCA | None
    client_ca: TestCA | None
    workdir: Path

    def client_context(self, db_user: str, *, client_ca: TestCA | None = None) -> ssl.SSLContext:
        """What ``Session.server_tls(db_user)`` returns in production: a client certificate
        with ``CN=db_user`` (from the db client CA unless ``client_ca`` is another) and
        verification of the server against the db CA."""
        issuer = client_ca or self.client_ca
        assert issuer is not None and self.db_ca is not None, "a server of the test CAs"
        cert, key = issuer.issue(db_user)
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = Path(tmp, "c.pem"), Path(tmp, "k.pem")
            cert_path.write_bytes(cert)
            key_path.write_bytes(key)
            context = ssl.create_default_context(cadata=self.db_ca.pem.decode())
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


# --- MariaDB --------------------------------------------------------------------------------

#: Database users the server knows, each allowed in with a certificate for ``CN=<user>``.
USERS = ("alice", "bob")
#: Databases on the server; both users may use both (Tether's roles decide the rest).
DATABASES = ("shop", "hr")


class TestCA:
    """A certificate authority that issues what the tests need, in memory."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
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
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, common_name: str, *, server: bool = False, hours: float = 1
    ) -> tuple[bytes, bytes]:
        """A certificate whose subject is exactly ``CN=<common_name>`` and its key, as PEM."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=hours))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(common_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass
class MariaDB:
    """The running server and what a test needs to reach it."""

    host: str
    port: int
    socket: Path
    server_name: str
    db_ca: TestCA | None
    client_ca: TestCA | None
    directory: Path

    def client_context(self, user: str, *, ca: TestCA | None = None) -> ssl.SSLContext:
        """A client TLS context presenting a fresh certificate for ``CN=<user>`` (from
        ``ca``, the server's trusted client CA unless a test wants another) and verifying the
        server against the db CA, as the service's ``server_tls`` does."""
        issuer = ca or self.client_ca
        assert issuer is not None and self.db_ca is not None, "a server of the test CAs"
        cert, key = issuer.issue(user)
        with tempfile.TemporaryDirectory(dir=self.directory) as tmp:
            cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert_path.write_bytes(cert)
            key_path.write_bytes(key)
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            context.load_verify_locations(cadata=self.db_ca.pem.decode())
            context.load_cert_chain(cert_path, key_path)
        return context

    def sql(self, statement: str) -> str:
        """Run ``statement`` as the server's root over its socket; returns the output."""
        result = subprocess.run(
            ["mariadb", "--no-defaults", "-uroot", f"--socket={self.socket}", "-N", "-B"],
            input=statement,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout


@contextlib.contextmanager
def start_mariadb(
    directory: Path, *, cert_file: Path, key_file: Path, ca_file: Path, server_name: str
) -> Iterator[MariaDB]:
    """A private MariaDB in ``directory`` with these TLS files (``ssl-cert``, ``ssl-key``,
    ``ssl-ca``), users ``alice`` and ``bob`` allowed in by their certificate's subject alone,
    and the databases ``shop`` and ``hr``; stopped when the block ends."""
    if shutil.which("mariadbd") is None and not Path("/usr/sbin/mariadbd").exists():
        pytest.skip("mariadbd is not installed")
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    data = directory / "data"
    subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            "--user=root",
            f"--datadir={data}",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        ],
        capture_output=True,
        check=True,
        timeout=300,
    )
    port = free_port()
    sock = directory / "mariadb.sock"
    log = (directory / "server.log").open("wb")
    process = subprocess.Popen(
        [
            mariadbd,
            "--no-defaults",
            "--user=root",
            f"--datadir={data}",
            "--bind-address=127.0.0.1",
            f"--port={port}",
            f"--socket={sock}",
            f"--pid-file={directory / 'mariadb.pid'}",
            f"--log-error={directory / 'error.log'}",
            f"--ssl-cert={cert_file}",
            f"--ssl-key={key_file}",
            f"--ssl-ca={ca_file}",
            "--local-infile=1",
            "--max-allowed-packet=64M",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
            "--performance-schema=OFF",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = MariaDB(
        host="127.0.0.1",
        port=port,
        socket=sock,
        server_name=server_name,
        db_ca=None,
        client_ca=None,
        directory=directory,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                error_log = (directory / "error.log").read_text(errors="replace")
                raise RuntimeError(f"mariadbd exited at start:\n{error_log[-3000:]}")
            try:
                server.sql("SELECT 1")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        setup = [f"CREATE DATABASE {db};" for db in DATABASES]
        for user in USERS:
            setup.append(f"CREATE USER '{user}'@'%' REQUIRE SUBJECT '/CN={user}';")
            setup += [f"GRANT ALL ON {db}.* TO '{user}'@'%';" for db in DATABASES]
        setup.append("CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(64));")
        setup.append("INSERT INTO shop.items VALUES (1, 'tea'), (2, 'cake');")
        server.sql("\n".join(setup))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
