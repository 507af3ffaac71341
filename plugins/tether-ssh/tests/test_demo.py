"""``tetherd demo`` with the SSH plugin installed: the printed commands reach a node."""

from __future__ import annotations

import getpass
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import time

from tether.testing.cluster import run_cli


def _read_until(process: subprocess.Popen[bytes], marker: str, timeout: float = 60) -> str:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in data:
        assert time.monotonic() < deadline, f"the demo printed no {marker!r}:\n{data!r}"
        assert process.poll() is None, f"the demo exited {process.returncode}:\n{data!r}"
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            data += os.read(fd, 65536)
    return data.decode()


def test_newcomer_runs_the_demo_and_reaches_its_node_with_the_printed_commands(
    tmp_path: pathlib.Path,
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tether.cli.tetherd", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        printed = _read_until(process, "tether logout")
        login_line = next(line for line in printed.splitlines() if "tether login" in line)
        password = re.search(r"echo (\S+) \|", login_line)
        assert password is not None, printed
        args = login_line.split("| tether ", 1)[1].split()
        env = {"TETHER_HOME": str(tmp_path / "home")}
        run_cli("tether", *args, env=env, input=password.group(1) + "\n")
        listed = run_cli("tether", "ls", env=env).stdout
        assert re.search(r"^localhost\s+127\.0\.0\.1:\d+\s+env=demo$", listed, re.M), listed
        me = getpass.getuser()
        assert f"tether ssh {me}@localhost" in printed
        ran = run_cli("tether", "ssh", f"{me}@localhost", "whoami", env=env)
        assert ran.stdout == f"{me}\n"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rest, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, rest
    assert b"Demo stopped." in rest
    assert not os.path.exists(printed.split("config     ")[1].split()[0])
