"""Each refusal of a certificate or of the trust handshake says what is actually wrong.

Certificates are forged here with the cluster's own CA keys (what a hostile or broken issuer
holds), then verified through the one verification path; the handshake refusals run against a
real root process over real HTTP, and each is audited where it was refused.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import pathlib
import secrets
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    SSHCertificateBuilder,
    SSHCertificateType,
)
from cryptography.x509.oid import NameOID

from tether import pki
from tether.auth.service import AuthService
from tether.backend import open_sqlite
from tether.config import default_config
from tether.errors import AccessDenied, AlreadyExists, TetherError, TrustError
from tether.pki import ClusterAuthorities, Identity, MalformedCertificate, UnknownAuthority
from tether.plugins import get_plugin_manager
from tether.proxy.tunnels import build_tunnel_server
from tether.resources import parse_resources
from tether.testing import impostor
from tether.testing.cluster import RunningCluster
from tether.testing.roles import core_registry
from tether.tlsserver import serve_tls
from tether.tlsstream import TLSStream
from tether.trust import ClusterTrust
from tether.trust.handshake import validate_leaf
from tether.tunnel.control import ProxyInfo
from tether.tunnel.server import TUNNEL_ALPN

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
HOUR = datetime.timedelta(hours=1)


def identity(cluster: str = "root", **changes: Any) -> Identity:
    fields: dict[str, Any] = {
        "username": "alice",
        "cluster": cluster,
        "roles": ("access",),
        "traits": {},
        "logins": ("visitor",),
        "expires": NOW + HOUR,
        **changes,
    }
    return Identity(**fields)


@pytest.fixture(scope="module")
def root() -> ClusterAuthorities:
    return ClusterAuthorities.generate("root")


def ssh_cert(
    ca: pki.SSHCertAuthority,
    *,
    cert_type: SSHCertificateType = SSHCertificateType.USER,
    key_id: str = "alice",
    critical: dict[bytes, bytes] | None = None,
    extensions: dict[bytes, bytes] | None = None,
) -> str:
    """An OpenSSH certificate that ``ca`` signed, with whatever fields its holder chose."""
    builder = (
        SSHCertificateBuilder()
        .public_key(pki.generate_private_key().public_key())  # type: ignore[arg-type]
        .serial(secrets.randbits(64))
        .type(cert_type)
        .key_id(key_id.encode())
        .valid_principals([b"visitor"])
        .valid_after(int((NOW - HOUR).timestamp()))
        .valid_before(int((NOW + HOUR).timestamp()))
    )
    for name, value in (critical or {}).items():
        builder = builder.add_critical_option(name, value)
    for name, value in (extensions or {}).items():
        builder = builder.add_extension(name, value)
    return builder.sign(ca.private_key).public_bytes().decode()  # type: ignore[arg-type]


def tether_identity(who: Identity) -> dict[bytes, bytes]:
    return {pki.SSH_IDENTITY_EXTENSION.encode(): who.to_json_bytes()}


# --- certificates ----------------------------------------------------------------------------


def test_ssh_certificate_with_a_critical_option_is_refused_for_it(root: ClusterAuthorities) -> None:
    line = ssh_cert(
        root.ssh_user,
        critical={b"force-command": b"/bin/true"},
        extensions=tether_identity(identity()),
    )
    with pytest.raises(MalformedCertificate) as refused:
        pki.verify_ssh_user_cert(line, trusted_cas=[root.ssh_user])
    assert str(refused.value) == (
        "certificate of alice@root carries critical options Tether does not enforce: "
        "force-command (Tether issues none; ignoring one would grant more than was signed)"
    )
    host = ssh_cert(
        root.ssh_host,
        cert_type=SSHCertificateType.HOST,
        key_id="node-1",
        critical={b"source-address": b"10.0.0.1"},
        extensions={pki.SSH_CLUSTER_EXTENSION.encode(): b"root"},
    )
    with pytest.raises(MalformedCertificate, match=r"carries critical options .*: source-address"):
        pki.verify_ssh_host_cert(host, trusted_cas=[root.ssh_host])


def test_ssh_certificate_whose_key_id_names_another_user_is_refused_for_it(
    root: ClusterAuthorities,
) -> None:
    line = ssh_cert(root.ssh_user, key_id="mallory", extensions=tether_identity(identity()))
    with pytest.raises(MalformedCertificate) as refused:
        pki.verify_ssh_user_cert(line, trusted_cas=[root.ssh_user])
    assert refused.value.message == (
        "certificate of mallory@root names 'mallory' in its key id but 'alice' in its identity"
    )
    assert "upgrade" not in str(refused.value)


def test_ssh_certificates_without_tethers_extensions_are_refused_as_foreign(
    root: ClusterAuthorities,
) -> None:
    with pytest.raises(MalformedCertificate, match=r"has no tether-identity@tether\.dev extension"):
        pki.verify_ssh_user_cert(ssh_cert(root.ssh_user), trusted_cas=[root.ssh_user])
    host = ssh_cert(root.ssh_host, cert_type=SSHCertificateType.HOST, key_id="node-1")
    with pytest.raises(MalformedCertificate, match=r"has no tether-cluster@tether\.dev extension"):
        pki.verify_ssh_host_cert(host, trusted_cas=[root.ssh_host])


def x509_cert(
    ca: pki.X509CertAuthority, who: Identity | None, common_name: str = "alice"
) -> x509.Certificate:
    """An X.509 certificate ``ca`` signed, with the subject and identity its holder chose."""
    key = pki.generate_private_key()
    if who is not None:
        genuine = pki.issue_x509_cert(ca, key.public_key(), who)
        extensions = [e for e in genuine.extensions]
    else:
        extensions = []
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.cluster),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
    )
    for ext in extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(ca.private_key, pki.signing_hash(ca.private_key))  # type: ignore[arg-type]


def test_x509_certificate_whose_subject_names_another_user_is_refused_for_it(
    root: ClusterAuthorities,
) -> None:
    cert = x509_cert(root.tls, identity(), common_name="mallory")
    with pytest.raises(MalformedCertificate) as refused:
        pki.verify_x509_cert(cert, trusted_cas=[root.tls])
    assert refused.value.message == (
        "certificate of mallory@root names mallory in its subject but 'alice' in its identity"
    )


def test_x509_certificate_without_an_identity_is_refused_as_foreign(
    root: ClusterAuthorities,
) -> None:
    with pytest.raises(MalformedCertificate, match="has no Tether identity extension"):
        pki.verify_x509_cert(x509_cert(root.tls, None), trusted_cas=[root.tls])


def test_ca_stored_under_one_cluster_cannot_vouch_for_another_whatever_its_subject() -> None:
    # what a root that accepted such a CA before this release still holds: evil's CA names leaf2
    forged = ClusterAuthorities.generate("leaf2").tls
    cert = pki.issue_x509_cert(forged, pki.generate_private_key().public_key(), identity("leaf2"))
    with pytest.raises(UnknownAuthority) as refused:
        pki.verify_x509_cert(cert, trusted_cas={"evil": [forged]})
    assert "claims cluster 'leaf2' but is signed by a CA of evil" in refused.value.message
    stored_right = pki.verify_x509_cert(cert, trusted_cas={"leaf2": [forged]})
    assert stored_right.cluster == "leaf2"


async def test_tunnel_claiming_a_name_its_ca_is_not_stored_under_is_refused_and_audited() -> None:
    """The proxy's production tunnel check, over real TLS in this process."""
    root = ClusterAuthorities.generate("root")
    forged = ClusterAuthorities.generate("leaf2").tls  # stored under evil, names leaf2
    events: list[tuple[str, dict[str, Any]]] = []

    async def record_event(event_type: str, user: str, fields: dict[str, Any], **_: Any) -> None:
        events.append((event_type, fields))

    async def write_heartbeats(records: Any) -> None:
        pass

    server, _ = build_tunnel_server(
        proxy_id="root-proxy",
        cluster="root",
        trusted_cas=lambda: {"evil": (forged.certificate,), "root": (root.tls.certificate,)},
        proxies=lambda: [ProxyInfo("root-proxy")],
        write_heartbeats=write_heartbeats,
        record_event=record_event,
    )
    key = pki.generate_private_key()
    proxy = identity(username="root-proxy", roles=(), logins=(), kind="proxy")
    server_cert = pki.issue_x509_cert(
        root.tls, key.public_key(), proxy, dns_names=["localhost"], server=True
    )
    context = pki.server_ssl_context(
        server_cert,
        key,
        client_cas=[root.tls, forged],
        client_auth="required",
        alpn=[TUNNEL_ALPN],
    )
    for claimed in ("leaf2", "root"):
        agent_key = pki.generate_private_key()
        who = identity(claimed, username="evil-proxy", roles=(), logins=(), kind="proxy")
        signer = pki.X509CertAuthority(claimed, forged.private_key, forged.certificate)
        cert = pki.issue_x509_cert(signer, agent_key.public_key(), who)
        client = pki.client_ssl_context(
            trusted_cas=[root.tls], cert=cert, key=agent_key, alpn=[TUNNEL_ALPN]
        )
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve_tls, "127.0.0.1", 0, context, {TUNNEL_ALPN: server.handle})
            )
            port = listeners[0].socket.getsockname()[1]
            stream = await TLSStream.connect("127.0.0.1", port, client, server_hostname="localhost")
            with trio.fail_after(10):
                while await stream.receive_some():  # the root closes a refused tunnel
                    pass
            nursery.cancel_scope.cancel()
        event_type, fields = events[-1]
        assert event_type == "tunnel.refused"
        assert fields["claimed"] == f"evil-proxy@{claimed}"
        assert f"claims cluster {claimed!r} but is signed by a CA of evil" in fields["reason"]
    assert server.clusters() == {}


