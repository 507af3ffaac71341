"""The SSH client behind ``tether ssh`` and ``tether scp``: asyncssh over a trio byte stream.

The caller opens the connection to a node (a TLS stream through the proxy's front door) and
SSH runs end to end inside it, between this client and the node's SSH server
(:mod:`tether_ssh.server`). asyncssh is an asyncio library, so each connection runs it in a
``trio_asyncio`` loop of its own, on a transport whose bytes go straight to the stream
(:mod:`tether_ssh.aio_transport`). Callers see trio only.

Trust is the cluster's, never the user's ``~/.ssh``: the node must present a host certificate
signed by one of the cluster's host CAs and valid for the name dialled, and the client logs in
with the user's Tether certificate alone (no agent keys, no passwords, no ``~/.ssh/config``).

Channel data does not cross between the loops per chunk: trio_asyncio runs asyncio's
callbacks inside trio, in trio's thread, so asyncssh's session callbacks set trio events
directly and trio tasks call a channel's non-blocking methods (``write``, ``resume_reading``)
directly; only coroutines (opening a connection, a channel, SFTP) go through ``aio_as_trio``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import signal
import stat
import struct
import termios
import threading
import tty
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import attrs
import trio
import trio_asyncio

from tether.api import (
    AccessDenied,
    MalformedCertificate,
    PrivateKey,
    TetherError,
    TrustError,
    private_key_to_openssh,
)
from tether_ssh import algorithms, channel_sizes
from tether_ssh.aio_transport import open_stream_tunnel
from tether_ssh.forwards import DynamicForward, LocalForward, RemoteForward, bracketed
from tether_ssh.socks import Outcome, SocksError, SocksHandshake

with algorithms.no_liboqs_lookup():  # before asyncssh first loads
    import asyncssh

__all__ = [
    "AgentUnavailable",
    "ClientCredentials",
    "ConnectionFailed",
    "CopyFailed",
    "HostNotTrusted",
    "Keepalive",
    "OpenStream",
    "OpenStreamFor",
    "copy_files",
    "run_command",
]

log = logging.getLogger(__name__)

#: Opens a byte stream to the node's SSH server (through the proxy, in production).
OpenStream: TypeAlias = Callable[[], Awaitable[trio.abc.Stream]]
#: For ``copy_files``: opens a byte stream to the SSH server of the named host.
OpenStreamFor: TypeAlias = Callable[[str], Awaitable[trio.abc.Stream]]

#: How much one read takes from a forwarded connection or a local file descriptor.
_CHUNK = 256 * 1024
#: Unread channel data held on this side before asyncssh stops reading (and the node's
#: window closes), and how much asyncssh may buffer for sending before writers wait.
_INBOX_LIMIT = 1024 * 1024
_SEND_HIGH, _SEND_LOW = 4 * _CHUNK, _CHUNK
#: What a local pipe holds (bytes) once ``tether ssh`` reads or writes it: several chunks.
_PIPE_SIZE = 1024 * 1024
#: Key exchange and authentication must finish within this (seconds), like ssh's ConnectTimeout.
_HANDSHAKE_TIMEOUT = 30.0
#: How long closing waits for the disconnect to reach the node (seconds).
_CLOSE_TIMEOUT = 2.0
#: The node's SSH server puts this before the reason of a refused login (an auth banner).
_REFUSAL_PREFIX = "tether: access denied:"
#: asyncssh's reasons for refusing a host key, in words for the user.
_HOST_KEY_PROBLEMS = {
    "Host CA key is not trusted": "its host certificate is signed by a CA this cluster does "
    "not trust",
    "Certificate principal mismatch": "its host certificate is not valid for this name",
    "Certificate expired": "its host certificate has expired",
    "Certificate not yet valid": "its host certificate is not valid yet (are the clocks right?)",
    "Host key is not trusted": "it presented a plain host key instead of a host certificate",
    "revoked": "its host key or CA has been revoked",
}
_CHANNEL_OPEN_FAILURES = {
    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED: "administratively prohibited",
    asyncssh.OPEN_CONNECT_FAILED: "connect failed",
    asyncssh.OPEN_UNKNOWN_CHANNEL_TYPE: "unknown channel type",
    asyncssh.OPEN_RESOURCE_SHORTAGE: "resource shortage",
}
#: What a refused channel means to the program behind a ``-D`` forward.
_SOCKS_OUTCOMES = {
    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED: Outcome.NOT_ALLOWED,
    asyncssh.OPEN_CONNECT_FAILED: Outcome.REFUSED,
}
#: How long a program connected to a ``-D`` forward may take to say where it goes (seconds).
_SOCKS_HANDSHAKE_TIMEOUT = 30.0
#: Local terminal control characters sent with a PTY request, as ssh sends them.
_PTY_CONTROL_CHARACTERS = {
    asyncssh.PTY_VINTR: termios.VINTR,
    asyncssh.PTY_VQUIT: termios.VQUIT,
    asyncssh.PTY_VERASE: termios.VERASE,
    asyncssh.PTY_VKILL: termios.VKILL,
    asyncssh.PTY_VEOF: termios.VEOF,
    asyncssh.PTY_VEOL: termios.VEOL,
    asyncssh.PTY_VEOL2: termios.VEOL2,
    asyncssh.PTY_VSTART: termios.VSTART,
    asyncssh.PTY_VSTOP: termios.VSTOP,
    asyncssh.PTY_VSUSP: termios.VSUSP,
    asyncssh.PTY_VREPRINT: termios.VREPRINT,
    asyncssh.PTY_WERASE: termios.VWERASE,
    asyncssh.PTY_VLNEXT: termios.VLNEXT,
    asyncssh.PTY_VDISCARD: termios.VDISCARD,
}
#: Local terminal flags sent with a PTY request: (SSH opcode, termios attribute index, flag).
_PTY_FLAGS = (
    (asyncssh.PTY_ICRNL, 0, termios.ICRNL),
    (asyncssh.PTY_IXON, 0, termios.IXON),
    (asyncssh.PTY_IUTF8, 0, getattr(termios, "IUTF8", 0x4000)),  # named from Python 3.12
    (asyncssh.PTY_OPOST, 1, termios.OPOST),
    (asyncssh.PTY_ONLCR, 1, termios.ONLCR),
    (asyncssh.PTY_ISIG, 3, termios.ISIG),
    (asyncssh.PTY_ICANON, 3, termios.ICANON),
    (asyncssh.PTY_ECHO, 3, termios.ECHO),
    (asyncssh.PTY_ECHOE, 3, termios.ECHOE),
    (asyncssh.PTY_ECHOK, 3, termios.ECHOK),
    (asyncssh.PTY_ECHOCTL, 3, termios.ECHOCTL),
    (asyncssh.PTY_ECHOKE, 3, termios.ECHOKE),
    (asyncssh.PTY_IEXTEN, 3, termios.IEXTEN),
)


class HostNotTrusted(TrustError):
    """The node did not prove it is the host dialled: no valid host certificate of a trusted CA."""


class ConnectionFailed(TetherError):
    """The connection to the node failed, broke, or did not speak SSH (``ssh`` exits 255)."""


class AgentUnavailable(TetherError):
    """Agent forwarding was asked for, but there is no local SSH agent to forward."""


class CopyFailed(TetherError):
    """A file copy failed: a missing or unreadable file, a refused write, no SFTP on the node."""


def _line_tuple(lines: Sequence[str]) -> tuple[str, ...]:
    if isinstance(lines, str):  # one line where a list belongs would be read char by char
        raise TypeError("host_ca_lines must be a sequence of lines, not one string")
    return tuple(lines)


@attrs.frozen
class ClientCredentials:
    """What the client proves and trusts: the user's key and certificate, the host CAs.

    :param private_key: the user's private key (:func:`tether.api.load_private_key`).
    :param ssh_cert: the user's OpenSSH certificate line for that key, from ``tether login``.
    :param host_ca_lines: the cluster's trusted host CA public keys as OpenSSH lines
        (``ssh-ed25519 AAAA...``); a node must present a host certificate signed by one.
    """

    private_key: PrivateKey
    ssh_cert: str
    host_ca_lines: Sequence[str] = attrs.field(converter=_line_tuple)


@attrs.frozen
class Keepalive:
    """``ServerAliveInterval`` and ``ServerAliveCountMax``: ask the node every *interval*
    seconds whether it is alive (0: never), and give up on the connection after *count_max*
    unanswered questions."""

    interval: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    count_max: int = attrs.field(default=3, validator=attrs.validators.ge(1))


@contextlib.contextmanager
def _unwrapped() -> Iterator[None]:
    """Raise the one error of a task as itself, not wrapped in nurseries' exception groups.

    The nurseries here run helpers that end quietly (copies stop at EOF or at the first
    error), so a group holds the error of the code the nursery encloses, wrapped once for each
    nursery it passed through: callers are owed that error, not the wrapping.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if error is group:
            raise
        raise error from None


