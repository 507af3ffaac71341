"""The identity connector contract: how a login attempt becomes an identity.

A connector only says *who* the user is and which roles and traits they get; the auth service
owns everything security-critical around it (lockout, certificate issuing, audit; for single
sign-on the state, nonce, PKCE, expiry and one-time use, see :mod:`tether.auth.sso_flows`).
Connectors are provided by plugins through ``tether_identity_connectors``. Two shapes exist:

- a :class:`PasswordConnector` checks a user name and password (the builtin ``local``
  connector checks the passwords of users stored in the cluster);
- a :class:`RedirectConnector` sends the browser to an identity provider and reads what the
  provider sends back (OIDC, SAML, GitHub). Its settings are resources of a kind the plugin
  declares (``tetherctl create okta.yaml``), and users name a resource: ``tether login
  --auth=okta``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs
import pluggy

if TYPE_CHECKING:
    from tether.auth.sso_flows import ExternalIdentity, SSORequest
    from tether.resources import Resource

__all__ = [
    "ConnectorContext",
    "IdentityConnector",
    "LoginIdentity",
    "PasswordConnector",
    "RedirectConnector",
]


class ConnectorContext(Protocol):
    """What the kernel hands a connector: the cluster's users to read, the check of a local
    user's password, and the plugin manager. A connector never sees the auth service: it says
    who logged in, and the kernel does the rest."""

    @property
    def pm(self) -> pluggy.PluginManager:
        """The plugin manager, to call hooks (role-map strategies, for instance)."""
        ...

    async def user(self, name: str) -> Resource | None:
        """The stored ``user`` resource called ``name``, or None."""
        ...

    async def password_matches(self, name: str, password: str) -> bool:
        """Whether ``password`` is the local user ``name``'s; takes as long for a user
        without a password, so timing does not tell who exists."""
        ...


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
        self, ctx: ConnectorContext, username: str, password: str
    ) -> LoginIdentity:
        """Return the identity, or raise :class:`~tether.errors.AccessDenied` saying only
        "invalid user name or password" (never which of the two was wrong)."""
        ...


@runtime_checkable
class RedirectConnector(IdentityConnector, Protocol):
    """A single sign-on connector: the browser logs in at an identity provider.

    ``name`` is the resource kind that holds this connector's settings (``oidc``); declare it
    through ``tether_resource_kinds``, with its secrets in ``secret_paths`` so ``tetherctl
    get`` hides them. Every method gets the resource the user named with ``--auth``.
    """

    async def login_url(
        self, ctx: ConnectorContext, connector: Resource, request: SSORequest
    ) -> str:
        """Where to send the browser: the provider's login page for ``request``.

        Carry ``request.state`` so the provider hands it back with the callback (the kernel
        finds the login by it), and ``request.nonce`` and ``request.pkce_challenge`` where the
        protocol has them. The provider must call back the proxy at
        ``https://PROXY/webapi/sso/callback``.
        """
        ...

    async def complete(
        self,
        ctx: ConnectorContext,
        connector: Resource,
        request: SSORequest,
        params: Mapping[str, str],
    ) -> ExternalIdentity:
        """Read the provider's callback (its query or form fields, ``state`` already checked
        and spent by the kernel) and return who logged in.

        Verify everything the protocol signs (signatures, issuer, audience, expiry); report
        the nonce the provider signed, if any, in :attr:`ExternalIdentity.nonce`. Raise
        :class:`~tether.errors.AccessDenied` with the reason to refuse.
        """
        ...

    def roles_for(
        self, ctx: ConnectorContext, connector: Resource, identity: ExternalIdentity
    ) -> tuple[str, ...]:
        """The Tether roles ``identity`` gets (usually :func:`tether.auth.sso_flows.map_claims`
        over the resource's mapping rules, with ``ctx.pm``); none refuses the login."""
        ...
