"""The identity connector contract: how a login attempt becomes an identity.

A connector only says *who* the user is; the kernel owns everything security-critical around
it (lockout, certificate issuing, audit; for single sign-on the state, nonce, PKCE, expiry and
one-time use, see :mod:`tether.auth.sso_flows`, and the mapping of the provider's claims to
roles). Connectors are provided by plugins through ``tether_identity_connectors``. Two shapes
exist:

- a :class:`PasswordConnector` checks a user name and password (the builtin ``local``
  connector checks the passwords of users stored in the cluster) and names the user's roles;
- a :class:`RedirectConnector` sends the browser to an identity provider and reads what the
  provider sends back (OIDC, SAML, GitHub): who logged in and their claims. Its settings are
  resources of a kind the plugin declares (``tetherctl create okta.yaml``), users name a
  resource (``tether login --auth=okta``), and the kind's :class:`ClaimRules` say where its
  claim-to-role rules are, which the kernel validates and applies.

A neutral module: the hookspecs, the auth service and plugins import it, and it imports no
service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import pluggy

from tether.resources import InvalidField, Resource
from tether.trust import RoleMapRule, map_roles, mapped_roles, parse_role_map

if TYPE_CHECKING:
    from tether.auth.sso_flows import SSORequest

__all__ = [
    "ClaimMapping",
    "ClaimRules",
    "ConnectorContext",
    "ExternalIdentity",
    "IdentityConnector",
    "LoginIdentity",
    "PasswordConnector",
    "RedirectConnector",
    "map_claims",
]


@attrs.frozen
class LoginIdentity:
    """Who logged in, as a password connector established it.

    :param username: the Tether user name.
    :param roles: the user's roles in this cluster.
    :param traits: values role templates read as ``{{internal.x}}`` / ``{{external.x}}``.
    """

    username: str
    roles: tuple[str, ...]
    traits: Mapping[str, tuple[str, ...]]


@attrs.frozen
class ExternalIdentity:
    """Who the provider says logged in, as a redirect connector reports it.

    :param username: the Tether user name (a claim the connector's resource chose).
    :param subject: the provider's stable id of the user (OIDC ``sub``, SAML NameID).
    :param claims: the provider's claims, attributes or groups; they become the user's traits,
        so roles (also a leaf's, through trust) can use ``{{external.NAME}}``, and the
        connector's :class:`ClaimRules` map them to roles.
    :param nonce: the nonce the provider's signed answer carried, if its protocol has one; the
        kernel compares it with the login's.
    """

    username: str
    subject: str
    claims: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    nonce: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Who logged in, kept between the callback and the client's collection."""
        claims = {name: list(values) for name, values in self.claims.items()}
        return {"username": self.username, "subject": self.subject, "claims": claims}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExternalIdentity:
        claims = {str(k): tuple(str(v) for v in values) for k, values in data["claims"].items()}
        return cls(username=str(data["username"]), subject=str(data["subject"]), claims=claims)


@attrs.frozen
class ClaimMapping:
    """One claim-to-role rule: users whose ``claim`` has a value that matches ``value`` get
    ``roles``.

    ``value`` is read like a trusted_cluster's ``role_map``: an exact value, a ``*`` glob or a
    ``^...$`` re2 expression whose groups ``roles`` may use as ``$1``..``$9``.
    """

    claim: str
    value: str
    roles: tuple[str, ...]


def map_claims(
    pm: pluggy.PluginManager,
    rules: Iterable[ClaimMapping],
    claims: Mapping[str, Sequence[str]],
    source: str,
) -> tuple[str, ...]:
    """The roles ``claims`` earn through ``rules``, in order, without duplicates.

    Uses the role-map strategies (``tether_map_role``), so a connector's rules match exactly
    as a trusted_cluster's do; ``source`` (``oidc/okta``) is what the strategies are told in
    place of a root cluster's name.
    """
    rules = list(rules)
    roles: list[str] = []
    for claim, values in claims.items():
        for_claim = [RoleMapRule(r.value, tuple(r.roles)) for r in rules if r.claim == claim]
        if for_claim:
            roles.extend(mapped_roles(map_roles(pm, for_claim, values, source)))
    return tuple(dict.fromkeys(roles))


def _as_mapping(rule: Any) -> ClaimMapping:
    return rule if isinstance(rule, ClaimMapping) else ClaimMapping(*rule)


@attrs.frozen
class ClaimRules:
    """Where a redirect connector's kind keeps its claim-to-role rules, and how one reads.

    The kernel validates them when a resource of the kind is created (:meth:`validating`)
    and maps a login's claims through them (:meth:`roles`): connectors never do either.

    :param field: the ``spec`` field that holds the list of rules (``claims_to_roles``).
    :param mapping: reads one rule as a :class:`ClaimMapping`; raises ``ValueError`` saying
        what is wrong with a rule of the wrong shape. By default the rules are
        :class:`ClaimMapping` themselves.
    """

    field: str
    mapping: Callable[[Any], ClaimMapping] = _as_mapping

    def mappings(self, resource: Resource) -> list[ClaimMapping]:
        """The rules of a connector resource, in order."""
        return [self.mapping(rule) for rule in getattr(resource.spec, self.field)]

    def check(self, resource: Resource) -> None:
        """:raises InvalidField: there is no rule, or one is malformed or has a pattern
        a role_map would refuse, naming the rule."""
        rules = getattr(resource.spec, self.field)
        if not rules:
            raise InvalidField(
                ("spec", self.field),
                "needs at least one rule, or no user of this connector gets a role",
            )
        for i, rule in enumerate(rules):
            try:
                mapped = self.mapping(rule)
                parse_role_map([RoleMapRule(mapped.value, mapped.roles)])
            except (ValueError, InvalidField) as exc:
                raise InvalidField(("spec", self.field, i), str(exc)) from None

    def validating(
        self, validate: Callable[[Resource], None] | None = None
    ) -> Callable[[Resource], None]:
        """The ``validate`` of the connector's kind: ``validate`` (the kind's own checks, if
        any), then these rules' :meth:`check`."""

        def checked(resource: Resource) -> None:
            if validate is not None:
                validate(resource)
            self.check(resource)

        return checked

    def roles(
        self, pm: pluggy.PluginManager, resource: Resource, identity: ExternalIdentity
    ) -> tuple[str, ...]:
        """The roles ``identity`` gets through the rules of ``resource``."""
        source = f"{resource.kind}/{resource.metadata.name}"
        return map_claims(pm, self.mappings(resource), identity.claims, source)


class ConnectorContext(Protocol):
    """What the kernel hands a connector: the cluster's users to read, the check of a local
    user's password, and the plugin manager. A connector never sees the auth service: it says
    who logged in, and the kernel does the rest."""

    @property
    def pm(self) -> pluggy.PluginManager:
        """The plugin manager, to call hooks."""
        ...

    async def user(self, name: str) -> Resource | None:
        """The stored ``user`` resource called ``name``, or None."""
        ...

    async def password_matches(self, name: str, password: str) -> bool:
        """Whether ``password`` is the local user ``name``'s; takes as long for a user
        without a password, so timing does not tell who exists."""
        ...


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
    get`` hides them, and with ``validate=claim_rules.validating(...)`` so the kernel checks
    the rules. Every method gets the resource the user named with ``--auth``.
    """

    #: where the kind's claim-to-role rules are; the kernel maps the claims through them
    claim_rules: ClaimRules

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
        and spent by the kernel) and return who logged in, with their claims.

        Verify everything the protocol signs (signatures, issuer, audience, expiry); report
        the nonce the provider signed, if any, in :attr:`ExternalIdentity.nonce`. Raise
        :class:`~tether.errors.AccessDenied` with the reason to refuse.
        """
        ...