# --- the handshake ---------------------------------------------------------------------------


def token(root: RunningCluster, kind: str = "trusted_cluster") -> str:
    added = root.tetherctl("tokens", "add", f"--type={kind}", "--format=json")
    return str(json.loads(added.stdout)["token"])


def exchange(cluster: str) -> dict[str, Any]:
    return impostor.exchange(cluster, ClusterAuthorities.generate(cluster))


def trust_root(leaf: RunningCluster, root: RunningCluster, name: str, **kwargs: Any) -> Any:
    """``tetherctl create`` on ``leaf`` a trusted_cluster ``name`` for ``root``."""
    path = leaf.directory / f"trusted_cluster-{name}.yaml"
    path.write_text(
        f"kind: trusted_cluster\nversion: v2\nmetadata:\n  name: {name}\nspec:\n"
        f"  token: {token(root)}\n  web_proxy_addr: {root.proxy_addr}\n"
        f"  tunnel_addr: {root.proxy_addr}\n  ca_pin: {root.ca_pin}\n"
        "  role_map: [{remote: access, local: [access]}]\n"
    )
    return leaf.tetherctl("create", str(path), **kwargs)


def refused(root: RunningCluster, body: Any, leaf: str) -> str:
    with pytest.raises(TetherError) as caught:
        trio.run(impostor.handshake, root, body)
    found = root.tetherctl("audit", "search", "--type=trusted_cluster.refused", "--format=json")
    event = json.loads(found.stdout)[-1]
    assert (event["leaf"], event["reason"], event["success"]) == (
        leaf,
        caught.value.message,
        False,
    )
    docs = json.loads(root.tetherctl("get", "rc", "--format=json").stdout)
    assert [d["metadata"]["name"] for d in docs] == [], "a refused leaf must leave no trace"
    return str(caught.value)


