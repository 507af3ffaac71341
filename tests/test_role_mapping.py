"""Role mapping as a leaf administrator writes it and a plugin author extends it.

The guide's ``role_map`` examples (exact names, ``*`` globs, ``^...$`` re2 expressions with
``$1``), mistakes refused with the rule and field named, and the ``tether_map_role`` hook: the
builtin ``role-maps`` strategy is a plugin, and an installed strategy answers before it.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import pytest

import tether.trust as trust
from tether.builtins import role_maps
from tether.errors import PluginError
from tether.hookspecs import hookimpl
from tether.plugins import DEFAULT_PLUGINS, TetherPluginManager, get_plugin_manager
from tether.resources import InvalidField
from tether.trust import (
    RoleMapping,
    RoleMapRule,
    expand_groups,
    map_roles,
    mapped_roles,
    parse_role_map,
)

CLUSTER = "rootcluster.example.com"


@pytest.fixture
def pm() -> TetherPluginManager:
    return get_plugin_manager(autoload=False)


def leaf_roles(
    pm: TetherPluginManager, role_map: Sequence[dict[str, Any]], remote_roles: Sequence[str]
) -> tuple[str, ...]:
    return mapped_roles(map_roles(pm, role_map, remote_roles, CLUSTER))


def refusal(role_map: Any) -> str:
    with pytest.raises(InvalidField) as info:
        parse_role_map(role_map)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the guide's examples -----------------------------------------------------------------------


def test_root_user_with_access_role_gets_visitor_on_the_leaf(pm: TetherPluginManager) -> None:
    rule = RoleMapRule(remote="access", local=("visitor",))
    mappings = map_roles(pm, [rule], ["access", "editor"], CLUSTER)
    assert mappings == [
        RoleMapping(remote_role="access", local_roles=("visitor",), rule=rule),
        RoleMapping(remote_role="editor", local_roles=(), rule=None),
    ]
    assert mapped_roles(mappings) == ("visitor",)


def test_exact_names_match_the_whole_role_only(pm: TetherPluginManager) -> None:
    role_map = [{"remote": "access", "local": ["visitor"]}]
    assert leaf_roles(pm, role_map, ["access-all", "my-access", "Access"]) == ()


def test_a_bare_wildcard_maps_every_root_role(pm: TetherPluginManager) -> None:
    role_map = [{"remote": "*", "local": ["access"]}]
    assert leaf_roles(pm, role_map, ["editor"]) == ("access",)
    assert leaf_roles(pm, role_map, ["auditor", "anything-at-all"]) == ("access",)


def test_a_glob_maps_roles_that_begin_with_cluster(pm: TetherPluginManager) -> None:
    role_map = [{"remote": "cluster-*", "local": ["clusteradmin"]}]
    assert leaf_roles(pm, role_map, ["cluster-east"]) == ("clusteradmin",)
    assert leaf_roles(pm, role_map, ["cluster-"]) == ("clusteradmin",)
    assert leaf_roles(pm, role_map, ["supercluster-east", "cluster"]) == ()


def test_glob_characters_other_than_star_are_literal(pm: TetherPluginManager) -> None:
    role_map = [{"remote": "team.a+*", "local": ["team"]}]
    assert leaf_roles(pm, role_map, ["team.a+dev"]) == ("team",)
    assert leaf_roles(pm, role_map, ["teamxaa-dev"]) == ()


def test_regex_groups_expand_remote_one_to_local_one(pm: TetherPluginManager) -> None:
    role_map = [{"remote": "^remote-(.*)$", "local": ["local-$1"]}]
    assert leaf_roles(pm, role_map, ["remote-one"]) == ("local-one",)
    assert leaf_roles(pm, role_map, ["remote-one", "remote-two"]) == ("local-one", "local-two")
    assert leaf_roles(pm, role_map, ["one-remote"]) == ()


def test_dev_roles_become_visitor_roles(pm: TetherPluginManager) -> None:
    role_map = [{"remote": "^(.*)-dev$", "local": ["$1-visitor"]}]
    assert leaf_roles(pm, role_map, ["payments-dev", "payments-prod"]) == ("payments-visitor",)


def test_a_regex_must_match_the_whole_role(pm: TetherPluginManager) -> None:
    role_map = [{"remote": "^dev$", "local": ["developer"]}]
    assert leaf_roles(pm, role_map, ["dev", "dev-x", "x-dev"]) == ("developer",)


def test_a_glob_star_is_a_group_too_as_in_teleport(pm: TetherPluginManager) -> None:
    role_map = [{"remote": "*-dev", "local": ["$1-visitor"]}]
    assert leaf_roles(pm, role_map, ["payments-dev"]) == ("payments-visitor",)


def test_a_local_role_that_expands_to_nothing_is_skipped(pm: TetherPluginManager) -> None:
    role_map = [{"remote": "^(.*)-dev$", "local": ["$1", "fallback"]}]
    assert leaf_roles(pm, role_map, ["-dev"]) == ("fallback",)
    assert leaf_roles(pm, role_map, ["web-dev"]) == ("web", "fallback")


def test_a_rule_whose_every_role_expands_to_nothing_maps_nothing(pm: TetherPluginManager) -> None:
    rule = RoleMapRule(remote="^(a)?(.*)-dev$", local=("$1",))
    assert map_roles(pm, [rule], ["x-dev"], CLUSTER) == [
        RoleMapping(remote_role="x-dev", local_roles=(), rule=None)
    ]


def test_several_rules_matching_one_role_grant_the_union_in_order(
    pm: TetherPluginManager,
) -> None:
    exact = RoleMapRule(remote="access", local=("visitor", "auditor"))
    everything = RoleMapRule(remote="*", local=("visitor",))
    regex = RoleMapRule(remote="^acc(.*)$", local=("acc-$1", "visitor"))
    mappings = map_roles(pm, [exact, everything, regex], ["access", "editor"], CLUSTER)
    assert [(m.remote_role, m.rule) for m in mappings] == [
        ("access", exact),
        ("access", everything),
        ("access", regex),
        ("editor", everything),
    ]
    assert mappings[2].local_roles == ("acc-ess", "visitor")
    assert mapped_roles(mappings) == ("visitor", "auditor", "acc-ess")


def test_each_remote_role_is_reported_once_even_if_held_twice(pm: TetherPluginManager) -> None:
    mappings = map_roles(pm, [{"remote": "a", "local": ["b"]}], ["a", "a", "z"], CLUSTER)
    assert [m.remote_role for m in mappings] == ["a", "z"]


def test_a_user_with_no_mapped_role_gets_no_leaf_role(pm: TetherPluginManager) -> None:
    mappings = map_roles(pm, [{"remote": "access", "local": ["visitor"]}], ["auditor"], CLUSTER)
    assert mappings == [RoleMapping(remote_role="auditor", local_roles=(), rule=None)]
    assert mapped_roles(mappings) == ()


def test_group_references_expand_like_teleports() -> None:
    groups = ("payments-dev", "payments", None)
    assert expand_groups("$1-visitor", groups) == "payments-visitor"
    assert expand_groups("$0", groups) == "payments-dev"
    assert expand_groups("$2", groups) == ""  # a group that did not take part
    assert expand_groups("$7", groups) == ""  # a group that does not exist
    assert expand_groups("$12", groups) == "payments2"  # one digit per reference
    assert expand_groups("cost$$", groups) == "cost$"
    assert expand_groups("$x and $", groups) == "$x and $"


# -- mistakes are refused, naming the rule and the field ----------------------------------------


def test_an_invalid_regex_is_refused_with_re2s_reason_and_where() -> None:
    message = refusal(
        [{"remote": "access", "local": ["a"]}, {"remote": "^dev-[a$", "local": ["x"]}]
    )
    assert message == (
        "role_map[1].remote: invalid regular expression '^dev-[a$': missing ]: [a$ "
        "(at character 6) (patterns starting with ^ and ending with $ use re2 syntax)"
    )


def test_a_regex_re2_cannot_run_is_refused() -> None:
    message = refusal([{"remote": "^(?=dev)$", "local": ["x"]}])
    assert message.startswith("role_map[0].remote: invalid regular expression '^(?=dev)$': ")
    assert "invalid perl operator" in message


def test_a_group_reference_without_a_group_is_refused() -> None:
    assert refusal([{"remote": "^admin$", "local": ["ok", "$1-visitor"]}]) == (
        "role_map[0].local[1]: '$1-visitor' refers to group 1, but '^admin$' has 0 capture "
        "groups (add a group in parentheses, e.g. '^(.*)-dev$', or write $$ for a $)"
    )
    assert "has 1 capture group (" in refusal([{"remote": "^(a)-(?:b)$", "local": ["$2"]}])


@pytest.mark.parametrize(
    ("role_map", "expected"),
    [
        (
            [{"remote": "", "local": ["visitor"]}],
            "role_map[0].remote: a rule needs a remote role pattern",
        ),
        ([{"remote": "access"}], "role_map[0].local: required field missing"),
        (
            [{"remote": "access", "local": []}],
            "role_map[0].local: a rule maps to at least one local role",
        ),
        (
            [{"remote": "access", "local": "visitor"}],
            "role_map[0].local: expected a list of strings, got 'visitor'",
        ),
        (
            [{"remote": "access", "local": ["visitor", ""]}],
            "role_map[0].local[1]: a local role name must not be empty",
        ),
        (
            [{"remote": "access", "local": ["*"]}],
            "role_map[0].local[0]: '*' is not a role: local roles are names",
        ),
        (
            [{"remote": "^dev-(.*)", "local": ["x"]}],
            "role_map[0].remote: '^dev-(.*)' is half a regular expression",
        ),
        (
            [{"remote": "access", "local": ["a"]}, {"remote": "access", "local": ["b"]}],
            "role_map[1].remote: 'access' is already the pattern of rule 0",
        ),
        (
            [{"remote": "access", "locals": ["a"]}],
            "role_map[0].locals: unknown field (did you mean local?)",
        ),
        ({"remote": "access", "local": ["a"]}, "role_map: expected a list of rules, got a mapping"),
    ],
)
def test_mistakes_in_a_role_map_name_the_rule_and_field(role_map: Any, expected: str) -> None:
    assert refusal(role_map).startswith(expected)


def test_a_valid_role_map_parses_to_rules() -> None:
    assert parse_role_map(
        [{"remote": "access", "local": ["visitor"]}, RoleMapRule("^(.*)-dev$", ("$1",))]
    ) == (RoleMapRule("access", ("visitor",)), RoleMapRule("^(.*)-dev$", ("$1",)))
    assert parse_role_map(None) == ()


def test_mapping_refuses_an_invalid_rule_before_any_strategy_sees_it(
    pm: TetherPluginManager,
) -> None:
    with pytest.raises(InvalidField, match=r"^role_map\[0\]\.remote: invalid regular"):
        map_roles(pm, [RoleMapRule(remote="^(x$", local=("x",))], ["x"], CLUSTER)


# -- strategies are plugins ---------------------------------------------------------------------


class PrefixStrategy:
    """A third-party syntax: ``prefix:dev-`` matches every role that starts with ``dev-``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    @hookimpl
    def tether_map_role(
        self, rule: RoleMapRule, remote_role: str, cluster: str
    ) -> list[str] | None:
        self.calls.append((rule.remote, remote_role, cluster))
        if not rule.remote.startswith("prefix:"):
            return None
        if not remote_role.startswith(rule.remote.removeprefix("prefix:")):
            return []
        return list(rule.local)


