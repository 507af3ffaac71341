"""The node's SSH server against the stock OpenSSH client, as a real OS user, on 127.0.0.1.

A cluster ``main`` with real CAs; the node presents a host certificate, users present Tether
user certificates; a role allowing login ``visitor`` decides, its options whether forwarding
is allowed. No mocks: ``ssh``, ``sftp``, ``scp`` and ``ssh-agent`` are the real programs,
``visitor`` a real account created here (the tests need root). Connections reach the server
through its TCP listener, or as trio streams (tunnel mode) bridged from a test-owned port.
"""

from __future__ import annotations

import datetime
import fcntl
import functools
import hashlib
import itertools
import os
import pathlib
import pty
import pwd
import shlex
import shutil
import signal
import struct
import subprocess
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from tether_ssh import server as ssh_server
from tether_ssh.server import (
    NodeIdentity,
    Permissions,
    RoleSetAuthorizer,
    SSHServer,
    open_ssh_server,
    serve_ssh,
)

from tether.api import Identity, RoleSet, private_key_to_openssh, splice
from tether.testing.certificates import (
    ClusterAuthorities,
    SSHCertAuthority,
    generate_private_key,
    issue_ssh_host_cert,
    issue_ssh_user_cert,
    ssh_public_key_line,
    write_secret_file,
)
from tether.testing.http import free_port
from tether.testing.roles import role_set

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


@attrs.define
class Roles:
    """The role set the server's authorizer reads on every login; tests swap it."""

    current: RoleSet = attrs.field(factory=lambda: role_set(ROLE))

    def use(self, **options: bool) -> None:
        self.current = role_set(ROLE, **options)


