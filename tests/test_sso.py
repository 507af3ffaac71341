"""Single sign-on through a redirect connector: the kernel's half, with real processes.

The connector is the hooktest plugin's ``hooktest_sso`` and its identity provider a stand-in
authorization server run here (an OAuth 2 code flow with PKCE; see the plugin). What is under
test is what the kernel owns for every connector: the one-time state, the nonce and PKCE, the
client's loopback redirect, the approval page and the one-time code it sends there, the result
collected once with the client's secret and that code, the mapping of claims to roles and
traits, and the audit. A test's HTTP client plays the browser.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
import pytest
import tether_hooktest
import trio
import trio.testing
from tether_hooktest import StandInProvider

from tether import pki
from tether.auth.service import AuthService
from tether.auth.sso_flows import (
    REQUEST_TTL,
    Approval,
    SSORequest,
    check_client_redirect,
    hash_client_secret,
)
from tether.backend import open_sqlite
from tether.client.sso_login import _one_request
from tether.config import default_config
from tether.connectors import ClaimMapping, map_claims
from tether.errors import AccessDenied, TetherError
from tether.plugins import get_plugin_manager
from tether.proxy.sso_page import approval_page
from tether.resources import parse_resources
from tether.testing.cluster import RunningCluster, run_cli, start_cluster
from tether.testing.sso import (
    approval_target,
    begin_login,
    cluster_browser,
    collect_login,
    login_failures,
    press_approve,
    share_login_link,
)
from tether.testing.sso import sso_login as login_through_browser

CONNECTOR = """
kind: hooktest_sso
version: v1
metadata: {{name: standin}}
spec:
  provider_url: {url}
  client_id: tether
  client_secret: {secret}
  redirect_url: https://{proxy}/webapi/sso/callback
  claims_to_roles:
    - {{claim: groups, value: "^team-(.*)$", roles: ["$1"]}}
    - {{claim: groups, value: admins, roles: [access, editor]}}
