"""``tether ssh`` and ``tether scp``'s client against the real node SSH server, in process.

A cluster ``main`` with real CAs; the node (:func:`tether_ssh.server.serve_ssh`) presents a
host certificate and runs sessions as the real OS user ``visitor`` (the tests need root); the
client reaches it over a plain TCP stream on 127.0.0.1, where production uses TLS through the
proxy. Local input and output are real file descriptors: pipes, files, a pseudo-terminal.
"""

from __future__ import annotations

import datetime
import fcntl
import functools
import json
import os
import pathlib
import pty
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import pytest
import trio
from tether_ssh.client import (
    AgentUnavailable,
    ClientCredentials,
    ConnectionFailed,
    CopyFailed,
    HostNotTrusted,
    OpenStream,
    copy_files,
    run_command,
)
from tether_ssh.forwards import LocalForward, parse_local_forward
from tether_ssh.server import NodeIdentity, RoleSetAuthorizer, serve_ssh

from tether.api import (
    AccessDenied,
    Identity,
    MalformedCertificate,
    RoleSet,
    TetherError,
    private_key_to_openssh,
)
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

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creates an OS user and switches to it")

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


@attrs.frozen
class Outcome:
    status: int
    stdout: bytes
    stderr: bytes


@attrs.define
class Cluster:
    """The cluster's CAs and one node's SSH server, started on demand in the test's nursery."""

    dir: pathlib.Path
    cas: ClusterAuthorities
    nursery: trio.Nursery
    roles: RoleSet = attrs.field(factory=lambda: role_set(ROLE))

    def credentials(
        self,
        *,
        logins: Sequence[str] = (LOGIN,),
        host_ca: SSHCertAuthority | None = None,
        agent: bool = False,
    ) -> ClientCredentials:
        """A fresh key with a user certificate of alice@main, trusting *host_ca* for nodes."""
        key = generate_private_key()
        now = datetime.datetime.now(datetime.UTC)
        identity = Identity(
            username="alice",
            cluster=CLUSTER,
            roles=["visitors"],
            traits={"logins": list(logins)},
            logins=list(logins),
            expires=now + datetime.timedelta(hours=1),
        )
        cert = issue_ssh_user_cert(
            self.cas.ssh_user, key.public_key(), identity, permit_agent_forwarding=agent
        )
        trusted = host_ca or self.cas.ssh_host
        return ClientCredentials(
            private_key=key,
            ssh_cert=cert,
            host_ca_lines=[ssh_public_key_line(trusted.public_key)],
        )

    async def start_node(
        self, *, host_ca: SSHCertAuthority | None = None, expired: bool = False
    ) -> int:
        """Serve a node whose host certificate *host_ca* signed; returns its port."""
        host_key = generate_private_key()
        now = datetime.datetime.now(datetime.UTC)
        host_cert = issue_ssh_host_cert(
            host_ca or self.cas.ssh_host,
            host_key.public_key(),
            host_id="node-1",
            principals=["127.0.0.1", "localhost"],
            cluster=(host_ca or self.cas.ssh_host).cluster,
            ttl=datetime.timedelta(hours=1),
            now=now - datetime.timedelta(hours=2) if expired else now,
        )
        labels = {"env": "test"}
        port: int = await self.nursery.start(
            functools.partial(
                serve_ssh,
                host="127.0.0.1",
                port=0,
                node=NodeIdentity(
                    host_key=host_key, host_cert=host_cert, node_name="node-1", labels=labels
                ),
                trusted_user_cas={CLUSTER: [ssh_public_key_line(self.cas.ssh_user.public_key)]},
                authorizer=RoleSetAuthorizer(roles_for=lambda _: self.roles, node_labels=labels),
            )
        )
        return port


@pytest.fixture
async def cluster(
    tmp_path: pathlib.Path, os_user: pwd.struct_passwd, nursery: trio.Nursery
) -> Cluster:
    return Cluster(
        dir=tmp_path,
        cas=ClusterAuthorities.load_or_create(tmp_path / "keys", CLUSTER),
        nursery=nursery,
    )