@attrs.frozen
class Setup:
    dir: pathlib.Path
    cas: ClusterAuthorities
    port: int
    serve: Callable[..., Awaitable[None]]  # serve_ssh with this node's arguments, but port
    server: SSHServer  # the server listening on port
    arguments: Mapping[str, Any]  # what open_ssh_server got: node, CAs, authorizer, audit
    roles: Roles
    events: list[tuple[str, dict[str, Any]]]  # what the server audited, in order

    def user_files(
        self,
        name: str,
        *,
        logins: Sequence[str] = (LOGIN,),
        ca: SSHCertAuthority | None = None,
        expired: bool = False,
        agent: bool = False,
        lifetime: datetime.timedelta = datetime.timedelta(hours=1),
    ) -> tuple[pathlib.Path, pathlib.Path]:
        """A fresh key and a user certificate for it; returns (key file, cert file)."""
        key = generate_private_key()
        now = datetime.datetime.now(datetime.UTC)
        issued_at = now - datetime.timedelta(hours=2) if expired else now
        identity = Identity(
            username="alice",
            cluster=CLUSTER,
            roles=["visitors"],
            traits={"logins": list(logins)},
            logins=list(logins),
            expires=issued_at + lifetime,
        )
        cert = issue_ssh_user_cert(
            ca or self.cas.ssh_user,
            key.public_key(),
            identity,
            now=issued_at,
            permit_agent_forwarding=agent,
        )
        key_file = self.dir / name
        cert_file = self.dir / f"{name}-cert.pub"
        write_secret_file(key_file, private_key_to_openssh(key))
        write_secret_file(cert_file, cert.encode() + b"\n")
        return key_file, cert_file

    def known_hosts(self, name: str, host_ca: SSHCertAuthority) -> pathlib.Path:
        path = self.dir / name
        path.write_text(f"@cert-authority * {ssh_public_key_line(host_ca.public_key)}\n")
        return path

    def client_options(
        self,
        key: tuple[pathlib.Path, pathlib.Path],
        known_hosts: pathlib.Path | None = None,
    ) -> list[str]:
        """Options every OpenSSH client (ssh, sftp, scp) takes: this key, this node's CA."""
        key_file, cert_file = key
        hosts = known_hosts or self.known_hosts("known_hosts", self.cas.ssh_host)
        return [
            "-F", "/dev/null", "-i", str(key_file),
            "-o", f"CertificateFile={cert_file}",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip

    def ssh_argv(
        self,
        login: str,
        command: str | None,
        *,
        key: tuple[pathlib.Path, pathlib.Path],
        known_hosts: pathlib.Path | None = None,
        options: Sequence[str] = (),
        port: int | None = None,
    ) -> list[str]:
        return [
            "ssh", *self.client_options(key, known_hosts), *options,
            "-p", str(port or self.port), f"{login}@127.0.0.1",
            *([command] if command is not None else []),
        ]  # fmt: skip

    async def ssh(
        self,
        login: str,
        command: str,
        *,
        key: tuple[pathlib.Path, pathlib.Path],
        known_hosts: pathlib.Path | None = None,
        options: Sequence[str] = (),
        stdin: bytes = b"",
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        return await run(
            self.ssh_argv(
                login, command, key=key, known_hosts=known_hosts, options=options, port=port
            ),
            stdin=stdin,
            env=env,
        )

    def audited(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.events if name == event]

    async def wait_audited(self, event: str, count: int = 1) -> list[dict[str, Any]]:
        """The fields of *event* once it was audited *count* times (sessions end after exit)."""
        await _until(lambda: len(self.audited(event)) >= count, f"{count} {event} events")
        return self.audited(event)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait up to 10 s for *condition*, which another process or the server's loop changes."""
    for _ in range(500):
        if condition():
            return
        await trio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def run(
    argv: Sequence[str], *, stdin: bytes = b"", env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run an OpenSSH client program to completion, capturing its output."""
    return await trio.run_process(
        list(argv),
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**_client_env(), **(env or {})},
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
async def setup(
    tmp_path: pathlib.Path, os_user: pwd.struct_passwd, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Setup]:
    cas = ClusterAuthorities.load_or_create(tmp_path / "keys", CLUSTER)
    host_key = generate_private_key()
    host_cert = issue_ssh_host_cert(
        cas.ssh_host,
        host_key.public_key(),
        host_id="node-1",
        principals=["127.0.0.1", "localhost"],
        cluster=CLUSTER,
        ttl=datetime.timedelta(hours=1),
    )
    labels = {"env": "test"}
    roles = Roles()
    events: list[tuple[str, dict[str, Any]]] = []
    arguments: dict[str, Any] = {
        "node": NodeIdentity(
            host_key=host_key, host_cert=host_cert, node_name="node-1", labels=labels
        ),
        "trusted_user_cas": {CLUSTER: [ssh_public_key_line(cas.ssh_user.public_key)]},
        "authorizer": RoleSetAuthorizer(
            roles_for=lambda identity: roles.current, node_labels=labels
        ),
        "audit": lambda event, fields: events.append((event, dict(fields))),
    }
    serve = functools.partial(serve_ssh, host="127.0.0.1", port=0, **arguments)
    async with open_ssh_server(**arguments) as server, trio.open_nursery() as nursery:
        port = await nursery.start(server.listen, "127.0.0.1", 0)
        yield Setup(
            dir=tmp_path,
            cas=cas,
            port=port,
            serve=serve,
            server=server,
            arguments=arguments,
            roles=roles,
            events=events,
        )
        nursery.cancel_scope.cancel()
    loop_errors = [r for r in caplog.records if "unexpected error in the event loop" in r.message]
    assert not loop_errors, loop_errors[0].exc_info  # an asyncssh failure nobody handled


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


async def test_bulk_output_arrives_whole_before_the_exit_status(setup: Setup) -> None:
    # Output faster than the client reads, on both streams: all of it must arrive before the
    # exit status, however the two pipes' ends interleave with the process's exit.
    command = "echo start >&2; head -c 30000000 /dev/zero; exit 3"
    for _ in range(2):
        done = await setup.ssh(LOGIN, command, key=setup.user_files("alice"))
        assert (done.returncode, len(done.stdout), done.stderr) == (3, 30_000_000, b"start\n")


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
    assert b"tether: access denied: certificate expired: " in done.stderr
    assert b"run `tether login` again" in done.stderr
    # Audited once, though ssh offers the certificate twice (query, then signed); ssh also
    # offers the plain key, which is refused for its own reason.
    (denied,) = [e for e in setup.audited("ssh.denied") if "expired" in e["reason"]]
    assert denied["user"] == "alice"  # the signature verified; only the date is wrong
    assert denied["reason"].startswith("certificate expired: certificate of alice@main expired")


async def test_certificate_of_a_foreign_ca_is_refused(setup: Setup) -> None:
    foreign = ClusterAuthorities.generate(CLUSTER)
    done = await setup.ssh(LOGIN, "true", key=setup.user_files("forged", ca=foreign.ssh_user))
    assert done.returncode == 255
    assert b"signed by a CA this cluster does not trust" in done.stderr


async def test_plain_key_is_refused(setup: Setup) -> None:
    key_file, _ = setup.user_files("plain")
    done = await setup.ssh(LOGIN, "true", key=(key_file, setup.dir / "no-such-cert.pub"))
    assert done.returncode == 255
    assert b"Permission denied (publickey)" in done.stderr


async def test_client_refuses_a_node_of_another_host_ca(setup: Setup) -> None:
    other = ClusterAuthorities.generate("elsewhere")
    hosts = setup.known_hosts("other_hosts", other.ssh_host)
    done = await setup.ssh(LOGIN, "true", key=setup.user_files("alice"), known_hosts=hosts)
    assert done.returncode == 255
    assert b"Host key verification failed" in done.stderr


# -- the roles end a connection: client_idle_timeout and disconnect_expired_cert ------------


async def test_a_session_without_input_ends_at_the_roles_client_idle_timeout(
    setup: Setup,
) -> None:
    setup.roles.current = role_set(ROLE, client_idle_timeout=datetime.timedelta(seconds=1))
    with trio.fail_after(20):
        ran = await setup.ssh(LOGIN, "sleep 30", key=setup.user_files("idle"))
    assert ran.returncode == 255, ran
    assert b"tether: session ended: no input for 1 seconds (client_idle_timeout)" in ran.stderr
    (ended,) = await setup.wait_audited("ssh.disconnect")
    assert ended["reason"] == "idle timeout"
    assert ended["user"] == "alice" and ended["login"] == LOGIN


async def test_a_session_the_user_types_into_outlives_the_idle_timeout(setup: Setup) -> None:
    setup.roles.current = role_set(ROLE, client_idle_timeout=datetime.timedelta(seconds=1))
    argv = setup.ssh_argv(LOGIN, "cat >/dev/null; echo still here", key=setup.user_files("typing"))
    typing = "for i in 1 2 3 4 5 6 7 8; do echo key; sleep 0.3; done"  # 2.4 s of typing
    with trio.fail_after(20):
        ran = await run(["sh", "-c", f"{typing} | {shlex.join(argv)}"])
    assert (ran.returncode, ran.stdout) == (0, b"still here\n"), ran
    assert not setup.audited("ssh.disconnect")


async def test_a_session_ends_when_the_certificate_expires_if_the_roles_say_so(
    setup: Setup,
) -> None:
    # the attack: a user whose access was cut keeps the shell a short-lived certificate opened
    setup.roles.current = role_set(ROLE, disconnect_expired_cert=True)
    key = setup.user_files("expiring", lifetime=datetime.timedelta(seconds=3))
    with trio.fail_after(20):
        ran = await setup.ssh(LOGIN, "sleep 30", key=key)
    assert ran.returncode == 255, ran
    assert (
        b"tether: session ended: your certificate has expired (disconnect_expired_cert)"
        in ran.stderr
    )
    (ended,) = await setup.wait_audited("ssh.disconnect")
    assert ended["reason"] == "the user's certificate expired"


async def test_without_disconnect_expired_cert_a_session_outlives_its_certificate(
    setup: Setup,
) -> None:
    key = setup.user_files("outliving", lifetime=datetime.timedelta(seconds=2))
    with trio.fail_after(20):
        ran = await setup.ssh(LOGIN, "sleep 3; echo done", key=key)
    assert (ran.returncode, ran.stdout) == (0, b"done\n"), ran


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


_sessions = itertools.count(1)


def _long_session() -> tuple[str, str]:
    """A command that runs until hung up, and the marker that finds its process.

    The marker (a unique sleep time) tells this test's processes from those of other tests
    that run as the same account at the same time.
    """
    marker = f"sleep 60.{os.getpid()}{next(_sessions):03d}"
    return f"echo started; exec {marker}", marker


def _processes_of(uid: int, marker: str) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            owner = entry.stat().st_uid
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if owner == uid and marker.encode() in command:
            pids.append(int(entry.name))
    return pids


async def _no_processes_left(uid: int, marker: str) -> None:
    for _ in range(100):  # the server hangs sessions up within its grace time
        if not _processes_of(uid, marker):
            return
        await trio.sleep(0.05)
    raise AssertionError(
        f"{marker!r} of uid {uid} outlived its session: {_processes_of(uid, marker)}"
    )


async def test_a_client_that_goes_away_hangs_its_session_up(setup: Setup) -> None:
    uid = pwd.getpwnam(LOGIN).pw_uid
    command, marker = _long_session()
    argv = setup.ssh_argv(LOGIN, command, key=setup.user_files("alice"))
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
        assert _processes_of(uid, marker)
        client.kill()
    await _no_processes_left(uid, marker)


@pytest.mark.parametrize("terminal", [False, True], ids=["pipes", "pty"])
async def test_sessions_start_with_default_signals_when_the_node_runs_under_nohup(
    setup: Setup, terminal: bool
) -> None:
    # what `nohup tetherd start &` gives the node: SIGHUP, SIGINT and SIGQUIT ignored (and
    # here SIGUSR1 blocked too); exec would pass all of that on to the sessions
    ignored = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
    before = {signum: signal.signal(signum, signal.SIG_IGN) for signum in ignored}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        ran = await setup.ssh(
            LOGIN,
            "grep -E '^Sig(Blk|Ign)' /proc/self/status",
            key=setup.user_files("alice"),
            options=["-tt"] if terminal else [],
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.decode().replace("\r\n", "\n") == (
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    )


async def test_stopping_the_server_ends_its_sessions(setup: Setup) -> None:
    uid = pwd.getpwnam(LOGIN).pw_uid
    server_scope = trio.CancelScope()

    async def run_server(task_status: trio.TaskStatus[int]) -> None:
        with server_scope:
            await setup.serve(task_status=task_status)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(run_server)
        other = attrs.evolve(setup, port=port)
        command, marker = _long_session()
        argv = other.ssh_argv(LOGIN, command, key=setup.user_files("a"))
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
    await _no_processes_left(uid, marker)


async def test_input_a_slow_command_reads_later_arrives_whole(setup: Setup) -> None:
    """More input than the session's stdin pipe holds, for a command that reads it late: the
    node writes what fits at once and waits for the rest."""
    data = bytes(range(256)) * 12_000  # 3 MB: three pipes full
    done = await setup.ssh(LOGIN, "sleep 1; sha256sum", key=setup.user_files("a"), stdin=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_input_a_command_stops_reading_is_dropped_and_it_still_exits(setup: Setup) -> None:
    data = bytes(3_000_000)
    command = "head -c 10 | wc -c; exec 0<&-; sleep 0.5; echo done"
    done = await setup.ssh(LOGIN, command, key=setup.user_files("a"), stdin=data)
    assert (done.returncode, done.stdout.split()) == (0, [b"10", b"done"]), done.stderr


# --- audit ---------------------------------------------------------------------------------


async def test_a_session_is_audited_from_start_to_exit_status(setup: Setup) -> None:
    command = "head -c 5 >/dev/null; printf 1234567; printf ab >&2; exit 4"
    done = await setup.ssh(LOGIN, command, key=setup.user_files("alice"), stdin=b"hello, rest")
    assert (done.returncode, done.stdout, done.stderr) == (4, b"1234567", b"ab")
    who = {"user": "alice", "cluster": CLUSTER, "login": LOGIN, "node": "node-1"}
    (start,) = setup.audited("ssh.session.start")
    assert start == {**who, "peer": start["peer"], "kind": "exec", "command": command}
    assert start["peer"].startswith("127.0.0.1:")
    (end,) = await setup.wait_audited("ssh.session.end")
    assert end == {
        **start,
        "bytes_in": len(b"hello, rest"),  # all of stdin reached the channel, read or not
        "bytes_out": len(b"1234567ab"),
        "exit_status": 4,
        "exit_signal": None,
    }


async def test_a_session_killed_by_a_signal_is_audited_with_it(setup: Setup) -> None:
    done = await setup.ssh(LOGIN, "kill -TERM $$", key=setup.user_files("alice"))
    assert done.returncode != 0
    (end,) = await setup.wait_audited("ssh.session.end")
    assert (end["exit_status"], end["exit_signal"]) == (None, "TERM")


async def test_a_refused_login_is_audited_once_with_its_reason(setup: Setup) -> None:
    done = await setup.ssh("root", "id -un", key=setup.user_files("alice"))
    assert done.returncode == 255
    (denied,) = [e for e in setup.audited("ssh.denied") if "root" in e["reason"]]
    assert denied["user"] == "alice" and denied["login"] == "root"
    assert denied["node"] == "node-1" and denied["peer"].startswith("127.0.0.1:")
    assert "does not allow 'root'" in denied["reason"]
    assert not setup.audited("ssh.session.start")


async def test_a_plain_key_is_audited_without_a_user(setup: Setup) -> None:
    key_file, _ = setup.user_files("plain")
    await setup.ssh(LOGIN, "true", key=(key_file, setup.dir / "no-such-cert.pub"))
    (denied,) = setup.audited("ssh.denied")
    assert denied["user"] == "" and denied["login"] == LOGIN
    assert "this is a plain public key" in denied["reason"]


async def test_a_broken_audit_sink_does_not_break_sessions(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: str, fields: Mapping[str, Any]) -> None:
        raise RuntimeError("audit backend down")

    async with (
        open_ssh_server(**{**setup.arguments, "audit": broken}) as server,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(server.listen, "127.0.0.1", 0)
        done = await setup.ssh(LOGIN, "echo fine; exit 2", key=setup.user_files("a"), port=port)
        nursery.cancel_scope.cancel()
    assert (done.returncode, done.stdout) == (2, b"fine\n")
    assert "audit sink failed on ssh.session.start event" in caplog.text


# --- SFTP and scp ----------------------------------------------------------------------------


def _remote(name: str) -> pathlib.Path:
    return pathlib.Path(pwd.getpwnam(LOGIN).pw_dir) / name


@pytest.fixture
def payload(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A local file of 3 MiB of random bytes (several SFTP requests and channel windows)."""
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024))
    yield path


async def test_sftp_put_and_get_round_trip_as_the_login(
    setup: Setup, payload: pathlib.Path
) -> None:
    back = setup.dir / "back.bin"
    batch = setup.dir / "batch"
    batch.write_text(f"put {payload} sftp-upload.bin\nget sftp-upload.bin {back}\npwd\n")
    key = setup.user_files("alice")
    argv = ["sftp", *setup.client_options(key), "-P", str(setup.port), "-b", str(batch)]
    try:
        done = await run([*argv, f"{LOGIN}@127.0.0.1"])
        assert done.returncode == 0, done.stderr
        uploaded = trio.Path(_remote("sftp-upload.bin"))
        assert (await uploaded.stat()).st_uid == pwd.getpwnam(LOGIN).pw_uid  # written by visitor
        sent = await trio.Path(payload).read_bytes()
        assert await uploaded.read_bytes() == sent == await trio.Path(back).read_bytes()
        assert b"Remote working directory: /home/visitor" in done.stdout
    finally:
        _remote("sftp-upload.bin").unlink(missing_ok=True)
    (end,) = await setup.wait_audited("ssh.session.end")
    assert (end["kind"], end["command"], end["exit_status"]) == ("sftp", None, 0)
    assert end["bytes_in"] > len(sent) and end["bytes_out"] > len(sent)


async def test_sftp_cannot_write_where_the_login_may_not(setup: Setup) -> None:
    batch = setup.dir / "batch"
    batch.write_text("put /etc/hostname /root/not-yours\n")
    key = setup.user_files("alice")
    argv = ["sftp", *setup.client_options(key), "-P", str(setup.port), "-b", str(batch)]
    done = await run([*argv, f"{LOGIN}@127.0.0.1"])
    assert done.returncode != 0
    assert b"Permission denied" in done.stderr
    assert not await trio.Path("/root/not-yours").exists()


@pytest.mark.parametrize("mode", [[], ["-O"]], ids=["sftp-protocol", "legacy-scp-protocol"])
async def test_scp_copies_a_file_there_and_back(
    setup: Setup, payload: pathlib.Path, mode: list[str]
) -> None:
    key = setup.user_files("alice")
    scp = ["scp", *mode, *setup.client_options(key), "-P", str(setup.port)]
    back = setup.dir / "back.bin"
    try:
        there = await run([*scp, str(payload), f"{LOGIN}@127.0.0.1:scp-upload.bin"])
        assert there.returncode == 0, there.stderr
        uploaded = await trio.Path(_remote("scp-upload.bin")).stat()
        assert uploaded.st_uid == pwd.getpwnam(LOGIN).pw_uid
        again = await run([*scp, f"{LOGIN}@127.0.0.1:scp-upload.bin", str(back)])
        assert again.returncode == 0, again.stderr
        assert await trio.Path(back).read_bytes() == await trio.Path(payload).read_bytes()
    finally:
        _remote("scp-upload.bin").unlink(missing_ok=True)
    kinds = {fields["kind"] for fields in setup.audited("ssh.session.start")}
    assert kinds == ({"exec"} if mode else {"sftp"})


async def test_sftp_on_a_node_without_sftp_server_says_so(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_server, "_SFTP_SERVER_PATHS", ("/nonexistent/sftp-server",))
    batch = setup.dir / "batch"
    batch.write_text("pwd\n")
    key = setup.user_files("alice")
    argv = ["sftp", *setup.client_options(key), "-P", str(setup.port), "-b", str(batch)]
    done = await run([*argv, f"{LOGIN}@127.0.0.1"])
    assert done.returncode != 0
    assert b"tether: node 'node-1' has no sftp-server" in done.stderr
    (end,) = await setup.wait_audited("ssh.session.end")
    assert end["exit_status"] == 1


async def test_other_subsystems_are_refused(setup: Setup) -> None:
    done = await setup.ssh(LOGIN, "netconf", key=setup.user_files("alice"), options=["-s"])
    assert done.returncode == 1
    assert b"tether: subsystem 'netconf' is not supported" in done.stderr
    (denied,) = setup.audited("ssh.denied")
    assert denied["reason"] == "subsystem 'netconf' is not supported"


# --- port and agent forwarding ----------------------------------------------------------------


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


async def _connect_when_listening(port: int) -> trio.SocketStream:
    with trio.fail_after(10):
        while True:
            try:
                return await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)


