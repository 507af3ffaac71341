"""Attacks on trust between clusters, performed with real processes on 127.0.0.1.

A root cluster ``root`` and two leaves that joined it honestly: ``leaf2`` (the victim) and
``evil`` (an attacker who holds a leaf, its CA keys and a live invitation token). The attacker
tries to take over leaf2's name at the handshake, to join with a CA that names another cluster,
and to open tunnels under leaf2's name and the root's; each is refused, the refusal audited on
the root, and leaf2 stays trusted with its own CAs and online beside the attempts.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import trio
from cryptography import x509

import tether
from tether import pki
from tether.client.web import establish_trust, proxy_call
from tether.errors import TetherError
from tether.testing.cluster import RunningCluster, start_cluster
from tether.tlsstream import TLSStream
from tether.tunnel.agent import AgentPool, Backoff
from tether.tunnel.server import TUNNEL_ALPN
from tether.tunnel.transport import IncomingStream


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


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


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


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    directory = tmp_path_factory.mktemp("attacks")
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


def _exchange(cluster: str, cas: pki.ClusterAuthorities, tls: x509.Certificate) -> dict[str, Any]:
    return {
        "cluster": cluster,
        "version": tether.__version__,
        "ssh": {
            "user": [cas.ssh_user.public_key_line()],
            "host": [cas.ssh_host.public_key_line()],
        },
        "tls": [pki.cert_to_pem(tls).decode()],
    }


async def _handshake(root: RunningCluster, body: dict[str, Any]) -> Any:
    """The leaf's request of the handshake, as real HTTP to the root's proxy."""
    context = await establish_trust(root.proxy_addr, insecure=False, ca_pin=root.ca_pin)
    return await proxy_call(
        root.proxy_addr, "POST", "/webapi/trustedclusters/validate", context, json=body
    )


def _refused_handshake(clusters: Clusters, body: dict[str, Any]) -> str:
    with pytest.raises(TetherError) as refused:
        trio.run(_handshake, clusters.root, body)
    refusal = audit(clusters.root, "trusted_cluster.refused")[-1]
    assert refusal["success"] is False
    assert refusal["reason"] == refused.value.message
    return str(refused.value)


def _proxy_cert(
    ca: pki.X509CertAuthority, claimed: str, kind: str = "proxy"
) -> tuple[x509.Certificate, pki.PrivateKey]:
    """A tunnel certificate signed by ``ca`` that claims cluster ``claimed``: the key of a CA
    signs whatever its holder asks, so the attacker signs with a CA object renamed."""
    key = pki.generate_private_key()
    identity = pki.Identity(
        username=f"{kind}-of-{ca.cluster}",
        cluster=claimed,
        roles=(),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
        kind=kind,
    )
    signer = pki.X509CertAuthority(claimed, ca.private_key, ca.certificate)
    cert = pki.issue_x509_cert(
        signer, key.public_key(), identity, dns_names=["localhost"], server=True
    )
    return cert, key


@attrs.define
class TunnelAttempt:
    connected: list[str]
    streams: list[dict[str, str]]
    error: str | None


async def _open_tunnel(
    root: RunningCluster, cert: x509.Certificate, key: pki.PrivateKey, cluster: str
) -> TunnelAttempt:
    """Dial the root's proxy with ALPN tether-tunnel/1 presenting ``cert``; wait until the
    tunnel is up or its first attempt has failed, and report every stream the root opened."""
    context = pki.client_ssl_context(
        trusted_cas=[pki.load_cert(root.data_dir.joinpath("keys", "tls_ca.crt").read_bytes())],
        cert=cert,
        key=key,
        alpn=[TUNNEL_ALPN],
    )
    streams: list[dict[str, str]] = []

    async def dial(addr: str) -> trio.abc.Stream:
        host, _, port = addr.rpartition(":")
        return await TLSStream.connect(host, int(port), context, server_hostname="localhost")

    async def record(request: IncomingStream) -> None:
        streams.append(dict(request.metadata))
        request.reject("the attacker only listens")

    pool = AgentPool(
        cluster=cluster,
        tunnel_addr=root.proxy_addr,
        dial=dial,
        handle_stream=record,
        backoff=Backoff(initial=0.2, maximum=0.5),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        with trio.fail_after(20):
            # the pool signals connections only, not failed attempts: poll for either
            while not pool.connected_proxies() and pool.last_error is None:  # noqa: ASYNC110
                await trio.sleep(0.05)
        attempt = TunnelAttempt(pool.connected_proxies(), streams, pool.last_error)
        nursery.cancel_scope.cancel()
    return attempt


def test_leaf_cannot_join_with_a_ca_whose_subject_names_another_cluster(
    clusters: Clusters,
) -> None:
    # the attacker's CA says O=leaf2, handed over under the attacker's own name
    forged = pki.ClusterAuthorities.generate("leaf2")
    err = _refused_handshake(
        clusters,
        {"token": clusters.invite(), "leaf": _exchange("evil2", forged, forged.tls.certificate)},
    )
    assert "the X.509 CA of 'evil2' names cluster leaf2 in its subject, not 'evil2'" in err
    assert remote(clusters.root, "evil2") == {}
    # so a tunnel signed by that CA, claiming leaf2, meets a CA the root never trusted
    cert, key = _proxy_cert(forged.tls, "leaf2")
    attempt = trio.run(_open_tunnel, clusters.root, cert, key, "leaf2")
    assert (attempt.connected, attempt.streams) == ([], [])
    assert attempt.error is not None

    # an end-entity certificate is no CA, whatever its subject says
    own = pki.ClusterAuthorities.generate("evil2")
    leaf_cert, _ = _proxy_cert(own.tls, "evil2")
    err = _refused_handshake(
        clusters, {"token": clusters.invite(), "leaf": _exchange("evil2", own, leaf_cert)}
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
    cert, key = _proxy_cert(evil_ca, claimed)
    attempt = trio.run(_open_tunnel, clusters.root, cert, key, claimed)
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
    cert, key = _proxy_cert(evil_ca, "evil")
    honest = trio.run(_open_tunnel, clusters.root, cert, key, "evil")
    assert honest.connected and honest.error is None