def _opener(port: int) -> OpenStream:
    return functools.partial(trio.open_tcp_stream, "127.0.0.1", port)


async def _feed(fd: int, data: bytes) -> None:
    stream = trio.lowlevel.FdStream(fd)
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the command did not read it all
    finally:
        await stream.aclose()


async def _drain(fd: int, into: bytearray) -> None:
    async with trio.lowlevel.FdStream(fd) as stream:
        while chunk := await stream.receive_some(256 * 1024):
            into += chunk


async def run(
    port: int,
    creds: ClientCredentials,
    command: str | None,
    *,
    stdin: bytes | int = b"",
    login: str = LOGIN,
    host_name: str = "127.0.0.1",
    opener: OpenStream | None = None,
    **options: Any,
) -> Outcome:
    """``run_command`` with pipes for stdin, stdout and stderr, as a shell would give it.

    *stdin* is the input, or a file descriptor to read it from (the caller's to close).
    """
    stdin_r, stdin_w = os.pipe()
    if isinstance(stdin, int):
        os.close(stdin_w)
        os.dup2(stdin, stdin_r)
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    out, err = bytearray(), bytearray()
    failed: Exception | None = None
    async with trio.open_nursery() as nursery:
        if isinstance(stdin, bytes):
            nursery.start_soon(_feed, stdin_w, stdin)
        nursery.start_soon(_drain, stdout_r, out)
        nursery.start_soon(_drain, stderr_r, err)
        try:
            with trio.fail_after(30):
                status = await run_command(
                    opener or _opener(port),
                    creds,
                    login=login,
                    host_name=host_name,
                    command=command,
                    stdin=stdin_r,
                    stdout=stdout_w,
                    stderr=stderr_w,
                    **options,
                )
        except TetherError as exc:  # raised below, not wrapped in this nursery's group
            failed = exc
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)
    if failed is not None:
        raise failed
    return Outcome(status=status, stdout=bytes(out), stderr=bytes(err))


# --- commands ---------------------------------------------------------------------------------


@needs_root
async def test_command_runs_as_the_login_and_its_exit_status_comes_back(cluster: Cluster) -> None:
    port = await cluster.start_node()
    command = "echo first >&2; id -un; pwd; echo last >&2; exit 3"
    done = await run(port, cluster.credentials(), command)
    assert done == Outcome(status=3, stdout=b"visitor\n/home/visitor\n", stderr=b"first\nlast\n")


@needs_root
async def test_a_script_on_stdin_runs_in_a_shell_without_a_terminal(cluster: Cluster) -> None:
    port = await cluster.start_node()
    script = b"echo $0; tty || true; exit 4\n"  # as `ssh node < script`
    done = await run(port, cluster.credentials(), None, stdin=script)
    assert (done.status, done.stdout) == (4, b"-bash\nnot a tty\n")  # a login shell


@needs_root
async def test_locale_variables_are_sent(cluster: Cluster) -> None:
    port = await cluster.start_node()
    env = {"LC_TIME": "C", "LANG": "C.UTF-8"}
    done = await run(port, cluster.credentials(), "echo $LANG $LC_TIME", env=env)
    assert done.stdout == b"C.UTF-8 C\n"


@needs_root
async def test_stdin_is_piped_to_the_command_until_eof(cluster: Cluster) -> None:
    port = await cluster.start_node()
    payload = os.urandom(3 * 1024 * 1024 + 17)  # more than every window and buffer on the way
    done = await run(port, cluster.credentials(), "echo started >&2; cat", stdin=payload)
    assert (done.status, done.stderr) == (0, b"started\n")
    assert done.stdout == payload


