"""Builtin identity connector ``local``: users stored in the cluster, with argon2id passwords.

Registered through ``tether_identity_connectors`` exactly like a third-party connector, so
``plugins.disabled: [local]`` turns password logins off (for an SSO-only cluster).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.errors import AccessDenied
from tether.hookspecs import hookimpl

if TYPE_CHECKING:  # every command-line start registers the builtins: they import when called
    from tether.connectors import ConnectorContext, LoginIdentity

__all__ = ["LocalConnector"]


class LocalConnector:
    """Checks a password against the hash the auth service stored for the user."""

    name = "local"

    async def authenticate_password(
        self, ctx: ConnectorContext, username: str, password: str
    ) -> LoginIdentity:
        from tether.connectors import LoginIdentity

        user = await ctx.user(username)
        # the check spends the same time when the user or their password is missing
        ok = await ctx.password_matches(username, password)
        if not ok or user is None:
            raise AccessDenied("invalid user name or password")
        return LoginIdentity(
            username=user.metadata.name,
            roles=tuple(user.spec.roles),
            traits={k: tuple(v) for k, v in user.spec.traits.items()},
        )


@hookimpl
def tether_identity_connectors() -> list[LocalConnector]:
    return [LocalConnector()]
