"""The kernel's TLS stream behaves like a trio stream, on real sockets with real certificates."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import random
import select
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tether.asgi import PEER_CERT_STATE, ASGIHandler
from tether.pki import (
    ClusterAuthorities,
    Identity,
    PrivateKey,
    client_ssl_context,
    generate_private_key,
    identity_from_peer,
    issue_x509_cert,
    server_ssl_context,
)
from tether.tlsstream import TLSStream, detach_socket

ALPN = ("tether-tunnel/1", "http/1.1")


def identity(cluster: str, username: str, kind: str = "user") -> Identity:
    return Identity(
        username=username,
        cluster=cluster,
        kind=kind,
        roles=("access",),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
    )


@dataclass(frozen=True)
class Certs:
    """A cluster CA, a server certificate for localhost, and a user certificate."""

    cas: ClusterAuthorities
    server_cert: x509.Certificate
    server_key: PrivateKey
    user: Identity
    user_cert: x509.Certificate
    user_key: PrivateKey

    def server(self, *, client_auth: str = "required") -> ssl.SSLContext:
        return server_ssl_context(
            self.server_cert,
            self.server_key,
            client_cas=[self.cas.tls],
            client_auth=client_auth,
            alpn=ALPN,
        )

    def client(
        self, *, trusting: ClusterAuthorities | None = None, alpn: tuple[str, ...] = ALPN
    ) -> ssl.SSLContext:
        return client_ssl_context(
            trusted_cas=[(trusting or self.cas).tls],
            cert=self.user_cert,
            key=self.user_key,
            alpn=alpn,
        )


def make_certs(cluster: str) -> Certs:
    cas = ClusterAuthorities.generate(cluster)
    server_key, user_key = generate_private_key(), generate_private_key()
    server_cert = issue_x509_cert(
        cas.tls,
        server_key.public_key(),
        identity(cluster, "proxy-1", kind="proxy"),
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
        server=True,
    )
    user = identity(cluster, "alice")
    user_cert = issue_x509_cert(cas.tls, user_key.public_key(), user)
    return Certs(cas, server_cert, server_key, user, user_cert, user_key)


@pytest.fixture(scope="module")
def root() -> Certs:
    return make_certs("root")


@pytest.fixture(scope="module")
def foreign() -> Certs:
    return make_certs("elsewhere")


async def handshake_both(server: TLSStream, client: TLSStream) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)


async def socketpair_streams(certs: Certs) -> tuple[TLSStream, TLSStream]:
    """A handshaken (client, server) pair over a Unix socket pair."""
    a, b = socket.socketpair()
    server = TLSStream.wrap_server(a, certs.server())
    client = TLSStream.wrap_client(b, certs.client(), server_hostname="localhost")
    await handshake_both(server, client)
    return client, server


@contextlib.asynccontextmanager
async def listening() -> AsyncIterator[tuple[trio.SocketListener, int]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        yield listeners[0], listeners[0].socket.getsockname()[1]
    finally:
        await listeners[0].aclose()


async def tcp_streams(
    certs: Certs, client_ctx: ssl.SSLContext | None = None, *, allow_ragged_eof: bool = False
) -> tuple[TLSStream, TLSStream]:
    """A handshaken (client, server) pair over TCP on 127.0.0.1, dialled with connect()."""
    server: TLSStream | None = None

    async def accept(listener: trio.SocketListener) -> None:
        nonlocal server
        raw = await listener.accept()
        server = TLSStream.wrap_server(
            detach_socket(raw), certs.server(), allow_ragged_eof=allow_ragged_eof
        )
        await server.do_handshake()

    async with listening() as (listener, port):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept, listener)
                client = await TLSStream.connect(
                    "127.0.0.1", port, client_ctx or certs.client(), server_hostname="localhost"
                )
    assert server is not None
    return client, server


@contextlib.asynccontextmanager
async def closing(*streams: TLSStream) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)


def clog(stream: TLSStream) -> None:
    """Fill the socket until the kernel will take no more, in whole TLS records.

    Writes small records while poll() reports plenty of room (so no write is ever half done),
    then shrinks the send buffer below what is queued: every further send blocks until the
    peer has read nearly everything.
    """
    sock = stream.socket
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    while poller.poll(0):
        sock.send(b"c" * 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)


def vanish(stream: TLSStream) -> None:
    """Drop the connection with a TCP reset: no close_notify, no FIN."""
    raw = stream.detach_transport()
    raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.socket.close()


# --- the generic stream contract -------------------------------------------------------------


async def test_tls_stream_passes_trios_generic_two_way_stream_checks(root: Certs) -> None:
    async def maker() -> tuple[TLSStream, TLSStream]:
        return await socketpair_streams(root)

    async def clogged_maker() -> tuple[TLSStream, TLSStream]:
        client, server = await socketpair_streams(root)
        clog(client)
        clog(server)
        return client, server

    await trio.testing.check_two_way_stream(maker, clogged_maker)


# --- handshake --------------------------------------------------------------------------------


async def test_client_dials_and_both_sides_agree_on_alpn_and_identities(root: Certs) -> None:
    client, server = await tcp_streams(root, root.client(alpn=("tether-tunnel/1",)))
    async with closing(client, server):
        assert client.selected_alpn_protocol() == "tether-tunnel/1"
        assert server.selected_alpn_protocol() == "tether-tunnel/1"
        assert identity_from_peer(server, [root.cas.tls]) == root.user
        subject = dict(rdn[0] for rdn in client.getpeercert()["subject"])
        assert subject["commonName"] == "proxy-1"
        assert client.version() in ("TLSv1.2", "TLSv1.3")
        # what hypercorn reads from a trio.SSLStream
        peer = server.transport_stream.socket.getpeername()
        assert peer == client.socket.getsockname()
        assert server.transport_stream.socket.family == socket.AF_INET
        await server.do_handshake()  # idempotent
        await client.send_all(b"hello")
        assert await server.receive_some() == b"hello"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_server_refuses_a_foreign_client_certificate_and_the_client_learns_why(
    root: Certs, foreign: Certs, version: ssl.TLSVersion
) -> None:
    context = foreign.client(trusting=root.cas)
    context.maximum_version = version
    refusals: list[trio.BrokenResourceError] = []
    client_errors: list[trio.BrokenResourceError] = []

    async def serve(listener: trio.SocketListener) -> None:
        server = TLSStream.wrap_server(detach_socket(await listener.accept()), root.server())
        try:
            await server.do_handshake()
        except trio.BrokenResourceError as exc:
            refusals.append(exc)
        await server.aclose()

    async def dial(port: int) -> None:
        try:
            # TLS 1.3: the client's handshake completes before the server judges its
            # certificate, so the alert arrives on the first read
            client = await TLSStream.connect(
                "127.0.0.1", port, context, server_hostname="localhost"
            )
            async with client:
                await client.receive_some()
        except trio.BrokenResourceError as exc:
            client_errors.append(exc)

    async with listening() as (listener, port):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, listener)
                nursery.start_soon(dial, port)
    [refusal] = refusals
    assert isinstance(refusal.__cause__, ssl.SSLError)
    assert "TLS handshake failed" in str(refusal)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refusal)
    [client_error] = client_errors
    assert "UNKNOWN_CA" in str(client_error.__cause__)


async def test_a_client_that_does_not_trust_the_server_fails_to_connect_with_the_reason(
    root: Certs, foreign: Certs
) -> None:
    async def serve(listener: trio.SocketListener) -> None:
        server = TLSStream.wrap_server(detach_socket(await listener.accept()), root.server())
        with contextlib.suppress(trio.BrokenResourceError):
            await server.do_handshake()
        await server.aclose()

    async with listening() as (listener, port):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, listener)
                with pytest.raises(trio.BrokenResourceError, match="CERTIFICATE_VERIFY_FAILED"):
                    await TLSStream.connect(
                        "127.0.0.1",
                        port,
                        root.client(trusting=foreign.cas),
                        server_hostname="localhost",
                    )


async def test_a_silent_client_times_out_in_the_handshake_and_closes_cleanly(root: Certs) -> None:
    a, b = socket.socketpair()
    server = TLSStream.wrap_server(a, root.server())
    with b:
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(0.2):
                await server.do_handshake()
        await server.aclose()
        assert b.recv(100) == b""  # no close_notify for a handshake that never happened
    with pytest.raises(trio.ClosedResourceError):
        await server.do_handshake()


# --- peers that go away ---------------------------------------------------------------------


async def test_a_peer_vanishing_mid_transfer_breaks_the_sender_instead_of_hanging(
    root: Certs,
) -> None:
    client, server = await tcp_streams(root)
    async with closing(client, server):

        async def stream_forever() -> None:
            with pytest.raises(trio.BrokenResourceError) as info:
                while True:
                    await server.send_all(b"x" * 65536)
            assert isinstance(info.value.__cause__, OSError)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_forever)
                assert await client.receive_some()
                await trio.testing.wait_all_tasks_blocked()
                vanish(client)
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()


async def test_a_peer_vanishing_breaks_a_waiting_receiver(root: Certs) -> None:
    client, server = await tcp_streams(root)
    async with closing(client, server):
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    with pytest.raises(trio.BrokenResourceError):
                        await server.receive_some()

                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                vanish(client)


@pytest.mark.parametrize("allow_ragged_eof", [False, True])
async def test_a_peer_closing_tcp_without_close_notify_is_a_truncation_unless_allowed(
    root: Certs, allow_ragged_eof: bool
) -> None:
    client, server = await tcp_streams(root, allow_ragged_eof=allow_ragged_eof)
    async with closing(client, server):
        await client.send_all(b"last words")
        await client.detach_transport().aclose()  # FIN without close_notify
        with trio.fail_after(5):
            assert await server.receive_some() == b"last words"
            if allow_ragged_eof:
                assert await server.receive_some() == b""
            else:
                with pytest.raises(trio.BrokenResourceError, match="EOF"):
                    await server.receive_some()


async def test_aclose_sends_close_notify_so_the_peer_sees_a_clean_end(root: Certs) -> None:
    client, server = await tcp_streams(root)
    async with closing(client, server):
        await client.send_all(b"bye")
        await client.aclose()
        with trio.fail_after(5):
            assert await server.receive_some() == b"bye"
            assert await server.receive_some() == b""
            assert await server.receive_some() == b""  # and it stays ended


# --- cancellation -----------------------------------------------------------------------------


async def test_cancelled_receives_lose_no_data(root: Certs) -> None:
    client, server = await tcp_streams(root)
    rng = random.Random(7)
    pieces = [rng.randbytes(rng.randrange(1, 3000)) for _ in range(300)]
    expected = b"".join(pieces)
    received = bytearray()
    cancelled = 0
    async with closing(client, server):

        async def send() -> None:
            for piece in pieces:
                await client.send_all(piece)
                await trio.sleep(rng.choice((0, 0, 0.001)))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while len(received) < len(expected):
                    with trio.move_on_after(0.0003) as scope:
                        received += await server.receive_some(rng.randrange(1, 5000))
                    cancelled += scope.cancelled_caught
    assert bytes(received) == expected
    assert cancelled > 10, "the test never cancelled a receive"


async def test_receive_returns_what_openssl_buffered_without_waiting_for_the_socket(
    root: Certs,
) -> None:
    client, server = await socketpair_streams(root)
    async with closing(client, server):
        await client.send_all(b"abc")
        with trio.fail_after(2):
            assert await server.receive_some(1) == b"a"
            assert server.socket.pending() == 2  # decrypted, no longer in the socket
            assert await server.receive_some(1) == b"b"
            assert await server.receive_some(1) == b"c"


async def test_an_idle_stream_takes_each_small_message_in_one_openssl_read(root: Certs) -> None:
    """A tunnel's heartbeat: a small message on a stream that waits between them. Asking
    OpenSSL before the socket has anything, or again after the message, costs a raised
    SSLWantReadError each (a root with thousands of tunnels paid two per heartbeat); a
    drained stream waits for the socket first and sees that it is empty without asking."""
    client, server = await tcp_streams(root)
    reads: list[str] = []
    recv = server.socket.recv

    def counted(size: int) -> bytes:
        try:
            data = recv(size)
        except ssl.SSLWantReadError:
            reads.append("want-read")
            raise
        reads.append("data")
        return data

    server.socket.recv = counted  # type: ignore[method-assign]
    async with closing(client, server):
        with trio.fail_after(10):
            await client.send_all(b"first")
            assert await server.receive_some() == b"first"
            reads.clear()  # the stream learns here that it is drained
            for i in range(5):
                await client.send_all(b"heartbeat %d" % i)
                assert await server.receive_some() == b"heartbeat %d" % i
            await client.send_all(b"a" * 40_000)  # more than one record: every one is read
            received = b""
            while len(received) < 40_000:
                received += await server.receive_some()
    assert received == b"a" * 40_000
    assert reads[:5] == ["data"] * 5


async def test_a_send_cancelled_midway_breaks_the_stream_and_says_so(root: Certs) -> None:
    client, server = await socketpair_streams(root)
    async with closing(client, server):
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.send_all(b"never started")  # cancelled before any byte: harmless
        await client.send_all(b"ok")
        assert await server.receive_some() == b"ok"

        with trio.move_on_after(0.2) as scope:
            await client.send_all(b"x" * (64 * 1024 * 1024))  # the peer is not reading
        assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError, match="broken by an earlier error"):
            await client.send_all(b"more")
        with pytest.raises(trio.BrokenResourceError):
            await client.receive_some()
        await client.aclose()  # still closes
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"more")


async def pump(source: socket.socket, sink: socket.socket) -> None:
    """Carry bytes one way between two blocking sockets until cancelled; nothing is lost on
    cancellation, since nothing is awaited between reading a chunk and writing it on."""
    while True:
        await trio.lowlevel.wait_readable(source)
        sink.sendall(source.recv(65536))


@contextlib.asynccontextmanager
async def hand_carried(
    certs: Certs,
) -> AsyncIterator[tuple[TLSStream, TLSStream, socket.socket, socket.socket]]:
    """A handshaken (client, server) pair whose client-to-server bytes the test carries by
    hand after the handshake, so it decides where the record stream is split: it reads what
    the client sent from the first socket and writes it to the second, for the server."""
    client_sock, sent = socket.socketpair()
    feed, server_sock = socket.socketpair()
    client = TLSStream.wrap_client(client_sock, certs.client(), server_hostname="localhost")
    server = TLSStream.wrap_server(server_sock, certs.server())
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, sent, feed)
            nursery.start_soon(pump, feed, sent)
            await handshake_both(server, client)
            nursery.cancel_scope.cancel()
        yield client, server, sent, feed
    finally:
        sent.close()
        feed.close()
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)


async def test_a_receive_cancelled_with_half_a_record_buffered_loses_none_of_it(
    root: Certs,
) -> None:
    async with hand_carried(root) as (client, server, sent, feed):
        payload = os.urandom(40_000)  # three records: 16 KiB, 16 KiB, the rest
        await client.send_all(payload)
        wire = b""
        while len(wire) < len(payload) + 3 * 22:  # TLS 1.3: 22 bytes of overhead a record
            wire += sent.recv(1 << 20)
        first_record = 16_384 + 22
        with trio.fail_after(5):
            feed.sendall(wire[: first_record + 5_000])  # the second record cut short
            received = await server.receive_some()
            assert received == payload[:16_384]
            feed.sendall(wire[first_record + 5_000 : first_record + 9_000])  # still short
            with trio.move_on_after(0.2) as scope:
                await server.receive_some()  # reads those bytes, then must wait for more
            assert scope.cancelled_caught
            feed.sendall(wire[first_record + 9_000 :])
            while len(received) < len(payload):
                received += await server.receive_some()
    assert received == payload


# --- efficiency and volume -------------------------------------------------------------------


async def test_blocked_receive_and_send_use_no_cpu(root: Certs) -> None:
    client, server = await tcp_streams(root)
    async with closing(client, server):
        before = time.process_time()
        with trio.move_on_after(0.5):
            await server.receive_some()
        assert time.process_time() - before < 0.05

        # the peer does not read: the send fills the socket buffers, then must sleep
        payload = b"y" * (64 * 1024 * 1024)
        before = time.process_time()
        with trio.move_on_after(0.5):
            await client.send_all(payload)
        assert time.process_time() - before < 0.05


async def test_64_mib_round_trip_arrives_intact(root: Certs) -> None:
    client, server = await tcp_streams(root)
    payload = os.urandom(64 * 1024 * 1024)
    echoed = hashlib.sha256()
    async with closing(client, server):

        async def echo() -> None:
            while data := await server.receive_some():
                await server.send_all(data)
            await server.aclose()

        async def send() -> None:
            view = memoryview(payload)
            for start in range(0, len(view), 4 * 1024 * 1024):
                await client.send_all(view[start : start + 4 * 1024 * 1024])

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo)
                nursery.start_soon(send)
                total = 0
                while total < len(payload):
                    data = await client.receive_some()
                    echoed.update(data)
                    total += len(data)
                await client.aclose()  # the echo sees the end and stops
    assert total == len(payload)
    assert echoed.digest() == hashlib.sha256(payload).digest()


async def test_one_large_send_crosses_many_records_and_chunks_and_arrives_intact(
    root: Certs,
) -> None:
    client, server = await tcp_streams(root)
    # not a multiple of a record or of a chunk, and not a bytes object
    payload = bytearray(os.urandom(3 * 1024 * 1024 + 12_345))
    received = bytearray()
    async with closing(client, server):

        async def send() -> None:
            await client.send_all(payload)
            await client.aclose()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while data := await server.receive_some():
                    received += data
    assert received == payload


async def test_close_notify_follows_a_send_that_had_to_wait_for_the_peer(root: Certs) -> None:
    """Everything sent before aclose arrives, then a clean end, though the peer was slow."""
    client, server = await tcp_streams(root)
    payload = os.urandom(8 * 1024 * 1024)
    received = bytearray()
    async with closing(client, server):

        async def send() -> None:
            await client.send_all(payload)
            await client.aclose()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await trio.testing.wait_all_tasks_blocked()  # the socket buffers are full
                while data := await server.receive_some(1000):
                    received += data
                    await trio.lowlevel.checkpoint()
    assert received == payload


async def test_a_vanished_peer_is_reported_by_what_the_stream_was_doing(root: Certs) -> None:
    client, server = await tcp_streams(root)
    async with closing(client, server):
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    with pytest.raises(trio.BrokenResourceError, match="TLS receive failed"):
                        await server.receive_some()

                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                vanish(client)

    client, server = await tcp_streams(root)
    async with closing(client, server):
        with trio.fail_after(5):
            await server.send_all(b"hello")
            assert await client.receive_some() == b"hello"
            vanish(client)
            with pytest.raises(trio.BrokenResourceError, match="TLS send failed"):
                while True:
                    await server.send_all(b"x" * 65536)


# --- hypercorn on top ------------------------------------------------------------------------


async def test_hypercorn_serves_http_over_the_stream_and_sees_the_client_certificate(
    root: Certs,
) -> None:
    """ASGIHandler duck-types the stream as a trio.SSLStream; no send_eof means "TLS"."""
    assert not hasattr(TLSStream, "send_eof")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        der = scope["state"][PEER_CERT_STATE]
        body = f"{scope['client'][0]} {hashlib.sha256(der).hexdigest()}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    client, server = await tcp_streams(root, root.client(alpn=("http/1.1",)))
    async with closing(client, server):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ASGIHandler(app), server)
                await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                response = b""
                while chunk := await client.receive_some():
                    response += chunk
    fingerprint = hashlib.sha256(root.user_cert.public_bytes(Encoding.DER)).hexdigest()
    assert response.startswith(b"HTTP/1.1 200")
    assert f"\r\n127.0.0.1 {fingerprint}\r\n".encode() in response
