"""The node's SSH server against the stock OpenSSH client, as a real OS user, on 127.0.0.1.

A cluster ``main`` with real CAs; the node presents a host certificate, users present Tether
user certificates; a role allowing login ``visitor`` decides. No mocks: ``ssh`` is the real
client, ``visitor`` a real account created here (the tests need root).
"""

from __future__ import annotations

import datetime
import fcntl
import functools
import os
import pathlib
import pty
import pwd
import shutil
import struct
import subprocess
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import attrs
import pytest
import trio
from tether_ssh.server import NodeIdentity, RoleSetAuthorizer, serve_ssh

from tether import pki
from tether.builtins import core_kinds
from tether.plugins import TetherPluginManager
from tether.rbac import RoleSet
from tether.resources import KindRegistry, parse_resources

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creates an OS user and switches to it"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client"),
]

CLUSTER = "main"
LOGIN = "visitor"
ROLE = f"""
kind: role
version: v5
metadata:
  name: visitors
spec:
  allow:
    logins: [{LOGIN}]
    node_labels: {{env: test}}
"""


@pytest.fixture(scope="module")
def os_user() -> Iterator[pwd.struct_passwd]:
    """The ``visitor`` account; created (and removed) here unless it already exists."""
    try:
        yield pwd.getpwnam(LOGIN)
        return
    except KeyError:
        pass
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", LOGIN], check=True)
    try:
        yield pwd.getpwnam(LOGIN)
    finally:
        subprocess.run(["userdel", "-r", LOGIN], check=False, capture_output=True)


