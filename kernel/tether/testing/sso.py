"""Single sign-on logins in tests: ``tether login --auth=NAME`` with a test as the browser.

For authors of redirect connectors: run the real client against a real cluster, and drive the
identity provider's pages with an HTTP client (``browse`` gets the URL the client printed), then
press Approve on the proxy's page (:func:`press_approve`), as the user would.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import httpx
import pytest

from tether import pki
from tether.auth.sso_flows import hash_client_secret
from tether.datadir import admin_identity_paths
from tether.proxy.sso_page import APPROVE_FORM_ID
from tether.testing.cluster import RunningCluster
from tether.testing.http import free_port

__all__ = [
    "SharedLink",
    "approval_target",
    "begin_login",
    "cluster_browser",
    "collect_login",
    "login_failures",
    "press_approve",
    "share_login_link",
    "sso_login",
]

_APPROVE_FORM = re.compile(
    rf'<form id="{APPROVE_FORM_ID}" method="get" action="([^"]+)">(.*?)</form>', re.S
)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def cluster_browser(cluster: RunningCluster, *, timeout: float = 20.0) -> httpx.Client:
    """An HTTP client that trusts ``cluster``'s CA, as a user's browser trusts its proxy."""
    ca = admin_identity_paths(cluster.data_dir)[2]
    context = pki.client_ssl_context(trusted_cas=pki.load_certs(ca.read_bytes()))
    return httpx.Client(verify=context, timeout=timeout)


def begin_login(
    browser: httpx.Client,
    cluster: RunningCluster,
    connector: str,
    *,
    client_secret: str = "the-client-secret",
    redirect: str = "http://127.0.0.1:9/callback",
) -> dict[str, Any]:
    """Start a login at the proxy as ``tether login`` would, for tests that then play the
    browser's and the client's steps themselves (replays, stolen results).

    Returns the proxy's answer: ``request_id`` and ``auth_url`` (or ``error``).
    """
    key = pki.generate_private_key()
    answer = browser.post(
        f"https://{cluster.proxy_addr}/webapi/sso/login",
        json={
            "connector": connector,
            "client_redirect_url": redirect,
            "client_secret_hash": hash_client_secret(client_secret),
            "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
            "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
        },
    )
    return dict(answer.json())


def approval_target(page: httpx.Response) -> str | None:
    """Where the proxy's approval ``page`` sends the browser when the user presses Approve:
    the client's loopback URL with the login's ``request`` id and one-time ``code``; None if
    ``page`` is not an approval page."""
    form = _APPROVE_FORM.search(page.text)
    if form is None:
        return None
    fields = {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(form.group(2))}
    return f"{html.unescape(form.group(1))}?{urllib.parse.urlencode(fields)}"


def press_approve(browser: httpx.Client, page: httpx.Response) -> httpx.Response:
    """Press Approve on the proxy's approval ``page``, as the user does after checking it;
    returns ``page`` itself if it asks for nothing (a refused login went on to the client)."""
    target = approval_target(page)
    return page if target is None else browser.get(target)


def collect_login(
    browser: httpx.Client,
    cluster: RunningCluster,
    request_id: str,
    client_secret: str,
    code: str | None = None,
) -> httpx.Response:
    """Collect a login's outcome at the proxy as a client does (with the ``code`` the browser
    brought to its listener, if it has one)."""
    body = {"request_id": request_id, "client_secret": client_secret}
    if code is not None:
        body["code"] = code
    return browser.post(f"https://{cluster.proxy_addr}/webapi/sso/collect", json=body)


@attrs.frozen
class SharedLink:
    """What the client that shared a login's link got (:func:`share_login_link`).

    :param cluster: where it logged in.
    :param client: ``HOST:PORT`` that client gave as its loopback listener.
    :param collected: the proxy's answer to its collection.
    """

    cluster: RunningCluster
    client: str
    collected: httpx.Response

    def assert_refused(self, user: str, method: str) -> None:
        """Check that the collection was refused for want of the code, and audited as a login
        of ``user`` through connector ``method`` (``KIND/NAME``) that failed."""
        assert self.collected.status_code == 403, self.collected.text
        assert "the one-time code from the browser is missing or wrong" in self.collected.text
        refusal = login_failures(self.cluster)[-1]
        assert (refusal["user"], refusal["method"]) == (user, method), refusal
        assert f"loopback address {self.client} (a shared login link?)" in refusal["reason"]


def share_login_link(
    cluster: RunningCluster,
    connector: str,
    sign_in: Callable[[httpx.Client, str], httpx.Response],
    shown: Sequence[str],
) -> SharedLink:
    """Start a login through ``connector`` as a client that then shares the provider's URL:
    another person's browser signs in with it (``sign_in(browser, url)`` drives the provider
    and returns the proxy's approval page, which must show every one of ``shown``), and even
    presses Approve, which sends it to the sharer's loopback port on that person's machine,
    where nothing listens. Then the sharer collects with all it knows.
    """
    secret = "the sharer's secret"
    client = f"127.0.0.1:{free_port()}"  # the sharer's listener, on the sharer's machine
    with cluster_browser(cluster) as sharer:
        begun = begin_login(
            sharer, cluster, connector, client_secret=secret, redirect=f"http://{client}/callback"
        )
        # a login that went straight to the loopback port, unapproved, fails here too
        with cluster_browser(cluster) as browser, pytest.raises(httpx.ConnectError):
            page = sign_in(browser, begun["auth_url"])
            for text in (*shown, cluster.name, client):
                assert text in page.text, page.text
            press_approve(browser, page)
        collected = collect_login(sharer, cluster, begun["request_id"], secret)
    return SharedLink(cluster, client, collected)


def login_failures(cluster: RunningCluster) -> list[dict[str, Any]]:
    """The cluster's ``user.login.failed`` audit events, oldest first."""
    answer = cluster.tetherctl("audit", "search", "--type=user.login.failed", "--format=json")
    return [e for e in json.loads(answer.stdout) if e["type"] == "user.login.failed"]


def sso_login(
    cluster: RunningCluster,
    user: str,
    connector: str,
    browse: Callable[[str], object],
    *,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> tuple[int, str]:
    """Run ``tether login --auth=CONNECTOR --no-browser`` with ``user``'s profile, hand the
    provider URL it prints to ``browse``, and wait for it to finish.

    Returns the exit status and everything it wrote on standard error.
    """
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether.cli.tether",
            "login",
            f"--proxy={cluster.proxy_addr}",
            f"--auth={connector}",
            f"--ca-pin={cluster.ca_pin}",
            "--no-browser",
            *extra_args,
        ],
        env={**os.environ, **(env or {}), "TETHER_HOME": str(cluster.user_home(user))},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = []
    try:
        for line in process.stderr:  # "Log in with NAME in your browser:", then the URL
            seen.append(line)
            if line.startswith("  http"):
                browse(line.strip())
                break
        _, rest = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, "".join(seen) + rest