async def _forward_and_echo(
    setup: Setup, message: bytes, *, pieces: int = 1, pause: float = 0.0
) -> bytes:
    """``ssh -N -L`` a free local port to a TCP echo service; what comes back for *message*,
    sent in *pieces* with *pause* seconds between them."""
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(trio.serve_tcp, _echo, 0, host="127.0.0.1")
        )
        echo_port = listener.socket.getsockname()[1]
        local_port = free_port()
        argv = setup.ssh_argv(
            LOGIN,
            None,
            key=setup.user_files("alice"),
            options=["-N", "-L", f"{local_port}:127.0.0.1:{echo_port}",
                     "-o", "ExitOnForwardFailure=yes"],
        )  # fmt: skip
        client: trio.Process = await nursery.start(
            functools.partial(trio.run_process, argv, stdin=b"", check=False, env=_client_env())
        )
        received = b""
        async with await _connect_when_listening(local_port) as stream:
            size = -(-len(message) // pieces)
            for start in range(0, len(message), size):
                await stream.send_all(message[start : start + size])
                await trio.sleep(pause)
            with trio.fail_after(10):
                while len(received) < len(message):
                    try:
                        chunk = await stream.receive_some()
                    except trio.BrokenResourceError:
                        chunk = b""
                    if not chunk:
                        break
                    received += chunk
        client.terminate()
        nursery.cancel_scope.cancel()
    return received


async def test_local_port_forwarding_reaches_a_service_on_the_node(setup: Setup) -> None:
    setup.roles.use(port_forwarding=True)
    assert await _forward_and_echo(setup, b"ping through the node") == b"ping through the node"
    (forward,) = setup.audited("ssh.port_forward")
    assert forward["user"] == "alice" and forward["login"] == LOGIN
    assert forward["direction"] == "local"
    assert forward["host"] == "127.0.0.1" and isinstance(forward["port"], int)


async def test_traffic_on_a_forwarded_port_keeps_the_connection_from_idling_out(
    setup: Setup,
) -> None:
    setup.roles.current = role_set(
        ROLE, port_forwarding=True, client_idle_timeout=datetime.timedelta(seconds=1)
    )
    message = b"one piece every 0.3 s for 2.4 s"
    assert await _forward_and_echo(setup, message, pieces=8, pause=0.3) == message
    assert not setup.audited("ssh.disconnect")


async def test_local_port_forwarding_is_refused_when_the_roles_forbid_it(setup: Setup) -> None:
    setup.roles.use(port_forwarding=False)
    assert await _forward_and_echo(setup, b"ping") == b""
    (denied,) = await setup.wait_audited("ssh.denied")
    assert denied["reason"] == "port forwarding is not allowed by the roles of alice@main"
    assert denied["user"] == "alice" and denied["login"] == LOGIN
    assert not setup.audited("ssh.port_forward")


async def test_remote_port_forwarding_is_refused_when_the_roles_forbid_it(setup: Setup) -> None:
    setup.roles.use(port_forwarding=False)  # the certificate allows it; the roles do not
    options = ["-N", "-R", "0:127.0.0.1:9", "-o", "ExitOnForwardFailure=yes"]
    done = await setup.ssh(LOGIN, "true", key=setup.user_files("alice"), options=options)
    assert done.returncode == 255
    assert b"remote port forwarding failed" in done.stderr
    (denied,) = setup.audited("ssh.denied")
    assert denied["reason"] == "port forwarding is not allowed by the roles of alice@main"
    assert not setup.audited("ssh.port_forward")


async def test_remote_port_forwarding_brings_the_nodes_connections_to_the_client(
    setup: Setup, nursery: trio.Nursery
) -> None:
    setup.roles.use(port_forwarding=True)
    (listener,) = await nursery.start(functools.partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
    echo_port = listener.socket.getsockname()[1]
    node_port = free_port()
    # as the session's user, on the node: through the node's port, back to the echo here
    command = f"exec 3<>/dev/tcp/127.0.0.1/{node_port}; echo ping-back >&3; head -n1 <&3"
    options = ["-R", f"{node_port}:127.0.0.1:{echo_port}", "-o", "ExitOnForwardFailure=yes"]
    done = await setup.ssh(
        LOGIN, f"bash -c '{command}'", key=setup.user_files("alice"), options=options
    )
    assert (done.returncode, done.stdout) == (0, b"ping-back\n"), done.stderr
    (forward,) = setup.audited("ssh.port_forward")
    assert forward["direction"] == "remote" and forward["port"] == node_port
    assert forward["user"] == "alice" and forward["login"] == LOGIN


async def test_remote_port_forwarding_listens_on_the_loopback_only(setup: Setup) -> None:
    setup.roles.use(port_forwarding=True)
    node_port = free_port()
    # asked for every address, as `ssh -R *:PORT` does; sshd without GatewayPorts says no
    command = f"ss -Hltn 'sport = :{node_port}'"
    options = ["-R", f"*:{node_port}:127.0.0.1:9", "-o", "ExitOnForwardFailure=yes"]
    done = await setup.ssh(LOGIN, command, key=setup.user_files("alice"), options=options)
    assert done.returncode == 0, done.stderr
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in done.stdout.decode().splitlines()}
    assert addresses and addresses <= {"127.0.0.1", "[::1]"}, done.stdout


async def test_remote_port_forwarding_on_a_privileged_port_needs_root(setup: Setup) -> None:
    setup.roles.use(port_forwarding=True)
    options = ["-N", "-R", "80:127.0.0.1:9", "-o", "ExitOnForwardFailure=yes"]
    done = await setup.ssh(LOGIN, "true", key=setup.user_files("alice"), options=options)
    assert done.returncode == 255
    assert b"remote port forwarding failed for listen port 80" in done.stderr
    (denied,) = setup.audited("ssh.denied")
    assert denied["reason"] == "remote port forwarding on privileged port 80 needs login root"


@pytest.fixture
async def agent(tmp_path: pathlib.Path) -> AsyncIterator[dict[str, str]]:
    """A running ``ssh-agent`` holding one key; the client environment that points at it."""
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("needs ssh-agent and ssh-add")
    sock = tmp_path / "agent.sock"
    key = tmp_path / "agent-key"
    write_secret_file(key, private_key_to_openssh(generate_private_key()))
    env = {"SSH_AUTH_SOCK": str(sock)}
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(trio.run_process, ["ssh-agent", "-D", "-a", str(sock)],
                              stdout=subprocess.DEVNULL, check=False)
        )  # fmt: skip
        for _ in range(500):  # the socket file exists before the agent listens on it
            added = await run(["ssh-add", str(key)], env=env)
            if b"Error connecting to agent" not in added.stderr:
                break
            await trio.sleep(0.02)
        assert added.returncode == 0, added.stderr
        yield env
        process.terminate()


