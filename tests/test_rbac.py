"""RBAC as the guide's users meet it: a root user mapped to ``visitor`` on a leaf, templates
that carry root traits across, labels that pick nodes and clusters, deny beating allow."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tether.rbac as rbac
from tether.errors import AccessDenied, ResourceError
from tether.rbac import RoleSet, expand_template, match_labels, validate_template
from tether.resources import (
    USER,
    KindRegistry,
    Resource,
    UserSpec,
    parse_resources,
    preset_roles,
)
from tether.testing.roles import core_registry

TRAITS: Mapping[str, Sequence[str]] = {
    "logins": ["ubuntu", "root"],
    "kubernetes_groups": ["system:masters"],
    "kubernetes_users": ["alice"],
    "db_users": ["postgres"],
    "db_names": ["dev", "metrics"],
    "env_from_okta": ["staging"],
    "email": ["alice@example.com", "not-an-email"],
    "groups": ["admin-ops", "dev-web", "admins"],
}


@pytest.fixture(scope="module")
def registry() -> KindRegistry:
    return core_registry()


def roles(text: str, registry: KindRegistry) -> list[Resource]:
    return parse_resources(text, "roles.yaml", registry)


def role(name: str, body: str, registry: KindRegistry) -> Resource:
    [parsed] = roles(f"kind: role\nversion: v5\nmetadata:\n  name: {name}\nspec:\n{body}", registry)
    return parsed


def denial(call: Callable[..., None], *args: object, **kwargs: object) -> str:
    with pytest.raises(AccessDenied) as info:
        call(*args, **kwargs)
    return str(info.value)


# -- templates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("visitor", ["visitor"]),
        ("{{internal.logins}}", ["ubuntu", "root"]),
        ("{{ internal.logins }}", ["ubuntu", "root"]),
        ("{{external.env_from_okta}}", ["staging"]),
        ('{{external["env_from_okta"]}}', ["staging"]),
        ("ssh-{{internal.logins}}-x", ["ssh-ubuntu-x", "ssh-root-x"]),
        ("{{internal.missing}}", []),
        ("{{email.local(external.email)}}", ["alice"]),
        ('{{regexp.replace(external.groups, "^admin-(.*)$", "$1-admin")}}', ["ops-admin"]),
        ('team-{{regexp.replace(external.groups, "^(.*)-web$", "$1")}}', ["team-dev"]),
    ],
)
def test_templates_expand_with_the_users_traits(value: str, expected: list[str]) -> None:
    assert expand_template(value, TRAITS) == expected


def test_template_expansion_drops_duplicates_and_empty_values() -> None:
    assert expand_template("{{internal.logins}}", {"logins": ["a", "", "a", "b"]}) == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{{internal.logins", "'{{' is not closed with '}}' at column 1"),
        ("x}}", "'}}' without '{{' at column 2"),
        (
            "{{internal.a}}{{internal.b}}",
            "only one {{...}} expression is allowed per value at column 15",
        ),
        ("{{}}", "empty expression at column 1"),
        (
            "{{interal.logins}}",
            "unknown namespace 'interal' (expected internal or external) at column 3",
        ),
        ("{{internal}}", "expression ends too early at column 11"),
        ("{{internal.logins.x}}", "unexpected '.' after the expression at column 18"),
        ("{{internal.logins!}}", "unexpected '!' at column 18"),
        ("{{email.remote(external.email)}}", "unknown function 'email.remote'"),
        ('{{regexp.replace(external.x, "^(a$", "b")}}', "invalid regular expression '^(a$'"),
        ("{{regexp.replace(external.x)}}", "expected ',', found ')'"),
    ],
)
def test_bad_templates_are_refused_with_their_column(value: str, problem: str) -> None:
    with pytest.raises(ResourceError) as info:
        validate_template(value)
    assert str(info.value).startswith(f"invalid template {value!r}: ")
    assert problem in str(info.value)


def test_literals_are_valid_templates() -> None:
    validate_template("root")
    validate_template("^ops-.*$")


# -- labels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({"*": ["*"]}, {}, True),
        ({"*": ["*"]}, {"env": "prod"}, True),
        ({"*": "*"}, {"env": "prod"}, True),
        ({"*": ["prod"]}, {"env": "prod"}, False),
        ({}, {"env": "prod"}, False),
        ({"env": ["prod"]}, {"env": "prod"}, True),
        ({"env": ["prod"]}, {"env": "production"}, False),
        ({"env": ["staging", "prod"]}, {"env": "prod"}, True),
        ({"env": ["*"]}, {"env": "anything"}, True),
        ({"env": ["*"]}, {}, False),
        ({"env": ["prod-*"]}, {"env": "prod-eu"}, True),
        ({"env": ["prod-*"]}, {"env": "xprod-eu"}, False),
        ({"env": ["*.example.com"]}, {"env": "aXexample.com"}, False),
        ({"env": ["^prod-(eu|us)$"]}, {"env": "prod-us"}, True),
        ({"env": ["^prod-(eu|us)$"]}, {"env": "prod-asia"}, False),
        ({"env": ["^prod$"]}, {"env": "prod2"}, False),
        ({"env": ["^(broken$"]}, {"env": "(broken"}, False),
        ({"env": ["prod"], "team": ["ops"]}, {"env": "prod", "team": "ops"}, True),
        ({"env": ["prod"], "team": ["ops"]}, {"env": "prod"}, False),
        ({"env": []}, {"env": "prod"}, False),
    ],
)
def test_label_selectors_match_like_teleport(
    selector: Mapping[str, Sequence[str]], labels: Mapping[str, str], matches: bool
) -> None:
    assert match_labels(selector, labels) is matches


# -- logins and nodes ----------------------------------------------------------------------------

VISITOR = """\
kind: role
version: v5
metadata:
  name: visitor
