"""Scenarios: an operator starts ``tetherd`` with the ``teleport: log:`` section of the
``teleport.yaml`` they already have."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
from typing import Any

import pytest

from tether.testing.cluster import RunningCluster, wait_for


def test_teleport_log_section_sets_tethers_log(tether_cluster_factory: Any) -> None:
    cluster: RunningCluster = tether_cluster_factory(
        "main",
        config={
            "log": None,
            "teleport": {
                "log": {"output": "stderr", "severity": "DEBUG", "format": {"output": "json"}}
            },
        },
    )

    # a connection that ends before its TLS handshake is one of Tether's own DEBUG lines
    host, port = cluster.proxy_addr.rsplit(":", 1)
    socket.create_connection((host, int(port))).close()

    def lines() -> list[Any]:
        return [json.loads(line) for line in cluster.log_path.read_text().splitlines() if line]

    wait_for(lambda: any("DEBUG" in json.dumps(line) for line in lines()), "a DEBUG line")
    assert lines()


def _start(tmp_path: pathlib.Path, body: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "tether.yaml"
    config.write_text(f"cluster_name: main\ndata_dir: {tmp_path / 'data'}\n" + body)
    return subprocess.run(
        [sys.executable, "-m", "tether.cli.tetherd", "start", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            "teleport:\n  log:\n    output: /var/lib/teleport/teleport.log\n",
            "tether.yaml:5: teleport.log.output: Tether logs to standard error only, "
            "got '/var/lib/teleport/teleport.log' (remove it; your service manager",
            id="log-to-a-file",
        ),
        pytest.param(
            "teleport:\n  nodename: node-1\n",
            "tether.yaml:4: teleport.nodename: not a Tether setting; only teleport.log is read, "
            "as log: (Tether's settings are top-level keys; logging is the log: key",
            id="other-teleport-settings",
        ),
        pytest.param(
            "log:\n  severity: INFO\nteleport:\n  log:\n    severity: DEBUG\n",
            "tether.yaml:6: teleport.log: log is also set; set it once (keep the log: key)",
            id="both-log-keys",
        ),
    ],
)
def test_teleport_section_tether_cannot_honour_is_refused_pointing_at_log(
    tmp_path: pathlib.Path, body: str, expected: str
) -> None:
    result = _start(tmp_path, body)

    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert expected in result.stderr, result.stderr
    assert not (tmp_path / "data" / "process.json").exists()
