"""Certificate authorities and certificates, checked against the real ssh-keygen and openssl."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import inspect
import json
import os
import pathlib
import stat
import subprocess
from collections.abc import Callable

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import tether.pki
from tether.errors import TrustError
from tether.pki import (
    SSH_IDENTITY_EXTENSION,
    TETHER_IDENTITY_OID,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateTampered,
    ClusterAuthorities,
    Identity,
    MalformedCertificate,
    PrincipalNotAllowed,
    PrivateKey,
    SSHCertAuthority,
    UnknownAuthority,
    X509CertAuthority,
    ca_pin,
    cert_to_pem,
    check_ca_pin,
    client_ssl_context,
    generate_private_key,
    identity_from_peer,
    issue_ssh_host_cert,
    issue_ssh_user_cert,
    issue_x509_cert,
    load_private_key,
    private_key_to_openssh,
    private_key_to_pem,
    server_ssl_context,
    ssh_public_key_line,
    verify_ssh_host_cert,
    verify_ssh_user_cert,
    verify_x509_cert,
    write_secret_file,
)

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)


def make_identity(cluster: str = "root", /, **changes: object) -> Identity:
    fields: dict[str, object] = {
        "username": "alice",
        "cluster": cluster,
        "roles": ("access",),
        "traits": {"logins": ["visitor", "root"]},
        "logins": ("visitor", "root"),
        "expires": NOW + 8 * HOUR,
    }
    fields.update(changes)
    return Identity(**fields)  # type: ignore[arg-type]


def live_identity(cluster: str = "root", /, **changes: object) -> Identity:
    """An identity valid now by the real clock, for certs that real tools and TLS check."""
    expires = datetime.datetime.now(datetime.UTC) + 8 * HOUR
    return make_identity(cluster, **{"expires": expires, **changes})


@pytest.fixture(scope="module")
def root() -> ClusterAuthorities:
    return ClusterAuthorities.generate("root")


@pytest.fixture(scope="module")
def leaf() -> ClusterAuthorities:
    return ClusterAuthorities.generate("leaf")


@pytest.fixture(scope="module")
def user_key() -> PrivateKey:
    return generate_private_key()


def run(*argv: str, input: bytes | None = None) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, check=True, timeout=30)
    return done.stdout.decode()


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text
    return text


# --- CAs on disk -----------------------------------------------------------------------------


def test_first_start_creates_cas_with_private_permissions(tmp_path: pathlib.Path) -> None:
    keys_dir = tmp_path / "data" / "keys"
    ClusterAuthorities.load_or_create(keys_dir, "root")
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    files = sorted(p.name for p in keys_dir.iterdir())
    assert files == ["manifest.json", "ssh_host_ca", "ssh_user_ca", "tls_ca.crt", "tls_ca.key"]
    for path in keys_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_restart_loads_the_same_cas(tmp_path: pathlib.Path) -> None:
    first = ClusterAuthorities.load_or_create(tmp_path / "keys", "root")
    again = ClusterAuthorities.load_or_create(tmp_path / "keys", "root", algorithm="ecdsa-p256")
    assert again.ssh_user.public_key_line() == first.ssh_user.public_key_line()
    assert again.ssh_host.public_key_line() == first.ssh_host.public_key_line()
    assert again.tls.certificate == first.tls.certificate
    assert again.tls.pin() == first.tls.pin()
    assert first.ssh_user.public_key_line() != first.ssh_host.public_key_line()


@pytest.mark.parametrize("target", ["dir", "tls_ca.key", "ssh_user_ca"])
def test_keys_others_can_read_are_refused(tmp_path: pathlib.Path, target: str) -> None:
    keys_dir = tmp_path / "keys"
    ClusterAuthorities.load_or_create(keys_dir, "root")
    path = keys_dir if target == "dir" else keys_dir / target
    path.chmod(0o755 if target == "dir" else 0o644)
    with pytest.raises(TrustError, match="too open") as caught:
        ClusterAuthorities.load_or_create(keys_dir, "root")
    assert "chmod" in one_line(caught.value)


def test_keys_of_another_cluster_are_refused(tmp_path: pathlib.Path) -> None:
    ClusterAuthorities.load_or_create(tmp_path / "keys", "root")
    with pytest.raises(TrustError, match="belong to cluster 'root', not 'leaf'"):
        ClusterAuthorities.load_or_create(tmp_path / "keys", "leaf")


def test_half_written_keys_dir_is_refused_not_regenerated(tmp_path: pathlib.Path) -> None:
    ClusterAuthorities.load_or_create(tmp_path / "keys", "root")
    (tmp_path / "keys" / "ssh_host_ca").unlink()
    with pytest.raises(TrustError, match="incomplete: ssh_host_ca missing"):
        ClusterAuthorities.load_or_create(tmp_path / "keys", "root")


def test_ca_pin_matches_openssl(root: ClusterAuthorities, tmp_path: pathlib.Path) -> None:
    (tmp_path / "ca.pem").write_bytes(root.tls.cert_pem())
    spki_pem = run("openssl", "x509", "-in", str(tmp_path / "ca.pem"), "-noout", "-pubkey")
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"],
        input=spki_pem.encode(),
        capture_output=True,
        check=True,
    ).stdout
    assert ca_pin(root.tls.certificate) == "sha256:" + hashlib.sha256(der).hexdigest()
    check_ca_pin(root.tls.certificate, ca_pin(root.tls.certificate).upper().replace("SHA", "sha"))


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_ssh_ca_fingerprint_is_what_ssh_keygen_prints(
    tmp_path: pathlib.Path, algorithm: str
) -> None:
    authorities = ClusterAuthorities.generate("root", algorithm=algorithm)
    for ca in (authorities.ssh_user, authorities.ssh_host):
        (tmp_path / "ca.pub").write_text(ca.public_key_line() + "\n")
        assert run("ssh-keygen", "-l", "-f", str(tmp_path / "ca.pub")).split()[1] == ca.fingerprint


def test_leaf_with_wrong_pin_refuses_root_ca(
    root: ClusterAuthorities, leaf: ClusterAuthorities
) -> None:
    with pytest.raises(UnknownAuthority, match="has pin sha256:"):
        check_ca_pin(root.tls.certificate, leaf.tls.pin())


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_saved_user_key_is_readable_by_ssh_keygen(tmp_path: pathlib.Path, algorithm: str) -> None:
    key = generate_private_key(algorithm)
    path = tmp_path / "key"
    write_secret_file(path, private_key_to_openssh(key))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public_line = run("ssh-keygen", "-y", "-f", str(path)).split()
    assert public_line[:2] == ssh_public_key_line(key.public_key()).split()
    for encoded in (private_key_to_openssh(key), private_key_to_pem(key)):
        assert ssh_public_key_line(load_private_key(encoded)) == ssh_public_key_line(key)


# --- identity ----------------------------------------------------------------------------------


def test_identity_survives_json_and_stays_immutable() -> None:
    identity = make_identity(kind="admin", route_to_cluster="leaf")
    encoded = json.loads(json.dumps(identity.to_json()))
    assert Identity.from_json(encoded) == identity
    assert hash(Identity.from_json(identity.to_json_bytes())) == hash(identity)
    with pytest.raises(TypeError):
        identity.traits["logins"] = ("x",)  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown field 'restrict'"):
        Identity.from_json({**identity.to_json(), "restrict": True})
    with pytest.raises(ValueError, match="timezone-aware"):
        make_identity(expires=datetime.datetime(2026, 1, 1))


# --- SSH certificates ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_login_ssh_cert_round_trips_through_verify(algorithm: str) -> None:
    cas = ClusterAuthorities.generate("root", algorithm=algorithm)
    key = generate_private_key(algorithm)
    identity = make_identity()
    line = issue_ssh_user_cert(cas.ssh_user, ssh_public_key_line(key), identity, now=NOW)
    assert line.endswith(" alice@root")
    assert line.startswith(ssh_public_key_line(key).split()[0] + "-cert-v01@openssh.com ")
    got = verify_ssh_user_cert(line, trusted_cas=[cas.ssh_user], principal="visitor", now=NOW)
    assert got == identity
    assert verify_ssh_user_cert(
        line.encode(), trusted_cas=[cas.ssh_user.public_key_line()], now=NOW
    )


def test_login_cert_is_accepted_by_ssh_keygen(
    root: ClusterAuthorities, user_key: PrivateKey, tmp_path: pathlib.Path
) -> None:
    line = issue_ssh_user_cert(root.ssh_user, user_key.public_key(), live_identity())
    (tmp_path / "id-cert.pub").write_text(line + "\n")
    shown = run("ssh-keygen", "-L", "-f", str(tmp_path / "id-cert.pub"))
    assert "user certificate" in shown
    assert 'Key ID: "alice"' in shown
    principals = shown.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["visitor", "root"]
    extensions = shown.split("Extensions:")[1]
    for name in ("permit-pty", "permit-port-forwarding", SSH_IDENTITY_EXTENSION):
        assert name in extensions
    assert "permit-agent-forwarding" not in extensions
    assert "Critical Options: (none)" in shown


def test_host_cert_is_accepted_by_ssh_keygen_and_verifies(
    root: ClusterAuthorities, tmp_path: pathlib.Path
) -> None:
    host_key = generate_private_key()
    line = issue_ssh_host_cert(
        root.ssh_host,
        host_key.public_key(),
        host_id="node-1",
        principals=["node1.example.com"],
        cluster="root",
        ttl=24 * HOUR,
        now=NOW,
    )
    (tmp_path / "host-cert.pub").write_text(line + "\n")
    shown = run("ssh-keygen", "-L", "-f", str(tmp_path / "host-cert.pub"))
    assert "host certificate" in shown
    host = verify_ssh_host_cert(
        line, trusted_cas={"root": [root.ssh_host]}, principal="node1.example.com", now=NOW
    )
    assert (host.host_id, host.cluster, host.principals) == (
        "node-1",
        "root",
        ("node-1", "node1.example.com"),
    )
    assert root.ssh_host.known_hosts_line().startswith("@cert-authority * ssh-ed25519 ")
    with pytest.raises(MalformedCertificate, match="SSH host certificate"):
        verify_ssh_user_cert(line, trusted_cas=[root.ssh_host], now=NOW)


def test_ssh_cert_signed_by_host_ca_cannot_be_issued(
    root: ClusterAuthorities, user_key: PrivateKey
) -> None:
    with pytest.raises(ValueError, match="user CA"):
        issue_ssh_user_cert(root.ssh_host, user_key.public_key(), make_identity(), now=NOW)


def test_user_without_logins_gets_a_cert_that_allows_no_login(
    root: ClusterAuthorities, user_key: PrivateKey
) -> None:
    line = issue_ssh_user_cert(root.ssh_user, user_key.public_key(), live_identity(logins=()))
    with pytest.raises(PrincipalNotAllowed, match="-tether-nologin-"):
        verify_ssh_user_cert(line, trusted_cas=[root.ssh_user], principal="root")


# --- X.509 certificates ----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_x509_login_cert_passes_openssl_verify(tmp_path: pathlib.Path, algorithm: str) -> None:
    root = ClusterAuthorities.generate("root", algorithm=algorithm, tls_algorithm=algorithm)
    user_key = generate_private_key(algorithm)
    identity = live_identity()
    cert = issue_x509_cert(root.tls, user_key.public_key(), identity)
    (tmp_path / "ca.pem").write_bytes(root.tls.cert_pem())
    (tmp_path / "cert.pem").write_bytes(cert_to_pem(cert))
    ca, leaf_pem = str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem")
    out = run("openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", ca, leaf_pem)
    assert out.strip() == f"{leaf_pem}: OK"
    text = run("openssl", "x509", "-in", leaf_pem, "-noout", "-text")
    assert "URI:tether-identity:" in text
    assert TETHER_IDENTITY_OID.dotted_string not in text  # the old extension, read only
    assert "Subject: O = root, CN = alice" in text
    assert "TLS Web Client Authentication" in text
    assert verify_x509_cert(cert_to_pem(cert), trusted_cas=[root.tls.certificate]) == identity


def test_server_cert_names_its_addresses(root: ClusterAuthorities, tmp_path: pathlib.Path) -> None:
    key = generate_private_key("ecdsa-p256")
    proxy = live_identity(username="proxy-1", kind="proxy", logins=(), traits={}, roles=())
    cert = issue_x509_cert(
        root.tls, key.public_key(), proxy, dns_names=["proxy.example.com"],
        ip_addresses=["127.0.0.1"], server=True,
    )  # fmt: skip
    (tmp_path / "ca.pem").write_bytes(root.tls.cert_pem())
    (tmp_path / "cert.pem").write_bytes(cert_to_pem(cert))
    run("openssl", "verify", "-purpose", "sslserver", "-CAfile", str(tmp_path / "ca.pem"),
        str(tmp_path / "cert.pem"))  # fmt: skip
    text = run("openssl", "x509", "-in", str(tmp_path / "cert.pem"), "-noout", "-text")
    assert "DNS:proxy.example.com, IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text
    assert verify_x509_cert(cert, trusted_cas=[root.tls]).kind == "proxy"


# --- every way a certificate is refused --------------------------------------------------------


def ssh_cert(cas: ClusterAuthorities, key: PrivateKey, **changes: object) -> str:
    return issue_ssh_user_cert(cas.ssh_user, key.public_key(), make_identity(**changes), now=NOW)


def x509_cert_der(cas: ClusterAuthorities, key: PrivateKey, **changes: object) -> bytes:
    cert = issue_x509_cert(cas.tls, key.public_key(), make_identity(**changes), now=NOW)
    return cert.public_bytes(Encoding.DER)


Issue = Callable[[ClusterAuthorities, PrivateKey], "str | bytes"]
Verify = Callable[..., Identity]


def verify_ssh(cert: str | bytes, cas: ClusterAuthorities, **kw: object) -> Identity:
    return verify_ssh_user_cert(cert, trusted_cas=[cas.ssh_user], **kw)  # type: ignore[arg-type]


def verify_x509(cert: str | bytes, cas: ClusterAuthorities, **kw: object) -> Identity:
    data = cert.encode() if isinstance(cert, str) else cert
    return verify_x509_cert(data, trusted_cas=[cas.tls.certificate], **kw)  # type: ignore[arg-type]


BOTH = pytest.mark.parametrize(
    ("issue", "verify"), [(ssh_cert, verify_ssh), (x509_cert_der, verify_x509)], ids=["ssh", "x509"]
)


@BOTH
def test_expired_cert_tells_user_to_log_in_again(
    root: ClusterAuthorities, user_key: PrivateKey, issue: Issue, verify: Verify
) -> None:
    cert = issue(root, user_key)
    with pytest.raises(CertificateExpired) as caught:
        verify(cert, root, now=NOW + 9 * HOUR)
    assert one_line(caught.value) == (
        "certificate of alice@root expired at 2026-03-01T20:00:00Z (run `tether login` again)"
    )
    verify(cert, root, now=NOW + 8 * HOUR - datetime.timedelta(seconds=1))


@BOTH
def test_cert_from_the_future_blames_the_clock(
    root: ClusterAuthorities, user_key: PrivateKey, issue: Issue, verify: Verify
) -> None:
    cert = issue(root, user_key)
    verify(cert, root, now=NOW - datetime.timedelta(seconds=59))  # within the skew allowance
    with pytest.raises(
        CertificateNotYetValid, match="alice@root is not valid until 2026-03-01T11:59:00Z"
    ) as caught:
        verify(cert, root, now=NOW - 10 * datetime.timedelta(minutes=1))
    assert "clock" in one_line(caught.value)


@BOTH
def test_cert_from_another_cluster_ca_is_unknown(
    root: ClusterAuthorities, user_key: PrivateKey, issue: Issue, verify: Verify
) -> None:
    impostor = ClusterAuthorities.generate("root")  # same name, different keys
    cert = issue(impostor, user_key)
    with pytest.raises(
        UnknownAuthority, match="certificate of alice@root is signed by a CA"
    ) as caught:
        verify(cert, root, now=NOW + 9 * HOUR)  # untrusted wins over expired
    one_line(caught.value)


@BOTH
def test_cert_with_edited_identity_is_tampered(
    root: ClusterAuthorities, user_key: PrivateKey, issue: Issue, verify: Verify
) -> None:
    cert = issue(root, user_key)
    original, forged = b'"roles":["access"]', b'"roles":["admin!"]'
    if isinstance(cert, str):
        kind, body, comment = cert.split(" ")
        raw = base64.b64decode(body)
        assert raw.count(original) == 1
        raw = raw.replace(original, forged)
        cert = f"{kind} {base64.b64encode(raw).decode()} {comment}"
    else:  # the identity is a URI of the subject alternative names, base64url-encoded
        sans = x509.load_der_x509_certificate(cert).extensions
        [uri] = sans.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
        encoded = uri.removeprefix("tether-identity:")
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        assert raw.count(original) == 1
        edited = base64.urlsafe_b64encode(raw.replace(original, forged)).rstrip(b"=")
        assert cert.count(encoded.encode()) == 1
        cert = cert.replace(encoded.encode(), edited)
    with pytest.raises(
        CertificateTampered, match="certificate of alice@root does not match"
    ) as caught:
        verify(cert, root, now=NOW)
    one_line(caught.value)


@BOTH
@pytest.mark.parametrize(
    "garbage",
    [b"", b"hello world", b"ssh-ed25519-cert-v01@openssh.com AAAAC3Nza", b"\x30\x03\x02\x01\x00",
     b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", bytes(range(256))],
)  # fmt: skip
def test_garbage_is_malformed_not_a_crash(
    root: ClusterAuthorities, issue: Issue, verify: Verify, garbage: bytes
) -> None:
    with pytest.raises(MalformedCertificate) as caught:
        verify(garbage, root, now=NOW)
    one_line(caught.value)


def test_plain_public_key_is_not_a_cert(root: ClusterAuthorities, user_key: PrivateKey) -> None:
    with pytest.raises(MalformedCertificate, match="plain public key"):
        verify_ssh(ssh_public_key_line(user_key), root)


def test_login_not_in_principals_is_refused(root: ClusterAuthorities, user_key: PrivateKey) -> None:
    cert = ssh_cert(root, user_key)
    with pytest.raises(PrincipalNotAllowed) as caught:
        verify_ssh(cert, root, principal="admin", now=NOW)
    assert one_line(caught.value).startswith(
        "certificate of alice@root does not allow 'admin' (it allows: visitor, root)"
    )


def test_order_is_signature_then_window_then_principal(
    root: ClusterAuthorities, user_key: PrivateKey
) -> None:
    cert = ssh_cert(root, user_key)
    with pytest.raises(CertificateExpired):
        verify_ssh(cert, root, principal="admin", now=NOW + 9 * HOUR)


def test_leaf_refuses_a_ca_vouching_for_another_cluster(
    root: ClusterAuthorities, leaf: ClusterAuthorities, user_key: PrivateKey
) -> None:
    """A leaf trusts the root's CAs and its own; a leaf-signed cert claiming root is refused."""
    rogue_ssh = SSHCertAuthority("root", "user", leaf.ssh_user.private_key)
    line = issue_ssh_user_cert(rogue_ssh, user_key.public_key(), make_identity(), now=NOW)
    trusted = {"root": [root.ssh_user], "leaf": [leaf.ssh_user]}
    with pytest.raises(
        UnknownAuthority, match="claims cluster 'root' but is signed by a CA of leaf"
    ):
        verify_ssh_user_cert(line, trusted_cas=trusted, now=NOW)
    genuine = ssh_cert(root, user_key)
    assert verify_ssh_user_cert(genuine, trusted_cas=trusted, now=NOW).cluster == "root"

    rogue_tls = X509CertAuthority("root", leaf.tls.private_key, leaf.tls.certificate)
    cert = issue_x509_cert(rogue_tls, user_key.public_key(), make_identity(), now=NOW)
    with pytest.raises(
        UnknownAuthority, match="claims cluster 'root' but is signed by the CA of leaf"
    ):
        verify_x509_cert(cert, trusted_cas=[root.tls, leaf.tls], now=NOW)