def _printable(text: str) -> str:
    """*text* from the node without control characters, which could drive the user's terminal."""
    return "".join(
        char if char == " " or unicodedata.category(char)[0] not in "CZ" else "?"
        for char in text.strip()
    )


def _reason(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, asyncssh.Error) else None
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    return _printable(reason or str(exc) or type(exc).__name__)


# --- asyncssh's side of a channel, as trio state --------------------------------------------


class _Inbox:
    """Data a channel received for one stream (stdout or stderr), until a trio task takes it."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.eof = False
        self._arrived = trio.Event()

    def put(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self._arrived.set()

    def close(self) -> None:
        self.eof = True
        self._arrived.set()

    async def take(self) -> bytes:
        """Everything received so far, at least one byte; ``b""`` once the stream ended."""
        await trio.lowlevel.checkpoint()
        while not self.chunks and not self.eof:
            await self._arrived.wait()
            self._arrived = trio.Event()
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        return data


class _ChannelIO(asyncssh.SSHClientSession[bytes], asyncssh.SSHTCPSession[bytes]):
    """One channel (a session or a forwarded connection) as trio tasks use it.

    asyncssh calls the callbacks; trio tasks call :meth:`receive`, :meth:`send`,
    :meth:`send_eof` and :meth:`wait_closed`. See the module docstring for why no call here
    needs to cross between the loops.
    """

    def __init__(self) -> None:
        self._chan: asyncssh.SSHClientChannel[bytes] | asyncssh.SSHTCPChannel[bytes] | None = None
        self._inboxes = {None: _Inbox(), asyncssh.EXTENDED_DATA_STDERR: _Inbox()}
        self._reading_paused = False
        self._opened = trio.Event()  # a channel the node opens (-R) arrives before it is open
        self._writable = trio.Event()
        self._closed = trio.Event()
        self.error: Exception | None = None
        self.exit_status: int | None = None
        self.exit_signal: str | None = None

    # asyncssh's callbacks

    def connection_made(
        self, chan: asyncssh.SSHClientChannel[bytes] | asyncssh.SSHTCPChannel[bytes]
    ) -> None:
        self._chan = chan
        chan.set_write_buffer_limits(_SEND_HIGH, _SEND_LOW)
        self._writable.set()
        self._opened.set()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        inbox = self._inboxes.get(datatype)
        if inbox is None:
            return
        inbox.put(data)
        if not self._reading_paused and self._unread() > _INBOX_LIMIT and self._chan is not None:
            self._reading_paused = True
            self._chan.pause_reading()

    def eof_received(self) -> bool:
        for inbox in self._inboxes.values():
            inbox.close()
        return True  # keep sending: the remote's EOF ends its output, not our input

    def pause_writing(self) -> None:
        if self._writable.is_set():
            self._writable = trio.Event()

    def resume_writing(self) -> None:
        self._writable.set()

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc
        for inbox in self._inboxes.values():
            inbox.close()
        self._writable.set()
        self._opened.set()
        self._closed.set()

    # trio's side

    def _unread(self) -> int:
        return sum(inbox.size for inbox in self._inboxes.values())

    async def receive(self, datatype: asyncssh.DataType = None) -> bytes:
        """The next data of stdout (None) or stderr; ``b""`` at its end or the channel's."""
        data = await self._inboxes[datatype].take()
        if self._reading_paused and self._unread() <= _INBOX_LIMIT // 2 and self._chan:
            self._reading_paused = False
            self._chan.resume_reading()  # may deliver what asyncssh held back, at once
        return data

    async def send(self, data: bytes | bytearray) -> None:
        """Send *data*, waiting while asyncssh already holds enough unsent data."""
        await self._writable.wait()
        if self._chan is None or self._closed.is_set():
            raise trio.BrokenResourceError("the channel is closed")
        try:
            self._chan.write(data if isinstance(data, bytes) else bytes(data))
        except OSError as exc:
            raise trio.BrokenResourceError("the channel is closed for sending") from exc

    def send_eof(self) -> None:
        if self._chan is not None and not self._closed.is_set():
            with contextlib.suppress(OSError):
                self._chan.write_eof()

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()

    async def wait_open(self) -> None:
        """Until asyncssh opened the channel (or it was lost before)."""
        await self._opened.wait()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def change_terminal_size(self, size: tuple[int, int, int, int]) -> None:
        if isinstance(self._chan, asyncssh.SSHClientChannel) and not self._closed.is_set():
            with contextlib.suppress(OSError):
                self._chan.change_terminal_size(*size)