class _WithoutHalfClose(trio.abc.Stream):
    """A TCP stream that, like TLS, cannot send EOF and keep receiving."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


@needs_root
async def test_a_stream_without_half_close_carries_sessions_as_tls_will(
    cluster: Cluster,
) -> None:
    port = await cluster.start_node()

    async def open_stream() -> trio.abc.Stream:
        return _WithoutHalfClose(await trio.open_tcp_stream("127.0.0.1", port))

    for _ in range(2):
        stdin = bytes(1_000_000)
        done = await run(port, cluster.credentials(), "wc -c", stdin=stdin, opener=open_stream)
        assert (done.status, done.stdout.strip()) == (0, b"1000000")


@needs_root
async def test_a_command_killed_by_a_signal_exits_128_plus_its_number(cluster: Cluster) -> None:
    port = await cluster.start_node()
    done = await run(port, cluster.credentials(), "kill -TERM $$")
    assert done.status == 128 + signal.SIGTERM


@needs_root
async def test_a_closed_stdout_ends_the_command_as_sigpipe_would(cluster: Cluster) -> None:
    port = await cluster.start_node()
    stdout_r, stdout_w = os.pipe()
    os.close(stdout_r)  # like `tether ssh node yes | head -c0`
    null = os.open(os.devnull, os.O_RDWR)
    try:
        with trio.fail_after(20):
            status = await run_command(
                _opener(port),
                cluster.credentials(),
                login=LOGIN,
                host_name="127.0.0.1",
                command="exec yes",
                stdin=null,
                stdout=stdout_w,
                stderr=null,
            )
    finally:
        os.close(stdout_w)
        os.close(null)
    assert status in (128 + signal.SIGPIPE, 128 + signal.SIGHUP)


@needs_root
async def test_bulk_stdin_to_cat_into_dev_null(cluster: Cluster) -> None:
    port = await cluster.start_node()
    size = 64 * 1024 * 1024
    started = time.perf_counter()
    done = await run(port, cluster.credentials(), "cat > /dev/null; echo ok", stdin=bytes(size))
    elapsed = time.perf_counter() - started
    assert (done.status, done.stdout) == (0, b"ok\n")
    print(f"\n64 MiB through the client: {size / elapsed / 1e6:.0f} MB/s ({elapsed:.2f} s)")


# --- trust and refusal ------------------------------------------------------------------------


@needs_root
async def test_node_with_a_host_certificate_of_a_foreign_ca_is_refused(cluster: Cluster) -> None:
    foreign = ClusterAuthorities.generate("elsewhere")
    port = await cluster.start_node(host_ca=foreign.ssh_host)
    with pytest.raises(HostNotTrusted) as refused:
        await run(port, cluster.credentials(), "true")
    message = str(refused.value)
    assert "cannot verify node '127.0.0.1'" in message
    assert "signed by a CA this cluster does not trust" in message
    assert "\n" not in message


@needs_root
async def test_node_whose_certificate_does_not_name_the_host_dialled_is_refused(
    cluster: Cluster,
) -> None:
    port = await cluster.start_node()
    with pytest.raises(HostNotTrusted, match="not valid for this name"):
        await run(port, cluster.credentials(), "true", host_name="db.example.com")


@needs_root
async def test_node_with_an_expired_host_certificate_is_refused(cluster: Cluster) -> None:
    port = await cluster.start_node(expired=True)
    with pytest.raises(HostNotTrusted, match="its host certificate has expired"):
        await run(port, cluster.credentials(), "true")


@needs_root
async def test_login_the_roles_do_not_allow_is_denied_with_the_nodes_reason(
    cluster: Cluster,
) -> None:
    port = await cluster.start_node()
    creds = cluster.credentials(logins=[LOGIN, "root"])  # the CA signed it; RBAC says no
    with pytest.raises(AccessDenied) as denied:
        await run(port, creds, "id -un", login="root")
    message = str(denied.value)
    assert message.startswith("127.0.0.1 refused login 'root': ")
    assert "root" in message.split(": ", 1)[1] and "role" in message
    assert "tether: access denied" not in message  # the reason, not the banner's wording
    assert ";" not in message  # one reason: the certificate alone was offered, not the bare key


@needs_root
async def test_login_outside_the_certificate_is_denied_with_the_nodes_reason(
    cluster: Cluster,
) -> None:
    port = await cluster.start_node()
    with pytest.raises(AccessDenied, match="does not allow 'root'"):
        await run(port, cluster.credentials(), "id -un", login="root")


async def test_a_peer_that_is_not_an_ssh_server_is_a_connection_error(
    nursery: trio.Nursery, tmp_path: pathlib.Path
) -> None:
    async def http_server(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await stream.aclose()

    (listener,) = await nursery.start(
        functools.partial(trio.serve_tcp, http_server, 0, host="127.0.0.1")
    )
    port = listener.socket.getsockname()[1]
    creds = _offline_credentials(tmp_path)
    with pytest.raises(
        ConnectionFailed,
        match=re.escape("127.0.0.1 closed the connection during the SSH handshake"),
    ):
        await run(port, creds, "true")


async def test_an_unreachable_node_is_a_connection_error(tmp_path: pathlib.Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    with pytest.raises(ConnectionFailed, match=re.escape("cannot reach 127.0.0.1")):
        await run(port, _offline_credentials(tmp_path), "true")


@needs_root
async def test_a_node_that_vanishes_mid_session_is_a_connection_error(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    port = await cluster.start_node()
    relays = trio.CancelScope()

    async def relay(client: trio.SocketStream) -> None:
        with relays:
            node = await trio.open_tcp_stream("127.0.0.1", port)

            async def copy(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                while data := await source.receive_some():
                    await sink.send_all(data)

            async with node, client, trio.open_nursery() as copies:
                copies.start_soon(copy, client, node)
                copies.start_soon(copy, node, client)

    (listener,) = await nursery.start(functools.partial(trio.serve_tcp, relay, 0, host="127.0.0.1"))
    relay_port = listener.socket.getsockname()[1]

    async def vanish_once_started() -> None:
        await trio.sleep(1.0)
        relays.cancel()  # both sockets close: the node is gone

    nursery.start_soon(vanish_once_started)
    with pytest.raises(ConnectionFailed, match=re.escape("connection to 127.0.0.1 lost")):
        await run(relay_port, cluster.credentials(), "sleep 30")


def _offline_credentials(tmp_path: pathlib.Path) -> ClientCredentials:
    cas = ClusterAuthorities.load_or_create(tmp_path / "keys", CLUSTER)
    key = generate_private_key()
    identity = Identity(
        username="alice",
        cluster=CLUSTER,
        roles=["visitors"],
        traits={},
        logins=[LOGIN],
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
    )
    return ClientCredentials(
        private_key=key,
        ssh_cert=issue_ssh_user_cert(cas.ssh_user, key.public_key(), identity),
        host_ca_lines=[ssh_public_key_line(cas.ssh_host.public_key)],
    )


def test_a_certificate_for_another_key_is_refused_before_connecting(
    tmp_path: pathlib.Path,
) -> None:
    creds = _offline_credentials(tmp_path)
    other = attrs.evolve(creds, private_key=generate_private_key())

    async def attempt() -> None:
        await run(1, other, "true")

    with pytest.raises(MalformedCertificate, match="not for this private key"):
        trio.run(attempt)


# --- interactive sessions ---------------------------------------------------------------------

CHILD = """
import functools, json, sys
import trio
from tether.api import load_private_key
from tether_ssh.client import ClientCredentials, run_command