spec:
  allow:
    logins:
      - visitor
    node_labels:
      '*': '*'
"""


def test_root_user_mapped_to_visitor_logs_in_to_leaf_node_as_visitor(
    registry: KindRegistry,
) -> None:
    leaf_roles = RoleSet(roles(VISITOR, registry))
    leaf_roles.check_login("visitor", node_labels={"hostname": "ip-172-3-2-205"}, traits=TRAITS)
    assert leaf_roles.logins(TRAITS) == ["visitor"]


def test_mapped_visitor_cannot_log_in_as_root(registry: KindRegistry) -> None:
    leaf_roles = RoleSet(roles(VISITOR, registry))
    message = denial(leaf_roles.check_login, "root", node_labels={}, traits=TRAITS)
    assert message.startswith("login 'root' is not allowed by roles visitor")


def test_logins_from_root_traits_flow_through_internal_logins_template(
    registry: KindRegistry,
) -> None:
    access = preset_roles()[0]
    user_roles = RoleSet([access])
    assert user_roles.logins(TRAITS) == ["root", "ubuntu"]
    user_roles.check_login("ubuntu", node_labels={"env": "prod"}, traits=TRAITS)
    assert "not allowed" in denial(user_roles.check_login, "visitor", node_labels={}, traits=TRAITS)
    assert user_roles.traits_values("kubernetes_groups", TRAITS) == ["system:masters"]
    assert user_roles.traits_values("db_names", TRAITS) == ["dev", "metrics"]


def test_user_with_added_visitor_login_gets_it_from_the_access_role() -> None:
    user = USER.new(
        "myuser", UserSpec(roles=("access",), traits={"logins": ("visitor", "ubuntu", "root")})
    )
    assert RoleSet(preset_roles()[:1]).logins(user.spec.traits) == ["root", "ubuntu", "visitor"]


def test_node_whose_labels_do_not_match_is_refused_naming_the_roles(
    registry: KindRegistry,
) -> None:
    stage = role(
        "stage-access", "  allow:\n    logins: [dba]\n    node_labels: {env: stage}\n", registry
    )
    message = denial(
        RoleSet([stage]).check_login, "dba", node_labels={"env": "prod"}, traits=TRAITS
    )
    assert message == (
        "node labels env=prod do not match the node_labels of roles "
        "stage-access, which allow login 'dba'"
    )
    RoleSet([stage]).check_login("dba", node_labels={"env": "stage"}, traits=TRAITS)


def test_login_and_labels_must_be_allowed_by_the_same_role(registry: KindRegistry) -> None:
    a = role("a", "  allow:\n    logins: [dba]\n    node_labels: {env: stage}\n", registry)
    b = role("b", "  allow:\n    logins: [web]\n    node_labels: {env: prod}\n", registry)
    assert "do not match" in denial(
        RoleSet([a, b]).check_login, "dba", node_labels={"env": "prod"}, traits=TRAITS
    )


def test_external_trait_in_node_labels_selects_nodes(registry: KindRegistry) -> None:
    okta = role(
        "okta",
        "  allow:\n    logins: ['{{internal.logins}}', "
        "'{{external.logins_from_okta}}']\n"
        "    node_labels:\n      env: '{{external.env_from_okta}}'\n",
        registry,
    )
    roleset = RoleSet([okta])
    roleset.check_login("ubuntu", node_labels={"env": "staging"}, traits=TRAITS)
    denial(roleset.check_login, "ubuntu", node_labels={"env": "prod"}, traits=TRAITS)
    # without the trait the selector has no values and matches nothing
    denial(
        roleset.check_login, "ubuntu", node_labels={"env": "staging"}, traits={"logins": ["ubuntu"]}
    )


def test_deny_login_wins_over_allow(registry: KindRegistry) -> None:
    no_root = role("no-root", "  deny:\n    logins: [root]\n", registry)
    roleset = RoleSet([preset_roles()[0], no_root])
    message = denial(roleset.check_login, "root", node_labels={}, traits=TRAITS)
    assert message == "login 'root' on this node is denied by role 'no-root'"
    roleset.check_login("ubuntu", node_labels={}, traits=TRAITS)
    assert roleset.logins(TRAITS) == ["ubuntu"]


def test_deny_node_labels_alone_keeps_holders_off_those_nodes(registry: KindRegistry) -> None:
    no_prod = role("no-prod", "  deny:\n    node_labels: {env: ['^prod.*$']}\n", registry)
    roleset = RoleSet([preset_roles()[0], no_prod])
    assert "denied by role 'no-prod'" in denial(
        roleset.check_login, "ubuntu", node_labels={"env": "production"}, traits=TRAITS
    )
    roleset.check_login("ubuntu", node_labels={"env": "stage"}, traits=TRAITS)


def test_deny_with_labels_applies_only_to_matching_nodes(registry: KindRegistry) -> None:
    body = "  deny:\n    logins: [root]\n    node_labels: {env: prod}\n"
    roleset = RoleSet([preset_roles()[0], role("no-prod-root", body, registry)])
    denial(roleset.check_login, "root", node_labels={"env": "prod"}, traits=TRAITS)
    roleset.check_login("root", node_labels={"env": "dev"}, traits=TRAITS)
    assert roleset.logins(TRAITS) == ["ubuntu"]  # certificates never carry a denied login


def test_database_user_and_name_come_from_traits_as_the_guide_shares_them() -> None:
    # the preset access role: db_users and db_names from {{internal.db_users}} and names
    access = RoleSet([preset_roles()[0]])
    access.check_db_access("postgres", "dev", db_labels={"env": "prod"}, traits=TRAITS)
    assert denial(access.check_db_access, "admin", "dev", db_labels={}, traits=TRAITS) == (
        "database user 'admin' is not allowed by roles access (their db_users) (add the user "
        "to the user's db_users trait or to a role)"
    )
    assert "database name 'billing' is not allowed by roles access" in denial(
        access.check_db_access, "postgres", "billing", db_labels={}, traits=TRAITS
    )


def test_database_user_name_and_labels_must_be_allowed_by_the_same_role(
    registry: KindRegistry,
) -> None:
    a = role("a", "  allow:\n    db_users: [dba]\n    db_names: ['*']\n"
             "    db_labels: {env: stage}\n", registry)  # fmt: skip
    b = role("b", "  allow:\n    db_users: [web]\n    db_names: [shop]\n"
             "    db_labels: {env: prod}\n", registry)  # fmt: skip
    roleset = RoleSet([a, b])
    roleset.check_db_access("dba", "anything", db_labels={"env": "stage"}, traits=TRAITS)
    roleset.check_db_access("web", "shop", db_labels={"env": "prod"}, traits=TRAITS)
    assert "not allowed by roles b" in denial(
        roleset.check_db_access, "dba", "shop", db_labels={"env": "prod"}, traits=TRAITS
    )
    assert "match the db_labels of none of roles a, b" in denial(
        roleset.check_db_access, "web", "shop", db_labels={"env": "dev"}, traits=TRAITS
    )


def test_database_deny_rules_win_over_allow(registry: KindRegistry) -> None:
    everything = role("all", "  allow:\n    db_users: ['*']\n    db_names: ['*']\n"
                      "    db_labels: {'*': '*'}\n", registry)  # fmt: skip
    no_admin = role("no-admin", "  deny:\n    db_users: [admin]\n", registry)
    no_prod = role("no-prod", "  deny:\n    db_labels: {env: prod}\n", registry)
    no_billing = role("no-billing", "  deny:\n    db_names: [billing]\n", registry)
    roleset = RoleSet([everything, no_admin, no_prod, no_billing])
    roleset.check_db_access("reader", "shop", db_labels={"env": "dev"}, traits=TRAITS)
    assert denial(roleset.check_db_access, "admin", "shop", db_labels={}, traits=TRAITS) == (
        "database user 'admin' is denied by role 'no-admin'"
    )
    assert denial(
        roleset.check_db_access, "reader", "shop", db_labels={"env": "prod"}, traits=TRAITS
    ) == ("this database is denied by role 'no-prod'")
    assert denial(roleset.check_db_access, "reader", "billing", db_labels={}, traits=TRAITS) == (
        "database name 'billing' is denied by role 'no-billing'"
    )


def test_allowed_database_users_are_what_tether_db_ls_shows(registry: KindRegistry) -> None:
    dev = role("dev", "  allow:\n    db_users: [reader, '{{internal.db_users}}']\n"
               "    db_labels: {env: dev}\n", registry)  # fmt: skip
    ops = role("ops", "  allow:\n    db_users: [admin]\n    db_labels: {'*': '*'}\n", registry)
    no_admin_prod = role("no-admin-prod", "  deny:\n    db_users: [admin]\n"
                         "    db_labels: {env: prod}\n", registry)  # fmt: skip
    no_billing = role("no-billing", "  deny:\n    db_names: [billing]\n", registry)
    roleset = RoleSet([dev, ops, no_admin_prod, no_billing])

    def allowed(labels: Mapping[str, str]) -> list[str]:
        return roleset.allowed_values(
            "db_users", labels_field="db_labels", labels=labels, traits=TRAITS
        )

    assert allowed({"env": "dev"}) == ["admin", "postgres", "reader"]
    assert allowed({"env": "prod"}) == []  # admin denied there, reader not allowed there
    assert allowed({"env": "stage"}) == ["admin"]  # a deny of db_names only removes no user
    closed = RoleSet([dev, role("closed", "  deny:\n    db_labels: {env: dev}\n", registry)])
    assert (
        closed.allowed_values(
            "db_users", labels_field="db_labels", labels={"env": "dev"}, traits=TRAITS
        )
        == []
    )


def test_deny_wildcard_login_denies_every_login(registry: KindRegistry) -> None:
    roleset = RoleSet([preset_roles()[0], role("none", "  deny:\n    logins: ['*']\n", registry)])
    denial(roleset.check_login, "ubuntu", node_labels={}, traits=TRAITS)
    assert roleset.logins(TRAITS) == []


def test_no_roles_allow_nothing() -> None:
    message = denial(RoleSet([]).check_login, "root", node_labels={}, traits=TRAITS)
    assert "not allowed by roles (none)" in message
    assert RoleSet([]).logins(TRAITS) == []


# -- clusters ------------------------------------------------------------------------------------

DEMO_CLUSTER_ACCESS = """\
kind: role
metadata:
  name: demo-cluster-access
