"""What the daemon logs while a cluster runs: Tether's own events, not its libraries' chatter.

Real ``tetherd`` processes on 127.0.0.1 at ``log.severity: INFO``, as an operator runs them: a
cluster (auth + proxy) and nodes joined through its proxy. Before libraries were held to
WARNING, an idle root, leaf and two nodes wrote 299 lines in three minutes, every one an
``httpx`` request line; now an idle cluster writes none.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator

import pytest

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
    running = start_cluster(tmp_path_factory.mktemp("quiet"), "main", config=INFO)
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


def test_unknown_log_format_is_a_usage_error_naming_the_choices() -> None:
    started = run_cli("tetherd", "start", "--log-format=xml", check=False)

    assert started.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in started.stderr