config = json.loads(sys.argv[1])
creds = ClientCredentials(
    private_key=load_private_key(config["key"]),
    ssh_cert=config["cert"],
    host_ca_lines=config["host_cas"],
)
opener = functools.partial(trio.open_tcp_stream, "127.0.0.1", config["port"])
run = functools.partial(
    run_command, opener, creds, login=config["login"], host_name="127.0.0.1", tty=True
)
sys.exit(trio.run(run))
"""


def _set_window(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def _take_controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _Terminal:
    """The user's side of the pseudo-terminal the client runs in."""

    def __init__(self, master: int) -> None:
        self.stream = trio.lowlevel.FdStream(master)
        self.seen = b""

    async def type(self, text: str) -> None:
        await self.stream.send_all(text.encode())

    async def expect(self, wanted: bytes) -> None:
        with trio.move_on_after(15) as waited:
            while wanted not in self.seen:
                try:
                    chunk = await self.stream.receive_some(4096)
                except OSError:  # EIO: the client closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{wanted!r} never came; got {self.seen!r}")
                self.seen += chunk
        if waited.cancelled_caught:
            raise AssertionError(f"{wanted!r} did not come in time; got {self.seen!r}")
        self.seen = self.seen[self.seen.index(wanted) + len(wanted) :]