class _Client(asyncssh.SSHClient):
    """Keeps the auth banners: the node's SSH server explains refusals in one."""

    def __init__(self) -> None:
        self.banners: list[str] = []

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.banners.append(msg)


# --- the connection -------------------------------------------------------------------------


def _client_key(creds: ClientCredentials) -> asyncssh.SSHKeyPair:
    """The certificate with its key, and nothing else to offer the node.

    Given a key and its certificate, asyncssh also offers the bare key after the certificate;
    a key pair that already holds its certificate is offered alone.
    """
    hint = "run `tether login` again"
    key = asyncssh.import_private_key(private_key_to_openssh(creds.private_key))
    try:
        cert = asyncssh.import_certificate(creds.ssh_cert)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise MalformedCertificate(f"not a valid SSH user certificate: {exc}", hint=hint) from None
    if cert.key.public_data != key.public_data:
        raise MalformedCertificate(
            "the SSH user certificate is not for this private key", hint=hint
        )
    with_cert, *_ = asyncssh.load_keypairs([(key, cert)])
    assert with_cert.public_data == cert.public_data
    return with_cert


def _host_cas(creds: ClientCredentials) -> list[asyncssh.SSHKey]:
    hint = "run `tether login` again to fetch the cluster's host CAs"
    if not creds.host_ca_lines:
        raise HostNotTrusted("no trusted host CA to verify nodes with", hint=hint)
    try:
        return [asyncssh.import_public_key(line) for line in creds.host_ca_lines]
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise HostNotTrusted(f"a trusted host CA key is unreadable: {exc}", hint=hint) from None


