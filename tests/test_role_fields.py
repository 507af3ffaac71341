"""A plugin adds fields to roles (``tether_role_fields``): hooktest's ``hooktest_gadgets``
(strings, templates allowed), ``hooktest_labels`` (a selector) and ``hooktest_rules``
(records of the plugin's own class), validated with the role, written back by ``tetherctl get
role`` and read through the RoleSet API."""

from __future__ import annotations

import pathlib

import pytest
import tether_hooktest

from tether.errors import ResourceError
from tether.hookspecs import hookimpl
from tether.plugins import get_plugin_manager
from tether.rbac import RoleSet
from tether.resources import (
    KindRegistry,
    RoleField,
    parse_resources,
    resource_to_dict,
    role_fields,
)
from tether.testing.cluster import start_cluster

GADGETS_ROLE = """\
kind: role
version: v7
metadata:
  name: gadgeteer
spec:
  allow:
    logins: [visitor]
    hooktest_gadgets: ["{{internal.gadgets}}", spanner]
    hooktest_labels: {team: blue}
    hooktest_rules: [{gadget: spanner, count: 2}, {gadget: wrench}]
  deny:
    hooktest_gadgets: [hammer]
"""

RULES_ROLES = """\
kind: role
version: v7
metadata: {name: blue}
spec:
  allow:
    hooktest_labels: {team: blue}
    hooktest_rules: [{gadget: spanner}]
---
kind: role
version: v7
metadata: {name: red}
spec:
  allow:
    hooktest_labels: {team: red}
    hooktest_rules: [{gadget: saw}]
---
kind: role
version: v7
metadata: {name: careful}
spec:
  deny:
    hooktest_rules: [{gadget: saw, count: 3}]
"""


@pytest.fixture
def registry(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> KindRegistry:
    """The core kinds, with hooktest's role fields."""
    monkeypatch.setenv(tether_hooktest.LOG_ENV, str(tmp_path / "hooks.jsonl"))
    pm = get_plugin_manager(autoload=False)
    pm.register(tether_hooktest, name="hooktest")
    return KindRegistry.from_plugins(pm)


def error_of(text: str, registry: KindRegistry) -> str:
    with pytest.raises(ResourceError) as info:
        parse_resources(text, "gadgets.yaml", registry)
    return str(info.value)


def test_plugin_reads_its_role_field_through_the_roleset(registry: KindRegistry) -> None:
    roles = RoleSet(parse_resources(GADGETS_ROLE, "gadgets.yaml", registry))
    traits = {"gadgets": ["wrench", "hammer"]}

    assert roles.traits_values("hooktest_gadgets", traits) == ["spanner", "wrench"]
    assert roles.can_access("hooktest_labels", {"team": "blue"}, traits)
    assert not roles.can_access("hooktest_labels", {"team": "red"}, traits)
    assert roles.logins(traits) == ["visitor"]


def test_plugin_reads_its_records_per_role_where_the_labels_match(
    registry: KindRegistry,
) -> None:
    roles = RoleSet(parse_resources(RULES_ROLES, "rules.yaml", registry))
    rule = tether_hooktest.GadgetRule

    allowed = roles.conditions_matching(
        "hooktest_rules", side="allow", labels_field="hooktest_labels",
        labels={"team": "blue"}, traits={},
    )  # fmt: skip
    denied = roles.conditions_matching(
        "hooktest_rules", side="deny", labels_field="hooktest_labels",
        labels={"team": "blue"}, traits={},
    )  # fmt: skip

    assert allowed == [("blue", (rule("spanner"),))]
    # a deny without a selector applies wherever it is; what a role's records say (here,
    # nothing for blue and red) is the plugin's to read
    assert denied == [("blue", ()), ("red", ()), ("careful", (rule("saw", 3),))]


def test_role_field_is_kept_on_read_back(registry: KindRegistry) -> None:
    [role] = parse_resources(GADGETS_ROLE, "gadgets.yaml", registry)

    spec = resource_to_dict(role)["spec"]

    assert spec["allow"]["hooktest_gadgets"] == ["{{internal.gadgets}}", "spanner"]
    assert spec["allow"]["hooktest_labels"] == {"team": "blue"}
    assert spec["deny"]["hooktest_gadgets"] == ["hammer"]
    assert spec["allow"]["hooktest_rules"] == [
        {"gadget": "spanner", "count": 2},
        {"gadget": "wrench", "count": 1},
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("hooktest_gadgets: [hammer]", "hooktest_gadgets: hammer"),
         "gadgets.yaml:12: document 1 (role 'gadgeteer'): spec.deny.hooktest_gadgets: "
         "expected a list of strings, got 'hammer'"),
        (("spanner]", "'{{internal.gadgets']"),
         "gadgets.yaml:8: document 1 (role 'gadgeteer'): spec.allow.hooktest_gadgets[1]:"),
        (("hooktest_labels:", "hooktest_label:"),
         "gadgets.yaml:9: document 1 (role 'gadgeteer'): spec.allow.hooktest_label: "
         "unknown field (did you mean hooktest_labels?)"),
        (("count: 2", "count: 0"),
         "gadgets.yaml:10: document 1 (role 'gadgeteer'): spec.allow.hooktest_rules[0]"),
        (("{gadget: wrench}", "{gadjet: wrench}"),
         "gadgets.yaml:10: document 1 (role 'gadgeteer'): spec.allow.hooktest_rules[1]"),
    ],
)  # fmt: skip
def test_mistakes_in_a_plugins_role_field_point_at_the_line(
    registry: KindRegistry, change: tuple[str, str], expected: str
) -> None:
    assert error_of(GADGETS_ROLE.replace(*change), registry).startswith(expected)