@needs_root
async def test_interactive_shell_in_a_pty_follows_the_window_and_exits_with_its_status(
    cluster: Cluster,
) -> None:
    port = await cluster.start_node()
    creds = cluster.credentials()
    config = {
        "key": private_key_to_openssh(creds.private_key).decode(),
        "cert": creds.ssh_cert,
        "host_cas": list(creds.host_ca_lines),
        "port": port,
        "login": LOGIN,
    }
    master, slave = pty.openpty()
    _set_window(slave, 30, 90)
    cooked = termios.tcgetattr(slave)
    terminal = _Terminal(master)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    try:
        async with trio.open_nursery() as nursery:
            client: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [sys.executable, "-c", CHILD, json.dumps(config)],
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    check=False,
                    env={**env, "TERM": "xterm"},
                    start_new_session=True,
                    preexec_fn=_take_controlling_terminal,
                )
            )
            await terminal.type("stty size; echo $TERM; tty; echo ready-$((2+3))\r")
            await terminal.expect(b"30 90")
            await terminal.expect(b"xterm")
            await terminal.expect(b"/dev/pts/")
            await terminal.expect(b"ready-5")
            assert termios.tcgetattr(slave) != cooked  # raw while the session runs
            _set_window(master, 50, 120)  # the kernel signals the client, it tells the node
            await trio.sleep(0.3)
            await terminal.type("stty size\r")
            await terminal.expect(b"50 120")
            await terminal.type("echo hi; exit 5\r")
            await terminal.expect(b"\rhi\r\n")  # the output line, not the echoed command
            with trio.fail_after(15):
                await client.wait()
        assert client.returncode == 5
        assert termios.tcgetattr(slave) == cooked  # the local terminal is restored
    finally:
        os.close(slave)
        await terminal.stream.aclose()


@needs_root
async def test_the_local_terminal_is_restored_when_the_session_is_cancelled(
    cluster: Cluster,
) -> None:
    port = await cluster.start_node()
    master, slave = pty.openpty()
    cooked = termios.tcgetattr(slave)
    terminal = _Terminal(master)

    async def shell() -> None:  # no command, stdin a terminal: a PTY, as ssh decides
        await run_command(
            _opener(port),
            cluster.credentials(),
            login=LOGIN,
            host_name="127.0.0.1",
            stdin=slave,
            stdout=slave,
            stderr=slave,
        )

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shell)
            await terminal.type("echo ready-$((6*7))\r")
            await terminal.expect(b"ready-42")
            assert termios.tcgetattr(slave) != cooked
            nursery.cancel_scope.cancel()  # as Ctrl-C in the CLI would, or a caller's timeout
        assert termios.tcgetattr(slave) == cooked
        assert os.get_blocking(slave)
    finally:
        os.close(slave)
        await terminal.stream.aclose()


# --- forwarding -------------------------------------------------------------------------------


async def _echo_server(nursery: trio.Nursery) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)

    (listener,) = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    port: int = listener.socket.getsockname()[1]
    return port


