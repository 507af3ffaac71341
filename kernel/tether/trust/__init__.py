"""Trusted clusters: the trusted_cluster and remote_cluster resources, and role mapping.

A leaf trusts a root through a ``trusted_cluster`` resource (where the root is, the invitation
token, the ``role_map``); the root records the leaf as a ``remote_cluster`` with its labels and
connection status. When a root user reaches the leaf, the leaf maps the user's root roles to its
own with :func:`map_roles`, whose patterns are read by role-map strategies (plugins implementing
``tether_map_role``; the builtin ``role-maps`` reads exact names, ``*`` globs and ``^...$`` re2
expressions).
"""

from tether.trust._decision import AuditFn
from tether.trust._kinds import (
    REMOTE_CLUSTER,
    TRUSTED_CLUSTER,
    RemoteClusterSpec,
    RemoteClusterStatus,
    TrustedClusterSpec,
)
from tether.trust._rolemap import (
    RoleMapping,
    RoleMapRule,
    expand_groups,
    is_regex_pattern,
    map_roles,
    mapped_roles,
    parse_role_map,
)
from tether.trust._verify import ClusterTrust, TrustedRoot

__all__ = [
    "REMOTE_CLUSTER",
    "TRUSTED_CLUSTER",
    "AuditFn",
    "ClusterTrust",
    "RemoteClusterSpec",
    "RemoteClusterStatus",
    "RoleMapRule",
    "RoleMapping",
    "TrustedClusterSpec",
    "TrustedRoot",
    "expand_groups",
    "is_regex_pattern",
    "map_roles",
    "mapped_roles",
    "parse_role_map",
]
