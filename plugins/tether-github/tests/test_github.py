"""GitHub logins through a stand-in of GitHub.

github.com cannot be reached from here, so these tests run a **stand-in** of exactly the
GitHub endpoints the connector calls (the OAuth authorize page and token exchange, ``/user``,
``/user/teams`` with its pagination), on 127.0.0.1, answering in GitHub's documented shapes,
including its habit of answering a bad code with HTTP 200 and an ``error`` field. Everything
else is real: the cluster, ``tether login``, the kernel's state and PKCE (checked by the
stand-in as GitHub does).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import pathlib
import secrets
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import pytest

from tether.testing.cluster import RunningCluster, run_cli, start_cluster
from tether.testing.http import serve_http
from tether.testing.sso import (
    begin_login,
    cluster_browser,
    press_approve,
    share_login_link,
    sso_login,
)

TEAMS = {
    "octo-alice": [("acme", "admins"), ("acme", "dev-web"), ("other-org", "admins")],
    "octo-nina": [("elsewhere", "admins")],
}


@attrs.define
class GitHubStandIn:
    """GitHub's OAuth web flow and the two REST calls, in GitHub's shapes (a stand-in)."""

    client_id: str = "Iv1.tether"
    client_secret: str = attrs.field(factory=lambda: secrets.token_hex(20))
    next_user: str = "octo-alice"
    deny: bool = False
    expire_codes: bool = False
    _codes: dict[str, dict[str, str]] = attrs.field(factory=dict)
    _tokens: dict[str, str] = attrs.field(factory=dict)
    url: str = ""
    _serving: contextlib.ExitStack = attrs.field(factory=contextlib.ExitStack)

    def __enter__(self) -> GitHubStandIn:
        github = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, headers: Mapping[str, str] = {}) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _user(self) -> str | None:
                auth = self.headers.get("authorization", "")
                return github._tokens.get(auth.removeprefix("Bearer "))

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/login/oauth/authorize":
                    back: dict[str, str] = {"state": query.get("state", "")}
                    if github.deny:
                        back |= {"error": "access_denied", "error_description": "The user denied"}
                    else:
                        code = secrets.token_hex(10)
                        github._codes[code] = {**query, "user": github.next_user}
                        back["code"] = code
                    target = f"{query['redirect_uri']}?{urllib.parse.urlencode(back)}"
                    self._send(302, {}, {"location": target})
                    return
                user = self._user()
                if user is None:
                    self._send(401, {"message": "Bad credentials"})
                elif url.path == "/user":
                    self._send(200, {"login": user, "id": 1000 + len(user), "type": "User"})
                elif url.path == "/user/teams":
                    page = int(query.get("page", "1"))
                    teams = [
                        {"slug": slug, "name": slug, "organization": {"login": org}}
                        for org, slug in TEAMS.get(user, [])
                    ]
                    # two per page here, so that the connector must follow Link: rel="next"
                    chunk, more = teams[(page - 1) * 2 : page * 2], len(teams) > page * 2
                    link = f'<{github.url}/user/teams?per_page=100&page={page + 1}>; rel="next"'
                    self._send(200, chunk, {"link": link} if more else {})
                else:
                    self._send(404, {"message": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if self.path != "/login/oauth/access_token":
                    self._send(404, {"message": "Not Found"})
                    return
                grant = github._codes.pop(form.get("code", ""), None)
                if github.expire_codes:
                    grant = None
                creds = (form.get("client_id"), form.get("client_secret"))
                if grant is None:  # GitHub's way: 200 with an error field
                    self._send(200, {"error": "bad_verification_code"})
                    return
                if creds != (github.client_id, github.client_secret):
                    self._send(200, {"error": "incorrect_client_credentials"})
                    return
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                if challenge != grant.get("code_challenge"):
                    self._send(200, {"error": "invalid_grant", "error_description": "PKCE"})
                    return
                token = "gho_" + secrets.token_hex(18)
                github._tokens[token] = grant["user"]
                self._send(
                    200, {"access_token": token, "token_type": "bearer", "scope": "read:org"}
                )

        self.url = self._serving.enter_context(serve_http(Handler))
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.close()


CONNECTOR = """
kind: github
version: v3
metadata: {{name: github}}
spec:
  client_id: {client_id}
  client_secret: {client_secret}
  redirect_url: https://{proxy}/webapi/sso/callback
  endpoint_url: {url}
  api_endpoint_url: {url}
  teams_to_roles:
    - {{organization: acme, team: admins, roles: [access, editor]}}
    - {{organization: acme, team: "^dev-(.*)$", roles: ["$1"]}}
