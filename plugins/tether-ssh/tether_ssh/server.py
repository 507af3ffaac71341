"""The node's SSH server: Tether certificates in, sessions as real OS users out.

asyncssh speaks the protocol; it is an asyncio library, so it runs inside one ``trio_asyncio``
loop opened by :func:`open_ssh_server`, and everything else (the caller, the kernel) stays trio.
The boundary is this module: callers pass plain values, trio streams, a synchronous
:class:`Authorizer` and a synchronous :data:`AuditSink`. One :class:`SSHServer` serves both a
TCP listener (:meth:`SSHServer.listen`) and connections that arrive as trio streams from a
node's reverse tunnel (:meth:`SSHServer.serve_stream`).

Authentication accepts one thing only: an OpenSSH user certificate, verified by the kernel
(:func:`tether.api.verify_ssh_user_cert`: trusted CA of the named cluster, validity window,
principal = requested login), then authorized by the kernel's RBAC through an
:class:`Authorizer`, whose answer says what else the login may do (:class:`Permissions`). No
passwords, no plain keys, no keyboard-interactive, no GSSAPI. A refusal is logged and audited
as one line with its reason and shown to the client as an authentication banner.

Sessions run as the requested OS login: the child process (a shell, a command, or the system's
``sftp-server`` for the ``sftp`` subsystem) drops to the user's uid, gid and supplementary
groups before it executes anything, starts in the user's home directory with a small clean
environment, and its exit status (or signal) goes back to the client. Port forwarding (``ssh
-L``, ``-D``, and ``-R`` on the node's loopback addresses) and agent forwarding (``ssh -A``)
work when the grant permits them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import fcntl
import grp
import inspect
import io
import logging
import os
import pty
import pwd
import re
import signal
import struct
import termios
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, Protocol, TypeAlias, TypeVar, cast

import attrs
import trio
import trio_asyncio
from cryptography.hazmat.primitives import serialization

from tether.api import (
    AccessDenied,
    CertificateExpired,
    CertificateNotYetValid,
    Identity,
    MalformedCertificate,
    PrincipalNotAllowed,
    PrivateKey,
    RoleSet,
    TetherError,
    private_key_to_openssh,
    verify_ssh_user_cert,
)
from tether_ssh import algorithms, channel_sizes
from tether_ssh.aio_transport import StreamTunnel, open_stream_tunnel

with algorithms.no_liboqs_lookup():  # before asyncssh first loads
    import asyncssh

__all__ = [
    "AuditSink",
    "Authorizer",
    "NodeIdentity",
    "Permissions",
    "RoleSetAuthorizer",
    "SSHServer",
    "SSHServerStatistics",
    "TrustedUserCAs",
    "open_ssh_server",
    "serve_ssh",
]

log = logging.getLogger(__name__)

#: asyncssh's reason for a key exchange with nothing in common: the kind, ours, theirs.
_NO_MATCHING_ALGORITHM = re.compile(
    r"No matching (.+) algorithm found, sent (.*) and received (.*)"
)

T = TypeVar("T")

#: Trusted user CAs as OpenSSH public key lines: for any cluster, or keyed by cluster name (a
#: leaf trusting the root's user CA for root users only). A callable is asked on every login,
#: so trust added or removed while the server runs takes effect at once.
TrustedUserCAs: TypeAlias = Sequence[str | bytes] | Mapping[str, Sequence[str | bytes]]

#: Where audit events go: called as ``sink(event_type, fields)`` from the server's event loop.
#: It must not block (queue the event and forward it from trio); an exception it raises is
#: logged and otherwise ignored, so a broken sink never breaks a session.
AuditSink: TypeAlias = Callable[[str, Mapping[str, Any]], None]

#: PATH of a session, as OpenSSH's defaults (root also gets the sbin directories).
_USER_PATH = "/usr/local/bin:/usr/bin:/bin"
_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Client-sent environment variables a session accepts (locale only, as OpenSSH's AcceptEnv).
_ACCEPTED_ENV_PREFIXES = ("LANG", "LC_")
#: How long a hung-up session's processes get to exit before they are killed.
_HANGUP_GRACE_SECONDS = 2.0
#: How long a client the roles disconnect gets to write out why before it is disconnected.
_END_NOTICE_GRACE = 2.0
#: Where distributions install OpenSSH's SFTP server (Debian, Fedora, Arch, BSD-style).
_SFTP_SERVER_PATHS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/sftp-server",
)
#: What a session's stdin and stdout pipes hold (bytes): Linux's default 64 KiB cuts an SSH
#: packet (up to channel_sizes.MAX_PACKET) into several writes and wake-ups.
_PIPE_SIZE = 1024 * 1024
#: Remote forwards listen here, whatever address the client asks for (no GatewayPorts).
_LOOPBACK = "localhost"
#: Ports below this need root to listen on, as sshd decides for ``ssh -R``.
_PRIVILEGED_PORTS = 1024
#: Certificate errors raised after the signature verified, so the claimed user is genuine.
_SIGNED_BUT_REFUSED = (CertificateExpired, CertificateNotYetValid, PrincipalNotAllowed)


def _frozen_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    return dict(sorted(labels.items()))


@attrs.frozen
class NodeIdentity:
    """Who this SSH server is: its host key, the host certificate for it, and its labels.

    :param host_key: the node's private host key.
    :param host_cert: the OpenSSH host certificate line for that key, from
        :func:`tether.pki.issue_ssh_host_cert`; clients check it against the cluster's host CA.
    :param node_name: the node's name in the inventory, for logs, messages and audit events.
    :param labels: the node's labels, which roles' ``node_labels`` are matched against.
    """

    host_key: PrivateKey
    host_cert: str
    node_name: str
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_labels)


@attrs.frozen(kw_only=True)
class Permissions:
    """What a login the kernel allowed may do besides running sessions.

    Everything defaults to no: an authorizer grants what the user's roles allow.

    :param port_forwarding: port forwarding both ways (``ssh -L``, ``-D``, ``-W``, ``-R``).
    :param forward_agent: agent forwarding (``ssh -A``) into the session.
    :param idle_timeout: end the connection after this many seconds without input from the
        client on a session or a forwarded connection (the roles' ``client_idle_timeout``);
        None for never.
    :param disconnect_at: end the connection at this moment, the certificate's expiry when
        the roles' ``disconnect_expired_cert`` asks for it; None for never.
    """

    port_forwarding: bool = False
    forward_agent: bool = False
    idle_timeout: float | None = None
    disconnect_at: datetime.datetime | None = None


class Authorizer(Protocol):
    """The kernel's decision whether a verified identity may log in here as *login*.

    The SSH server asks; it never decides. Called once the certificate is verified.
    """

    def authorize(self, identity: Identity, login: str) -> Permissions:
        """Return what the login may do; raise :class:`tether.api.AccessDenied` saying why
        it may not log in at all."""
        ...


@attrs.frozen
class RoleSetAuthorizer:
    """Authorize with the kernel's RBAC: the identity's roles must allow *login* on this node.

    :param roles_for: the role set of an identity (its roles, or on a leaf the local roles its
        root roles map to).
    :param node_labels: this node's labels, matched against the roles' ``node_labels``.
    """

    roles_for: Callable[[Identity], RoleSet]
    node_labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_labels)

    def authorize(self, identity: Identity, login: str) -> Permissions:
        """Raise :class:`AccessDenied` unless a role allows *login* here and none denies it;
        forwarding as the roles' ``options.port_forwarding`` and ``options.forward_agent``,
        the connection's end as ``client_idle_timeout`` and ``disconnect_expired_cert``."""
        roles = self.roles_for(identity)
        roles.check_login(login, node_labels=self.node_labels, traits=identity.traits)
        idle = roles.client_idle_timeout()
        return Permissions(
            port_forwarding=roles.port_forwarding(),
            forward_agent=roles.forward_agent(),
            idle_timeout=idle.total_seconds() if idle is not None else None,
            disconnect_at=identity.expires if roles.disconnect_expired_cert() else None,
        )


@attrs.frozen(kw_only=True)
class SSHServerStatistics:
    """What an :class:`SSHServer` is doing right now.

    :param listeners: open TCP listeners.
    :param connections: SSH connections not yet closed (authenticated or not).
    :param sessions: session channels whose handlers are still running.
    """

    listeners: int
    connections: int
    sessions: int


@attrs.frozen
class _Grant:
    """A successful authentication: who, as which OS account, allowed to do what."""

    identity: Identity
    login: str
    account: pwd.struct_passwd
    permissions: Permissions


@attrs.define
class _Settings:
    """What every connection of one server reads; :meth:`SSHServer.update` swaps parts."""

    node: NodeIdentity
    trusted_user_cas: TrustedUserCAs | Callable[[], TrustedUserCAs]
    authorizer: Authorizer
    audit: AuditSink | None
    host_keys: dict[str, Any] = attrs.field(init=False)
    live: set[_NodeServer] = attrs.field(factory=set)
    sessions: set[asyncio.Task[None]] = attrs.field(factory=set)

    def __attrs_post_init__(self) -> None:
        self.host_keys = _host_key_options(self.node)

    def trusted(self) -> TrustedUserCAs:
        cas = self.trusted_user_cas
        return cas() if callable(cas) else cas

    def emit(self, event: str, fields: Mapping[str, Any]) -> None:
        """Hand an audit event to the sink; a failing sink is logged, never propagated."""
        if self.audit is None:
            return
        try:
            self.audit(event, fields)
        except Exception:  # a broken sink must not break logins or sessions
            log.exception("ssh: audit sink failed on %s event", event)


def _host_key_options(node: NodeIdentity) -> dict[str, Any]:
    key = asyncssh.import_private_key(private_key_to_openssh(node.host_key))
    cert = asyncssh.import_certificate(node.host_cert)
    return {"server_host_keys": [key], "server_host_certs": [cert]}


def _server_options(settings: _Settings) -> dict[str, Any]:
    """asyncssh options of every connection: certificates only, modern algorithms only,
    sessions through our code."""
    return {
        **settings.host_keys,
        "kex_algs": algorithms.KEX_ALGS,
        "encryption_algs": algorithms.ENCRYPTION_ALGS,
        "mac_algs": algorithms.MAC_ALGS,
        "compression_algs": algorithms.COMPRESSION_ALGS,
        "encoding": None,
        "line_editor": False,
        "public_key_auth": True,
        "password_auth": False,
        "kbdint_auth": False,
        "host_based_auth": False,
        "gss_host": None,
        # Asked per connection by the wrapped create_agent_listener, against the grant.
        "agent_forwarding": True,
        "x11_forwarding": False,
        "allow_scp": False,
        # Packets this large from a Tether client (see channel_sizes); sessions, forwards.
        "max_pktsize": channel_sizes.MAX_PACKET,
    }


def _key_exchange_refusal(reason: str) -> str:
    """What a failed key exchange means, in the node's terms: asyncssh says "No matching
    <kind> algorithm found, sent <ours> and received <theirs>" when nothing is in common."""
    unmatched = _NO_MATCHING_ALGORITHM.fullmatch(reason)
    if unmatched is None:
        return f"key exchange failed: {reason}"
    kind, ours, theirs = unmatched.groups()
    return (
        f"no {kind} algorithm in common with the client: it offers {theirs or 'none'}, this "
        f"node only {ours} (modern algorithms, which OpenSSH 7.4 or later has)"
    )


def _cert_line(key_data: bytes) -> str:
    """The OpenSSH one-line form (``<type> <base64>``) of a key or certificate wire blob."""
    if len(key_data) < 4:
        raise MalformedCertificate("the client offered an empty key")
    (size,) = struct.unpack(">I", key_data[:4])
    algorithm = key_data[4 : 4 + size].decode("ascii", errors="replace")
    return f"{algorithm} {base64.b64encode(key_data).decode()}"


def _signed_user(cert_line: str) -> str:
    """The user named by a certificate whose signature verified but which was refused."""
    try:
        cert = serialization.load_ssh_public_identity(cert_line.encode())
    except (ValueError, TypeError):
        return ""
    if not isinstance(cert, serialization.SSHCertificate):
        return ""
    return cert.key_id.decode("utf-8", errors="replace")


def _split_peer(peer: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a pair; ``("", 0)`` if *peer* is not one."""
    host, _, port = peer.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or any(ch.isspace() for ch in host):
        return "", 0
    return host, int(port)


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
    """One client connection: its authentication, forwarding decisions and sessions.

    asyncssh creates one per connection. *peer* names the client when the transport cannot
    (a tunnelled stream); *registry* is the entry point's set of live connections, which that
    entry point closes when it stops.
    """

    def __init__(
        self,
        settings: _Settings,
        *,
        peer: str | None = None,
        registry: set[_NodeServer] | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer_given = peer is not None
        self.peer = peer or "unknown peer"
        self.peer_addr = _split_peer(peer) if peer else ("", 0)
        # The node's own address, for SSH_CONNECTION; a tunnelled stream has none (0.0.0.0 0).
        self.local_addr: tuple[str, int] = ("0.0.0.0", 0)
        self._approved: _Grant | None = None  # the attempt being checked right now
        # the last verdict, (login, key, grant or None): a client asks "would you accept this
        # key?" and then signs with it, and one certificate is one decision (and one audit)
        self._verdict: tuple[str, bytes, _Grant | None] | None = None
        self._reported: set[str] = set()
        self.grant: _Grant | None = None
        self.agent_forwarding = False
        self.sessions: set[asyncio.Task[None]] = set()
        #: the loop's time of the client's last input on a session or a forwarded connection
        self.last_input = 0.0
        #: the timers that end the connection, once logged in: "idle" and "expiry"
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._ending = False
        #: the sessions whose streams are set up, to tell them why the connection ends
        self.processes: weakref.WeakSet[_SessionProcess] = weakref.WeakSet()

    @property
    def node_name(self) -> str:
        return self._settings.node.node_name

    @property
    def settings(self) -> _Settings:
        return self._settings

    def who(self) -> dict[str, Any]:
        """The audit fields naming this connection's user, login, node and peer."""
        grant = self.grant
        return {
            "user": grant.identity.username if grant else "",
            "cluster": grant.identity.cluster if grant else "",
            "login": grant.login if grant else "",
            "node": self.node_name,
            "peer": self.peer,
        }

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._settings.live.add(self)
        if self._registry is not None:
            self._registry.add(self)
        peer = conn.get_extra_info("peername")
        if peer and not self._peer_given:
            self.peer = f"{peer[0]}:{peer[1]}"
            self.peer_addr = (str(peer[0]), int(peer[1]))
        local = conn.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            self.local_addr = (str(local[0]), int(local[1]))
        # asyncssh hands SSHServer only the CA key of a certificate, never the certificate; the
        # kernel must see the whole certificate, so its check wraps the connection's.
        checked = conn.validate_public_key

        async def validate_public_key(
            username: str, key_data: bytes, msg: bytes, signature: bytes
        ) -> bool:
            if self._verdict is not None and self._verdict[:2] == (username, key_data):
                grant = self._verdict[2]
            else:
                grant = self._verify(username, key_data)
                self._verdict = (username, key_data, grant)
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

        # asyncssh has no server hook for agent forwarding, only a connection-wide option; the
        # grant decides per connection, and the socket must belong to the session's user.
        create_agent_listener = conn.create_agent_listener

        async def agent_listener() -> bool:
            if not self._allow_agent_forwarding():
                return False
            if not await create_agent_listener():
                return False
            self.agent_forwarding = self._hand_agent_socket_to_user()
            return self.agent_forwarding

        conn.create_agent_listener = agent_listener  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._settings.live.discard(self)
        if self._registry is not None:
            self._registry.discard(self)
        if isinstance(exc, asyncssh.KeyExchangeFailed):
            # An old client, or one pushing this node down to weak algorithms: either way
            # the refusal is on record, as a refused login would be.
            self.deny(_key_exchange_refusal(exc.reason))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    async def wait_closed(self) -> None:
        if self._conn is not None:
            await self._conn.wait_closed()

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
                self.node_name,
                grant.login,
                self.peer,
            )
            self._arm_timers(grant.permissions)

    # -- the connection's end: idle timeout and certificate expiry --------------------------

    def touch(self) -> None:
        """The client sent input: the idle timeout starts again."""
        self.last_input = asyncio.get_running_loop().time()

    def _arm_timers(self, permissions: Permissions) -> None:
        loop = asyncio.get_running_loop()
        self.last_input = loop.time()
        if permissions.idle_timeout is not None:
            self._timers["idle"] = loop.call_later(permissions.idle_timeout, self._check_idle)
        if permissions.disconnect_at is not None:
            left = permissions.disconnect_at - datetime.datetime.now(datetime.UTC)
            self._timers["expiry"] = loop.call_later(
                max(left.total_seconds(), 0.0),
                self._end,
                "the user's certificate expired",
                "your certificate has expired (disconnect_expired_cert); run `tether login` again",
            )

    def _check_idle(self) -> None:
        grant = self.grant
        if grant is None or grant.permissions.idle_timeout is None:
            return
        timeout = grant.permissions.idle_timeout
        quiet = asyncio.get_running_loop().time() - self.last_input
        if quiet < timeout:  # input came meanwhile: look again when it is that old
            self._timers["idle"] = asyncio.get_running_loop().call_later(
                timeout - quiet, self._check_idle
            )
            return
        self._end(
            "idle timeout",
            f"no input for {timeout:g} seconds (client_idle_timeout)",
        )

    def _end(self, reason: str, message: str) -> None:
        """End the connection the roles no longer allow: log and audit why, and tell the
        client (see :meth:`_say_and_disconnect`)."""
        conn = self._conn
        if conn is None or self._ending:
            return
        self._ending = True
        log.info(
            "ssh: ended the connection of %s on %s from %s: %s",
            self.who()["user"],
            self.node_name,
            self.peer,
            reason,
        )
        self._settings.emit("ssh.disconnect", {**self.who(), "reason": reason})
        conn.create_task(self._say_and_disconnect(conn, message))

    async def _say_and_disconnect(self, conn: asyncssh.SSHServerConnection, message: str) -> None:
        """Say why on each session's stderr and close it, then disconnect with the same words.

        ``ssh`` exits at a disconnect without writing out what it still holds, so the sessions
        are closed first and the client given :data:`_END_NOTICE_GRACE` seconds to close its
        side, which it does once their output is written.
        """
        channels = []
        for process in list(self.processes):
            with contextlib.suppress(OSError, asyncssh.Error):
                process.tell(f"tether: session ended: {message}\r\n")
                process.channel.close()
                channels.append(process.channel)
        if channels:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(channel.wait_closed() for channel in channels)),
                    _END_NOTICE_GRACE,
                )
        conn.disconnect(asyncssh.DISC_BY_APPLICATION, f"tether: {message}")

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return _SessionProcess(self)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool | Awaitable[asyncssh.SSHTCPSession[bytes]]:
        """Local port forwarding: the server connects to the destination, if the grant says so.

        asyncssh has already checked the certificate's ``permit-port-forwarding``.
        """
        grant = self.grant
        if grant is None:  # cannot happen: channels open only after authentication
            return False
        if not grant.permissions.port_forwarding:
            reason = f"port forwarding is not allowed by the roles of {grant.identity.label}"
            self.deny(reason)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        log.info(
            "ssh: %s as %s on %s forwards to %s:%d",
            grant.identity.label,
            grant.login,
            self.node_name,
            dest_host,
            dest_port,
        )
        self._settings.emit(
            "ssh.port_forward",
            {**self.who(), "direction": "local", "host": dest_host, "port": dest_port},
        )
        self.touch()
        if grant.permissions.idle_timeout is None or self._conn is None:
            return True  # asyncssh connects and relays
        return self._forward_watching_input(self._conn, dest_host, dest_port)

    async def _forward_watching_input(
        self, conn: asyncssh.SSHServerConnection, dest_host: str, dest_port: int
    ) -> asyncssh.SSHTCPSession[bytes]:
        """asyncssh's own forwarding, with what the client sends counted as input for the
        idle timeout (asyncssh has no hook for it: the forwarder's data_received is wrapped)."""
        forwarder = await conn.forward_connection(dest_host, dest_port)
        received = forwarder.data_received

        def data_received(data: bytes, datatype: asyncssh.DataType = None) -> None:
            self.touch()
            received(data, datatype)

        forwarder.data_received = data_received  # type: ignore[method-assign]
        return forwarder  # type: ignore[return-value]  # an SSHForwarder is a TCP session

    def server_requested(
        self, listen_host: str, listen_port: int
    ) -> bool | Awaitable[asyncssh.SSHListener | bool]:
        """Remote port forwarding: listen on this node's loopback addresses, if the grant says
        so, and forward what arrives back to the client.

        As ``sshd`` without ``GatewayPorts``, the listener is on the loopback addresses
        whatever address the client asked for, and only root may listen on a port below 1024.
        asyncssh has already checked the certificate's ``permit-port-forwarding``.
        """
        grant = self.grant
        conn = self._conn
        if grant is None or conn is None:  # cannot happen: requests come after authentication
            return False
        if not grant.permissions.port_forwarding:
            self.deny(f"port forwarding is not allowed by the roles of {grant.identity.label}")
            return False
        if 0 < listen_port < _PRIVILEGED_PORTS and grant.account.pw_uid != 0:
            self.deny(f"remote port forwarding on privileged port {listen_port} needs login root")
            return False

        async def listen() -> asyncssh.SSHListener | bool:
            try:
                listener = await conn.forward_local_port(
                    _LOOPBACK, listen_port, listen_host, listen_port
                )
            except OSError as exc:
                self.deny(f"cannot listen on port {listen_port}: {exc.strerror or exc}")
                return False
            port = listener.get_port()
            log.info(
                "ssh: %s as %s on %s forwards port %d back to the client",
                grant.identity.label,
                grant.login,
                self.node_name,
                port,
            )
            self._settings.emit(
                "ssh.port_forward",
                {**self.who(), "direction": "remote", "host": _LOOPBACK, "port": port},
            )
            return listener

        return listen()

    def deny(self, reason: str) -> None:
        """Log and audit a refused request after login, once per reason and connection."""
        if reason in self._reported:
            return
        self._reported.add(reason)
        grant = self.grant
        log.warning(
            "ssh: refused %s as %s on %s from %s: %s",
            grant.identity.label if grant else "unknown user",
            grant.login if grant else "unknown login",
            self.node_name,
            self.peer,
            reason,
        )
        self._settings.emit("ssh.denied", {**self.who(), "reason": reason})

    def _allow_agent_forwarding(self) -> bool:
        grant = self.grant
        if grant is None:
            return False
        if not grant.permissions.forward_agent:
            self.deny(f"agent forwarding is not allowed by the roles of {grant.identity.label}")
            return False
        if self._conn is not None and not self._conn.check_certificate_permission(
            "agent-forwarding"
        ):
            self.deny("agent forwarding is not permitted by the certificate")
            return False
        return True

    def _hand_agent_socket_to_user(self) -> bool:
        """Give the agent socket and its private directory to the session's user."""
        path = self._conn.get_agent_path() if self._conn is not None else None
        grant = self.grant
        if path is None or grant is None:
            return False
        if os.geteuid() != 0:  # sessions run as this very user: the socket is theirs already
            return True
        account = grant.account
        try:
            os.chown(os.path.dirname(path), account.pw_uid, account.pw_gid)
            os.chown(path, account.pw_uid, account.pw_gid)
        except OSError as exc:
            log.warning("ssh: cannot give the agent socket %s to %s: %s", path, grant.login, exc)
            return False
        return True

    def _verify(self, login: str, key_data: bytes) -> _Grant | None:
        """The kernel's verdict on this certificate for *login*: a grant, or None (refused)."""
        settings = self._settings
        identity: Identity | None = None
        cert_line = ""
        try:
            cert_line = _cert_line(key_data)
            identity = verify_ssh_user_cert(
                cert_line, trusted_cas=settings.trusted(), principal=login
            )
            permissions = settings.authorizer.authorize(identity, login)
            account = _check_account(login, settings.node.node_name)
        except CertificateExpired as exc:
            self._refuse(
                login,
                f"certificate expired: {exc.message}",
                hint=exc.hint or "run `tether login` again",
                user=_signed_user(cert_line),
            )
            return None
        except TetherError as exc:
            if identity is not None:
                user = identity.username
            elif isinstance(exc, _SIGNED_BUT_REFUSED):
                user = _signed_user(cert_line)
            else:
                user = ""
            self._refuse(login, exc.message, hint=exc.hint, user=user)
            return None
        return _Grant(identity=identity, login=login, account=account, permissions=permissions)

    def _refuse(self, login: str, reason: str, *, hint: str | None = None, user: str = "") -> None:
        """Log, audit and tell the client why a login is refused, once per reason."""
        message = f"{reason} ({hint})" if hint else reason
        if message in self._reported:
            return
        self._reported.add(message)
        log.warning(
            "ssh: refused login as %s on %s from %s: %s",
            login,
            self.node_name,
            self.peer,
            message,
        )
        self._settings.emit(
            "ssh.denied",
            {
                "user": user,
                "login": login,
                "node": self.node_name,
                "peer": self.peer,
                "reason": reason,
            },
        )
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send_auth_banner(f"tether: access denied: {message}\r\n")


