"""Inventory kinds: hosts publish their own entries, users see the ones their roles reach.

The auth service in-process with SQLite in a temporary directory, and a test inventory kind
``gadget`` declared by a plugin the way the SSH plugin declares ``node``.
"""

from __future__ import annotations

import datetime
import pathlib
import time
from collections.abc import AsyncIterator

import attrs
import pytest
from cryptography.hazmat.primitives import serialization

from tether import audit, pki
from tether.auth.inventory import RelayedEntry
from tether.auth.service import AuthService
from tether.backend import open_sqlite
from tether.config import default_config
from tether.errors import AccessDenied, NotFound, TetherError
from tether.hookspecs import hookimpl
from tether.plugins import get_plugin_manager
from tether.resources import ResourceKind, resource_to_dict
from tether.token_types import TokenType

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


@attrs.frozen
class GizmoSpec:
    host_id: str = ""


#: served by hosts that joined as Node only (as the SSH plugin's node)
NODE_GADGET = attrs.evolve(
    GADGET, name="node_gadget", storage_prefix="/node_gadgets/", publisher_role="Node"
)
#: several per host, named freely, with the serving host in the spec (as databases)
GIZMO = ResourceKind(
    name="gizmo",
    versions=("v1",),
    spec_type=GizmoSpec,
    storage_prefix="/gizmos/",
    published_by="node",
    publisher_role="Gizmo",
    publisher=lambda resource: str(resource.spec.host_id),
    readable_by=("proxy",),
    access_labels="node_labels",
)


class GadgetPlugin:
    @hookimpl
    def tether_resource_kinds(self) -> list[ResourceKind]:
        return [GADGET, NODE_GADGET, GIZMO]

    @hookimpl
    def tether_token_types(self) -> list[TokenType]:
        return [TokenType("gizmo", "Gizmo", "a gizmo host joins", host_role=True)]


