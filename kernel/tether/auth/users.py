"""Local users: created by admins (with a password or a one-time sign-up token), updated, and
signing up with their token.

Separate from logins (:mod:`tether.auth.login`): this job changes who exists and what they
hold; a login only reads it. Users made by a single sign-on login are the provider's, and are
refused an update here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from tether import audit, pki
from tether.auth import passwords
from tether.auth.context import AuthContext
from tether.auth.passwords import PASSWORD_PREFIX
from tether.auth.resource_store import ResourceStore
from tether.auth.tokens import SIGNUP_ROLE, TokenInfo, Tokens
from tether.backend import Op
from tether.errors import AccessDenied, NotFound, TetherError
from tether.resources import Resource, resource_from_bytes, resource_to_bytes

__all__ = ["Users", "check_password", "created_by_connector"]


def created_by_connector(user: Resource) -> bool:
    """Whether ``user`` was made by an SSO login (and may be replaced by the next one)."""
    created_by = user.spec.created_by
    return created_by is not None and created_by.connector is not None


def check_password(password: str) -> None:
    """:raises TetherError: the password is too weak, saying why."""
    try:
        passwords.check_password_strength(password)
    except ValueError as exc:
        raise TetherError(str(exc)) from None


class Users:
    """Adds, updates and signs up local users."""

    def __init__(self, ctx: AuthContext, *, resources: ResourceStore, tokens: Tokens) -> None:
        self._ctx = ctx
        self._resources = resources
        self._tokens = tokens

    async def add_user(
        self,
        identity: pki.Identity,
        name: str,
        *,
        roles: Sequence[str],
        traits: Mapping[str, Sequence[str]],
        password: str | None = None,
    ) -> TokenInfo | None:
        """Create a local user; returns a one-time sign-up token unless a password is given."""
        ctx = self._ctx
        if not roles:
            raise TetherError(f"user {name!r} needs at least one role", hint="pass --roles")
        role_kind = ctx.registry.get("role")
        for role in roles:
            if await ctx.backend.get(role_kind.key(role)) is None:
                raise NotFound(
                    f"role {role!r} does not exist", hint="create it first, or check the spelling"
                )
        if password is not None:
            check_password(password)
        user = ctx.make(
            "user", name, {"roles": list(roles), "traits": {k: list(v) for k, v in traits.items()}}
        )
        await self._resources.create_resources(identity, [user])
        if password is not None:
            hashed = await passwords.hash_password_in_worker(password)
            await ctx.backend.put(PASSWORD_PREFIX + name, hashed.encode())
            return None
        ttl = ctx.config.auth_service.signup_token_ttl
        return await self._tokens.create_token(
            identity, SIGNUP_ROLE, ttl, extra={"user": name}, type_name="signup"
        )

    async def update_user(
        self,
        identity: pki.Identity,
        name: str,
        *,
        roles: Sequence[str] | None = None,
        traits: Mapping[str, Sequence[str]] | None = None,
    ) -> str:
        ctx = self._ctx
        kind = ctx.registry.get("user")
        await ctx.authorize(identity, "user", "update")
        item = await ctx.backend.get(kind.key(name))
        if item is None:
            raise NotFound(f"user {name!r} not found")
        user = resource_from_bytes(item.value, ctx.registry)
        if created_by_connector(user):
            by = user.spec.created_by.connector
            raise TetherError(
                f"user {name!r} signs in through connector '{by.type}/{by.id}', which sets "
                "their roles and traits at every login; an update here would be undone at "
                "the next one",
                hint="change the connector's mapping (claims_to_roles or its equivalent) "
                "or the user's groups at the identity provider",
            )
        spec = user.spec
        if roles is not None:
            spec = attrs.evolve(spec, roles=tuple(roles))
        if traits is not None:
            merged = dict(spec.traits)
            merged.update({k: tuple(v) for k, v in traits.items()})
            spec = attrs.evolve(spec, traits=merged)
        user = attrs.evolve(user, spec=spec)
        event = (audit.RESOURCE_UPDATED, {"kind": "user", "name": name})
        async with ctx.audited(identity.username, [event]):
            await ctx.backend.compare_and_swap(
                kind.key(name), resource_to_bytes(user), expected_revision=item.revision
            )
        return f'user "{name}" has been updated'

    async def complete_signup(self, token: str, password: str) -> str:
        """Set a new user's password with the one-time sign-up token; returns the user name.

        Audited as a password change, before it is stored: a sign-up is how a user gets the
        credential every later login checks. A token that is wrong or expired is recorded as
        a failed change (no user name: the token did not say whose it is).
        """
        ctx = self._ctx
        check_password(password)
        kind = ctx.registry.get("token")
        item = await ctx.backend.get(kind.key(token))
        res = resource_from_bytes(item.value, ctx.registry) if item else None
        if item is None or res is None or SIGNUP_ROLE not in res.spec.roles or ctx.expired(res):
            refused = AccessDenied(
                "sign-up token is invalid or expired", hint="ask an admin for a new one"
            )
            fields = {"reason": "signup", "error": refused.message}
            await ctx.audit_events([(audit.USER_PASSWORD_CHANGE, "", fields, False)])
            raise refused
        user = str(res.spec.user)
        hashed = await passwords.hash_password_in_worker(password)
        event = (audit.USER_PASSWORD_CHANGE, {"reason": "signup"})
        async with ctx.audited(user, [event]):
            await ctx.backend.apply(
                [
                    Op.delete(kind.key(token), expected_revision=item.revision),
                    Op.put(PASSWORD_PREFIX + user, hashed.encode()),
                ]
            )
        return user
