"""The public API for plugin authors: the only kernel module a plugin imports (besides
:mod:`tether.testing`).

This branch holds only what the contrib protocol example (``contrib/echo-protocol``) needs;
the whole contract is assembled with the other plugins' needs.
"""

from __future__ import annotations

from tether.cli._common import emit_table, output, run_async
from tether.client.dial import list_targets, open_target_stream
from tether.client.profile import Profile, current_profile, profile_ssl_context
from tether.config import Config
from tether.dial import DialedTarget
from tether.errors import AccessDenied, ConfigError, NotFound, TetherError
from tether.hookspecs import hookimpl
from tether.node.protocols import AgentContext, AgentStream
from tether.pki import Identity
from tether.protocols import DialedConnection, ProtocolHandler
from tether.rbac import RoleSet
from tether.resources import InvalidField, KindRegistry, Resource, ResourceKind, resource_from_dict
from tether.targets import Target, TargetKind
from tether.tunnel.forward import splice

__all__ = [
    "AccessDenied",
    "AgentContext",
    "AgentStream",
    "Config",
    "ConfigError",
    "DialedConnection",
    "DialedTarget",
    "Identity",
    "InvalidField",
    "KindRegistry",
    "NotFound",
    "Profile",
    "ProtocolHandler",
    "Resource",
    "ResourceKind",
    "RoleSet",
    "Target",
    "TargetKind",
    "TetherError",
    "current_profile",
    "emit_table",
    "hookimpl",
    "list_targets",
    "open_target_stream",
    "output",
    "profile_ssl_context",
    "resource_from_dict",
    "run_async",
    "splice",
]
