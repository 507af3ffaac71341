"""Join and invitation tokens: created by admins, listed, removed, and checked when a host
joins, a leaf cluster asks for trust or a new user signs up.

Separate because three other jobs check tokens (joins, the trusted-cluster handshake, sign-up)
and none of them should own the others' token types.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

import attrs

from tether import audit, pki
from tether.auth.context import AuthContext
from tether.errors import AccessDenied, TetherError
from tether.resources import Resource, resource_from_bytes, resource_to_bytes
from tether.token_types import TokenType, split_type_names, token_types, type_names_for

__all__ = ["SIGNUP_ROLE", "TokenInfo", "Tokens"]

SIGNUP_ROLE = "signup"


@attrs.frozen
class TokenInfo:
    """A join or invitation token as ``tetherctl tokens`` shows it."""

    token: str
    type: str
    expires: datetime.datetime | None
    ca_pin: str
    labels: Mapping[str, str] = attrs.field(factory=dict)


#: the resources of a kind a caller may see
#: (:meth:`tether.auth.resource_store.ResourceStore.get_resources`)
ListResources = Callable[[pki.Identity, str], Awaitable[list[Resource]]]


class Tokens:
    """The cluster's tokens, stored as ``token`` resources that expire with the token.

    The types an admin may create are the kernel's and the plugins' (``tether_token_types``).
    """

    def __init__(self, ctx: AuthContext, *, list_resources: ListResources) -> None:
        self._ctx = ctx
        self._list_resources = list_resources
        self._types = token_types(ctx.pm)

    async def add_token(
        self,
        identity: pki.Identity,
        type_name: str,
        ttl: datetime.timedelta,
        labels: Mapping[str, str] | None = None,
    ) -> TokenInfo:
        """A new token of ``type_name``: one type, or several separated by commas
        (``node,db``, as tctl's), for a host that serves protocols of several host roles."""
        names = split_type_names(type_name)
        unknown = [name for name in names if name not in self._types]
        if unknown or not names:
            shown = ", ".join(unknown) if unknown else type_name
            raise TetherError(
                f"unknown token type {shown!r}",
                hint=f"use one of: {', '.join(sorted(self._types))}",
            )
        roles = [self._types[name].role for name in names]
        return await self.create_token(
            identity, roles, ttl, type_name=",".join(names), labels=labels
        )

    async def create_token(
        self,
        identity: pki.Identity,
        role: str | Sequence[str],
        ttl: datetime.timedelta,
        *,
        type_name: str,
        extra: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> TokenInfo:
        """Store a new random token of ``role``, or of each of several roles (what
        :meth:`check_token` asks for)."""
        ctx = self._ctx
        await ctx.authorize(identity, "token", "create")
        if ttl <= datetime.timedelta(0):
            raise TetherError("token TTL must be positive", hint="for example --ttl=5m")
        value = secrets.token_hex(16)
        expires = ctx.now() + ttl
        kind = ctx.registry.get("token")
        res = ctx.make(
            "token",
            value,
            {"roles": [role] if isinstance(role, str) else list(role), **(extra or {})},
            expires=expires,
            labels=labels,
        )
        event = (audit.TOKEN_CREATED, {"token_type": type_name, "expires": expires.isoformat()})
        async with ctx.audited(identity.username, [event]):
            await ctx.backend.create(
                kind.key(value), resource_to_bytes(res), ttl=ttl.total_seconds()
            )
        return TokenInfo(
            token=value,
            type=type_name,
            expires=expires,
            ca_pin=ctx.ca_pin,
            labels=dict(labels or {}),
        )

    async def list_tokens(self, identity: pki.Identity) -> list[TokenInfo]:
        ctx = self._ctx
        await ctx.authorize(identity, "token", "list")
        out = []
        types = {**self._types, "signup": TokenType("signup", SIGNUP_ROLE, "")}
        for res in await self._list_resources(identity, "token"):
            if ctx.expired(res):
                continue
            type_name = type_names_for(types, res.spec.roles)
            out.append(
                TokenInfo(
                    token=res.metadata.name,
                    type=type_name,
                    expires=res.metadata.expires,
                    ca_pin=ctx.ca_pin,
                    labels=dict(res.metadata.labels),
                )
            )
        return out

    async def _live_token(self, token: str, command: str) -> Resource:
        """The token resource, if it exists and has not expired; else AccessDenied with a
        hint to run ``command``."""
        ctx = self._ctx
        kind = ctx.registry.get("token")
        item = await ctx.backend.get(kind.key(token))
        if item is None:
            raise AccessDenied(
                "the token is unknown or expired", hint=f"create a new one with `{command}`"
            )
        res = resource_from_bytes(item.value, ctx.registry)
        if ctx.expired(res):
            raise AccessDenied(
                "the token is unknown or expired", hint=f"create a new one with `{command}`"
            )
        return res

    async def check_token(self, token: str, role: str) -> Resource:
        """Validate a join token of the given role; raise AccessDenied saying why not."""
        # the command to run as printed: the type of token this join needed
        type_name = next((t.name for t in self._types.values() if t.role == role), None)
        command = (
            f"tetherctl tokens add --type={type_name}" if type_name else "tetherctl tokens add"
        )
        res = await self._live_token(token, command)
        if role not in res.spec.roles:
            raise AccessDenied(f"the token is not a {role} token")
        return res

    async def check_host_token(self, token: str, roles: Collection[str]) -> Resource:
        """Validate a join token for a host that asks for every host role in ``roles``.

        :raises AccessDenied: unknown or expired, or without one of the roles: the message
            names the token's types and the ones it lacks, the hint the token to create.
        """
        wanted = type_names_for(self._types, roles)
        res = await self._live_token(token, f"tetherctl tokens add --type={wanted}")
        missing = [role for role in roles if role not in res.spec.roles]
        if missing:
            held = type_names_for(self._types, res.spec.roles) or "nothing"
            raise AccessDenied(
                f"token for {held} cannot join as {type_names_for(self._types, missing)}: it "
                f"is not a {', '.join(missing)} token",
                hint=f"create a token for everything the host serves with "
                f"`tetherctl tokens add --type={wanted}`",
            )
        return res