async def _through_forward(
    cluster: Cluster, nursery: trio.Nursery, message: bytes
) -> tuple[bytes, Outcome]:
    """Send *message* through a ``-L`` forward to an echo server; (what came back, session)."""
    node = await cluster.start_node()
    echo_port = await _echo_server(nursery)
    forward = parse_local_forward(f"127.0.0.1:{free_port()}:127.0.0.1:{echo_port}")
    stdin_r, stdin_w = os.pipe()  # the session's `cat` lasts until the test closes stdin_w
    outcome: list[Outcome] = []

    async def session() -> None:
        try:
            command = "cat >/dev/null; echo done"
            outcome.append(
                await run(
                    node, cluster.credentials(), command, stdin=stdin_r, local_forwards=[forward]
                )
            )
        finally:
            os.close(stdin_r)

    received = b""
    async with trio.open_nursery() as inner:
        inner.start_soon(session)
        try:
            with trio.fail_after(10):
                while True:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", forward.port)
                        break
                    except OSError:
                        await trio.sleep(0.05)
            async with stream, trio.open_nursery() as sending:

                async def send() -> None:
                    try:
                        await stream.send_all(message)
                        await stream.send_eof()
                    except trio.BrokenResourceError:
                        pass  # the forward was refused and closed

                sending.start_soon(send)
                with trio.fail_after(10):
                    try:
                        while chunk := await stream.receive_some():
                            received += chunk
                    except trio.BrokenResourceError:
                        pass  # reset: closed with our message unread, as ssh closes it
        finally:
            os.close(stdin_w)
    return received, outcome[0]


@needs_root
async def test_local_forward_reaches_a_service_through_the_node(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    cluster.roles = role_set(ROLE, port_forwarding=True)
    message = os.urandom(4 * 1024 * 1024)  # more than the windows: flow control both ways
    received, session = await _through_forward(cluster, nursery, message)
    assert received == message
    assert (session.status, session.stdout, session.stderr) == (0, b"done\n", b"")


@needs_root
async def test_a_forward_the_node_refuses_is_reported_and_the_session_goes_on(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    cluster.roles = role_set(ROLE, port_forwarding=False)
    received, session = await _through_forward(cluster, nursery, b"ping")
    assert received == b""
    assert (session.status, session.stdout) == (0, b"done\n")
    assert session.stderr.startswith(b"tether: channel open failed: 127.0.0.1:")
    assert b"administratively prohibited" in session.stderr


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8080:db:5432", LocalForward(port=8080, host="db", host_port=5432)),
        (
            "0.0.0.0:8080:db:5432",
            LocalForward(bind_address="0.0.0.0", port=8080, host="db", host_port=5432),
        ),
        ("*:80:db:5432", LocalForward(bind_address="*", port=80, host="db", host_port=5432)),
        (":80:db:5432", LocalForward(bind_address="*", port=80, host="db", host_port=5432)),
        (
            "[::1]:8080:[fd00::5]:22",
            LocalForward(bind_address="::1", port=8080, host="fd00::5", host_port=22),
        ),
    ],
)
def test_local_forwards_parse_as_ssh_reads_them(spec: str, expected: LocalForward) -> None:
    assert parse_local_forward(spec) == expected


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("8080", "expected [bind_address:]port:host:hostport"),
        ("a:b:c:d:e", "expected [bind_address:]port:host:hostport"),
        ("http:db:80", "invalid literal"),
        ("8080:db:0", "host_port must be between 1 and 65535"),
        ("70000:db:80", "port must be between 1 and 65535"),
        ("8080::80", "host must not be empty"),
    ],
)
def test_bad_local_forwards_say_what_is_wrong(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as bad:
        parse_local_forward(spec)
    assert repr(spec) in str(bad.value)


@pytest.fixture
async def agent(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[bytes]:
    """A running ``ssh-agent`` with one key, in SSH_AUTH_SOCK; yields its ``ssh-add -l``."""
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("needs ssh-agent and ssh-add")
    sock = tmp_path / "agent.sock"
    key = tmp_path / "agent-key"
    write_secret_file(key, private_key_to_openssh(generate_private_key()))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                ["ssh-agent", "-D", "-a", str(sock)],
                stdout=subprocess.DEVNULL,
                check=False,
            )
        )
        with trio.fail_after(10):
            while True:  # ssh-agent has no readiness notification but its socket
                if sock.exists():
                    break
                await trio.sleep(0.02)
        await trio.run_process(["ssh-add", "-q", str(key)])
        listed = await trio.run_process(["ssh-add", "-l"], capture_stdout=True)
        yield listed.stdout
        process.terminate()