def test_handshake_of_a_leaf_claiming_the_roots_name_is_refused(
    tether_cluster: RunningCluster,
) -> None:
    err = refused(
        tether_cluster, {"token": token(tether_cluster), "leaf": exchange("main")}, "main"
    )
    assert "the leaf cluster has the root's name 'main'" in err


def test_node_token_used_as_an_invitation_is_refused(tether_cluster: RunningCluster) -> None:
    err = refused(
        tether_cluster, {"token": token(tether_cluster, "node"), "leaf": exchange("leaf")}, "leaf"
    )
    assert "the token is not a TrustedCluster token" in err


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"tls": []}, "malformed trust exchange: cluster 'leaf' sent no tls CA"),
        ({"ssh": {"user": []}}, "malformed trust exchange: cluster 'leaf' sent no host CA"),
        ({"tls": None}, "malformed trust exchange: TypeError"),
        ({"ssh": {"host": ["ssh-ed25519 AAAA"]}}, "the SSH host CA of 'leaf' is unusable"),
        ({"tls": ["not a certificate"]}, "the X.509 CA of 'leaf' is unusable"),
        ({"cluster": "../etc"}, "cluster name '../etc' is not valid"),
    ],
)
def test_malformed_handshake_is_refused_naming_what_is_wrong(
    tether_cluster: RunningCluster, change: dict[str, Any], reason: str
) -> None:
    leaf = {**exchange("leaf"), **change}
    err = refused(tether_cluster, {"token": token(tether_cluster), "leaf": leaf}, leaf["cluster"])
    assert reason in err


