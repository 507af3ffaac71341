"""A root's listing of its leaves (``tetherctl get rc``, ``tether clusters``), served from the
cache the auth service keeps by a watch on the store: it sees a new leaf, one going offline and
one removed as soon as the store does, and still shows each user only the leaves their roles'
``cluster_labels`` reach.

The auth service in-process with SQLite in a temporary directory, its cache running as the
daemon runs it; leaves are stored as their handshake stores them and heartbeat as a proxy
records them.
"""

from __future__ import annotations

import datetime
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio

from tether import pki
from tether.auth.remote_clusters import REMOTE_OFFLINE_AFTER, RemoteClusterItems
from tether.auth.service import AuthService
from tether.backend import Item, open_sqlite
from tether.config import default_config
from tether.errors import NotFound
from tether.plugins import get_plugin_manager
from tether.resources import parse_resources, resource_to_bytes
from tether.testing.roles import core_registry

HOUR = datetime.timedelta(hours=1)


class Clock:
    """The auth service's clock, which a test moves on."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _open(tmp_path: pathlib.Path, clock: Clock) -> AsyncIterator[AuthService]:
    pm = get_plugin_manager(autoload=False)
    config = default_config(data_dir=tmp_path, cluster_name="root")
    pm.hook.tether_configure(config=config)
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.sqlite'}") as backend:
        yield await AuthService.open(config=config, pm=pm, backend=backend, clock=clock)


@pytest.fixture
async def auth(
    tmp_path: pathlib.Path, clock: Clock, nursery: trio.Nursery
) -> AsyncIterator[AuthService]:
    async for service in _open(tmp_path, clock):
        await nursery.start(service.remote_clusters.run)
        yield service
        nursery.cancel_scope.cancel()


def identity(name: str, kind: str, roles: tuple[str, ...] = ()) -> pki.Identity:
    return pki.Identity(
        username=name,
        cluster="root",
        roles=roles,
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + HOUR,
        kind=kind,
    )


ADMIN = identity("admin", "admin")
PROXY = identity("proxy-1", "proxy")


async def settle() -> None:
    """Let the cache's watch deliver what the store committed."""
    await trio.testing.wait_all_tasks_blocked()


async def join(auth: AuthService, name: str, labels: dict[str, str] | None = None) -> None:
    """Store a leaf's remote_cluster, as its handshake does."""
    remote = auth.make("remote_cluster", name, {}, labels=labels)
    kind = auth.registry.get("remote_cluster")
    await auth.backend.put(kind.key(name), resource_to_bytes(remote))


async def heartbeat(auth: AuthService, *clusters: str, connected: bool = True) -> None:
    """One batch of the root proxy's tunnel heartbeats."""
    await auth.record_tunnel_heartbeats(
        PROXY,
        [
            {
                "cluster": name,
                "agent": f"{name}-proxy",
                "last_heartbeat": auth.context.clock(),
                "status": {"connected": connected},
            }
            for name in clusters
        ],
    )


async def listed(auth: AuthService, who: pki.Identity = ADMIN) -> dict[str, str]:
    found = await auth.get_resources(who, "remote_cluster")
    return {res.metadata.name: res.status.connection for res in found}


async def test_a_new_leaf_is_listed_offline_then_online_once_its_tunnel_heartbeats(
    auth: AuthService,
) -> None:
    assert auth.remote_clusters.ready
    await join(auth, "leaf-a")
    await settle()
    assert await listed(auth) == {"leaf-a": "offline"}
    await heartbeat(auth, "leaf-a")
    await settle()
    assert await listed(auth) == {"leaf-a": "online"}
    [one] = await auth.get_resources(ADMIN, "remote_cluster", "leaf-a")
    assert one.status.proxies == ("proxy-1",)
    assert one.status.last_heartbeat is not None


async def test_each_heartbeat_moves_the_listed_last_heartbeat_on(
    auth: AuthService, clock: Clock
) -> None:
    await join(auth, "leaf-a")
    await heartbeat(auth, "leaf-a")
    await settle()
    [first] = await auth.get_resources(ADMIN, "remote_cluster", "leaf-a")
    [again] = await auth.get_resources(ADMIN, "remote_cluster", "leaf-a")
    assert again == first
    clock.now += 10
    await heartbeat(auth, "leaf-a")
    await settle()
    [later] = await auth.get_resources(ADMIN, "remote_cluster", "leaf-a")
    assert later.status.last_heartbeat - first.status.last_heartbeat == datetime.timedelta(
        seconds=10
    )
    assert later.status.connection == "online"


async def test_a_listed_document_follows_the_status_and_labels_it_was_built_from(
    auth: AuthService, clock: Clock
) -> None:
    # documents are kept between listings: one must never outlive the status or the
    # resource it shows
    await join(auth, "leaf-a", labels={"env": "dev"})
    await heartbeat(auth, "leaf-a")
    await settle()

    async def document() -> dict[str, Any]:
        [doc] = auth.documents(await auth.get_resources(ADMIN, "remote_cluster", "leaf-a"))
        return doc

    first = await document()
    assert (first["status"]["connection"], first["metadata"]["labels"]) == (
        "online",
        {"env": "dev"},
    )
    assert await document() is first  # unchanged: not converted again
    clock.now += REMOTE_OFFLINE_AFTER
    assert (await document())["status"]["connection"] == "offline"
    await heartbeat(auth, "leaf-a")
    await join(auth, "leaf-a", labels={"env": "prod"})  # relabelled by an admin
    await settle()
    now = await document()
    assert now["status"]["connection"] == "online"
    assert now["metadata"]["labels"] == {"env": "prod"}
    assert auth.documents([], with_secrets=True) == []


