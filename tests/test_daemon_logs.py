"""What the daemon logs while a cluster runs: Tether's own events, not its libraries' chatter.

Real ``tetherd`` processes on 127.0.0.1 at ``log.severity: INFO``, as an operator runs them: a
cluster (auth + proxy) and nodes joined through its proxy. Before libraries were held to
WARNING, an idle root, leaf and two nodes wrote 299 lines in three minutes, every one an
``httpx`` request line; now an idle cluster writes none (docs/operating.md, "Logs").
"""

from __future__ import annotations

import json
import pathlib
import re
import socket
import ssl
from collections.abc import Iterator

import pytest

from tether.config import HostPort
from tether.testing.cluster import (
    RunningCluster,
    run_cli,
    start_cluster,
    start_node,
    wait_for,
)

INFO = {"log": {"severity": "INFO", "format": "text"}}
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?P<level>[A-Z]+) \[(?P<logger>[\w.]+)\] ")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    # a short keep-alive: a tunnel node renews its entry through its tunnel every 2 s, not
    # every minute (the default), which the test waits for
    keep_alive = {"auth_service": {"keep_alive_interval": "2s", "keep_alive_count_max": 3}}
    running = start_cluster(tmp_path_factory.mktemp("quiet"), "main", config={**INFO, **keep_alive})
    try:
        yield running
    finally:
        running.stop()


def _expiries(cluster: RunningCluster, kind: str) -> dict[str, str]:
    """The expiry of each entry of an inventory ``kind``, by host name (a proxy's, its id)."""
    docs = json.loads(cluster.tetherctl("get", kind, "--format=json").stdout)
    return {
        d["spec"].get("hostname", d["metadata"]["name"]): d["metadata"]["expires"] for d in docs
    }


def _wait_for_a_heartbeat(cluster: RunningCluster, node: str) -> None:
    """Wait until ``node`` has renewed its inventory entry once after joining (an HTTP request
    to auth, which httpx used to log a line for), and so have the cluster's proxies."""
    first_node = _expiries(cluster, "node").get(node)
    first_proxies = _expiries(cluster, "proxy")
    wait_for(lambda: _expiries(cluster, "node").get(node) != first_node, "a node heartbeat")
    wait_for(
        lambda: all(_expiries(cluster, "proxy").get(p) != e for p, e in first_proxies.items()),
        "a proxy heartbeat",
    )


def _loggers(text: str) -> set[str]:
    return {m["logger"] for m in map(TEXT_LINE.match, text.splitlines()) if m}


def test_running_cluster_logs_tethers_events_and_no_library_request_lines(
    cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    node = start_node(cluster, tmp_path / "node", "web-1", config=INFO)
    try:
        _wait_for_a_heartbeat(cluster, node.name)
        cluster_log, node_log = cluster.log_text(), node.log_text()
    finally:
        node.stop()

    for log in (cluster_log, node_log):
        assert all(TEXT_LINE.match(line) for line in log.splitlines()), log
        assert {name.partition(".")[0] for name in _loggers(log)} <= {"tether", "tether_ssh"}, log
    assert "auth service listening on" in cluster_log
    assert "node web-1 (" in node_log and "is up in tunnel mode" in node_log


def test_operator_asks_for_json_logs_on_the_command_line(
    cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    # joining is already a round of HTTP requests to the proxy and auth
    node = start_node(
        cluster, tmp_path / "node", "web-2", config=INFO, extra_args=["--log-format=json"]
    )
    lines = node.log_text().splitlines()
    node.stop()

    records = [json.loads(line) for line in lines]
    assert {r["level"] for r in records} <= {"INFO", "WARNING", "ERROR"}
    assert all(r["logger"].partition(".")[0] in ("tether", "tether_ssh") for r in records)
    assert any(r["message"].startswith("node web-2 (") for r in records)


def test_debug_flag_brings_back_the_libraries_lines(
    cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    node = start_node(cluster, tmp_path / "node", "web-3", config=INFO, extra_args=["--debug"])
    loggers = _loggers(node.log_text())
    node.stop()

    assert {"httpx", "httpcore.connection"} <= loggers, loggers


def _connect(cluster: RunningCluster) -> socket.socket:
    addr = HostPort.parse(cluster.proxy_addr)
    return socket.create_connection((addr.connect_host, addr.port), timeout=10)


def _unverified() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def test_health_checks_and_scanners_on_the_proxy_port_leave_no_log_lines(
    cluster: RunningCluster,
) -> None:
    before = len(cluster.log_text())
    for _ in range(3):  # a load balancer's TCP check: connect, close
        _connect(cluster).close()
    with _connect(cluster) as plain:  # a scanner speaking HTTP to the TLS port
        plain.sendall(b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
        plain.recv(1024)
    # then a refusal an operator may act on, logged at INFO once the probes are done
    with _unverified().wrap_socket(_connect(cluster)) as web:
        web.sendall(
            b"POST /webapi/sso/collect HTTP/1.1\r\nHost: proxy\r\n"
            b"Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n"
        )
        assert web.recv(1024).startswith(b"HTTP/1.1 413")

    wait_for(lambda: "refused POST /webapi/sso/collect" in cluster.log_text(), "the refusal")
    [line] = cluster.log_text()[before:].splitlines()
    assert "INFO [tether.asgi] refused POST /webapi/sso/collect from 127.0.0.1" in line


def test_unknown_log_format_is_a_usage_error_naming_the_choices() -> None:
    started = run_cli("tetherd", "start", "--log-format=xml", check=False)

    assert started.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in started.stderr