spec:
  allow:
    cluster_labels:
      'env': 'demo'
version: v5
"""


def test_unlabelled_leaf_is_visible_to_everyone() -> None:
    assert RoleSet(preset_roles()).can_see_cluster({}, TRAITS)
    assert RoleSet([]).can_see_cluster({}, TRAITS)


def test_labelled_leaf_needs_a_role_with_matching_cluster_labels(
    registry: KindRegistry,
) -> None:
    access = RoleSet(preset_roles()[:1])
    assert not access.can_see_cluster({"env": "demo"}, TRAITS)
    with_demo = RoleSet([*preset_roles()[:1], *roles(DEMO_CLUSTER_ACCESS, registry)])
    assert with_demo.can_see_cluster({"env": "demo"}, TRAITS)
    assert not with_demo.can_see_cluster({"env": "prod"}, TRAITS)


def test_deny_cluster_labels_hide_a_leaf_even_from_allowed_roles(
    registry: KindRegistry,
) -> None:
    hide = role("hide", "  deny:\n    cluster_labels: {env: demo}\n", registry)
    roleset = RoleSet([*roles(DEMO_CLUSTER_ACCESS, registry), hide])
    assert not roleset.can_see_cluster({"env": "demo"}, TRAITS)
    assert roleset.can_see_cluster({}, TRAITS)
    hide_all = role("hide-all", "  deny:\n    cluster_labels: {'*': '*'}\n", registry)
    assert not RoleSet([hide_all]).can_see_cluster({}, TRAITS)


# -- resource rules ------------------------------------------------------------------------------


def test_editor_may_create_roles_and_auditor_may_not() -> None:
    _, editor, auditor = preset_roles()
    RoleSet([editor]).check_rule("role", "create")
    RoleSet([auditor]).check_rule("event", "read")
    RoleSet([auditor]).check_rule("session", "list")
    message = denial(RoleSet([auditor]).check_rule, "role", "create")
    assert message == "role rules do not allow create on role (roles held: auditor)"
    denial(RoleSet([auditor]).check_rule, "event", "delete")


def test_deny_rule_wins_over_editor(registry: KindRegistry) -> None:
    frozen = role(
        "no-ca-edits",
        "  deny:\n    rules:\n    - resources: [cert_authority]\n      verbs: [update, delete]\n",
        registry,
    )
    roleset = RoleSet([preset_roles()[1], frozen])
    roleset.check_rule("cert_authority", "read")
    assert denial(roleset.check_rule, "cert_authority", "delete") == (
        "role 'no-ca-edits' denies delete on cert_authority"
    )


def test_unknown_verb_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown verb 'craete'"):
        RoleSet(preset_roles()).check_rule("role", "craete")


# -- options and misc ----------------------------------------------------------------------------


def test_max_session_ttl_is_the_shortest_of_the_roles(registry: KindRegistry) -> None:
    short = role("short", "  options:\n    max_session_ttl: 1h30m\n", registry)
    assert RoleSet([*preset_roles(), short]).max_session_ttl() == datetime.timedelta(minutes=90)
    assert RoleSet(preset_roles()).max_session_ttl() == datetime.timedelta(hours=30)
    assert RoleSet([]).max_session_ttl() == datetime.timedelta(0)


def test_idle_timeout_and_expired_cert_disconnect_take_the_strictest_role(
    registry: KindRegistry,
) -> None:
    lax = role("lax", "  options:\n    client_idle_timeout: 1h\n", registry)
    strict = role(
        "strict",
        "  options:\n    client_idle_timeout: 5m\n    disconnect_expired_cert: true\n",
        registry,
    )
    assert RoleSet(preset_roles()).client_idle_timeout() is None
    assert not RoleSet(preset_roles()).disconnect_expired_cert()
    both = RoleSet([*preset_roles(), lax, strict])
    assert both.client_idle_timeout() == datetime.timedelta(minutes=5)
    assert both.disconnect_expired_cert()


def test_load_data_local_is_allowed_only_by_a_role_option(registry: KindRegistry) -> None:
    assert not RoleSet(preset_roles()).db_load_data_local()
    loader = role("loader", "  options:\n    db_load_data_local: true\n", registry)
    assert RoleSet([*preset_roles(), loader]).db_load_data_local()


def test_traits_values_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown role field 'node_labels'"):
        RoleSet([]).traits_values("node_labels", TRAITS)


def test_roleset_refuses_resources_that_are_not_roles() -> None:
    with pytest.raises(TypeError, match="user 'bob' is not a role"):
        RoleSet([USER.new("bob", UserSpec())])


def test_roleset_names_its_roles() -> None:
    assert RoleSet(preset_roles()).names == ("access", "editor", "auditor")


def test_public_api_is_what_all_says() -> None:
    public = {name for name in dir(rbac) if not name.startswith(("_", "@"))}
    assert public == set(rbac.__all__)


# -- which resources a user's roles reach (tether ls) -------------------------------------------


def test_user_lists_only_nodes_whose_labels_a_role_selects(registry: KindRegistry) -> None:
    dev = role("dev", "  allow:\n    node_labels: {env: dev}\n", registry)
    roleset = RoleSet([dev])
    assert roleset.can_access("node_labels", {"env": "dev", "os": "linux"}, TRAITS)
    assert not roleset.can_access("node_labels", {"env": "prod"}, TRAITS)
    assert not roleset.can_access("node_labels", {}, TRAITS)
    assert not roleset.can_access("db_labels", {"env": "dev"}, TRAITS)


def test_deny_labels_hide_a_node_but_a_login_only_deny_does_not(registry: KindRegistry) -> None:
    hide = role("hide-prod", "  deny:\n    node_labels: {env: prod}\n", registry)
    no_root = role("no-root", "  deny:\n    logins: [root]\n", registry)
    roleset = RoleSet([preset_roles()[0], hide, no_root])
    assert not roleset.can_access("node_labels", {"env": "prod"}, TRAITS)
    assert roleset.can_access("node_labels", {"env": "dev"}, TRAITS)


def test_label_reach_expands_trait_templates(registry: KindRegistry) -> None:
    by_team = role("by-team", "  allow:\n    node_labels: {team: '{{external.team}}'}\n", registry)
    roleset = RoleSet([by_team])
    assert roleset.can_access("node_labels", {"team": "blue"}, {"team": ["blue"]})
    assert not roleset.can_access("node_labels", {"team": "red"}, {"team": ["blue"]})
    with pytest.raises(ValueError, match="unknown label condition"):
        roleset.can_access("logins", {}, TRAITS)


# -- what a trait supplies is a value, never a pattern -------------------------------------------


@pytest.mark.parametrize(
    ("value", "trait", "label", "matches"),
    [
        ("{{external.team}}", "blue", "blue", True),
        ("{{external.team}}", "blue", "red", False),
        ("{{external.team}}", "*", "red", False),
        ("{{external.team}}", "*", "*", True),
        ("{{external.team}}", "^.*$", "red", False),
        ("{{external.team}}", "^.*$", "^.*$", True),
        ("{{external.team}}", "bl*", "blue", False),
        ("team-{{external.team}}", "*", "team-red", False),
        ("team-{{external.team}}", "*", "team-*", True),
        ("{{external.team}}-*", "blue", "blue-eu", True),
        ("{{external.team}}-*", "*", "red-eu", False),
        ("{{external.team}}-*", "*", "*-eu", True),
        ("^dev-{{external.team}}-.*$", "blue", "dev-blue-1", True),
        ("^dev-{{external.team}}-.*$", ".*", "dev-red-1", False),
        ("^dev-{{external.team}}-.*$", ".*", "dev-.*-1", True),
        ("^dev-{{external.team}}-.*$", "(a|b)", "dev-a-1", False),
        ("^{{external.team}}$", "^.*$", "red", False),
        ('{{regexp.replace(external.team, "^(.*)$", "x-$1")}}', "*", "x-red", False),
        ("{{email.local(external.team)}}", "*@example.com", "red", False),
    ],
)
def test_a_trait_in_a_label_selector_matches_only_literally(
    value: str, trait: str, label: str, matches: bool
) -> None:
    selector = {"team": rbac.expand_label_value(value, {"team": [trait]})}
    assert match_labels(selector, {"team": label}) is matches


def test_the_roles_own_patterns_keep_their_meaning_beside_a_template() -> None:
    assert rbac.expand_label_value("^prod-.*$", {}) == ["^prod-.*$"]
    assert rbac.expand_label_value("prod-*", {}) == ["prod-*"]
    assert rbac.expand_label_value("{{external.team}}", {"team": ["blue"]}) == ["blue"]


def test_a_user_whose_trait_is_a_wildcard_reaches_no_node_through_it(
    registry: KindRegistry,
) -> None:
    by_team = role(
        "by-team",
        "  allow:\n    logins: [dev]\n    node_labels:\n"
        "      team: '{{external.team}}'\n      env: '^dev-{{internal.env}}-.*$'\n",
        registry,
    )
    roleset = RoleSet([by_team])
    node = {"team": "red", "env": "dev-eu-1"}
    for wild in ("*", "^.*$", ".*"):
        traits = {"team": [wild], "env": [wild]}
        assert not roleset.can_access("node_labels", node, traits)
        denial(roleset.check_login, "dev", node_labels=node, traits=traits)
    real = {"team": ["red"], "env": ["eu"]}
    assert roleset.can_access("node_labels", node, real)
    roleset.check_login("dev", node_labels=node, traits=real)


def test_logins_groups_and_database_users_from_traits_are_never_wildcards(
    registry: KindRegistry,
) -> None:
    wild = {
        "logins": ["*", "^.*$", "ubuntu", "ops-*"],
        "kubernetes_groups": ["*", "system:masters"],
        "db_users": ["^.*$", "postgres"],
    }
    access = RoleSet(preset_roles()[:1])
    assert access.logins(wild) == ["ubuntu"]
    assert access.traits_values("kubernetes_groups", wild) == ["system:masters"]
    assert access.traits_values("db_users", wild) == ["postgres"]
    message = denial(access.check_login, "root", node_labels={}, traits=wild)
    assert message.startswith("login 'root' is not allowed")
    # a deny filled from a trait of '*' denies no more than a literal '*' login (none)
    deny = role("deny-listed", "  deny:\n    logins: ['{{external.blocked}}']\n", registry)
    roleset = RoleSet([preset_roles()[0], deny])
    assert roleset.logins({**wild, "blocked": ["*"]}) == ["ubuntu"]
    # a role's own '*' is still a wildcard
    none = role("none", "  deny:\n    logins: ['*']\n", registry)
    assert RoleSet([preset_roles()[0], none]).logins(wild) == []


# -- a selector's answer never depends on the order of its keys ----------------------------------

_KEYS = st.sampled_from(["env", "team", "os", "*"])
_ACCEPTED = st.sampled_from(["*", "prod", "dev", "prod-*", "^d.*$", "blue"])
_SELECTORS = st.dictionaries(_KEYS, st.lists(_ACCEPTED, min_size=1, max_size=3), max_size=4)
_LABELS = st.dictionaries(
    st.sampled_from(["env", "team", "os"]), st.sampled_from(["prod", "dev", "blue", "prod-eu"])
)


@given(selector=_SELECTORS, labels=_LABELS, data=st.data())
def test_the_order_of_a_selectors_keys_never_changes_its_answer(
    selector: dict[str, list[str]], labels: dict[str, str], data: st.DataObject
) -> None:
    reordered = dict(data.draw(st.permutations(list(selector.items()))))
    assert match_labels(reordered, labels) is match_labels(selector, labels)
    # every key counts: the selector matches only where each key alone does
    alone = all(match_labels({k: v}, labels) for k, v in selector.items())
    assert match_labels(selector, labels) is (bool(selector) and alone)


@given(selector=_SELECTORS, labels=_LABELS, data=st.data())
def test_the_order_of_a_deny_rules_keys_never_changes_what_it_hides(
    selector: dict[str, list[str]], labels: dict[str, str], data: st.DataObject
) -> None:
    if "*" in selector:  # roles accept only '*': '*' under the '*' key
        selector["*"] = ["*"]
    reordered = dict(data.draw(st.permutations(list(selector.items()))))

    def reach(deny: dict[str, list[str]]) -> bool:
        body = f"  deny:\n    node_labels: {json.dumps(deny)}\n"
        roleset = RoleSet([preset_roles()[0], role("deny", body, core_registry())])
        return roleset.can_access("node_labels", labels, TRAITS)

    assert reach(reordered) is reach(selector)


@pytest.mark.parametrize(
    "deny",
    [{"*": ["*"], "env": ["prod"]}, {"env": ["prod"], "*": ["*"]}],
    ids=["star-first", "env-first"],
)
def test_a_deny_with_a_star_key_hides_only_what_its_other_keys_select(
    deny: dict[str, list[str]], registry: KindRegistry
) -> None:
    hide = role("hide", f"  deny:\n    node_labels: {json.dumps(deny)}\n", registry)
    roleset = RoleSet([preset_roles()[0], hide])
    assert not roleset.can_access("node_labels", {"env": "prod"}, TRAITS)
    assert roleset.can_access("node_labels", {"env": "dev"}, TRAITS)
    assert roleset.can_access("node_labels", {}, TRAITS)
