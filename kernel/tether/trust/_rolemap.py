"""Role mapping: which of a leaf's roles a root user gets, from the trusted cluster's role_map.

A ``role_map`` is a list of rules ``{remote: <pattern>, local: [<role>, ...]}``. For each role
the user holds in the root cluster, every rule whose pattern matches contributes its local
roles. What a pattern means is decided by role-map strategies, plugins implementing
``tether_map_role``; the builtin ``role-maps`` reads the guide's three forms (an exact name, a
``*`` glob, a ``^...$`` re2 expression whose groups ``$1``..``$9`` expand in ``local``).

This module is pure: no I/O, no clock. It validates rules (:func:`parse_role_map`), asks the
strategies (:func:`map_roles`) and reports which rule mapped which role, so a denial can say
why and the audit log can show the mapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import pluggy
import re2

from tether.errors import PluginError

# the resource converter (so a malformed rule reads like any other field error) and rbac's
# one quiet, cached re2 compiler
from tether.patterns import compile_re2, re2_error_message
from tether.resources import InvalidField, Path, show, structure

__all__ = [
    "RoleMapRule",
    "RoleMapping",
    "expand_groups",
    "is_regex_pattern",
    "map_roles",
    "mapped_roles",
    "parse_role_map",
]

#: ``$0``..``$9`` (a capture group; ``$0`` the whole match) or ``$$`` (a literal ``$``).
_REFERENCE = re.compile(r"\$(\$|[0-9])")


@attrs.frozen
class RoleMapRule:
    """One rule of a ``role_map``: remote roles matching ``remote`` get the ``local`` roles.

    :param remote: the pattern a root role is matched against: a name (``access``), a glob
        (``cluster-*``, ``*``) or a ``^...$`` re2 expression; strategy plugins may read other
        syntaxes (see ``tether_map_role``).
    :param local: the leaf's roles, in order; an entry may refer to the pattern's capture
        groups as ``$1``..``$9`` (see :func:`expand_groups`).
    """

    remote: str
    local: tuple[str, ...]


@attrs.frozen
class RoleMapping:
    """What one rule made of one remote role.

    :param remote_role: the role the user holds in the root cluster.
    :param local_roles: the leaf roles it maps to through ``rule``, deduplicated, in order.
    :param rule: the rule that mapped it; None when no rule maps the role (and
        ``local_roles`` is empty).
    """

    remote_role: str
    local_roles: tuple[str, ...]
    rule: RoleMapRule | None


def is_regex_pattern(pattern: str) -> bool:
    """Whether ``pattern`` is a regular expression: it starts with ``^`` and ends with ``$``."""
    return len(pattern) >= 2 and pattern.startswith("^") and pattern.endswith("$")


def expand_groups(template: str, groups: Sequence[str | None]) -> str:
    """Expand ``$0``..``$9`` in a ``local`` entry with a match's groups; ``$$`` is one ``$``.

    ``groups[0]`` is the whole match and ``groups[n]`` the n-th capture group. A group that
    does not exist or did not participate expands to the empty string. A reference is one digit,
    so ``$12`` is group 1 followed by ``2``; any other ``$`` is kept as written.
    """

    def group(found: re.Match[str]) -> str:
        ref = found.group(1)
        if ref == "$":
            return "$"
        index = int(ref)
        return (groups[index] or "") if index < len(groups) else ""

    return _REFERENCE.sub(group, template)


def _referenced_groups(template: str) -> list[int]:
    return [int(ref) for ref in _REFERENCE.findall(template) if ref != "$"]


def _re2_problem(pattern: str, exc: BaseException) -> str:
    """re2's reason, and where in the pattern when re2 quotes a fragment found there once."""
    message = re2_error_message(exc)  # e.g. "missing ]: [a-$"
    _, sep, fragment = message.partition(": ")
    if sep and fragment and fragment != pattern and pattern.count(fragment) == 1:
        return f"{message} (at character {pattern.index(fragment) + 1})"
    return message


def _check_remote(remote: str, path: Path) -> int:
    """Validate one ``remote`` pattern; return its number of capture groups (0 unless re2)."""
    if not remote:
        raise InvalidField(
            path,
            "a rule needs a remote role pattern",
            hint="a role name, a glob such as 'dev-*', '*' for every role, or '^regex$'",
        )
    if is_regex_pattern(remote):
        try:
            compiled = compile_re2(remote)
        except re2.error as exc:
            raise InvalidField(
                path,
                f"invalid regular expression {remote!r}: {_re2_problem(remote, exc)}",
                hint="patterns starting with ^ and ending with $ use re2 syntax",
            ) from None
        return int(compiled.groups)
    if remote.startswith("^") or remote.endswith("$"):
        raise InvalidField(
            path,
            f"{remote!r} is half a regular expression: a regular expression starts with ^ "
            "and ends with $",
            hint=f"write '^{remote.strip('^$')}$' for a regular expression, or drop ^ and $",
        )
    return 0


