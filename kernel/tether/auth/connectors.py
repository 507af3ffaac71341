"""The identity connector contract: how a login attempt becomes an identity.

A connector only says *who* the user is and which roles and traits they get; the auth service
owns everything security-critical around it (lockout, certificate issuing, audit). Connectors
are provided by plugins through ``tether_identity_connectors``; the builtin ``local`` connector
checks passwords of users stored in the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from tether.auth.service import AuthService

__all__ = ["IdentityConnector", "LoginIdentity", "PasswordConnector"]


@attrs.frozen
class LoginIdentity:
    """Who logged in, as a connector established it.

    :param username: the Tether user name.
    :param roles: the user's roles in this cluster.
    :param traits: values role templates read as ``{{internal.x}}`` / ``{{external.x}}``.
    """

    username: str
    roles: tuple[str, ...]
    traits: Mapping[str, tuple[str, ...]]


@runtime_checkable
class IdentityConnector(Protocol):
    """What every connector declares."""

    #: the name users pass as ``tether login --auth=NAME`` (``local`` for local users)
    name: str


@runtime_checkable
class PasswordConnector(IdentityConnector, Protocol):
    """A connector that checks a user name and password."""

    async def authenticate_password(
        self, auth: AuthService, username: str, password: str
    ) -> LoginIdentity:
        """Return the identity, or raise :class:`~tether.errors.AccessDenied` saying only
        "invalid user name or password" (never which of the two was wrong)."""
        ...