async def test_forwarded_agent_lists_the_users_key(setup: Setup, agent: dict[str, str]) -> None:
    setup.roles.use(forward_agent=True)
    here = await run(["ssh-add", "-l"], env=agent)
    key = setup.user_files("alice", agent=True)
    command = "id -un; ssh-add -l; stat -c %U $SSH_AUTH_SOCK"
    done = await setup.ssh(LOGIN, command, key=key, options=["-A"], env=agent)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"visitor\n" + here.stdout + b"visitor\n"
    assert here.stdout.startswith(b"256 SHA256:")


async def test_agent_forwarding_is_refused_when_the_roles_forbid_it(
    setup: Setup, agent: dict[str, str]
) -> None:
    setup.roles.use(forward_agent=False)
    key = setup.user_files("alice", agent=True)  # the certificate allows it; the roles do not
    done = await setup.ssh(LOGIN, "echo ${SSH_AUTH_SOCK:-none}", key=key, options=["-A"], env=agent)
    assert (done.returncode, done.stdout) == (0, b"none\n")
    (denied,) = setup.audited("ssh.denied")
    assert denied["reason"] == "agent forwarding is not allowed by the roles of alice@main"


async def test_agent_forwarding_needs_the_certificate_to_permit_it(
    setup: Setup, agent: dict[str, str]
) -> None:
    setup.roles.use(forward_agent=True)
    key = setup.user_files("alice")  # issued without permit-agent-forwarding
    done = await setup.ssh(LOGIN, "echo ${SSH_AUTH_SOCK:-none}", key=key, options=["-A"], env=agent)
    assert (done.returncode, done.stdout) == (0, b"none\n")
    (denied,) = setup.audited("ssh.denied")
    assert denied["reason"] == "agent forwarding is not permitted by the certificate"


