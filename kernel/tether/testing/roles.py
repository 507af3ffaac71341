"""Roles for tests of code that authorizes without an auth service: a protocol plugin's server
reading a :class:`~tether.rbac.RoleSet`, a role-map strategy, a resource kind's validation."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import attrs

from tether.builtins import core_kinds
from tether.plugins import TetherPluginManager
from tether.rbac import RoleSet
from tether.resources import KindRegistry, Resource, parse_resources

__all__ = ["VISITOR_ROLE", "core_registry", "role_set"]

#: the guide's role on a leaf: log in as ``visitor`` to every node (YAML for ``tetherctl create``)
VISITOR_ROLE = """\
kind: role
version: v7
metadata:
  name: visitor
spec:
  allow:
    logins: [visitor]
    node_labels: {'*': '*'}
"""


def core_registry(plugins: Sequence[ModuleType] = ()) -> KindRegistry:
    """The kinds the kernel itself defines (role, user, token, cert_authority, ...), with what
    ``plugins`` (plugin modules, e.g. ``tether_kube.plugin``) add: their kinds and the role
    fields they declare."""
    pm = TetherPluginManager()
    pm.register(core_kinds, name="core-kinds")
    for plugin in plugins:
        pm.register(plugin, name=plugin.__name__)
    return KindRegistry.from_plugins(pm)


def role_set(text: str, *, plugins: Sequence[ModuleType] = (), **options: Any) -> RoleSet:
    """The roles in the YAML ``text``, each with ``spec.options`` fields set to ``options``
    (``role_set(ROLE, forward_agent=True)``), as a server evaluates them; read with the role
    fields ``plugins`` add (``role_set(ROLE, plugins=[tether_kube.plugin])``)."""
    roles = parse_resources(text, "roles.yaml", core_registry(plugins))
    if options:
        roles = [
            attrs.evolve(role, spec=attrs.evolve(role.spec, options=_with(role, options)))
            for role in roles
        ]
    return RoleSet(roles)


def _with(role: Resource, options: dict[str, Any]) -> Any:
    return attrs.evolve(role.spec.options, **options)
