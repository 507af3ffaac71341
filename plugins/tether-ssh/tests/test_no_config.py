"""``tetherd start`` with no configuration file runs auth, proxy and this host as a node, as
``teleport start`` does with none, and the node is reachable with ``tether ssh``.

Without a file the daemon listens on its fixed default ports (3025, 3080 and 3022), so it and
every command of the test run in a network namespace of their own, where those ports are free
whatever else runs on this machine (``unshare``, ``nsenter`` and ``ip``, as root).
"""

from __future__ import annotations

import getpass
import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import pytest

from tether.testing.cluster import stop_process, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip")),
    reason="runs tetherd in a network namespace of its own (needs root, unshare, nsenter, ip)",
)

PASSWORD = "correct horse battery staple"


@attrs.frozen
class Solo:
    """A ``tetherd start`` with no file, in its own network namespace."""

    process: subprocess.Popen[bytes]
    directory: pathlib.Path

    @property
    def data_dir(self) -> pathlib.Path:
        return self.directory / "data"

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = json.loads((self.data_dir / "process.json").read_text())
        return info

    def run(
        self, program: str, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``tetherctl`` or ``tether`` inside the daemon's network namespace."""
        env: Mapping[str, str] = {**os.environ, "TETHER_HOME": str(self.directory / "home")}
        done = subprocess.run(
            [
                "nsenter",
                f"--net=/proc/{self.process.pid}/ns/net",
                sys.executable,
                "-m",
                f"tether.cli.{program}",
                *args,
            ],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"{program} {' '.join(args)}: {done.stderr}"
        return done

    def tetherctl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """As the local admin: ``-c`` a file that names only the daemon's data directory."""
        admin = self.directory / "admin.yaml"
        admin.write_text(f"data_dir: {self.data_dir}\n")
        return self.run("tetherctl", "-c", str(admin), *args, **kwargs)


def _started(solo: Solo) -> bool:
    try:
        return solo.info().get("pid") == solo.process.pid
    except (FileNotFoundError, ValueError):
        return False


@pytest.fixture
def solo(tmp_path: pathlib.Path) -> Iterator[Solo]:
    log = tmp_path / "tetherd.log"
    start = [sys.executable, "-m", "tether.cli.tetherd", "start"]
    start += [f"--data-dir={tmp_path / 'data'}", "--nodename=solo"]
    with log.open("wb") as out:
        # unshare and sh exec in turn, so the daemon keeps the pid that names the namespace
        process = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "tetherd", *start],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started = Solo(process, tmp_path)
    try:
        wait_for(lambda: process.poll() is not None or _started(started), "tetherd to start", 60)
        assert process.poll() is None, log.read_text()
        yield started
    finally:
        stop_process(process)


def test_newcomer_starts_tetherd_without_a_config_and_reaches_this_host_over_ssh(
    solo: Solo,
) -> None:
    info = solo.info()
    assert info["auth_addr"] == "127.0.0.1:3025"
    assert info["proxy_addr"].endswith(":3080")

    def nodes() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(
            solo.tetherctl("get", "nodes", "--format=json").stdout
        )
        return found

    wait_for(lambda: nodes() != [], "the node's first heartbeat")
    (node,) = nodes()
    assert node["spec"]["hostname"] == "solo"
    assert node["spec"]["addr"] == "127.0.0.1:3022"

    me = getpass.getuser()
    solo.tetherctl(
        "users", "add", me, "--roles=access", f"--logins={me}", "--password-stdin",
        input=PASSWORD + "\n",
    )  # fmt: skip
    solo.run(
        "tether", "login", "--proxy=127.0.0.1:3080", f"--user={me}", "--password-stdin",
        f"--ca-pin={info['ca_pin']}", input=PASSWORD + "\n",
    )  # fmt: skip
    session = solo.run("tether", "ssh", f"{me}@solo", "echo", "hello from solo")
    assert session.stdout == "hello from solo\n"
