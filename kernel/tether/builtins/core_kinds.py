"""Builtin plugin ``core-kinds``: the resource kinds the kernel itself needs.

Registered through ``tether_resource_kinds`` like any plugin's kinds (datasette's
``DEFAULT_PLUGINS`` habit), so the registry has one code path and a plugin that redefines
``role`` collides loudly instead of silently winning.
"""

from __future__ import annotations

from tether.hookspecs import hookimpl
from tether.resources import CERT_AUTHORITY, PROXY, ROLE, TOKEN, USER, ResourceKind
from tether.trust import REMOTE_CLUSTER, TRUSTED_CLUSTER

__all__ = ["tether_resource_kinds"]


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """Return user, role, token, cert_authority, proxy, trusted_cluster and remote_cluster."""
    return [USER, ROLE, TOKEN, CERT_AUTHORITY, PROXY, TRUSTED_CLUSTER, REMOTE_CLUSTER]
