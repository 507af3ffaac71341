"""A real Kubernetes API server for tests: Debian's etcd, kube-apiserver and
kube-controller-manager 1.20.2 on 127.0.0.1, and Debian's kubectl 1.20 to talk to it.

``scripts/kube-deps.sh`` (which tox runs before the tests) prepares the components in a cache
outside the clone, in the background: the server binaries are built from Debian's source
package, which takes about 10 minutes on a fresh machine. :func:`kube_components` waits for
that preparation (20 minutes at most, ``TETHER_KUBE_WAIT`` seconds if set) and skips the test
with one line naming why when the components cannot be had (not prepared, or the preparation
failed: its log says more). The tests that use the ``kube_apiserver`` fixture, or carry the
``kube`` marker, run after all others, so that the build has the whole run to finish.

:func:`start_kube_apiserver` starts etcd, the API server and the controller manager with a CA
made here for the occasion, an administrator's client certificate (group ``system:masters``)
and RBAC authorization, on free ports, and stops all three when the block ends, whatever
happened in it. There is no scheduler, and no kubelet unless a test adds a node
(:mod:`tether.testing.kube_node`): until then pods stay ``Pending``. The server reaches a
kubelet with a client certificate of its CA, verifies the kubelet's, and dials it at its node's
host name only.

The cache (``kube-deps.sh`` writes it, this module reads it): ``$TETHER_KUBE_CACHE``, else
``/var/cache/tether/kube`` for root and ``~/.cache/tether/kube`` for other users; in it,
``v1.20.2/`` (the binaries), ``v1.20.2.status`` (``ok``, ``failed: REASON`` or
``preparing since ...``), ``v1.20.2.log`` and ``v1.20.2.lock`` (held while a preparation runs).
etcd is Debian's ``etcd-server``, on ``PATH``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import functools
import ipaddress
import json
import os
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import attrs
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.testing.cluster import stop_process
from tether.testing.etcd import etcd_binary, start_etcd
from tether.testing.http import free_port
from tether.testing.processes import spawn_logged

__all__ = [
    "KUBE_VERSION",
    "KubeAPIServer",
    "KubeClientCert",
    "KubeComponents",
    "kube_cache_dir",
    "kube_components",
    "start_kube_apiserver",
]

#: The Kubernetes version of every component (Debian bookworm's ``kubernetes`` source).
KUBE_VERSION = "v1.20.2"
#: How long :func:`kube_components` waits for a preparation under way, unless
#: ``TETHER_KUBE_WAIT`` (seconds) says otherwise: a fresh machine's build, with room to spare.
DEFAULT_WAIT = 1200.0
#: How long each component may take to answer once started (a loaded 2-core machine).
START_TIMEOUT = 120.0
#: The services' address range; the API server's certificate names its first address.
SERVICE_CIDR = "10.0.0.0/24"


def kube_cache_dir() -> Path:
    """Where ``scripts/kube-deps.sh`` keeps the components: ``$TETHER_KUBE_CACHE``, else
    ``/var/cache/tether/kube`` for root and ``~/.cache/tether/kube`` for other users."""
    configured = os.environ.get("TETHER_KUBE_CACHE")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/tether/kube")
    return Path.home() / ".cache" / "tether" / "kube"


@attrs.frozen
class KubeComponents:
    """The programs :func:`start_kube_apiserver` runs, and Debian's kubectl 1.20."""

    apiserver: Path
    controller_manager: Path
    etcd: Path
    kubectl: Path


_T = TypeVar("_T")

#: what each cache directory gave this process: the components, or why a test is skipped
_outcomes: dict[Path, KubeComponents | str] = {}


def wait_timeout() -> float:
    """How long to wait for a preparation under way: ``TETHER_KUBE_WAIT``, else 20 minutes."""
    return float(os.environ.get("TETHER_KUBE_WAIT", DEFAULT_WAIT))


def kube_components(*, timeout: float | None = None) -> KubeComponents:
    """The components ``scripts/kube-deps.sh`` prepared, waiting (silently, ``timeout``
    seconds at most: ``TETHER_KUBE_WAIT``, else 20 minutes) while it is still at work.

    Skips the calling test (``pytest.skip``, one line naming the reason and the log) when they
    cannot be had: never prepared, the preparation failed or stopped, still not done. The
    answer is kept for the rest of the process, so that later tests do not wait again.
    """
    cache = kube_cache_dir()
    if cache not in _outcomes:
        _outcomes[cache] = wait_for_preparation(
            cache,
            KUBE_VERSION,
            f"Kubernetes {KUBE_VERSION} components",
            _found,
            wait_timeout() if timeout is None else timeout,
        )
    outcome = _outcomes[cache]
    if isinstance(outcome, str):
        pytest.skip(outcome)
    return outcome


