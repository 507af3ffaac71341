"""The ``github`` kind and connector: GitHub's OAuth web flow and its team membership API.

```yaml
kind: github
version: v3
metadata: {name: github}
spec:
  client_id: Iv1.0123
  client_secret: ...
  redirect_url: https://proxy.example.com:3080/webapi/sso/callback
  teams_to_roles:
    - {organization: acme, team: admins, roles: [access, editor]}
    - {organization: acme, team: "^dev-(.*)$", roles: ["$1"]}
```

The calls, in order: the browser goes to ``ENDPOINT/login/oauth/authorize`` (with the
kernel's state and PKCE challenge); the code comes back to the proxy, and the connector
exchanges it at ``ENDPOINT/login/oauth/access_token``, then reads ``API/user`` and
``API/user/teams`` (every page) with the token. ``endpoint_url`` and ``api_endpoint_url``
point at GitHub Enterprise Server instead of github.com.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from tether.api import (
    AccessDenied,
    ConnectorContext,
    ExternalIdentity,
    Resource,
    SSORequest,
    TetherError,
)
from tether_github.kind import TEAMS_TO_ROLES, GitHubSpec

__all__ = ["GitHubConnector"]

GITHUB_API_VERSION = "2022-11-28"
#: the most teams read for one user (GitHub pages them 100 at a time)
MAX_TEAM_PAGES = 10


def _next_page(answer: httpx.Response) -> str | None:
    """The ``rel="next"`` URL of GitHub's ``Link`` header, if any."""
    link = answer.links.get("next")
    return str(link["url"]) if link else None


class GitHubConnector:
    """The ``github`` redirect connector (see :class:`tether.api.RedirectConnector`)."""

    name = "github"
    claim_rules = TEAMS_TO_ROLES

    async def login_url(
        self, ctx: ConnectorContext, connector: Resource, request: SSORequest
    ) -> str:
        spec: GitHubSpec = connector.spec
        query = {
            "client_id": spec.client_id,
            "redirect_uri": spec.redirect_url,
            "scope": "read:org",  # team memberships
            "state": request.state,
            "code_challenge": request.pkce_challenge,
            "code_challenge_method": "S256",
            "allow_signup": "false",
        }
        base = spec.endpoint_url.rstrip("/")
        return f"{base}/login/oauth/authorize?{urllib.parse.urlencode(query)}"

    async def complete(
        self,
        ctx: ConnectorContext,
        connector: Resource,
        request: SSORequest,
        params: Mapping[str, str],
    ) -> ExternalIdentity:
        spec: GitHubSpec = connector.spec
        if "error" in params:
            detail = params.get("error_description") or params["error"]
            raise AccessDenied(f"GitHub refused the login: {detail}")
        if not params.get("code"):
            raise AccessDenied("GitHub's answer carries no code")
        async with httpx.AsyncClient(timeout=15) as http:
            token = await self._exchange(http, spec, params["code"], request.pkce_verifier)
            headers = {
                "authorization": f"Bearer {token}",
                "accept": "application/vnd.github+json",
                "x-github-api-version": GITHUB_API_VERSION,
            }
            api = spec.api_endpoint_url.rstrip("/")
            user = await self._get(http, f"{api}/user", headers)
            teams = await self._teams(http, f"{api}/user/teams?per_page=100", headers)
        login = user.get("login")
        if not isinstance(login, str) or not login:
            raise AccessDenied("GitHub did not say who the user is")
        orgs = sorted({team.split("/", 1)[0] for team in teams})
        return ExternalIdentity(
            username=login,
            subject=str(user.get("id", login)),
            claims={"username": (login,), "github_teams": tuple(teams), "github_orgs": tuple(orgs)},
        )

    async def _exchange(
        self, http: httpx.AsyncClient, spec: GitHubSpec, code: str, verifier: str
    ) -> str:
        url = f"{spec.endpoint_url.rstrip('/')}/login/oauth/access_token"
        try:
            answer = await http.post(
                url,
                data={
                    "client_id": spec.client_id,
                    "client_secret": spec.client_secret,
                    "code": code,
                    "redirect_uri": spec.redirect_url,
                    "code_verifier": verifier,
                },
                headers={"accept": "application/json"},
            )
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TetherError(f"cannot exchange the code at {url}: {exc}") from None
        # GitHub answers 200 with {"error": ...} for a bad code
        if answer.status_code != 200 or "error" in body or not body.get("access_token"):
            detail = body.get("error_description") or body.get("error") or answer.status_code
            raise AccessDenied(f"GitHub refused the code: {detail}")
        return str(body["access_token"])

    async def _get(self, http: httpx.AsyncClient, url: str, headers: Mapping[str, str]) -> Any:
        try:
            answer = await http.get(url, headers=dict(headers))
        except httpx.HTTPError as exc:
            raise TetherError(f"cannot reach GitHub's API at {url}: {exc}") from None
        if answer.status_code != 200:
            raise AccessDenied(f"GitHub's API refused {url}: HTTP {answer.status_code}")
        return answer.json()

    async def _teams(
        self, http: httpx.AsyncClient, url: str, headers: Mapping[str, str]
    ) -> list[str]:
        """``org/team-slug`` of every team the user is in, over every page."""
        teams: list[str] = []
        next_url: str | None = url
        for _ in range(MAX_TEAM_PAGES):
            if next_url is None:
                break
            try:
                answer = await http.get(next_url, headers=dict(headers))
            except httpx.HTTPError as exc:
                raise TetherError(f"cannot reach GitHub's API at {next_url}: {exc}") from None
            if answer.status_code != 200:
                raise AccessDenied(f"GitHub's API refused {next_url}: HTTP {answer.status_code}")
            for team in answer.json():
                org = (team.get("organization") or {}).get("login")
                if isinstance(org, str) and isinstance(team.get("slug"), str):
                    teams.append(f"{org}/{team['slug']}")
            next_url = _next_page(answer)
        return teams