# --- TLS -------------------------------------------------------------------------------------


async def handshake(
    server_ctx: object, client_ctx: object
) -> tuple[trio.SSLStream[trio.SocketStream], list[BaseException]]:
    """Run both ends of a TLS handshake over a real socket pair; return the server end and
    the server's handshake errors."""
    a, b = trio.socket.socketpair()
    server = trio.SSLStream(trio.SocketStream(a), server_ctx, server_side=True)  # type: ignore[arg-type]
    client = trio.SSLStream(trio.SocketStream(b), client_ctx, server_hostname="localhost")  # type: ignore[arg-type]
    errors: list[BaseException] = []

    async def serve() -> None:
        try:
            await server.do_handshake()
        except trio.BrokenResourceError as exc:
            errors.append(exc)
            await server.transport_stream.aclose()

    async def connect() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await client.do_handshake()
            if errors:
                return
            await client.send_all(b"ping")
            assert await server.receive_some(4) == b"ping"

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(connect)
    return server, errors


def server_context(cas: ClusterAuthorities) -> object:
    key = generate_private_key()
    proxy = live_identity(username="proxy-1", kind="proxy", logins=())
    cert = issue_x509_cert(cas.tls, key.public_key(), proxy, dns_names=["localhost"], server=True)
    return server_ssl_context(
        cert, key, client_cas=[cas.tls], client_auth="required", alpn=["tether-tunnel/1", "h2"]
    )