def test_without_the_plugin_the_field_is_not_supported() -> None:
    registry = KindRegistry.from_plugins(get_plugin_manager(autoload=False))

    assert "spec.allow.hooktest_gadgets: not supported by Tether" in error_of(
        GADGETS_ROLE, registry
    )


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (RoleField("logins", "strings"),
         "plugin 'bad': role field 'logins': roles already have that field"),
        (RoleField("hooktest_gadgets", "labels"),
         "plugin 'bad': role field 'hooktest_gadgets': also declared by plugin 'hooktest'"),
        (RoleField("widgets", "numbers"),  # type: ignore[arg-type]
         "plugin 'bad': role field 'widgets': kind 'numbers' is not strings, labels or "
         "records"),
    ],
)  # fmt: skip
def test_misdeclared_role_fields_are_refused_naming_the_plugin(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    declared: RoleField,
    message: str,
) -> None:
    class Bad:
        @hookimpl
        def tether_role_fields(self) -> list[RoleField]:
            return [declared]

    monkeypatch.setenv(tether_hooktest.LOG_ENV, str(tmp_path / "hooks.jsonl"))
    pm = get_plugin_manager(autoload=False)
    pm.register(tether_hooktest, name="hooktest")
    pm.register(Bad(), name="bad")

    with pytest.raises(ResourceError) as info:
        role_fields(pm)

    assert info.value.message == message


def test_admin_creates_a_role_with_a_plugins_field_and_gets_it_back(
    tmp_path: pathlib.Path,
) -> None:
    env = {tether_hooktest.LOG_ENV: str(tmp_path / "hooks.jsonl")}
    (tmp_path / "gadgeteer.yaml").write_text(GADGETS_ROLE)
    cluster = start_cluster(tmp_path / "cluster", "fields", env=env)
    try:
        cluster.tetherctl("create", str(tmp_path / "gadgeteer.yaml"), env=env)
        shown = cluster.tetherctl("get", "role/gadgeteer", env=env).stdout
        (tmp_path / "bad.yaml").write_text(GADGETS_ROLE.replace("[hammer]", "hammer"))
        refused = cluster.tetherctl("create", str(tmp_path / "bad.yaml"), env=env, check=False)
    finally:
        cluster.stop()

    assert "hooktest_gadgets:" in shown and "'{{internal.gadgets}}'" in shown
    assert "hooktest_labels:" in shown
    assert refused.returncode != 0
    assert "bad.yaml:12: document 1 (role 'gadgeteer'): spec.deny.hooktest_gadgets" in (
        refused.stderr
    )