def test_leaf_refuses_a_root_that_answers_under_another_name(
    tether_cluster: RunningCluster, tether_cluster_factory: Callable[..., RunningCluster]
) -> None:
    leaf = tether_cluster_factory("leaf")
    try:
        result = trust_root(leaf, tether_cluster, "other", check=False)
        assert result.returncode == 1
        assert f"the root cluster at {tether_cluster.proxy_addr} is called 'main', not 'other'" in (
            result.stderr
        )
        assert "set metadata.name of the trusted_cluster to 'main'" in result.stderr
        found = leaf.tetherctl("audit", "search", "--type=trusted_cluster.refused", "--format=json")
        (event,) = json.loads(found.stdout)
        assert event["root"] == "other" and "is called 'main'" in event["reason"]
        cas = json.loads(leaf.tetherctl("get", "cert_authority", "--format=json").stdout)
        assert {ca["metadata"]["name"] for ca in cas} == {"leaf"}, "nor may it trust the root"
    finally:
        tether_cluster.tetherctl("rm", "rc/leaf", check=False)


# --- more certificate refusals ---------------------------------------------------------------


def test_identity_of_an_unknown_encoding_is_refused_as_from_a_newer_release(
    root: ClusterAuthorities,
) -> None:
    newer = {**identity().to_json(), "v": 2}
    line = ssh_cert(
        root.ssh_user,
        extensions={pki.SSH_IDENTITY_EXTENSION.encode(): json.dumps(newer).encode()},
    )
    with pytest.raises(MalformedCertificate) as refused:
        pki.verify_ssh_user_cert(line, trusted_cas=[root.ssh_user])
    assert "carries an unreadable identity: identity encoding version 2" in refused.value.message
    assert refused.value.hint == "the issuing cluster may run a newer Tether; upgrade this one"


def test_reading_a_certificate_without_an_identity_says_so(root: ClusterAuthorities) -> None:
    with pytest.raises(MalformedCertificate, match="no usable Tether identity in this cert"):
        pki.read_x509_identity(x509_cert(root.tls, None))


def test_host_certificate_offered_as_a_user_certificate_is_refused_as_such(
    root: ClusterAuthorities,
) -> None:
    host = ssh_cert(root.ssh_host, cert_type=SSHCertificateType.HOST, key_id="node-1")
    with pytest.raises(MalformedCertificate, match="this is an SSH host certificate"):
        pki.verify_ssh_user_cert(host, trusted_cas=[root.ssh_user])


def test_ca_pin_of_the_wrong_form_is_refused_naming_the_form(root: ClusterAuthorities) -> None:
    with pytest.raises(UnknownAuthority, match="is not of the form sha256:<hex>"):
        pki.check_ca_pin(root.tls.certificate, "md5:abc")


def test_keys_the_cluster_does_not_use_are_refused_naming_why() -> None:
    with pytest.raises(ValueError, match="unknown key algorithm 'rsa'"):
        pki.generate_private_key("rsa")
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = p384.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    with pytest.raises(ValueError, match="unsupported elliptic curve secp384r1; Tether uses P-256"):
        pki.load_private_key(pem)
    with pytest.raises(ValueError, match="cannot read private key"):
        pki.load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match=r"cannot read X\.509 certificate"):
        pki.load_cert(b"not a certificate")


def keys_dir(tmp_path: pathlib.Path, cluster: str = "root") -> pathlib.Path:
    directory = tmp_path / "keys"
    ClusterAuthorities.load_or_create(directory, cluster)
    return directory


def test_ca_files_of_two_clusters_mixed_in_one_directory_are_refused(
    tmp_path: pathlib.Path,
) -> None:
    directory = keys_dir(tmp_path)
    other = keys_dir(tmp_path / "other", "other")
    (directory / "tls_ca.crt").write_bytes((other / "tls_ca.crt").read_bytes())
    with pytest.raises(TrustError, match=r"tls_ca\.crt is not for cluster 'root'"):
        ClusterAuthorities.load_or_create(directory, "root")
    mine = keys_dir(tmp_path / "mine")  # same cluster name, another key
    (directory / "tls_ca.crt").write_bytes((mine / "tls_ca.crt").read_bytes())
    with pytest.raises(TrustError, match=r"X\.509 CA certificate and key in .* do not match"):
        ClusterAuthorities.load_or_create(directory, "root")


