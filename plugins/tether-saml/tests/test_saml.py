"""SAML logins against a real SAML identity provider started here: pysaml2's IdP.

The provider (``IdentityProvider`` below) is pysaml2's ``Server``, the IdP half of the same
maintained implementation, behind an HTTP endpoint on 127.0.0.1 with the HTTP-Redirect
binding for requests and HTTP-POST for responses. Its signing key is made here; knobs make it
misbehave as tests need (unsigned, signed with a key not in its metadata, for another
audience, short-lived). A test's HTTP client plays the browser and posts the response form.
"""

from __future__ import annotations

import contextlib
import datetime
import html
import json
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import attrs
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig, SPConfig
from saml2.metadata import create_metadata_string
from saml2.saml import NAME_FORMAT_BASIC, NAMEID_FORMAT_EMAILADDRESS, NameID
from saml2.server import Server
from tether_saml.connector import ACCEPTED_TIME_DIFF

from tether.testing.cluster import RunningCluster, run_cli, start_cluster
from tether.testing.http import free_port, serve_http
from tether.testing.sso import (
    begin_login,
    cluster_browser,
    press_approve,
    share_login_link,
    sso_login,
)

pytestmark = pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="needs xmlsec1")

USERS = {
    "alice": {"groups": ["admins", "team-dev"], "env": ["demo"]},
    "nina": {"groups": ["visitors"]},
}


def _key_and_cert(directory: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _text(data: str | bytes) -> str:
    return data.decode() if isinstance(data, bytes) else data


@attrs.define
class IdentityProvider:
    """pysaml2's IdP on 127.0.0.1; ``next_user`` logs in at the next request."""

    directory: pathlib.Path
    sp_entity_id: str
    acs: str
    next_user: str = "alice"
    sign_assertion: bool = True
    sign_response: bool = False
    foreign_key: bool = False
    audience: str | None = None
    lifetime_seconds: int | None = None
    last_form: dict[str, str] = attrs.field(factory=dict)
    port: int = attrs.field(factory=free_port)
    _serving: contextlib.ExitStack = attrs.field(factory=contextlib.ExitStack)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _idp(self, key_name: str, lifetime: dict[str, int]) -> Server:
        key, cert = (
            _key_and_cert(self.directory, key_name)
            if not (self.directory / f"{key_name}.key").exists()
            else (self.directory / f"{key_name}.key", self.directory / f"{key_name}.crt")
        )
        config = IdPConfig()
        config.load(
            {
                "entityid": f"{self.url}/metadata",
                "service": {
                    "idp": {
                        "endpoints": {
                            "single_sign_on_service": [
                                (f"{self.url}/sso/redirect", BINDING_HTTP_REDIRECT)
                            ]
                        },
                        "policy": {
                            "default": {
                                "lifetime": lifetime,
                                "attribute_restrictions": None,
                                "name_form": NAME_FORMAT_BASIC,
                            }
                        },
                    }
                },
                "key_file": str(key),
                "cert_file": str(cert),
                "metadata": {"inline": [self.sp_metadata()]},
            }
        )
        return Server(config=config)

    def sp_metadata(self) -> str:
        config = SPConfig()
        config.load(
            {
                "entityid": self.sp_entity_id,
                "service": {
                    "sp": {
                        "endpoints": {"assertion_consumer_service": [(self.acs, BINDING_HTTP_POST)]}
                    }
                },
            }
        )
        return _text(create_metadata_string(None, config=config, sign=False))

    def metadata(self) -> str:
        idp = self._idp("idp", {"minutes": 15})
        return _text(create_metadata_string(None, config=idp.config, sign=False))

    def respond(self, query: dict[str, str]) -> str:
        lifetime = {"seconds": self.lifetime_seconds} if self.lifetime_seconds else {"minutes": 5}
        idp = self._idp("intruder" if self.foreign_key else "idp", lifetime)
        request = idp.parse_authn_request(query["SAMLRequest"], BINDING_HTTP_REDIRECT)
        user = self.next_user
        response = idp.create_authn_response(
            identity=USERS[user],
            in_response_to=request.message.id,
            destination=self.acs,
            sp_entity_id=self.audience or self.sp_entity_id,
            name_id=NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=f"{user}@example.com"),
            sign_assertion=self.sign_assertion,
            sign_response=self.sign_response,
            authn={"class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:Password"},
        )
        http_args = idp.apply_binding(
            BINDING_HTTP_POST, str(response), self.acs, query.get("RelayState", ""), response=True
        )
        return str(http_args["data"])

    def __enter__(self) -> IdentityProvider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/metadata":
                    body, kind = provider.metadata().encode(), "application/samlmetadata+xml"
                else:
                    body = provider.respond(dict(urllib.parse.parse_qsl(url.query))).encode()
                    kind = "text/html"
                self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._serving.enter_context(serve_http(Handler, self.port))
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.close()


