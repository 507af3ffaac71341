"""Trust pushed by a watch: auth follows its store, and proxies and nodes follow auth.

The auth service keeps its trust snapshot current from a watch on the store
(:mod:`tether.auth.trust_feed`), so a write by any auth server of the store counts, and answers
``GET /v1/trust?known=REV&wait=SECONDS`` as a watch: at once for an old revision, as soon as
the trust changes, or after the wait with ``unchanged``. Proxies and nodes hold that request
open instead of polling; a proxy answers its nodes' watches from its own copy. The first tests
drive the feed in this process over a real SQLite store; the others run real daemons.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import itertools
import json
import pathlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.testing

from tether import pki
from tether.auth.http_client import WATCH_BACKOFF_MAX, WATCH_BACKOFF_MIN, AuthClient
from tether.auth.service import AuthService
from tether.auth.trust_feed import WATCHES_PER_CALLER, TrustFeed
from tether.backend import Op, open_sqlite
from tether.config import default_config
from tether.errors import AccessDenied, RateLimited
from tether.plugins import get_plugin_manager
from tether.resources import KindRegistry, parse_resources, resource_to_bytes
from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_proxy
from tether.testing.http import free_port
from tether.testing.impostor import exchange, forge_certificate, handshake, hold_tunnel
from tether.testing.roles import core_registry
from tether.trust import ClusterTrust
from tether.trust.cache import TrustCache
from tether.trust.handshake import TrustExchange, ca_resources

CLUSTER = "main"
NOW = datetime.datetime.now(datetime.UTC)


def host(kind: str = "node", *, cluster: str = CLUSTER, username: str = "node-1") -> pki.Identity:
    return pki.Identity(
        username=username,
        cluster=cluster,
        roles=(),
        traits={},
        logins=(),
        expires=NOW + datetime.timedelta(hours=1),
        kind=kind,
    )


def role_bytes(registry: KindRegistry, name: str, login: str = "visitor") -> bytes:
    text = (
        f"kind: role\nversion: v7\nmetadata: {{name: {name}}}\n"
        f"spec:\n  allow: {{logins: [{login}]}}\n"
    )
    (role,) = parse_resources(text, "role.yaml", registry)
    return resource_to_bytes(role)


# --- the feed, in this process over a real store --------------------------------------------


@pytest.fixture
async def auth(tmp_path: pathlib.Path) -> AsyncIterator[AuthService]:
    """An auth service whose feed follows its store, as the daemon runs it."""
    pm = get_plugin_manager()
    config = default_config(data_dir=tmp_path, cluster_name=CLUSTER)
    pm.hook.tether_configure(config=config)
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.sqlite'}") as backend:
        service = await AuthService.open(config=config, pm=pm, backend=backend)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.trust_feed.run)
            yield service
            nursery.cancel_scope.cancel()


async def test_a_host_with_an_old_revision_gets_the_snapshot_at_once(auth: AuthService) -> None:
    feed = auth.trust_feed
    with trio.fail_after(1):
        body = json.loads(await feed.answer(host(), "1.1", wait=30))
    assert body["revision"] == feed.revision and body["cluster_name"] == CLUSTER
    assert set(body["roles"][0]) >= {"kind", "metadata", "spec"}
    with trio.fail_after(1):  # a host that holds nothing yet, likewise
        assert json.loads(await feed.answer(host(), None, wait=30)) == body


async def test_a_waiting_host_wakes_when_the_store_changes(auth: AuthService) -> None:
    feed = auth.trust_feed
    known = feed.revision
    answers: list[dict[str, Any]] = []

    async def watch() -> None:
        answers.append(json.loads(await feed.answer(host(), known, wait=10)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.sleep(0.2)
        assert not answers, "nothing changed: the answer waits"
        # written to the store directly, as another auth server of the store would
        start = trio.current_time()
        await auth.backend.put("/roles/pushed", role_bytes(auth.registry, "pushed"))
    assert trio.current_time() - start < 1
    (body,) = answers
    assert body["revision"] != known and body["revision"] == feed.revision
    assert "pushed" in [role["metadata"]["name"] for role in body["roles"]]
    assert "pushed" in auth.trust.roles


async def test_a_proxy_in_the_auth_process_follows_its_snapshot_without_downloading_it(
    auth: AuthService,
) -> None:
    # no auth API to ask: a proxy beside auth takes the feed's snapshot itself
    context = pki.client_ssl_context(trusted_cas=auth.trusted_tls_cas())
    async with AuthClient(f"https://127.0.0.1:{free_port()}", context) as unreachable:
        await _follow_in_process(auth, unreachable)


async def _follow_in_process(auth: AuthService, unreachable: AuthClient) -> None:
    cache = TrustCache(
        unreachable, auth.pm, ClusterTrust(CLUSTER, auth.trusted_tls_cas()), local=auth.trust_feed
    )
    changes: list[str] = []

    async def changed() -> None:
        changes.append(cache.revision)

    cache.on_change.append(changed)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(1):
            await nursery.start(cache.run)
        assert cache.revision == auth.trust_feed.revision
        assert cache.current == auth.trust
        known = cache.revision
        await auth.backend.put("/roles/pushed", role_bytes(auth.registry, "pushed"))
        with trio.fail_after(1):
            await cache.wait_changed(known)
        assert "pushed" in cache.current.roles and changes[-1] == cache.revision
        # its nodes are answered with auth's own body, under the revision the proxy holds
        body = json.loads(await cache.answer(host(), None, wait=0))
        assert body["revision"] == cache.revision
        assert "pushed" in [role["metadata"]["name"] for role in body["roles"]]
        nursery.cancel_scope.cancel()


async def test_a_waiting_host_is_told_unchanged_after_its_wait(auth: AuthService) -> None:
    feed = auth.trust_feed
    start = trio.current_time()
    body = json.loads(await feed.answer(host(), feed.revision, wait=0.3))
    assert body == {"revision": feed.revision, "unchanged": True}
    assert 0.3 <= trio.current_time() - start < 2


async def test_a_wait_is_capped(auth: AuthService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tether.trust.watches.MAX_WAIT", 0.2)
    with trio.fail_after(2):
        body = json.loads(await auth.trust_feed.answer(host(), auth.trust_feed.revision, 3600))
    assert body["unchanged"] is True


@pytest.mark.parametrize(
    "who",
    [
        host("user", username="alice"),
        host("admin", username="admin"),
        host("node", cluster="other"),
        host("proxy", cluster="other"),
    ],
    ids=["user", "admin", "another-clusters-node", "another-clusters-proxy"],
)
async def test_people_and_other_clusters_hosts_may_not_read_the_trust(
    auth: AuthService, who: pki.Identity
) -> None:
    with pytest.raises(AccessDenied, match=r"only the hosts of cluster 'main'"):
        await auth.trust_feed.answer(who, None, wait=0)


async def test_one_host_holds_only_a_few_watches_at_once(auth: AuthService) -> None:
    feed = auth.trust_feed
    async with trio.open_nursery() as nursery:
        for _ in range(WATCHES_PER_CALLER):
            nursery.start_soon(feed.answer, host(), feed.revision, 5)
        await trio.sleep(0.1)
        with pytest.raises(RateLimited, match="already watches the trust"):
            await feed.answer(host(), feed.revision, 5)
        # another host is not held to this one's count
        with trio.move_on_after(0.1):
            await feed.answer(host(username="node-2"), feed.revision, 5)
        nursery.cancel_scope.cancel()


async def test_two_auth_servers_of_one_store_name_each_snapshot_alike(
    auth: AuthService,
) -> None:
    """The revision comes from the store: a second server that only reads it names the same
    snapshot the same way as the one that followed every change."""
    backend, registry = auth.backend, auth.registry
    other = TrustFeed(
        cluster_name=CLUSTER, own_cas=auth.trusted_tls_cas(), backend=backend, registry=registry
    )
    names = []
    for change in (
        backend.put("/roles/a", role_bytes(registry, "a")),
        backend.put("/roles/b", role_bytes(registry, "b")),
        backend.delete("/roles/a"),
        backend.put("/roles/b", role_bytes(registry, "b", login="other")),
    ):
        before = auth.trust_feed.revision
        await change
        with trio.fail_after(2):
            await auth.trust_feed.wait_changed(before)
        await other.load()
        assert other.revision == auth.trust_feed.revision
        assert other.current == auth.trust
        names.append(other.revision)
    assert len(set(names)) == len(names), names


async def test_a_feed_that_fell_behind_its_watch_reads_the_store_again(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One batch of more changes than a watch holds overflows it: the feed reads everything
    again rather than miss one."""
    pm = get_plugin_manager()
    config = default_config(data_dir=tmp_path, cluster_name=CLUSTER)
    pm.hook.tether_configure(config=config)
    url = f"sqlite://{tmp_path / 'backend.sqlite'}"
    async with open_sqlite(url, watch_buffer=4) as backend, trio.open_nursery() as nursery:
        auth = await AuthService.open(config=config, pm=pm, backend=backend)
        await nursery.start(auth.trust_feed.run)
        before = auth.trust_feed.revision
        names = [f"burst-{i}" for i in range(10)]
        await backend.apply([Op.put(f"/roles/{n}", role_bytes(auth.registry, n)) for n in names])
        with trio.fail_after(5):
            while not set(names) <= set(auth.trust.roles):
                await auth.trust_feed.wait_changed(auth.trust_feed.revision)
        assert auth.trust_feed.revision != before
        nursery.cancel_scope.cancel()
    assert "the store's watch overflowed" in caplog.text