@attrs.frozen
class Setup:
    dir: pathlib.Path
    cas: pki.ClusterAuthorities
    port: int
    serve: Callable[..., Awaitable[None]]  # serve_ssh with this node's arguments, but port

    def user_files(
        self,
        name: str,
        *,
        logins: Sequence[str] = (LOGIN,),
        ca: pki.SSHCertAuthority | None = None,
        expired: bool = False,
    ) -> tuple[pathlib.Path, pathlib.Path]:
        """A fresh key and a user certificate for it; returns (key file, cert file)."""
        key = pki.generate_private_key()
        now = datetime.datetime.now(datetime.UTC)
        issued_at = now - datetime.timedelta(hours=2) if expired else now
        identity = pki.Identity(
            username="alice",
            cluster=CLUSTER,
            roles=["visitors"],
            traits={"logins": list(logins)},
            logins=list(logins),
            expires=issued_at + datetime.timedelta(hours=1),
        )
        cert = pki.issue_ssh_user_cert(
            ca or self.cas.ssh_user, key.public_key(), identity, now=issued_at
        )
        key_file = self.dir / name
        cert_file = self.dir / f"{name}-cert.pub"
        pki.write_secret_file(key_file, pki.private_key_to_openssh(key))
        pki.write_secret_file(cert_file, cert.encode() + b"\n")
        return key_file, cert_file

    def known_hosts(self, name: str, host_ca: pki.SSHCertAuthority) -> pathlib.Path:
        path = self.dir / name
        path.write_text(f"@cert-authority * {pki.ssh_public_key_line(host_ca.public_key)}\n")
        return path

    def ssh_argv(
        self,
        login: str,
        command: str | None,
        *,
        key: tuple[pathlib.Path, pathlib.Path],
        known_hosts: pathlib.Path | None = None,
        options: Sequence[str] = (),
    ) -> list[str]:
        key_file, cert_file = key
        hosts = known_hosts or self.known_hosts("known_hosts", self.cas.ssh_host)
        return [
            "ssh", "-F", "/dev/null", "-i", str(key_file),
            "-o", f"CertificateFile={cert_file}",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=10",
            *options,
            "-p", str(self.port), f"{login}@127.0.0.1",
            *([command] if command is not None else []),
        ]  # fmt: skip

    async def ssh(
        self,
        login: str,
        command: str,
        *,
        key: tuple[pathlib.Path, pathlib.Path],
        known_hosts: pathlib.Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process(
            self.ssh_argv(login, command, key=key, known_hosts=known_hosts),
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=_client_env(),
        )


def _client_env() -> dict[str, str]:
    """The test's environment without an SSH agent or other SSH_* variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}


def _set_window(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _Terminal:
    """The user's side of a pseudo-terminal the ``ssh`` client runs in."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.stream = trio.lowlevel.FdStream(master)
        self.seen = b""

    async def type(self, text: str) -> None:
        await self.stream.send_all(text.encode())

    async def expect(self, wanted: bytes) -> None:
        with trio.fail_after(10):
            while wanted not in self.seen:
                try:
                    chunk = await self.stream.receive_some(4096)
                except OSError:  # EIO: the client closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{wanted!r} never came; got {self.seen!r}")
                self.seen += chunk
        self.seen = self.seen[self.seen.index(wanted) + len(wanted) :]


@pytest.fixture
async def setup(tmp_path: pathlib.Path, os_user: pwd.struct_passwd) -> AsyncIterator[Setup]:
    cas = pki.ClusterAuthorities.load_or_create(tmp_path / "keys", CLUSTER)
    host_key = pki.generate_private_key()
    host_cert = pki.issue_ssh_host_cert(
        cas.ssh_host,
        host_key.public_key(),
        host_id="node-1",
        principals=["127.0.0.1", "localhost"],
        cluster=CLUSTER,
        ttl=datetime.timedelta(hours=1),
    )
    labels = {"env": "test"}
    pm = TetherPluginManager()
    pm.register(core_kinds, name="core-kinds")
    roles = RoleSet(parse_resources(ROLE, "roles.yaml", KindRegistry.from_plugins(pm)))
    serve = functools.partial(
        serve_ssh,
        host="127.0.0.1",
        port=0,
        node=NodeIdentity(
            host_key=host_key, host_cert=host_cert, node_name="node-1", labels=labels
        ),
        trusted_user_cas={CLUSTER: [pki.ssh_public_key_line(cas.ssh_user.public_key)]},
        authorizer=RoleSetAuthorizer(roles_for=lambda identity: roles, node_labels=labels),
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve)
        yield Setup(dir=tmp_path, cas=cas, port=port, serve=serve)
        nursery.cancel_scope.cancel()


async def test_exec_runs_as_the_login_in_its_home(setup: Setup) -> None:
    key = setup.user_files("alice")
    done = await setup.ssh(LOGIN, "pwd; id -un; echo $HOME $USER $LOGNAME $SHELL; exit 3", key=key)
    assert done.returncode == 3, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines == ["/home/visitor", "visitor", "/home/visitor visitor visitor /bin/bash"]


async def test_exec_drops_privileges_and_keeps_stderr_apart(setup: Setup) -> None:
    key = setup.user_files("alice")
    script = "id -u; id -g; cat /proc/self/status | grep ^CapEff; echo oops >&2; touch /root/x"
    done = await setup.ssh(LOGIN, script, key=key)
    account = pwd.getpwnam(LOGIN)
    uid, gid, caps = done.stdout.decode().splitlines()
    assert (int(uid), int(gid)) == (account.pw_uid, account.pw_gid)
    assert caps.split() == ["CapEff:", "0000000000000000"]
    assert b"oops" in done.stderr and b"Permission denied" in done.stderr
    assert done.returncode == 1


async def test_login_outside_the_certificate_is_refused(setup: Setup) -> None:
    done = await setup.ssh("root", "id -un", key=setup.user_files("alice"))
    assert done.returncode == 255
    assert b"Permission denied (publickey)" in done.stderr
    assert b"does not allow 'root'" in done.stderr  # the reason, as an auth banner


async def test_login_the_roles_do_not_allow_is_refused(setup: Setup) -> None:
    key = setup.user_files("alice-root", logins=[LOGIN, "root"])  # the CA signed it; RBAC says no
    done = await setup.ssh("root", "id -un", key=key)
    assert done.returncode == 255
    assert b"Permission denied (publickey)" in done.stderr
    assert b"root" in done.stderr and b"role" in done.stderr
    allowed = await setup.ssh(LOGIN, "id -un", key=key)
    assert (allowed.returncode, allowed.stdout) == (0, b"visitor\n")


async def test_expired_certificate_is_refused(setup: Setup) -> None:
    done = await setup.ssh(LOGIN, "true", key=setup.user_files("old", expired=True))
    assert done.returncode == 255
    assert b"expired" in done.stderr and b"tether login" in done.stderr


async def test_certificate_of_a_foreign_ca_is_refused(setup: Setup) -> None:
    foreign = pki.ClusterAuthorities.generate(CLUSTER)
    done = await setup.ssh(LOGIN, "true", key=setup.user_files("forged", ca=foreign.ssh_user))
    assert done.returncode == 255
    assert b"signed by a CA this cluster does not trust" in done.stderr


async def test_plain_key_is_refused(setup: Setup) -> None:
    key_file, _ = setup.user_files("plain")
    done = await setup.ssh(LOGIN, "true", key=(key_file, setup.dir / "no-such-cert.pub"))
    assert done.returncode == 255
    assert b"Permission denied (publickey)" in done.stderr


async def test_client_refuses_a_node_of_another_host_ca(setup: Setup) -> None:
    other = pki.ClusterAuthorities.generate("elsewhere")
    hosts = setup.known_hosts("other_hosts", other.ssh_host)
    done = await setup.ssh(LOGIN, "true", key=setup.user_files("alice"), known_hosts=hosts)
    assert done.returncode == 255
    assert b"Host key verification failed" in done.stderr


async def test_interactive_pty_shell_follows_window_changes(setup: Setup) -> None:
    argv = setup.ssh_argv(LOGIN, None, key=setup.user_files("alice"), options=["-tt"])
    master, slave = pty.openpty()
    _set_window(slave, 30, 90)
    terminal = _Terminal(master)
    async with trio.open_nursery() as nursery:
        client: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                check=False,
                env={**_client_env(), "TERM": "xterm"},
                start_new_session=True,
                preexec_fn=_take_controlling_terminal,
            )
        )
        os.close(slave)
        await terminal.type("echo ready-$((2+3)); tty; echo $TERM; stty size\n")
        await terminal.expect(b"ready-5")
        await terminal.expect(b"/dev/pts/")
        await terminal.expect(b"xterm")
        await terminal.expect(b"30 90")
        _set_window(master, 50, 120)  # the kernel signals ssh, ssh tells the server
        await trio.sleep(0.3)
        await terminal.type("stty size; id -un | tr a-z A-Z\n")
        await terminal.expect(b"50 120")
        await terminal.expect(b"VISITOR")
        await terminal.type("exit 7\n")
        with trio.fail_after(10):
            await client.wait()
    await terminal.stream.aclose()
    assert client.returncode == 7


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                pass
    return pids