def test_role_maps_builtin_is_a_default_plugin(pm: TetherPluginManager) -> None:
    assert ("role-maps", "tether.builtins.role_maps") in DEFAULT_PLUGINS
    assert pm.get_plugin("role-maps") is role_maps


def test_a_strategy_plugin_adds_its_own_pattern_syntax(pm: TetherPluginManager) -> None:
    strategy = PrefixStrategy()
    pm.register(strategy, name="prefix-maps")
    prefixed = RoleMapRule(remote="prefix:dev-", local=("developer",))
    exact = RoleMapRule(remote="access", local=("visitor",))
    mappings = map_roles(pm, [prefixed, exact], ["dev-alice", "access", "prefix:dev-"], CLUSTER)
    assert mappings == [
        RoleMapping(remote_role="dev-alice", local_roles=("developer",), rule=prefixed),
        RoleMapping(remote_role="access", local_roles=("visitor",), rule=exact),
        # the strategy answered [] for its own pattern, so the builtin never read
        # "prefix:dev-" as an exact role name
        RoleMapping(remote_role="prefix:dev-", local_roles=(), rule=None),
    ]
    assert ("prefix:dev-", "dev-alice", CLUSTER) in strategy.calls


def test_without_the_plugin_the_builtin_reads_the_pattern_as_a_name(
    pm: TetherPluginManager,
) -> None:
    role_map = [{"remote": "prefix:dev-", "local": ["developer"]}]
    assert leaf_roles(pm, role_map, ["dev-alice"]) == ()
    assert leaf_roles(pm, role_map, ["prefix:dev-"]) == ("developer",)