async def test_a_write_that_changes_nothing_hosts_see_wakes_no_one(auth: AuthService) -> None:
    feed = auth.trust_feed
    before = feed.revision
    await auth.backend.put("/roles/same", role_bytes(auth.registry, "same"))
    with trio.fail_after(2):
        await feed.wait_changed(before)
    known = feed.revision
    answers: list[dict[str, Any]] = []

    async def watch() -> None:
        answers.append(json.loads(await feed.answer(host(), known, wait=1)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.sleep(0.1)
        # the same role again, and a host CA (which no host reads from the snapshot)
        await auth.backend.put("/roles/same", role_bytes(auth.registry, "same"))
        await auth.backend.put("/authorities/host/elsewhere", b"not even a resource")
    assert answers == [{"revision": known, "unchanged": True}]


async def put_leaf_cas(auth: AuthService, authorities: pki.ClusterAuthorities) -> None:
    """Store a leaf's X.509 and SSH user CAs, as its handshake stores them."""
    exchange = TrustExchange.of(authorities.cluster, authorities)
    kind = auth.registry.get("cert_authority")
    for res in ca_resources(auth.registry, exchange, ("tls", "user")):
        await auth.backend.put(kind.key_for(res), resource_to_bytes(res))


async def test_a_leaf_removed_or_rotated_in_the_store_leaves_the_snapshot_at_once(
    auth: AuthService,
) -> None:
    # the snapshot is rebuilt from what changed only: what a removed or replaced item
    # contributed must go with it, or a leaf's old CA would keep opening tunnels
    feed = auth.trust_feed
    first = pki.ClusterAuthorities.generate("leaf-a")
    other = pki.ClusterAuthorities.generate("leaf-b")
    await put_leaf_cas(auth, first)
    await put_leaf_cas(auth, other)
    with trio.fail_after(2):
        while set(feed.current.others) != {"leaf-a", "leaf-b"}:
            await feed.wait_changed(feed.revision)
    [old_ca] = feed.current.tunnel_cas()["leaf-a"]
    assert old_ca.public_key() == first.tls.certificate.public_key()
    kept = feed.current.others["leaf-b"]

    rotated = pki.ClusterAuthorities.generate("leaf-a")  # the same name, new keys
    await put_leaf_cas(auth, rotated)
    with trio.fail_after(2):
        while feed.current.others["leaf-a"] == (old_ca,):
            await feed.wait_changed(feed.revision)
    [new_ca] = feed.current.tunnel_cas()["leaf-a"]
    assert new_ca.public_key() == rotated.tls.certificate.public_key()
    assert feed.current.others["leaf-b"] is kept  # untouched: the same objects
    body = json.loads(feed.body())
    assert pki.cert_to_pem(old_ca).decode() not in json.dumps(body["others"])
    old_proxy = pki.issue_x509_cert(
        first.tls,
        pki.generate_private_key().public_key(),
        host("proxy", cluster="leaf-a", username="leaf-a-proxy"),
    )
    with pytest.raises(pki.UnknownAuthority):  # the old CA's tunnel certificate
        pki.verify_x509_cert(old_proxy, trusted_cas=feed.current.tunnel_cas())

    kind = auth.registry.get("cert_authority")
    await auth.backend.delete(kind.key("tls/leaf-a"))
    with trio.fail_after(2):
        while "leaf-a" in feed.current.others:
            await feed.wait_changed(feed.revision)
    assert "leaf-a" not in feed.current.tunnel_cas()
    assert set(feed.current.ssh_user_cas) == {CLUSTER}  # a leaf's user CA is never trusted


def test_the_snapshot_holds_the_active_ssh_user_cas_and_the_roles() -> None:
    registry = core_registry()
    own = pki.ClusterAuthorities.generate("leaf").tls.certificate
    roots = {name: pki.ClusterAuthorities.generate(name).tls.certificate for name in ("on", "off")}
    trusted = [
        parse_resources(
            f"kind: trusted_cluster\nversion: v2\nmetadata: {{name: {name}}}\nspec:\n"
            f"  enabled: {str(name == 'on').lower()}\n  web_proxy_addr: {name}.example:3080\n"
            "  role_map: [{remote: access, local: [visitor]}]\n",
            "trusted_cluster.yaml",
            registry,
        )[0]
        for name in roots
    ]
    (role,) = parse_resources(
        "kind: role\nversion: v7\nmetadata: {name: visitor}\nspec: {allow: {logins: [v]}}\n",
        "role.yaml",
        registry,
    )
    snapshot = ClusterTrust.build(
        "leaf",
        [own],
        {name: [cert] for name, cert in roots.items()},
        trusted,
        user_cas={"leaf": ["ssh-ed25519 LEAF"], "on": ["ssh-ed25519 ON"], "off": ["ssh-ed25519 X"]},
        roles=[role],
    )
    # a disabled trust's root CA is not active
    assert snapshot.ssh_user_cas == {"leaf": ("ssh-ed25519 LEAF",), "on": ("ssh-ed25519 ON",)}
    assert snapshot.roles == {"visitor": role}
    assert ClusterTrust.from_json(snapshot.to_json(), registry) == snapshot


async def test_a_watch_that_cannot_reach_auth_backs_off_and_says_so_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    ca = pki.ClusterAuthorities.generate(CLUSTER).tls.certificate
    context = pki.client_ssl_context(trusted_cas=[ca])
    asked: list[float] = []
    async with AuthClient(f"https://127.0.0.1:{free_port()}", context) as api:  # nobody there
        ask = api.trust

        async def counted(known: str | None = None, *, wait: float = 0.0) -> dict[str, Any]:
            asked.append(trio.current_time())
            return await ask(known, wait=wait)

        api.trust = counted  # type: ignore[method-assign]
        with trio.move_on_after(60):
            async for _ in api.watch_trust("1.1"):
                pytest.fail("auth cannot be reached: nothing to yield")
    gaps = [later - earlier for earlier, later in itertools.pairwise(asked)]
    assert 8 <= len(asked) <= 25, asked
    assert min(gaps) >= WATCH_BACKOFF_MIN / 2 and max(gaps) <= WATCH_BACKOFF_MAX + 1, gaps
    outage = [r for r in caplog.records if "watching the trust" in r.getMessage()]
    assert len(outage) == 1, outage


# --- real daemons ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tether_cluster: RunningCluster) -> RunningCluster:
    return tether_cluster


@pytest.fixture(scope="module")
def lone_proxy(
    cluster: RunningCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningNode]:
    """A proxy in a process of its own, apart from auth (high availability)."""
    proxy = start_proxy(cluster, tmp_path_factory.mktemp("lone-proxy"), "lone-proxy")
    try:
        yield proxy
    finally:
        proxy.stop()


def node_client(cluster: RunningCluster, addr: str, peer_kind: str) -> AuthClient:
    """A client of the auth API as a node of ``cluster``, at auth or at a proxy."""
    cas = pki.ClusterAuthorities.load_or_create(cluster.data_dir / "keys", CLUSTER)
    key = pki.generate_private_key()
    cert = pki.issue_x509_cert(cas.tls, key.public_key(), host("node", username="watcher"))
    context = pki.client_ssl_context(
        trusted_cas=[cas.tls.certificate], cert=cert, key=key, peer_kinds=(peer_kind,)
    )
    return AuthClient(f"https://{addr}", context)


@pytest.mark.parametrize("through", ["auth", "proxy", "lone-proxy"])
async def test_a_node_is_pushed_a_new_role_within_a_second(
    cluster: RunningCluster, tmp_path: pathlib.Path, through: str, request: pytest.FixtureRequest
) -> None:
    """Nodes in tunnel mode watch at their proxy (in auth's process or of its own), which
    answers from its copy; others at auth."""
    if through == "auth":
        addr = cluster.auth_addr
    elif through == "proxy":
        addr = cluster.proxy_addr
    else:
        addr = request.getfixturevalue("lone_proxy").proxy_addr
    role = tmp_path / "role.yaml"
    role.write_text(role_bytes(core_registry(), f"pushed-{through}").decode())
    async with node_client(cluster, addr, "auth" if through == "auth" else "proxy") as api:
        first = await api.trust()
        async with contextlib.aclosing(api.watch_trust(first["revision"], wait=10)) as pushed:
            await trio.to_thread.run_sync(cluster.tetherctl, "create", str(role))
            stored = time.monotonic()
            with trio.fail_after(5):
                body = await anext(pushed)
    assert time.monotonic() - stored < 1
    assert f"pushed-{through}" in [r["metadata"]["name"] for r in body["roles"]]


def test_a_proxy_apart_from_auth_accepts_a_new_leaf_within_a_second(
    cluster: RunningCluster, lone_proxy: RunningNode
) -> None:
    leaf = pki.ClusterAuthorities.generate("quick-leaf")
    token = json.loads(
        cluster.tetherctl("tokens", "add", "--type=trusted_cluster", "--format=json").stdout
    )["token"]
    cert, key = forge_certificate(leaf.tls, "quick-leaf", "quick-leaf-proxy")
    try:
        dial_lone_proxy = functools.partial(
            hold_tunnel, cluster, cert, key, "quick-leaf", proxy_addr=lone_proxy.proxy_addr
        )
        trio.run(handshake, cluster, {"token": token, "leaf": exchange("quick-leaf", leaf)})
        joined = time.monotonic()
        while True:
            attempt = trio.run(dial_lone_proxy)
            if "lone-proxy" in attempt.connected:
                break
            assert time.monotonic() - joined < 1, attempt.error
        assert time.monotonic() - joined < 1
    finally:
        cluster.tetherctl("rm", "rc/quick-leaf", check=False)


async def test_a_proxy_answers_its_nodes_watches_without_asking_auth(
    cluster: RunningCluster, lone_proxy: RunningNode
) -> None:
    """Nodes in tunnel mode watch the trust at their proxy, which answers from the copy auth
    pushes to it: the same body under the same revision, and the same hanging GET, while auth
    is stopped (so the proxy holds no connection to auth per node). That a change still
    reaches them within a second: ``test_a_node_is_pushed_a_new_role_within_a_second``."""
    async with node_client(cluster, cluster.auth_addr, "auth") as at_auth:
        expected = await at_auth.trust()
    async with node_client(cluster, lone_proxy.proxy_addr, "proxy") as api:
        with trio.fail_after(5):  # a change an earlier test made may still be on its way
            held = await api.trust()
            while held["revision"] != expected["revision"]:
                held = await api.trust(known=held["revision"], wait=5)
    cluster.process.send_signal(signal.SIGSTOP)  # auth (and its own proxy) answer nothing
    try:
        async with node_client(cluster, lone_proxy.proxy_addr, "proxy") as api:
            with trio.fail_after(5):
                assert await api.trust() == expected
                asked = time.monotonic()
                unchanged = await api.trust(known=expected["revision"], wait=1)
            assert unchanged == {"revision": expected["revision"], "unchanged": True}
            assert 0.9 < time.monotonic() - asked < 3
    finally:
        cluster.process.send_signal(signal.SIGCONT)


async def test_a_node_keeps_its_trust_revision_when_auth_restarts(tmp_path: pathlib.Path) -> None:
    """Auth publishes its CAs again at each start; unchanged, they keep the revision nodes
    hold, so a restart costs no node a download."""
    cluster = await trio.to_thread.run_sync(start_cluster, tmp_path / CLUSTER, CLUSTER)
    try:
        async with node_client(cluster, cluster.auth_addr, "auth") as api:
            known = (await api.trust())["revision"]
        assert await trio.to_thread.run_sync(cluster.stop) == 0
        cluster = await trio.to_thread.run_sync(start_cluster, tmp_path / CLUSTER, CLUSTER)
        async with node_client(cluster, cluster.auth_addr, "auth") as api:
            with trio.fail_after(5):
                held = await api.trust(known=known, wait=0.5)
    finally:
        cluster.stop()
    assert held == {"revision": known, "unchanged": True}
