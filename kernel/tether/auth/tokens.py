"""Join and invitation tokens: created by admins, listed, removed, and checked when a host
joins, a leaf cluster asks for trust or a new user signs up.

Separate because three other jobs check tokens (joins, the trusted-cluster handshake, sign-up)
and none of them should own the others' token types.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Awaitable, Callable, Mapping

import attrs

from tether import audit, pki
from tether.auth.context import AuthContext
from tether.errors import AccessDenied, TetherError
from tether.resources import Resource, resource_from_bytes, resource_to_bytes
from tether.token_types import token_types

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
        token_type = self._types.get(type_name)
        if token_type is None:
            raise TetherError(
                f"unknown token type {type_name!r}",
                hint=f"use one of: {', '.join(sorted(self._types))}",
            )
        return await self.create_token(
            identity, token_type.role, ttl, type_name=type_name, labels=labels
        )

    async def create_token(
        self,
        identity: pki.Identity,
        role: str,
        ttl: datetime.timedelta,
        *,
        type_name: str,
        extra: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> TokenInfo:
        """Store a new random token of ``role`` (what :meth:`check_token` asks for)."""
        ctx = self._ctx
        await ctx.authorize(identity, "token", "create")
        if ttl <= datetime.timedelta(0):
            raise TetherError("token TTL must be positive", hint="for example --ttl=5m")
        value = secrets.token_hex(16)
        expires = ctx.now() + ttl
        kind = ctx.registry.get("token")
        res = ctx.make(
            "token", value, {"roles": [role], **(extra or {})}, expires=expires, labels=labels
        )
        await ctx.backend.create(kind.key(value), resource_to_bytes(res), ttl=ttl.total_seconds())
        await ctx.audit_event(
            audit.TOKEN_CREATED,
            identity.username,
            {"token_type": type_name, "expires": expires.isoformat()},
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
        role_to_type = {t.role: name for name, t in self._types.items()} | {SIGNUP_ROLE: "signup"}
        for res in await self._list_resources(identity, "token"):
            if ctx.expired(res):
                continue
            type_name = ",".join(role_to_type.get(r, r) for r in res.spec.roles)
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

    async def check_token(self, token: str, role: str) -> Resource:
        """Validate a join token of the given role; raise AccessDenied saying why not."""
        ctx = self._ctx
        kind = ctx.registry.get("token")
        item = await ctx.backend.get(kind.key(token))
        # the command to run as printed: the type of token this join needed
        type_name = next((t.name for t in self._types.values() if t.role == role), None)
        command = (
            f"tetherctl tokens add --type={type_name}" if type_name else "tetherctl tokens add"
        )
        if item is None:
            raise AccessDenied(
                "the token is unknown or expired", hint=f"create a new one with `{command}`"
            )
        res = resource_from_bytes(item.value, ctx.registry)
        if ctx.expired(res):
            raise AccessDenied(
                "the token is unknown or expired", hint=f"create a new one with `{command}`"
            )
        if role not in res.spec.roles:
            raise AccessDenied(f"the token is not a {role} token")
        return res
