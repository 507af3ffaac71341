"""Finding a target by what a user typed (tether.targets), the front door's port rule
(tether.proxy.routing.check_port), for any target kind, and what a protocol may claim on the
proxy's port (tether.protocols): ALPN ids and route name prefixes."""

from __future__ import annotations

import pytest

from tether.errors import AmbiguousTarget, NotFound, PluginError, TetherError
from tether.protocols import ProtocolHandler, collect_protocols
from tether.proxy.routing import PortRefused, check_port
from tether.resources import ResourceKind
from tether.targets import Target, TargetKind, TargetQuery, matching_targets, resolve_target

WEB = Target(kind="db", id="a1", name="web", addr="10.0.0.5:5432", labels={"env": "prod"})
API = Target(kind="db", id="b2", name="api", labels={"env": "prod", "tier": "back"})
TARGETS = [WEB, API]
DB = ResourceKind(name="db", versions=("v1",), spec_type=dict, storage_prefix="/db/")
DB_TARGET = TargetKind(DB, lambda r: WEB, list_command="tether db ls")


def _handler() -> ProtocolHandler:
    return ProtocolHandler(name="db", alpn=("db/1",), target_kind=DB_TARGET, title="Postgres")


@pytest.mark.parametrize(
    ("typed", "found"),
    [("web", WEB), ("a1", WEB), ("10.0.0.5", WEB), ("api", API), ("tier=back", API)],
)
def test_a_target_is_found_by_name_id_address_or_labels(typed: str, found: Target) -> None:
    found_by = resolve_target(TARGETS, TargetQuery.parse(typed), kind=DB_TARGET, cluster="main")
    assert found_by is found


def test_several_matches_are_listed_with_how_to_pick_one() -> None:
    with pytest.raises(AmbiguousTarget) as refused:
        resolve_target(TARGETS, TargetQuery.parse("env=prod"), kind=DB_TARGET, cluster="main")
    assert "2 dbs in cluster 'main' match 'env=prod'" in refused.value.message
    assert "web (id a1)" in refused.value.message


@pytest.mark.parametrize(
    ("typed", "found"),
    [("env=prod", [WEB, API]), ("env=pr*", [WEB, API]), ("tier=back", [API]), ("web", [WEB]),
     ("env=dev", [])],
)  # fmt: skip
def test_a_client_acting_on_several_targets_selects_them_as_the_proxy_resolves_one(
    typed: str, found: list[Target]
) -> None:
    assert matching_targets(TARGETS, TargetQuery.parse(typed)) == found


def test_no_match_suggests_the_closest_names_and_the_protocols_own_listing() -> None:
    with pytest.raises(NotFound) as refused:
        resolve_target(TARGETS, TargetQuery.parse("wbe"), kind=DB_TARGET, cluster="main")
    assert refused.value.message == "db 'wbe' not found in cluster 'main'; did you mean web?"
    assert refused.value.hint == "run `tether db ls` to see the dbs you can reach"


def test_no_match_in_a_leaf_hints_the_listing_of_that_leaf() -> None:
    with pytest.raises(NotFound) as refused:
        resolve_target(
            TARGETS, TargetQuery.parse("nope"), kind=DB_TARGET, cluster="leaf", leaf=True
        )
    assert refused.value.message == "db 'nope' not found in cluster 'leaf'"
    assert refused.value.hint == "run `tether db ls --cluster=leaf` to see the dbs you can reach"


@pytest.mark.parametrize("command", ["", "  ", "tether ls\nrm -rf /", "run `x`"])
def test_a_target_kind_names_one_listing_command(command: str) -> None:
    with pytest.raises(TetherError, match="list_command must be the one-line command"):
        TargetKind(DB, lambda r: WEB, list_command=command)


def test_a_label_query_needs_keys() -> None:
    with pytest.raises(TetherError, match="is not label=value"):
        TargetQuery.parse("env=prod,=x")


def test_only_the_targets_own_port_may_be_named() -> None:
    handler = _handler()
    check_port(handler, WEB, 0)
    check_port(handler, WEB, 5432)
    with pytest.raises(PortRefused) as refused:
        check_port(handler, WEB, 22)
    assert refused.value.message == (
        "db 'web' serves Postgres on port 5432; the front door connects only there, not to port 22"
    )
    with pytest.raises(PortRefused, match="reached through its tunnel"):
        check_port(handler, API, 5432)


def test_a_protocol_either_reaches_targets_or_is_served_at_the_proxy() -> None:
    async def serve(conn: object) -> None:
        return None

    with pytest.raises(TetherError, match="either a target_kind"):
        ProtocolHandler(name="both", alpn=("x/1",), target_kind=_handler().target_kind, serve=serve)
    with pytest.raises(TetherError, match="either a target_kind"):
        ProtocolHandler(name="neither", alpn=("x/1",))


def test_a_route_name_prefix_is_for_a_protocol_that_reaches_targets() -> None:
    async def serve(conn: object) -> None:
        return None

    with pytest.raises(TetherError, match="gives a server_name_prefix but no target_kind"):
        ProtocolHandler(name="greeter", alpn=("g/1",), serve=serve, server_name_prefix="greet")
    with pytest.raises(TetherError, match="server_name_alpn but no server_name_prefix"):
        ProtocolHandler(name="db", alpn=(), target_kind=DB_TARGET, server_name_alpn=("http/1.1",))


@pytest.mark.parametrize("prefix", ["Kube", "ku-be", "kube.x", "ku_be", "kübe", " kube"])
def test_a_route_name_prefix_is_lower_case_letters_and_digits(prefix: str) -> None:
    with pytest.raises(TetherError, match="must be lower-case letters and digits"):
        ProtocolHandler(name="db", alpn=(), target_kind=DB_TARGET, server_name_prefix=prefix)


def test_two_plugins_cannot_claim_one_route_name_prefix() -> None:
    first = ProtocolHandler(
        name="kube", alpn=("k/1",), target_kind=DB_TARGET, server_name_prefix="kube"
    )
    second = ProtocolHandler(name="k8s", alpn=(), target_kind=DB_TARGET, server_name_prefix="kube")
    with pytest.raises(PluginError) as refused:
        collect_protocols([[first], [second]])
    assert refused.value.message == (
        "server name prefix 'kube' is claimed by protocols 'kube' and 'k8s'"
    )
    assert refused.value.hint == "disable one of the plugins"


def test_a_protocol_reached_only_by_route_names_is_collected() -> None:
    kube = ProtocolHandler(
        name="kube",
        alpn=(),
        target_kind=DB_TARGET,
        server_name_prefix="kube",
        server_name_alpn=("http/1.1",),  # a kernel id: offered on its route names only
    )
    protocols = collect_protocols([[_handler()], [kube]])
    assert protocols.handlers == (_handler(), kube)
    assert protocols.by_alpn == {"db/1": _handler()}
    assert protocols.by_server_name_prefix == {"kube": kube}
