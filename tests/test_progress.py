"""A progress display for what a person waits on (``tetherd demo``'s start-up, joins, bulk
``tetherctl create``, benchmarks): drawn by rich on a terminal, plain lines elsewhere, and rich
imported only when shown, so that commands start fast."""

from __future__ import annotations

import contextlib
import os
import pathlib
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tether.testing.cluster import RunningCluster, start_proxy, stop_process, wait_for

#: spinner frames rich draws (its default "dots" spinner)
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def _as_from_a_terminal() -> None:
    """Ctrl-C's default action: a test run started as a background job ignores SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def _on_a_terminal(
    args: list[str], until: str, timeout: float = 90
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start ``args`` with a pseudo-terminal as its standard streams, as from a person's
    shell, and read what it draws until ``until`` appears; the terminal stays open until the
    block ends (the caller stops the program in it)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        args,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"},
        preexec_fn=_as_from_a_terminal,
    )
    os.close(terminal)
    drawn = b""
    deadline = time.monotonic() + timeout
    while until.encode() not in drawn:
        assert time.monotonic() < deadline, f"no {until!r} on the terminal:\n{drawn!r}"
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                drawn += os.read(controller, 65536)
            except OSError:  # the program exited and closed the terminal
                break
    try:
        yield process, drawn.decode(errors="replace")
    finally:
        if process.poll() is None:
            stop_process(process, signal.SIGKILL)
        os.close(controller)


@pytest.mark.parametrize("program", ["tether", "tetherctl", "tetherd"])
def test_version_starts_without_loading_the_progress_display(program: str) -> None:
    probe = (
        "import sys\n"
        f"sys.argv = [{program!r}, 'version']\n"
        f"from tether.cli.{program} import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'pygments'}))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert ran.stdout.splitlines()[-1] == "[]", ran.stdout


def test_newcomer_sees_the_demo_start_up_step_by_step_on_a_terminal() -> None:
    command = [sys.executable, "-m", "tether.cli.tetherd", "demo"]
    with _on_a_terminal(command, "get trusted_cluster/root") as (process, drawn):
        assert stop_process(process, signal.SIGINT, timeout=30) == 0
    assert 'Starting the leaf cluster "leaf"' in drawn
    assert "Waiting for the leaf's tunnel to the root" in drawn
    assert any(frame in drawn for frame in SPINNER), drawn
    assert "\x1b[" in drawn  # redrawn in place
    assert "The leaf trusts the root and its tunnel is up (" in drawn
    assert "tether clusters" in drawn


def test_demo_started_from_a_script_prints_its_steps_as_plain_lines() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tether.cli.tetherd", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_as_from_a_terminal,
    )
    try:
        assert process.stderr is not None
        lines = [process.stderr.readline().decode() for _ in range(8)]
    finally:
        assert stop_process(process, signal.SIGINT, timeout=30) == 0
    assert lines[:3] == [
        "Starting the demo: a root and a leaf cluster on 127.0.0.1...\n",
        'Starting the leaf cluster "leaf"...\n',
        'Starting the root cluster "root"...\n',
    ]
    assert "The leaf trusts the root and its tunnel is up\n" in lines
    assert not any("\x1b[" in line for line in lines)


def _roles_file(directory: pathlib.Path, count: int) -> pathlib.Path:
    path = directory / "roles.yaml"
    path.write_text(
        "---\n".join(
            f"kind: role\nversion: v7\nmetadata:\n  name: bulk-{i}\nspec:\n"
            "  allow:\n    logins: [visitor]\n"
            for i in range(count)
        )
    )
    return path


def test_admin_creating_many_resources_from_a_script_gets_a_plain_line(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    created = tether_cluster.tetherctl("create", "-f", str(_roles_file(tmp_path, 25)))
    assert created.stderr == "Creating 25 resources from roles.yaml...\n"
    assert len(created.stdout.splitlines()) == 25
    # one small resource goes by unannounced
    one = tmp_path / "one"
    one.mkdir()
    single = tether_cluster.tetherctl("create", "-f", str(_roles_file(one, 1)))
    assert single.stderr == ""


def test_admin_creating_many_resources_on_a_terminal_sees_a_spinner(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    path = _roles_file(tmp_path, 30)
    command = [sys.executable, "-m", "tether.cli.tetherctl", "-c", str(tether_cluster.config_path)]
    with _on_a_terminal([*command, "create", "-f", str(path)], "bulk-29") as (process, drawn):
        assert process.wait(timeout=60) == 0
    assert "Creating 30 resources from roles.yaml" in drawn
    assert any(frame in drawn for frame in SPINNER), drawn


def test_operator_joining_a_proxy_is_told_when_it_has_joined(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    joined = start_proxy(tether_cluster, tmp_path / "proxy2", "proxy2")
    try:
        done = "Joined cluster 'main'; tetherd is running\n"
        wait_for(lambda: done in joined.log_text(), "the line saying it joined")
        logged = joined.log_text()
        assert f"Joining the cluster through {tether_cluster.auth_addr}...\n" in logged
    finally:
        joined.stop()


BAR_SCRIPT = """
import time
from tether.api import progress

with progress("Benchmarks", total=3, plain=False) as shown:
    for name in ("tunnel", "ssh", "leaves"):
        shown.step(f"Benchmark {name}")
        print(f"== {name}", flush=True)
        time.sleep(0.3)
        shown.advance()
print("all done")
"""


def test_benchmarks_show_a_bar_on_a_terminal_and_only_their_lines_elsewhere() -> None:
    # benchmarks/run_all.py's display, with harnesses that take a moment each
    with _on_a_terminal([sys.executable, "-c", BAR_SCRIPT], "all done") as (process, drawn):
        assert process.wait(timeout=30) == 0
    assert "Benchmark ssh" in drawn and "2/3" in drawn
    assert "== leaves" in drawn
    piped = subprocess.run(
        [sys.executable, "-c", BAR_SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    assert piped.stdout == "== tunnel\n== ssh\n== leaves\nall done\n"
    assert piped.stderr == ""