@needs_root
async def test_forwarded_agent_lists_the_local_agents_keys(cluster: Cluster, agent: bytes) -> None:
    cluster.roles = role_set(ROLE, forward_agent=True)
    port = await cluster.start_node()
    done = await run(port, cluster.credentials(agent=True), "ssh-add -l", forward_agent=True)
    assert (done.status, done.stdout) == (0, agent), done.stderr


async def test_agent_forwarding_without_an_agent_says_so(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(AgentUnavailable, match="SSH_AUTH_SOCK is not set"):
        await run(1, _offline_credentials(tmp_path), "true", forward_agent=True)


# --- copying files ----------------------------------------------------------------------------


@needs_root
async def test_files_copy_to_the_node_and_back(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    port = await cluster.start_node()
    creds = cluster.credentials()
    name = f"tree-{uuid.uuid4().hex[:8]}"  # in the login's home, which outlives the test
    tree = tmp_path / name
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"alpha\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    os.chmod(tree / "a.txt", 0o640)
    os.utime(tree / "a.txt", (1_000_000_000, 1_000_000_000))

    async def open_stream_for(host: str) -> trio.SocketStream:
        assert host == "127.0.0.1"
        return await trio.open_tcp_stream(host, port)

    copy = functools.partial(copy_files, open_stream_for, creds)
    try:
        await copy(
            sources=[str(tree)], destination=f"{LOGIN}@127.0.0.1:", recursive=True, preserve=True
        )
        done = await run(
            port, creds, f"stat -c '%U %s' {name}/sub/b.bin; stat -c '%a %Y' {name}/a.txt"
        )
        assert done.stdout == b"visitor 300000\n640 1000000000\n"
        back = tmp_path / "back"
        back.mkdir()
        await copy(
            sources=[f"{LOGIN}@127.0.0.1:{name}/a.txt", f"{LOGIN}@127.0.0.1:~/{name}/sub"],
            destination=str(back),
            recursive=True,
            preserve=True,
        )
        assert (back / "a.txt").read_bytes() == b"alpha\n"
        assert (back / "sub" / "b.bin").read_bytes() == (tree / "sub" / "b.bin").read_bytes()
        assert os.stat(back / "a.txt").st_mtime == 1_000_000_000
        assert os.stat(back / "a.txt").st_mode & 0o777 == 0o640
        with pytest.raises(CopyFailed) as missing:
            await copy(sources=[f"{LOGIN}@127.0.0.1:no-such-file"], destination=str(back))
        assert str(missing.value).startswith("127.0.0.1:no-such-file: ")
    finally:
        await run(port, creds, f"rm -rf {name}")


@pytest.mark.parametrize(
    ("sources", "destination", "problem"),
    [
        (["a@h:x"], "b@g:y", "from one remote location to another"),
        (["x"], "y", "two local paths"),
        ([], "h:y", "no source"),
        (["x"], "h:y", "no login for h"),
    ],
)
async def test_copies_that_cannot_work_are_refused_before_connecting(
    tmp_path: pathlib.Path, sources: list[str], destination: str, problem: str
) -> None:
    async def unreachable(host: str) -> trio.SocketStream:
        raise AssertionError("must not connect")

    with pytest.raises(CopyFailed, match=problem):
        await copy_files(
            unreachable, _offline_credentials(tmp_path), sources=sources, destination=destination
        )
