"""``-d/--debug`` wherever a tsh user puts it: before the subcommand or after it, for the
kernel's commands and the ones plugins add. Real ``tether`` processes; the failure they debug
is real too (a proxy address nobody listens on, a missing login)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import pytest

from tether.testing.cluster import run_cli
from tether.testing.http import free_port


def _tether(home: pathlib.Path, *args: str) -> tuple[int, str]:
    ran = run_cli("tether", *args, env={"TETHER_HOME": str(home)}, input="pw\n", check=False)
    return ran.returncode, ran.stderr


def _login(*debug: str) -> list[str]:
    return ["login", *debug, f"--proxy=127.0.0.1:{free_port()}", "--user=alice",
            "--password-stdin", "--insecure"]  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["-d", *_login()],
        ["--debug", *_login()],
        _login("-d"),
        _login("--debug"),
        ["ls", "-d"],
        ["-d", "ls"],
    ],
    ids=["d-first", "debug-first", "d-after", "debug-after", "plugin-d-after", "plugin-d-first"],
)
def test_debug_shows_the_traceback_before_or_after_the_subcommand(
    tmp_path: pathlib.Path, args: Sequence[str]
) -> None:
    status, stderr = _tether(tmp_path, *args)
    assert status == 1
    assert "Traceback" in stderr
    assert stderr.rstrip().splitlines()[-1].startswith("ERROR: ")


@pytest.mark.parametrize("args", [_login(), ["ls"]], ids=["login", "plugin"])
def test_without_debug_a_failure_is_one_line(tmp_path: pathlib.Path, args: Sequence[str]) -> None:
    status, stderr = _tether(tmp_path, *args)
    assert status == 1
    assert len(stderr.strip().splitlines()) == 1, stderr
