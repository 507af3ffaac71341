"""A private MariaDB for the MySQL engine's tests: one per test run, on its own port.

The server requires TLS from a test "db client" CA and users that prove themselves by their
certificate's subject alone, exactly as the database service's real databases are set up;
the CAs and certificates are made here with ``cryptography``. The machine's own MariaDB is
never touched.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["MariaDB", "TestCA", "mariadb_server", "start_mariadb"]

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDB]:
    """Start one private MariaDB for the whole run and stop it at the end."""
    directory = Path(tempfile.mkdtemp(prefix="tether-mariadb-"))
    db_ca, client_ca = TestCA("test db CA"), TestCA("test db client CA")
    server_cert, server_key = db_ca.issue("localhost", server=True, hours=24)
    (directory / "server.pem").write_bytes(server_cert)
    (directory / "server.key").write_bytes(server_key)
    (directory / "client-ca.pem").write_bytes(client_ca.pem)
    try:
        with start_mariadb(
            directory,
            cert_file=directory / "server.pem",
            key_file=directory / "server.key",
            ca_file=directory / "client-ca.pem",
            server_name="localhost",
        ) as server:
            yield replace(server, db_ca=db_ca, client_ca=client_ca)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


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
    port = _free_port()
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
