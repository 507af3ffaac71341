"""A TLS stream for trio that batches records: many per socket write, many per socket read.

``trio.SSLStream`` pushes every byte through a pair of memory BIOs with a Python-level loop
per TLS record and measured 0.4x the throughput of a non-blocking :class:`ssl.SSLSocket`
(DESIGN.md, "The tunnel"); the ``SSLSocket`` in turn costs one ``write()`` per 16 KiB record
and two ``read()`` calls per record received (header, then body), which profiles showed as
most of a bulk transfer's CPU. :class:`TLSStream` drives OpenSSL through memory BIOs too, but
moves data in batches: a send encrypts up to :data:`SEND_CHUNK_SIZE` of records into the
outgoing BIO and hands them to the kernel in as few ``send()`` calls as the socket allows;
a receive reads up to :data:`RECEIVE_BUFFER_SIZE` of ciphertext in one ``recv_into()`` and
decrypts every complete record it holds, up to what the caller asked for.

It is a :class:`trio.abc.Stream` with the guarantees ``trio.SSLStream`` gives:

- every operation is a checkpoint, and cancellation is safe: a cancelled ``receive_some``
  consumed nothing (it only ever waits *before* reading from the socket, and what it read
  stays in the incoming BIO for the next call), a cancelled handshake can be resumed or
  abandoned, and a cancelled ``send_all`` that had started handing data to OpenSSL leaves
  the stream broken, so the next call says so instead of sending a corrupted record stream;
- no busy loops: the stream waits on the socket only when OpenSSL needs more ciphertext or
  the kernel will take no more, and it always asks OpenSSL first, so data already received
  (decrypted or still in the BIO) is returned without waiting for the socket;
- bytes OpenSSL writes reach the socket in order, whichever task flushes them: one task at
  a time sends, and the others let it carry their bytes too;
- two tasks sending (or two receiving) at once get :class:`trio.BusyResourceError`, while one
  sender and one receiver may run concurrently, as on any trio stream;
- ``aclose`` sends close_notify when the stream is healthy, is idempotent, and closing wakes
  any task blocked on the stream with :class:`trio.ClosedResourceError`;
- a failed handshake still tells the peer why: the alert OpenSSL wrote is flushed before the
  error is raised (see :meth:`TLSStream.detach_transport`);
- a vanished peer or a TLS error is :class:`trio.BrokenResourceError`, chained to the
  ``ssl``/``OSError`` cause.

TLS has no half-close that peers honour, so like ``trio.SSLStream`` this class has no
``send_eof``; hypercorn, which calls ``send_eof`` when it exists, treats its absence as TLS.
"""

from __future__ import annotations

import contextlib
import enum
import operator
import socket
import ssl
import threading
from types import TracebackType
from typing import Any

import trio

__all__ = [
    "CLOSE_NOTIFY_TIMEOUT",
    "DEFAULT_RECEIVE_SIZE",
    "RECEIVE_BUFFER_SIZE",
    "SEND_CHUNK_SIZE",
    "TLSStream",
    "TransportInfo",
    "detach_socket",
    "start_tls",
]

#: How much ``receive_some()`` returns at most when the caller does not say. Large, because
#: each call costs a trip through the trio scheduler; one call decrypts every TLS record
#: (16 KiB each) that has already arrived, up to this size.
DEFAULT_RECEIVE_SIZE = 256 * 1024

#: How much ciphertext one ``recv_into()`` asks the kernel for: sixteen full records, so a
#: bulk receive costs one system call per 256 KiB instead of two per 16 KiB record.
RECEIVE_BUFFER_SIZE = 256 * 1024

#: ``send_all`` hands OpenSSL at most this much per call and sends the records before taking
#: more: the records of one chunk go out in as few ``send()`` calls as the kernel allows, and
#: one large send neither holds the event loop nor buffers more than this while encrypting.
SEND_CHUNK_SIZE = 1024 * 1024

#: How long ``aclose`` waits for room in the socket to write close_notify (seconds). It is a
#: courtesy, so a peer that stopped reading must not keep a closing connection alive for long.
CLOSE_NOTIFY_TIMEOUT = 5.0

