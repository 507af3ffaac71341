"""The types of join token ``tetherctl tokens add --type=...`` accepts, the kernel's and the
plugins' (``tether_token_types``).

A type is a name for people and the role stored in the token, which is what a join checks:
a ``node`` token joins a node (role ``Node``) and nothing else. A neutral module, so that the
hookspecs, the auth service and the CLI can all name it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

import attrs

from tether.errors import PluginError

if TYPE_CHECKING:
    from tether.plugins import TetherPluginManager

__all__ = ["KERNEL_TOKEN_TYPES", "TokenType", "token_types"]

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@attrs.frozen
class TokenType:
    """One value of ``tetherctl tokens add --type``.

    :ivar name: what the admin types, e.g. ``node``.
    :ivar role: the role stored in the token, which the join of that kind of host asks for
        (``Node``); a token joins only as its role.
    :ivar description: a few words for ``tetherctl tokens add --help``.
    """

    name: str
    role: str
    description: str


#: the kernel's types, registered by the builtin ``core-services`` like a plugin's
KERNEL_TOKEN_TYPES = (
    TokenType("node", "Node", "a node joins the cluster"),
    TokenType("proxy", "Proxy", "another proxy joins the cluster"),
    TokenType("trusted_cluster", "TrustedCluster", "a leaf cluster asks for trust"),
)


def token_types(pm: TetherPluginManager) -> Mapping[str, TokenType]:
    """Every registered token type by name, in registration order (the kernel's first).

    :raises PluginError: a bad name, or a name or role declared twice; names the plugins.
    """
    types: dict[str, TokenType] = {}
    owners: dict[str, str] = {}
    roles: dict[str, str] = {}
    for impl in pm.hook.tether_token_types.get_hookimpls():
        declared = cast("list[TokenType] | None", impl.function()) or []
        for token_type in declared:
            where = f"plugin {impl.plugin_name!r}: token type {token_type.name!r}"
            if not _NAME.fullmatch(token_type.name):
                raise PluginError(f"{where}: a token type is lower_case_with_underscores")
            if token_type.name in owners:
                raise PluginError(f"{where}: also declared by plugin {owners[token_type.name]!r}")
            if token_type.role in roles:
                raise PluginError(
                    f"{where}: role {token_type.role!r} is also the role of token type "
                    f"{roles[token_type.role]!r}"
                )
            types[token_type.name] = token_type
            owners[token_type.name] = impl.plugin_name
            roles[token_type.role] = token_type.name
    return types