CONNECTOR = """
kind: saml
version: v2
metadata: {{name: corp}}
spec:
  acs: {acs}
  entity_descriptor_url: {idp}/metadata
  attributes_to_roles:
    - {{name: groups, value: admins, roles: [access, editor]}}
    - {{name: groups, value: "^team-(.*)$", roles: ["$1"]}}
"""


@attrs.frozen
class Site:
    cluster: RunningCluster
    idp: IdentityProvider
    directory: pathlib.Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("saml")
    cluster = start_cluster(directory / "cluster", "main")
    acs = f"https://{cluster.proxy_addr}/webapi/sso/callback"
    try:
        with IdentityProvider(directory, sp_entity_id=acs, acs=acs) as idp:
            path = directory / "corp.yaml"
            path.write_text(CONNECTOR.format(acs=acs, idp=idp.url))
            cluster.tetherctl("create", str(path))
            yield Site(cluster, idp, directory)
    finally:
        cluster.stop()


_FORM = re.compile(r'<form[^>]*action="([^"]+)"', re.IGNORECASE)
_INPUT = re.compile(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', re.IGNORECASE)


def post_form(browser: httpx.Client, page: str) -> httpx.Response:
    """Submit the provider's auto-posting form, as a browser runs its script."""
    action = _FORM.search(page)
    assert action is not None, page[:500]
    fields = {name: html.unescape(value) for name, value in _INPUT.findall(page)}
    return browser.post(html.unescape(action.group(1)), data=fields, follow_redirects=True)


def login(site: Site, user: str, *, wait: float = 0.0) -> tuple[int, str]:
    def browse(url: str) -> None:
        with cluster_browser(site.cluster) as browser:
            page = browser.get(url).text
            site.idp.last_form.update(_INPUT.findall(page))
            time.sleep(wait)
            press_approve(browser, post_form(browser, page))

    return sso_login(site.cluster, user, "corp", browse)


def active(site: Site, user: str) -> dict[str, Any]:
    return dict(json.loads(site.cluster.tether(user, "status", "--format=json").stdout)["active"])


def test_user_logs_in_at_the_identity_provider_with_roles_from_attributes(site: Site) -> None:
    code, err = login(site, "alice")
    assert code == 0, err
    me = active(site, "alice")
    assert me["username"] == "alice@example.com"
    assert me["roles"] == ["access", "editor", "dev"]
    assert me["traits"]["env"] == ["demo"]
    events = json.loads(
        site.cluster.tetherctl("audit", "search", "--type=user.login", "--format=json").stdout
    )
    assert events[-1]["method"] == "saml/corp"
    assert events[-1]["subject"] == "alice@example.com"


def test_user_whose_attributes_map_to_no_role_is_refused(site: Site) -> None:
    site.idp.next_user = "nina"
    try:
        code, err = login(site, "nina")
    finally:
        site.idp.next_user = "alice"
    assert code == 1
    assert "no role is mapped to 'nina@example.com' by connector 'saml/corp'" in err


@pytest.mark.parametrize(
    ("knobs", "reason"),
    [
        ({"sign_assertion": False}, "it is not signed"),
        ({"foreign_key": True}, "its signature does not verify with the provider's certificate"),
        (
            {"audience": "https://other.example.com/acs"},
            "it is for another service provider (audience)",
        ),
    ],
)
def test_a_response_that_is_not_genuine_is_refused(
    site: Site, knobs: dict[str, Any], reason: str
) -> None:
    for name, value in knobs.items():
        setattr(site.idp, name, value)
    try:
        code, err = login(site, f"refused-{len(reason)}")
    finally:
        site.idp.sign_assertion, site.idp.foreign_key, site.idp.audience = True, False, None
    assert code == 1
    assert f"the SAML response is not valid: {reason}" in err


def test_a_whole_signed_response_is_accepted(site: Site) -> None:
    site.idp.sign_assertion, site.idp.sign_response = False, True
    try:
        code, err = login(site, "response-signed")
    finally:
        site.idp.sign_assertion, site.idp.sign_response = True, False
    assert code == 0, err


def test_an_expired_assertion_is_refused(site: Site) -> None:
    site.idp.lifetime_seconds = 1
    try:
        code, err = login(site, "late", wait=1 + ACCEPTED_TIME_DIFF + 1)
    finally:
        site.idp.lifetime_seconds = None
    assert code == 1
    assert "the SAML response is not valid: it has expired" in err


def test_an_assertion_replayed_into_another_login_is_refused(site: Site) -> None:
    # a genuine response captured from one login, posted with a new login's RelayState
    assert login(site, "first")[0] == 0
    captured = dict(site.idp.last_form)
    with cluster_browser(site.cluster) as browser:
        begun = begin_login(browser, site.cluster, "corp")
        fresh = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(begun["auth_url"]).query))
        answer = browser.post(
            f"https://{site.cluster.proxy_addr}/webapi/sso/callback",
            data={"SAMLResponse": captured["SAMLResponse"], "RelayState": fresh["RelayState"]},
        )
        assert answer.status_code == 302  # the client is told, and collects the refusal
        collected = browser.post(
            f"https://{site.cluster.proxy_addr}/webapi/sso/collect",
            json={"request_id": begun["request_id"], "client_secret": "not-the-secret"},
        )
    # the secret is wrong on purpose: the refusal is not handed to a stranger either
    assert collected.status_code == 403
    failures = json.loads(
        site.cluster.tetherctl(
            "audit", "search", "--type=user.login.failed", "--format=json"
        ).stdout
    )
    reasons = [f["reason"] for f in failures]
    assert "it does not answer this login's request" in reasons[-2]
    assert reasons[-1] == "a client without this login's secret tried to collect it"


