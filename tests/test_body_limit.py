"""Anonymous clients cannot make the proxy hold a request body of any size.

Anyone who reaches the proxy's port may post to its anonymous endpoints (single sign-on
collect and callback, login, join, trusted cluster validation). A body over
``proxy_service.max_request_body`` is refused with 413 and audited: declared too large, before
any of it is read; sent without a length (chunked), as soon as it passes the limit. The proxy's
peak memory is measured. Real processes on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tether import pki
from tether.config import ByteSize, load_config_text
from tether.testing.cluster import RunningCluster

MiB = 1024 * 1024


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory in bytes (``VmHWM``)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _zeros(total: int) -> Iterator[bytes]:
    chunk = bytes(MiB)
    for _ in range(total // MiB):
        yield chunk


def _refusal(answer: httpx.Response) -> str:
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["hint"] == "send a smaller one, or raise proxy_service.max_request_body"
    return str(error["message"])


def test_huge_anonymous_posts_are_refused_unread_and_the_proxy_stays_small(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    cluster.add_user("alice", "alice-password", logins=("alice",))
    with httpx.Client(
        base_url=f"https://{cluster.proxy_addr}", verify=_insecure(), timeout=120
    ) as web:
        web.get("/webapi/ping")  # the proxy has served a request: its baseline
        before = _peak_rss(cluster.process.pid)

        # 600 MB declared up front: refused as soon as the headers arrive
        huge = 600 * MiB
        declared = web.post(
            "/webapi/sso/collect",
            content=_zeros(huge),
            headers={"content-type": "application/json", "content-length": str(huge)},
        )
        assert _refusal(declared) == (
            f"request body of {huge} bytes is over the 1MiB this server reads"
        )
        # a body with no length (chunked) is counted as it comes: refused once over 1 MiB
        chunked = web.post(
            "/webapi/trustedclusters/validate",
            content=_zeros(64 * MiB),
            headers={"content-type": "application/json"},
        )
        assert _refusal(chunked) == "request body is over the 1MiB this server reads"
        # routes the rate limit does not cover are capped alike: the SAML callback
        form = web.post(
            "/webapi/sso/callback",
            content=_zeros(8 * MiB),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert _refusal(form).startswith("request body")

        assert _peak_rss(cluster.process.pid) - before < 32 * MiB

        # what fits goes through: a login whose body is close to the limit, and a SAML post
        key = pki.generate_private_key()
        login = web.post(
            "/webapi/login",
            json={
                "user": "alice",
                "password": "alice-password",
                "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
                "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
                "padding": "x" * (MiB - 4096),
            },
        )
        assert login.status_code == 200, login.text
        assert login.json()["identity"]["username"] == "alice"
        saml = web.post(
            "/webapi/sso/callback",
            data={"SAMLResponse": "PHNhbWxwOlJlc3BvbnNlLz4=" * 8000, "RelayState": "unknown"},
        )
        assert saml.status_code != 413
        assert "Login failed" in saml.text  # auth read it, and knows no such login

    events = json.loads(
        cluster.tetherctl("audit", "search", "--type=proxy.request.refused", "--format=json").stdout
    )
    refused = {(e["path"], e["content_length"]) for e in events}
    assert refused == {
        ("/webapi/sso/collect", huge),
        ("/webapi/trustedclusters/validate", None),
        ("/webapi/sso/callback", None),
    }
    assert all(e["success"] is False and e["reason"] == "request body too large" for e in events)


def test_sso_collect_is_held_to_the_rate_like_the_other_anonymous_endpoints(
    tether_cluster_factory: Any,
) -> None:
    limit = {"average": 1, "burst": 2, "period": "1m"}
    cluster: RunningCluster = tether_cluster_factory(
        config={"proxy_service": {"rate_limit": limit}}
    )
    collect = {"request_id": "no-such-login", "client_secret": "guess"}
    with httpx.Client(base_url=f"https://{cluster.proxy_addr}", verify=_insecure()) as web:
        for _ in range(2):
            answered = web.post("/webapi/sso/collect", json=collect)
            assert answered.status_code not in (413, 429), answered.text
        held = web.post("/webapi/sso/collect", json=collect)
        assert held.status_code == 429
        assert 0 < int(held.headers["Retry-After"]) <= 60
        assert held.json()["error"]["message"].startswith("too many requests from 127.0.0.1")


def test_http2_posts_answered_before_their_body_ends_do_not_stop_the_proxy(
    tether_cluster_factory: Any,
) -> None:
    # Browsers speak HTTP/2. An answer sent while the body is still coming (the rate limit's
    # 429, the body limit's 413) left hypercorn's HTTP/2 code raising KeyError for the data
    # that followed, and the error stopped the whole daemon.
    limit = {"average": 1, "burst": 1, "period": "1m"}
    cluster: RunningCluster = tether_cluster_factory(
        config={"proxy_service": {"rate_limit": limit}}
    )
    base_url = f"https://{cluster.proxy_addr}"
    with httpx.Client(base_url=base_url, verify=_insecure(), http2=True) as web:
        assert web.get("/webapi/ping").http_version == "HTTP/2"
        web.post("/webapi/login", json={})  # spends the one request of the rate
    for body in (b"x" * (512 * 1024), b"x" * (8 * MiB)):  # a 429, then a 413
        with (
            httpx.Client(base_url=base_url, verify=_insecure(), http2=True) as web,
            contextlib.suppress(httpx.TransportError),  # the connection may end with the answer
        ):
            answer = web.post("/webapi/login", content=body)
            assert answer.status_code in (413, 429)
        with httpx.Client(base_url=base_url, verify=_insecure(), http2=True) as web:
            assert web.get("/webapi/ping").json()["cluster_name"] == "main"
    assert cluster.process.poll() is None


def test_the_body_limit_is_read_as_a_size() -> None:
    config = load_config_text("proxy_service:\n  max_request_body: 256KiB\n", "tether.yaml")
    assert config.proxy_service.max_request_body == 256 * 1024
    assert str(ByteSize(MiB)) == "1MiB"
    with pytest.raises(Exception, match=r"'1\.5MiB' is not a size \(examples: 1MiB"):
        load_config_text("proxy_service:\n  max_request_body: 1.5MiB\n", "tether.yaml")


def test_huge_anonymous_posts_to_auth_are_refused_but_not_its_callers_with_certificates(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    # Hosts that join auth directly (--auth-server) post anonymously to its own port.
    cluster = tether_cluster
    with httpx.Client(
        base_url=f"https://{cluster.auth_addr}", verify=_insecure(), timeout=120
    ) as web:
        web.get("/webapi/ping")
        before = _peak_rss(cluster.process.pid)
        huge = 600 * MiB
        declared = web.post(
            "/webapi/join",
            content=_zeros(huge),
            headers={"content-type": "application/json", "content-length": str(huge)},
        )
        chunked = web.post(
            "/webapi/join", content=_zeros(64 * MiB), headers={"content-type": "application/json"}
        )
        assert _peak_rss(cluster.process.pid) - before < 32 * MiB
    for answer, size in ((declared, f"of {huge} bytes "), (chunked, "")):
        assert answer.status_code == 413, answer.text
        error = answer.json()["error"]
        assert error["message"] == f"request body {size}is over the 1MiB this server reads"
        assert error["hint"] == "send a smaller one, or raise auth_service.max_request_body"
    events = json.loads(
        cluster.tetherctl("audit", "search", "--type=auth.request.refused", "--format=json").stdout
    )
    assert {(e["path"], e["content_length"]) for e in events} == {
        ("/webapi/join", None),
        ("/webapi/join", huge),
    }

    # the admin presents a certificate: a role larger than the anonymous limit is read whole
    role = tmp_path / "big.yaml"
    role.write_text(
        "kind: role\nversion: v7\nmetadata:\n  name: big\n"
        f"  description: {'x' * (2 * MiB)}\nspec:\n  allow:\n    logins: [big]\n"
    )
    cluster.tetherctl("create", str(role))
    assert "big" in cluster.tetherctl("get", "roles").stdout
