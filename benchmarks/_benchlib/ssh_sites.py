"""The machines behind the SSH session legs: an OpenSSH jump host and target, a Tether cluster.

Each site is a context manager that starts its daemons on 127.0.0.1, yields one
:class:`Remote` per leg (how to run a command on that leg's node, as a user types it) and
stops every process it started, by pid, whatever happens inside the block.

- :func:`openssh_site`: two ``sshd`` (a jump host and a target), each with its own host key, and
  an ``ssh_config`` that reaches the target with ``ProxyJump`` (``openssh_jump``) or directly
  (``openssh_direct``), verifying host keys from a generated ``known_hosts``, with connection
  sharing off so that every run is a full handshake.
- :func:`tether_site`: ``tetherd`` with auth, proxy and an SSH node in one process
  (``tether_auth``), a node joined through the proxy in tunnel mode (``tether_tunnel``), and a
  user logged in with ``tether login``; each run is the ``tether`` console script.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping

from _benchlib import openssh
from _benchlib.daemon_settings import LOG
from _benchlib.procs import (
    LOOPBACK,
    free_port,
    owned_process,
    run_until_ok,
    stop_children,
    wait_accepting,
)

#: The cipher of every OpenSSH hop (the client and both servers insist on it).
OPENSSH_CIPHER = openssh.CIPHERS["openssh_aes128"]
LOGIN = "root"
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password-not-secret"  # a throwaway cluster on loopback
TUNNEL_NODE = "bench-node"
AUTH_NODE = "auth-node"
#: How long a fresh node may take before its first session succeeds (tunnel coming up).
NODE_READY_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Remote:
    """How one leg runs a command on its node: ``[*prefix, command]`` in ``env``."""

    prefix: tuple[str, ...]
    env: Mapping[str, str]
    #: pids worth profiling on this leg's server side, by role ("proxy", "node", ...)
    server_pids: Mapping[str, int] = dataclasses.field(default_factory=dict)
    #: ``prefix`` with the client's debug output on, which says what it negotiated
    verbose_prefix: tuple[str, ...] = ()

    def argv(self, command: str) -> list[str]:
        return [*self.prefix, command]


# --- OpenSSH --------------------------------------------------------------------------------

SSH_CONFIG = """\
Host bench-jump
    Port {jump_port}
Host bench-target
    Port {target_port}
Host *
    HostName 127.0.0.1
    User root
    IdentityFile {client_key}
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    CheckHostIP no
    UpdateHostKeys no
    BatchMode yes
    ControlMaster no
    ControlPath none
    Ciphers {cipher}
    Compression no
    LogLevel ERROR
"""


@contextlib.contextmanager
def _sshd(
    sshd: str, tmp: pathlib.Path, name: str, authorized_keys: pathlib.Path
) -> Iterator[tuple[int, int]]:
    """One ``sshd`` on a free loopback port; yields (port, pid), stops it and its children."""
    host_key = tmp / f"{name}_host_ed25519"
    openssh._keygen(host_key)
    port = free_port()
    config = tmp / f"{name}_sshd_config"
    config.write_text(
        openssh.SSHD_CONFIG.format(
            port=port,
            host_key=host_key,
            pid_file=tmp / f"{name}.pid",
            authorized_keys=authorized_keys,
            cipher=OPENSSH_CIPHER,
        )
    )
    os.makedirs(openssh.PRIVSEP_DIR, mode=0o755, exist_ok=True)
    checked = subprocess.run(
        [sshd, "-t", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if checked.returncode != 0:
        raise RuntimeError(f"sshd rejects the generated config: {checked.stderr.strip()}")
    log = tmp / f"{name}_sshd.log"
    with (
        log.open("wb") as err,
        owned_process(
            [sshd, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        ) as proc,
    ):
        try:
            try:
                wait_accepting((LOOPBACK, port), timeout=10.0, proc=proc)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(
                    f"{name} sshd did not start: {exc}: {openssh._tail(log)}"
                ) from exc
            yield port, proc.pid
        finally:
            stop_children(proc.pid)


@contextlib.contextmanager
def openssh_site(sshd: str) -> Iterator[dict[str, Remote]]:
    """A jump host and a target ``sshd``; yields ``openssh_jump`` and ``openssh_direct``."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-ssh-") as tmpdir:
        tmp = pathlib.Path(tmpdir)
        client_key = tmp / "client_ed25519"
        openssh._keygen(client_key)
        authorized_keys = tmp / "authorized_keys"
        shutil.copyfile(client_key.with_suffix(".pub"), authorized_keys)
        with (
            _sshd(sshd, tmp, "jump", authorized_keys) as (jump_port, jump_pid),
            _sshd(sshd, tmp, "target", authorized_keys) as (target_port, target_pid),
        ):
            known_hosts = tmp / "known_hosts"
            known_hosts.write_text(
                "".join(
                    f"[{LOOPBACK}]:{port} "
                    + " ".join((tmp / f"{name}_host_ed25519.pub").read_text().split()[:2])
                    + "\n"
                    for name, port in (("jump", jump_port), ("target", target_port))
                )
            )
            config = tmp / "ssh_config"
            config.write_text(
                SSH_CONFIG.format(
                    jump_port=jump_port,
                    target_port=target_port,
                    client_key=client_key,
                    known_hosts=known_hosts,
                    cipher=OPENSSH_CIPHER,
                )
            )
            env = user_env()
            env.pop("SSH_AUTH_SOCK", None)  # IdentityAgent none: this key alone, as Tether
            ssh = ("ssh", "-F", str(config))
            verbose = ("ssh", "-v", "-F", str(config))
            jump = ("-J", "bench-jump", "bench-target")
            target = {"target sshd": target_pid}
            yield {
                "openssh_jump": Remote(
                    (*ssh, *jump), env, {"jump sshd": jump_pid, **target}, (*verbose, *jump)
                ),
                "openssh_direct": Remote(
                    (*ssh, "bench-target"), env, target, (*verbose, "bench-target")
                ),
            }