"""


@attrs.frozen
class Site:
    cluster: RunningCluster
    provider: StandInProvider
    env: dict[str, str]
    directory: pathlib.Path

    def browser(self) -> httpx.Client:
        """The user's browser: trusts the cluster's CA, as a browser trusts the proxy."""
        return cluster_browser(self.cluster)

    def tether(self, user: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.tether(user, *args, env=self.env, **kwargs)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("sso")
    env = {"TETHER_HOOKTEST_LOG": str(directory / "hooks.jsonl")}
    cluster = start_cluster(directory / "cluster", "main", env=env)
    try:
        with StandInProvider() as provider:
            path = directory / "standin.yaml"
            path.write_text(
                CONNECTOR.format(
                    url=provider.url, secret=provider.client_secret, proxy=cluster.proxy_addr
                )
            )
            cluster.tetherctl("create", str(path), env=env)
            yield Site(cluster, provider, env, directory)
    finally:
        cluster.stop()


def sso_login(site: Site, user: str) -> tuple[int, str, str]:
    """``tether login --auth=standin`` with ``user``'s profile, the test's client as browser."""

    def browse(url: str) -> None:
        with site.browser() as browser:
            page = press_approve(browser, browser.get(url, follow_redirects=True))
            assert page.status_code in (200, 403), page.text

    code, err = login_through_browser(site.cluster, user, "standin", browse, env=site.env)
    return code, "", err


def status(site: Site, user: str) -> dict[str, Any]:
    return dict(json.loads(site.tether(user, "status", "--format=json").stdout)["active"])


def test_user_logs_in_at_the_provider_and_gets_roles_and_traits_from_claims(site: Site) -> None:
    site.provider.next_user = ("sso-sam", {"groups": ["team-access", "admins"], "env": ["demo"]})
    code, _, err = sso_login(site, "sam")
    assert code == 0, err
    active = status(site, "sam")
    assert active["username"] == "sso-sam"
    assert active["roles"] == ["access", "editor"]
    assert active["traits"]["env"] == ["demo"]  # for {{external.env}} in roles, here and on leaves
    events = json.loads(
        site.cluster.tetherctl("audit", "search", "--type=user.login", "--format=json").stdout
    )
    assert events[-1]["user"] == "sso-sam"
    assert events[-1]["method"] == "hooktest_sso/standin"
    assert events[-1]["subject"] == "standin|sso-sam"


def get_user(site: Site, name: str) -> dict[str, Any]:
    found = json.loads(site.cluster.tetherctl("get", f"user/{name}", "--format=json").stdout)
    return dict(found[0] if isinstance(found, list) else found)


def test_sso_user_is_kept_as_a_user_while_the_certificate_lasts(site: Site) -> None:
    site.provider.next_user = ("sso-uma", {"groups": ["team-access"], "env": ["demo"]})
    assert sso_login(site, "uma")[0] == 0
    user = get_user(site, "sso-uma")
    assert user["spec"]["roles"] == ["access"]
    assert user["spec"]["traits"]["env"] == ["demo"]
    assert user["spec"]["created_by"]["connector"] == {
        "type": "hooktest_sso",
        "id": "standin",
        "identity": "standin|sso-uma",
    }
    expires = datetime.datetime.fromisoformat(user["metadata"]["expires"])
    assert expires == datetime.datetime.fromisoformat(status(site, "uma")["valid_until"])
    listed = site.cluster.tetherctl("users", "ls").stdout
    assert "sso-uma" in listed
    # the connector decides their roles: an admin's update would not outlive the next login
    refused = site.cluster.tetherctl(
        "users", "update", "sso-uma", "--set-roles=auditor", check=False
    )
    assert refused.returncode == 1
    assert (
        "user 'sso-uma' signs in through connector 'hooktest_sso/standin', which sets their "
        "roles and traits at every login" in refused.stderr
    )
    assert "claims_to_roles" in refused.stderr
    assert get_user(site, "sso-uma")["spec"]["roles"] == ["access"]
    # the next login replaces the record with what the provider says now
    site.provider.next_user = ("sso-uma", {"groups": ["admins"]})
    assert sso_login(site, "uma")[0] == 0
    assert get_user(site, "sso-uma")["spec"]["roles"] == ["access", "editor"]


def test_sso_login_cannot_take_a_local_users_name(site: Site) -> None:
    site.cluster.tetherctl("users", "add", "lou", "--roles=access")
    site.provider.next_user = ("lou", {"groups": ["admins"]})
    code, _, err = sso_login(site, "lou-at-provider")
    assert code == 1
    assert (
        "a local user 'lou' already exists; a login through connector "
        "'hooktest_sso/standin' cannot take its name" in err
    )
    assert "tetherctl users rm lou" in err
    assert get_user(site, "lou")["spec"]["roles"] == ["access"], "the local user is untouched"
    failures = json.loads(
        site.cluster.tetherctl(
            "audit", "search", "--type=user.login.failed", "--format=json"
        ).stdout
    )
    assert "cannot take its name" in failures[-1]["reason"]
    # once the admin removes the local user, the provider's user gets the name
    site.cluster.tetherctl("users", "rm", "lou")
    assert sso_login(site, "lou-at-provider")[0] == 0
    assert get_user(site, "lou")["spec"]["created_by"]["connector"]["id"] == "standin"


def test_user_without_a_mapped_role_is_refused_with_the_reason(site: Site) -> None:
    site.provider.next_user = ("nobody-nina", {"groups": ["visitors"]})
    code, _, err = sso_login(site, "nina")
    assert code == 1
    assert "no role is mapped to 'nobody-nina' by connector 'hooktest_sso/standin'" in err


def test_an_answer_for_another_login_is_refused_by_its_nonce(site: Site) -> None:
    site.provider.next_user = ("sso-sam", {"groups": ["admins"]})
    site.provider.wrong_nonce = True
    try:
        code, _, err = sso_login(site, "nonce-victim")
    finally:
        site.provider.wrong_nonce = False
    assert code == 1
    assert "the identity provider's answer is for another login (nonce)" in err
    failures = json.loads(
        site.cluster.tetherctl(
            "audit", "search", "--type=user.login.failed", "--format=json"
        ).stdout
    )
    assert any("(nonce)" in e.get("reason", "") for e in failures)


def test_a_connector_that_fails_ends_the_login_with_its_error(site: Site) -> None:
    site.provider.empty_answer = True  # the test connector then reads a missing field
    try:
        code, _, err = sso_login(site, "broken")
    finally:
        site.provider.empty_answer = False
    assert code == 1
    assert "connector 'hooktest_sso/standin' failed: KeyError('username')" in err


def test_login_with_a_connector_that_does_not_exist_names_the_ones_that_do(site: Site) -> None:
    result = site.tether(
        "x",
        "login",
        f"--proxy={site.cluster.proxy_addr}",
        "--auth=okta",
        f"--ca-pin={site.cluster.ca_pin}",
        check=False,
    )
    assert result.returncode == 1
    assert "cluster has no connector 'okta'" in result.stderr
    assert "hooktest, local, standin" in result.stderr


def test_a_replayed_callback_and_a_second_collection_are_refused(site: Site) -> None:
    site.provider.next_user = ("sso-sam", {"groups": ["admins"]})
    with site.browser() as browser:
        begun = begin_login(browser, site.cluster, "standin")
        at_provider = browser.get(begun["auth_url"])
        callback = at_provider.headers["location"]
        assert callback.startswith(f"https://{site.cluster.proxy_addr}/webapi/sso/callback?")
        first = browser.get(callback)
        assert first.status_code == 200  # the approval page
        target = approval_target(first)
        assert target is not None
        prefix = f"http://127.0.0.1:9/callback?request={begun['request_id']}&code="
        assert target.startswith(prefix)
        code = target.removeprefix(prefix)
        replayed = browser.get(callback)
        assert replayed.status_code == 403
        assert "this login is unknown, expired or already used" in replayed.text
        stolen = collect_login(browser, site.cluster, begun["request_id"], "guess", code)
        assert stolen.status_code == 403
        assert "started by another client" in stolen.json()["error"]["message"]
        failures = site.cluster.tetherctl(
            "audit", "search", "--type=user.login.failed", "--format=json"
        ).stdout
        assert json.loads(failures)[-1]["reason"] == (
            "a client without this login's secret tried to collect it"
        )
        mine = (browser, site.cluster, begun["request_id"], "the-client-secret", code)
        collected = collect_login(*mine)
        assert collected.status_code == 200, collected.text
        assert collected.json()["identity"]["username"] == "sso-sam"
        again = collect_login(*mine)
        assert again.status_code == 403
        assert "expired or collected" in again.json()["error"]["message"]


def logins_of(site: Site, user: str) -> int:
    answer = site.cluster.tetherctl("audit", "search", "--type=user.login", "--format=json")
    events = json.loads(answer.stdout)  # the type selects user.login.failed too
    return sum(1 for e in events if e["type"] == "user.login" and e["user"] == user)


def test_a_shared_login_link_gives_whoever_shared_it_nothing(site: Site) -> None:
    # mallory starts a login with her own key and secret, as her own `tether login` would,
    # and sends the provider's URL to sam, who is signed in at the provider and approves
    site.provider.next_user = ("sso-sam", {"groups": ["admins"]})
    before = logins_of(site, "sso-sam")
    shared = share_login_link(
        site.cluster,
        "standin",
        lambda browser, url: browser.get(url, follow_redirects=True),
        shown=("sso-sam (signed in through hooktest_sso/standin)", "access, editor"),
    )
    assert shared.collected.status_code == 403
    error = shared.collected.json()["error"]
    assert error["message"] == (
        "this login was not approved in a browser for this client: the one-time code "
        "from the browser is missing or wrong"
    )
    assert "tether login --auth=standin" in error["hint"]
    refusal = login_failures(site.cluster)[-1]
    assert refusal["user"] == "sso-sam"
    assert refusal["method"] == "hooktest_sso/standin"
    assert refusal["reason"] == (
        "collected without the one-time code the browser delivers to the client's loopback "
        f"address {shared.client} (a shared login link?)"
    )
    assert logins_of(site, "sso-sam") == before, "no certificate was issued for sam"
    # sam's own `tether login`, beside it, works: his browser brings the code to his client
    code, _, err = sso_login(site, "sam-himself")
    assert code == 0, err
    assert status(site, "sam-himself")["username"] == "sso-sam"


def test_a_wrong_code_voids_the_login_so_guessing_gets_nothing(site: Site) -> None:
    site.provider.next_user = ("sso-sam", {"groups": ["admins"]})
    with site.browser() as browser:
        begun = begin_login(browser, site.cluster, "standin")
        target = approval_target(browser.get(begun["auth_url"], follow_redirects=True))
        assert target is not None
        mine = (browser, site.cluster, begun["request_id"], "the-client-secret")
        guessed = collect_login(*mine, "a-guess")
        assert guessed.status_code == 403
        assert "one-time code from the browser is missing or wrong" in guessed.text
        # one try: even the right code finds nothing now
        right = collect_login(
            *mine, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))["code"]
        )
        assert right.status_code == 403
        assert "no login result is waiting" in right.text


@pytest.mark.parametrize(
    "redirect",
    [
        "http://evil.example:8080/callback",
        "https://127.0.0.1:8080/callback",
        "http://127.0.0.1/callback",
        "http://10.0.0.1:8080/callback",
        "javascript:alert(1)",
    ],
)
def test_the_certificates_may_only_go_back_to_the_users_own_machine(
    site: Site, redirect: str
) -> None:
    with site.browser() as browser:
        begun = begin_login(browser, site.cluster, "standin", redirect=redirect)
    assert "is not allowed" in begun["error"]["message"], begun


def test_connector_secrets_are_hidden_unless_asked_for(site: Site) -> None:
    shown = site.cluster.tetherctl("get", "hooktest_sso/standin", env=site.env).stdout
    assert site.provider.client_secret not in shown
    secret = site.cluster.tetherctl(
        "get", "hooktest_sso/standin", "--with-secrets", env=site.env
    ).stdout
    assert site.provider.client_secret in secret


def test_connectors_are_listed_by_name_and_type(site: Site) -> None:
    answer = run_cli(
        "tetherctl",
        "-c",
        str(site.cluster.config_path),
        "get",
        "connectors",
        "--format=json",
        env=site.env,
    )
    assert json.loads(answer.stdout) == [
        {"name": "hooktest", "type": "password"},
        {"name": "local", "type": "password"},
        {"name": "standin", "type": "hooktest_sso"},
    ]


# --- the pure parts ---------------------------------------------------------------------------


def test_pkce_challenge_is_rfc_7636_s256() -> None:
    # RFC 7636, appendix B
    request = SSORequest(
        **{
            **{f.name: "" for f in attrs.fields(SSORequest)},
            "pkce_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "ttl_seconds": None,
            "expires": 0.0,
        }
    )
    assert request.pkce_challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def approval(redirect: str) -> Approval:
    return Approval(
        request_id="r",
        username="<sam>",
        method="oidc/example",
        roles=("access",),
        cluster="main",
        client="127.0.0.1:4000",
        certificate_ttl_seconds=3600.0,
        expires=0.0,
        redirect=redirect,
    )


def test_the_approval_page_shows_the_login_and_sends_the_code_only_on_approval() -> None:
    response = approval_page(approval("http://127.0.0.1:4000/cb?request=r&code=c%22d"))
    # never framed (a click fooled through a frame would approve), kept or leaked on
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    page = bytes(response.body).decode()
    assert "&lt;sam&gt; (signed in through oidc/example)" in page
    assert "the tether client listening at 127.0.0.1:4000" in page
    assert "1h" in page and "1970-01-01 00:00:00 UTC" in page
    assert '<form id="approve" method="get" action="http://127.0.0.1:4000/cb">' in page
    assert '<input type="hidden" name="code" value="c&quot;d">' in page
    assert "http-equiv" not in page and "<script" not in page  # nothing leaves without a click


def test_the_approval_page_never_sends_the_code_off_this_machine() -> None:
    with pytest.raises(TetherError, match="is not allowed"):
        approval_page(approval("http://evil.example:4000/cb?request=r&code=c"))


@pytest.mark.parametrize(
    ("target", "taken"),
    [
        ("/callback?request=r-1&code=c-1", ("r-1", "c-1")),
        ("/callback?request=r-1", None),  # what an old cluster sends: nothing to collect with
        ("/elsewhere?request=r-1&code=c-1", None),
    ],
)
async def test_the_clients_listener_takes_a_login_id_only_with_its_code(
    target: str, taken: tuple[str, str] | None
) -> None:
    browser, listener = trio.testing.memory_stream_pair()
    await browser.send_all(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert await _one_request(listener) == taken
    answer = await browser.receive_some()
    assert answer.startswith(b"HTTP/1.1 200" if taken else b"HTTP/1.1 404")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:4000/cb", "http://localhost:4000/cb", "http://[::1]:4000/cb"]
)
def test_loopback_redirects_are_accepted(url: str) -> None:
    assert check_client_redirect(url) == url


def test_loopback_redirect_with_a_fragment_is_refused() -> None:
    with pytest.raises(TetherError, match="is not allowed"):
        check_client_redirect("http://127.0.0.1:4000/cb#x")


def test_claims_map_to_roles_like_a_role_map() -> None:
    rules = [
        ClaimMapping("groups", "^team-(.*)$", ("$1",)),
        ClaimMapping("groups", "ops-*", ("access",)),
        ClaimMapping("email", "*@example.com", ("auditor",)),
    ]
    claims = {"groups": ["team-dev", "ops-east", "other"], "email": ["a@example.com"]}
    roles = map_claims(get_plugin_manager(), rules, claims, "oidc/test")
    assert roles == ("dev", "access", "auditor")


# --- expiry, with the auth service's clock in the test's hands --------------------------------


async def test_a_login_that_takes_longer_than_five_minutes_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tether_hooktest.LOG_ENV, str(tmp_path / "hooks.jsonl"))
    pm = get_plugin_manager(autoload=False)
    pm.register(tether_hooktest, name="hooktest")
    config = default_config(data_dir=tmp_path, cluster_name="main")
    pm.hook.tether_configure(config=config)
    now = [time.time()]
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.sqlite'}") as backend:
        auth = await AuthService.open(config=config, pm=pm, backend=backend, clock=lambda: now[0])
        admin = pki.Identity(
            username="admin",
            cluster="main",
            roles=(),
            traits={},
            logins=(),
            expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
            kind="admin",
        )
        (connector,) = parse_resources(
            CONNECTOR.format(url="http://127.0.0.1:9", secret="s", proxy="127.0.0.1:3080"),
            "standin.yaml",
            auth.registry,
        )
        await auth.create_resources(admin, [connector])
        key = pki.generate_private_key()
        request_id, url = await auth.begin_sso(
            "standin",
            client_redirect_url="http://127.0.0.1:4000/callback",
            client_secret_hash=hash_client_secret("secret"),
            ssh_public_key=pki.ssh_public_key_line(key.public_key()),
            tls_public_key_pem=pki.public_key_to_pem(key.public_key()).decode(),
        )
        state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["state"]
        now[0] += REQUEST_TTL.total_seconds() + 1
        redirect = await auth.complete_sso({"state": state, "code": "whatever"})
        assert isinstance(redirect, str)  # refused: nothing to approve, straight to the client
        prefix = f"http://127.0.0.1:4000/callback?request={request_id}&code="
        assert redirect.startswith(prefix)
        with pytest.raises(AccessDenied, match="the login took too long; it expired"):
            await auth.collect_sso(request_id, "secret", redirect.removeprefix(prefix))