async def test_mutual_tls_handshake_yields_the_client_identity(
    root: ClusterAuthorities, user_key: PrivateKey
) -> None:
    identity = live_identity()
    cert = issue_x509_cert(root.tls, user_key.public_key(), identity)
    client_ctx = client_ssl_context(
        trusted_cas=[root.tls.certificate], cert=cert, key=user_key, alpn=["tether-tunnel/1"]
    )
    server, errors = await handshake(server_context(root), client_ctx)
    assert errors == []
    assert server.selected_alpn_protocol() == "tether-tunnel/1"
    assert identity_from_peer(server, [root.tls.certificate]) == identity


async def test_client_cert_from_foreign_ca_is_rejected(
    root: ClusterAuthorities, leaf: ClusterAuthorities, user_key: PrivateKey
) -> None:
    foreign = issue_x509_cert(leaf.tls, user_key.public_key(), live_identity("leaf"))
    client_ctx = client_ssl_context(trusted_cas=[root.tls], cert=foreign, key=user_key)
    _, errors = await handshake(server_context(root), client_ctx)
    assert len(errors) == 1
    assert "certificate" in str(errors[0].__cause__).lower()


def test_contexts_refuse_contradictory_settings(root: ClusterAuthorities) -> None:
    key = generate_private_key()
    with pytest.raises(ValueError, match="client_auth"):
        server_ssl_context(root.tls.certificate, key, client_auth="sometimes")
    with pytest.raises(ValueError, match="needs at least one client CA"):
        server_ssl_context(root.tls.certificate, key, client_auth="required")
    with pytest.raises(ValueError, match="both cert and key"):
        client_ssl_context(trusted_cas=None, cert=root.tls.certificate)
    insecure = client_ssl_context(trusted_cas=None, insecure=True)
    assert insecure.verify_mode.name == "CERT_NONE"
    assert client_ssl_context(trusted_cas=None).verify_mode.name == "CERT_REQUIRED"