class _SessionProcess(asyncssh.SSHServerProcess[bytes]):
    """A session channel of a :class:`_NodeServer`, counting the bytes it carries.

    Every subsystem request reaches :func:`_run_session`, which serves ``sftp`` and refuses
    the others with a message (asyncssh itself would refuse ``sftp`` without saying why).
    """

    def __init__(self, server: _NodeServer) -> None:
        super().__init__(_run_session, None, 0, False)
        self.server = server
        self.bytes_in = 0
        self.bytes_out = 0

    def subsystem_requested(self, subsystem: str) -> bool:
        return True

    def session_started(self) -> None:
        self.server.touch()  # opening a session is input
        if self.channel.get_subsystem() != "sftp":
            super().session_started()
            self.server.processes.add(self)
            return
        # asyncssh would answer "sftp" with its own SFTP server, inside this (root) process.
        # Start the session like any other instead (asyncssh 2.24's session_started without
        # its SFTP branch), so that _run_session runs the system's sftp-server as the user.
        stdin = asyncssh.SSHReader[bytes](self, self.channel)
        stdout = asyncssh.SSHWriter[bytes](self, self.channel)
        stderr = asyncssh.SSHWriter[bytes](self, self.channel, asyncssh.EXTENDED_DATA_STDERR)
        handler = self._start_process(stdin, stdout, stderr)
        self.server.processes.add(self)
        if inspect.isawaitable(handler):
            self.channel.get_connection().create_task(handler, stdin.logger)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.bytes_in += len(data)
        self.server.touch()
        super().data_received(data, datatype)

    def feed_data(self, data: bytes, datatype: asyncssh.DataType) -> None:
        # Everything redirected from the session's process passes here on its way out.
        self.bytes_out += len(data)
        super().feed_data(data, datatype)

    def tell(self, message: str) -> None:
        """Write one line of our own to the client's stderr."""
        data = message.encode()
        self.bytes_out += len(data)
        self.stderr.write(data)