#: How many buffers of unread data ``aclose`` drops at most before closing (see
#: ``_discard_received``): enough for what a peer sent unasked, bounded against one that
#: keeps sending.
_DISCARD_READS = 16

#: The most plaintext one TLS record carries, so the most one ``SSL_read`` returns.
_RECORD_SIZE = 16 * 1024

_Buffer = bytes | bytearray | memoryview


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


class _Scratch(threading.local):
    """The buffer a receive fills and empties without yielding, so one per thread serves
    every stream: a stream holding 256 KiB of its own would cost a proxy with thousands of idle
    connections that much each."""

    def __init__(self) -> None:
        self.ciphertext = memoryview(bytearray(RECEIVE_BUFFER_SIZE))


_scratch = _Scratch()


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
    """A TLS connection over a non-blocking socket, driven through memory BIOs, as a trio
    stream.

    Build one with :meth:`connect` (dial and handshake), :meth:`wrap_client` or
    :meth:`wrap_server` (an already connected socket; the handshake happens on
    :meth:`do_handshake` or the first send/receive).

    *allow_ragged_eof*: treat a peer that closes TCP without close_notify as a clean end of
    stream rather than :class:`trio.BrokenResourceError`. HTTPS clients do this routinely;
    protocols with their own framing can afford it, others should leave it off so that a
    truncation is never mistaken for the end of the data.
    """

    def __init__(
        self,
        sock: socket.socket,
        ssl_context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None,
        allow_ragged_eof: bool = False,
    ) -> None:
        """Adopt *sock*, a connected non-blocking socket; prefer the classmethods, which check
        that it is connected and close it when wrapping fails."""
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = ssl_context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._allow_ragged_eof = allow_ragged_eof
        self._state = _State.OK
        self._handshook = False
        self._ended = False  # receive_some returned b"": it keeps doing so
        self._reset = False  # the peer reset TCP, which OpenSSL was told as an EOF
        self._handshake_lock = trio.Lock()
        self._send_conflict = _ConflictDetector("another task is already sending on this stream")
        self._receive_conflict = _ConflictDetector(
            "another task is already receiving on this stream"
        )
        # Records taken out of the outgoing BIO that the kernel has not accepted yet, and the
        # task sending them: whoever flushes sends these first, then the BIO, so bytes reach
        # the socket in the order OpenSSL wrote them.
        self._unsent = memoryview(b"")
        self._flushing: trio.Event | None = None
        # trio lets one task at a time wait for each direction of a file descriptor; these
        # let a second task wait for the first task's wakeup instead of failing with
        # BusyResourceError.
        self._readable: trio.Event | None = None
        self._writable: trio.Event | None = None
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
            # A socket that is not (or no longer) connected would only fail on the first
            # read; say so now, as the stdlib's SSLSocket does.
            sock.getpeername()
            sock.setblocking(False)
            return cls(
                sock,
                ssl_context,
                server_side=server_side,
                server_hostname=server_hostname,
                allow_ragged_eof=allow_ragged_eof,
            )
        except OSError as exc:
            sock.close()
            raise _broken(exc, "connection lost before the TLS handshake") from exc
        except BaseException:
            sock.close()
            raise

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
    def socket(self) -> socket.socket:
        """The stdlib socket; for addresses and socket options, never for I/O."""
        return self._sock

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The connection's OpenSSL state: what ``SSLContext.sni_callback`` is handed, and
        ``pending()`` (plaintext decrypted but not yet returned); never for I/O."""
        return self._ssl

    def selected_alpn_protocol(self) -> str | None:
        """The ALPN id both sides agreed on, or None (no handshake yet, or none agreed)."""
        return self._ssl.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate as ``ssl.SSLSocket.getpeercert`` returns it.

        Raises ``ValueError`` before the handshake and ``OSError`` once the connection is
        gone, as the stdlib does.
        """
        self._sock.getpeername()  # OSError when closed or no longer connected
        return self._ssl.getpeercert(binary_form)

    def version(self) -> str | None:
        """The negotiated TLS version (``"TLSv1.3"``), or None before the handshake."""
        return self._ssl.version()

    # --- the stream -----------------------------------------------------------------------

    def _check_status(self) -> None:
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this TLS stream was closed")
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("this TLS stream is broken by an earlier error")

    def _fail(self, exc: BaseException, doing: str) -> trio.BrokenResourceError:
        """Mark the stream broken by *exc*; the error to raise, chained by the caller."""
        if self._state is _State.OK:
            self._state = _State.BROKEN
        return _broken(exc, doing)

    async def do_handshake(self) -> None:
        """Complete the TLS handshake if it has not happened yet; calling it again is cheap.

        Cancellation leaves OpenSSL's handshake state and the bytes it wrote intact, so a
        later call resumes it; callers usually close the stream instead. Fails with
        :class:`trio.BrokenResourceError` when the handshake does, after sending the alert
        that tells the peer why (see :meth:`detach_transport`).
        """
        self._check_status()
        if self._handshook:
            await trio.lowlevel.checkpoint()
            return
        doing = "TLS handshake failed"
        async with self._handshake_lock:
            if self._handshook:  # another task finished it while we waited for the lock
                return
            while True:
                try:
                    self._ssl.do_handshake()
                except ssl.SSLWantReadError:
                    await self._flush(doing)
                    await self._fill(doing)
                    continue
                except OSError as exc:  # ssl.SSLError included
                    self._flush_nowait()
                    raise self._fail(exc, doing) from exc
                break
            await self._flush(doing)  # our last flight (Finished, session tickets)
            self._handshook = True

    async def send_all(self, data: _Buffer) -> None:
        """Send all of *data*, encrypted; returns when the kernel has accepted every record.

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
                        committed = True
                        self._encrypt(flat[start : start + SEND_CHUNK_SIZE])
                        await self._flush("TLS send failed")
                        await trio.lowlevel.cancel_shielded_checkpoint()
            except trio.Cancelled:
                if committed and self._state is _State.OK:
                    self._state = _State.BROKEN
                raise
            if not committed:
                await trio.lowlevel.cancel_shielded_checkpoint()

    def _encrypt(self, chunk: memoryview) -> None:
        """Turn *chunk* into records in the outgoing BIO, which takes them all at once."""
        try:
            self._ssl.write(chunk)
        except OSError as exc:  # ssl.SSLError: OpenSSL refuses, e.g. after close_notify
            raise self._fail(exc, "TLS send failed") from exc

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
        TCP without it). Waits only when OpenSSL cannot decrypt a whole record from what was
        already received, and never after it has read anything from the socket, so
        cancelling loses no data.
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
            doing = "TLS receive failed"
            while (data := self._decrypt(max_bytes)) is None:
                if self._flushing is None and (self._unsent or self._outgoing.pending):
                    await self._flush(doing)  # OpenSSL answered something the peer sent
                await self._fill(doing)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def _decrypt(self, max_bytes: int) -> bytes | None:
        """Up to *max_bytes* from the records already received; None when there is not one
        whole record yet, ``b""`` at the end of the stream.

        An error or the end of the stream after some data is left for the next call to
        report, once the data decrypted so far is delivered.
        """
        if self._ended:
            return b""
        parts: list[bytes] = []
        total = 0
        while total < max_bytes:
            try:
                data = self._ssl.read(min(max_bytes - total, _RECORD_SIZE))
            except ssl.SSLWantReadError:
                break
            except OSError as exc:  # ssl.SSLError included
                if parts:
                    break
                return self._end_or_fail(exc)
            if not data:  # close_notify: the stdlib returns b"" rather than raise
                self._ended = not parts
                break
            parts.append(data)
            total += len(data)
        if not parts:
            return b"" if self._ended else None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _end_or_fail(self, exc: OSError) -> bytes:
        """``b""`` for close_notify (or an allowed ragged EOF); otherwise the stream breaks."""
        if isinstance(exc, ssl.SSLZeroReturnError) or (
            isinstance(exc, ssl.SSLEOFError) and self._allow_ragged_eof
        ):
            self._ended = True
            return b""
        doing = "TLS receive failed"
        if self._reset and isinstance(exc, ssl.SSLEOFError):
            doing = "TLS receive failed, the peer reset the connection"
        raise self._fail(exc, doing) from exc

    # --- the socket -----------------------------------------------------------------------

    async def _fill(self, doing: str) -> None:
        """Move what the kernel has received into the incoming BIO, waiting until it has
        something. Nothing is awaited between ``recv_into`` and the BIO, so a cancellation
        loses no byte."""
        buffer = _scratch.ciphertext
        while True:
            try:
                received = self._sock.recv_into(buffer)
            except BlockingIOError:
                await self._wait_readable()
                self._check_status()
                continue
            except ConnectionResetError:
                # The end of the data, as OpenSSL on a socket takes it too: a peer that
                # closes with our bytes unread (a session ticket will do) resets rather
                # than sending FIN, and what it sent before is still to be read.
                self._reset = True
                received = 0
            except OSError as exc:
                raise self._fail(exc, doing) from exc
            break
        if received:
            self._incoming.write(buffer[:received])
        else:  # OpenSSL tells close_notify from a truncation
            self._incoming.write_eof()

    async def _flush(self, doing: str, *, closing: bool = False) -> None:
        """Send everything OpenSSL has written, in order, in as few ``send()`` calls as the
        kernel allows. If another task is sending, let it carry these bytes too."""
        while (flushing := self._flushing) is not None:
            await flushing.wait()
            if not closing:
                self._check_status()
        if not self._unsent and not self._outgoing.pending:
            return
        self._flushing = trio.Event()
        try:
            while True:
                if not self._unsent:
                    if not self._outgoing.pending:
                        return
                    self._unsent = memoryview(self._outgoing.read())
                try:
                    sent = self._sock.send(self._unsent)
                except BlockingIOError:
                    await self._wait_writable()
                    if not closing:
                        self._check_status()
                    continue
                except OSError as exc:
                    raise self._fail(exc, doing) from exc
                self._unsent = self._unsent[sent:]
        finally:
            self._flushing.set()
            self._flushing = None

    def _flush_nowait(self) -> None:
        """Send what the kernel takes now, without waiting: the alert after a failed
        handshake, which a peer should read rather than a bare reset. A few dozen bytes
        on a connection that has carried only handshake messages, so room is all but
        certain; a peer that is already gone has nothing to learn."""
        if self._flushing is not None:  # the task that is sending will send it
            return
        try:
            while self._unsent or self._outgoing.pending:
                if not self._unsent:
                    self._unsent = memoryview(self._outgoing.read())
                self._unsent = self._unsent[self._sock.send(self._unsent) :]
        except OSError:  # BlockingIOError included
            pass

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

    # --- ending ---------------------------------------------------------------------------

    def detach_transport(self) -> trio.SocketStream:
        """Hand back the TCP connection without TLS, closing this stream.

        For a server refusing a client whose handshake failed: the alert that says why has
        already been sent (what the kernel would not take yet is sent now, as far as it
        goes), and the caller can still half-close and drain the TCP connection so the peer
        reads that alert rather than a reset.
        """
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this TLS stream was closed")
        self._flush_nowait()
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
            self._discard_received()
            self._sock.close()
        await trio.lowlevel.checkpoint()

    def _discard_received(self) -> None:
        """Read and drop what the peer sent that nobody will read, without waiting.

        The kernel answers the close of a socket with unread data (a session ticket the
        client never asked for is enough) with a reset, which also throws away whatever of
        ours the peer has not received yet: the end of a large send, close_notify. OpenSSL
        on a socket read these while it looked for the peer's close_notify; here they are
        in the kernel, not in the BIO.
        """
        buffer = _scratch.ciphertext
        try:
            for _ in range(_DISCARD_READS):
                if not self._sock.recv_into(buffer):
                    return
        except OSError:  # BlockingIOError: nothing more; anything else: nothing to save
            pass

    async def _send_close_notify(self) -> None:
        if self._flushing is not None:
            # A send is stuck mid-record on a full socket: close_notify cannot go out before
            # the rest of it, and closing is not worth waiting for a peer that does not read.
            return
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is written; OpenSSL wants the peer's, which we do not wait for
        except (OSError, ValueError):
            return  # the connection already failed: nothing to tell the peer
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._flush("sending close_notify failed", closing=True)  # or the peer is gone
