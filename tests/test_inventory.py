"""Inventory kinds: hosts publish their own entries, users see the ones their roles reach.

The auth service in-process with SQLite in a temporary directory, and a test inventory kind
``gadget`` declared by a plugin the way the SSH plugin declares ``node``.
"""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import AsyncIterator

import attrs
import pytest

from tether import audit, pki
from tether.auth.service import AuthService
from tether.backend import open_sqlite
from tether.config import default_config
from tether.errors import AccessDenied, NotFound, TetherError
from tether.hookspecs import hookimpl
from tether.plugins import get_plugin_manager
from tether.resources import ResourceKind

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


class GadgetPlugin:
    @hookimpl
    def tether_resource_kinds(self) -> list[ResourceKind]:
        return [GADGET]


@pytest.fixture
async def auth(tmp_path: pathlib.Path) -> AsyncIterator[AuthService]:
    pm = get_plugin_manager(autoload=False)
    pm.register(GadgetPlugin(), name="gadgets")
    config = default_config(data_dir=tmp_path, cluster_name="main")
    pm.hook.tether_configure(config=config)  # the audit file goes under data_dir
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.sqlite'}") as backend:
        yield await AuthService.open(config=config, pm=pm, backend=backend)


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


def user(name: str, roles: tuple[str, ...]) -> pki.Identity:
    return attrs.evolve(host(name, kind="user"), roles=roles)


def gadget(auth: AuthService, name: str, labels: dict[str, str]) -> object:
    return auth.make("gadget", name, {"hostname": f"{name}.example"}, labels=labels)


async def test_node_publishes_its_own_entry_which_expires(auth: AuthService) -> None:
    await auth.publish(host("n1"), gadget(auth, "n1", {"env": "dev"}), HOUR)  # type: ignore[arg-type]
    [entry] = await auth.get_resources(host("p1", kind="proxy"), "gadget")
    assert entry.metadata.name == "n1"
    assert entry.metadata.expires is not None
    assert entry.metadata.expires - auth.now() <= HOUR


@pytest.mark.parametrize(
    ("who", "entry", "message"),
    [
        (host("n1"), "n2", "may only publish its own gadget entry, not 'n2'"),
        (host("p1", kind="proxy"), "p1", "proxy 'p1' may not publish gadget"),
        (host("n1", cluster="other"), "n1", "of cluster 'other' may only publish its own"),
    ],
)
async def test_hosts_cannot_publish_entries_of_others(
    auth: AuthService, who: pki.Identity, entry: str, message: str
) -> None:
    with pytest.raises(AccessDenied, match=message):
        await auth.publish(who, gadget(auth, entry, {}), HOUR)  # type: ignore[arg-type]


async def test_publish_ttl_is_bounded(auth: AuthService) -> None:
    with pytest.raises(TetherError, match="out of range"):
        await auth.publish(host("n1"), gadget(auth, "n1", {}), datetime.timedelta(days=2))  # type: ignore[arg-type]


async def test_users_see_only_entries_their_roles_reach(auth: AuthService) -> None:
    for name, env in (("dev-1", "dev"), ("prod-1", "prod")):
        await auth.publish(host(name), gadget(auth, name, {"env": env}), HOUR)  # type: ignore[arg-type]
    dev_role = auth.make("role", "dev", {"allow": {"node_labels": {"env": "dev"}}})
    await auth.create_resources(host("admin", kind="admin"), [dev_role])
    dev_user = user("dora", ("dev",))
    assert [g.metadata.name for g in await auth.get_resources(dev_user, "gadget")] == ["dev-1"]
    with pytest.raises(NotFound, match="gadget 'prod-1' not found"):
        await auth.get_resources(dev_user, "gadget", "prod-1")
    everything = user("alice", ("access",))
    assert len(await auth.get_resources(everything, "gadget")) == 2
    with pytest.raises(AccessDenied):  # reach is for listing, not for secrets
        await auth.get_resources(dev_user, "gadget", with_secrets=True)


async def test_nodes_read_roles_but_not_users(auth: AuthService) -> None:
    roles = await auth.get_resources(host("n1"), "role")
    assert {"access", "editor", "auditor"} <= {r.metadata.name for r in roles}
    with pytest.raises(AccessDenied):
        await auth.get_resources(host("n1"), "user")
    with pytest.raises(AccessDenied):
        await auth.get_resources(host("n1", cluster="other"), "role")


async def test_hosts_record_audit_events_that_name_them(auth: AuthService) -> None:
    await auth.record_host_event(
        host("n1"), "ssh.session.start", "alice", {"login": "visitor"}, success=True
    )
    # named as the auth service names it
    query = audit.AuditQuery(type="ssh.session.start", cluster="main")
    [event] = await audit.search(auth.pm, query)
    assert (event.user, event.fields["host"], event.fields["login"]) == ("alice", "n1", "visitor")
    with pytest.raises(TetherError, match="audit event type 'Bad Type' is not valid"):
        await auth.record_host_event(host("n1"), "Bad Type", "", {}, success=True)
    with pytest.raises(AccessDenied):
        await auth.record_host_event(user("eve", ()), "ssh.fake", "", {}, success=True)
