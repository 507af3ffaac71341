"""The OpenSSH baseline: our own ``sshd`` on a free loopback port and an ``ssh -R`` client.

``ssh -R`` is the topology Tether's reverse tunnel copies: the entry listener is on the server
(root) side, and the client (leaf) dials the target when a connection arrives. Each leg starts a
fresh ``sshd`` with a generated config, host key and client key, restricted to exactly one
cipher, so the figure is that cipher's and not whatever negotiation picked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from _benchlib.procs import LOOPBACK, free_port, owned_process, stop_children, wait_accepting

CIPHERS = {
    "openssh_aes128": "aes128-gcm@openssh.com",
    "openssh_chacha20": "chacha20-poly1305@openssh.com",
}
# Debian's sshd refuses to start without its privilege-separation directory, which the
# package's service unit normally creates at boot.
PRIVSEP_DIR = "/run/sshd"


class Unavailable(Exception):
    """OpenSSH cannot be run here; the message says why, for the report."""


def find_sshd() -> str | None:
    """The ``sshd`` binary, also where root's PATH has no sbin."""
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_openssh() -> str:
    """Return the path of ``sshd``, installing openssh-server with apt-get when root.

    Raises Unavailable, saying why, when it is missing and cannot be installed here.
    """
    sshd = find_sshd()
    if sshd and shutil.which("ssh") and shutil.which("ssh-keygen"):
        return sshd
    if os.geteuid() != 0:
        raise Unavailable(
            "sshd is not installed and this is not root, so it cannot be installed here: "
            "install openssh-server (or run scripts/system-deps.sh --bench as root)"
        )
    if not shutil.which("apt-get"):
        raise Unavailable(
            "sshd is not installed and there is no apt-get: install OpenSSH's server and "
            "client with this system's package manager"
        )
    print("sshd is missing: installing openssh-server with apt-get (we are root)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (
        ["apt-get", "update", "-qq"],
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "openssh-server",
            "openssh-client",
        ],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise Unavailable(f"{' '.join(argv)} failed: " + " | ".join(tail))
    sshd = find_sshd()
    if sshd is None:
        raise Unavailable("openssh-server was installed but no sshd binary was found")
    return sshd


def version() -> str | None:
    """``ssh -V`` (the client and server come from one OpenSSH build on Debian)."""
    if not shutil.which("ssh"):
        return None
    done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip() or None


def _keygen(path: pathlib.Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tether-bench", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _tail(path: pathlib.Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
Ciphers {cipher}
GatewayPorts no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
UseDNS no
LogLevel ERROR
"""


@dataclasses.dataclass(frozen=True)
class Server:
    """A running ``sshd`` of ours: its port, the client key it accepts, its pid and log."""

    port: int
    client_key: pathlib.Path
    pid: int
    log: pathlib.Path
    cipher: str


@contextlib.contextmanager
def server(cipher: str, sshd: str) -> Iterator[Server]:
    """Our own ``sshd`` on a free loopback port, accepting only ``cipher`` and one client key.

    Stops, by pid, the per-connection children it forked, then ``sshd`` itself, whatever
    happens inside the block (its clients are stopped first, inside it).
    """
    with tempfile.TemporaryDirectory(prefix="tether-bench-sshd-") as tmpdir:
        tmp = pathlib.Path(tmpdir)
        host_key, client_key = tmp / "host_ed25519", tmp / "client_ed25519"
        _keygen(host_key)
        _keygen(client_key)
        authorized_keys = tmp / "authorized_keys"
        shutil.copyfile(client_key.with_suffix(".pub"), authorized_keys)
        port = free_port()
        config = tmp / "sshd_config"
        config.write_text(
            SSHD_CONFIG.format(
                port=port,
                host_key=host_key,
                pid_file=tmp / "sshd.pid",
                authorized_keys=authorized_keys,
                cipher=cipher,
            )
        )
        os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        checked = subprocess.run(
            [sshd, "-t", "-f", str(config)], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            raise RuntimeError(f"sshd rejects the generated config: {checked.stderr.strip()}")
        sshd_log = tmp / "sshd.log"
        with (
            sshd_log.open("wb") as sshd_err,
            owned_process(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=sshd_err,
                stderr=sshd_err,
            ) as sshd_proc,
        ):
            try:
                try:
                    wait_accepting((LOOPBACK, port), timeout=10.0, proc=sshd_proc)
                except (RuntimeError, TimeoutError) as exc:
                    raise RuntimeError(f"sshd did not start: {exc}: {_tail(sshd_log)}") from exc
                yield Server(port, client_key, sshd_proc.pid, sshd_log, cipher)
            finally:
                # its clients are gone: the per-connection children should follow, or be ended
                stop_children(sshd_proc.pid)


@contextlib.contextmanager
def forward(
    to: Server, option: str, entry: tuple[str, int], target: tuple[str, int]
) -> Iterator[subprocess.Popen[bytes]]:
    """``ssh -N OPTION entry:target`` to our ``sshd`` ``to``, with its cipher, until the block
    exits; yields the client once ``entry`` accepts connections. ``option`` is ``-R`` (the
    entry listens on the server's side) or ``-L`` (on this side)."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-ssh-") as tmpdir:
        ssh_log = pathlib.Path(tmpdir) / "ssh.log"
        argv = [
            "ssh",
            "-N",
            "-F",
            "/dev/null",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "Compression=no",
            "-o",
            "LogLevel=ERROR",
            "-c",
            to.cipher,
            "-i",
            str(to.client_key),
            "-p",
            str(to.port),
            option,
            f"{entry[0]}:{entry[1]}:{target[0]}:{target[1]}",
            f"root@{LOOPBACK}",
        ]
        with (
            ssh_log.open("wb") as ssh_err,
            owned_process(argv, stdin=subprocess.DEVNULL, stdout=ssh_err, stderr=ssh_err) as ssh,
        ):
            try:
                wait_accepting(entry, timeout=15.0, proc=ssh)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(
                    f"ssh {option} did not open its forward: {exc}: {_tail(ssh_log)} "
                    f"{_tail(to.log)}"
                ) from exc
            yield ssh


@contextlib.contextmanager
def reverse_forward(cipher: str, target: tuple[str, int], sshd: str) -> Iterator[tuple[str, int]]:
    """``ssh -R`` through our own ``sshd``: yields the entry (on the sshd side) to ``target``.

    Stops, by pid, the ``ssh`` client, the per-connection children ``sshd`` forked, and
    ``sshd`` itself, in that order, whatever happens inside the block.
    """
    with server(cipher, sshd) as to:
        entry = (LOOPBACK, free_port())
        with forward(to, "-R", entry, target):
            yield entry
