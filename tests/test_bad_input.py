"""Every daemon survives bad input, and every refusal says what is wrong (DESIGN.md, Conventions).

One real cluster (``tetherd`` with auth and proxy on 127.0.0.1) takes the abuse of the whole
module: garbage instead of TLS, peers that vanish or stall, malformed JSON, foreign and expired
certificates, forged forwarding, wrong tokens and broken resource files. After each abuse the
test proves the daemon still serves: the proxy answers ``/webapi/ping`` and auth answers an
admin's mutual-TLS call, the same one ``tetherctl status`` makes. The last test runs the real
``tetherctl status`` and reads the daemon's log for tracebacks.

The tests read the cluster's CA keys from its data directory (same user as the daemon) to mint
certificates a real client could hold: expired ones, a proxy's, a user's.
"""

from __future__ import annotations

import base64
import datetime
import json
import pathlib
import random
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import tether
from tether import pki
from tether.client.profile import current_profile
from tether.plugins import get_plugin_manager
from tether.testing.cluster import RunningCluster, run_cli, start_cluster
from tether.token_types import token_types

CLUSTER = "main"
PASSWORD = "correct horse battery staple"
GARBAGE = random.Random(20260101).randbytes(4096)  # never starts like a TLS record
NOW = datetime.datetime.now(datetime.UTC)
HOUR = datetime.timedelta(hours=1)
FORWARDED = "Tether-Forwarded-Cert"

ROLE_YAML = """\
kind: role
version: v5
metadata:
  name: {name}
spec:
  allow:
    logins: [{login}]
"""


# --- the cluster and ways to talk to it ------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    running = start_cluster(tmp_path_factory.mktemp("bad-input"), CLUSTER)
    try:
        yield running
        # after every test's abuse, in whatever order they ran: nothing reached a traceback
        log = running.log_text()
        assert "Traceback" not in log
        assert "internal error" not in log
    finally:
        running.stop()


@pytest.fixture(scope="module")
def cas(cluster: RunningCluster) -> pki.ClusterAuthorities:
    """The cluster's real CAs, read from its data directory."""
    return pki.ClusterAuthorities.load_or_create(cluster.data_dir / "keys", CLUSTER)


def split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def identity(
    username: str = "mallory",
    *,
    kind: str = "user",
    roles: tuple[str, ...] = ("access",),
    expires: datetime.datetime | None = None,
    cluster: str = CLUSTER,
) -> pki.Identity:
    return pki.Identity(
        username=username,
        cluster=cluster,
        roles=roles,
        traits={},
        logins=(),
        expires=expires or NOW + HOUR,
        kind=kind,
    )


def issue(
    ca: pki.ClusterAuthorities, who: pki.Identity, *, now: datetime.datetime | None = None
) -> tuple[x509.Certificate, Any]:
    key = pki.generate_private_key()
    return pki.issue_x509_cert(ca.tls, key.public_key(), who, now=now), key


def expired_cert(cas: pki.ClusterAuthorities, key: Any = None) -> x509.Certificate:
    """A certificate the real cluster CA signed two hours ago, valid for one hour."""
    key = key or pki.generate_private_key()
    who = identity("expired-eve", expires=NOW - HOUR)
    return pki.issue_x509_cert(cas.tls, key.public_key(), who, now=NOW - 2 * HOUR)


def tls_context(
    cas: pki.ClusterAuthorities,
    cert: x509.Certificate | None = None,
    key: Any = None,
    *,
    alpn: tuple[str, ...] = (),
) -> ssl.SSLContext:
    """A client context that trusts the cluster CA and presents ``cert`` if given."""
    return pki.client_ssl_context(trusted_cas=[cas.tls.certificate], cert=cert, key=key, alpn=alpn)


def client_as(cas: pki.ClusterAuthorities, who: pki.Identity | None, addr: str) -> httpx.Client:
    cert, key = issue(cas, who) if who is not None else (None, None)
    return httpx.Client(base_url=f"https://{addr}", verify=tls_context(cas, cert, key), timeout=10)


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


