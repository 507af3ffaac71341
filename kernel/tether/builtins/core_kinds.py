"""Builtin plugin ``core-kinds``: the resource kinds the kernel itself needs.

Registered through ``tether_resource_kinds`` like any plugin's kinds (datasette's
``DEFAULT_PLUGINS`` habit), so the registry has one code path and a plugin that redefines
``role`` collides loudly instead of silently winning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.hookspecs import hookimpl

if TYPE_CHECKING:  # every command-line start registers the builtins: they import when called
    from tether.resources import ResourceKind

__all__ = ["tether_resource_kinds"]


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """Return user, role, token, cert_authority, proxy, trusted_cluster and remote_cluster."""
    from tether.resources import CERT_AUTHORITY, PROXY, ROLE, TOKEN, USER
    from tether.trust import REMOTE_CLUSTER, TRUSTED_CLUSTER

    return [USER, ROLE, TOKEN, CERT_AUTHORITY, PROXY, TRUSTED_CLUSTER, REMOTE_CLUSTER]