class Clock:
    """The auth service's clock, which a test moves on."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def auth(tmp_path: pathlib.Path, clock: Clock) -> AsyncIterator[AuthService]:
    pm = get_plugin_manager(autoload=False)
    pm.register(GadgetPlugin(), name="gadgets")
    config = default_config(data_dir=tmp_path, cluster_name="main")
    pm.hook.tether_configure(config=config)  # the audit file goes under data_dir
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.sqlite'}") as backend:
        yield await AuthService.open(config=config, pm=pm, backend=backend, clock=clock)


def host(
    name: str, kind: str = "node", cluster: str = "main", roles: tuple[str, ...] = ()
) -> pki.Identity:
    return pki.Identity(
        username=name,
        cluster=cluster,
        roles=roles,
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


async def refusals(auth: AuthService) -> list[audit.AuditEvent]:
    return await audit.search(auth.pm, audit.AuditQuery(type="host.publish.refused"))


async def test_a_node_from_before_host_roles_publishes_what_a_node_token_allowed(
    auth: AuthService,
) -> None:
    node = auth.make("node_gadget", "n1", {"hostname": "n1.example"})
    await auth.publish(host("n1"), node, HOUR)  # no roles in its certificate: Node
    await auth.publish(
        host("n2", roles=("Node",)),
        attrs.evolve(node, metadata=attrs.evolve(node.metadata, name="n2")),
        HOUR,
    )
    names = {
        g.metadata.name for g in await auth.get_resources(host("p", kind="proxy"), "node_gadget")
    }
    assert names == {"n1", "n2"}


async def test_a_host_of_another_role_cannot_publish_a_node_kind(auth: AuthService) -> None:
    node = auth.make("node_gadget", "g1", {"hostname": "g1.example"})
    with pytest.raises(
        AccessDenied, match="needs host role Node, and its certificate carries Gizmo"
    ):
        await auth.publish(host("g1", roles=("Gizmo",)), node, HOUR)
    [event] = await refusals(auth)
    assert (event.user, event.fields["kind"], event.success) == ("g1", "node_gadget", False)


async def test_a_host_publishes_several_entries_named_freely_but_none_of_another_host(
    auth: AuthService, clock: Clock
) -> None:
    gizmo_host = host("g1", roles=("Gizmo",))
    for name in ("prod", "staging"):
        await auth.publish(gizmo_host, auth.make("gizmo", name, {"host_id": "g1"}), HOUR)
    proxy = host("p", kind="proxy")
    assert {g.metadata.name for g in await auth.get_resources(proxy, "gizmo")} == {
        "prod",
        "staging",
    }
    other = host("g2", roles=("Gizmo", "Node"))
    with pytest.raises(
        AccessDenied, match="gizmo 'prod' is served by host g1; gizmo names are unique"
    ):
        await auth.publish(other, auth.make("gizmo", "prod", {"host_id": "g2"}), HOUR)
    with pytest.raises(AccessDenied, match="not 'prod', which names host 'g1'"):
        await auth.publish(other, auth.make("gizmo", "prod", {"host_id": "g1"}), HOUR)
    [prod] = await auth.get_resources(proxy, "gizmo", "prod")
    assert prod.spec.host_id == "g1"
    assert len(await refusals(auth)) == 2
    # g1 stopped: once its entry expired, another host may serve that name
    clock.now += 2 * HOUR.total_seconds()
    await auth.publish(other, auth.make("gizmo", "prod", {"host_id": "g2"}), HOUR)
    [prod] = await auth.get_resources(proxy, "gizmo", "prod")
    assert prod.spec.host_id == "g2"


# --- relayed entries removed when a host's tunnel closes ------------------------------------


def host_cert(auth: AuthService, who: pki.Identity) -> bytes:
    """The DER certificate auth would have issued ``who`` (what its tunnel presents)."""
    key = pki.generate_private_key()
    cert = pki.issue_x509_cert(auth.authorities.tls, key.public_key(), who)
    return cert.public_bytes(serialization.Encoding.DER)


async def relay(auth: AuthService, *entries: RelayedEntry) -> list[str | None]:
    return await auth.inventory.publish_relayed(
        host("p1", kind="proxy"),
        entries,
        verify=auth.verify_client,
        trust_revision=auth.trust_feed.revision,
    )


async def listed(auth: AuthService, kind: str = "gadget") -> set[str]:
    return {r.metadata.name for r in await auth.get_resources(host("p1", kind="proxy"), kind)}


async def test_a_host_cannot_get_another_hosts_relayed_entry_removed(auth: AuthService) -> None:
    # the attack: a node whose tunnel closes, or a proxy relaying for it, names another
    # node's entry as one to remove; only what the closing host may publish is removed
    victim, attacker = host_cert(auth, host("n1")), host_cert(auth, host("n2"))
    document = resource_to_dict(gadget(auth, "n1", {}))  # type: ignore[arg-type]
    assert await relay(auth, RelayedEntry(victim, document, 60.0)) == [None]
    removal = RelayedEntry(attacker, document, 60.0, removed=True, relayed_ago=0.0)
    [refused] = await relay(auth, removal)
    assert refused is not None and "may only publish its own gadget entry, not 'n1'" in refused
    assert await listed(auth) == {"n1"}
    # nor a freely named entry another host serves, even naming itself as its server
    gizmo_host, other = host("g1", roles=("Gizmo",)), host("g2", roles=("Gizmo",))
    prod = resource_to_dict(auth.make("gizmo", "prod", {"host_id": "g1"}))
    assert await relay(auth, RelayedEntry(host_cert(auth, gizmo_host), prod, 60.0)) == [None]
    claimed = resource_to_dict(auth.make("gizmo", "prod", {"host_id": "g2"}))
    gone = RelayedEntry(host_cert(auth, other), claimed, 60.0, removed=True)
    assert await relay(auth, gone) == [None]  # nothing of g2's to remove
    assert await listed(auth, "gizmo") == {"prod"}
    # its own host's removal does remove it
    assert await relay(auth, attrs.evolve(removal, cert=victim)) == [None]
    assert await listed(auth) == set()


async def test_a_relayed_removal_keeps_an_entry_published_again_since(
    auth: AuthService, clock: Clock
) -> None:
    # a node that moved to another proxy publishes its entry through its new tunnel before
    # the old proxy's removal arrives: the removal names when the old proxy relayed it
    cert = host_cert(auth, host("n1"))
    document = resource_to_dict(gadget(auth, "n1", {}))  # type: ignore[arg-type]
    assert await relay(auth, RelayedEntry(cert, document, 60.0)) == [None]  # via proxy A
    clock.now += 20
    assert await relay(auth, RelayedEntry(cert, document, 60.0)) == [None]  # via proxy B
    clock.now += 1
    stale = RelayedEntry(cert, document, 60.0, removed=True, relayed_ago=21.0)  # A's
    assert await relay(auth, stale) == [None]
    assert await listed(auth) == {"n1"}
    fresh = RelayedEntry(cert, document, 60.0, removed=True, relayed_ago=1.0)  # B's
    assert await relay(auth, fresh) == [None]
    assert await listed(auth) == set()
