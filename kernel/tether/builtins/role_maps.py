"""Builtin plugin ``role-maps``: the guide's role_map patterns, as a role-map strategy.

A rule's ``remote`` is an exact role name (``access``), a glob in which ``*`` matches any run of
characters (``cluster-*``; a bare ``*`` matches every role), or a re2 regular expression when it
starts with ``^`` and ends with ``$`` (``^(.*)-dev$``). ``local`` entries expand ``$1``..``$9``
with the capture groups (each ``*`` of a glob is one, as in Teleport); an entry that expands to
the empty string is dropped.

Registered through ``tether_map_role`` exactly like a third-party strategy. This one claims
every pattern, answering ``[]`` when a role does not match; since builtins are registered first
and pluggy calls later registrations first, an installed strategy always sees a rule before it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from tether.hookspecs import hookimpl

if TYPE_CHECKING:  # every command-line start registers the builtins: they import when called
    from tether.trust import RoleMapRule

__all__ = ["tether_map_role"]


@functools.lru_cache(maxsize=1024)
def _compiled(remote: str) -> Any | None:
    """The re2 expression a pattern stands for; None if it does not compile."""
    import re2

    from tether.trust import is_regex_pattern

    if is_regex_pattern(remote):
        source = remote
    else:
        source = "^" + "(.*)".join(re2.escape(part) for part in remote.split("*")) + "$"
    options = re2.Options()
    options.log_errors = False  # re2 would print every bad pattern to stderr
    try:
        return re2.compile(source, options)
    except re2.error:
        return None


@hookimpl
def tether_map_role(rule: RoleMapRule, remote_role: str) -> list[str]:
    """Return ``rule.local`` expanded when ``remote_role`` matches ``rule.remote``, else []."""
    from tether.trust import expand_groups

    pattern = _compiled(rule.remote)
    # parse_role_map refuses patterns that do not compile; never grant on one regardless
    found = pattern.fullmatch(remote_role) if pattern is not None else None
    if found is None:
        return []
    groups = (found.group(0), *found.groups())
    expanded = (expand_groups(entry, groups) for entry in rule.local)
    return [role for role in expanded if role]