def test_an_installed_strategy_answers_before_the_builtin(pm: TetherPluginManager) -> None:
    class Shadow:
        @hookimpl
        def tether_map_role(self, rule: RoleMapRule) -> list[str] | None:
            return ["shadow"] if rule.remote == "access" else None

    pm.register(Shadow(), name="shadow")
    role_map = [{"remote": "access", "local": ["visitor"]}, {"remote": "*", "local": ["all"]}]
    assert leaf_roles(pm, role_map, ["access"]) == ("shadow", "all")


def test_every_strategy_hears_the_root_cluster_name(pm: TetherPluginManager) -> None:
    strategy = PrefixStrategy()
    pm.register(strategy, name="prefix-maps")
    map_roles(pm, [{"remote": "access", "local": ["visitor"]}], ["access"], "root.example")
    assert strategy.calls == [("access", "access", "root.example")]


def test_with_role_maps_disabled_and_no_strategy_nothing_maps() -> None:
    pm = get_plugin_manager(disabled=["role-maps"], autoload=False)
    assert leaf_roles(pm, [{"remote": "*", "local": ["access"]}], ["access"]) == ()


def test_a_strategy_answering_nonsense_is_refused_not_guessed(pm: TetherPluginManager) -> None:
    class Broken:
        @hookimpl
        def tether_map_role(self) -> str:
            return "admin"  # a string, not a list: would grant the roles a, d, m, i, n

    pm.register(Broken(), name="broken")
    with pytest.raises(PluginError) as info:
        map_roles(pm, [{"remote": "access", "local": ["visitor"]}], ["access"], CLUSTER)
    assert str(info.value) == (
        "a tether_map_role implementation returned 'admin' for rule 'access' and role "
        "'access'; expected a list of role names or None (`tetherd plugins` lists the plugins "
        "that implement tether_map_role)"
    )


def test_the_builtin_never_grants_on_a_pattern_that_does_not_compile() -> None:
    # map_roles validates first; a rule built in code and passed to the hook directly is safe too
    assert role_maps.tether_map_role(RoleMapRule("^(x$", ("admin",)), "x") == []


def test_public_api_is_what_all_says() -> None:
    # a submodule (tether.trust.handshake) is an attribute once anything in the process has
    # imported it, which depends on the tests that ran before: it is no name the package
    # exports
    public = {
        name
        for name, value in vars(trust).items()
        if not name.startswith(("_", "@"))
        and not (
            isinstance(value, types.ModuleType) and value.__name__ == f"{trust.__name__}.{name}"
        )
    }
    assert public == set(trust.__all__)