# --- Tether ---------------------------------------------------------------------------------


def user_env(**extra: str) -> dict[str, str]:
    """This environment as a user's shell would have it, plus ``extra``: without
    PYTHONDONTWRITEBYTECODE (some machines set it), so that a warm-up run caches the bytecode
    of modules edited since their last compile, as a user's first run after an install does."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def tether_program() -> tuple[list[str], str]:
    """The ``tether`` console script next to this interpreter (what users run), else
    ``python -m tether.cli.tether``; and which one it is, for the report."""
    script = pathlib.Path(sys.executable).parent / "tether"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], str(script)
    argv = [sys.executable, "-m", "tether.cli.tether"]
    return argv, " ".join(argv)


@contextlib.contextmanager
def tether_site() -> Iterator[dict[str, Remote]]:
    """A cluster with a node in its auth process and one in tunnel mode, and a logged-in user;
    yields ``tether_tunnel`` and ``tether_auth``."""
    from tether.testing.cluster import RunningNode, start_cluster, start_node

    with tempfile.TemporaryDirectory(prefix="tether-bench-cluster-") as tmpdir:
        base = pathlib.Path(tmpdir)
        cluster = start_cluster(
            base / "main",
            "main",
            config={
                "nodename": AUTH_NODE,
                "ssh_service": {"enabled": True, "listen_addr": f"{LOOPBACK}:0"},
                "log": LOG,
            },
        )
        node: RunningNode | None = None
        try:
            node = start_node(cluster, base / "node", TUNNEL_NODE, tunnel=True, config={"log": LOG})
            cluster.add_user(BENCH_USER, BENCH_PASSWORD, roles=["access"], logins=[LOGIN])
            cluster.login(BENCH_USER, BENCH_PASSWORD)
            env = {**user_env(), "TETHER_HOME": str(cluster.user_home(BENCH_USER))}
            program, _ = tether_program()
            proxy = {"proxy": cluster.process.pid}
            tunnel_node, auth_node = (
                ("ssh", f"{LOGIN}@{TUNNEL_NODE}"),
                ("ssh", f"{LOGIN}@{AUTH_NODE}"),
            )
            remotes = {
                "tether_tunnel": Remote(
                    (*program, *tunnel_node),
                    env,
                    {**proxy, "node": node.process.pid},
                    (*program, "-d", *tunnel_node),
                ),
                "tether_auth": Remote(
                    (*program, *auth_node),
                    env,
                    {"proxy+node": cluster.process.pid},
                    (*program, "-d", *auth_node),
                ),
            }
            deadline = time.monotonic() + NODE_READY_TIMEOUT
            # a node's tunnel comes up a little after the node starts
            for remote in remotes.values():
                run_until_ok(remote.argv("true"), dict(remote.env), deadline)
            yield remotes
        finally:
            if node is not None:
                node.stop()
            cluster.stop()
