"""Start real Tether clusters for tests: ``tetherd`` processes on 127.0.0.1.

Plugin authors use these through the pytest fixtures in :mod:`tether.testing.fixtures`. Every
cluster listens on ports the kernel picks (port 0) and reports them in ``process.json``, so
tests never race for free ports. Commands run as real subprocesses, as a user would run them.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import attrs
from cryptography import x509

from tether.config import HostPort
from tether.datadir import PROCESS_FILE
from tether.yamlio import dump_yaml

__all__ = [
    "RunningCluster",
    "RunningNode",
    "run_cli",
    "run_completion",
    "served_certificate",
    "start_cluster",
    "start_node",
    "start_proxy",
    "stop_forgotten_daemons",
    "stop_process",
    "wait_for",
]

STARTUP_TIMEOUT = 60.0

#: config values that make tests fast (short lockout so lockout tests do not wait)
TEST_AUTH_SERVICE: dict[str, Any] = {
    "enabled": True,
    "listen_addr": "127.0.0.1:0",
    "failed_login_limit": 3,
    "lockout_duration": "10m",
}


def run_cli(
    program: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
    command_prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``tetherd``, ``tetherctl`` or ``tether`` as a subprocess and capture its output.

    :param check: raise AssertionError with the output when the exit status is not 0.
    :param command_prefix: what runs the program, such as ``ip netns exec NAME`` for a host
        in a network namespace (:attr:`tether.testing.netns.Site.command_prefix`).
    """
    cmd = [*command_prefix, sys.executable, "-m", f"tether.cli.{program}", *args]
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        cmd,
        env=full_env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{program} {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def run_completion(program: str, line: str, env: Mapping[str, str] | None = None) -> list[str]:
    """What a shell's Tab offers after ``line`` (``"tether ssh --cluster=leaf vis"``; a
    trailing space completes a new word), asked as bash's completion script asks: the
    program run with ``_TETHER_COMPLETE=bash_complete`` (``_TETHERCTL_...``), ``COMP_WORDS``
    and ``COMP_CWORD``.

    :raises AssertionError: the program printed anything on standard error, or failed.
    """
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    answer = run_cli(
        program,
        env={
            f"_{program.upper()}_COMPLETE": "bash_complete",
            "COMP_WORDS": line,
            "COMP_CWORD": str(cword),
            **(env or {}),
        },
    )
    assert answer.stderr == "", answer.stderr
    # one "type,value" line per completion
    return [row.split(",", 1)[1] for row in answer.stdout.splitlines() if row]


@attrs.define
class RunningCluster:
    """A ``tetherd`` process and the ways to talk to it.

    :ivar command_prefix: what runs its commands (``ip netns exec NAME`` for a cluster in a
        network namespace): ``tetherctl``, ``tether`` and its nodes run where it runs.
    """

    name: str
    directory: pathlib.Path
    config_path: pathlib.Path
    process: subprocess.Popen[bytes]
    info: dict[str, Any]
    log_path: pathlib.Path
    command_prefix: tuple[str, ...] = ()

    @property
    def proxy_addr(self) -> str:
        return str(self.info["proxy_addr"])

    @property
    def auth_addr(self) -> str:
        return str(self.info["auth_addr"])

    @property
    def ca_pin(self) -> str:
        return str(self.info["ca_pin"])

    @property
    def data_dir(self) -> pathlib.Path:
        return self.directory / "data"

    def through(self, proxy: RunningNode) -> RunningCluster:
        """This cluster as its users reach it through ``proxy``, another proxy of it
        (:func:`start_proxy`): ``login`` and nodes joining in tunnel mode go there. An auth
        server started without a proxy of its own (several auth servers on one store) is
        reached so."""
        return attrs.evolve(self, info={**self.info, "proxy_addr": proxy.proxy_addr})

    def tetherctl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``tetherctl -c tether.yaml ARGS`` on the auth host, as the local admin."""
        return run_cli(
            "tetherctl",
            "-c",
            str(self.config_path),
            *args,
            command_prefix=self.command_prefix,
            **kwargs,
        )

    def user_home(self, user: str) -> pathlib.Path:
        """A ``TETHER_HOME`` of its own for each test user."""
        home = self.directory / "homes" / user
        home.mkdir(parents=True, exist_ok=True)
        return home

    def tether(self, user: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``tether ARGS`` run by ``user`` (their own ``TETHER_HOME``)."""
        env = {"TETHER_HOME": str(self.user_home(user)), **kwargs.pop("env", {})}
        return run_cli("tether", *args, env=env, command_prefix=self.command_prefix, **kwargs)

    def as_user(
        self, user: str, program: str, *args: str, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tetherctl`` or ``tether`` with ``user``'s login profile (no ``-c``)."""
        env = {"TETHER_HOME": str(self.user_home(user)), **kwargs.pop("env", {})}
        return run_cli(program, *args, env=env, command_prefix=self.command_prefix, **kwargs)

    def add_user(
        self,
        user: str,
        password: str,
        roles: Sequence[str] = ("access",),
        logins: Sequence[str] = (),
    ) -> None:
        args = ["users", "add", user, "--roles", ",".join(roles), "--password-stdin"]
        if logins:
            args += ["--logins", ",".join(logins)]
        self.tetherctl(*args, input=password + "\n")

    def login(
        self, user: str, password: str, *extra: str, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """``tether login`` as ``user``, trusting the proxy through the cluster's CA pin."""
        return self.tether(
            user,
            "login",
            f"--proxy={self.proxy_addr}",
            f"--user={user}",
            "--password-stdin",
            f"--ca-pin={self.ca_pin}",
            *extra,
            input=password + "\n",
            **kwargs,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stop the daemon; returns its exit status."""
        return stop_process(self.process, sig, timeout)


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int:
    """Send ``sig`` and wait; kill after ``timeout``. Returns the exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@attrs.define
class RunningNode:
    """A ``tetherd start --roles=node`` (or ``--roles=proxy``) process that joined a cluster."""

    name: str
    directory: pathlib.Path
    args: list[str]
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path
    info: dict[str, Any] = attrs.field(factory=dict)
    command_prefix: tuple[str, ...] = ()

    @property
    def proxy_addr(self) -> str:
        """The public port of a proxy started with :func:`start_proxy`."""
        return str(self.info["proxy_addr"])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        return stop_process(self.process, sig, timeout)

    def restart(self) -> None:
        """Stop the node and start it again from its data directory (no token needed)."""
        self.stop()
        self.process = _spawn_daemon(
            self.args,
            self.directory,
            self.log_path,
            command_prefix=self.command_prefix,
            append=True,
        )
        self.info = _wait_for_process_file(
            self.process, self.directory / "data", self.name, self.log_path
        )


def _spawn_daemon(
    args: Sequence[str],
    directory: pathlib.Path,
    log_path: pathlib.Path,
    env: Mapping[str, str] | None = None,
    *,
    command_prefix: Sequence[str] = (),
    append: bool = False,
) -> subprocess.Popen[bytes]:
    (directory / "data" / PROCESS_FILE).unlink(missing_ok=True)
    with log_path.open("ab" if append else "wb") as log:
        # the prefix execs the daemon (``ip netns exec`` does): its PID is the daemon's
        process = subprocess.Popen(
            [*command_prefix, sys.executable, "-m", "tether.cli.tetherd", "start", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    _SPAWNED.append(process)
    return process


#: every daemon this process started, so that one a test forgot is stopped at the end of the
#: run (:func:`stop_forgotten_daemons`) instead of outliving it
_SPAWNED: list[subprocess.Popen[bytes]] = []


def stop_forgotten_daemons() -> list[str]:
    """Stop every daemon started here that is still running; returns their command lines.

    ``tether.testing.fixtures`` calls it when the test session ends and warns about each one:
    a test that starts a daemon should stop it (a node left running keeps its tunnel, ports
    and files in use after the run).
    """
    forgotten = [process for process in _SPAWNED if process.poll() is None]
    for process in forgotten:
        stop_process(process)
    _SPAWNED.clear()
    return [shlex.join(map(str, cast("list[str]", process.args))) for process in forgotten]


def _wait_for_process_file(
    process: subprocess.Popen[bytes], data_dir: pathlib.Path, name: str, log_path: pathlib.Path
) -> dict[str, Any]:
    process_file = data_dir / PROCESS_FILE
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"tetherd for {name} exited {process.returncode}:\n"
                + log_path.read_text(errors="replace")
            )
        try:
            info: dict[str, Any] = json.loads(process_file.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
            continue
        if info.get("pid") == process.pid:
            return info
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError(f"tetherd for {name} did not start in time:\n{log_path.read_text()}")


def start_node(
    cluster: RunningCluster,
    directory: pathlib.Path,
    name: str,
    *,
    tunnel: bool = True,
    token: str | None = None,
    labels: Mapping[str, str] | None = None,
    ssh_service: Mapping[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    roles: str = "node",
    command_prefix: Sequence[str] | None = None,
) -> RunningNode:
    """Join a node named ``name`` to ``cluster`` with ``tetherd start --roles=node``.

    :param tunnel: join through the proxy and serve through reverse tunnels (no inbound
        port); otherwise join the auth service directly and listen on 127.0.0.1.
    :param token: a node token; a fresh one from ``tetherctl tokens add --type=ROLES`` by
        default.
    :param roles: ``--roles``: what the host serves, e.g. ``node,db`` for a host that serves
        SSH and a plugin's host role (the fresh token is of those types).
    :param ssh_service: more ``ssh_service`` settings (``commands``, ...).
    :param config: more top-level sections of its ``tether.yaml`` (another protocol plugin's
        settings: ``{"plugins": {"settings": {"echo": {"enabled": True}}}}``).
    :param command_prefix: what runs it (``ip netns exec NAME``); where the cluster runs by
        default.
    :raises AssertionError: the node exited or did not come up; the message has its log.
    """
    settings = {
        "nodename": name,
        "data_dir": str(directory / "data"),
        "log": {"severity": "DEBUG", "format": "text"},
        "auth_service": {"enabled": False},
        "proxy_service": {"enabled": False},
        "ssh_service": {
            "enabled": True,
            "listen_addr": "127.0.0.1:0",
            "labels": dict(labels or {}),
            **(ssh_service or {}),
        },
        **(config or {}),
    }
    server = f"--proxy={cluster.proxy_addr}" if tunnel else f"--auth-server={cluster.auth_addr}"
    return _start_joining(
        cluster,
        directory,
        name,
        roles,
        token,
        settings,
        [server, *extra_args],
        env,
        cluster.command_prefix if command_prefix is None else tuple(command_prefix),
    )


def start_proxy(
    cluster: RunningCluster,
    directory: pathlib.Path,
    name: str,
    *,
    token: str | None = None,
    listen_addr: str = "127.0.0.1:0",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    auth_servers: Sequence[str] = (),
    proxy_service: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> RunningNode:
    """Start another proxy for ``cluster``, in a process of its own, as for high availability:
    ``tetherd start --roles=proxy --auth-server=AUTH --token=TOKEN``.

    :param token: a proxy token; a fresh one from ``tetherctl tokens add`` by default.
    :param listen_addr: where it listens; give a fixed port to keep the address on restart.
    :param auth_servers: every auth server's address (``host:port``), for a cluster that runs
        several on one store (``--auth-server`` once each; the proxy fails over between
        them); ``cluster``'s auth server alone by default.
    :param proxy_service: more ``proxy_service`` settings (``rate_limit``, ...).
    :param config: other top-level sections of its ``tether.yaml`` (``log``, ...).
    :raises AssertionError: the proxy exited or did not come up; the message has its log.
    """
    settings = {
        "nodename": name,
        "data_dir": str(directory / "data"),
        "log": {"severity": "DEBUG", "format": "text"},
        "auth_service": {"enabled": False},
        "proxy_service": {"enabled": True, "listen_addr": listen_addr, **(proxy_service or {})},
        **(config or {}),
    }
    servers = list(auth_servers) or [cluster.auth_addr]
    args = [*(f"--auth-server={addr}" for addr in servers), *extra_args]
    return _start_joining(
        cluster, directory, name, "proxy", token, settings, args, env, cluster.command_prefix
    )


def _start_joining(
    cluster: RunningCluster,
    directory: pathlib.Path,
    name: str,
    role: str,
    token: str | None,
    config: Mapping[str, Any],
    args: Sequence[str],
    env: Mapping[str, str] | None,
    command_prefix: tuple[str, ...],
) -> RunningNode:
    """Write ``config``, run ``tetherd start --roles=ROLE`` with a token of that role (a
    fresh one unless given) and the cluster's CA pin, and wait until it is up."""
    directory.mkdir(parents=True, exist_ok=True)
    if token is None:
        added = cluster.tetherctl("tokens", "add", f"--type={role}", "--format=json")
        token = str(json.loads(added.stdout)["token"])
    config_path = directory / "tether.yaml"
    config_path.write_text(dump_yaml(dict(config)))
    full_args = [
        "-c",
        str(config_path),
        f"--roles={role}",
        f"--token={token}",
        f"--ca-pin={cluster.ca_pin}",
        *args,
    ]
    log_path = directory / "tetherd.log"
    process = _spawn_daemon(full_args, directory, log_path, env, command_prefix=command_prefix)
    info = _wait_for_process_file(process, directory / "data", name, log_path)
    return RunningNode(name, directory, full_args, process, log_path, info, command_prefix)


def write_config(
    directory: pathlib.Path, name: str, extra: Mapping[str, Any] | None = None
) -> pathlib.Path:
    config: dict[str, Any] = {
        "cluster_name": name,
        "nodename": f"{name}-node",
        "data_dir": str(directory / "data"),
        "log": {"severity": "DEBUG", "format": "text"},
        "auth_service": dict(TEST_AUTH_SERVICE),
        "proxy_service": {"enabled": True, "listen_addr": "127.0.0.1:0"},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = directory / "tether.yaml"
    path.write_text(dump_yaml(config))
    return path


def start_cluster(
    directory: pathlib.Path,
    name: str = "main",
    *,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    command_prefix: Sequence[str] = (),
) -> RunningCluster:
    """Start ``tetherd start -c`` for a new cluster in ``directory`` and wait until it listens.

    :param command_prefix: what runs it and its commands: ``ip netns exec NAME`` for a
        cluster in a network namespace (:mod:`tether.testing.netns`).
    :raises AssertionError: the daemon exited or did not come up; the message has its log.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config_path = write_config(directory, name, config)
    log_path = directory / "tetherd.log"
    prefix = tuple(command_prefix)
    process = _spawn_daemon(
        ["-c", str(config_path)], directory, log_path, env, command_prefix=prefix
    )
    info = _wait_for_process_file(process, directory / "data", name, log_path)
    return RunningCluster(name, directory, config_path, process, info, log_path, prefix)


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds: what a scenario waits on in another process (a
    heartbeat, a tunnel, a log line) arrives when it arrives, never after a fixed sleep.

    :raises AssertionError: ``timeout`` seconds passed first; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def served_certificate(addr: str, server_name: str | None = None) -> x509.Certificate:
    """The certificate the daemon at ``addr`` (``host:port``) presents now, unverified.

    :param server_name: the TLS server name to ask for (SNI), such as a route name
        (``tether.api.route_server_name``); none by default.
    """
    target = HostPort.parse(addr)
    if server_name is None:
        pem = ssl.get_server_certificate((target.connect_host, target.port), timeout=10)
        return x509.load_pem_x509_certificate(pem.encode())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((target.connect_host, target.port), timeout=10) as sock,
        # bytes: a route name's one label may be longer than Python's IDNA codec allows
        context.wrap_socket(sock, server_hostname=server_name.encode()) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None, f"{addr} presented no certificate for {server_name}"
    return x509.load_der_x509_certificate(der)