def test_roles_grant_forwarding_and_end_connections_through_permissions() -> None:
    identity = Identity(
        username="alice",
        cluster=CLUSTER,
        roles=["visitors"],
        traits={},
        logins=[LOGIN],
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
    )
    labels = {"env": "test"}
    default = RoleSetAuthorizer(roles_for=lambda _: role_set(ROLE), node_labels=labels)
    assert default.authorize(identity, LOGIN) == Permissions(port_forwarding=True)
    both = role_set(ROLE, port_forwarding=False, forward_agent=True)
    authorizer = RoleSetAuthorizer(roles_for=lambda _: both, node_labels=labels)
    assert authorizer.authorize(identity, LOGIN) == Permissions(forward_agent=True)
    assert Permissions() == Permissions(port_forwarding=False, forward_agent=False)
    # and the connection's end: the shortest idle timeout, the certificate's expiry
    strict = role_set(
        ROLE, client_idle_timeout=datetime.timedelta(minutes=5), disconnect_expired_cert=True
    )
    ending = RoleSetAuthorizer(roles_for=lambda _: strict, node_labels=labels)
    granted = ending.authorize(identity, LOGIN)
    assert (granted.idle_timeout, granted.disconnect_at) == (300.0, identity.expires)
    assert Permissions().idle_timeout is None and Permissions().disconnect_at is None


