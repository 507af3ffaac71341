"""A TLS stream for trio that lets OpenSSL talk to the socket directly.

``trio.SSLStream`` pushes every byte through a pair of memory BIOs and a Python-level loop,
which measured 0.4x the throughput of a non-blocking :class:`ssl.SSLSocket` driven by trio's
``wait_readable``/``wait_writable`` (DESIGN.md, "The tunnel"). :class:`TLSStream` is the
latter, wrapped as a :class:`trio.abc.Stream` with the guarantees ``trio.SSLStream`` gives:

- every operation is a checkpoint, and cancellation is safe: a cancelled ``receive_some``
  consumed nothing (it only ever waits *before* reading), a cancelled handshake can be resumed
  or abandoned, and a cancelled ``send_all`` that had started handing data to OpenSSL leaves
  the stream broken, so the next call says so instead of sending a corrupted record stream;
- no busy loops: the stream waits on the socket only when OpenSSL said it must
  (``SSLWantReadError``/``SSLWantWriteError``) or when the last read left neither OpenSSL nor
  the socket a byte (an idle tunnel's next message then costs one read, not a failed one
  first), and data OpenSSL already buffered (``SSLSocket.pending()``) is returned without
  waiting for the socket;
- two tasks sending (or two receiving) at once get :class:`trio.BusyResourceError`, while one
  sender and one receiver may run concurrently, as on any trio stream;
- ``aclose`` sends close_notify when the stream is healthy, is idempotent, and closing wakes
  any task blocked on the stream with :class:`trio.ClosedResourceError`;
- a vanished peer or a TLS error is :class:`trio.BrokenResourceError`, chained to the
  ``ssl``/``OSError`` cause.

TLS has no half-close that peers honour, so like ``trio.SSLStream`` this class has no
``send_eof``; hypercorn, which calls ``send_eof`` when it exists, treats its absence as TLS.
"""

from __future__ import annotations

import enum
import operator
import socket
import ssl
import sys
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import trio

__all__ = [
    "CLOSE_NOTIFY_TIMEOUT",
    "DEFAULT_RECEIVE_SIZE",
    "SEND_CHUNK_SIZE",
    "TLSStream",
    "TransportInfo",
    "detach_socket",
    "start_tls",
]

_T = TypeVar("_T")

#: How much ``receive_some()`` returns at most when the caller does not say. Large, because
#: each call costs a trip through the trio scheduler; one call drains every TLS record
#: (16 KiB each) that has already arrived, up to this size.
DEFAULT_RECEIVE_SIZE = 256 * 1024

#: ``send_all`` hands OpenSSL at most this much per call, yielding to other tasks in between,
#: so one large send cannot hold the event loop for the whole time it takes to encrypt it.
SEND_CHUNK_SIZE = 1024 * 1024

#: How long ``aclose`` waits for room in the socket to write close_notify (seconds). It is a
#: courtesy, so a peer that stopped reading must not keep a closing connection alive for long.
CLOSE_NOTIFY_TIMEOUT = 5.0

#: The most plaintext one TLS record carries, so the most one ``SSL_read`` returns. Reads ask
#: for no more: the stdlib allocates what was asked for and then shrinks it, and asking for
#: 256 KiB per record (over glibc's mmap threshold) cost 2.7x the CPU of asking for 16 KiB.
_RECORD_SIZE = 16 * 1024

_Buffer = bytes | bytearray | memoryview

if sys.platform != "win32":
    import fcntl
    import termios

    def _socket_empty(fd: int, scratch: bytearray) -> bool:
        """Whether the kernel holds no unread bytes for ``fd`` (one ``FIONREAD`` ioctl):
        an eighth of what asking OpenSSL costs when the answer is no (a raised
        ``SSLWantReadError``)."""
        try:
            fcntl.ioctl(fd, termios.FIONREAD, scratch)
        except OSError:
            return False  # cannot tell: let OpenSSL find out
        return not any(scratch)

