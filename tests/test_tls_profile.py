"""Tether's TLS contexts hold to Mozilla's "intermediate" profile, client by client.

The scanner test (plugins/tether-ssh/tests/test_scanners.py) runs sslyze against a live proxy;
these drive one handshake at a time in memory, with a stock ``ssl`` client that offers only
what an old or a downgrading client would.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tether.pki import (
    ClusterAuthorities,
    Identity,
    PrivateKey,
    client_ssl_context,
    generate_private_key,
    issue_x509_cert,
    server_ssl_context,
)
from tether.testing.cluster import start_cluster


def _server_context(cas: ClusterAuthorities) -> ssl.SSLContext:
    return server_ssl_context(*_proxy_certificate(cas))


def _proxy_certificate(cas: ClusterAuthorities) -> tuple[x509.Certificate, PrivateKey]:
    key = generate_private_key("ecdsa-p256")
    proxy = Identity(
        username="proxy-1",
        cluster=cas.cluster,
        kind="proxy",
        roles=[],
        traits={},
        logins=[],
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
    )
    cert = issue_x509_cert(cas.tls, key.public_key(), proxy, dns_names=["localhost"], server=True)
    return cert, key


def _stock_client(
    *, group: str | None = None, ciphers: str | None = None, tls12: bool = False
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if group is not None:
        ctx.set_ecdh_curve(group)  # offers this one group only
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> ssl.SSLObject:
    """Run a handshake through memory; returns the client's end, raises ``ssl.SSLError``."""
    pipes = [ssl.MemoryBIO() for _ in range(4)]
    server = server_ctx.wrap_bio(pipes[0], pipes[1], server_side=True)
    client = client_ctx.wrap_bio(pipes[2], pipes[3], server_hostname="localhost")
    done = {server: False, client: False}
    for _ in range(20):
        for end in (client, server):
            if not done[end]:
                try:
                    end.do_handshake()
                    done[end] = True
                except ssl.SSLWantReadError:
                    pass
        pipes[0].write(pipes[3].read())  # client -> server
        pipes[2].write(pipes[1].read())  # server -> client
        if all(done.values()):
            return client
    raise AssertionError("the handshake did not finish")


@pytest.fixture(scope="module")
def server() -> ssl.SSLContext:
    return _server_context(ClusterAuthorities.generate("main"))


@pytest.mark.parametrize("group", ["X25519", "prime256v1", "secp384r1"])
def test_a_client_with_one_of_the_profiles_groups_connects(
    server: ssl.SSLContext, group: str
) -> None:
    assert _handshake(server, _stock_client(group=group)).version() == "TLSv1.3"


@pytest.mark.parametrize("group", ["X448", "secp521r1"])
def test_a_client_offering_only_x448_or_p521_is_refused(server: ssl.SSLContext, group: str) -> None:
    with pytest.raises(ssl.SSLError):
        _handshake(server, _stock_client(group=group))


def test_two_tether_ends_agree_on_aes_128_gcm_the_profiles_first_tls13_suite() -> None:
    cas = ClusterAuthorities.generate("main")
    cert, key = _proxy_certificate(cas)
    # mutual TLS, as a tunnel runs it: both contexts are Tether's
    server = server_ssl_context(cert, key, client_cas=[cas.tls], client_auth="required")
    client = client_ssl_context(trusted_cas=[cas.tls], cert=cert, key=key)
    assert _handshake(server, client).cipher() == ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128)


def test_a_stock_client_preferring_aes_256_gets_the_servers_aes_128(server: ssl.SSLContext) -> None:
    # OpenSSL's default TLS 1.3 order, which a stock ``ssl`` client offers, puts AES-256 first;
    # the server picks by its own order
    stock = _stock_client()
    assert stock.get_ciphers()[0]["name"] == "TLS_AES_256_GCM_SHA384"
    assert _handshake(server, stock).cipher() == ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128)


def test_a_tls12_client_offering_only_cbc_suites_is_refused(server: ssl.SSLContext) -> None:
    cbc = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA"
    with pytest.raises(ssl.SSLError):
        _handshake(server, _stock_client(tls12=True, ciphers=cbc))
    gcm = _handshake(server, _stock_client(tls12=True, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    assert gcm.cipher() == ("ECDHE-ECDSA-AES128-GCM-SHA256", "TLSv1.2", 128)


def test_a_new_cluster_signs_web_certificates_with_p256_and_ssh_with_ed25519(
    tmp_path: pathlib.Path,
) -> None:
    cas = ClusterAuthorities.load_or_create(tmp_path / "keys", "main")
    tls_key = cas.tls.certificate.public_key()
    assert isinstance(tls_key, ec.EllipticCurvePublicKey)
    assert isinstance(tls_key.curve, ec.SECP256R1)
    assert isinstance(cas.ssh_user.public_key, ed25519.Ed25519PublicKey)
    assert isinstance(cas.ssh_host.public_key, ed25519.Ed25519PublicKey)
    manifest = json.loads((tmp_path / "keys" / "manifest.json").read_text())
    assert (manifest["algorithm"], manifest["tls_algorithm"]) == ("ed25519", "ecdsa-p256")


def test_a_cluster_whose_x509_ca_is_ed25519_warns_that_browsers_refuse_its_proxy(
    tmp_path: pathlib.Path,
) -> None:
    cluster = start_cluster(
        tmp_path / "old", "old", config={"auth_service": {"tls_ca_algorithm": "ed25519"}}
    )
    try:
        assert "which browsers refuse; set proxy_service.https_cert_file" in cluster.log_text()
    finally:
        cluster.stop()
