"""``tetherctl auth export``: a cluster's CA public keys, in the forms OpenSSH and TLS tools
read, checked with those tools (``ssh-keygen``, ``openssl``) rather than by string.

Root cluster ``root`` and leaf cluster ``leaf`` trusting it, shared by the module; the one test
that changes a CA starts a cluster of its own.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import attrs
import pytest

from tether import pki
from tether.testing.cluster import RunningCluster, served_certificate, start_cluster
from tether.testing.trusted_clusters import create_trusted_cluster, invite, trusted_cluster_yaml

pytestmark = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None or shutil.which("openssl") is None,
    reason="needs OpenSSH's ssh-keygen and openssl",
)

PASSWORD = "correct horse battery staple"


@attrs.frozen
class Clusters:
    root: RunningCluster
    leaf: RunningCluster


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    """A root and a leaf that trusts it (the handshake stores each side's CAs on the other)."""
    directory = tmp_path_factory.mktemp("export")
    started: list[RunningCluster] = []
    try:
        root = start_cluster(directory / "root", "root")
        started.append(root)
        leaf = start_cluster(directory / "leaf", "leaf")
        started.append(leaf)
        create_trusted_cluster(leaf, trusted_cluster_yaml(root, invite(root)))
        yield Clusters(root, leaf)
    finally:
        for cluster in started:
            cluster.stop()


def export(cluster: RunningCluster, *args: str) -> str:
    return cluster.tetherctl("auth", "export", *args).stdout


def tool(*args: str | pathlib.Path) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)
    assert done.returncode == 0, f"{' '.join(map(str, args))}: {done.stderr}"
    return done.stdout


def test_admin_exports_the_user_ca_for_sshd_and_a_login_certificate_verifies_against_it(
    clusters: Clusters, tmp_path: pathlib.Path
) -> None:
    root = clusters.root
    ca_file = tmp_path / "tether_user_ca.pub"
    ca_file.write_text(export(root, "--type=user"))

    # ssh-keygen reads the file as sshd reads TrustedUserCAKeys: one key per line
    listed = tool("ssh-keygen", "-l", "-f", ca_file).split()
    fingerprint = listed[1]
    assert fingerprint.startswith("SHA256:") and listed[-1] == "(ED25519)"
    assert export(root, "--type=user", "--fingerprint") == f"user {fingerprint}\n"

    root.add_user("uma", PASSWORD, roles=["access"], logins=["uma"])
    root.login("uma", PASSWORD)
    certificate = next(root.user_home("uma").rglob("key-cert.pub"))
    shown = tool("ssh-keygen", "-L", "-f", certificate)
    assert f"Signing CA: ED25519 {fingerprint} (using ssh-ed25519)" in shown


