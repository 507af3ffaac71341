"""Prometheus scrapes the root proxy's ``/metrics`` and sees its leaves and tunnel-mode nodes.

Most tests use real processes: a root and a leaf cluster (``tetherd``, auth + proxy each) where
the leaf trusts the root, so the leaf's proxy keeps a tunnel to the root's; a node's tunnel
comes from a ``tether.testing.tunnel_peer`` agent holding a node certificate of the root.
Scrapers present real certificates over TLS: the admin identity ``tetherctl -c`` uses, or
certificates minted with the root's CA keys (read from its data directory) for users and
hosts. Sessions through a tunnel are driven in memory, with a tunnel server and an agent pool
on trio's autojump clock.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import random
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import httpx
import pytest
import tether_hooktest
import trio
import trio.testing
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import tether
from tether import pki
from tether.datadir import admin_identity_paths
from tether.proxy.metrics import build_registry
from tether.testing.cluster import RunningCluster, start_cluster
from tether.testing.memory import memory_tls_stream_pair
from tether.testing.tunnel_peer import PeerProcess, start_agent
from tether.tunnel.agent import AgentPool, Backoff
from tether.tunnel.control import ProxyInfo
from tether.tunnel.server import TunnelServer
from tether.tunnel.transport import IncomingStream

ROOT = "root"
LEAF = "leaf"
NOW = datetime.datetime.now(datetime.UTC)

METRICS_READER_ROLE = """\
kind: role
version: v7
metadata:
  name: metrics-reader
spec:
  allow:
    rules:
      - resources: [metrics]
        verbs: [read]
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@attrs.frozen
class Clusters:
    root: RunningCluster
    leaf: RunningCluster
    directory: pathlib.Path


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    directory = tmp_path_factory.mktemp("metrics")
    root = start_cluster(directory / ROOT, ROOT)
    started = [root]
    try:
        leaf = start_cluster(directory / LEAF, LEAF)
        started.append(leaf)
        role = directory / "metrics-reader.yaml"
        role.write_text(METRICS_READER_ROLE)
        root.tetherctl("create", str(role))
        token = json.loads(
            root.tetherctl("tokens", "add", "--type=trusted_cluster", "--format=json").stdout
        )["token"]
        trusted = directory / "trusted_cluster.yaml"
        trusted.write_text(
            f"""\
kind: trusted_cluster
version: v2
metadata:
  name: {ROOT}
spec:
  enabled: true
  token: "{token}"
  tunnel_addr: {root.proxy_addr}
  web_proxy_addr: {root.proxy_addr}
  ca_pin: {root.ca_pin}
  role_map:
    - remote: access
      local: [access]
"""
        )
        leaf.tetherctl("create", str(trusted))
        yield Clusters(root, leaf, directory)
    finally:
        for process in reversed(started):
            process.stop()


# --- scraping ----------------------------------------------------------------------------------


def admin_client(cluster: RunningCluster) -> httpx.Client:
    cert, key, ca = admin_identity_paths(cluster.data_dir)
    context = pki.client_ssl_context(
        trusted_cas=[pki.load_cert(ca.read_bytes())],
        cert=pki.load_cert(cert.read_bytes()),
        key=pki.load_private_key(key.read_bytes()),
    )
    return httpx.Client(base_url=f"https://{cluster.proxy_addr}", verify=context, timeout=10)


def minted_client(
    cluster: RunningCluster,
    username: str | None,
    *,
    kind: str = "user",
    roles: tuple[str, ...] = (),
) -> httpx.Client:
    """A client of ``cluster``'s proxy with a certificate its CA signed (None: no certificate)."""
    cas = pki.ClusterAuthorities.load_or_create(cluster.data_dir / "keys", cluster.name)
    cert = key = None
    if username is not None:
        who = pki.Identity(
            username=username,
            cluster=cluster.name,
            roles=roles,
            traits={},
            logins=(),
            expires=NOW + datetime.timedelta(hours=1),
            kind=kind,
        )
        key = pki.generate_private_key()
        cert = pki.issue_x509_cert(cas.tls, key.public_key(), who)
    context = pki.client_ssl_context(trusted_cas=[cas.tls.certificate], cert=cert, key=key)
    return httpx.Client(base_url=f"https://{cluster.proxy_addr}", verify=context, timeout=10)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(cluster: RunningCluster) -> Samples:
    with admin_client(cluster) as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_for_scrape(
    cluster: RunningCluster, predicate: Callable[[Samples], bool], what: str, timeout: float = 30
) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(cluster)
        if predicate(samples):
            return samples
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {samples}"
        time.sleep(0.2)


