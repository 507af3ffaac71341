"""The types of join token ``tetherctl tokens add --type=...`` accepts, the kernel's and the
plugins' (``tether_token_types``).

A type is a name for people and the role stored in the token, which is what a join checks:
a ``node`` token joins a node (role ``Node``) and nothing else. A type may be a *host role*
(Teleport's system roles): a node agent whose protocols need that role (``AgentProtocol.
host_role``) joins with a token of that type, and its certificate carries the role, which is
what lets it publish entries of the kinds that need it (``ResourceKind.publisher_role``). A
token may carry several types (``--type=node,db``). A neutral module, so that the hookspecs,
the auth service, the node agent and the CLI can all name it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, cast

import attrs

from tether.errors import PluginError

if TYPE_CHECKING:
    from tether.pki import Identity
    from tether.plugins import TetherPluginManager

__all__ = [
    "KERNEL_TOKEN_TYPES",
    "LEGACY_NODE_ROLES",
    "NODE_ROLE",
    "TokenType",
    "host_roles",
    "split_type_names",
    "token_types",
    "type_names_for",
]

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@attrs.frozen
class TokenType:
    """One value of ``tetherctl tokens add --type``.

    :ivar name: what the admin types, e.g. ``node``.
    :ivar role: the role stored in the token, which the join of that kind of host asks for
        (``Node``); a token joins only as its role.
    :ivar description: a few words for ``tetherctl tokens add --help``.
    :ivar host_role: the role is a host role: a node agent running a protocol whose
        ``host_role`` is this role joins with a token of this type, and its certificate then
        carries the role (``Identity.roles``), which publishing a kind whose
        ``publisher_role`` is this role requires. False for tokens that join no agent host
        (``proxy``, ``trusted_cluster``).
    """

    name: str
    role: str
    description: str
    host_role: bool = False


#: the kernel's types, registered by the builtin ``core-services`` like a plugin's
KERNEL_TOKEN_TYPES = (
    TokenType("node", "Node", "a node joins the cluster", host_role=True),
    TokenType("proxy", "Proxy", "another proxy joins the cluster"),
    TokenType("trusted_cluster", "TrustedCluster", "a leaf cluster asks for trust"),
)


#: the host role of the kernel's ``node`` token type (the SSH plugin's protocols need it)
NODE_ROLE = "Node"
#: what a node that joined before host roles existed (a certificate of kind ``node`` with no
#: roles) may serve until it renews or joins again: what a ``node`` token allowed then
LEGACY_NODE_ROLES = (NODE_ROLE,)


def host_roles(identity: Identity) -> tuple[str, ...]:
    """The host roles ``identity`` carries: its ``roles`` for a host of kind ``node``, or
    :data:`LEGACY_NODE_ROLES` for a node certificate issued before host roles existed (it
    gets them written in at its next renewal). Nothing for other kinds."""
    if identity.kind != "node":
        return ()
    return tuple(identity.roles) or LEGACY_NODE_ROLES


def split_type_names(text: str) -> list[str]:
    """``node,db`` -> ``["node", "db"]`` (blanks dropped, order kept, each once)."""
    return list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))


def type_names_for(types: Mapping[str, TokenType], roles: Collection[str]) -> str:
    """The ``--type`` value of a token carrying ``roles`` (``node,db``), for messages; a
    role no type declares is shown as it is."""
    by_role = {t.role: name for name, t in types.items()}
    return ",".join(by_role.get(role, role) for role in roles)


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
