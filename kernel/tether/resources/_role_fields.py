"""Fields plugins add to a role's ``allow`` and ``deny`` conditions (``tether_role_fields``).

A Kubernetes plugin needs ``kubernetes_resources``, a database plugin ``db_roles``: the role
kind is rebuilt per registry with a conditions class that has them, so they are structured,
refused with the field's path when wrong, validated (list values may be ``{{internal.x}}``
templates) and written back by ``tetherctl get role`` exactly like the kernel's own fields,
and :class:`tether.rbac.RoleSet` evaluates them by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import attrs

from tether.errors import ResourceError
from tether.resources._convert import Labels
from tether.resources._kinds import ROLE, RoleConditions, RoleSpec, check_conditions
from tether.resources._model import Resource, ResourceKind

if TYPE_CHECKING:
    import pluggy

__all__ = ["ROLE_FIELD_KIND", "RoleField", "extend_role_kind", "role_fields"]

#: attrs metadata key of a plugin's field in role conditions: its kind, strings or labels
ROLE_FIELD_KIND = "tether_role_field"

_KERNEL_FIELDS = frozenset(attrs.fields_dict(RoleConditions))


@attrs.frozen
class RoleField:
    """One field of ``spec.allow`` and ``spec.deny`` that a plugin adds to roles.

    :ivar name: the key, e.g. ``kubernetes_resources``.
    :ivar kind: ``strings``: a list of strings, each may be a template such as
        ``{{internal.db_users}}`` (read with ``RoleSet.traits_values``); ``labels``: a label
        selector like ``node_labels`` (read with ``RoleSet.can_access``).
    :ivar description: a few words saying what the field grants.
    """

    name: str
    kind: Literal["strings", "labels"]
    description: str = ""


def role_fields(pm: pluggy.PluginManager) -> Mapping[str, RoleField]:
    """Every field plugins add to role conditions, by name.

    :raises ResourceError: a name the kernel's conditions have, one declared twice, or a kind
        other than ``strings`` and ``labels``; names the plugins.
    """
    fields: dict[str, RoleField] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.tether_role_fields.get_hookimpls():
        for field in cast("list[RoleField] | None", impl.function()) or []:
            where = f"plugin {impl.plugin_name!r}: role field {field.name!r}"
            if field.name in _KERNEL_FIELDS:
                raise ResourceError(f"{where}: roles already have that field")
            if field.name in owners:
                raise ResourceError(f"{where}: also declared by plugin {owners[field.name]!r}")
            if field.kind not in ("strings", "labels"):
                raise ResourceError(f"{where}: kind {field.kind!r} is not strings or labels")
            fields[field.name] = field
            owners[field.name] = impl.plugin_name
    return fields


def extend_role_kind(fields: Sequence[RoleField]) -> ResourceKind:
    """The ``role`` kind whose conditions also have ``fields``."""
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__annotations__": annotations, "__module__": __name__}
    for field in fields:
        if field.kind == "strings":
            annotations[field.name] = tuple[str, ...]
            namespace[field.name] = attrs.field(default=(), metadata={ROLE_FIELD_KIND: "strings"})
        else:
            annotations[field.name] = Labels
            namespace[field.name] = attrs.field(factory=dict, metadata={ROLE_FIELD_KIND: "labels"})
    conditions = attrs.frozen(type("RoleConditions", (RoleConditions,), namespace))
    spec = attrs.frozen(
        type(
            "RoleSpec",
            (RoleSpec,),
            {
                "__annotations__": {"allow": conditions, "deny": conditions},
                "__module__": __name__,
                "allow": attrs.field(factory=conditions),
                "deny": attrs.field(factory=conditions),
            },
        )
    )
    strings = tuple(f.name for f in fields if f.kind == "strings")
    labels = tuple(f.name for f in fields if f.kind == "labels")

    def validate(resource: Resource) -> None:
        assert ROLE.validate is not None
        ROLE.validate(resource)
        for side in ("allow", "deny"):
            check_conditions(getattr(resource.spec, side), side, strings, labels)

    return attrs.evolve(ROLE, spec_type=spec, validate=validate)