# --- connections carried by streams (tunnel mode) ----------------------------------------------


async def _serve_tcp_through_memory_streams(
    server: SSHServer, peer: str, *, task_status: trio.TaskStatus[int]
) -> None:
    """A local TCP port whose connections reach *server* as in-memory trio streams.

    Stands in for a node's reverse tunnel: the bytes ``ssh`` sends cross a
    ``memory_stream_pair`` (no socket) before :meth:`SSHServer.serve_stream` sees them.
    """

    async def carry(tcp: trio.SocketStream) -> None:
        outside, inside = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(splice, tcp, outside)
            await server.serve_stream(inside, peer=peer)

    await trio.serve_tcp(carry, 0, host="127.0.0.1", task_status=task_status)


async def test_a_connection_carried_by_a_stream_runs_a_command(setup: Setup) -> None:
    peer = "203.0.113.7:4242"
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(_serve_tcp_through_memory_streams, setup.server, peer)
        port = listener.socket.getsockname()[1]
        key = setup.user_files("alice")
        command = "echo $SSH_CLIENT; head -c 4000000 /dev/zero | wc -c; cat | wc -c; exit 6"
        done = await setup.ssh(LOGIN, command, key=key, port=port, stdin=b"x" * 1_000_000)
        assert done.returncode == 6, done.stderr
        assert done.stdout.split() == [b"203.0.113.7", b"4242", b"0", b"4000000", b"1000000"]
        (start,) = setup.audited("ssh.session.start")
        assert start["peer"] == peer
        nursery.cancel_scope.cancel()
    await _until(lambda: not setup.server.statistics().connections, "the connection closed")


