"""X.509 CAs a plugin declares (``tether_cert_authorities``): created by auth on its first
start, shown and exported by ``tetherctl``, signing servers' certificates (``tetherctl auth
sign``) and hosts' client certificates for those allowed, every signing audited.

One cluster ``hooks`` with hooktest active, which declares ``hooktest`` (servers' certificates,
``--format=hooktest``, with ``hooktest_client`` in ``PREFIX.cas``) and ``hooktest_client``
(clients' certificates, an hour at most, for hosts with the ``Hooktest`` role). Certificates
are checked with ``openssl``, as an operator would.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import stat
import subprocess
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from cryptography import x509

from host_identity import host_client
from tether import pki
from tether.errors import AccessDenied, TetherError
from tether.testing.certificates import ClusterAuthorities
from tether.testing.cluster import RunningCluster, start_cluster

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

PASSWORD = "correct horse battery staple"
CLUSTER = "hooks"
SIGNER_ROLE = """\
kind: role
version: v7
metadata:
  name: cert-signer
spec:
  allow:
    rules:
    - resources: [cert_authority]
      verbs: [read, sign]
"""


@attrs.frozen
class Site:
    cluster: RunningCluster
    env: dict[str, str]

    def tetherctl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.tetherctl(*args, env=self.env, **kwargs)

    def export(self, ca_type: str) -> str:
        return self.tetherctl("auth", "export", f"--type={ca_type}").stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("declared-cas")
    env = {"TETHER_HOOKTEST_LOG": str(directory / "hooks.jsonl")}
    cluster = start_cluster(directory / "cluster", CLUSTER, env=env)
    try:
        yield Site(cluster, env)
    finally:
        cluster.stop()


def openssl(*args: str | pathlib.Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, timeout=30
    )
    if check:
        assert done.returncode == 0, f"openssl {' '.join(map(str, args))}: {done.stderr}"
    return done


def issued_events(site: Site) -> list[dict[str, Any]]:
    out = site.tetherctl("audit", "search", "--type=cert.issued", "-f", "json").stdout
    return list(json.loads(out))


# --- the CAs exist and are shown ------------------------------------------------------------


def test_admin_finds_the_plugins_cas_beside_the_kernels_after_start(site: Site) -> None:
    listed = site.tetherctl("get", "cas", "-f", "json").stdout
    types = {(doc["spec"]["type"], doc["metadata"]["name"]) for doc in json.loads(listed)}
    assert {("hooktest", CLUSTER), ("hooktest_client", CLUSTER), ("tls", CLUSTER)} <= types

    keys = site.cluster.data_dir / "keys"
    for name in ("ca_hooktest.key", "ca_hooktest.crt", "ca_hooktest_client.key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600, name


def test_admin_exports_a_declared_ca_as_pem_that_openssl_reads(
    site: Site, tmp_path: pathlib.Path
) -> None:
    pem = tmp_path / "hooktest.pem"
    pem.write_text(site.export("hooktest"))
    shown = openssl("x509", "-noout", "-subject", "-issuer", "-nameopt", "RFC2253", "-in", pem)
    subject = f"O={CLUSTER},OU=Tether hooktest CA,CN={CLUSTER}"
    # RFC 2253 lists the most specific attribute first
    rdns = ",".join(reversed(subject.split(",")))
    assert shown.stdout.splitlines() == [f"subject={rdns}", f"issuer={rdns}"]
    # its own key, not the kernel's X.509 CA, nor the other declared CA
    assert site.export("hooktest") != site.export("tls")
    assert site.export("hooktest") != site.export("hooktest_client")
    fingerprint = site.tetherctl("auth", "export", "--type=hooktest", "--fingerprint").stdout
    assert fingerprint == f"hooktest {pki.ca_pin(pki.load_cert(pem.read_bytes()))}\n"


def test_admin_export_offers_the_declared_types_in_its_help(site: Site) -> None:
    shown = site.tetherctl("auth", "export", "--help").stdout
    assert "hooktest_client" in shown
    refused = site.tetherctl("auth", "export", "--type=nosuch", check=False)
    assert refused.returncode != 0
    assert "hooktest_client" in refused.stderr


def test_operator_uninstalls_the_plugin_and_reinstalls_it_and_its_ca_is_the_same(
    tmp_path: pathlib.Path,
) -> None:
    env = {"TETHER_HOOKTEST_LOG": str(tmp_path / "hooks.jsonl")}
    directory = tmp_path / "cluster"

    def fingerprint(cluster: RunningCluster) -> str:
        args = ("auth", "export", "--type=hooktest", "--fingerprint")
        return cluster.tetherctl(*args, env=env).stdout

    first = start_cluster(directory, "again", env=env)
    try:
        before = fingerprint(first)
    finally:
        first.stop()

    # hooktest inactive: as if uninstalled. Auth starts, its CA files stay, nothing else breaks
    bare = start_cluster(directory, "again")
    try:
        assert (bare.data_dir / "keys" / "ca_hooktest.key").exists()
        assert "tls" in bare.tetherctl("get", "cas").stdout
        refused = bare.tetherctl(
            "auth", "sign", "--format=hooktest", "--host=x", f"--out={tmp_path / 'x'}", check=False
        )
        assert refused.returncode != 0 and "--format" in refused.stderr
    finally:
        bare.stop()

    again = start_cluster(directory, "again", env=env)
    try:
        assert fingerprint(again) == before
    finally:
        again.stop()


# --- tetherctl auth sign --------------------------------------------------------------------


def test_admin_signs_a_server_certificate_that_openssl_verifies(
    site: Site, tmp_path: pathlib.Path
) -> None:
    prefix = tmp_path / "gadget"
    done = site.tetherctl(
        "auth",
        "sign",
        "--format=hooktest",
        "--host=gadget.example.com,127.0.0.1",
        f"--out={prefix}",
        "--ttl=2190h",
    )
    assert "gadget.crt" in done.stdout
    crt, key, cas = (pathlib.Path(f"{prefix}.{s}") for s in ("crt", "key", "cas"))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    ca = tmp_path / "hooktest.pem"
    ca.write_text(site.export("hooktest"))
    assert openssl("verify", "-CAfile", ca, crt).stdout.strip() == f"{crt}: OK"
    kernel_ca = tmp_path / "tls.pem"
    kernel_ca.write_text(site.export("tls"))
    assert openssl("verify", "-CAfile", kernel_ca, crt, check=False).returncode != 0

    subject = openssl("x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", crt)
    assert subject.stdout.strip() == "subject=CN=gadget.example.com"
    san = openssl("x509", "-noout", "-ext", "subjectAltName", "-in", crt).stdout
    assert "DNS:gadget.example.com" in san and "IP Address:127.0.0.1" in san
    purpose = openssl("x509", "-noout", "-purpose", "-in", crt).stdout
    assert "SSL server : Yes" in purpose

    # the key is the certificate's
    public = openssl("pkey", "-in", key, "-pubout").stdout
    assert public == openssl("x509", "-noout", "-pubkey", "-in", crt).stdout
    # PREFIX.cas: the CA that signs the server's clients
    assert cas.read_text() == site.export("hooktest_client")

    issued = [e for e in issued_events(site) if e.get("subject") == "CN=gadget.example.com"]
    assert issued and issued[-1]["success"] is True
    assert issued[-1]["ca_type"] == "hooktest" and issued[-1]["usage"] == "server"
    assert issued[-1]["ttl"] and issued[-1]["by"] == "admin"


def test_admin_asking_more_than_the_cas_bound_is_refused(
    site: Site, tmp_path: pathlib.Path
) -> None:
    refused = site.tetherctl(
        "auth",
        "sign",
        "--format=hooktest",
        "--host=gadget.example.com",
        f"--out={tmp_path / 'long'}",
        "--ttl=10000h",
        check=False,
    )
    assert refused.returncode != 0
    assert "is more than the hooktest CA signs" in refused.stderr
    assert not (tmp_path / "long.key").exists()


def test_admin_cannot_sign_the_proxies_route_names_with_a_declared_ca(
    site: Site, tmp_path: pathlib.Path
) -> None:
    # clients that route by server name trust only the cluster's CA there, and only a proxy
    # holds those names; a declared CA never signs them, so that no client ever could
    for host in ("*.tether.cluster.local", "kube-6c-6c.tether.cluster.local"):
        refused = site.tetherctl(
            "auth",
            "sign",
            "--format=hooktest",
            f"--host=gadget.example.com,{host}",
            f"--out={tmp_path / 'routes'}",
            check=False,
        )
        assert refused.returncode != 0
        assert f"{host!r} is under tether.cluster.local, the proxies' route names" in refused.stderr
        assert not (tmp_path / "routes.key").exists()


def test_user_without_the_sign_rule_is_refused_naming_it(
    site: Site, tmp_path: pathlib.Path
) -> None:
    cluster = site.cluster
    cluster.add_user("uma", PASSWORD, roles=["access"], logins=["uma"])
    cluster.login("uma", PASSWORD)
    refused = cluster.as_user(
        "uma",
        "tetherctl",
        "auth",
        "sign",
        "--format=hooktest",
        "--host=gadget.example.com",
        f"--out={tmp_path / 'uma'}",
        check=False,
        env=site.env,
    )
    assert refused.returncode != 0
    assert "may not have certificates signed by the hooktest CA" in refused.stderr
    assert "sign on cert_authority" in refused.stderr
    denied = [e for e in issued_events(site) if e["user"] == "uma"]
    assert denied and denied[-1]["success"] is False


def test_user_whose_role_allows_signing_gets_a_server_certificate(
    site: Site, tmp_path: pathlib.Path
) -> None:
    cluster = site.cluster
    role = tmp_path / "role.yaml"
    role.write_text(SIGNER_ROLE)
    site.tetherctl("create", str(role))
    cluster.add_user("sol", PASSWORD, roles=["access", "cert-signer"], logins=["sol"])
    cluster.login("sol", PASSWORD)
    cluster.as_user(
        "sol",
        "tetherctl",
        "auth",
        "sign",
        "--format=hooktest",
        "--host=db.sol.example",
        f"--out={tmp_path / 'sol'}",
        "--ttl=24h",
        env=site.env,
    )
    ca = tmp_path / "hooktest.pem"
    ca.write_text(site.export("hooktest"))
    openssl("verify", "-CAfile", ca, tmp_path / "sol.crt")
    assert any(e["user"] == "sol" and e["success"] is True for e in issued_events(site))


# --- hosts ----------------------------------------------------------------------------------


async def test_host_with_the_role_gets_a_client_certificate_subject_exactly_cn(
    site: Site, tmp_path: pathlib.Path
) -> None:
    key = pki.generate_private_key("ecdsa-p256")
    async with host_client(site.cluster, ("Hooktest",)) as client:
        signed = await client.sign_certificate(
            "hooktest_client",
            key.public_key(),
            "alice",
            usage="client",
            ttl=datetime.timedelta(minutes=10),
        )
        cas = await client.authority_certificates("hooktest_client", CLUSTER)
    cert = x509.load_pem_x509_certificate(signed.certificate.encode())
    assert cert.subject.rfc4514_string() == "CN=alice"
    assert cert.public_key() == key.public_key()
    assert list(signed.ca_certs) == cas
    assert "".join(cas) == site.export("hooktest_client")

    crt = tmp_path / "alice.crt"
    crt.write_text(signed.certificate)
    ca = tmp_path / "client-ca.pem"
    ca.write_text("".join(cas))
    assert openssl("verify", "-CAfile", ca, "-purpose", "sslclient", crt).returncode == 0
    issued = [e for e in issued_events(site) if e.get("subject") == "CN=alice"]
    assert issued[-1]["user"] == "gadget-host" and issued[-1]["by"] == "node"


async def test_host_with_the_role_verifies_servers_with_the_server_cas_certificates(
    site: Site,
) -> None:
    async with host_client(site.cluster, ("Hooktest",)) as client:
        pems = await client.authority_certificates("hooktest", CLUSTER)
    assert "".join(pems) == site.export("hooktest")


async def test_node_without_the_role_is_refused_a_client_certificate(site: Site) -> None:
    key = pki.generate_private_key()
    async with host_client(site.cluster, (), name="plain-node") as client:
        with pytest.raises(AccessDenied, match="only hosts with role Hooktest may"):
            await client.sign_certificate(
                "hooktest_client",
                key.public_key(),
                "alice",
                usage="client",
                ttl=datetime.timedelta(minutes=10),
            )
    refused = [e for e in issued_events(site) if e["user"] == "plain-node"]
    assert refused and refused[-1]["success"] is False


async def test_host_with_the_role_is_refused_what_its_role_does_not_name(site: Site) -> None:
    key = pki.generate_private_key()
    async with host_client(site.cluster, ("Hooktest",)) as client:
        # the server CA names no host role
        with pytest.raises(AccessDenied, match="no host may"):
            await client.sign_certificate(
                "hooktest",
                key.public_key(),
                "gadget.example.com",
                usage="server",
                ttl=datetime.timedelta(hours=1),
                dns_names=["gadget.example.com"],
            )
        with pytest.raises(TetherError, match=r"TTL 2h is more than the hooktest_client CA"):
            await client.sign_certificate(
                "hooktest_client",
                key.public_key(),
                "alice",
                usage="client",
                ttl=datetime.timedelta(hours=2),
            )
        with pytest.raises(TetherError, match="signs client certificates, not server"):
            await client.sign_certificate(
                "hooktest_client",
                key.public_key(),
                "alice",
                usage="server",
                ttl=datetime.timedelta(minutes=5),
                dns_names=["alice.example"],
            )
        with pytest.raises(TetherError, match="may not contain"):
            await client.sign_certificate(
                "hooktest_client",
                key.public_key(),
                "alice,O=evil",
                usage="client",
                ttl=datetime.timedelta(minutes=5),
            )
        with pytest.raises(TetherError, match="cannot sign a certificate for that public key"):
            await client.sign_certificate(
                "hooktest_client",
                "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
                "alice",
                usage="client",
                ttl=datetime.timedelta(minutes=5),
            )
        with pytest.raises(TetherError, match="no CA type 'nosuch' is declared"):
            await client.sign_certificate(
                "nosuch", key.public_key(), "alice", usage="client", ttl=datetime.timedelta(1)
            )


def test_the_trust_exchange_never_carries_a_declared_ca(site: Site) -> None:
    # what a leaf's handshake would receive from this cluster
    from tether.trust.handshake import TrustExchange

    cas = ClusterAuthorities.load_or_create(site.cluster.data_dir / "keys", CLUSTER)
    declared = cas.with_declared(site.cluster.data_dir / "keys", ["hooktest", "hooktest_client"])
    sent = json.dumps(TrustExchange.of(CLUSTER, declared).to_json())
    for ca in declared.declared.values():
        body = ca.cert_pem().decode().splitlines()[1]
        assert body not in sent
    assert os.environ.get("TETHER_HOOKTEST_LOG") is None  # the module's env stays its own
