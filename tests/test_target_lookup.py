"""Routing's read of one target: auth answers only the entries what the user typed names.

``tether ssh web-17`` on a cluster of thousands of nodes asks auth for the entries that
``web-17`` names among those the user may see (``target=`` on the resources read), not for
the whole listing. The auth service in-process with SQLite in a temporary directory, and a
test inventory kind ``gadget`` that a plugin's protocol reaches, the way the SSH plugin's
``ssh`` protocol reaches ``node``.
"""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from tether import pki
from tether.auth.service import AuthService
from tether.backend import open_sqlite
from tether.config import default_config
from tether.errors import AmbiguousTarget, ResourceError
from tether.hookspecs import hookimpl
from tether.plugins import get_plugin_manager
from tether.protocols import ProtocolHandler
from tether.resources import Resource, ResourceKind
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


@pytest.fixture
async def auth(tmp_path: pathlib.Path) -> AsyncIterator[AuthService]:
    pm = get_plugin_manager(autoload=False)
    pm.register(GadgetPlugin(), name="gadgets")
    config = default_config(data_dir=tmp_path, cluster_name="main")
    pm.hook.tether_configure(config=config)
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.sqlite'}") as backend:
        service = await AuthService.open(config=config, pm=pm, backend=backend)
        dev = service.make("role", "dev", {"allow": {"node_labels": {"env": "dev"}}})
        await service.create_resources(host("admin", kind="admin"), [dev])
        yield service


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