async def test_a_refused_login_over_a_stream_ends_its_connection(setup: Setup) -> None:
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            _serve_tcp_through_memory_streams, setup.server, "198.51.100.1:22"
        )
        port = listener.socket.getsockname()[1]
        done = await setup.ssh("root", "true", key=setup.user_files("alice"), port=port)
        assert done.returncode == 255
        assert b"does not allow 'root'" in done.stderr
        assert {e["peer"] for e in setup.audited("ssh.denied")} == {"198.51.100.1:22"}
        nursery.cancel_scope.cancel()


async def test_cancelling_a_stream_connection_hangs_its_session_up(setup: Setup) -> None:
    uid = pwd.getpwnam(LOGIN).pw_uid
    client_side, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(
                trio.serve_tcp, functools.partial(splice, client_side), 0, host="127.0.0.1"
            )
        )
        port = listener.socket.getsockname()[1]
        serving = trio.CancelScope()

        async def serve() -> None:
            with serving:
                await setup.server.serve_stream(server_side, peer="192.0.2.1:1")

        nursery.start_soon(serve)
        command, marker = _long_session()
        argv = setup.ssh_argv(LOGIN, command, key=setup.user_files("a"), port=port)
        client: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process, argv, stdin=b"", stdout=subprocess.PIPE, check=False,
                env=_client_env(),
            )
        )  # fmt: skip
        assert client.stdout is not None
        with trio.fail_after(10):
            assert await client.stdout.receive_some() == b"started\n"
        assert _processes_of(uid, marker)
        serving.cancel()
        with trio.fail_after(10):
            await client.wait()
        nursery.cancel_scope.cancel()
    assert client.returncode == 255  # connection closed, no exit status
    await _no_processes_left(uid, marker)
    (end,) = await setup.wait_audited("ssh.session.end")
    assert end["exit_signal"] == "HUP"