else:  # pragma: no cover - no FIONREAD for sockets here through fcntl

    def _socket_empty(fd: int, scratch: bytearray) -> bool:
        return False


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


class _ConflictDetector:
    """Raise :class:`trio.BusyResourceError` when a second task enters while one is inside.

    trio's own detector is private; this is the same few lines. A stream needs one per
    direction: a sender and a receiver may overlap, two senders may not (their records
    would interleave).
    """

    __slots__ = ("_held", "_message")

    def __init__(self, message: str) -> None:
        self._held = False
        self._message = message

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._held = False


class TransportInfo:
    """What hypercorn reads from ``stream.transport_stream``: the socket, for addresses.

    hypercorn's trio server duck-types ``trio.SSLStream`` and asks its transport for
    ``.socket.family``, ``.getpeername()`` and ``.getsockname()``; the stdlib socket under a
    :class:`TLSStream` answers all three.
    """

    __slots__ = ("socket",)

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def detach_socket(stream: trio.SocketStream) -> socket.socket:
    """Take the stdlib socket out of a trio :class:`~trio.SocketStream`, non-blocking.

    After this the trio stream no longer owns the file descriptor; the returned socket does.
    """
    trio_sock = stream.socket
    family, type_, proto = trio_sock.family, trio_sock.type, trio_sock.proto
    fd = trio_sock.detach()
    try:
        sock = socket.socket(family, type_, proto, fileno=fd)
    except BaseException:
        socket.close(fd)
        raise
    sock.setblocking(False)
    return sock


async def start_tls(
    tcp: trio.SocketStream,
    ssl_context: ssl.SSLContext,
    *,
    server_hostname: str | None,
    allow_ragged_eof: bool = False,
) -> TLSStream:
    """Secure a connected TCP stream as the client and complete the handshake: for protocols
    that agree on TLS in plaintext first (PostgreSQL's ``SSLRequest``, MySQL's
    ``SSLRequest`` packet). The socket leaves ``tcp`` for the returned stream.

    Fails with :class:`trio.BrokenResourceError`, chained to the ``ssl`` error (an
    ``ssl.SSLCertVerificationError`` says why the server's certificate was refused), when the
    handshake fails; the socket is closed either way. Wrap in ``trio.fail_after`` to bound it.
    """
    try:
        sock = detach_socket(tcp)
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    stream = TLSStream.wrap_client(
        sock, ssl_context, server_hostname=server_hostname, allow_ragged_eof=allow_ragged_eof
    )
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


def _broken(exc: BaseException, doing: str) -> trio.BrokenResourceError:
    return trio.BrokenResourceError(f"{doing}: {exc}")