def test_a_shared_login_link_gives_whoever_shared_it_nothing(site: Site) -> None:
    # mallory starts `tether login --auth=corp` with her own key and secret and sends the
    # provider's URL to alice, who signs in at the provider (or already is) and approves
    shared = share_login_link(
        site.cluster,
        "corp",
        lambda browser, url: post_form(browser, browser.get(url).text),
        shown=("alice@example.com", "access, editor, dev"),
    )
    shared.assert_refused("alice@example.com", "saml/corp")
    # alice's own `tether login`, beside it, works
    code, err = login(site, "alice-herself")
    assert code == 0, err
    assert active(site, "alice-herself")["username"] == "alice@example.com"


def test_a_replayed_response_is_refused(site: Site) -> None:
    assert login(site, "replay-source")[0] == 0
    captured = dict(site.idp.last_form)
    with cluster_browser(site.cluster) as browser:
        again = browser.post(
            f"https://{site.cluster.proxy_addr}/webapi/sso/callback", data=captured
        )
    assert again.status_code == 403
    assert "this login is unknown, expired or already used" in again.text


def test_settings_are_checked_when_created(site: Site) -> None:
    bad = site.directory / "bad.yaml"
    bad.write_text(
        CONNECTOR.format(acs="http://proxy.example.com/acs", idp=site.idp.url).replace(
            "name: corp", "name: bad"
        )
    )
    result = site.cluster.tetherctl("create", str(bad), check=False)
    assert result.returncode == 1
    assert "spec.acs: must be an https:// URL" in result.stderr


def test_the_plugin_is_listed_with_its_kind_and_connector() -> None:
    listed = run_cli("tetherd", "plugins").stdout
    row = next(line for line in listed.splitlines() if line.startswith("saml "))
    assert "tether_identity_connectors" in row and "tether_resource_kinds" in row


def test_loading_the_plugin_leaves_pysaml2_to_the_auth_service() -> None:
    # every tether and tetherctl start loads the plugins; pysaml2 alone costs over half a second
    code = "import sys, tether_saml.plugin; assert 'saml2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
