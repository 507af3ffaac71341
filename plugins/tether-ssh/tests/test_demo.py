"""``tetherd demo`` with the SSH plugin installed: the guide's root and leaf on localhost, and the
printed commands reach the leaf's node through the trust."""

from __future__ import annotations

import getpass
import json
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from tether.testing.cluster import run_cli


def _as_from_a_terminal() -> None:
    """In the demo's process: Ctrl-C's default action. A test run started as a background job
    ignores SIGINT, and ignored signals outlive exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_demo(*options: str) -> subprocess.Popen[bytes]:
    """``tetherd [options] demo``, as a person starts it in a terminal."""
    return subprocess.Popen(
        [sys.executable, "-m", "tether.cli.tetherd", *options, "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_as_from_a_terminal,
    )


def _stop_demo(process: subprocess.Popen[bytes], sig: int) -> str:
    """Send ``sig`` and return what the demo printed until it exited (killed after 30 s)."""
    process.send_signal(sig)
    try:
        rest, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return rest.decode()


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


def _printed_line(printed: str, text: str) -> str:
    found = [line.strip() for line in printed.splitlines() if text in line]
    assert found, f"the demo printed no line with {text!r}:\n{printed}"
    return found[0]


def test_newcomer_runs_the_demo_and_reaches_the_leaf_node_through_the_root(
    tmp_path: pathlib.Path,
) -> None:
    process = _start_demo()
    try:
        printed = _read_until(process, "get trusted_cluster/root")
        login_line = _printed_line(printed, "tether login")
        password = re.search(r"^echo (\S+) \| tether ", login_line)
        assert password is not None, printed
        env = {"TETHER_HOME": str(tmp_path / "home")}
        run_cli("tether", *login_line.split()[4:], env=env, input=password.group(1) + "\n")

        me = getpass.getuser()
        ssh_line = _printed_line(printed, "tether ssh")
        assert ssh_line == f"tether ssh --cluster=leaf {me}@leaf-node 'whoami'"
        # the leaf's node learns the root's user CA on its next refresh (every 3 s), which a
        # person typing the commands never notices; a test this fast retries for a while
        deadline = time.monotonic() + 15
        while True:
            ran = run_cli(
                "tether",
                "ssh",
                "--cluster=leaf",
                f"{me}@leaf-node",
                "whoami",
                env=env,
                check=False,
            )
            if ran.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert (ran.returncode, ran.stdout) == (0, f"{me}\n"), ran.stderr
        listed = run_cli("tether", *_printed_line(printed, "tether ls").split()[1:], env=env)
        assert re.search(r"^leaf-node\s+127\.0\.0\.1:\d+\s+env=demo$", listed.stdout, re.M)

        get_rc = _printed_line(printed, "get rc").split()
        assert get_rc[:2] == ["tetherctl", "-c"], printed
        root_config = get_rc[2]
        remote = run_cli("tetherctl", "-c", root_config, "get", "rc/leaf", "--format=json")
        assert json.loads(remote.stdout)[0]["status"]["connection"] == "online"

        # each cluster audits what happened there, though both run in one process
        leaf_config = _printed_line(printed, "get trusted_cluster").split()[2]
        logins = {
            config: json.loads(
                run_cli(
                    "tetherctl",
                    "-c",
                    config,
                    "audit",
                    "search",
                    "--type=user.login",
                    "--format=json",
                ).stdout
            )
            for config in (root_config, leaf_config)
        }
        assert [e["user"] for e in logins[root_config]] == ["demo"]
        assert logins[leaf_config] == []
        sessions = run_cli(
            "tetherctl",
            "-c",
            leaf_config,
            "audit",
            "search",
            "--type=ssh.session.end",
            "--format=json",
        )
        assert [e["cluster"] for e in json.loads(sessions.stdout)] == ["leaf"]
    finally:
        rest = _stop_demo(process, signal.SIGINT)
    assert process.returncode == 0, rest
    assert "Demo stopped." in rest
    assert not os.path.exists(pathlib.Path(root_config).parent.parent)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_operator_stops_the_demo_and_both_clusters_shut_down_cleanly(sig: signal.Signals) -> None:
    process = _start_demo("--debug")
    try:
        printed = _read_until(process, "get trusted_cluster/root")
        leaf_config = _printed_line(printed, "get trusted_cluster").split()[2]
    finally:
        output = _stop_demo(process, sig)
    assert process.returncode == 0, output
    # one process, one signal watcher: the root and the leaf stop together on it, with their
    # graceful steps (Ctrl-C too: not a KeyboardInterrupt in whichever task was running)
    assert output.count(f"received {sig.name}, shutting down") == 1, output
    assert "Traceback" not in output
    assert "Demo stopped." in output
    assert not os.path.exists(pathlib.Path(leaf_config).parent.parent)