def wait_for_preparation(
    cache: Path, part: str, what: str, found: Callable[[Path], _T | str], timeout: float
) -> _T | str:
    """What ``kube-deps.sh`` prepared of ``part`` (``v1.20.2``, or ``v1.20.2-node``: the name
    of its status file in ``cache``), as ``found(cache)`` reads it once the status says
    ``ok``; or, as one line naming ``what`` is missing, why it cannot be had. Waits while the
    preparation holds its lock, ``timeout`` seconds at most."""
    status_path = cache / f"{part}.status"
    log = cache / f"{KUBE_VERSION}.log"
    lock = cache / f"{KUBE_VERSION}.lock"
    deadline = time.monotonic() + timeout
    while True:
        status = _read(status_path)
        if status is None and not _held(lock):
            return (
                f"no {what} in {cache}: run scripts/kube-deps.sh "
                "(tox does; as root it installs what it needs)"
            )
        if status == "ok":
            return found(cache)
        if status is not None and status.startswith("failed: "):
            return f"no {what}: {status.removeprefix('failed: ')}"
        if not _held(lock):
            if _read(status_path) == "ok":  # it finished between the two looks
                return found(cache)
            return (
                f"no {what}: their preparation stopped before it finished (log: {log}); run "
                "scripts/kube-deps.sh again"
            )
        if time.monotonic() >= deadline:
            return f"no {what}: still being prepared after {timeout:g} s (log: {log})"
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _held(lock: Path) -> bool:
    """Whether a ``kube-deps.sh`` is at work: it holds ``lock`` (flock) while it runs."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _found(cache: Path) -> KubeComponents | str:
    binaries = cache / KUBE_VERSION
    etcd = etcd_binary()
    if etcd is None:
        return "etcd is not installed (Debian: etcd-server): run scripts/kube-deps.sh as root"
    components = KubeComponents(
        apiserver=binaries / "kube-apiserver",
        controller_manager=binaries / "kube-controller-manager",
        etcd=Path(etcd),
        kubectl=binaries / "kubectl",
    )
    for path in (components.apiserver, components.controller_manager, components.kubectl):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: run scripts/kube-deps.sh again"
    return components


# --- certificates ---------------------------------------------------------------------------


class _Authority:
    """The throwaway CA of one server: it signs the server's certificate and every client's."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tether test kubernetes CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
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
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = _key_pem(self.key)

    def issue(
        self,
        subject: x509.Name,
        *,
        dns_names: Sequence[str] = (),
        addresses: Sequence[str] = (),
    ) -> tuple[bytes, bytes]:
        """A certificate and its key, as PEM: a server's when it names DNS names or
        addresses, else a client's."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if dns_names or addresses:
            names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
            names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _user_subject(user: str, groups: Sequence[str]) -> x509.Name:
    """``CN=user, O=group...``: Kubernetes reads a client certificate's user from its common
    name and its groups from its organizations."""
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        + [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    )


def _write_secret(path: Path, content: bytes) -> None:
    path.touch(mode=0o600)
    path.write_bytes(content)


def _kubeconfig(url: str, ca_pem: bytes, user: str, cert_pem: bytes, key_pem: bytes) -> str:
    """A kubeconfig with everything in it (no file it names can go missing), one context named
    after the user. JSON is YAML, and kubectl reads it."""

    def data(pem: bytes) -> str:
        return base64.b64encode(pem).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tether-test",
                "cluster": {"server": url, "certificate-authority-data": data(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": data(cert_pem),
                    "client-key-data": data(key_pem),
                },
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": "tether-test", "user": user}}],
        "current-context": user,
    }
    return json.dumps(config, indent=2) + "\n"


# --- the running server ---------------------------------------------------------------------


@attrs.frozen
class KubeClientCert:
    """A client of the server: a certificate from its CA for ``user`` in ``groups``, its key,
    and a kubeconfig presenting them (context named after the user)."""

    user: str
    groups: tuple[str, ...]
    cert: Path
    key: Path
    kubeconfig: Path


@attrs.frozen
class KubeAPIServer:
    """A running API server (with its etcd and controller manager) and what a test needs to
    reach it: its URL, its CA, the administrator's credentials and kubeconfig."""

    url: str
    ca_pem: bytes
    kubeconfig: Path
    admin_cert: Path
    admin_key: Path
    directory: Path
    components: KubeComponents
    #: ``etcd``, ``kube-apiserver`` and ``kube-controller-manager``, as started
    processes: Mapping[str, subprocess.Popen[bytes]]
    #: where each of :attr:`processes` logs
    log_paths: Mapping[str, Path]
    _authority: _Authority = attrs.field(repr=False)

    @property
    def ca_file(self) -> Path:
        """The CA's certificate, as a file (``--certificate-authority``, ``verify=``)."""
        return self.directory / "pki" / "ca.crt"

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run Debian's kubectl 1.20 with ``args``, as the administrator unless ``kubeconfig``
        is another's (:meth:`issue_client_cert`); captures its output.

        :param check: raise AssertionError with the output when the exit status is not 0.
        """
        command = [
            str(self.components.kubectl),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.directory / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(
            command,
            env={**os.environ, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def issue_client_cert(self, user: str, groups: Sequence[str] = ()) -> KubeClientCert:
        """A client certificate from the server's CA for ``user`` in ``groups`` (none: only
        ``system:authenticated``, so no rights until a test binds a role), written with its
        key and a kubeconfig under ``directory/users/USER``."""
        cert_pem, key_pem = self._authority.issue(_user_subject(user, groups))
        home = self.directory / "users" / user
        home.mkdir(parents=True, exist_ok=True)
        client = KubeClientCert(
            user=user,
            groups=tuple(groups),
            cert=home / "client.crt",
            key=home / "client.key",
            kubeconfig=home / "kubeconfig",
        )
        client.cert.write_bytes(cert_pem)
        _write_secret(client.key, key_pem)
        _write_secret(
            client.kubeconfig, _kubeconfig(self.url, self.ca_pem, user, cert_pem, key_pem).encode()
        )
        return client

    def issue_serving_cert(
        self, name: str, *, dns_names: Sequence[str] = (), addresses: Sequence[str] = ()
    ) -> tuple[Path, Path]:
        """A server certificate from the server's CA naming ``dns_names`` and ``addresses``
        (a kubelet's, which the API server verifies), written with its key under
        ``directory/servers/NAME``: ``(certificate, key)``."""
        cert_pem, key_pem = self._authority.issue(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
            dns_names=dns_names,
            addresses=addresses,
        )
        home = self.directory / "servers" / name
        home.mkdir(parents=True, exist_ok=True)
        (home / "server.crt").write_bytes(cert_pem)
        _write_secret(home / "server.key", key_pem)
        return home / "server.crt", home / "server.key"

    def client_context(self, client: KubeClientCert | None = None) -> ssl.SSLContext:
        """A TLS context for the server (``httpx.Client(verify=...)``): it verifies the server
        against the CA and presents ``client``'s certificate, the administrator's by default."""
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        if client is None:
            context.load_cert_chain(self.admin_cert, self.admin_key)
        else:
            context.load_cert_chain(client.cert, client.key)
        return context

    def logs(self, lines: int = 40) -> str:
        """The last ``lines`` lines of each component's log, for a failure's message."""
        parts = []
        for name in self.processes:
            text = self.log_paths[name].read_text(errors="replace")
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {name} (exit status {self.processes[name].poll()}) ---\n{tail}")
        return "\n".join(parts)


@contextlib.contextmanager
def start_kube_apiserver(
    directory: Path, *, components: KubeComponents | None = None
) -> Iterator[KubeAPIServer]:
    """Start etcd, kube-apiserver and kube-controller-manager on free ports of 127.0.0.1, with
    their files in ``directory`` (a new CA, the server's certificate, the service-account
    keys, each component's log, ``kubeconfig`` for the administrator; etcd's data and log
    under ``etcd/``, as :func:`tether.testing.etcd.start_etcd` keeps them); yields
    when the API server is ready (``/readyz``) and the ``default`` service account has its
    token. All three are stopped when the block ends, whatever happened in it.

    ``components`` defaults to :func:`kube_components` (which may wait, or skip the test).
    """
    components = components or kube_components()
    directory.mkdir(parents=True, exist_ok=True)
    pki = directory / "pki"
    pki.mkdir(exist_ok=True)
    authority = _Authority()
    (pki / "ca.crt").write_bytes(authority.pem)
    _write_secret(pki / "ca.key", authority.key_pem)
    server_cert, server_key = authority.issue(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        dns_names=[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        addresses=["127.0.0.1", str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))],
    )
    (pki / "apiserver.crt").write_bytes(server_cert)
    _write_secret(pki / "apiserver.key", server_key)
    admin_cert, admin_key = authority.issue(_user_subject("kube-admin", ["system:masters"]))
    (pki / "admin.crt").write_bytes(admin_cert)
    _write_secret(pki / "admin.key", admin_key)
    # how the server reaches a kubelet (exec, logs, port-forward), when a test adds a node
    kubelet_cert, kubelet_key = authority.issue(
        _user_subject("kube-apiserver-kubelet-client", ["system:masters"])
    )
    (pki / "kubelet-client.crt").write_bytes(kubelet_cert)
    _write_secret(pki / "kubelet-client.key", kubelet_key)
    service_accounts = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_secret(pki / "sa.key", _key_pem(service_accounts))
    (pki / "sa.pub").write_bytes(
        service_accounts.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    processes: dict[str, subprocess.Popen[bytes]] = {}
    log_paths: dict[str, Path] = {}
    with contextlib.ExitStack() as stack:

        def spawn(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
            log_paths[name] = directory / f"{name}.log"
            process = spawn_logged(argv, log_paths[name], directory)
            processes[name] = process
            stack.callback(stop_process, process)
            return process

        etcd = start_etcd(directory / "etcd", binary=str(components.etcd))
        stack.callback(etcd.stop)
        (etcd_member,) = etcd.members
        assert etcd_member.process is not None
        processes["etcd"], log_paths["etcd"] = etcd_member.process, etcd_member.log_path

        def start_apiserver(port: int) -> subprocess.Popen[bytes]:
            return spawn(
                "kube-apiserver",
                [
                    str(components.apiserver),
                    f"--etcd-servers={etcd_member.client_url}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={port}",
                    "--insecure-port=0",
                    f"--cert-dir={directory / 'apiserver-certs'}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--authorization-mode=RBAC",
                    # one server, no Service endpoints to keep: without this the log fills
                    # with the reconciler's errors
                    "--endpoint-reconciler-type=none",
                    "--enable-priority-and-fairness=false",
                    # a kubelet is reached as a client of the CA, its certificate verified, at
                    # its node's host name only: a test node's (tether.testing.kube_node) is
                    # localhost, and its declared IP address is never dialled
                    f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                    f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                    f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                    "--kubelet-preferred-address-types=Hostname",
                ],
            )

        admin_context = ssl.create_default_context(cadata=authority.pem.decode())
        admin_context.load_cert_chain(pki / "admin.crt", pki / "admin.key")

        def apiserver_ready(port: int) -> bool:
            answer = _get(f"https://127.0.0.1:{port}/readyz", admin_context)
            return answer is not None and answer == (200, "ok")

        api_port = _start_on_free_port(
            "kube-apiserver", start_apiserver, apiserver_ready, directory
        )
        url = f"https://127.0.0.1:{api_port}"
        kubeconfig = directory / "kubeconfig"
        _write_secret(
            kubeconfig, _kubeconfig(url, authority.pem, "admin", admin_cert, admin_key).encode()
        )
        manager = spawn(
            "kube-controller-manager",
            [
                str(components.controller_manager),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--use-service-account-credentials=false",
                # no nodes, no cloud: the controllers of those would only fail
                "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route",
            ],
        )
        server = KubeAPIServer(
            url=url,
            ca_pem=authority.pem,
            kubeconfig=kubeconfig,
            admin_cert=pki / "admin.crt",
            admin_key=pki / "admin.key",
            directory=directory,
            components=components,
            processes=processes,
            log_paths=log_paths,
            authority=authority,
        )

        def default_token() -> bool:
            # pods need their namespace's "default" service account and its token, which the
            # controller manager makes: ready for a test that creates pods
            answer = _get(f"{url}/api/v1/namespaces/default/serviceaccounts/default", admin_context)
            return (
                answer is not None
                and answer[0] == 200
                and bool(json.loads(answer[1]).get("secrets"))
            )

        _wait_until(default_token, manager, "kube-controller-manager", directory)
        yield server


def _start_on_free_port(
    name: str,
    start: Callable[[int], subprocess.Popen[bytes]],
    ready: Callable[[int], bool],
    directory: Path,
) -> int:
    """Start a component on a free port and wait until it answers; when another process took
    the port between the look and the bind, try again on another (three times)."""
    for _ in range(3):
        port = free_port()
        process = start(port)
        try:
            _wait_until(functools.partial(ready, port), process, name, directory)
        except _PortTaken:
            stop_process(process)
            continue
        return port
    raise RuntimeError(f"{name}: three free ports were taken by others before it could bind")


class _PortTaken(Exception):
    pass


def _wait_until(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], name: str, directory: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None:
            log = (directory / f"{name}.log").read_text(errors="replace")
            if "address already in use" in log:
                raise _PortTaken(name)
            tail = "\n".join(log.splitlines()[-30:])
            raise RuntimeError(f"{name} exited {process.returncode} at start:\n{tail}")
        if time.monotonic() > deadline:
            tail = "\n".join(
                (directory / f"{name}.log").read_text(errors="replace").splitlines()[-30:]
            )
            raise RuntimeError(f"{name} not ready after {START_TIMEOUT:.0f} s:\n{tail}")
        time.sleep(0.1)


def _get(url: str, context: ssl.SSLContext | None) -> tuple[int, str] | None:
    """``(status, body)`` of a GET, or None while nothing answers. Never through a proxy: the
    servers are on 127.0.0.1."""
    try:
        with httpx.Client(verify=context or False, trust_env=False, timeout=5.0) as client:
            response = client.get(url)
    except httpx.TransportError:
        return None
    return response.status_code, response.text