def _check_rule(rule: RoleMapRule, path: Path) -> None:
    groups = _check_remote(rule.remote, (*path, "remote"))
    if not rule.local:
        raise InvalidField(
            (*path, "local"),
            "a rule maps to at least one local role",
            hint="local: [visitor]",
        )
    for j, entry in enumerate(rule.local):
        where = (*path, "local", j)
        if not entry:
            raise InvalidField(where, "a local role name must not be empty")
        if entry == "*":
            raise InvalidField(
                where,
                "'*' is not a role: local roles are names",
                hint="list the leaf roles to grant",
            )
        if is_regex_pattern(rule.remote):
            missing = [n for n in _referenced_groups(entry) if n > groups]
            if missing:
                counted = f"{groups} capture group" + ("" if groups == 1 else "s")
                raise InvalidField(
                    where,
                    f"{entry!r} refers to group {missing[0]}, but {rule.remote!r} has {counted}",
                    hint="add a group in parentheses, e.g. '^(.*)-dev$', or write $$ for a $",
                )


def parse_role_map(
    rules: Any, *, path: Sequence[str | int] = ("role_map",)
) -> tuple[RoleMapRule, ...]:
    """Validate a ``role_map``: rules as :class:`RoleMapRule` objects or plain mappings.

    Every rule needs a non-empty ``remote`` and at least one non-empty ``local`` role (``*`` is
    not a role). A ``^...$`` pattern must compile with re2 and ``$n`` in its ``local`` entries
    must name one of its groups; a pattern with only one of ``^`` and ``$`` is refused as a
    likely typo. Two rules with the same ``remote`` are refused: merge their ``local`` lists.
    Other patterns are not interpreted here, so a strategy plugin may give them meaning.

    :param path: where the role map sits in its resource, for error messages
        (``("spec", "role_map")`` in a trusted_cluster).
    :raises InvalidField: naming the rule and field, e.g. ``role_map[1].remote``.
    """
    base: Path = tuple(path)
    if rules is None:
        return ()
    if not isinstance(rules, list | tuple):
        raise InvalidField(
            base,
            f"expected a list of rules, got {show(rules)}",
            hint="role_map: [{remote: access, local: [visitor]}]",
        )
    parsed: list[RoleMapRule] = []
    first_of: dict[str, int] = {}
    for i, raw in enumerate(rules):
        rule: RoleMapRule = (
            raw if isinstance(raw, RoleMapRule) else structure(raw, RoleMapRule, (*base, i))
        )
        _check_rule(rule, (*base, i))
        if rule.remote in first_of:
            earlier = first_of[rule.remote]
            raise InvalidField(
                (*base, i, "remote"),
                f"{rule.remote!r} is already the pattern of rule {earlier}",
                hint="merge the two rules' local lists into one rule",
            )
        first_of[rule.remote] = i
        parsed.append(RoleMapRule(remote=rule.remote, local=tuple(rule.local)))
    return tuple(parsed)


def _local_roles(answer: object, rule: RoleMapRule, remote_role: str) -> tuple[str, ...]:
    """A strategy's answer as local roles; anything but None or a list of strings is a bug."""
    if answer is None:
        return ()
    if not isinstance(answer, list | tuple) or not all(isinstance(r, str) for r in answer):
        raise PluginError(
            f"a tether_map_role implementation returned {answer!r} for rule "
            f"{rule.remote!r} and role {remote_role!r}; expected a list of role names or None",
            hint="`tetherd plugins` lists the plugins that implement tether_map_role",
        )
    return tuple(dict.fromkeys(role for role in answer if role))


def map_roles(
    pm: pluggy.PluginManager,
    rules: Iterable[RoleMapRule | Mapping[str, Any]],
    remote_roles: Iterable[str],
    cluster: str,
) -> list[RoleMapping]:
    """Map a root user's roles through ``rules``, asking ``tether_map_role`` per rule and role.

    Every rule whose pattern matches a remote role contributes its local roles: the result has
    one :class:`RoleMapping` for each (remote role, rule that maps it), in the order of the
    remote roles and then of the rules, and one with ``rule=None`` for each remote role that no
    rule maps. :func:`mapped_roles` turns it into the user's leaf roles.

    :param pm: the plugin manager whose strategies (the builtin ``role-maps`` and any installed
        plugin) read the patterns.
    :param rules: the trusted cluster's ``spec.role_map``; validated with
        :func:`parse_role_map` first, so strategies only see well-formed rules.
    :param remote_roles: the user's roles in the root cluster.
    :param cluster: the root cluster's name, passed to the strategies.
    :raises InvalidField: a rule is invalid.
    :raises PluginError: a strategy answered something other than a list of names or None.
    """
    checked = parse_role_map(list(rules))
    mappings: list[RoleMapping] = []
    for remote_role in dict.fromkeys(remote_roles):
        mapped = False
        for rule in checked:
            answer = pm.hook.tether_map_role(rule=rule, remote_role=remote_role, cluster=cluster)
            local = _local_roles(answer, rule, remote_role)
            if local:
                mappings.append(RoleMapping(remote_role=remote_role, local_roles=local, rule=rule))
                mapped = True
        if not mapped:
            mappings.append(RoleMapping(remote_role=remote_role, local_roles=(), rule=None))
    return mappings


def mapped_roles(mappings: Iterable[RoleMapping]) -> tuple[str, ...]:
    """The leaf roles a user gets: the union of every mapping's local roles, in order."""
    return tuple(dict.fromkeys(role for m in mappings for role in m.local_roles))
