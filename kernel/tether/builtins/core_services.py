"""Builtin plugin ``core-services``: the kernel's own service roles (``auth``, ``proxy``) and
join token types (``node``, ``proxy``, ``trusted_cluster``).

Registered through ``tether_service_roles`` and ``tether_token_types`` like a protocol
plugin's (the SSH plugin's ``node`` role), so ``tetherd start --roles`` and ``tetherctl tokens
add --type`` each have one list, and their errors one set of names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.hookspecs import hookimpl

if TYPE_CHECKING:  # every command-line start registers the builtins: they import when called
    from tether.config import ServiceRole
    from tether.token_types import TokenType

__all__ = ["tether_service_roles", "tether_token_types"]


@hookimpl
def tether_service_roles() -> list[ServiceRole]:
    """Return ``auth`` (auth_service) and ``proxy`` (proxy_service)."""
    from tether.config import ServiceRole

    return [
        ServiceRole("auth", "auth_service", "certificate authorities, users, roles, audit"),
        ServiceRole("proxy", "proxy_service", "the one public port"),
    ]


@hookimpl
def tether_token_types() -> list[TokenType]:
    """Return ``node``, ``proxy`` and ``trusted_cluster``."""
    from tether.token_types import KERNEL_TOKEN_TYPES

    return list(KERNEL_TOKEN_TYPES)