def assert_refused(response: httpx.Response, message: str) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "AccessDenied"
    assert message in error["message"], error
    return dict(error)


def start_node_agent(clusters: Clusters, name: str) -> PeerProcess:
    """A tunnel agent holding a node certificate of the root (a node in tunnel mode)."""
    directory = clusters.directory / name
    directory.mkdir()
    (directory / "cluster.json").write_text(json.dumps({"cluster": ROOT}))
    shutil.copytree(clusters.root.data_dir / "keys", directory / "keys")
    ca = admin_identity_paths(clusters.root.data_dir)[2]
    return start_agent(directory, ca, clusters.root.proxy_addr, "--kind", "node")


# --- what an admin sees --------------------------------------------------------------------------


def test_admin_sees_the_leaf_tunnel_and_the_build_and_process_metrics(clusters: Clusters) -> None:
    samples = wait_for_scrape(
        clusters.root,
        lambda s: value(s, "tether_tunnels", cluster=LEAF, kind="leaf") == 1,
        "the leaf's tunnel",
    )
    leaf = {"cluster": LEAF, "kind": "leaf"}
    assert value(samples, "tether_remote_cluster_connected", **leaf) == 1
    assert value(samples, "tether_tunnel_streams", **leaf) == 0
    assert (value(samples, "tether_tunnel_bytes_total", **leaf, direction="sent") or 0) > 0
    assert value(samples, "tether_tunnel_bytes_total", **leaf, direction="received") is not None
    assert value(samples, "tether_build_info", version=tether.__version__) == 1
    names = {name for name, _ in samples}
    assert {"process_resident_memory_bytes", "process_open_fds", "python_info"} <= names

    # the leaf's own proxy has no tunnels from anyone
    leaf_samples = scrape(clusters.leaf)
    assert not any(name.startswith("tether_tunnel") for name, _ in leaf_samples)


def test_a_node_tunnel_counts_as_kind_node_and_goes_to_zero_when_it_leaves(
    clusters: Clusters,
) -> None:
    node = {"cluster": ROOT, "kind": "node"}
    agent = start_node_agent(clusters, "node-agent")
    try:
        online = wait_for_scrape(
            clusters.root,
            lambda s: value(s, "tether_tunnels", **node) == 1,
            "the node's tunnel",
        )
        assert value(online, "tether_remote_cluster_connected", **node) == 1
        assert value(online, "tether_tunnel_streams", **node) == 0
        assert value(online, "tether_tunnels", cluster=LEAF, kind="leaf") == 1
        sent = value(online, "tether_tunnel_bytes_total", **node, direction="sent")
        assert sent is not None and sent > 0
    finally:
        agent.stop()
    offline = wait_for_scrape(
        clusters.root,
        lambda s: value(s, "tether_remote_cluster_connected", **node) == 0,
        "the node's tunnel to close",
    )
    assert value(offline, "tether_tunnels", **node) == 0
    # a counter never goes back: the closed tunnel's bytes stay counted
    after = value(offline, "tether_tunnel_bytes_total", **node, direction="sent")
    assert after is not None and after >= sent


# --- who may scrape ------------------------------------------------------------------------------


def test_anonymous_scrape_is_refused_with_what_to_present(clusters: Clusters) -> None:
    with minted_client(clusters.root, None) as client:
        response = client.get("/metrics")
    error = assert_refused(response, "a client certificate is required to read metrics")
    assert "admin identity" in error["hint"]


@pytest.mark.parametrize("role", ["editor", "metrics-reader"])
def test_user_whose_roles_allow_read_on_metrics_scrapes(clusters: Clusters, role: str) -> None:
    with minted_client(clusters.root, "prometheus", roles=("access", role)) as client:
        response = client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert "tether_build_info" in response.text


def test_user_whose_role_has_a_plugins_field_scrapes(tmp_path: pathlib.Path) -> None:
    """The proxy reads the scraper's roles with its plugins' role fields (hooktest's)."""
    env = {tether_hooktest.LOG_ENV: str(tmp_path / "hooks.jsonl")}
    cluster = start_cluster(tmp_path / "fields", "fields", env=env)
    try:
        role = tmp_path / "gadget-reader.yaml"
        role.write_text(
            METRICS_READER_ROLE.replace("metrics-reader", "gadget-reader")
            + "    hooktest_gadgets: [spanner]\n"
        )
        cluster.tetherctl("create", str(role), env=env)
        with minted_client(cluster, "prometheus", roles=("gadget-reader",)) as client:
            response = client.get("/metrics")
    finally:
        cluster.stop()
    assert response.status_code == 200, response.text


