"""Fields plugins add to a role's ``allow`` and ``deny`` conditions (``tether_role_fields``).

A Kubernetes plugin needs ``kubernetes_resources``, a database plugin ``db_roles``: the role
kind is rebuilt per registry with a conditions class that has them, so they are structured,
refused with the field's path when wrong, validated (list values may be ``{{internal.x}}``
templates) and written back by ``tetherctl get role`` exactly like the kernel's own fields,
and :class:`tether.rbac.RoleSet` evaluates them by name. A field of ``records`` (a list of
objects, such as ``kubernetes_resources``' kind, namespace, name and verbs) is structured into
the plugin's own attrs class, whose validators refuse what is wrong; the plugin decides what
the records mean, reading them per role with ``RoleSet.conditions_matching``.
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
        ``records``: a list of objects structured into ``record`` (read per role with
        ``RoleSet.conditions_matching``).
    :ivar description: a few words saying what the field grants.
    :ivar record: for ``records``, the frozen attrs class of one item; its validators refuse
        a wrong item (a ``ValueError`` or ``FieldError`` is reported with the item's path).
    """

    name: str
    kind: Literal["strings", "labels", "records"]
    description: str = ""
    record: type | None = None

    def __attrs_post_init__(self) -> None:
        if (self.kind == "records") != (self.record is not None):
            raise ResourceError(
                f"role field {self.name!r}: give record (an attrs class) exactly when the kind "
                "is records"
            )
        if self.record is not None and not attrs.has(self.record):
            raise ResourceError(f"role field {self.name!r}: record must be an attrs class")


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
            if field.kind not in ("strings", "labels", "records"):
                raise ResourceError(
                    f"{where}: kind {field.kind!r} is not strings, labels or records"
                )
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
        elif field.kind == "records":
            annotations[field.name] = tuple[field.record, ...]  # type: ignore[name-defined]
            namespace[field.name] = attrs.field(default=(), metadata={ROLE_FIELD_KIND: "records"})
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