def _session_env(
    grant: _Grant, server: _NodeServer, process: _SessionProcess, term: str | None
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
    peer_host, peer_port = server.peer_addr
    local_host, local_port = server.local_addr
    if peer_host:
        env["SSH_CLIENT"] = f"{peer_host} {peer_port} {local_port}"
        env["SSH_CONNECTION"] = f"{peer_host} {peer_port} {local_host} {local_port}"
    if server.agent_forwarding:
        agent_path = process.channel.get_agent_path()
        if agent_path:
            env["SSH_AUTH_SOCK"] = agent_path
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


#: Every signal a program can catch or ignore (SIGKILL and SIGSTOP it can do neither with).
_CATCHABLE_SIGNALS = tuple(sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}))


def _default_signals() -> None:
    """In the child: every signal's default action and none blocked, as a fresh login has them.

    exec resets the signals the daemon handles but keeps those it ignores: a node started with
    ``nohup`` (SIGHUP ignored) or as a shell's background job (SIGINT, SIGQUIT) would start
    sessions that a hang-up or Ctrl-C cannot end.
    """
    for signum in _CATCHABLE_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _take_controlling_terminal() -> None:
    """In the child, after setsid: default signals, and the PTY on stdin as the session's
    controlling terminal."""
    _default_signals()
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


