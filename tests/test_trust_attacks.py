"""Attacks on trust between clusters, performed with real processes on 127.0.0.1.

A root cluster ``root`` and two leaves that joined it honestly: ``leaf2`` (the victim) and
``evil`` (an attacker who holds a leaf, its CA keys and a live invitation token). The attacker
tries to take over leaf2's name at the handshake, to join with a CA that names another cluster,
and to open tunnels under leaf2's name and the root's; each is refused, the refusal audited on
the root, and leaf2 stays trusted with its own CAs and online beside the attempts.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio

from tether import pki
from tether.errors import TetherError
from tether.testing.cluster import RunningCluster, start_cluster, wait_for
from tether.testing.impostor import exchange, forge_certificate, handshake, hold_tunnel


@attrs.frozen
class Clusters:
    root: RunningCluster
    leaf2: RunningCluster
    evil: RunningCluster
    directory: pathlib.Path

    def invite(self) -> str:
        added = self.root.tetherctl("tokens", "add", "--type=trusted_cluster", "--format=json")
        return str(json.loads(added.stdout)["token"])

    def trust_root(self, leaf: RunningCluster, *args: str, check: bool = True) -> Any:
        """``tetherctl create`` the guide's trusted_cluster on ``leaf``, with a new token."""
        path = self.directory / f"trusted-{leaf.name}-{time.monotonic_ns()}.yaml"
        path.write_text(
            f"kind: trusted_cluster\nversion: v2\nmetadata:\n  name: root\nspec:\n"
            f"  enabled: true\n  token: {self.invite()}\n"
            f"  web_proxy_addr: {self.root.proxy_addr}\n  tunnel_addr: {self.root.proxy_addr}\n"
            f"  ca_pin: {self.root.ca_pin}\n"
            "  role_map: [{remote: access, local: [access]}]\n"
        )
        return leaf.tetherctl("create", *args, str(path), check=check)


def remote(root: RunningCluster, name: str) -> dict[str, Any]:
    found = root.tetherctl("get", f"rc/{name}", "--format=json", check=False)
    if found.returncode != 0:
        return {}
    docs = json.loads(found.stdout)
    return dict(docs[0] if isinstance(docs, list) else docs)


def online(root: RunningCluster, name: str) -> bool:
    return (remote(root, name).get("status") or {}).get("connection") == "online"


def stored_cas(root: RunningCluster, name: str) -> dict[str, Any]:
    """The leaf CAs the root holds under ``name``, as ``tetherctl get`` shows them."""
    out = {}
    for ca_type in ("host", "tls"):
        docs = json.loads(
            root.tetherctl("get", f"cert_authority/{ca_type}/{name}", "--format=json").stdout
        )
        out[ca_type] = (docs[0] if isinstance(docs, list) else docs)["spec"]["active_keys"]
    return out


def audit(cluster: RunningCluster, event_type: str) -> list[dict[str, Any]]:
    found = cluster.tetherctl("audit", "search", f"--type={event_type}", "--format=json")
    return list(json.loads(found.stdout))


@contextlib.contextmanager
def joined_clusters(directory: pathlib.Path) -> Iterator[Clusters]:
    """The root and its two leaves, both online."""
    root = start_cluster(directory / "root", "root")
    started = [root]
    try:
        leaf2 = start_cluster(directory / "leaf2", "leaf2")
        started.append(leaf2)
        evil = start_cluster(directory / "evil", "evil")
        started.append(evil)
        found = Clusters(root, leaf2, evil, directory)
        found.trust_root(leaf2)
        found.trust_root(evil)
        wait_for(lambda: online(root, "leaf2") and online(root, "evil"), "both leaves online")
        yield found
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    """Shared by the attacks that leave leaf2 trusted with its own CAs and online."""
    with joined_clusters(tmp_path_factory.mktemp("attacks")) as found:
        yield found


@pytest.fixture
def own_clusters(tmp_path: pathlib.Path) -> Iterator[Clusters]:
    """Clusters of the test's own, for a test that ends with leaf2 replaced."""
    with joined_clusters(tmp_path) as found:
        yield found


def test_leaf_with_valid_token_cannot_take_over_another_leafs_name(clusters: Clusters) -> None:
    root = clusters.root
    before = stored_cas(root, "leaf2")
    # the attacker's own tetherd, named leaf2, with CAs of its own, and a live invitation
    impostor = start_cluster(clusters.directory / "impostor", "leaf2")
    try:
        refused = clusters.trust_root(impostor, check=False)
        assert refused.returncode == 1
        assert (
            "cluster 'leaf2' is already a leaf of 'root' with other CAs; a handshake cannot "
            "replace them" in refused.stderr
        )
        assert "run `tetherctl rm rc/leaf2` on the root first" in refused.stderr
        assert json.loads(impostor.tetherctl("get", "tc", "--format=json").stdout) == []
        (leaf_side,) = audit(impostor, "trusted_cluster.refused")
        assert leaf_side["root"] == "root" and "other CAs" in leaf_side["reason"]
    finally:
        impostor.stop()
    refusal = audit(root, "trusted_cluster.refused")[-1]
    assert (refusal["leaf"], refusal["success"]) == ("leaf2", False)
    assert "already a leaf of 'root' with other CAs" in refusal["reason"]
    assert stored_cas(root, "leaf2") == before, "the root must keep leaf2's own CAs"
    assert online(root, "leaf2")

    # beside it, the real leaf2 re-creates its trusted_cluster: same CAs, joined again
    clusters.trust_root(clusters.leaf2, "--force")
    joined = audit(root, "trusted_cluster.joined")[-1]
    assert (joined["leaf"], joined["again"]) == ("leaf2", True)
    assert stored_cas(root, "leaf2") == before
    wait_for(lambda: online(root, "leaf2"), "leaf2 to stay online")