async def _no_processes_left(uid: int) -> None:
    for _ in range(100):  # the server hangs sessions up within its grace time
        if not _processes_of(uid):
            return
        await trio.sleep(0.05)
    raise AssertionError(f"processes of uid {uid} outlived their session: {_processes_of(uid)}")


async def test_a_client_that_goes_away_hangs_its_session_up(setup: Setup) -> None:
    uid = pwd.getpwnam(LOGIN).pw_uid
    argv = setup.ssh_argv(LOGIN, "echo started; exec sleep 60", key=setup.user_files("alice"))
    async with trio.open_nursery() as nursery:
        client: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process, argv, stdin=b"", stdout=subprocess.PIPE, check=False,
                env=_client_env(),
            )
        )  # fmt: skip
        assert client.stdout is not None
        with trio.fail_after(10):
            assert await client.stdout.receive_some() == b"started\n"
        assert _processes_of(uid)
        client.kill()
    await _no_processes_left(uid)


async def test_stopping_the_server_ends_its_sessions(setup: Setup) -> None:
    uid = pwd.getpwnam(LOGIN).pw_uid
    server_scope = trio.CancelScope()

    async def run_server(task_status: trio.TaskStatus[int]) -> None:
        with server_scope:
            await setup.serve(task_status=task_status)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(run_server)
        other = attrs.evolve(setup, port=port)
        argv = other.ssh_argv(LOGIN, "echo started; exec sleep 60", key=setup.user_files("a"))
        client: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process, argv, stdin=b"", stdout=subprocess.PIPE, check=False,
                env=_client_env(),
            )
        )  # fmt: skip
        assert client.stdout is not None
        with trio.fail_after(10):
            assert await client.stdout.receive_some() == b"started\n"
        server_scope.cancel()
        with trio.fail_after(10):
            await client.wait()
    assert client.returncode == 255  # connection closed, no exit status
    await _no_processes_left(uid)
