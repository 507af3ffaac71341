"""An operator runs tetherd under systemd: ``tetherd install systemd`` prints the unit, and
``contrib/systemd/`` ships the same units (docs/operating.md, "Running tetherd under systemd").

systemd itself is not running here, so the unit is checked by ``systemd-analyze verify`` and
its ``ExecStart`` line is run as systemd would run it, then stopped with the SIGTERM that
``systemctl stop`` sends.
"""

from __future__ import annotations

import configparser
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tether.datadir import PROCESS_FILE
from tether.testing.cluster import run_cli, stop_process, write_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib" / "systemd"
TETHERD = str(pathlib.Path(sys.executable).parent / "tetherd")
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"
)


def _service(unit: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit)
    return dict(parser["Service"])


def test_contrib_units_are_what_install_systemd_prints() -> None:
    single = run_cli("tetherd", "install", "systemd", "--tetherd-path=/usr/local/bin/tetherd")
    template = run_cli(
        "tetherd",
        "install",
        "systemd",
        "--config=/etc/tether/%i.yaml",
        "--tetherd-path=/usr/local/bin/tetherd",
    )

    assert single.stdout == (CONTRIB / "tetherd.service").read_text()
    assert template.stdout == (CONTRIB / "tetherd@.service").read_text()
    assert _service(single.stdout)["ExecStart"] == (
        "/usr/local/bin/tetherd start --config=/etc/tether.yaml"
    )


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("config", "unit_name"),
    [("/etc/tether.yaml", "tetherd.service"), ("/etc/tether/%i.yaml", "tetherd@leaf.service")],
)
def test_systemd_accepts_the_printed_unit(
    tmp_path: pathlib.Path, config: str, unit_name: str
) -> None:
    unit = tmp_path / unit_name
    unit.write_text(run_cli("tetherd", "install", "systemd", f"--config={config}").stdout)

    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )

    assert verified.returncode == 0, verified.stderr
    assert unit_name not in verified.stderr, verified.stderr


def test_printed_unit_starts_tetherd_and_systemctl_stop_stops_it_cleanly(
    tmp_path: pathlib.Path,
) -> None:
    config = write_config(tmp_path, "main")
    unit = run_cli("tetherd", "install", "systemd", "-c", str(config)).stdout
    service = _service(unit)
    assert service["ExecStart"].startswith(f"{TETHERD} start --config={config}")
    assert service["EnvironmentFile"] == "-/etc/default/tetherd"

    process = subprocess.Popen(
        shlex.split(service["ExecStart"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd="/",  # systemd starts services in /
        env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"},
    )
    try:
        process_file = tmp_path / "data" / PROCESS_FILE
        deadline = time.monotonic() + 60
        while not process_file.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "tetherd did not start"
            time.sleep(0.1)
        assert json.loads(process_file.read_text())["pid"] == process.pid
    finally:
        status = stop_process(process, signal.SIGTERM)

    assert status == 0  # Restart=on-failure leaves a daemon stopped by systemctl stopped


def test_install_systemd_writes_the_unit_and_says_how_to_start_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tetherd.service"

    wrote = run_cli("tetherd", "install", "systemd", f"--output={path}", "--fd-limit=65536")

    assert wrote.stdout == (
        f"Wrote {path}; start it with:\nsystemctl daemon-reload && systemctl enable --now tetherd\n"
    )
    assert _service(path.read_text())["LimitNOFILE"] == "65536"


def test_install_systemd_refuses_a_configuration_tetherd_would_refuse(
    tmp_path: pathlib.Path,
) -> None:
    config = tmp_path / "tether.yaml"
    config.write_text("log:\n  severity: LOUD\n")

    refused = run_cli("tetherd", "install", "systemd", "-c", str(config), check=False)

    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith(f"ERROR: {config}:2: log.severity: 'LOUD' is not one of")
    assert len(refused.stderr.splitlines()) == 1