def test_ca_files_that_are_links_or_another_users_are_refused(tmp_path: pathlib.Path) -> None:
    directory = keys_dir(tmp_path)
    key = directory / "ssh_user_ca"
    moved = tmp_path / "elsewhere"
    key.rename(moved)
    key.symlink_to(moved)
    with pytest.raises(TrustError, match="must be a regular file \\(not a symlink\\)"):
        ClusterAuthorities.load_or_create(directory, "root")
    key.unlink()
    moved.rename(key)
    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(key, 65534, -1)
    with pytest.raises(TrustError, match="belongs to uid 65534, not to this user"):
        ClusterAuthorities.load_or_create(directory, "root")


def test_unreadable_manifest_is_refused_naming_it(tmp_path: pathlib.Path) -> None:
    directory = keys_dir(tmp_path)
    (directory / "manifest.json").write_text("[1, 2]")
    with pytest.raises(TrustError, match=r"manifest\.json is not a JSON object"):
        ClusterAuthorities.load_or_create(directory, "root")
    (directory / "manifest.json").write_text("{")
    with pytest.raises(TrustError, match=r"cannot read .*manifest\.json"):
        ClusterAuthorities.load_or_create(directory, "root")


# --- a leaf verifying the clients of its roots ----------------------------------------------


def leaf_trust(root: ClusterAuthorities, *, enabled: bool = True) -> tuple[ClusterTrust, Any]:
    registry = core_registry()
    (trusted,) = parse_resources(
        "kind: trusted_cluster\nversion: v2\nmetadata: {name: root}\nspec:\n"
        f"  enabled: {str(enabled).lower()}\n  web_proxy_addr: root.example:3080\n"
        "  role_map: [{remote: access, local: [visitor]}]\n",
        "trusted_cluster.yaml",
        registry,
    )
    leaf = ClusterAuthorities.generate("leaf")
    trust = ClusterTrust.build(
        "leaf", [leaf.tls.certificate], {"root": [root.tls.certificate]}, [trusted]
    )
    return trust, get_plugin_manager()


def root_cert(root: ClusterAuthorities, **changes: Any) -> x509.Certificate:
    return pki.issue_x509_cert(
        root.tls, pki.generate_private_key().public_key(), identity(**changes)
    )


def test_leaf_refuses_each_root_certificate_it_must_not_accept_naming_why(
    root: ClusterAuthorities,
) -> None:
    trust, pm = leaf_trust(root)
    now = datetime.datetime.now(datetime.UTC)
    mapped = trust.verify_client(root_cert(root), pm=pm, now=now)
    assert (mapped.username, mapped.roles) == ("alice", ("visitor",))
    with pytest.raises(AccessDenied, match="node 'node-1' of cluster 'root' has no access here"):
        trust.verify_client(
            root_cert(root, username="node-1", roles=(), logins=(), kind="node"), pm=pm, now=now
        )
    with pytest.raises(AccessDenied) as unmapped:
        trust.verify_client(root_cert(root, roles=("auditor",)), pm=pm, now=now)
    assert unmapped.value.message == (
        "no role of alice@root (auditor) maps to a role of cluster 'leaf'"
    )
    stranger = ClusterAuthorities.generate("stranger")
    with pytest.raises(UnknownAuthority, match="not from this cluster or a cluster it trusts"):
        trust.verify_client(
            pki.issue_x509_cert(
                stranger.tls, pki.generate_private_key().public_key(), identity("stranger")
            ),
            pm=pm,
            now=now,
        )
    disabled, pm = leaf_trust(root, enabled=False)
    with pytest.raises(AccessDenied, match="the trust in root cluster 'root' is disabled on"):
        disabled.verify_client(root_cert(root), pm=pm, now=now)


# --- a cluster that is a leaf and a root ----------------------------------------------------


def test_handshake_under_the_name_of_this_clusters_own_root_is_refused(
    tether_cluster: RunningCluster, tether_cluster_factory: Callable[..., RunningCluster]
) -> None:
    middle = tether_cluster_factory("middle")
    try:
        trust_root(middle, tether_cluster, "main")  # middle is a leaf of main
        err = refused(middle, {"token": token(middle), "leaf": exchange("main")}, "main")
        assert "cluster 'main' is a root of cluster 'middle'; it cannot also join as its leaf" in (
            err
        )
    finally:
        tether_cluster.tetherctl("rm", "rc/middle", check=False)