# --- changing the server while it runs --------------------------------------------------------


async def test_new_roles_apply_to_the_next_login(setup: Setup) -> None:
    key = setup.user_files("alice")
    assert (await setup.ssh(LOGIN, "true", key=key)).returncode == 0
    nobody = RoleSetAuthorizer(roles_for=lambda _: RoleSet([]), node_labels={"env": "test"})
    setup.server.update(authorizer=nobody)
    done = await setup.ssh(LOGIN, "true", key=key)
    assert done.returncode == 255
    assert b"login 'visitor' is not allowed by roles (none)" in done.stderr


async def test_one_login_is_one_authorization_and_one_audit(setup: Setup) -> None:
    # OpenSSH asks whether the key would do, then signs with it: one decision, not two (a
    # leaf's authorizer audits each role mapping it makes)
    decisions: list[tuple[str, str]] = []
    inner = RoleSetAuthorizer(roles_for=lambda _: setup.roles.current, node_labels={"env": "test"})

    class Counting:
        def authorize(self, identity: Identity, login: str) -> Permissions:
            decisions.append((identity.username, login))
            return inner.authorize(identity, login)

    setup.server.update(authorizer=Counting())
    assert (await setup.ssh(LOGIN, "true", key=setup.user_files("alice"))).returncode == 0
    assert decisions == [("alice", LOGIN)]
    # and a refusal is one decision, audited once
    inner = RoleSetAuthorizer(roles_for=lambda _: RoleSet([]), node_labels={"env": "test"})
    decisions.clear()
    assert (await setup.ssh(LOGIN, "true", key=setup.user_files("bob"))).returncode == 255
    assert decisions == [("alice", LOGIN)]
    refusals = [
        f for e, f in setup.events if e == "ssh.denied" and "not allowed by roles" in f["reason"]
    ]
    assert len(refusals) == 1


async def test_a_renewed_host_certificate_is_presented_to_the_next_client(setup: Setup) -> None:
    other = ClusterAuthorities.generate(CLUSTER)  # a rotated host CA
    host_key = generate_private_key()
    host_cert = issue_ssh_host_cert(
        other.ssh_host,
        host_key.public_key(),
        host_id="node-1",
        principals=["127.0.0.1"],
        cluster=CLUSTER,
        ttl=datetime.timedelta(hours=1),
    )
    setup.server.update(node=NodeIdentity(host_key=host_key, host_cert=host_cert, node_name="n"))
    key = setup.user_files("alice")
    old = await setup.ssh(LOGIN, "true", key=key)
    assert old.returncode == 255 and b"Host key verification failed" in old.stderr
    rotated = setup.known_hosts("rotated_hosts", other.ssh_host)
    done = await setup.ssh(LOGIN, "true", key=key, known_hosts=rotated)
    assert done.returncode == 0, done.stderr