def test_admin_exports_the_host_ca_as_known_hosts_lines_for_the_clusters_hosts(
    clusters: Clusters, tmp_path: pathlib.Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(export(clusters.root, "--type=host"))

    found = tool("ssh-keygen", "-F", "web-1.root", "-f", known_hosts)
    assert "# Host web-1.root found: line 1 CA" in found
    other = subprocess.run(
        ["ssh-keygen", "-F", "web-1.leaf", "-f", str(known_hosts)], capture_output=True, check=False
    )
    assert other.returncode == 1 and not other.stdout
    ca_key = tmp_path / "host_ca.pub"
    ca_key.write_text(known_hosts.read_text().split(maxsplit=2)[2])
    fingerprint = tool("ssh-keygen", "-l", "-f", ca_key).split()[1]
    assert export(clusters.root, "--type=host", "--fingerprint") == f"host {fingerprint}\n"


def test_admin_exports_the_tls_ca_that_verifies_the_proxy_and_whose_pin_logins_take(
    clusters: Clusters, tmp_path: pathlib.Path
) -> None:
    root = clusters.root
    ca_file = tmp_path / "tether-ca.pem"
    ca_file.write_text(export(root, "--type=tls"))
    proxy_cert = tmp_path / "proxy.pem"
    proxy_cert.write_bytes(pki.cert_to_pem(served_certificate(root.proxy_addr)))

    subject = tool("openssl", "x509", "-noout", "-subject", "-nameopt", "compat", "-in", ca_file)
    assert subject == "subject=/O=root/OU=Tether X.509 CA/CN=root\n"
    assert tool("openssl", "verify", "-CAfile", ca_file, proxy_cert).endswith(": OK\n")
    assert pki.ca_pin(pki.load_cert(ca_file.read_bytes())) == root.ca_pin
    assert export(root, "--type=tls", "--fingerprint") == f"tls {root.ca_pin}\n"


def test_export_without_a_type_prints_every_ca_as_tctl_does(clusters: Clusters) -> None:
    printed = export(clusters.root).splitlines()

    assert printed[0].startswith("ssh-ed25519 ") and printed[0].endswith(" tether-user-ca@root")
    assert printed[1].startswith("@cert-authority *.root,root ssh-ed25519 ")
    assert printed[2] == "-----BEGIN CERTIFICATE-----" and printed[-1].startswith("-----END")
    types = [line.split()[0] for line in export(clusters.root, "--fingerprint").splitlines()]
    assert types == ["user", "host", "tls"]


def test_leaf_admin_exports_the_root_cas_the_leaf_trusts(clusters: Clusters) -> None:
    root, leaf = clusters.root, clusters.leaf

    for ca_type in ("user", "host", "tls"):
        assert export(leaf, f"--type={ca_type}", "--cluster=root") == export(
            root, f"--type={ca_type}"
        )
    # the root keeps a leaf's host and TLS CAs, never its user CA (trust goes one way)
    assert export(root, "--type=host", "--cluster=leaf") == export(leaf, "--type=host")
    refused = root.tetherctl("auth", "export", "--type=user", "--cluster=leaf", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        "ERROR: this cluster holds no user CA of cluster 'leaf'; it holds: host, tls\n"
    )


def test_export_of_an_unknown_cluster_names_the_clusters_it_knows(clusters: Clusters) -> None:
    refused = clusters.root.tetherctl("auth", "export", "--cluster=elsewhere", check=False)

    assert refused.returncode == 1
    assert refused.stderr == (
        "ERROR: cluster 'elsewhere' is neither this cluster nor one whose CAs it holds; "
        "known clusters: leaf, root\n"
    )


def test_export_during_a_rotation_includes_the_keys_still_trusted(tmp_path: pathlib.Path) -> None:
    cluster = start_cluster(tmp_path / "main", "main")
    try:
        previous = pki.ssh_public_key_line(pki.generate_private_key(), "previous-user-ca@main")
        document = cluster.tetherctl("get", "cert_authority/user/main").stdout
        # as an operator would edit it: `get` leaves the empty additional_trusted_keys out
        assert "additional_trusted_keys" not in document, document
        document += f"  additional_trusted_keys:\n    ssh:\n    - {previous}\n"
        edited = tmp_path / "user_ca.yaml"
        edited.write_text(document)
        cluster.tetherctl("create", "--force", str(edited))

        exported = export(cluster, "--type=user").splitlines()
        assert len(exported) == 2 and exported[1] == previous
        assert exported[0].endswith(" tether-user-ca@main")
    finally:
        cluster.stop()


def test_leaf_admin_is_told_a_disabled_roots_cas_are_not_active(clusters: Clusters) -> None:
    root, leaf = clusters.root, clusters.leaf
    create_trusted_cluster(leaf, trusted_cluster_yaml(root, invite(root), enabled=False), "--force")
    try:
        refused = leaf.tetherctl("auth", "export", "--cluster=root", check=False)
    finally:
        create_trusted_cluster(leaf, trusted_cluster_yaml(root, invite(root)), "--force")

    assert refused.returncode == 1
    assert refused.stderr == (
        "ERROR: the trust in root cluster 'root' is disabled, so its CAs are not active here; "
        "set enabled: true in trusted_cluster/root to export them\n"
    )
    assert export(leaf, "--type=user", "--cluster=root") == export(root, "--type=user")