def assert_json_error(response: httpx.Response, status: int, message: str) -> dict[str, Any]:
    """A 4xx answer whose JSON body is ``{"error": {"type", "message", "hint"}}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "hint"}, error
    assert message in error["message"], error
    assert "\n" not in error["message"]
    return dict(error)


def assert_serving(cluster: RunningCluster, cas: pki.ClusterAuthorities) -> None:
    """The daemon is alive: the proxy pings and auth answers an admin (``tetherctl status``)."""
    assert cluster.process.poll() is None, cluster.log_text()
    with client_as(cas, None, cluster.proxy_addr) as web:
        ping = web.get("/webapi/ping")
    assert ping.status_code == 200, ping.text
    assert ping.json()["cluster_name"] == CLUSTER
    with client_as(cas, identity("bad-input-admin", kind="admin"), cluster.auth_addr) as auth:
        status = auth.get("/v1/cluster")
    assert status.status_code == 200, status.text
    assert status.json() == {
        "name": CLUSTER,
        "version": tether.__version__,
        "ca_pin": cluster.ca_pin,
        "fingerprints": cas.fingerprints(),
        # the cluster's keep-alive, the defaults: what its proxies name to every tunnel
        "keep_alive_interval": 60.0,
        "keep_alive_count_max": 3,
    }


def tls_refusal(addr: str, context: ssl.SSLContext) -> str:
    """Connect, send a request, and return the TLS error the server answered with.

    With TLS 1.3 the client's handshake completes before the server has judged the client
    certificate, so the verdict (an alert) arrives on the first read.
    """
    host, port = split(addr)
    try:
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(b"GET /v1/cluster HTTP/1.1\r\nHost: auth\r\n\r\n")
            data = tls.recv(65536)
    except ssl.SSLError as exc:
        return str(exc)
    raise AssertionError(f"the server accepted the connection and answered {data[:200]!r}")


def stderr_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing command printed on stderr (no traceback, no usage dump)."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --- tetherd start with a bad configuration --------------------------------------------------


def tetherd_start(config: pathlib.Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.cli.tetherd", *extra, "start", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_config(directory: pathlib.Path, name: str, body: str) -> pathlib.Path:
    path = directory / name
    header = f"cluster_name: {CLUSTER}\ndata_dir: {directory / 'data'}\n"
    path.write_text(header + body)
    return path


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            "auth_service: [unclosed\n  enabled: : true\n",
            r"^ERROR: FILE:4: .*fix the YAML syntax",
            id="garbage-yaml",
        ),
        pytest.param(
            "auth_service:\n  enabled: true\n  listen_adr: 127.0.0.1:0\n",
            r"^ERROR: FILE:5: auth_service\.listen_adr: unknown field "
            r"\(did you mean listen_addr\?\)$",
            id="unknown-field",
        ),
        pytest.param(
            "auth_service:\n  enabled: true\n  listen_addr: '127.0.0.1:http-ish'\n",
            r"^ERROR: FILE:5: auth_service\.listen_addr: .*not host:port",
            id="listen-addr-without-port-number",
        ),
        pytest.param(
            "auth_service:\n  enabled: true\n  listen_addr: 127.0.0.1:99999\n",
            r"^ERROR: FILE:5: auth_service\.listen_addr: .*out of range",
            id="listen-addr-port-out-of-range",
        ),
    ],
)
def test_tetherd_start_refuses_a_bad_config_with_file_line_and_field(
    tmp_path: pathlib.Path, body: str, expected: str
) -> None:
    config = write_config(tmp_path, "tether.yaml", body)
    line = stderr_line(tetherd_start(config))
    assert re.search(expected.replace("FILE", re.escape(str(config))), line), line
    assert not (tmp_path / "data" / "process.json").exists()


def test_tetherd_start_refuses_a_config_that_is_not_text(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "tether.yaml"
    config.write_bytes(b"cluster_name: main\n\xff\xfe\x00garbage\n")
    line = stderr_line(tetherd_start(config))
    assert line.startswith(f"ERROR: {config}: ")
    assert "UTF-8" in line


def test_tetherd_start_with_debug_adds_the_traceback(tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, "tether.yaml", "auth_service:\n  listen_adr: x\n")
    result = tetherd_start(config, "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert f"ERROR: {config}:4: auth_service.listen_adr: unknown field" in result.stderr


def test_tetherd_start_reports_a_listen_addr_in_use_in_one_line(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path,
            "tether.yaml",
            f"auth_service:\n  enabled: true\n  listen_addr: 127.0.0.1:{port}\n"
            "proxy_service:\n  enabled: false\n",
        )
        line = stderr_line(tetherd_start(config))
    assert line.startswith("ERROR: ")
    assert "auth_service.listen_addr" in line
    assert f"127.0.0.1:{port}" in line
    assert "in use" in line


# --- the proxy's port: bytes that are not TLS, peers that vanish or stall --------------------


async def open_raw(addr: str) -> trio.SocketStream:
    host, port = split(addr)
    return await trio.open_tcp_stream(host, port)


async def read_until_closed(stream: trio.abc.ReceiveStream, limit: float = 5.0) -> bytes:
    """What the server sends before it closes the connection (a reset counts as closed)."""
    received = b""
    with trio.fail_after(limit):
        try:
            while chunk := await stream.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:
            pass
    return received


async def aping(addr: str, context: ssl.SSLContext) -> None:
    async with httpx.AsyncClient(base_url=f"https://{addr}", verify=context, timeout=5) as web:
        response = await web.get("/webapi/ping")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GET /webapi/ping HTTP/1.1\r\nHost: proxy\r\n\r\n", id="plain-http"),
        pytest.param(GARBAGE, id="random-bytes"),
        pytest.param(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64, id="lying-tls-record"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="ssh-banner"),
    ],
)
async def test_proxy_closes_a_connection_that_sends_garbage_instead_of_a_client_hello(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, garbage: bytes
) -> None:
    stream = await open_raw(cluster.proxy_addr)
    async with stream:
        await stream.send_all(garbage)
        answer = await read_until_closed(stream)
    # at most a TLS alert record, never a hang or an HTTP answer in the clear
    assert answer == b"" or answer[0] == 0x15, answer[:40]
    await aping(cluster.proxy_addr, tls_context(cas))


async def test_proxy_survives_peers_that_vanish_at_every_step(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    host, port = split(cluster.proxy_addr)
    for _ in range(20):  # connect and vanish before saying anything
        stream = await open_raw(cluster.proxy_addr)
        await stream.aclose()
    for _ in range(5):  # vanish with a reset in the middle of a ClientHello
        sock = trio.socket.socket()
        await sock.connect((host, port))
        await sock.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    context = tls_context(cas, alpn=("http/1.1",))
    for partial in (b"", b"GET /webapi/ping HTTP/1.1\r\nHo", b"POST /webapi/login HTTP/1.1\r\n"):
        # vanish after the handshake: silently, mid-headers
        tls = trio.SSLStream(await open_raw(cluster.proxy_addr), context, server_hostname=host)
        await tls.do_handshake()
        await tls.send_all(partial)
        await trio.aclose_forcefully(tls)
    # vanish mid-body: the request promises 1000 bytes and delivers 10
    tls = trio.SSLStream(await open_raw(cluster.proxy_addr), context, server_hostname=host)
    await tls.send_all(
        b"POST /webapi/login HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"user": "a'
    )
    await trio.aclose_forcefully(tls)
    await aping(cluster.proxy_addr, tls_context(cas))


async def test_auth_survives_peers_that_vanish(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    for garbage in (b"", b"\x16\x03\x01", GARBAGE[:512]):
        stream = await open_raw(cluster.auth_addr)
        if garbage:
            await stream.send_all(garbage)
        await stream.aclose()
    await trio.to_thread.run_sync(assert_serving, cluster, cas)


async def test_proxy_serves_others_while_clients_stall_mid_handshake(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    """The handshake timeout is 10 s; meanwhile everyone else is served at once."""
    stalled = []
    for i in range(30):
        stream = await open_raw(cluster.proxy_addr)
        if i % 3 == 1:  # a TLS record header promising a ClientHello that never comes
            await stream.send_all(b"\x16\x03\x01\x02\x00")
        elif i % 3 == 2:  # half a ClientHello
            await stream.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20)
        stalled.append(stream)
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(aping, cluster.proxy_addr, tls_context(cas))
        await trio.to_thread.run_sync(assert_serving, cluster, cas)
        for stream in stalled:  # nobody answered the stalled clients in the meantime
            with trio.move_on_after(0.01):
                assert await stream.receive_some(1) != b"", "closed before the timeout"
    finally:
        for stream in stalled:
            await trio.aclose_forcefully(stream)


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_DATA_ON_STREAM_0 = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"  # a protocol error
H2_GOAWAY = 0x07


@pytest.mark.parametrize(
    ("alpn", "garbage"),
    [
        pytest.param("http/1.1", b"\x00\x01\x02 this is not HTTP\r\n\r\n", id="http1-binary"),
        pytest.param(
            "http/1.1",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            id="http1-negative-length",
        ),
        pytest.param("h2", GARBAGE[:256], id="h2-bad-preface"),
        pytest.param("h2", H2_PREFACE + H2_EMPTY_SETTINGS + H2_DATA_ON_STREAM_0, id="h2-bad-frame"),
    ],
)
async def test_proxy_answers_malformed_frames_after_the_handshake_and_hangs_up(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, alpn: str, garbage: bytes
) -> None:
    host, _ = split(cluster.proxy_addr)
    context = tls_context(cas, alpn=(alpn,))
    tls = trio.SSLStream(await open_raw(cluster.proxy_addr), context, server_hostname=host)
    async with tls:
        await tls.do_handshake()
        assert tls.selected_alpn_protocol() == alpn
        await tls.send_all(garbage)
        answer = await read_until_closed(tls)
    if alpn == "http/1.1":
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    elif garbage.startswith(H2_PREFACE):
        assert h2_frame_types(answer)[-1] == H2_GOAWAY, answer
    await trio.to_thread.run_sync(assert_serving, cluster, cas)


def h2_frame_types(data: bytes) -> list[int]:
    types = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        types.append(data[3])
        data = data[9 + length :]
    return types


# --- the proxy's web API: bodies that are not what it asked for ------------------------------

LOGIN_FIELDS = {
    "user": "nobody",
    "password": "not the password",
    "ssh_public_key": "ssh-ed25519 AAAA",
    "tls_public_key": "-----BEGIN PUBLIC KEY-----",
}


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/webapi/login", b"{not json", "request body is not valid JSON"),
        ("/webapi/login", b"\xff\xfe\xfa", "request body is not valid JSON"),
        ("/webapi/login", b"", "request body is not valid JSON"),
        ("/webapi/login", b'["user", "password"]', "request body must be a JSON object"),
        ("/webapi/login", b'"alice"', "request body must be a JSON object"),
        ("/webapi/login", b"{}", "request field 'user' must be a non-empty string"),
        (
            "/webapi/login",
            json.dumps({**LOGIN_FIELDS, "password": None}).encode(),
            "request field 'password' must be a non-empty string",
        ),
        (
            "/webapi/login",
            json.dumps({**LOGIN_FIELDS, "user": 42}).encode(),
            "request field 'user' must be a non-empty string",
        ),
        (
            "/webapi/login",
            json.dumps({**LOGIN_FIELDS, "password": ["a", "b"]}).encode(),
            "request field 'password' must be a non-empty string",
        ),
        (
            "/webapi/login",
            json.dumps({**LOGIN_FIELDS, "ttl_seconds": "forever"}).encode(),
            "request field 'ttl_seconds' must be a finite number",
        ),
        (
            "/webapi/login",
            json.dumps({**LOGIN_FIELDS, "ttl_seconds": True}).encode(),
            "request field 'ttl_seconds' must be a finite number",
        ),
        (
            "/webapi/login",
            json.dumps(LOGIN_FIELDS).encode()[:-1] + b', "ttl_seconds": 1e999}',
            "request field 'ttl_seconds' must be a finite number",
        ),
        (
            "/webapi/login",
            json.dumps({**LOGIN_FIELDS, "connector": {"name": "local"}}).encode(),
            "request field 'connector' must be a non-empty string",
        ),
        ("/webapi/signup", b"[]", "request body must be a JSON object"),
        ("/webapi/signup", b'{"token": 7}', "request field 'token' must be a non-empty string"),
        ("/webapi/join", b"[]", "request body must be a JSON object"),
        ("/webapi/join", b'{"token": 7}', "request field 'token' must be a non-empty string"),
        (
            "/webapi/join",
            b'{"token": "t", "addresses": "10.0.0.1"}',
            "request field 'addresses' must be a list of strings",
        ),
    ],
)
def test_webapi_refuses_a_malformed_body_with_a_json_error(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, path: str, body: bytes, message: str
) -> None:
    with client_as(cas, None, cluster.proxy_addr) as web:
        response = web.post(path, content=body, headers={"content-type": "application/json"})
    error = assert_json_error(response, 400, message)
    assert error["type"] == "TetherError"
    assert_serving(cluster, cas)


def test_webapi_answers_unknown_endpoints_and_methods_in_json(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    with client_as(cas, None, cluster.proxy_addr) as web:
        missing = web.get("/webapi/nope")
        wrong_method = web.get("/webapi/login")
    assert_json_error(missing, 404, "no such endpoint: GET /webapi/nope")
    error = assert_json_error(wrong_method, 405, "method GET is not allowed on /webapi/login")
    assert "POST" in error["hint"]
    assert_serving(cluster, cas)


def test_webapi_login_says_the_same_for_unknown_user_and_wrong_password(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    cluster.add_user("wrong-password-walt", PASSWORD)
    key = pki.generate_private_key()
    keys = {
        "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
        "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
    }
    with client_as(cas, None, cluster.proxy_addr) as web:
        unknown = web.post(
            "/webapi/login", json={"user": "no-such-user", "password": PASSWORD, **keys}
        )
        wrong = web.post(
            "/webapi/login", json={"user": "wrong-password-walt", "password": "nope", **keys}
        )
    first = assert_json_error(unknown, 403, "invalid user name or password")
    second = assert_json_error(wrong, 403, "invalid user name or password")
    assert (
        first
        == second
        == {
            "type": "AccessDenied",
            "message": "invalid user name or password",
            "hint": None,
        }
    )
    assert_serving(cluster, cas)


# --- the auth API, called directly: certificates it must refuse ------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/cluster"),
        ("GET", "/v1/resources/role"),
        ("PUT", "/v1/presence"),
        ("PUT", "/v1/tunnels/heartbeats"),
        ("GET", "/v1/trust"),
        ("GET", "/v1/connectors"),
        ("POST", "/v1/sso/begin"),
        ("POST", "/v1/sso/complete"),
        ("POST", "/v1/sso/collect"),
        ("POST", "/v1/audit"),
        ("POST", "/v1/join"),
    ],
)
def test_auth_api_refuses_a_client_without_a_certificate(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, method: str, path: str
) -> None:
    # The TLS handshake itself succeeds without a certificate, because hosts joining with
    # `--auth-server` have none yet; every route but the anonymous join ones refuses.
    with client_as(cas, None, cluster.auth_addr) as auth:
        response = auth.request(method, path, json={})
    error = assert_json_error(response, 403, "a client certificate is required")
    assert error["type"] == "AccessDenied"
    assert_serving(cluster, cas)


def test_auth_api_join_without_a_certificate_still_needs_a_valid_token(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    key = pki.generate_private_key()
    with client_as(cas, None, cluster.auth_addr) as auth:
        response = auth.post(
            "/webapi/join",
            json={
                "token": "not-a-token",
                "role": "node",
                "host_id": "sneaky-node",
                "hostname": "sneaky",
                "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
                "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
            },
        )
    assert_json_error(response, 403, "the token is unknown or expired")
    assert_serving(cluster, cas)


def test_auth_api_refuses_client_certificate_from_a_foreign_ca(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    foreign = pki.ClusterAuthorities.generate(CLUSTER)  # same cluster name, different keys
    cert, key = issue(foreign, identity("impostor", kind="admin"))
    assert "UNKNOWN_CA" in tls_refusal(cluster.auth_addr, tls_context(cas, cert, key))
    assert_serving(cluster, cas)


def test_auth_api_refuses_an_expired_certificate_from_the_cluster_ca(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    key = pki.generate_private_key()
    cert = expired_cert(cas, key)
    assert "CERTIFICATE_EXPIRED" in tls_refusal(cluster.auth_addr, tls_context(cas, cert, key))
    assert "CERTIFICATE_EXPIRED" in tls_refusal(cluster.proxy_addr, tls_context(cas, cert, key))
    assert_serving(cluster, cas)


def test_auth_api_refuses_a_user_certificate_that_forwards_identities(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    admin, _ = issue(cas, identity("root", kind="admin"))
    with client_as(cas, identity("forger-fred"), cluster.auth_addr) as auth:
        response = auth.get("/v1/whoami", headers={FORWARDED: der_b64(admin)})
    error = assert_json_error(response, 403, "user 'forger-fred' may not forward identities")
    assert error["type"] == "AccessDenied"
    assert_serving(cluster, cas)


def test_auth_api_refuses_a_user_certificate_on_proxy_only_endpoints(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    with client_as(cas, identity("direct-dora"), cluster.auth_addr) as auth:
        response = auth.post("/v1/login/password", json={"username": "x", "password": "y"})
    assert_json_error(response, 403, "only the cluster's proxies may call this endpoint")
    assert_serving(cluster, cas)


@pytest.mark.parametrize("kind", ["user", "node", "admin"])
def test_auth_api_keeps_tunnel_heartbeats_to_proxies(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, kind: str
) -> None:
    with client_as(cas, identity(f"not-a-proxy-{kind}", kind=kind), cluster.auth_addr) as auth:
        response = auth.put("/v1/tunnels/heartbeats", json={"heartbeats": []})
    assert_json_error(response, 403, "only the cluster's proxies may")
    assert_serving(cluster, cas)


@pytest.mark.parametrize("kind", ["user", "admin"])
def test_auth_api_keeps_the_trust_to_the_clusters_hosts(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, kind: str
) -> None:
    # nodes read it too (tests/test_trust_watch.py); people never
    with client_as(cas, identity(f"not-a-host-{kind}", kind=kind), cluster.auth_addr) as auth:
        response = auth.get("/v1/trust", params={"wait": "5"})
    assert_json_error(response, 403, f"only the hosts of cluster {CLUSTER!r}")
    assert_serving(cluster, cas)


@pytest.mark.parametrize("path", ["/v1/sso/begin", "/v1/sso/complete", "/v1/sso/collect"])
def test_auth_api_keeps_single_sign_on_steps_to_proxies(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, path: str
) -> None:
    with client_as(cas, identity("direct-dora"), cluster.auth_addr) as auth:
        response = auth.post(path, json={})
    assert_json_error(response, 403, "only the cluster's proxies may call this endpoint")
    assert_serving(cluster, cas)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/webapi/sso/callback", None, 403, "unknown, expired or already used"),
        ("GET", "/webapi/sso/callback?state=forged", None, 403, "unknown, expired or already"),
        ("POST", "/webapi/sso/callback", b"state=%00%ff&code=x", 403, "unknown, expired"),
        ("POST", "/webapi/sso/login", b'{"connector": "okta"}', 400, "'client_redirect_url'"),
        ("POST", "/webapi/sso/collect", b'{"request_id": "x"}', 400, "'client_secret'"),
        (
            "POST",
            "/webapi/sso/collect",
            b'{"request_id": "x", "client_secret": "y"}',
            403,
            "no login result is waiting",
        ),
    ],
)
def test_proxy_refuses_single_sign_on_steps_that_make_no_sense(
    cluster: RunningCluster,
    cas: pki.ClusterAuthorities,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    message: str,
) -> None:
    with client_as(cas, None, cluster.proxy_addr) as web:
        response = web.request(method, path, content=body)
    assert response.status_code == status, response.text
    assert message in response.text
    assert_serving(cluster, cas)


def test_auth_api_tells_a_proxy_when_the_trust_is_unchanged(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    with client_as(cas, identity("proxy-paul", kind="proxy"), cluster.auth_addr) as auth:
        full = auth.get("/v1/trust").json()
        again = auth.get("/v1/trust", params={"known": full["revision"]}).json()
        stale = auth.get("/v1/trust", params={"known": "0000-0"}).json()
    assert full["cluster_name"] == CLUSTER and len(full["own_cas"]) == 1
    assert again == {"revision": full["revision"], "unchanged": True}
    assert stale == full
    assert_serving(cluster, cas)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "'heartbeats' must be a list of objects"),
        ({"heartbeats": [1]}, "'heartbeats' must be a list of objects"),
        ({"heartbeats": [{"cluster": "leaf"}]}, "heartbeat 0 is malformed"),
        (
            {
                "heartbeats": [
                    {"cluster": "../x", "agent": "a", "last_heartbeat": 1.0, "status": {}}
                ]
            },
            "heartbeat 0 is malformed",
        ),
        (
            {
                "heartbeats": [
                    {"cluster": "leaf", "agent": "a/b", "last_heartbeat": 1.0, "status": {}}
                ]
            },
            "heartbeat 0 is malformed",
        ),
        (
            {
                "heartbeats": [
                    {"cluster": "leaf", "agent": "a", "last_heartbeat": "now", "status": {}}
                ]
            },
            "heartbeat 0 is malformed",
        ),
    ],
)
def test_auth_api_refuses_malformed_tunnel_heartbeats_from_a_proxy(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, body: dict[str, Any], message: str
) -> None:
    with client_as(cas, identity("proxy-paul", kind="proxy"), cluster.auth_addr) as auth:
        response = auth.put("/v1/tunnels/heartbeats", json=body)
    assert_json_error(response, 400, message)
    assert_serving(cluster, cas)


@pytest.mark.parametrize(
    ("forwarded", "status", "message"),
    [
        ("!!! not base64 !!!", 403, "malformed forwarded certificate"),
        (base64.b64encode(b"hello, I am a certificate").decode(), 401, "not a valid X.509"),
        ("", 401, "not a valid X.509"),
    ],
)
def test_auth_api_explains_a_garbage_forwarded_certificate(
    cluster: RunningCluster,
    cas: pki.ClusterAuthorities,
    forwarded: str,
    status: int,
    message: str,
) -> None:
    with client_as(cas, identity("proxy-paul", kind="proxy"), cluster.auth_addr) as auth:
        response = auth.get("/v1/whoami", headers={FORWARDED: forwarded})
    assert_json_error(response, status, message)
    assert_serving(cluster, cas)


def test_auth_api_refuses_an_expired_forwarded_certificate(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    with client_as(cas, identity("proxy-paul", kind="proxy"), cluster.auth_addr) as auth:
        response = auth.get("/v1/whoami", headers={FORWARDED: der_b64(expired_cert(cas))})
    error = assert_json_error(response, 401, "certificate of expired-eve@main expired at")
    assert error["type"] == "TrustError"
    assert error["hint"] == "run `tether login` again"
    assert_serving(cluster, cas)


def test_auth_api_refuses_a_forwarded_certificate_from_a_foreign_ca(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    foreign, _ = issue(pki.ClusterAuthorities.generate(CLUSTER), identity("root", kind="admin"))
    with client_as(cas, identity("proxy-paul", kind="proxy"), cluster.auth_addr) as auth:
        response = auth.get("/v1/whoami", headers={FORWARDED: der_b64(foreign)})
    assert_json_error(response, 401, "signed by a CA this cluster does not trust")
    assert_serving(cluster, cas)


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("POST", "/v1/users", {"name": "u1", "roles": "access"}, "'roles' must be a list"),
        ("POST", "/v1/users", {"name": "u2", "roles": ["access"], "traits": "x"}, "'traits'"),
        ("POST", "/v1/users", {"name": "u3", "roles": ["access"], "password": 5}, "'password'"),
        ("PUT", "/v1/users/nobody", {"traits": {"logins": "root"}}, "lists of strings"),
        ("POST", "/v1/tokens", {"type": "node", "ttl_seconds": "1h"}, "'ttl_seconds'"),
        ("POST", "/v1/tokens", {"type": "node", "ttl_seconds": 60, "labels": [1]}, "'labels'"),
        ("POST", "/v1/resources", {"resources": "role/x"}, "'resources' must be a list"),
        ("POST", "/v1/resources", {"resources": [42]}, "request document 1"),
        ("GET", "/v1/audit?limit=lots", None, "bad audit query"),
        ("GET", "/v1/resources/no-such-kind", None, "no-such-kind"),
    ],
)
def test_auth_api_refuses_wrongly_typed_admin_requests(
    cluster: RunningCluster,
    cas: pki.ClusterAuthorities,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    message: str,
) -> None:
    with client_as(cas, identity("bad-input-admin", kind="admin"), cluster.auth_addr) as auth:
        response = auth.request(method, path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert_json_error(response, response.status_code, message)
    assert_serving(cluster, cas)


# --- through the proxy: who may reach auth ---------------------------------------------------


def test_proxy_requires_a_client_certificate_for_the_auth_api(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    with client_as(cas, None, cluster.proxy_addr) as web:
        response = web.get("/v1/cluster")
    error = assert_json_error(response, 403, "a client certificate is required")
    assert error["hint"] == "run `tether login` first"
    assert_serving(cluster, cas)


def test_proxy_refuses_a_client_certificate_from_a_foreign_ca(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    cert, key = issue(pki.ClusterAuthorities.generate(CLUSTER), identity("root", kind="admin"))
    assert "UNKNOWN_CA" in tls_refusal(cluster.proxy_addr, tls_context(cas, cert, key))
    assert_serving(cluster, cas)


def test_tetherctl_create_as_a_user_without_editor_is_denied_naming_the_rule(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, tmp_path: pathlib.Path
) -> None:
    cluster.add_user("access-only-ann", PASSWORD, roles=["access"])
    cluster.login("access-only-ann", PASSWORD)
    role = tmp_path / "role.yaml"
    role.write_text(ROLE_YAML.format(name="ann-was-here", login="root"))
    result = cluster.as_user("access-only-ann", "tetherctl", "create", str(role), check=False)
    line = stderr_line(result)
    assert line == "ERROR: role rules do not allow create on role (roles held: access)"
    admin_view = cluster.tetherctl("get", "role/ann-was-here", check=False)
    assert "not found" in stderr_line(admin_view)
    assert_serving(cluster, cas)


def test_tetherctl_with_an_expired_login_says_it_expired(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    cluster.add_user("expired-ed", PASSWORD, roles=["editor"])
    cluster.login("expired-ed", PASSWORD)
    profile = current_profile(cluster.user_home("expired-ed"))
    assert profile is not None
    key = pki.load_private_key(profile.tls_key_file.read_bytes())
    pki.write_secret_file(profile.tls_cert_file, pki.cert_to_pem(expired_cert(cas, key)))
    result = cluster.as_user("expired-ed", "tetherctl", "get", "role", check=False)
    line = stderr_line(result)
    assert "expired" in line
    assert "tether login" in line
    assert_serving(cluster, cas)


# --- tokens ----------------------------------------------------------------------------------


def signup(cluster: RunningCluster, token: str) -> subprocess.CompletedProcess[str]:
    return cluster.tether(
        "newcomer",
        "signup",
        f"--proxy={cluster.proxy_addr}",
        f"--token={token}",
        "--password-stdin",
        f"--ca-pin={cluster.ca_pin}",
        input=PASSWORD + "\n",
        check=False,
    )


def test_signup_with_a_wrong_or_used_token_is_refused(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    expected = "ERROR: sign-up token is invalid or expired (ask an admin for a new one)"
    assert stderr_line(signup(cluster, "0123456789abcdef0123456789abcdef")) == expected
    added = cluster.tetherctl("users", "add", "once-only-olga", "--roles=access")
    token = re.search(r"--token=(\S+)", added.stdout)
    assert token, added.stdout
    assert signup(cluster, token.group(1)).returncode == 0
    assert stderr_line(signup(cluster, token.group(1))) == expected
    assert_serving(cluster, cas)


def test_signup_token_cannot_be_used_as_a_join_token_or_the_reverse(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    node = json.loads(cluster.tetherctl("tokens", "add", "--type=node", "--format=json").stdout)
    line = stderr_line(signup(cluster, node["token"]))
    assert line == "ERROR: sign-up token is invalid or expired (ask an admin for a new one)"
    assert_serving(cluster, cas)


def test_tetherctl_tokens_add_lists_the_valid_types_for_a_nonsense_type(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    line = stderr_line(cluster.tetherctl("tokens", "add", "--type=nonsense", check=False))
    # the kernel's types and those of the plugins installed here (tether-db's db), sorted
    registered = sorted(token_types(get_plugin_manager()))
    assert {"node", "proxy", "trusted_cluster"} <= set(registered)
    assert line == f"ERROR: unknown token type 'nonsense' (use one of: {', '.join(registered)})"
    assert_serving(cluster, cas)


@pytest.mark.parametrize(
    ("ttl", "message"),
    [("abc", "'abc' is not a duration"), ("0s", "token TTL must be positive")],
)
def test_tetherctl_tokens_add_refuses_a_bad_ttl(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, ttl: str, message: str
) -> None:
    result = cluster.tetherctl("tokens", "add", "--type=node", f"--ttl={ttl}", check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert "--ttl" in result.stderr
    assert_serving(cluster, cas)


# --- tetherctl create: broken files change nothing -------------------------------------------


def role_exists(cluster: RunningCluster, name: str) -> bool:
    result = cluster.tetherctl("get", f"role/{name}", check=False)
    if result.returncode == 0:
        return True
    assert f"role {name!r} not found" in stderr_line(result)
    return False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "kind: role\nmetadata: [oops\n  name: x\n", r"^ERROR: bad\.yaml:3: ", id="yaml"
        ),
        pytest.param(
            "kind: rolle\nversion: v5\nmetadata:\n  name: x\nspec: {}\n",
            r"^ERROR: bad\.yaml:1: .*did you mean role\?",
            id="unknown-kind",
        ),
        pytest.param("just a string\n", r"^ERROR: bad\.yaml:1: ", id="not-a-mapping"),
        pytest.param("", r"^ERROR: bad\.yaml: no resources found$", id="empty"),
    ],
)
def test_tetherctl_create_refuses_a_broken_file_naming_the_line(
    cluster: RunningCluster,
    cas: pki.ClusterAuthorities,
    tmp_path: pathlib.Path,
    text: str,
    expected: str,
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line = stderr_line(cluster.tetherctl("create", str(path), check=False))
    assert re.search(expected, line), line
    assert_serving(cluster, cas)


def test_tetherctl_create_writes_nothing_when_the_second_document_is_invalid(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(
        ROLE_YAML.format(name="first-of-two", login="ubuntu")
        + "---\n"
        + ROLE_YAML.format(name="second-of-two", login="ubuntu").replace("allow:", "alow:")
    )
    line = stderr_line(cluster.tetherctl("create", str(path), check=False))
    assert re.search(r"^ERROR: two\.yaml:\d+: .*alow.*did you mean allow\?", line), line
    assert not role_exists(cluster, "first-of-two")
    assert not role_exists(cluster, "second-of-two")
    assert_serving(cluster, cas)


def test_tetherctl_create_is_all_or_nothing_when_a_later_resource_exists(
    cluster: RunningCluster, cas: pki.ClusterAuthorities, tmp_path: pathlib.Path
) -> None:
    existing = tmp_path / "existing.yaml"
    existing.write_text(ROLE_YAML.format(name="already-here", login="ubuntu"))
    cluster.tetherctl("create", str(existing))
    both = tmp_path / "both.yaml"
    both.write_text(
        ROLE_YAML.format(name="brand-new", login="ubuntu")
        + "---\n"
        + ROLE_YAML.format(name="already-here", login="root")
    )
    line = stderr_line(cluster.tetherctl("create", str(both), check=False))
    assert line == (
        "ERROR: role 'already-here' already exists (use `tetherctl create -f` to overwrite it)"
    )
    assert not role_exists(cluster, "brand-new")
    kept = cluster.tetherctl("get", "role/already-here", "--format=json").stdout
    assert json.loads(kept)[0]["spec"]["allow"]["logins"] == ["ubuntu"]

    forced = cluster.tetherctl("create", "-f", str(both))
    assert forced.stdout.splitlines() == [
        'role "brand-new" has been created',
        'role "already-here" has been updated',
    ]
    replaced = cluster.tetherctl("get", "role/already-here", "--format=json").stdout
    assert json.loads(replaced)[0]["spec"]["allow"]["logins"] == ["root"]
    assert_serving(cluster, cas)


# --- tether login: trusting the proxy --------------------------------------------------------


def login(cluster: RunningCluster, *trust: str) -> subprocess.CompletedProcess[str]:
    return cluster.tether(
        "trusting-tina",
        "login",
        f"--proxy={cluster.proxy_addr}",
        "--user=trusting-tina",
        "--password-stdin",
        *trust,
        input=PASSWORD + "\n",
        check=False,
    )


def test_tether_login_with_a_wrong_ca_pin_says_the_pin_does_not_match(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    wrong = "sha256:" + "0" * 64
    line = stderr_line(login(cluster, f"--ca-pin={wrong}"))
    assert f"does not present the pinned CA {wrong}" in line
    assert f"it has {cluster.ca_pin}" in line
    assert_serving(cluster, cas)


def test_tether_login_without_a_pin_says_the_proxy_is_not_trusted_and_what_to_do(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    line = stderr_line(login(cluster))
    assert "does not trust" in line
    assert "--ca-pin" in line
    assert "--insecure" in line
    assert_serving(cluster, cas)


# --- beside all of it ------------------------------------------------------------------------


def test_daemon_is_still_healthy_after_all_the_abuse(
    cluster: RunningCluster, cas: pki.ClusterAuthorities
) -> None:
    # whatever ran before; the cluster fixture checks its log once every test has run
    assert_serving(cluster, cas)
    status = cluster.tetherctl("status")
    assert f"CA pin   {cluster.ca_pin}" in status.stdout
    assert run_cli("tether", "version").returncode == 0
