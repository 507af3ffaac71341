"""Builtin plugin ``core-kinds``: the resource kinds the kernel itself needs.

Registered through ``tether_resource_kinds`` like any plugin's kinds (datasette's
``DEFAULT_PLUGINS`` habit), so the registry has one code path and a plugin that redefines
``role`` collides loudly instead of silently winning.
"""

from __future__ import annotations

from tether.hookspecs import hookimpl
from tether.resources import CERT_AUTHORITY, ROLE, TOKEN, USER, ResourceKind

__all__ = ["tether_resource_kinds"]


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """Return role, user, token and cert_authority."""
    return [USER, ROLE, TOKEN, CERT_AUTHORITY]