"""


@attrs.frozen
class Site:
    cluster: RunningCluster
    github: GitHubStandIn


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("github")
    cluster = start_cluster(directory / "cluster", "main")
    try:
        with GitHubStandIn() as github:
            path = directory / "github.yaml"
            path.write_text(
                CONNECTOR.format(
                    client_id=github.client_id,
                    client_secret=github.client_secret,
                    proxy=cluster.proxy_addr,
                    url=github.url,
                )
            )
            cluster.tetherctl("create", str(path))
            yield Site(cluster, github)
    finally:
        cluster.stop()


def login(site: Site, user: str) -> tuple[int, str]:
    def browse(url: str) -> None:
        with cluster_browser(site.cluster) as browser:
            press_approve(browser, browser.get(url, follow_redirects=True))

    return sso_login(site.cluster, user, "github", browse)


def test_github_user_logs_in_with_roles_from_team_membership(site: Site) -> None:
    site.github.next_user = "octo-alice"
    code, err = login(site, "alice")
    assert code == 0, err
    me = json.loads(site.cluster.tether("alice", "status", "--format=json").stdout)["active"]
    assert me["username"] == "octo-alice"
    assert me["roles"] == ["access", "editor", "web"]
    # the third team is on the second page of /user/teams
    assert me["traits"]["github_teams"] == ["acme/admins", "acme/dev-web", "other-org/admins"]
    assert me["traits"]["github_orgs"] == ["acme", "other-org"]


def test_a_member_of_no_mapped_team_is_refused(site: Site) -> None:
    site.github.next_user = "octo-nina"
    code, err = login(site, "nina")
    assert code == 1
    assert "no role is mapped to 'octo-nina' by connector 'github/github'" in err


def test_a_user_who_denies_the_app_is_refused_with_githubs_reason(site: Site) -> None:
    site.github.deny = True
    try:
        code, err = login(site, "denier")
    finally:
        site.github.deny = False
    assert code == 1
    assert "GitHub refused the login: The user denied" in err


def test_a_replayed_callback_is_refused(site: Site) -> None:
    site.github.next_user = "octo-alice"
    with cluster_browser(site.cluster) as browser:
        begun = begin_login(browser, site.cluster, "github")
        callback = browser.get(begun["auth_url"]).headers["location"]
        assert "Approve this login to main?" in browser.get(callback).text
        replayed = browser.get(callback)
    assert replayed.status_code == 403
    assert "this login is unknown, expired or already used" in replayed.text


def test_a_shared_login_link_gives_whoever_shared_it_nothing(site: Site) -> None:
    # mallory starts `tether login --auth=github` with her own key and secret and sends the
    # GitHub URL to alice, who is signed in at GitHub and approves
    site.github.next_user = "octo-alice"
    shared = share_login_link(
        site.cluster,
        "github",
        lambda browser, url: browser.get(url, follow_redirects=True),
        shown=("octo-alice", "access, editor, web"),
    )
    shared.assert_refused("octo-alice", "github/github")
    # alice's own `tether login`, beside it, works
    code, err = login(site, "alice-herself")
    assert code == 0, err
    me = json.loads(site.cluster.tether("alice-herself", "status", "--format=json").stdout)
    assert me["active"]["username"] == "octo-alice"


def test_client_secret_is_hidden_and_rules_are_checked(site: Site, tmp_path: pathlib.Path) -> None:
    assert site.github.client_secret not in site.cluster.tetherctl("get", "github/github").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        CONNECTOR.format(
            client_id="x", client_secret="y", proxy=site.cluster.proxy_addr, url="http://gh.example"
        ).replace("name: github", "name: bad")
    )
    result = site.cluster.tetherctl("create", str(bad), check=False)
    assert result.returncode == 1
    assert "must be an https:// URL (http:// only on loopback)" in result.stderr


def test_a_code_github_no_longer_honours_is_refused(site: Site) -> None:
    site.github.next_user = "octo-alice"
    site.github.expire_codes = True  # e.g. the user took more than GitHub's ten minutes
    try:
        code, err = login(site, "slow")
    finally:
        site.github.expire_codes = False
    assert code == 1
    assert "GitHub refused the code: bad_verification_code" in err


def test_the_plugin_is_listed_with_its_kind_and_connector() -> None:
    listed = run_cli("tetherd", "plugins").stdout
    row = next(line for line in listed.splitlines() if line.startswith("github "))
    assert "tether_identity_connectors" in row and "tether_resource_kinds" in row
