"""A client context with ``peer_kinds`` accepts a server only by the kind of its identity.

Every host certificate of a cluster names ``localhost`` and the loopback addresses, so the
chain and the host name cannot tell a node from the proxy; these check the kind, through both
TLS stacks the kernel drives (its own :class:`~tether.tlsstream.TLSStream` and httpx's).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.x509.oid import NameOID

from tether import pki
from tether.errors import TrustError
from tether.httpclient import request_json
from tether.tlsserver import serve_tls
from tether.tlsstream import TLSStream

HOUR = datetime.timedelta(hours=1)


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> pki.ClusterAuthorities:
    return pki.ClusterAuthorities.load_or_create(tmp_path_factory.mktemp("keys"), "main")


def host_cert(cas: pki.ClusterAuthorities, kind: str) -> tuple[x509.Certificate, pki.PrivateKey]:
    key = pki.generate_private_key()
    identity = pki.Identity(
        username=f"{kind}-1",
        cluster="main",
        roles=(),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + HOUR,
        kind=kind,
    )
    cert = pki.issue_x509_cert(
        cas.tls, key.public_key(), identity, ip_addresses=["127.0.0.1"], server=True
    )
    return cert, key


def plain_cert(cas: pki.ClusterAuthorities) -> tuple[x509.Certificate, pki.PrivateKey]:
    """A server certificate the cluster's CA signed with no Tether identity in it."""
    key = pki.generate_private_key()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(cas.tls.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - HOUR)
        .not_valid_after(now + HOUR)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(cas.tls.private_key, pki.signing_hash(cas.tls.private_key))
    )
    return cert, key


async def _answer(stream: trio.abc.Stream) -> None:
    try:
        await stream.receive_some()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        )
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # a client that refused the certificate has gone


async def _serving(nursery: trio.Nursery, cert: x509.Certificate, key: pki.PrivateKey) -> int:
    context = pki.server_ssl_context(cert, key, alpn=["http/1.1"])
    listeners = await nursery.start(serve_tls, "127.0.0.1", 0, context, {"http/1.1": _answer})
    port: int = listeners[0].socket.getsockname()[1]
    return port


def _client(cas: pki.ClusterAuthorities, kinds: tuple[str, ...]) -> ssl.SSLContext:
    return pki.client_ssl_context(
        trusted_cas=[cas.tls.certificate], alpn=["http/1.1"], peer_kinds=kinds
    )


@pytest.mark.parametrize(
    ("kind", "kinds", "accepted"),
    [
        ("proxy", ("proxy",), True),
        ("node", ("proxy",), False),
        ("user", ("proxy",), False),
        ("auth", ("proxy", "auth"), True),
        ("node", ("proxy", "auth"), False),
    ],
)
async def test_server_is_accepted_by_the_kind_of_its_certificate(
    cas: pki.ClusterAuthorities, kind: str, kinds: tuple[str, ...], accepted: bool
) -> None:
    async with trio.open_nursery() as nursery:
        port = await _serving(nursery, *host_cert(cas, kind))
        context = _client(cas, kinds)
        if accepted:
            stream = await TLSStream.connect(
                "127.0.0.1", port, context, server_hostname="127.0.0.1"
            )
            await stream.aclose()
            async with httpx.AsyncClient(
                base_url=f"https://127.0.0.1:{port}", verify=context
            ) as http:
                assert await request_json(http, "GET", "/", untrusted_hint="") == {}
        else:
            with pytest.raises(trio.BrokenResourceError) as broken:
                await TLSStream.connect("127.0.0.1", port, context, server_hostname="127.0.0.1")
            assert isinstance(broken.value.__cause__, pki.UnexpectedPeerKind)
            assert f"certificate of {kind} '{kind}-1' of cluster 'main'" in str(broken.value)
            async with httpx.AsyncClient(
                base_url=f"https://127.0.0.1:{port}", verify=context
            ) as http:
                with pytest.raises(TrustError, match="is not the server this connection expects"):
                    await request_json(http, "GET", "/", untrusted_hint="")
        nursery.cancel_scope.cancel()


async def test_a_certificate_without_an_identity_is_refused_where_a_kind_is_expected(
    cas: pki.ClusterAuthorities,
) -> None:
    async with trio.open_nursery() as nursery:
        port = await _serving(nursery, *plain_cert(cas))
        with pytest.raises(trio.BrokenResourceError, match="without a Tether identity"):
            await TLSStream.connect(
                "127.0.0.1", port, _client(cas, ("proxy",)), server_hostname="127.0.0.1"
            )
        nursery.cancel_scope.cancel()


def test_peer_kinds_needs_the_clusters_cas_and_verification() -> None:
    with pytest.raises(ValueError, match="peer_kinds needs trusted_cas"):
        pki.client_ssl_context(trusted_cas=None, peer_kinds=("proxy",))
    with pytest.raises(ValueError, match="peer_kinds needs trusted_cas"):
        pki.client_ssl_context(trusted_cas=None, insecure=True, peer_kinds=("proxy",))
