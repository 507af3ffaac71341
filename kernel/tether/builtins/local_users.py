"""Builtin identity connector ``local``: users stored in the cluster, with argon2id passwords.

Registered through ``tether_identity_connectors`` exactly like a third-party connector, so
``plugins.disabled: [local]`` turns password logins off (for an SSO-only cluster).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.auth import passwords
from tether.auth.connectors import LoginIdentity
from tether.errors import AccessDenied
from tether.hookspecs import hookimpl
from tether.resources import resource_from_bytes

if TYPE_CHECKING:
    from tether.auth.service import AuthService

__all__ = ["LocalConnector"]


class LocalConnector:
    """Checks a password against the hash the auth service stored for the user."""

    name = "local"

    async def authenticate_password(
        self, auth: AuthService, username: str, password: str
    ) -> LoginIdentity:
        user_item = await auth.backend.get(auth.registry.get("user").key(username))
        stored = await auth.backend.get(auth.password_key(username))
        # verify_password spends the same time when the user or hash is missing
        ok = passwords.verify_password(stored.value.decode() if stored else None, password)
        if not ok or user_item is None:
            raise AccessDenied("invalid user name or password")
        user = resource_from_bytes(user_item.value, auth.registry)
        return LoginIdentity(
            username=user.metadata.name,
            roles=tuple(user.spec.roles),
            traits={k: tuple(v) for k, v in user.spec.traits.items()},
        )


@hookimpl
def tether_identity_connectors() -> list[LocalConnector]:
    return [LocalConnector()]