def _refused_handshake(clusters: Clusters, body: dict[str, Any]) -> str:
    with pytest.raises(TetherError) as refused:
        trio.run(handshake, clusters.root, body)
    refusal = audit(clusters.root, "trusted_cluster.refused")[-1]
    assert refusal["success"] is False
    assert refusal["reason"] == refused.value.message
    return str(refused.value)


def test_leaf_cannot_join_with_a_ca_whose_subject_names_another_cluster(
    clusters: Clusters,
) -> None:
    # the attacker's CA says O=leaf2, handed over under the attacker's own name
    forged = pki.ClusterAuthorities.generate("leaf2")
    err = _refused_handshake(
        clusters,
        {"token": clusters.invite(), "leaf": exchange("evil2", forged)},
    )
    assert "the X.509 CA of 'evil2' names cluster leaf2 in its subject, not 'evil2'" in err
    assert remote(clusters.root, "evil2") == {}
    # so a tunnel signed by that CA, claiming leaf2, meets a CA the root never trusted
    cert, key = forge_certificate(forged.tls, "leaf2", "proxy-of-evil2")
    attempt = trio.run(hold_tunnel, clusters.root, cert, key, "leaf2")
    assert (attempt.connected, attempt.streams) == ([], [])
    assert attempt.error is not None

    # an end-entity certificate is no CA, whatever its subject says
    own = pki.ClusterAuthorities.generate("evil2")
    leaf_cert, _ = forge_certificate(own.tls, "evil2", "proxy-of-evil2")
    err = _refused_handshake(
        clusters, {"token": clusters.invite(), "leaf": exchange("evil2", own, leaf_cert)}
    )
    assert "the X.509 CA of 'evil2' is not a CA certificate" in err
    assert remote(clusters.root, "evil2") == {}
    assert online(clusters.root, "leaf2")


@pytest.mark.parametrize("claimed", ["leaf2", "root"])
def test_leaf_tunnel_that_claims_another_clusters_name_is_refused_and_audited(
    clusters: Clusters, claimed: str
) -> None:
    # the attacker holds evil's CA key (its own leaf), which the root trusts for evil's tunnels
    evil_ca = pki.ClusterAuthorities.load_or_create(clusters.evil.data_dir / "keys", "evil").tls
    before = remote(clusters.root, "leaf2")["status"]["proxies"]
    cert, key = forge_certificate(evil_ca, claimed, "proxy-of-evil")
    attempt = trio.run(hold_tunnel, clusters.root, cert, key, claimed)
    assert (attempt.connected, attempt.streams) == ([], [])

    def refusals() -> list[dict[str, Any]]:
        return [
            e
            for e in audit(clusters.root, "tunnel.refused")
            if e.get("claimed") == f"proxy-of-evil@{claimed}"
        ]

    wait_for(lambda: bool(refusals()), "the root to audit the refused tunnel")
    event = refusals()[-1]
    assert event["success"] is False
    assert f"claims cluster {claimed!r} but is signed by a CA of evil" in event["reason"]
    assert remote(clusters.root, "leaf2")["status"]["proxies"] == before
    assert online(clusters.root, "leaf2")

    # beside it, the same CA's certificate for evil itself opens a tunnel as evil
    cert, key = forge_certificate(evil_ca, "evil", "proxy-of-evil")
    honest = trio.run(hold_tunnel, clusters.root, cert, key, "evil")
    assert honest.connected and honest.error is None


def test_root_admin_replaces_a_rebuilt_leaf_by_removing_it_first(own_clusters: Clusters) -> None:
    """The way the refusal names: ``tetherctl rm rc/leaf2`` on the root, then the new leaf2
    joins with its own CAs; the old leaf2's tunnels are no longer trusted."""
    clusters = own_clusters
    root = clusters.root
    old = stored_cas(root, "leaf2")
    rebuilt = start_cluster(clusters.directory / "rebuilt", "leaf2")
    try:
        root.tetherctl("rm", "rc/leaf2")
        wait_for(lambda: not online(root, "leaf2"), "the old leaf2 to be cut off")
        clusters.trust_root(rebuilt)
        assert stored_cas(root, "leaf2") != old
        wait_for(lambda: online(root, "leaf2"), "the rebuilt leaf2 to come online")
        old_ca = pki.ClusterAuthorities.load_or_create(
            clusters.leaf2.data_dir / "keys", "leaf2"
        ).tls
        cert, key = forge_certificate(old_ca, "leaf2", "leaf2-node")
        attempt = trio.run(hold_tunnel, root, cert, key, "leaf2")
        assert attempt.connected == [] and attempt.error is not None
        # the old leaf2 keeps redialling with its certificate: each attempt is refused
        wait_for(
            lambda: any(
                "is signed by a CA this cluster does not trust" in e["reason"]
                for e in audit(root, "tunnel.refused")
                if str(e.get("claimed", "")).endswith("@leaf2")
            ),
            "the root to audit the old leaf2's refused tunnels",
        )
        assert online(root, "leaf2")
    finally:
        rebuilt.stop()
