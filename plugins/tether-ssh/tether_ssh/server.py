"""The node's SSH server: Tether certificates in, sessions as real OS users out.

asyncssh speaks the protocol; it is an asyncio library, so it runs inside a ``trio_asyncio``
loop opened by :func:`serve_ssh`, and everything else (the caller, the kernel) stays trio. The
boundary is this module: callers pass plain values and a synchronous :class:`Authorizer`.

Authentication accepts one thing only: an OpenSSH user certificate, verified by the kernel
(:func:`tether.pki.verify_ssh_user_cert`: trusted CA of the named cluster, validity window,
principal = requested login), then authorized by the kernel's RBAC through an
:class:`Authorizer`. No passwords, no plain keys, no keyboard-interactive, no GSSAPI. A refusal
is logged as one line with its reason and shown to the client as an authentication banner.

Sessions run as the requested OS login: the child process drops to the user's uid, gid and
supplementary groups before it executes anything, starts in the user's home directory with a
small clean environment, and its exit status (or signal) goes back to the client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import grp
import logging
import os
import pty
import pwd
import signal
import struct
import termios
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

import asyncssh
import attrs
import trio
import trio_asyncio

from tether import pki
from tether.errors import AccessDenied, TetherError
from tether.rbac import RoleSet

__all__ = [
    "Authorizer",
    "NodeIdentity",
    "RoleSetAuthorizer",
    "TrustedUserCAs",
    "serve_ssh",
]

log = logging.getLogger(__name__)

#: Trusted user CAs as OpenSSH public key lines: for any cluster, or keyed by cluster name (a
#: leaf trusting the root's user CA for root users only). A callable is asked on every login,
#: so trust added or removed while the server runs takes effect at once.
TrustedUserCAs: TypeAlias = Sequence[str | bytes] | Mapping[str, Sequence[str | bytes]]

#: PATH of a session, as OpenSSH's defaults (root also gets the sbin directories).
_USER_PATH = "/usr/local/bin:/usr/bin:/bin"
_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Client-sent environment variables a session accepts (locale only, as OpenSSH's AcceptEnv).
_ACCEPTED_ENV_PREFIXES = ("LANG", "LC_")
#: How long a hung-up session's processes get to exit before they are killed.
_HANGUP_GRACE_SECONDS = 2.0


def _frozen_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    return dict(sorted(labels.items()))


@attrs.frozen
class NodeIdentity:
    """Who this SSH server is: its host key, the host certificate for it, and its labels.

    :param host_key: the node's private host key.
    :param host_cert: the OpenSSH host certificate line for that key, from
        :func:`tether.pki.issue_ssh_host_cert`; clients check it against the cluster's host CA.
    :param node_name: the node's name in the inventory, for logs and messages.
    :param labels: the node's labels, which roles' ``node_labels`` are matched against.
    """

    host_key: pki.PrivateKey
    host_cert: str
    node_name: str
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_labels)


class Authorizer(Protocol):
    """The kernel's decision whether a verified identity may log in here as *login*.

    The SSH server asks; it never decides. Called once the certificate is verified.
    """

    def authorize(self, identity: pki.Identity, login: str) -> None:
        """Return if allowed; raise :class:`tether.errors.AccessDenied` saying why not."""
        ...


@attrs.frozen
class RoleSetAuthorizer:
    """Authorize with the kernel's RBAC: the identity's roles must allow *login* on this node.

    :param roles_for: the role set of an identity (its roles, or on a leaf the local roles its
        root roles map to).
    :param node_labels: this node's labels, matched against the roles' ``node_labels``.
    """

    roles_for: Callable[[pki.Identity], RoleSet]
    node_labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_labels)

    def authorize(self, identity: pki.Identity, login: str) -> None:
        """Raise :class:`AccessDenied` unless a role allows *login* here and none denies it."""
        self.roles_for(identity).check_login(
            login, node_labels=self.node_labels, traits=identity.traits
        )


@attrs.frozen
class _Grant:
    """A successful authentication: who, as which OS account."""

    identity: pki.Identity
    login: str
    account: pwd.struct_passwd


@attrs.define
class _Settings:
    node: NodeIdentity
    trusted_user_cas: TrustedUserCAs | Callable[[], TrustedUserCAs]
    authorizer: Authorizer
    connections: set[asyncssh.SSHServerConnection] = attrs.field(factory=set)
    sessions: set[asyncio.Task[None]] = attrs.field(factory=set)

    def trusted(self) -> TrustedUserCAs:
        cas = self.trusted_user_cas
        return cas() if callable(cas) else cas


def _cert_line(key_data: bytes) -> str:
    """The OpenSSH one-line form (``<type> <base64>``) of a key or certificate wire blob."""
    if len(key_data) < 4:
        raise pki.MalformedCertificate("the client offered an empty key")
    (size,) = struct.unpack(">I", key_data[:4])
    algorithm = key_data[4 : 4 + size].decode("ascii", errors="replace")
    return f"{algorithm} {base64.b64encode(key_data).decode()}"


def _check_account(login: str, node_name: str) -> pwd.struct_passwd:
    """The OS account for *login*, if this server can start processes as it."""
    try:
        account = pwd.getpwnam(login)
    except KeyError:
        raise AccessDenied(
            f"login {login!r} does not exist on node {node_name!r}",
            hint="ask the node's administrator to create it",
        ) from None
    if os.geteuid() != 0 and account.pw_uid != os.geteuid():
        raise AccessDenied(
            f"node {node_name!r} runs unprivileged and can only start sessions as "
            f"{pwd.getpwuid(os.geteuid()).pw_name!r}, not {login!r}"
        )
    return account


class _NodeServer(asyncssh.SSHServer):
    """One client connection's authentication (asyncssh creates one per connection)."""

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = "unknown peer"
        self._approved: _Grant | None = None  # the attempt being checked right now
        self._reported: set[str] = set()
        self.grant: _Grant | None = None

    @property
    def node_name(self) -> str:
        return self._settings.node.node_name

    @property
    def sessions(self) -> set[asyncio.Task[None]]:
        """The server's running session handlers, which its shutdown waits for."""
        return self._settings.sessions

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._settings.connections.add(conn)
        peer = conn.get_extra_info("peername")
        if peer:
            self._peer = f"{peer[0]}:{peer[1]}"
        # asyncssh hands SSHServer only the CA key of a certificate, never the certificate; the
        # kernel must see the whole certificate, so its check wraps the connection's.
        checked = conn.validate_public_key

        async def validate_public_key(
            username: str, key_data: bytes, msg: bytes, signature: bytes
        ) -> bool:
            grant = self._verify(username, key_data)
            if grant is None:
                return False
            self._approved = grant
            try:
                ok = await checked(username, key_data, msg, signature)
            finally:
                self._approved = None
            if ok and msg:  # a signed request, not a "would you accept this key?" query
                self.grant = grant
            return ok

        conn.validate_public_key = validate_public_key  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._settings.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self._refuse(
            username,
            "plain keys are not accepted, only Tether user certificates",
            hint="run `tether login`, or pass the certificate with -o CertificateFile",
        )
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Reached only from inside the kernel-approved attempt above; asyncssh then checks
        # the principal, validity and the holder's signature once more, itself.
        return self._approved is not None and self._approved.login == username

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def auth_completed(self) -> None:
        grant = self.grant
        if grant is not None:
            log.info(
                "ssh: %s (roles %s) logged in to %s as %s from %s",
                grant.identity.label,
                ", ".join(grant.identity.roles) or "none",
                self._settings.node.node_name,
                grant.login,
                self._peer,
            )

    def _verify(self, login: str, key_data: bytes) -> _Grant | None:
        """The kernel's verdict on this certificate for *login*: a grant, or None (refused)."""
        settings = self._settings
        try:
            identity = pki.verify_ssh_user_cert(
                _cert_line(key_data), trusted_cas=settings.trusted(), principal=login
            )
            settings.authorizer.authorize(identity, login)
            account = _check_account(login, settings.node.node_name)
        except TetherError as exc:
            self._refuse(login, exc.message, hint=exc.hint)
            return None
        return _Grant(identity=identity, login=login, account=account)

    def _refuse(self, login: str, reason: str, *, hint: str | None = None) -> None:
        """Log a refusal and tell the client why, once per reason and connection."""
        message = f"{reason} ({hint})" if hint else reason
        if message in self._reported:
            return
        self._reported.add(message)
        log.warning(
            "ssh: refused login as %s on %s from %s: %s",
            login,
            self._settings.node.node_name,
            self._peer,
            message,
        )
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send_auth_banner(f"tether: access denied: {message}\r\n")