class TLSStream(trio.abc.Stream):
    """A TLS connection over a non-blocking :class:`ssl.SSLSocket`, as a trio stream.

    Build one with :meth:`connect` (dial and handshake), :meth:`wrap_client` or
    :meth:`wrap_server` (an already connected socket; the handshake happens on
    :meth:`do_handshake` or the first send/receive).

    *allow_ragged_eof*: treat a peer that closes TCP without close_notify as a clean end of
    stream rather than :class:`trio.BrokenResourceError`. HTTPS clients do this routinely;
    protocols with their own framing can afford it, others should leave it off so that a
    truncation is never mistaken for the end of the data.
    """

    def __init__(self, sock: ssl.SSLSocket, *, allow_ragged_eof: bool = False) -> None:
        """Adopt *sock*, a non-blocking ``SSLSocket`` made with ``do_handshake_on_connect=False``
        and ``suppress_ragged_eofs=False``; prefer the classmethods, which make it so."""
        self._sock = sock
        self._allow_ragged_eof = allow_ragged_eof
        self._state = _State.OK
        self._handshook = False
        self._handshake_lock = trio.Lock()
        self._send_conflict = _ConflictDetector("another task is already sending on this stream")
        self._receive_conflict = _ConflictDetector(
            "another task is already receiving on this stream"
        )
        # trio lets one task at a time wait for each direction of a file descriptor; these
        # let a second task (a receive that must write, a send that must read) wait for the
        # first task's wakeup instead of failing with BusyResourceError.
        self._readable: trio.Event | None = None
        self._writable: trio.Event | None = None
        # True once a read found nothing more to read: neither OpenSSL nor the socket held
        # a byte. The next receive then waits for the socket before asking OpenSSL, instead
        # of paying for an SSLWantReadError it knows is coming. OpenSSL reads no further
        # than the record it is decoding (no read-ahead), so with nothing pending in it,
        # every byte still to come is in the socket, and waiting for it loses nothing.
        self._drained = False
        self._fionread = bytearray(4)
        self.transport_stream = TransportInfo(sock)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def wrap_client(
        cls,
        sock: socket.socket,
        ssl_context: ssl.SSLContext,
        *,
        server_hostname: str | None,
        allow_ragged_eof: bool = False,
    ) -> TLSStream:
        """Wrap a connected socket as the client side; it now belongs to the stream."""
        return cls._wrap(
            sock,
            ssl_context,
            server_side=False,
            server_hostname=server_hostname,
            allow_ragged_eof=allow_ragged_eof,
        )

    @classmethod
    def wrap_server(
        cls, sock: socket.socket, ssl_context: ssl.SSLContext, *, allow_ragged_eof: bool = False
    ) -> TLSStream:
        """Wrap an accepted socket as the server side; it now belongs to the stream.

        Raises :class:`trio.BrokenResourceError` (and closes the socket) if the peer is
        already gone, which happens to servers under load.
        """
        return cls._wrap(
            sock,
            ssl_context,
            server_side=True,
            server_hostname=None,
            allow_ragged_eof=allow_ragged_eof,
        )

    @classmethod
    def _wrap(
        cls,
        sock: socket.socket,
        ssl_context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None,
        allow_ragged_eof: bool,
    ) -> TLSStream:
        try:
            # The stdlib turns a socket that is not (or no longer) connected into a plain
            # socket without TLS; refuse that here rather than find out on the first read.
            sock.getpeername()
            sock.setblocking(False)
            tls = ssl_context.wrap_socket(
                sock,
                server_side=server_side,
                server_hostname=server_hostname,
                do_handshake_on_connect=False,
                suppress_ragged_eofs=False,
            )
        except OSError as exc:
            sock.close()
            raise _broken(exc, "connection lost before the TLS handshake") from exc
        except BaseException:
            sock.close()
            raise
        return cls(tls, allow_ragged_eof=allow_ragged_eof)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        server_hostname: str | None,
        allow_ragged_eof: bool = False,
    ) -> TLSStream:
        """Dial ``host:port`` (trio's happy eyeballs) and complete the handshake.

        Fails with ``OSError`` when the TCP connection cannot be made and with
        :class:`trio.BrokenResourceError` when the handshake fails; the socket is closed
        either way. Wrap in ``trio.fail_after`` to bound the whole thing.
        """
        tcp = await trio.open_tcp_stream(host, port)
        return await start_tls(
            tcp, ssl_context, server_hostname=server_hostname, allow_ragged_eof=allow_ragged_eof
        )

    # --- introspection --------------------------------------------------------------------

    @property
    def socket(self) -> ssl.SSLSocket:
        """The stdlib socket; for addresses and socket options, never for I/O."""
        return self._sock

    def selected_alpn_protocol(self) -> str | None:
        """The ALPN id both sides agreed on, or None (no handshake yet, or none agreed)."""
        return self._sock.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate as ``ssl.SSLSocket.getpeercert`` returns it.

        Raises ``ValueError`` before the handshake and ``OSError`` once the connection is
        gone, as the stdlib does.
        """
        return self._sock.getpeercert(binary_form)

    def version(self) -> str | None:
        """The negotiated TLS version (``"TLSv1.3"``), or None before the handshake."""
        return self._sock.version()

    # --- the stream -----------------------------------------------------------------------

    def _check_status(self) -> None:
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this TLS stream was closed")
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("this TLS stream is broken by an earlier error")

    async def do_handshake(self) -> None:
        """Complete the TLS handshake if it has not happened yet; calling it again is cheap.

        Cancellation leaves OpenSSL's handshake state intact, so a later call resumes it;
        callers usually close the stream instead. Fails with :class:`trio.BrokenResourceError`
        when the handshake does: OpenSSL has then already written the alert that tells the
        peer why (see :meth:`detach_transport`).
        """
        self._check_status()
        if self._handshook:
            await trio.lowlevel.checkpoint()
            return
        async with self._handshake_lock:
            if self._handshook:  # another task finished it while we waited for the lock
                return
            await self._retry(self._sock.do_handshake, "TLS handshake failed")
            self._handshook = True

    async def _retry(self, operation: Callable[[], _T], doing: str) -> _T:
        """Call *operation* until OpenSSL stops asking for the socket to become ready."""
        while True:
            try:
                return operation()
            except ssl.SSLWantReadError:
                await self._wait_readable()
            except ssl.SSLWantWriteError:
                await self._wait_writable()
            except OSError as exc:  # ssl.SSLError included
                self._state = _State.BROKEN
                raise _broken(exc, doing) from exc
            self._check_status()

    async def _wait_readable(self) -> None:
        waiting = self._readable
        if waiting is not None:
            await waiting.wait()
            return
        self._readable = trio.Event()
        try:
            await trio.lowlevel.wait_readable(self._sock)
        finally:
            self._readable.set()
            self._readable = None

    async def _wait_writable(self) -> None:
        waiting = self._writable
        if waiting is not None:
            await waiting.wait()
            return
        self._writable = trio.Event()
        try:
            await trio.lowlevel.wait_writable(self._sock)
        finally:
            self._writable.set()
            self._writable = None

    async def send_all(self, data: _Buffer) -> None:
        """Send all of *data*, encrypted; returns when OpenSSL has handed it to the kernel.

        If cancelled after the first byte went to OpenSSL, the stream is broken: part of the
        data may have been sent, and OpenSSL expects the rest, so later sends fail with
        :class:`trio.BrokenResourceError`.
        """
        with self._send_conflict:
            self._check_status()
            await trio.lowlevel.checkpoint_if_cancelled()
            if not self._handshook:
                await self.do_handshake()
            committed = False
            try:
                with memoryview(data) as view, view.cast("B") as flat:
                    for start in range(0, len(flat), SEND_CHUNK_SIZE):
                        chunk = flat[start : start + SEND_CHUNK_SIZE]
                        while chunk:
                            committed = True
                            sent = await self._retry(
                                partial(self._sock.send, chunk), "TLS send failed"
                            )
                            chunk = chunk[sent:]
                        await trio.lowlevel.cancel_shielded_checkpoint()
            except trio.Cancelled:
                if committed and self._state is _State.OK:
                    self._state = _State.BROKEN
                raise
            if not committed:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more data (handshaking first if needed)."""
        with self._send_conflict:
            self._check_status()
            if not self._handshook:
                await self.do_handshake()
            await self._wait_writable()
            self._check_status()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to *max_bytes* of decrypted data (default :data:`DEFAULT_RECEIVE_SIZE`).

        Returns ``b""`` once the peer sent close_notify (or, with *allow_ragged_eof*, closed
        TCP without it). Waits only when OpenSSL has no decrypted data and the socket has
        none either, and never after it has read anything, so cancelling loses no data.
        """
        with self._receive_conflict:
            if max_bytes is None:
                max_bytes = DEFAULT_RECEIVE_SIZE
            else:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be >= 1")
            self._check_status()
            await trio.lowlevel.checkpoint_if_cancelled()
            if not self._handshook:
                await self.do_handshake()
            waited = False
            if self._drained and not self._sock.pending():
                # nothing was left to read last time: wait here (a checkpoint, with nothing
                # read yet, so cancelling loses nothing) rather than ask OpenSSL first
                await self._wait_readable()
                self._check_status()
                waited = True
            self._drained = False
            data = await self._retry(partial(self._read, max_bytes), "TLS receive failed")
            if data and len(data) < max_bytes:
                data = self._read_more(data, max_bytes)
            if not waited:  # waiting was this call's checkpoint already
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def _read(self, max_bytes: int) -> bytes:
        """One TLS record's worth of data; ``b""`` at the end of the stream."""
        try:
            return self._sock.recv(min(max_bytes, _RECORD_SIZE))
        except ssl.SSLZeroReturnError:  # close_notify
            return b""
        except ssl.SSLEOFError:  # TCP closed without close_notify
            if self._allow_ragged_eof:
                return b""
            raise

    def _read_more(self, first: bytes, max_bytes: int) -> bytes:
        """Append the records that already arrived, without waiting, up to *max_bytes*.

        Without this a receive returns one 16 KiB record and pays a scheduler round trip for
        each. An error or the end of the stream here is left for the next call to report,
        after the data read so far is delivered.
        """
        parts = [first]
        total = last = len(first)
        while total < max_bytes:
            # a short record usually ends what the peer wrote: when OpenSSL holds nothing
            # more of it and the socket is empty, this stream is drained (a small message,
            # a heartbeat, is then one recv rather than two, and no exception)
            if (
                last < _RECORD_SIZE
                and not self._sock.pending()
                and _socket_empty(self._sock.fileno(), self._fionread)
            ):
                self._drained = True
                break
            try:
                more = self._sock.recv(min(max_bytes - total, _RECORD_SIZE))
            except ssl.SSLWantReadError:  # nothing more yet
                self._drained = True
                break
            except OSError:  # the next call reports it, after this data is delivered
                break
            if not more:
                break
            parts.append(more)
            last = len(more)
            total += last
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def detach_transport(self) -> trio.SocketStream:
        """Hand back the TCP connection without TLS, closing this stream.

        For a server refusing a client whose handshake failed: OpenSSL has already written
        the alert that says why, and the caller can still half-close and drain the TCP
        connection so the peer reads that alert rather than a reset.
        """
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this TLS stream was closed")
        self._state = _State.CLOSED
        trio.lowlevel.notify_closing(self._sock)
        family, type_, proto = self._sock.family, self._sock.type, self._sock.proto
        fd = self._sock.detach()
        raw = socket.socket(family, type_, proto, fileno=fd)
        return trio.SocketStream(trio.socket.from_stdlib_socket(raw))

    async def aclose(self) -> None:
        """Send close_notify if the stream is healthy, then close the socket.

        Does not wait for the peer's close_notify, and waits at most
        :data:`CLOSE_NOTIFY_TIMEOUT` for room to send ours. Closing is idempotent, happens even when
        cancelled (``trio.aclose_forcefully`` closes without waiting for the socket), and
        wakes tasks blocked on this stream with :class:`trio.ClosedResourceError`.
        """
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        notify = self._state is _State.OK and self._handshook
        self._state = _State.CLOSED
        try:
            if notify:
                with trio.move_on_after(CLOSE_NOTIFY_TIMEOUT):
                    await self._send_close_notify()
        finally:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()

    async def _send_close_notify(self) -> None:
        while True:
            try:
                self._sock.unwrap()
            except ssl.SSLWantWriteError:
                await self._wait_writable()
                continue
            except (ssl.SSLWantReadError, OSError, ValueError):
                # SSLWantReadError: close_notify is out and OpenSSL wants the peer's reply,
                # which we do not wait for. Other errors: the peer is gone; nothing to tell.
                pass
            return
