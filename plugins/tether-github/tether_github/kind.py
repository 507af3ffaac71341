"""The ``github`` resource kind: an OAuth app's settings and which teams give which roles.

Kept apart from the connector so that CLI starts, which load the kinds, import no HTTP client.
"""

from __future__ import annotations

import re
import urllib.parse

import attrs

from tether.auth.sso_flows import ClaimMapping, is_loopback_http
from tether.resources import InvalidField, Resource, ResourceKind
from tether.trust import RoleMapRule, parse_role_map

__all__ = ["GITHUB", "GitHubSpec", "TeamMapping"]


@attrs.frozen
class TeamMapping:
    """Members of ``organization``/``team`` (a slug, a ``*`` glob or a ``^...$`` re2
    expression, whose groups ``roles`` may use as ``$1``..``$9``) get ``roles``."""

    organization: str
    team: str
    roles: tuple[str, ...]

    def mapping(self) -> ClaimMapping:
        org = self.organization
        if self.team.startswith("^"):
            value = f"^{re.escape(org)}/{self.team[1:]}"
        else:
            value = f"{org}/{self.team}"
        return ClaimMapping("github_teams", value, self.roles)


@attrs.frozen
class GitHubSpec:
    """``spec`` of a ``github`` connector.

    :param client_id: the OAuth app's client id.
    :param client_secret: its secret (hidden by ``tetherctl get``).
    :param redirect_url: the proxy's callback, the app's callback URL:
        ``https://PROXY/webapi/sso/callback``.
    :param teams_to_roles: which teams give which roles.
    :param endpoint_url: where the OAuth pages are (GitHub Enterprise Server: its URL).
    :param api_endpoint_url: where the REST API is.
    """

    client_id: str
    client_secret: str
    redirect_url: str
    teams_to_roles: tuple[TeamMapping, ...] = ()
    endpoint_url: str = "https://github.com"
    api_endpoint_url: str = "https://api.github.com"


def _validate(resource: Resource) -> None:
    spec: GitHubSpec = resource.spec
    for field in ("redirect_url", "endpoint_url", "api_endpoint_url"):
        url = getattr(spec, field)
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname or not (parts.scheme == "https" or is_loopback_http(url)):
            raise InvalidField(
                ("spec", field), f"{url!r} must be an https:// URL (http:// only on loopback)"
            )
    for field in ("client_id", "client_secret"):
        if not getattr(spec, field):
            raise InvalidField(("spec", field), "must not be empty")
    if not spec.teams_to_roles:
        raise InvalidField(
            ("spec", "teams_to_roles"), "needs at least one rule, or no GitHub user gets a role"
        )
    for i, rule in enumerate(spec.teams_to_roles):
        if not rule.organization or not rule.team:
            raise InvalidField(("spec", "teams_to_roles", i), "needs organization and team")
        try:
            parse_role_map([RoleMapRule(rule.mapping().value, rule.roles)])
        except InvalidField as exc:
            raise InvalidField(("spec", "teams_to_roles", i), str(exc)) from None


GITHUB = ResourceKind(
    name="github",
    aliases=("github_connector", "github_connectors"),
    versions=("v3",),
    spec_type=GitHubSpec,
    storage_prefix="/connectors/github/",
    validate=_validate,
    secret_paths=(("spec", "client_secret"),),
)