def _session_env(
    grant: _Grant, process: asyncssh.SSHServerProcess[bytes], term: str | None
) -> dict[str, str]:
    account = grant.account
    env = {
        name: value
        for name, value in process.env.items()
        if isinstance(name, str)
        and isinstance(value, str)
        and name.startswith(_ACCEPTED_ENV_PREFIXES)
    }
    env.update(
        HOME=account.pw_dir,
        USER=grant.login,
        LOGNAME=grant.login,
        SHELL=account.pw_shell or "/bin/sh",
        PATH=_ROOT_PATH if account.pw_uid == 0 else _USER_PATH,
        TETHER_USER=grant.identity.username,
        TETHER_CLUSTER=grant.identity.cluster,
    )
    peer = process.get_extra_info("peername")
    local = process.get_extra_info("sockname")
    if peer and local:
        env["SSH_CLIENT"] = f"{peer[0]} {peer[1]} {local[1]}"
        env["SSH_CONNECTION"] = f"{peer[0]} {peer[1]} {local[0]} {local[1]}"
    if term:
        env["TERM"] = term
    return env


def _drop_privileges(account: pwd.struct_passwd) -> dict[str, Any]:
    """subprocess arguments that make the child the account's user, with its groups.

    Applied in the child between fork and exec (setgroups, setregid, setreuid), so nothing
    runs as root in a non-root session. An unprivileged server runs sessions as itself.
    """
    if os.geteuid() != 0:
        return {}
    groups = os.getgrouplist(account.pw_name, account.pw_gid)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": groups}