async def test_a_leaf_goes_offline_when_its_tunnel_closes_or_its_heartbeats_stop(
    auth: AuthService, clock: Clock
) -> None:
    await join(auth, "leaf-a")
    await join(auth, "leaf-b")
    await heartbeat(auth, "leaf-a", "leaf-b")
    await settle()
    assert await listed(auth) == {"leaf-a": "online", "leaf-b": "online"}
    await heartbeat(auth, "leaf-a", connected=False)  # its last tunnel closed
    await settle()
    assert await listed(auth) == {"leaf-a": "offline", "leaf-b": "online"}
    clock.now += REMOTE_OFFLINE_AFTER  # and nothing heard from leaf-b since
    assert await listed(auth) == {"leaf-a": "offline", "leaf-b": "offline"}


async def test_a_deleted_remote_cluster_is_gone_from_the_listing_at_once(
    auth: AuthService,
) -> None:
    await join(auth, "leaf-a")
    await join(auth, "leaf-b")
    await heartbeat(auth, "leaf-a", "leaf-b")
    await settle()
    await auth.delete_resource(ADMIN, "remote_cluster", "leaf-a")
    await settle()
    assert await listed(auth) == {"leaf-b": "online"}
    with pytest.raises(NotFound):
        await auth.get_resources(ADMIN, "remote_cluster", "leaf-a")


async def test_relabelling_a_leaf_changes_who_sees_it_and_each_user_sees_only_theirs(
    auth: AuthService,
) -> None:
    [demo_role] = parse_resources(
        "kind: role\nversion: v5\nmetadata:\n  name: demo\nspec:\n  allow:\n"
        "    cluster_labels: {env: demo}\n    rules:\n"
        "    - resources: [remote_cluster]\n      verbs: [list, read]\n",
        "role.yaml",
        auth.registry,
    )
    await auth.create_resources(ADMIN, [demo_role])
    await join(auth, "open-leaf")
    await join(auth, "demo-leaf", {"env": "demo"})
    await join(auth, "prod-leaf", {"env": "prod"})
    await settle()
    demo_user = identity("alice", "user", ("access", "demo"))
    plain_user = identity("bob", "user", ("access",))
    assert set(await listed(auth, demo_user)) == {"open-leaf", "demo-leaf"}
    assert set(await listed(auth, plain_user)) == {"open-leaf"}
    assert set(await listed(auth)) == {"open-leaf", "demo-leaf", "prod-leaf"}
    with pytest.raises(NotFound):  # out of reach is "not found"
        await auth.get_resources(plain_user, "remote_cluster", "demo-leaf")
    # the administrator moves prod-leaf into demo: alice sees it at once
    [prod] = await auth.get_resources(ADMIN, "remote_cluster", "prod-leaf")
    relabelled = attrs.evolve(
        prod, metadata=attrs.evolve(prod.metadata, labels={"env": "demo"}), status=None
    )
    await auth.create_resources(ADMIN, [relabelled], force=True)
    await settle()
    assert set(await listed(auth, demo_user)) == {"open-leaf", "demo-leaf", "prod-leaf"}
    assert set(await listed(auth, plain_user)) == {"open-leaf"}


async def test_a_service_not_following_the_store_lists_what_is_stored(
    tmp_path: pathlib.Path, clock: Clock
) -> None:
    async for auth in _open(tmp_path, clock):
        assert not auth.remote_clusters.ready
        await join(auth, "leaf-a")
        await join(auth, "leaf-ab")
        await heartbeat(auth, "leaf-a")
        assert await listed(auth) == {"leaf-a": "online", "leaf-ab": "offline"}
        [one] = await auth.get_resources(ADMIN, "remote_cluster", "leaf-ab")
        assert one.status.connection == "offline"


async def test_the_cache_and_the_store_agree_after_a_burst_of_heartbeats(
    auth: AuthService, clock: Clock
) -> None:
    names = [f"leaf-{i}" for i in range(50)]
    for name in names:
        await join(auth, name)
    for _ in range(3):
        await heartbeat(auth, *names[::2])
        clock.now += 1
    await settle()
    cached = await auth.get_resources(ADMIN, "remote_cluster")
    stored = await auth.remote_clusters.read()
    assert cached == stored
    assert sum(res.status.connection == "online" for res in cached) == 25


def test_a_heartbeat_past_its_ttl_counts_as_gone_before_the_store_reaps_it() -> None:
    items = RemoteClusterItems(core_registry())
    beat = b'{"proxy": "p", "last_heartbeat": 100.0, "status": {}}'
    items.reset([Item(key="/tunnels/leaf/p/a", value=beat, revision=1, expires=200.0)])
    assert items.status("leaf", 110.0).connection == "online"
    gone = items.status("leaf", 200.0)
    assert gone.connection == "offline" and gone.last_heartbeat is None
