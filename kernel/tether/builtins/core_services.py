"""Builtin plugin ``core-services``: the kernel's own service roles, ``auth`` and ``proxy``.

Registered through ``tether_service_roles`` like a protocol plugin's roles (the SSH plugin's
``node``), so ``tetherd start --roles`` has one list, and its error one set of names.
"""

from __future__ import annotations

from tether.config import ServiceRole
from tether.hookspecs import hookimpl

__all__ = ["tether_service_roles"]


@hookimpl
def tether_service_roles() -> list[ServiceRole]:
    """Return ``auth`` (auth_service) and ``proxy`` (proxy_service)."""
    return [
        ServiceRole("auth", "auth_service", "certificate authorities, users, roles, audit"),
        ServiceRole("proxy", "proxy_service", "the one public port"),
    ]