# --- the public surface ------------------------------------------------------------------------


def test_public_api_is_what_all_says() -> None:
    exported = set(tether.pki.__all__)
    defined = {
        name
        for name, value in vars(tether.pki).items()
        if not name.startswith("_") and name != "annotations" and not inspect.ismodule(value)
    }
    assert exported == defined
    for name in sorted(exported):
        value = getattr(tether.pki, name)
        if inspect.isfunction(value):
            signature = inspect.signature(value)
            assert signature.return_annotation is not inspect.Signature.empty, name
            for param in signature.parameters.values():
                assert param.annotation is not inspect.Parameter.empty, f"{name}({param.name})"
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, TrustError), name


def test_ca_files_are_written_atomically(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    write_secret_file(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left behind


def test_every_oid_of_a_login_certificate_is_one_go_clients_parse() -> None:
    """kubectl (Go) loads the user's certificate: Go's X.509 parser refuses an OID arc of
    2**31 or more ("malformed extension OID field"), which the identity once had."""
    root = ClusterAuthorities.generate("root")
    cert = issue_x509_cert(root.tls, generate_private_key().public_key(), live_identity())

    oids = [ext.oid.dotted_string for ext in cert.extensions]
    oids += [attr.oid.dotted_string for attr in cert.subject]

    assert all(int(arc) < 2**31 for oid in oids for arc in oid.split(".")), oids