# --- racing handshakes -----------------------------------------------------------------------


@pytest.fixture
async def root_service(tmp_path: pathlib.Path) -> AsyncIterator[AuthService]:
    """A root's auth service in this process, so handshakes can race inside one event loop."""
    pm = get_plugin_manager()
    config = default_config(data_dir=tmp_path, cluster_name="root")
    pm.hook.tether_configure(config=config)
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.sqlite'}") as backend:
        yield await AuthService.open(config=config, pm=pm, backend=backend)


async def test_racing_handshakes_for_one_new_name_let_exactly_one_cluster_in(
    root_service: AuthService,
) -> None:
    admin = identity(username="admin", roles=(), logins=(), kind="admin")
    invitation = await root_service.add_token(
        admin, "trusted_cluster", datetime.timedelta(minutes=5)
    )
    contenders = [exchange("leaf") for _ in range(8)]
    outcomes: list[str] = []

    async def join(leaf: dict[str, Any]) -> None:
        try:
            await validate_leaf(
                root_service.handshake_party, {"token": invitation.token, "leaf": leaf}
            )
        except AlreadyExists as exc:
            outcomes.append(exc.message)
        else:
            outcomes.append(leaf["tls"][0])

    async with trio.open_nursery() as nursery:
        for leaf in contenders:
            nursery.start_soon(join, leaf)
    winners = [o for o in outcomes if o.startswith("-----BEGIN")]
    assert len(winners) == 1, outcomes
    assert all(
        "already a leaf of 'root' with other CAs" in o or "joined as 'leaf' at the same moment" in o
        for o in outcomes
        if o not in winners
    )
    stored = await root_service.other_tls_cas()
    assert [pki.cert_to_pem(c).decode() for c in stored["leaf"]] == winners


# --- the remaining refusals of pki, each with its reason ------------------------------------


def _with_identity_extension(ca: pki.X509CertAuthority, value: bytes) -> x509.Certificate:
    """A certificate ``ca`` signed whose identity extension holds ``value`` as it is."""
    key = pki.generate_private_key()
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.cluster),
                    x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(x509.UnrecognizedExtension(pki.TETHER_IDENTITY_OID, value), critical=False)
        .sign(ca.private_key, pki.signing_hash(ca.private_key))  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x04\x05alice", "identity extension is not a UTF8String"),
        (b"\x0c\x09alice", "identity extension has a bad length"),
        (b"\x0c\x05alice", "identity is not valid JSON"),
        (b"\x0c\x02{}", "identity encoding version None is not supported"),
    ],
)
def test_x509_identity_that_cannot_be_read_is_refused_naming_why(
    root: ClusterAuthorities, value: bytes, reason: str
) -> None:
    cert = _with_identity_extension(root.tls, value)
    with pytest.raises(MalformedCertificate) as refused:
        pki.verify_x509_cert(cert, trusted_cas=[root.tls])
    assert refused.value.message.startswith(
        f"certificate of alice@root carries an unreadable identity: {reason}"
    )
    newer = "version" in reason  # only an identity from a newer release asks for an upgrade
    assert ("upgrade this one" in str(refused.value.hint)) is newer


def _with_identity_names(ca: pki.X509CertAuthority, *uris: str) -> x509.Certificate:
    """A certificate ``ca`` signed whose subject alternative names are ``uris``."""
    key = pki.generate_private_key()
    names = [x509.UniformResourceIdentifier(uri) for uri in uris]
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.cluster),
                    x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca.private_key, pki.signing_hash(ca.private_key))  # type: ignore[arg-type]
    )


def _identity_uri(data: bytes) -> str:
    return "tether-identity:" + base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("uris", "reason"),
    [
        (("tether-identity:not base64!",), "the identity name is not base64url"),
        ((_identity_uri(b"alice"),), "identity is not valid JSON"),
        ((_identity_uri(b"{}"), _identity_uri(b"{}")),
         "the certificate carries more than one identity"),
    ],
)  # fmt: skip
def test_x509_identity_name_that_cannot_be_read_is_refused_naming_why(
    root: ClusterAuthorities, uris: tuple[str, ...], reason: str
) -> None:
    cert = _with_identity_names(root.tls, *uris)
    with pytest.raises(MalformedCertificate) as refused:
        pki.verify_x509_cert(cert, trusted_cas=[root.tls])
    assert refused.value.message.startswith(
        f"certificate of alice@root carries an unreadable identity: {reason}"
    )


