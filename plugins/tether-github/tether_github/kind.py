"""The ``github`` resource kind: an OAuth app's settings and which teams give which roles.

Kept apart from the connector so that CLI starts, which load the kinds, import no HTTP client.
"""

from __future__ import annotations

import re
import urllib.parse

import attrs

from tether.api import (
    ClaimMapping,
    ClaimRules,
    InvalidField,
    Resource,
    ResourceKind,
    is_loopback_http,
)

__all__ = ["GITHUB", "TEAMS_TO_ROLES", "GitHubSpec", "TeamMapping"]


@attrs.frozen
class TeamMapping:
    """Members of ``organization``/``team`` (a slug, a ``*`` glob or a ``^...$`` re2
    expression, whose groups ``roles`` may use as ``$1``..``$9``) get ``roles``."""

    organization: str
    team: str
    roles: tuple[str, ...]

    def mapping(self) -> ClaimMapping:
        """The rule as one on the ``github_teams`` trait (``org/team``).

        :raises ValueError: the organization or team is missing.
        """
        if not self.organization or not self.team:
            raise ValueError("needs organization and team")
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


#: where a ``github`` connector's rules are; the kernel validates and applies them
TEAMS_TO_ROLES = ClaimRules("teams_to_roles", TeamMapping.mapping)


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


GITHUB = ResourceKind(
    name="github",
    aliases=("github_connector", "github_connectors"),
    versions=("v3",),
    spec_type=GitHubSpec,
    storage_prefix="/connectors/github/",
    validate=TEAMS_TO_ROLES.validating(_validate),
    secret_paths=(("spec", "client_secret"),),
)
