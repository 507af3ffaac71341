"""A node joins the cluster with a token through the proxy, and can then tunnel into it."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest
import trio

from tether import pki
from tether.auth.http_client import AuthClient
from tether.datadir import admin_identity_paths
from tether.errors import AccessDenied, TrustError
from tether.node.join import (
    JoinedIdentity,
    join_cluster,
    load_identity,
    renew_identity,
    renewal_due,
    save_identity,
)
from tether.testing.cluster import RunningCluster
from tether.tlsstream import TLSStream
from tether.tunnel.agent import AgentPool
from tether.tunnel.server import TUNNEL_ALPN
from tether.tunnel.transport import IncomingStream


def node_token(cluster: RunningCluster, *args: str) -> str:
    out = cluster.tetherctl("tokens", "add", "--type=node", "--format=json", *args).stdout
    return str(json.loads(out)["token"])


async def join_node(
    cluster: RunningCluster, host_id: str, hostname: str, **options: Any
) -> JoinedIdentity:
    """Join ``cluster`` as a node with a fresh token, trusting the proxy by the CA pin."""
    return await join_cluster(
        cluster.proxy_addr,
        node_token(cluster),
        host_id=host_id,
        hostname=hostname,
        ca_pin=cluster.ca_pin,
        **options,
    )


async def test_node_joins_with_a_token_and_holds_standard_host_certificates(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    cluster = tether_cluster
    joined = await join_node(cluster, "node-1", "web-1", addresses=["127.0.0.1"])
    assert joined.identity.kind == "node"
    assert joined.identity.username == "node-1"
    verified = pki.verify_x509_cert(joined.tls_cert, trusted_cas=list(joined.tls_cas))
    assert (verified.kind, verified.cluster) == ("node", "main")

    save_identity(tmp_path / "node", joined)
    assert load_identity(tmp_path / "node") is not None
    listing = (
        await trio.run_process(
            ["ssh-keygen", "-L", "-f", str(tmp_path / "node" / "ssh_host_cert.pub")],
            capture_stdout=True,
        )
    ).stdout.decode()
    assert "host certificate" in listing
    principals = listing.split("Principals:")[1].split("Critical Options:")[0].split()
    # the cluster-qualified names are what `ssh visitor@web-1.main` checks (tether config)
    assert principals == ["node-1", "web-1", "node-1.main", "web-1.main", "127.0.0.1"]

    events = json.loads(
        cluster.tetherctl("audit", "search", "--type=host.joined", "--format=json").stdout
    )
    assert any(e["user"] == "node-1" and e["role"] == "node" for e in events)


async def test_joined_node_renews_its_certificates_with_the_ones_it_holds(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    joined = await join_node(cluster, "node-renewing", "web-2")
    assert renewal_due(joined) < joined.tls_cert.not_valid_after_utc
    # through the proxy, as a node in tunnel mode asks: its certificate is the credential
    context = pki.client_ssl_context(
        trusted_cas=list(joined.tls_cas), cert=joined.tls_cert, key=joined.private_key
    )
    async with AuthClient(f"https://{cluster.proxy_addr}", context) as api:
        renewed = await renew_identity(api, hostname="web-2")
        # a renewal never widens what a host may claim to be
        with pytest.raises(
            AccessDenied, match=re.escape("names its certificate does not hold: 10.9.8.7, db-prod")
        ):
            await renew_identity(api, hostname="db-prod", addresses=["10.9.8.7"])
    assert (renewed.identity.username, renewed.identity.kind) == ("node-renewing", "node")
    assert pki.public_key_to_pem(renewed.private_key.public_key()) != pki.public_key_to_pem(
        joined.private_key.public_key()
    ), "a renewal brings a new key"
    assert renewed.tls_cert.not_valid_after_utc >= joined.tls_cert.not_valid_after_utc
    pki.verify_x509_cert(renewed.tls_cert, trusted_cas=list(renewed.tls_cas))
    events = json.loads(
        cluster.tetherctl("audit", "search", "--type=host.renewed", "--format=json").stdout
    )
    assert [e["user"] for e in events] == ["node-renewing"]

    # the cluster's admin holds no host certificates: nothing to renew
    cert, key, ca = admin_identity_paths(cluster.data_dir)
    admin = pki.client_ssl_context(
        trusted_cas=pki.load_certs(ca.read_bytes()),
        cert=pki.load_cert(cert.read_bytes()),
        key=pki.load_private_key(key.read_bytes()),
    )
    async with AuthClient(f"https://{cluster.auth_addr}", admin) as api:
        with pytest.raises(AccessDenied, match="has no host certificates to renew here"):
            await renew_identity(api, hostname="anything")


async def test_wrong_expired_or_foreign_tokens_are_refused(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster

    async def join(token: str, role: str = "node") -> Any:
        return await join_cluster(
            cluster.proxy_addr,
            token,
            host_id="node-2",
            hostname="db-1",
            role=role,
            ca_pin=cluster.ca_pin,
        )

    with pytest.raises(AccessDenied, match="the token is unknown or expired"):
        await join("not-a-token")
    short = node_token(cluster, "--ttl=1s")
    await trio.sleep(1.5)
    with pytest.raises(AccessDenied, match="the token is unknown or expired"):
        await join(short)
    with pytest.raises(AccessDenied, match="not a Proxy token"):
        await join(node_token(cluster), role="proxy")
    invite = json.loads(
        cluster.tetherctl("tokens", "add", "--type=trusted_cluster", "--format=json").stdout
    )["token"]
    with pytest.raises(AccessDenied, match="not a Node token"):
        await join(invite)
    failures = json.loads(
        cluster.tetherctl("audit", "search", "--type=host.join.failed", "--format=json").stdout
    )
    assert any(e["reason"] == "the token is unknown or expired" for e in failures)


async def test_join_refuses_a_proxy_that_does_not_present_the_pinned_ca(
    tether_cluster: RunningCluster,
) -> None:
    with pytest.raises(TrustError, match="does not present the pinned CA"):
        await join_cluster(
            tether_cluster.proxy_addr,
            "whatever",
            host_id="n",
            hostname="n",
            ca_pin="sha256:" + "0" * 64,
        )


async def test_a_joined_node_tunnels_into_its_proxy(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    joined = await join_node(cluster, "node-3", "tunnel-node")
    context = pki.client_ssl_context(
        trusted_cas=list(joined.tls_cas),
        cert=joined.tls_cert,
        key=joined.private_key,
        alpn=[TUNNEL_ALPN],
    )
    host, port = cluster.proxy_addr.rsplit(":", 1)

    async def dial(addr: str) -> trio.abc.Stream:
        return await TLSStream.connect(host, int(port), context, server_hostname="localhost")

    async def refuse(request: IncomingStream) -> None:
        request.reject("nothing to serve in this test")

    pool = AgentPool(
        cluster="main", tunnel_addr=cluster.proxy_addr, dial=dial, handle_stream=refuse
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        with trio.fail_after(15):
            await pool.wait_connected(1)
        assert pool.connected_proxies() == ["main-node"]
        nursery.cancel_scope.cancel()
    assert "tunnel" in cluster.log_text() and "from cluster main" in cluster.log_text()