def test_certificate_issued_with_the_old_identity_extension_is_still_read(
    root: ClusterAuthorities,
) -> None:
    raw = identity().to_json_bytes()
    value = bytes([0x0C, 0x82]) + len(raw).to_bytes(2, "big") + raw  # a DER UTF8String
    cert = _with_identity_extension(root.tls, value)

    verified = pki.verify_x509_cert(cert, trusted_cas=[root.tls], now=NOW)

    assert verified.username == "alice"


def test_identity_from_a_newer_release_is_told_apart_from_a_broken_one(
    root: ClusterAuthorities,
) -> None:
    fields = identity().to_json()

    def refusal(data: dict[str, Any]) -> MalformedCertificate:
        raw = json.dumps(data).encode()
        line = ssh_cert(root.ssh_user, extensions={pki.SSH_IDENTITY_EXTENSION.encode(): raw})
        with pytest.raises(MalformedCertificate) as refused:
            pki.verify_ssh_user_cert(line, trusted_cas=[root.ssh_user])
        return refused.value

    newer = refusal({**fields, "deny": ["prod"]})  # a restriction this release cannot enforce
    assert "carries an unreadable identity: identity has unknown field 'deny'" in newer.message
    assert newer.hint == "the issuing cluster may run a newer Tether; upgrade this one"
    broken = refusal({k: v for k, v in fields.items() if k != "roles"})
    assert "identity has missing field 'roles'" in broken.message
    assert "misconfigured or hostile" in str(broken.hint)
    god = refusal({**fields, "kind": "god"})
    assert "identity is invalid: unknown identity kind 'god'" in god.message
    with pytest.raises(ValueError, match="username must not contain whitespace: 'a b'"):
        identity(username="a b")
    with pytest.raises(ValueError, match="expires must be timezone-aware"):
        identity(expires=datetime.datetime(2030, 1, 1))


def test_issuing_what_a_ca_must_not_sign_is_refused_naming_why(root: ClusterAuthorities) -> None:
    key = pki.generate_private_key().public_key()
    other = identity("leaf")
    with pytest.raises(ValueError, match="identity of cluster 'leaf' cannot be signed by the CA"):
        pki.issue_x509_cert(root.tls, key, other)
    with pytest.raises(ValueError, match="a server certificate needs at least one DNS name"):
        pki.issue_x509_cert(root.tls, key, identity(), server=True)
    with pytest.raises(ValueError, match="identity of alice@root has already expired"):
        pki.issue_x509_cert(root.tls, key, identity(expires=NOW - HOUR))
    with pytest.raises(ValueError, match="must be signed by a user CA, not a host CA"):
        pki.issue_ssh_user_cert(root.ssh_host, key, identity())
    with pytest.raises(ValueError, match="must be signed by a host CA, not a user CA"):
        pki.issue_ssh_host_cert(
            root.ssh_user, key, host_id="n", principals=[], cluster="root", ttl=HOUR
        )
    with pytest.raises(ValueError, match="host_id must be a non-empty name without whitespace"):
        pki.issue_ssh_host_cert(
            root.ssh_host, key, host_id="a b", principals=[], cluster="root", ttl=HOUR
        )
    with pytest.raises(ValueError, match="ttl must be positive"):
        pki.issue_ssh_host_cert(
            root.ssh_host, key, host_id="n", principals=[], cluster="root", ttl=-HOUR
        )
    with pytest.raises(ValueError, match="an SSH key comment must be a single line"):
        pki.ssh_public_key_line(key, "two\nlines")
    with pytest.raises(ValueError, match="cannot read public key"):
        pki.load_public_key("ssh-ed25519 AAAA")


def test_ca_keys_too_open_or_half_written_are_refused_naming_the_fix(
    tmp_path: pathlib.Path,
) -> None:
    directory = keys_dir(tmp_path)
    (directory / "tls_ca.key").chmod(0o644)
    with pytest.raises(TrustError) as refused:
        ClusterAuthorities.load_or_create(directory, "root")
    assert "has permissions 0644, too open for CA keys" in refused.value.message
    assert refused.value.hint == f"run chmod 600 {directory / 'tls_ca.key'}"
    (directory / "tls_ca.key").unlink()
    with pytest.raises(TrustError, match=r"are incomplete: tls_ca\.key missing"):
        ClusterAuthorities.load_or_create(directory, "root")