def test_user_without_a_metrics_rule_is_refused_with_the_reason(clusters: Clusters) -> None:
    with minted_client(clusters.root, "alice", roles=("access", "auditor")) as client:
        response = client.get("/metrics")
    error = assert_refused(
        response,
        "user 'alice' of cluster 'root' may not read metrics: "
        "role rules do not allow read on metrics",
    )
    assert error["hint"] == "roles held: access, auditor"


def test_host_certificates_may_not_scrape(clusters: Clusters) -> None:
    with minted_client(clusters.root, "some-node", kind="node") as client:
        response = client.get("/metrics")
    assert_refused(response, "node 'some-node' of cluster 'root' may not read metrics")


def test_the_leaf_admin_may_not_scrape_the_root(clusters: Clusters) -> None:
    cert, key, _ = admin_identity_paths(clusters.leaf.data_dir)
    root_ca = admin_identity_paths(clusters.root.data_dir)[2]
    context = pki.client_ssl_context(
        trusted_cas=[pki.load_cert(root_ca.read_bytes())],
        cert=pki.load_cert(cert.read_bytes()),
        key=pki.load_private_key(key.read_bytes()),
    )
    with httpx.Client(
        base_url=f"https://{clusters.root.proxy_addr}", verify=context, timeout=10
    ) as client:
        response = client.get("/metrics")
    # refused by auth, which trusts only its own CA: a TrustError that names the stranger
    assert response.status_code == 401, response.text
    assert "admin@leaf" in response.json()["error"]["message"]


# --- sessions through a tunnel, in memory --------------------------------------------------------


async def echo(request: IncomingStream) -> None:
    stream = request.accept()
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


def leaf_proxy(stream: trio.abc.Stream) -> pki.Identity:
    return pki.Identity(
        username="leaf-proxy",
        cluster=LEAF,
        roles=(),
        traits={},
        logins=(),
        expires=NOW + datetime.timedelta(hours=1),
        kind="proxy",
    )


async def test_a_session_through_the_leaf_shows_as_a_stream_and_its_bytes_stay_counted(
    autojump_clock: Any,
) -> None:
    server = TunnelServer(
        proxy_id="p1", cluster=ROOT, authenticate=leaf_proxy, proxies=lambda: [ProxyInfo("p1")]
    )
    registry = build_registry(server)
    leaf = {"cluster": LEAF, "kind": "leaf"}
    with trio.fail_after(60):
        # leaving ``serving`` means the tunnel's handler returned: the tunnel is gone
        async with trio.open_nursery() as serving:

            async def dial(addr: str) -> trio.abc.Stream:
                ours, theirs = memory_tls_stream_pair()
                serving.start_soon(server.handle, theirs)
                return ours

            pool = AgentPool(
                cluster=LEAF,
                tunnel_addr="root:443",
                dial=dial,
                handle_stream=echo,
                backoff=Backoff(initial=1, maximum=8),
                rng=random.Random(1),
            )
            async with trio.open_nursery() as agents:
                await agents.start(pool.run)
                await server.wait_online(LEAF)
                session = await server.dial(LEAF, "echo")
                await session.send_all(b"x" * 10_000)
                received = 0
                while received < 10_000:
                    received += len(await session.receive_some())
                during = parse(generate_latest(registry).decode())
                await session.aclose()
                agents.cancel_scope.cancel()
    assert value(during, "tether_tunnel_streams", **leaf) == 1
    assert value(during, "tether_tunnels", **leaf) == 1
    sent = value(during, "tether_tunnel_bytes_total", **leaf, direction="sent")
    back = value(during, "tether_tunnel_bytes_total", **leaf, direction="received")
    assert sent is not None and sent >= 10_000
    assert back is not None and back >= 10_000
    after = parse(generate_latest(registry).decode())
    assert value(after, "tether_remote_cluster_connected", **leaf) == 0
    assert value(after, "tether_tunnels", **leaf) == 0
    assert value(after, "tether_tunnel_streams", **leaf) == 0
    # the closed tunnel's bytes stay counted: a counter never goes back
    after_sent = value(after, "tether_tunnel_bytes_total", **leaf, direction="sent")
    after_back = value(after, "tether_tunnel_bytes_total", **leaf, direction="received")
    assert after_sent is not None and after_sent >= sent
    assert after_back is not None and after_back >= back