def _take_controlling_terminal() -> None:
    """In the child, after setsid: make the PTY on stdin the session's controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _hang_up(pid: int) -> None:
    """SIGHUP a session's process group, as a closing terminal would."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGHUP)


async def _reap(proc: asyncio.subprocess.Process) -> int:
    """Wait for *proc*, killing its process group if it outlives the hang-up grace time."""
    try:
        return await asyncio.wait_for(proc.wait(), _HANGUP_GRACE_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return await proc.wait()


def _report_exit(process: asyncssh.SSHServerProcess[bytes], returncode: int) -> None:
    if returncode >= 0:
        process.exit(returncode)
        return
    try:
        name = signal.Signals(-returncode).name.removeprefix("SIG")
    except ValueError:
        process.exit(128 - returncode)
        return
    process.exit_with_signal(name)


def _home_or_root(account: pwd.struct_passwd) -> str:
    """The session's working directory: the home directory, or ``/`` if it is missing."""
    return account.pw_dir if os.path.isdir(account.pw_dir) else "/"


async def _start_process(
    grant: _Grant, process: asyncssh.SSHServerProcess[bytes]
) -> asyncio.subprocess.Process:
    """Start the session's command (or login shell) as the user, wired to the channel."""
    account = grant.account
    shell = account.pw_shell or "/bin/sh"
    term = process.term_type
    env = _session_env(grant, process, term)
    cwd = _home_or_root(account)
    command = process.command
    if command is None:  # a shell session: a login shell, as sshd starts it
        argv = ["-" + os.path.basename(shell)]
    else:
        argv = [os.path.basename(shell), "-c", command]
    common: dict[str, Any] = {
        "executable": shell,
        "env": env,
        "cwd": cwd,
        "start_new_session": True,
        **_drop_privileges(account),
    }
    if term is None:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            **common,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        await process.redirect(stdin=proc.stdin, stdout=proc.stdout, stderr=proc.stderr)
        return proc
    master, slave = pty.openpty()
    try:
        width, height, pixel_width, pixel_height = process.term_size
        if width and height:
            size = struct.pack("HHHH", height, width, pixel_width, pixel_height)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
        if os.geteuid() == 0:  # the terminal belongs to its user, as sshd does it
            try:
                tty_group = grp.getgrnam("tty").gr_gid
            except KeyError:
                tty_group = account.pw_gid
            os.fchown(slave, account.pw_uid, tty_group)
            os.fchmod(slave, 0o620)
        env["SSH_TTY"] = os.ttyname(slave)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            preexec_fn=_take_controlling_terminal,
            **common,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    process.set_redirect_pid(proc.pid)  # window changes and signals go to the shell
    to_terminal = os.fdopen(os.dup(master), "wb", buffering=0)
    from_terminal = os.fdopen(master, "rb", buffering=0)
    await process.redirect(stdin=to_terminal, stdout=from_terminal)
    return proc


async def _drain(process: asyncssh.SSHServerProcess[bytes]) -> None:
    with contextlib.suppress(OSError, asyncssh.Error):
        await process.stdout.drain()
        await process.stderr.drain()


async def _before_close(step: asyncio.Future[Any], closed: asyncio.Future[None]) -> bool:
    """Wait for *step* or for the channel to close; True if *step* finished (first)."""
    await asyncio.wait({step, closed}, return_when=asyncio.FIRST_COMPLETED)
    if step.done():
        return True
    step.cancel()
    return False


async def _run_session(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """asyncssh's process factory: one session channel, from request to exit status."""
    conn = process.get_extra_info("connection")
    server = conn.get_owner() if conn is not None else None
    if not isinstance(server, _NodeServer) or server.grant is None:
        process.exit(255)  # cannot happen: sessions open only after authentication
        return
    grant = server.grant
    if process.subsystem is not None:
        process.stderr.write(f"tether: subsystem {process.subsystem!r} is not supported\n".encode())
        process.exit(1)
        return
    session = asyncio.current_task()
    assert session is not None
    server.sessions.add(session)
    proc: asyncio.subprocess.Process | None = None
    closed = asyncio.ensure_future(process.channel.wait_closed())
    try:
        proc = await _start_process(grant, process)
        # All output forwarded (EOF on the child's pipes or terminal), then the exit status;
        # unless the client goes away first, which hangs the session up.
        drained = asyncio.ensure_future(_drain(process))
        if await _before_close(drained, closed):
            exited = asyncio.ensure_future(proc.wait())
            if await _before_close(exited, closed):
                _report_exit(process, exited.result())
        if proc.returncode is None:
            _hang_up(proc.pid)
            await _reap(proc)
        log.info(
            "ssh: session of %s as %s on %s ended, exit status %s",
            grant.identity.label,
            grant.login,
            server.node_name,
            proc.returncode,
        )
    except OSError as exc:
        log.warning("ssh: cannot start a session as %s: %s", grant.login, exc)
        process.stderr.write(f"tether: cannot start a session as {grant.login}: {exc}\n".encode())
        process.exit(1)
    finally:
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.returncode is None:  # the server is stopping: no orphans, no zombies
                _hang_up(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    await _reap(proc)
        # asyncssh finishes its redirections (flushes the child's stdin) in wait_closed.
        with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
            await asyncio.wait_for(process.wait_closed(), _HANGUP_GRACE_SECONDS)
        closed.cancel()
        server.sessions.discard(session)


def _asyncssh_host_key(node: NodeIdentity) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    key = asyncssh.import_private_key(pki.private_key_to_openssh(node.host_key))
    cert = asyncssh.import_certificate(node.host_cert)
    return key, cert


async def _listen(host: str, port: int, settings: _Settings) -> asyncssh.SSHAcceptor:
    key, cert = _asyncssh_host_key(settings.node)
    return await asyncssh.listen(
        host,
        port,
        reuse_address=True,
        server_factory=lambda: _NodeServer(settings),
        server_host_keys=[key],
        server_host_certs=[cert],
        process_factory=_run_session,
        encoding=None,
        line_editor=False,
        public_key_auth=True,
        password_auth=False,
        kbdint_auth=False,
        host_based_auth=False,
        gss_host=None,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_scp=False,
    )


async def _shutdown(acceptor: asyncssh.SSHAcceptor, settings: _Settings) -> None:
    acceptor.close()
    await acceptor.wait_closed()
    connections = list(settings.connections)
    for conn in connections:
        conn.close()
    for conn in connections:
        await conn.wait_closed()
    # Sessions see their channels close, hang up their processes and reap them; waiting
    # here lets them finish while the loop still runs, instead of being cancelled by its exit.
    if settings.sessions:
        await asyncio.wait(set(settings.sessions), timeout=2 * _HANGUP_GRACE_SECONDS)


async def serve_ssh(
    *,
    host: str,
    port: int,
    node: NodeIdentity,
    trusted_user_cas: TrustedUserCAs | Callable[[], TrustedUserCAs],
    authorizer: Authorizer,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve SSH on *host*:*port* until cancelled; ``task_status.started(bound_port)``.

    *port* 0 picks a free port. Only Tether user certificates signed by *trusted_user_cas*
    (see :data:`TrustedUserCAs`) and allowed by *authorizer* log in. On cancellation the
    listener closes, open connections are closed and their sessions' processes hung up.
    """
    settings = _Settings(node=node, trusted_user_cas=trusted_user_cas, authorizer=authorizer)
    async with trio_asyncio.open_loop():
        acceptor = await trio_asyncio.aio_as_trio(_listen)(host, port, settings)
        try:
            bound = acceptor.get_port()
            log.info("ssh: node %s listening on %s:%d", node.node_name, host, bound)
            task_status.started(bound)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(4 * _HANGUP_GRACE_SECONDS):
                await trio_asyncio.aio_as_trio(_shutdown)(acceptor, settings)