def _exit_of(returncode: int) -> tuple[int | None, str | None]:
    """A child's return code as SSH reports it: (exit status, None) or (None, signal name)."""
    if returncode >= 0:
        return returncode, None
    try:
        return None, signal.Signals(-returncode).name.removeprefix("SIG")
    except ValueError:
        return 128 - returncode, None


def _report_exit(process: _SessionProcess, returncode: int) -> None:
    status, signal_name = _exit_of(returncode)
    if signal_name is not None:
        process.exit_with_signal(signal_name)
    else:
        process.exit(status if status is not None else 255)


def _home_or_root(account: pwd.struct_passwd) -> str:
    """The session's working directory: the home directory, or ``/`` if it is missing."""
    return account.pw_dir if os.path.isdir(account.pw_dir) else "/"


def _find_sftp_server() -> str | None:
    for path in _SFTP_SERVER_PATHS:
        if os.access(path, os.X_OK):
            return path
    return None


def _widen_pipe(fd: int) -> None:
    """Let the pipe hold :data:`_PIPE_SIZE`: bulk data then crosses in fewer, larger pieces,
    waking this process and the child less often. Where the kernel refuses (not Linux, or
    the user's pipe allowance is spent), the pipe keeps its size."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


class _ChildInput:
    """The write end of a session's stdin pipe, as an "async file" asyncssh redirects into.

    Given the pipe itself, asyncssh would write through an asyncio pipe transport, which closes
    twice when the client's EOF arrives just as writing resumes (an error in the event loop
    each time a big upload ends). trio writes it instead. Input the child no longer reads (it
    closed its stdin, or exited) is dropped, as sshd drops it.
    """

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self._stream = trio.lowlevel.FdStream(fd)
        self._loop = loop
        self._broken = False

    async def write(self, data: bytes) -> None:
        if self._broken:
            return
        # Most writes fit in the pipe at once: write them here, and cross into trio (a task
        # per write) only for what must wait until the child reads.
        try:
            written = os.write(self._stream.fileno(), data)
        except BlockingIOError:
            written = 0
        except OSError:  # EPIPE: the child closed its stdin or exited
            self._broken = True
            return
        if written == len(data):
            return
        try:
            await trio_asyncio.trio_as_aio(self._stream.send_all, loop=self._loop)(
                memoryview(data)[written:]
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True

    async def close(self) -> None:
        await trio_asyncio.trio_as_aio(self._stream.aclose, loop=self._loop)()

    async def read(self, n: int = -1) -> bytes:  # asyncssh's async file protocol has it
        raise io.UnsupportedOperation("a session's stdin is write-only")


class _NoSFTPServer(Exception):
    """This node has no ``sftp-server`` binary to run for the ``sftp`` subsystem."""


async def _start_process(
    grant: _Grant, server: _NodeServer, process: _SessionProcess
) -> asyncio.subprocess.Process:
    """Start the session's program as the user, wired to the channel.

    That is the login shell (shell session), ``shell -c command`` (exec) or ``sftp-server``
    (the ``sftp`` subsystem, always on pipes: its protocol is binary).
    """
    account = grant.account
    shell = account.pw_shell or "/bin/sh"
    command = process.command
    if process.subsystem == "sftp":
        sftp_server = _find_sftp_server()
        if sftp_server is None:
            raise _NoSFTPServer
        executable, argv, term = sftp_server, [os.path.basename(sftp_server)], None
    elif command is None:  # a shell session: a login shell, as sshd starts it
        executable, argv, term = shell, ["-" + os.path.basename(shell)], process.term_type
    else:
        executable, argv, term = shell, [os.path.basename(shell), "-c", command], process.term_type
    env = _session_env(grant, server, process, term)
    common: dict[str, Any] = {
        "executable": executable,
        "env": env,
        "cwd": _home_or_root(account),
        "start_new_session": True,
        **_drop_privileges(account),
    }
    if term is None:
        # OS pipes, not asyncio's streams: asyncssh 2.24 resumes a paused StreamReader
        # redirect with a second concurrent read(), which kills the connection as soon as
        # output outruns the client (bulk transfers); its pipe readers pause correctly.
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        _widen_pipe(stdin_w)
        _widen_pipe(stdout_r)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin_r,
                stdout=stdout_w,
                stderr=stderr_w,
                preexec_fn=_default_signals,
                **common,
            )
        except BaseException:
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            raise
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)
        await process.redirect(
            stdin=_ChildInput(stdin_w, asyncio.get_running_loop()),
            stdout=os.fdopen(stdout_r, "rb", buffering=0),
            stderr=os.fdopen(stderr_r, "rb", buffering=0),
            send_eof=False,  # _run_session sends it once both pipes are drained
        )
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
    await process.redirect(stdin=to_terminal, stdout=from_terminal, send_eof=False)
    return proc


async def _drain(process: _SessionProcess) -> None:
    """Wait until the session's output is forwarded (EOF on its pipes), then send EOF.

    Once, for both streams: asyncssh's EOF is the whole channel's, so one stream's EOF would
    cut the other short.
    """
    with contextlib.suppress(OSError, asyncssh.Error):
        await process.stdout.drain()
        await process.stderr.drain()
        process.channel.write_eof()


async def _before_close(step: asyncio.Future[Any], closed: asyncio.Future[None]) -> bool:
    """Wait for *step* or for the channel to close; True if *step* finished (first)."""
    await asyncio.wait({step, closed}, return_when=asyncio.FIRST_COMPLETED)
    if step.done():
        return True
    step.cancel()
    return False


def _session_kind(process: _SessionProcess) -> str:
    if process.subsystem is not None:
        return process.subsystem
    return "shell" if process.command is None else "exec"


async def _run_session(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """asyncssh's process factory: one session channel, from request to exit status."""
    assert isinstance(process, _SessionProcess)
    server = process.server
    grant = server.grant
    if grant is None:
        process.exit(255)  # cannot happen: sessions open only after authentication
        return
    if process.subsystem not in (None, "sftp"):
        reason = f"subsystem {process.subsystem!r} is not supported"
        server.deny(reason)
        process.tell(f"tether: {reason}\n")
        process.exit(1)
        return
    session = asyncio.current_task()
    assert session is not None
    server.sessions.add(session)
    server.settings.sessions.add(session)
    fields = {**server.who(), "kind": _session_kind(process), "command": process.command}
    server.settings.emit("ssh.session.start", fields)
    exit_status: int | None = None
    exit_signal: str | None = None
    proc: asyncio.subprocess.Process | None = None
    closed = asyncio.ensure_future(process.channel.wait_closed())
    try:
        proc = await _start_process(grant, server, process)
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
    except _NoSFTPServer:
        log.warning("ssh: sftp requested on %s, which has no sftp-server", server.node_name)
        process.tell(
            f"tether: node {server.node_name!r} has no sftp-server (looked in "
            f"{', '.join(_SFTP_SERVER_PATHS)}); install OpenSSH's sftp-server there\n"
        )
        process.exit(1)
        exit_status = 1
    except OSError as exc:
        log.warning("ssh: cannot start a session as %s: %s", grant.login, exc)
        process.tell(f"tether: cannot start a session as {grant.login}: {exc}\n")
        process.exit(1)
        exit_status = 1
    finally:
        if proc is not None:
            if proc.returncode is None:  # the server is stopping: no orphans, no zombies
                _hang_up(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    await _reap(proc)
            if proc.returncode is not None:
                exit_status, exit_signal = _exit_of(proc.returncode)
        # asyncssh finishes its redirections (flushes the child's stdin) in wait_closed.
        with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
            await asyncio.wait_for(process.wait_closed(), _HANGUP_GRACE_SECONDS)
        closed.cancel()
        server.sessions.discard(session)
        server.settings.sessions.discard(session)
        server.settings.emit(
            "ssh.session.end",
            {
                **fields,
                "bytes_in": process.bytes_in,
                "bytes_out": process.bytes_out,
                "exit_status": exit_status,
                "exit_signal": exit_signal,
            },
        )


async def _close_connections(servers: Iterable[_NodeServer]) -> None:
    """Close connections and wait for their sessions to hang up and reap their processes."""
    servers = list(servers)
    for server in servers:
        server.close()
    for server in servers:
        await server.wait_closed()
    # Waiting here lets sessions finish while the loop still runs, instead of being cancelled
    # by its exit.
    sessions = {task for server in servers for task in server.sessions}
    if sessions:
        await asyncio.wait(sessions, timeout=2 * _HANGUP_GRACE_SECONDS)


async def _listen(
    host: str, port: int, settings: _Settings, registry: set[_NodeServer]
) -> asyncssh.SSHAcceptor:
    return await asyncssh.listen(
        host,
        port,
        reuse_address=True,
        server_factory=lambda: _NodeServer(settings, registry=registry),
        **_server_options(settings),
    )


async def _stop_listening(acceptor: asyncssh.SSHAcceptor, registry: set[_NodeServer]) -> None:
    acceptor.close()
    await acceptor.wait_closed()
    await _close_connections(registry)


async def _serve_tunnel(settings: _Settings, tunnel: StreamTunnel, peer: str) -> None:
    """One SSH connection on a stream's tunnel, until it closes."""
    server = _NodeServer(settings, peer=peer)
    host, port = _split_peer(peer)
    try:
        # connect_reverse: an SSH server on a connection asyncssh opens, here the stream's.
        conn = await asyncssh.connect_reverse(
            host,
            port,
            tunnel=cast(Any, tunnel),  # asyncssh types it as an SSH connection; any works
            config=(),
            server_factory=lambda: server,
            **_server_options(settings),
        )
    except (asyncssh.Error, OSError) as exc:  # refused login, or the client left before it
        log.debug("ssh: connection from %s ended before login: %s", peer, exc)
        return
    try:
        await conn.wait_closed()
    finally:
        await _close_connections([server])


class SSHServer:
    """One node's SSH service: TCP listeners and tunnelled connections share its settings.

    Made by :func:`open_ssh_server`; its methods are trio-flavoured and may be called from any
    task that ends before the server's ``async with`` block does.
    """

    def __init__(self, settings: _Settings, loop: Any) -> None:
        self._settings = settings
        self._loop = loop
        self._acceptors: set[asyncssh.SSHAcceptor] = set()
        self._closed = False

    async def _aio(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run an asyncio coroutine on this server's loop, whichever trio task asks: also a
        task started outside the loop's ``async with`` (a node agent's tunnel handlers), for
        which asyncio would find no current loop."""
        token = trio_asyncio.current_loop.set(self._loop)
        try:
            result: T = await self._loop.run_aio_coroutine(coro)
        finally:
            trio_asyncio.current_loop.reset(token)
        return result

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the SSH server is closed")

    async def listen(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve SSH on *host*:*port* until cancelled; ``task_status.started(bound_port)``.

        *port* 0 picks a free port. On cancellation the listener closes, and the connections
        it accepted are closed and their sessions' processes hung up.
        """
        self._check_open()
        registry: set[_NodeServer] = set()
        acceptor = await self._aio(_listen(host, port, self._settings, registry))
        self._acceptors.add(acceptor)
        try:
            bound = acceptor.get_port()
            log.info("ssh: node %s listening on %s:%d", self._settings.node.node_name, host, bound)
            task_status.started(bound)
            await trio.sleep_forever()
        finally:
            self._acceptors.discard(acceptor)
            if not self._closed:  # else the server's own shutdown closed it already
                with trio.CancelScope(shield=True), trio.move_on_after(4 * _HANGUP_GRACE_SECONDS):
                    await self._aio(_stop_listening(acceptor, registry))

    async def serve_stream(self, stream: trio.abc.Stream, *, peer: str) -> None:
        """Serve one SSH connection carried by *stream* until it ends; then close *stream*.

        For connections that arrive without a listener (a node's reverse tunnel). *peer* is the
        client as ``host:port``, for logs, audit events and the session's ``SSH_CLIENT``.
        asyncssh runs on a transport over *stream* itself (:mod:`tether_ssh.aio_transport`).
        The connection ends when asyncssh closes it, or when the client's side ends (asyncssh
        sees EOF); cancellation closes it and hangs its sessions up.
        """
        self._check_open()
        host, port = _split_peer(peer)
        async with open_stream_tunnel(
            stream, drain_timeout=_HANGUP_GRACE_SECONDS, peername=(host, port) if host else None
        ) as tunnel:
            await self._aio(_serve_tunnel(self._settings, tunnel, peer))
            # Leaving the block gives asyncssh's last bytes (a disconnect message) time to go.

    def update(
        self, *, node: NodeIdentity | None = None, authorizer: Authorizer | None = None
    ) -> None:
        """Use a new node identity (renewed host certificate, changed labels) or authorizer.

        Both apply to connections that start from now on; open connections keep what they
        logged in with. A :class:`RoleSetAuthorizer` carries the node's labels, so changed
        labels usually come with a new authorizer.
        """
        if node is not None:
            self._settings.node = node
            self._settings.host_keys = _host_key_options(node)
            for acceptor in self._acceptors:
                acceptor.update(**self._settings.host_keys)
        if authorizer is not None:
            self._settings.authorizer = authorizer

    def statistics(self) -> SSHServerStatistics:
        """Counts of open listeners, connections and running sessions."""
        return SSHServerStatistics(
            listeners=len(self._acceptors),
            connections=len(self._settings.live),
            sessions=len(self._settings.sessions),
        )

    async def _shutdown(self) -> None:
        """Stop everything: listeners, connections, and (waited for) their sessions."""
        self._closed = True
        acceptors = list(self._acceptors)
        self._acceptors.clear()
        settings = self._settings

        async def shutdown() -> None:
            for acceptor in acceptors:
                acceptor.close()
            for acceptor in acceptors:
                await acceptor.wait_closed()
            await _close_connections(settings.live)
            if settings.sessions:  # sessions of connections lost earlier, still hanging up
                await asyncio.wait(set(settings.sessions), timeout=2 * _HANGUP_GRACE_SECONDS)

        await self._aio(shutdown())


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Log an asyncio error nobody awaited (a failed callback, an unclosed transport).

    trio_asyncio's default handler raises it into the loop, which would end every connection
    and session on the node for one connection's fault.
    """
    exc = context.get("exception")
    log.error(
        "ssh: unexpected error in the event loop: %s",
        context.get("message") or "no message",
        exc_info=exc if isinstance(exc, BaseException) else None,
    )


@contextlib.asynccontextmanager
async def open_ssh_server(
    *,
    node: NodeIdentity,
    trusted_user_cas: TrustedUserCAs | Callable[[], TrustedUserCAs],
    authorizer: Authorizer,
    audit: AuditSink | None = None,
) -> AsyncIterator[SSHServer]:
    """Open a node's SSH server (and the asyncio loop it runs in) for the block's duration.

    Only Tether user certificates signed by *trusted_user_cas* (see :data:`TrustedUserCAs`) and
    allowed by *authorizer* log in; *audit* receives ``ssh.*`` events. Leaving the block closes
    every listener and connection and hangs up every session's processes.
    """
    settings = _Settings(
        node=node, trusted_user_cas=trusted_user_cas, authorizer=authorizer, audit=audit
    )
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_loop_error)
        server = SSHServer(settings, loop)
        try:
            yield server
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(4 * _HANGUP_GRACE_SECONDS):
                await server._shutdown()


async def serve_ssh(
    *,
    host: str,
    port: int,
    node: NodeIdentity,
    trusted_user_cas: TrustedUserCAs | Callable[[], TrustedUserCAs],
    authorizer: Authorizer,
    audit: AuditSink | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve SSH on *host*:*port* until cancelled; ``task_status.started(bound_port)``.

    The one-listener form of :func:`open_ssh_server` and :meth:`SSHServer.listen`. On
    cancellation the listener closes, open connections are closed and their sessions'
    processes hung up.
    """
    async with open_ssh_server(
        node=node, trusted_user_cas=trusted_user_cas, authorizer=authorizer, audit=audit
    ) as server:
        await server.listen(host, port, task_status=task_status)