def _handshake_error(
    exc: BaseException, client: _Client, *, login: str, host_name: str
) -> TetherError:
    """The error a failed connection attempt means to the user."""
    problem: str | None = None
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        problem = next(
            (words for marker, words in _HOST_KEY_PROBLEMS.items() if marker in exc.reason),
            _reason(exc),
        )
    elif isinstance(exc, asyncssh.KeyExchangeFailed) and "host key" in exc.reason:
        problem = "it offers no host certificate"  # only certificate algorithms are asked for
    if problem is not None:
        return HostNotTrusted(
            f"cannot verify node {host_name!r}: {problem}",
            hint="it may not be the node you asked for; if the cluster's host CA changed, "
            "run `tether login` again",
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        reasons = [
            _printable(banner).removeprefix(_REFUSAL_PREFIX).strip()
            for banner in client.banners
            if banner.strip()
        ]
        if reasons:
            return AccessDenied(f"{host_name} refused login {login!r}: {'; '.join(reasons)}")
        return AccessDenied(
            f"{host_name} refused login {login!r} with your certificate",
            hint="run `tether login` again, or ask for a role that allows this login",
        )
    if isinstance(exc, asyncssh.ConnectionLost | ConnectionError):  # ended, or broke
        return ConnectionFailed(
            f"{host_name} closed the connection during the SSH handshake",
            hint="is an SSH server listening there?",
        )
    if isinstance(exc, TimeoutError):
        return ConnectionFailed(
            f"{host_name} did not complete the SSH handshake within {_HANDSHAKE_TIMEOUT:g}s"
        )
    return ConnectionFailed(f"SSH connection to {host_name} failed: {_reason(exc)}")


@contextlib.asynccontextmanager
async def _connected(
    open_stream: OpenStream,
    creds: ClientCredentials,
    *,
    login: str,
    host_name: str,
    node_name: str | None = None,
    agent_forward_path: str | None = None,
    keepalive: Keepalive | None = None,
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """An authenticated SSH connection to *host_name* over a stream *open_stream* opens.

    Runs inside a ``trio_asyncio`` loop of its own, which this context manager opens. Errors
    name the node *node_name* (what people call it) when given, else *host_name*.
    """
    shown = node_name or host_name
    keepalive = keepalive or Keepalive()
    client_key = _client_key(creds)
    host_cas = _host_cas(creds)
    client = _Client()
    try:
        stream = await open_stream()
    except (OSError, trio.BrokenResourceError) as exc:
        raise ConnectionFailed(f"cannot reach {shown}: {_reason(exc)}") from None
    async with (
        trio_asyncio.open_loop(),
        open_stream_tunnel(stream, drain_timeout=_CLOSE_TIMEOUT) as tunnel,
    ):
        connect = trio_asyncio.aio_as_trio(asyncssh.connect)
        try:
            conn: asyncssh.SSHClientConnection = await connect(
                host_name,
                tunnel=tunnel,
                config=None,  # the user's ~/.ssh/config has no say here
                username=login,
                client_factory=lambda: client,
                known_hosts=([], host_cas, []),
                x509_trusted_certs=None,
                client_keys=[client_key],
                agent_path=None,
                agent_identities=None,
                agent_forwarding=agent_forward_path or False,
                preferred_auth=["publickey"],
                password_auth=False,
                kbdint_auth=False,
                gss_auth=False,
                gss_kex=False,
                host_based_auth=False,
                disable_trivial_auth=True,
                kex_algs=algorithms.KEX_ALGS,
                server_host_key_algs=algorithms.HOST_KEY_ALGS,
                encryption_algs=algorithms.ENCRYPTION_ALGS,
                mac_algs=algorithms.MAC_ALGS,
                compression_algs=algorithms.COMPRESSION_ALGS,
                connect_timeout=_HANDSHAKE_TIMEOUT,
                keepalive_interval=keepalive.interval,
                keepalive_count_max=keepalive.count_max,
            )
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise _handshake_error(exc, client, login=login, host_name=shown) from None
        log.debug(  # what benchmarks/ssh_session.py records
            "negotiated with %s: SSH cipher %s",
            shown,
            conn.get_extra_info("send_cipher"),
        )
        try:
            yield conn
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                conn.close()
                await trio_asyncio.aio_as_trio(conn.wait_closed)()
                await tunnel.wait_drained()  # the disconnect message reached the node


# --- sessions -------------------------------------------------------------------------------


@attrs.frozen
class _PtyRequest:
    term_type: str
    size: tuple[int, int, int, int]  # columns, rows, pixel width, pixel height
    modes: Mapping[int, int]
    terminal: int | None  # the local terminal (stdin) to put in raw mode, if stdin is one


def _window_size(fd: int) -> tuple[int, int, int, int]:
    rows, columns, width, height = struct.unpack(
        "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8))
    )
    return columns, rows, width, height


def _terminal_modes(fd: int) -> dict[int, int]:
    attributes = termios.tcgetattr(fd)
    modes: dict[int, int] = {}
    characters = attributes[6]
    for opcode, index in _PTY_CONTROL_CHARACTERS.items():
        value = characters[index]
        number = value[0] if isinstance(value, bytes) else int(value)
        modes[opcode] = number or 255  # 0 (_POSIX_VDISABLE) is "disabled", 255 in SSH
    for opcode, index, flag in _PTY_FLAGS:
        modes[opcode] = int(bool(attributes[index] & flag))
    return modes


def _pty_request(tty_wanted: bool | None, command: str | None, stdin: int) -> _PtyRequest | None:
    """Whether to ask for a PTY, as ``ssh`` decides: ``-t``, or a shell on a terminal."""
    is_terminal = os.isatty(stdin)
    if tty_wanted is False or (tty_wanted is None and (command is not None or not is_terminal)):
        return None
    term_type = os.environ.get("TERM") or "dumb"
    if not is_terminal:
        return _PtyRequest(term_type=term_type, size=(0, 0, 0, 0), modes={}, terminal=None)
    return _PtyRequest(
        term_type=term_type,
        size=_window_size(stdin),
        modes=_terminal_modes(stdin),
        terminal=stdin,
    )


@contextlib.contextmanager
def _raw_mode(fd: int | None) -> Iterator[None]:
    """The local terminal in raw mode, keys going to the node as typed; restored after."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSADRAIN)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@attrs.frozen
class _LocalFiles:
    """The session's local stdin, stdout and stderr as trio streams (None: not open)."""

    stdin: trio.lowlevel.FdStream | None
    stdout: trio.lowlevel.FdStream | None
    stderr: trio.lowlevel.FdStream | None


@contextlib.asynccontextmanager
async def _local_files(stdin: int, stdout: int, stderr: int) -> AsyncIterator[_LocalFiles]:
    """Streams on duplicates of the three file descriptors, non-blocking while open.

    Each stream restores the blocking mode it found when it closes; on a terminal the three
    share one open file, so stdin opens first and closes last, leaving the mode as it was
    only once nothing reads or writes it any more.
    """
    async with contextlib.AsyncExitStack() as stack:
        streams: list[trio.lowlevel.FdStream | None] = []
        for fd in (stdin, stdout, stderr):
            try:
                stream = trio.lowlevel.FdStream(os.dup(fd))
            except OSError:  # closed, as with `<&-`
                streams.append(None)
                continue
            if fd != stderr:
                _widen_pipe(stream.fileno())
            streams.append(await stack.enter_async_context(stream))
        yield _LocalFiles(*streams)


def _widen_pipe(fd: int) -> None:
    """A pipe (``head -c N | tether ssh ...``) holds :data:`_PIPE_SIZE` from now on.

    Linux's default 64 KiB caps each read, and so each SSH packet, at 64 KiB; reads of a
    full :data:`_CHUNK` take a quarter of the packets, wake-ups and system calls. Not a pipe,
    not Linux, or the user's pipe allowance spent: nothing changes.
    """
    with contextlib.suppress(OSError, AttributeError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


async def _copy_input(source: trio.lowlevel.FdStream | None, channel: _ChannelIO) -> None:
    """Local input to the channel, then EOF (as ``ssh`` forwards stdin)."""
    while source is not None:
        try:
            data = await source.receive_some(_CHUNK)
        except (trio.BrokenResourceError, OSError):  # e.g. EIO: the terminal hung up
            break
        if not data:
            break
        try:
            await channel.send(data)
        except trio.BrokenResourceError:
            return
    channel.send_eof()


async def _copy_output(
    channel: _ChannelIO,
    datatype: asyncssh.DataType,
    sink: trio.lowlevel.FdStream | None,
    prefix: bytes = b"",
) -> bool:
    """The channel's stdout or stderr to *sink*; False if *sink* stopped taking it (EPIPE).

    With a *prefix*, whole lines only, each after the prefix (a last line without its
    newline gets one): several sessions can then share one terminal or pipe.
    """
    partial = b""
    while True:
        data = await channel.receive(datatype)
        ended = not data
        if prefix:
            data = partial + data + (b"\n" if ended and partial else b"")
            cut = data.rfind(b"\n") + 1
            lines, partial = data[:cut].split(b"\n")[:-1], data[cut:]
            if len(partial) >= _CHUNK:  # no newline in sight: do not hold it all back
                lines, partial = [*lines, partial], b""
            data = b"".join(prefix + line + b"\n" for line in lines)
        try:
            if sink is not None and data:
                await sink.send_all(data)
        except (trio.BrokenResourceError, OSError):
            channel.close()  # like a pipeline whose reader went away
            return False
        if ended:
            return True


async def _follow_window(fd: int, size: tuple[int, int, int, int], channel: _ChannelIO) -> None:
    """Tell the node about every change of the local terminal's *size* (SIGWINCH)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only

    def tell() -> None:
        nonlocal size
        with contextlib.suppress(OSError):
            current = _window_size(fd)
            if current != size:
                channel.change_terminal_size(current)
                size = current

    with trio.open_signal_receiver(signal.SIGWINCH) as changes:
        tell()  # a change between the PTY request and now
        async for _ in changes:
            tell()


def _exit_code(channel: _ChannelIO, *, output_lost: bool, host_name: str) -> int:
    """The command's exit status as ``ssh`` would exit: status, or 128+n for signal n."""
    if channel.exit_status is not None:
        return channel.exit_status
    if channel.exit_signal is not None:
        try:
            return 128 + signal.Signals[f"SIG{channel.exit_signal}"].value
        except KeyError:
            return 255
    if output_lost:
        return 128 + signal.SIGPIPE.value
    if channel.error is not None:
        raise ConnectionFailed(f"connection to {host_name} lost: {_reason(channel.error)}")
    raise ConnectionFailed(f"{host_name} ended the session without an exit status")


async def _run_session(
    conn: asyncssh.SSHClientConnection,
    *,
    command: str | None,
    pty: _PtyRequest | None,
    env: Mapping[str, str] | None,
    stdin: int,
    stdout: int,
    stderr: int,
    host_name: str,
    output_prefix: bytes,
) -> int:
    terminal: dict[str, Any] = {"request_pty": False}
    if pty is not None:
        terminal = {
            "request_pty": "force",
            "term_type": pty.term_type,
            "term_size": pty.size,
            "term_modes": pty.modes,
        }
    try:
        channel: _ChannelIO
        _, channel = await trio_asyncio.aio_as_trio(conn.create_session)(
            _ChannelIO,
            command,
            env=dict(env or {}),
            encoding=None,
            max_pktsize=channel_sizes.MAX_PACKET,
            **terminal,
        )
    except asyncssh.ChannelOpenError as exc:
        raise ConnectionFailed(f"{host_name} refused to start a session: {_reason(exc)}") from None
    except (asyncssh.Error, OSError) as exc:
        raise ConnectionFailed(f"connection to {host_name} lost: {_reason(exc)}") from None
    outputs: list[bool] = []

    async def copy_output(datatype: asyncssh.DataType, sink: trio.lowlevel.FdStream | None) -> None:
        outputs.append(await _copy_output(channel, datatype, sink, output_prefix))

    async with _local_files(stdin, stdout, stderr) as local:
        with _raw_mode(pty.terminal if pty else None):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_copy_input, local.stdin, channel)
                if pty is not None and pty.terminal is not None:
                    nursery.start_soon(_follow_window, pty.terminal, pty.size, channel)
                async with trio.open_nursery() as copies:
                    copies.start_soon(copy_output, None, local.stdout)
                    copies.start_soon(copy_output, asyncssh.EXTENDED_DATA_STDERR, local.stderr)
                await channel.wait_closed()
                nursery.cancel_scope.cancel()  # ssh does not wait for stdin once the command ends
    return _exit_code(channel, output_lost=not all(outputs), host_name=host_name)


# --- port forwarding ------------------------------------------------------------------------


def _report(fd: int, message: str) -> None:
    """Tell the user something on *fd* (stderr) without stopping the session."""
    with contextlib.suppress(OSError):
        end = "\r\n" if os.isatty(fd) else "\n"  # a terminal may be in raw mode
        os.write(fd, f"tether: {message}{end}".encode())


async def _splice(stream: trio.abc.HalfCloseableStream, channel: _ChannelIO) -> None:
    """Copy both ways between a local connection and a forwarded channel until both end."""

    async def outbound() -> None:
        while data := await stream.receive_some(_CHUNK):
            await channel.send(data)
        channel.send_eof()

    async def inbound() -> None:
        while data := await channel.receive():
            await stream.send_all(data)
        await stream.send_eof()

    async def run(copy: Callable[[], Awaitable[None]]) -> None:
        try:
            await copy()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, outbound)
            nursery.start_soon(run, inbound)
    finally:
        channel.close()


async def _direct_channel(
    conn: asyncssh.SSHClientConnection,
    host: str,
    port: int,
    stream: trio.SocketStream,
    report: int,
) -> _ChannelIO | Outcome:
    """A ``direct-tcpip`` channel to *host*:*port* from the node, for the local connection
    *stream*; if the node refuses it, the refusal is reported and its SOCKS outcome returned."""
    orig_host, orig_port = stream.socket.getpeername()[:2]
    try:
        channel: _ChannelIO
        _, channel = await trio_asyncio.aio_as_trio(conn.create_connection)(
            _ChannelIO, host, port, orig_host, orig_port, max_pktsize=channel_sizes.MAX_PACKET
        )
    except asyncssh.ChannelOpenError as exc:
        failure = _CHANNEL_OPEN_FAILURES.get(exc.code, "refused")
        _report(report, f"channel open failed: {host}:{port}: {failure}: {_reason(exc)}")
        return _SOCKS_OUTCOMES.get(exc.code, Outcome.FAILED)
    except (asyncssh.Error, OSError) as exc:
        _report(report, f"cannot forward to {host}:{port}: {_reason(exc)}")
        return Outcome.FAILED
    return channel


async def _forward_connection(
    conn: asyncssh.SSHClientConnection,
    forward: LocalForward,
    report: int,
    stream: trio.SocketStream,
) -> None:
    """One accepted local connection, forwarded through a ``direct-tcpip`` channel."""
    try:
        channel = await _direct_channel(conn, forward.host, forward.host_port, stream, report)
        if isinstance(channel, _ChannelIO):
            await _splice(stream, channel)
    finally:
        await trio.aclose_forcefully(stream)


async def _socks_connection(
    conn: asyncssh.SSHClientConnection, report: int, stream: trio.SocketStream
) -> None:
    """One accepted connection of a ``-D`` forward: its SOCKS request, then a channel to
    where it asked to go, from the node."""
    handshake = SocksHandshake()
    try:
        request = None
        with trio.move_on_after(_SOCKS_HANDSHAKE_TIMEOUT):
            while request is None:
                data = await stream.receive_some(_CHUNK)
                if not data:
                    return
                try:
                    request = handshake.receive(data)
                except SocksError as exc:
                    _report(report, f"dynamic forward: {exc}")
                    if exc.reply:
                        await stream.send_all(exc.reply)
                    return
                if answer := handshake.data_to_send():
                    await stream.send_all(answer)
        if request is None:
            return
        channel = await _direct_channel(conn, request.host, request.port, stream, report)
        if not isinstance(channel, _ChannelIO):
            await stream.send_all(handshake.reply(channel))
            return
        await stream.send_all(handshake.reply(Outcome.CONNECTED))
        if early := handshake.leftover():
            await channel.send(early)
        await _splice(stream, channel)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the local program went away
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_listener(
    forward: LocalForward | DynamicForward,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    connections: trio.Nursery,
    report: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen where *forward* says until cancelled; its connections run in *connections*.

    A port that cannot be bound is reported and skipped, as ``ssh`` does by default.
    """
    bind = {None: "localhost", "*": None}.get(forward.bind_address, forward.bind_address)
    try:
        listeners = await trio.open_tcp_listeners(forward.port, host=bind)
    except OSError as exc:
        kind = "local" if isinstance(forward, LocalForward) else "dynamic"
        _report(report, f"cannot listen for {kind} forward {forward}: {_reason(exc)}")
        task_status.started()
        return
    task_status.started()
    try:
        await trio.serve_listeners(handler, listeners, handler_nursery=connections)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def _connect_back(forward: RemoteForward, channel: _ChannelIO, report: int) -> None:
    """One connection the node accepted for a ``-R`` forward, to its destination here."""
    await channel.wait_open()
    try:
        stream = await trio.open_tcp_stream(forward.host, forward.host_port)
    except OSError as exc:
        cause = exc.__cause__  # trio's "all attempts failed" hides each attempt's reason
        if isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        errno = cause.errno if isinstance(cause, OSError) else None
        reason = os.strerror(errno) if errno else _reason(exc)
        _report(report, f"connect to {forward.host} port {forward.host_port} failed: {reason}")
        channel.close()
        return
    try:
        await _splice(stream, channel)
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_remote_forward(
    conn: asyncssh.SSHClientConnection,
    forward: RemoteForward,
    connections: trio.Nursery,
    report: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Have the node listen for *forward* until cancelled; the connections it forwards back
    run in *connections*. A refusal is reported and skipped, as ``ssh`` does by default."""

    def accept(orig_host: str, orig_port: int) -> _ChannelIO:
        # asyncssh calls this from its loop, which runs inside trio's (module docstring)
        channel = _ChannelIO()
        try:
            connections.start_soon(_connect_back, forward, channel, report)
        except RuntimeError:  # the nursery is closing: so is the session
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, "the session is ending"
            ) from None
        return channel

    listen_host = {None: "localhost", "*": ""}.get(forward.bind_address, forward.bind_address)
    try:
        listener = await trio_asyncio.aio_as_trio(conn.create_server)(
            accept, listen_host, forward.port, encoding=None, max_pktsize=channel_sizes.MAX_PACKET
        )
    except (asyncssh.Error, asyncssh.ChannelListenError, OSError) as exc:
        _report(
            report, f"remote port forwarding failed for listen port {forward.port}: {_reason(exc)}"
        )
        task_status.started()
        return
    if forward.port == 0:
        _report(
            report,
            f"allocated port {listener.get_port()} for remote forward to "
            f"{bracketed(forward.host)}:{forward.host_port}",
        )
    task_status.started()
    try:
        await trio.sleep_forever()
    finally:
        listener.close()


def _agent_socket() -> str:
    path = os.environ.get("SSH_AUTH_SOCK")
    hint = 'start one with `eval "$(ssh-agent)"` and add keys with `ssh-add`'
    if not path:
        raise AgentUnavailable(
            "agent forwarding needs an SSH agent, but SSH_AUTH_SOCK is not set", hint=hint
        )
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError as exc:
        raise AgentUnavailable(f"SSH agent socket {path}: {_reason(exc)}", hint=hint) from None
    if not is_socket:
        raise AgentUnavailable(f"SSH_AUTH_SOCK {path} is not a socket", hint=hint)
    return path


async def _until_closed(conn: asyncssh.SSHClientConnection, host_name: str) -> int:
    """``ssh -N``: no command, only forwarding, until the connection ends."""
    await trio_asyncio.aio_as_trio(conn.wait_closed)()
    raise ConnectionFailed(f"connection to {host_name} closed")


async def run_command(
    open_stream: OpenStream,
    creds: ClientCredentials,
    *,
    login: str,
    host_name: str,
    node_name: str | None = None,
    command: str | None = None,
    session: bool = True,
    tty: bool | None = None,
    env: Mapping[str, str] | None = None,
    forward_agent: bool = False,
    local_forwards: Sequence[LocalForward] = (),
    remote_forwards: Sequence[RemoteForward] = (),
    dynamic_forwards: Sequence[DynamicForward] = (),
    keepalive: Keepalive | None = None,
    stdin: int = 0,
    stdout: int = 1,
    stderr: int = 2,
    output_prefix: bytes = b"",
) -> int:
    """Run *command* (or a login shell) on a node as *login*; return its exit status.

    :param open_stream: opens the byte stream to the node's SSH server.
    :param creds: the user's key and certificate, and the host CAs nodes must be signed by.
    :param login: the OS login to run as.
    :param host_name: the name dialled; the node's host certificate must list it.
    :param node_name: the node's name as people know it (its host name), for messages;
        *host_name* when None (a host id means nothing to a user).
    :param command: a command line for the login's shell; None for an interactive shell.
    :param session: False for no command at all, as ``ssh -N``: only the forwards, until the
        connection ends (or the caller cancels).
    :param tty: request a PTY (True, as ``ssh -tt``), never (False), or when a shell is
        started on a local terminal (None). The local terminal is in raw mode meanwhile, and
        its size follows the local one.
    :param env: environment variables to send (the node accepts ``LANG`` and ``LC_*``).
    :param forward_agent: forward the local SSH agent (``SSH_AUTH_SOCK``), as ``ssh -A``.
    :param local_forwards: ports to forward, as ``ssh -L``; a connection the node refuses is
        reported on *stderr*. As with ``ssh``, forwarded connections still open when the
        command ends are waited for.
    :param remote_forwards: ports the node listens on, as ``ssh -R``; a listener the node
        refuses, and a port it chose, are reported on *stderr*.
    :param dynamic_forwards: local SOCKS servers, as ``ssh -D``.
    :param keepalive: ``ServerAliveInterval`` and ``ServerAliveCountMax``; none by default.
    :param stdin: the file descriptor to send as the command's input (until EOF).
    :param stdout: the file descriptor the command's output is written to.
    :param stderr: the file descriptor its error output and this client's notices go to.
    :param output_prefix: put before every line of output (``[web-1] ``), for a command run
        on several nodes at once.
    :returns: the exit status; 128+n if the command died of signal n; 128+SIGPIPE if
        *stdout* was closed before the command ended.
    :raises HostNotTrusted: the node did not present a valid host certificate of a trusted CA.
    :raises AccessDenied: the node refused the login; the message says why.
    :raises ConnectionFailed: the node could not be reached, or the connection broke before
        the command's exit status arrived (``ssh`` exits 255 then).
    :raises AgentUnavailable: *forward_agent* without a local agent.
    """
    agent = _agent_socket() if forward_agent else None
    pty = _pty_request(tty, command, stdin) if session else None
    with _unwrapped():
        async with (
            _connected(
                open_stream,
                creds,
                login=login,
                host_name=host_name,
                node_name=node_name,
                agent_forward_path=agent,
                keepalive=keepalive,
            ) as conn,
            # forwarded connections outlive the listeners: ssh waits for them to close
            trio.open_nursery() as connections,
            trio.open_nursery() as listeners,
        ):
            for forward in local_forwards:
                handler = functools.partial(_forward_connection, conn, forward, stderr)
                await listeners.start(_serve_listener, forward, handler, connections, stderr)
            for dynamic in dynamic_forwards:
                handler = functools.partial(_socks_connection, conn, stderr)
                await listeners.start(_serve_listener, dynamic, handler, connections, stderr)
            for remote in remote_forwards:
                await listeners.start(_serve_remote_forward, conn, remote, connections, stderr)
            if not session:
                return await _until_closed(conn, node_name or host_name)
            status = await _run_session(
                conn,
                command=command,
                pty=pty,
                env=env,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                host_name=node_name or host_name,
                output_prefix=output_prefix,
            )
            listeners.cancel_scope.cancel()
    return status


# --- copying files --------------------------------------------------------------------------


@attrs.frozen
class _Remote:
    login: str | None
    host: str
    path: str

    @property
    def sftp_path(self) -> str:
        """The path for SFTP, whose relative paths start in the login's home directory."""
        if self.path in ("", "~"):
            return "."
        return self.path.removeprefix("~/") or "."


def _location(spec: str) -> _Remote | str:
    """``[login@]host:path`` as a remote location, anything else as a local path (as scp)."""
    if spec.startswith(":"):
        return spec
    in_brackets = False
    for index, char in enumerate(spec):
        if char == "[":
            in_brackets = True
        elif char == "]":
            in_brackets = False
        elif char == "/" and not in_brackets:
            return spec  # a slash before any colon: a local path
        elif char == ":" and not in_brackets:
            user_host, path = spec[:index], spec[index + 1 :]
            login, _, host = user_host.rpartition("@")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if not host:
                raise CopyFailed(f"no host name in {spec!r}")
            return _Remote(login=login or None, host=host, path=path)
    return spec


#: One SFTP call of a copy, and the remote location its errors name.
_Step: TypeAlias = tuple[str, Callable[[asyncssh.SFTPClient], Awaitable[None]]]


def _copy_error(exc: BaseException, location: str) -> CopyFailed:
    if isinstance(exc, OSError) and exc.filename:  # a local file
        return CopyFailed(f"{exc.filename}: {exc.strerror or exc}")
    return CopyFailed(f"{location}: {_reason(exc)}")


async def _sftp_session(
    open_stream_for: OpenStreamFor,
    creds: ClientCredentials,
    remote: _Remote,
    login: str,
    steps: Sequence[_Step],
) -> None:
    """Connect to *remote*'s host as *login* and run *steps* with one SFTP client."""
    async with _connected(
        functools.partial(open_stream_for, remote.host), creds, login=login, host_name=remote.host
    ) as conn:
        try:
            sftp = await trio_asyncio.aio_as_trio(conn.start_sftp_client)()
        except (asyncssh.Error, OSError) as exc:
            raise CopyFailed(
                f"{remote.host} does not offer file transfer (SFTP): {_reason(exc)}"
            ) from None
        try:
            for location, step in steps:
                try:
                    await trio_asyncio.aio_as_trio(step)(sftp)
                except (asyncssh.SFTPError, OSError) as exc:
                    raise _copy_error(exc, location) from None
        finally:
            sftp.exit()


def _plan(
    origins: Sequence[_Remote | str], target: _Remote | str, *, recurse: bool, preserve: bool
) -> list[tuple[_Remote, list[_Step]]]:
    """The connections a copy needs, in order, with the SFTP calls to make on each."""
    if isinstance(target, _Remote):
        local = [origin for origin in origins if isinstance(origin, str)]
        if len(local) < len(origins):
            raise CopyFailed(
                "copying from one remote location to another is not supported",
                hint="copy through a local file",
            )
        destination = target.sftp_path

        async def upload(sftp: asyncssh.SFTPClient) -> None:
            await sftp.put(local, destination, recurse=recurse, preserve=preserve)

        return [(target, [(f"{target.host}:{target.path}", upload)])]
    remotes = [origin for origin in origins if isinstance(origin, _Remote)]
    if len(remotes) < len(origins):
        raise CopyFailed("copying between two local paths is not a remote copy", hint="use cp")
    if len(remotes) > 1 and not os.path.isdir(target):
        raise CopyFailed(f"{target}: not a directory", hint="copying several files needs one")
    plan: list[tuple[_Remote, list[_Step]]] = []
    for remote in remotes:  # consecutive sources on the same host share a connection

        async def download(sftp: asyncssh.SFTPClient, path: str = remote.sftp_path) -> None:
            get = sftp.mget if any(char in path for char in "*?[") else sftp.get  # glob?
            await get(path, target, recurse=recurse, preserve=preserve)

        step = (f"{remote.host}:{remote.path}", download)
        if plan and (plan[-1][0].login, plan[-1][0].host) == (remote.login, remote.host):
            plan[-1][1].append(step)
        else:
            plan.append((remote, [step]))
    return plan


async def copy_files(
    open_stream_for: OpenStreamFor,
    creds: ClientCredentials,
    *,
    sources: Sequence[str],
    destination: str,
    recursive: bool = False,
    preserve: bool = False,
    default_login: str | None = None,
) -> None:
    """Copy files to or from nodes over SFTP, as ``scp`` does: ``[login@]host:path`` is remote.

    Either every source is remote (one connection per host, in order; remote paths may be
    glob patterns, expanded on the node) and *destination* is local, or every source is local
    and *destination* is remote. Relative remote paths start in the login's home directory.
    Several sources need a directory as destination. The first failure stops the copy.

    :param open_stream_for: opens the byte stream to the SSH server of a host name.
    :param creds: as for :func:`run_command`.
    :param sources: the files (or with *recursive*, directories) to copy.
    :param destination: where to copy them: a directory, or the new name of a single file.
    :param recursive: copy directories with their contents (``scp -r``).
    :param preserve: keep modification times and modes (``scp -p``).
    :param default_login: the login for locations that name none.
    :raises CopyFailed: a file could not be read or written, or the node offers no SFTP.
    :raises HostNotTrusted: as for :func:`run_command`; so are AccessDenied and
        ConnectionFailed.
    """
    if not sources:
        raise CopyFailed("nothing to copy: no source given")
    plan = _plan(
        [_location(source) for source in sources],
        _location(destination),
        recurse=recursive,
        preserve=preserve,
    )
    for remote, _ in plan:
        if not (remote.login or default_login):
            raise CopyFailed(f"no login for {remote.host}", hint="write it as login@host:path")
    with _unwrapped():
        for remote, steps in plan:
            login = remote.login or default_login
            assert login is not None
            await _sftp_session(open_stream_for, creds, remote, login, steps)
