"""Routing's read of one target: auth answers only the entries what the user typed names.

``tether ssh web-17`` on a cluster of thousands of nodes asks auth for the entries that
``web-17`` names among those the user may see (``target=`` on the resources read), not for
the whole listing. The auth service in-process with SQLite in a temporary directory, and a
test inventory kind ``gadget`` that a plugin's protocol reaches, the way the SSH plugin's
``ssh`` protocol reaches ``node``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from tether import pki
from tether.auth.service import AuthService
from tether.backend import Event, Item, SqliteBackend, open_sqlite
from tether.config import default_config
from tether.errors import AmbiguousTarget, ResourceError
from tether.hookspecs import hookimpl
from tether.plugins import get_plugin_manager
from tether.protocols import ProtocolHandler
from tether.resources import Resource, ResourceKind, resource_to_bytes
from tether.targets import Target, TargetKind, TargetQuery, resolve_target

HOUR = datetime.timedelta(hours=1)


@attrs.frozen
class GadgetSpec:
    hostname: str = ""


GADGET = ResourceKind(
    name="gadget",
    versions=("v1",),
    spec_type=GadgetSpec,
    storage_prefix="/gadgets/",
    published_by="node",
    readable_by=("proxy",),
    access_labels="node_labels",
)
#: listed by users with a rule, but no protocol reaches it
PLAIN = ResourceKind(name="plain", versions=("v1",), spec_type=dict, storage_prefix="/plain/")


def describe_gadget(resource: Resource) -> Target:
    if resource.spec.hostname == "bug":
        raise RuntimeError("the plugin's describe has a bug")
    return Target(
        kind="gadget",
        id=resource.metadata.name,
        name=resource.spec.hostname,
        labels=resource.metadata.labels,
    )


GADGET_TARGET = TargetKind(GADGET, describe_gadget, list_command="tether gadget ls")


class GadgetPlugin:
    @hookimpl
    def tether_resource_kinds(self) -> list[ResourceKind]:
        return [GADGET, PLAIN]

    @hookimpl
    def tether_protocols(self) -> list[ProtocolHandler]:
        return [
            ProtocolHandler(name="gadget", alpn=("tether-gadget/1",), target_kind=GADGET_TARGET)
        ]


class Clock:
    """The time auth and the store both read, moved by the test (the entries' TTLs)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: pathlib.Path, clock: Clock) -> AsyncIterator[SqliteBackend]:
    # the reaper's own passes are kept out of the way: the tests reap when time has moved
    url = f"sqlite://{tmp_path / 'backend.sqlite'}"
    async with open_sqlite(url, clock=clock, reap_interval=3600) as backend:
        yield backend


@pytest.fixture(params=["indexed", "read from the store"])
async def auth(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, store: SqliteBackend, clock: Clock
) -> AsyncIterator[AuthService]:
    """Auth answering from its watch-kept index of the target kinds (as the daemon runs it),
    or reading the store per query (before the index follows the store)."""
    pm = get_plugin_manager(autoload=False)
    pm.register(GadgetPlugin(), name="gadgets")
    config = default_config(data_dir=tmp_path, cluster_name="main")
    pm.hook.tether_configure(config=config)
    service = await AuthService.open(config=config, pm=pm, backend=store, clock=clock)
    dev = service.make("role", "dev", {"allow": {"node_labels": {"env": "dev"}}})
    await service.create_resources(host("admin", kind="admin"), [dev])
    async with trio.open_nursery() as nursery:
        if request.param == "indexed":
            await nursery.start(service.targets.run)
            assert service.targets.ready
        yield service
        nursery.cancel_scope.cancel()


def host(name: str, kind: str = "node", cluster: str = "main") -> pki.Identity:
    return pki.Identity(
        username=name,
        cluster=cluster,
        roles=(),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + HOUR,
        kind=kind,
    )


def user(name: str, roles: tuple[str, ...], cluster: str = "main") -> pki.Identity:
    return attrs.evolve(host(name, kind="user", cluster=cluster), roles=roles)


DORA = user("dora", ("dev",))
#: a root cluster's user whose roles the leaf mapped to ``dev``
ROOT_USER = user("rita", ("dev",), cluster="root")


async def publish(auth: AuthService, host_id: str, hostname: str, env: str) -> None:
    entry = auth.make("gadget", host_id, {"hostname": hostname}, labels={"env": env})
    await auth.publish(host(host_id), entry, HOUR)


async def find(auth: AuthService, who: pki.Identity, typed: str) -> list[str]:
    found = await auth.get_resources(who, "gadget", target=TargetQuery.parse(typed))
    return [res.spec.hostname for res in found]


async def test_a_user_reaches_one_gadget_by_hostname_among_many(auth: AuthService) -> None:
    for i in range(300):
        await publish(auth, f"id-{i}", f"web-{i}", "dev")
    assert await find(auth, DORA, "web-217") == ["web-217"]
    assert await find(auth, DORA, "id-42") == ["web-42"]  # by its id too
    assert await find(auth, DORA, "web-9999") == []


async def test_a_hidden_gadget_is_not_found_by_any_query_that_names_it(
    auth: AuthService,
) -> None:
    # attack: a user probes for a target their roles hide, by its exact name, its id and
    # its labels, with globs and regular expressions: auth answers as if it did not exist
    await publish(auth, "id-dev", "web-dev", "dev")
    await publish(auth, "id-prod", "db-prod", "prod")
    for typed in ("db-prod", "id-prod", "env=prod", "env=pr*", "env=^p.*$"):
        assert await find(auth, DORA, typed) == [], typed
    assert await find(auth, DORA, "env=*") == ["web-dev"]
    # the same queries answer an unrestricted user, so it is the roles that hide it
    assert await find(auth, user("alice", ("access",)), "id-prod") == ["db-prod"]


async def test_an_ambiguous_name_lists_only_the_gadgets_the_user_may_see(
    auth: AuthService,
) -> None:
    await publish(auth, "id-a", "web", "dev")
    await publish(auth, "id-b", "web", "prod")
    await publish(auth, "id-c", "web", "dev")
    found = await auth.get_resources(DORA, "gadget", target=TargetQuery.parse("web"))
    assert [res.metadata.name for res in found] == ["id-a", "id-c"]
    targets = [describe_gadget(res) for res in found]
    with pytest.raises(AmbiguousTarget, match=r"2 gadgets .*: web \(id id-a\), web \(id id-c\)"):
        resolve_target(targets, TargetQuery.parse("web"), kind=GADGET_TARGET, cluster="main")


async def test_a_root_user_mapped_at_the_leaf_finds_what_the_mapped_roles_reach(
    auth: AuthService,
) -> None:
    await publish(auth, "id-dev", "web-dev", "dev")
    await publish(auth, "id-prod", "db-prod", "prod")
    assert await find(auth, ROOT_USER, "web-dev") == ["web-dev"]
    assert await find(auth, ROOT_USER, "db-prod") == []


async def test_a_gadget_renamed_by_its_heartbeat_is_found_by_its_new_name(
    auth: AuthService,
) -> None:
    await publish(auth, "id-1", "old-name", "dev")
    assert await find(auth, DORA, "old-name") == ["old-name"]
    await publish(auth, "id-1", "new-name", "dev")
    assert await find(auth, DORA, "old-name") == []
    assert await find(auth, DORA, "new-name") == ["new-name"]


async def test_the_proxy_finds_every_gadget_it_routes_to(auth: AuthService) -> None:
    await publish(auth, "id-prod", "db-prod", "prod")
    assert await find(auth, host("proxy-1", kind="proxy"), "db-prod") == ["db-prod"]


async def test_a_query_is_refused_where_it_means_nothing(auth: AuthService) -> None:
    query = TargetQuery.parse("web-1")
    admin = host("admin", kind="admin")
    with pytest.raises(ResourceError, match="plain is not a kind of target"):
        await auth.get_resources(admin, "plain", target=query)
    with pytest.raises(ResourceError, match="neither by name nor with secrets"):
        await auth.get_resources(admin, "gadget", "id-1", target=query)
    with pytest.raises(ResourceError, match="neither by name nor with secrets"):
        await auth.get_resources(admin, "gadget", with_secrets=True, target=query)


async def test_a_listing_after_a_heartbeat_changed_a_gadget_shows_the_change(
    auth: AuthService,
) -> None:
    # documents are encoded once per revision: a listing never shows an older revision
    alice = user("alice", ("access",))

    async def listed() -> list[dict[str, Any]]:
        found = await auth.get_resources(alice, "gadget")
        return list(json.loads(auth.encoded_documents(found))["resources"])

    await publish(auth, "id-1", "old-name", "dev")
    [before] = await listed()
    assert before["spec"]["hostname"] == "old-name"
    assert await listed() == [before]
    await publish(auth, "id-1", "new-name", "prod")
    [after] = await listed()
    assert (after["spec"]["hostname"], after["metadata"]["labels"]) == ("new-name", {"env": "prod"})
    assert after == auth.documents(await auth.get_resources(alice, "gadget"))[0]


async def publish_labelled(
    auth: AuthService,
    host_id: str,
    hostname: str,
    labels: dict[str, str],
    ttl: datetime.timedelta = HOUR,
) -> None:
    entry = auth.make("gadget", host_id, {"hostname": hostname}, labels=labels)
    await auth.publish(host(host_id), entry, ttl)


async def test_a_gadget_that_joins_is_found_at_once(
    auth: AuthService, store: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(50):
        await publish(auth, f"id-{i}", f"web-{i}", "dev")
    assert await find(auth, DORA, "web-7") == ["web-7"]
    read: list[str] = []
    range_of_store = store.range

    async def spied_range(prefix: str, *, limit: int | None = None) -> list[Item]:
        read.append(prefix)
        return await range_of_store(prefix, limit=limit)

    monkeypatch.setattr(store, "range", spied_range)
    # the next query comes right after the write auth acknowledged, before anything else ran
    await publish(auth, "id-new", "web-new", "dev")
    assert await find(auth, DORA, "web-new") == ["web-new"]
    in_key_order = sorted(range(50), key=lambda i: f"id-{i}")  # as the store lists them
    assert await find(auth, DORA, "env=dev") == [f"web-{i}" for i in in_key_order] + ["web-new"]
    # the index answers from memory; without it, auth reads every stored gadget per query
    indexed = auth.targets.ready
    assert read == ([] if indexed else ["/gadgets/", "/gadgets/"])


async def test_a_gadget_removed_by_an_admin_is_not_found_at_once(auth: AuthService) -> None:
    await publish(auth, "id-1", "web-1", "dev")
    await publish(auth, "id-2", "web-2", "dev")
    assert await find(auth, DORA, "web-1") == ["web-1"]
    await auth.delete_resource(host("admin", kind="admin"), "gadget", "id-1")
    assert await find(auth, DORA, "web-1") == []
    assert await find(auth, DORA, "id-1") == []
    assert await find(auth, DORA, "env=dev") == ["web-2"]


async def test_a_gadget_whose_entry_expires_is_no_longer_found(
    auth: AuthService, store: SqliteBackend, clock: Clock
) -> None:
    await publish_labelled(auth, "id-1", "web-1", {"env": "dev"}, datetime.timedelta(seconds=30))
    await publish(auth, "id-2", "web-2", "dev")
    assert await find(auth, DORA, "web-1") == ["web-1"]
    clock.now += 31
    # expired, not yet deleted by the store's reaper: already gone from every answer
    assert await find(auth, DORA, "web-1") == []
    assert await find(auth, DORA, "env=dev") == ["web-2"]
    assert await store.reap_expired() == 1
    await trio.testing.wait_all_tasks_blocked()
    assert await find(auth, DORA, "web-1") == []
    # the same host joins again: found again
    await publish(auth, "id-1", "web-1", "dev")
    assert await find(auth, DORA, "web-1") == ["web-1"]


async def test_a_relabelled_gadget_is_found_by_its_new_labels_only(auth: AuthService) -> None:
    await publish_labelled(auth, "id-1", "web-1", {"env": "dev", "team": "blue"})
    assert await find(auth, DORA, "team=blue") == ["web-1"]
    await publish_labelled(auth, "id-1", "web-1", {"env": "dev", "team": "green"})
    assert await find(auth, DORA, "team=blue") == []
    assert await find(auth, DORA, "team=gr*") == ["web-1"]
    assert await find(auth, DORA, "web-1") == ["web-1"]


async def test_a_gadget_relabelled_out_of_the_users_reach_is_hidden_from_every_query(
    auth: AuthService,
) -> None:
    # attack: a user who found a target keeps probing for it after its labels moved it out
    # of their roles' reach; the index must not answer from what it held before
    await publish(auth, "id-1", "web-1", "dev")
    assert await find(auth, DORA, "web-1") == ["web-1"]
    await publish(auth, "id-1", "web-1", "prod")
    for typed in ("web-1", "id-1", "env=prod", "env=*", "env=^.*$"):
        assert await find(auth, DORA, typed) == [], typed
    await publish(auth, "id-1", "web-1", "dev")
    assert await find(auth, DORA, "web-1") == ["web-1"]


async def test_a_gadget_written_by_another_auth_server_is_found_once_the_store_tells(
    auth: AuthService, store: SqliteBackend
) -> None:
    # another auth server sharing the store: its writes reach this one through the watch
    entry = auth.make("gadget", "id-9", {"hostname": "web-9"}, labels={"env": "dev"})
    await store.put("/gadgets/id-9", resource_to_bytes(entry))
    await trio.testing.wait_all_tasks_blocked()
    assert await find(auth, DORA, "web-9") == ["web-9"]
    await store.delete("/gadgets/id-9")
    await trio.testing.wait_all_tasks_blocked()
    assert await find(auth, DORA, "web-9") == []


async def test_a_gadget_its_plugin_cannot_describe_fails_queries_as_before_and_no_more(
    auth: AuthService,
) -> None:
    # a plugin's bug in describe fails the queries while that entry is stored, as reading
    # the store does; the index keeps following the store and answers once it is gone
    await publish(auth, "id-1", "web-1", "dev")
    await publish(auth, "id-2", "bug", "dev")
    with pytest.raises(RuntimeError, match="has a bug"):
        await find(auth, DORA, "web-1")
    await auth.delete_resource(host("admin", kind="admin"), "gadget", "id-2")
    assert await find(auth, DORA, "web-1") == ["web-1"]
    await publish(auth, "id-3", "web-3", "dev")
    assert await find(auth, DORA, "env=dev") == ["web-1", "web-3"]


class LaggingWatches:
    """The store, with its watches' events delivered ``lag`` seconds late, as a networked
    store's watch can be (etcd's comes over gRPC): this process's SQLite store delivers
    them before a write returns, so without this no query could come before its event."""

    def __init__(self, backend: SqliteBackend, lag: float) -> None:
        self._backend = backend
        self.lag = lag

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    @contextlib.asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[Event]]:
        async with self._backend.watch(prefix) as events:
            yield self._late(events)

    async def _late(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        async for event in events:
            await trio.sleep(self.lag)
            yield event


async def test_a_gadget_is_found_right_after_it_joins_however_late_the_watch(
    tmp_path: pathlib.Path, store: SqliteBackend, clock: Clock
) -> None:
    # a query right after a write auth acknowledged answers with it, before the watch
    # delivered it: never the index's older answer
    pm = get_plugin_manager(autoload=False)
    pm.register(GadgetPlugin(), name="gadgets")
    config = default_config(data_dir=tmp_path, cluster_name="main")
    pm.hook.tether_configure(config=config)
    backend: Any = LaggingWatches(store, lag=0.5)
    auth = await AuthService.open(config=config, pm=pm, backend=backend, clock=clock)
    alice = user("alice", ("access",))
    async with trio.open_nursery() as nursery:
        await nursery.start(auth.targets.run)
        await publish(auth, "id-1", "web-1", "dev")
        assert await find(auth, alice, "web-1") == ["web-1"]
        await publish(auth, "id-1", "web-one", "prod")
        assert await find(auth, alice, "web-1") == []
        assert await find(auth, alice, "env=prod") == ["web-one"]
        await auth.delete_resource(host("admin", kind="admin"), "gadget", "id-1")
        assert await find(auth, alice, "web-one") == []
        # the watch's late events of those writes change nothing, as they come one by one
        for _ in range(4):
            await trio.sleep(0.5)
            assert await find(auth, alice, "env=*") == []
        admin = host("admin", kind="admin")
        created = auth.make("gadget", "id-2", {"hostname": "web-2"}, labels={"env": "dev"})
        await auth.create_resources(admin, [created])
        assert await find(auth, alice, "web-2") == ["web-2"]
        assert auth.targets.ready
        nursery.cancel_scope.cancel()
