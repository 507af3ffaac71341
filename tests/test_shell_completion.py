"""``tether completion bash|zsh|fish``: click's completion scripts, and Tab completing the
names a cluster knows, driven as the shells drive it (``_TETHER_COMPLETE=bash_complete`` with
``COMP_WORDS``/``COMP_CWORD``) against a real cluster, and once through a real bash."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from tether.testing.cluster import RunningCluster, run_cli
from tether.testing.cluster import run_completion as complete

PASSWORD = "correct horse battery"


@pytest.mark.parametrize("program", ["tether", "tetherctl", "tetherd"])
def test_user_prints_the_completion_script_of_each_shell(program: str) -> None:
    bash = run_cli(program, "completion", "bash").stdout
    assert f"_{program.upper()}_COMPLETE=bash_complete" in bash
    assert f"complete -o nosort -F _{program}_completion {program}" in bash
    assert f"#compdef {program}" in run_cli(program, "completion", "zsh").stdout
    fish = run_cli(program, "completion", "fish").stdout
    assert f"complete --no-files --command {program}" in fish
    refused = run_cli(program, "completion", "tcsh", check=False)
    assert refused.returncode == 2 and "'tcsh' is not one of" in refused.stderr


def test_completion_is_documented_in_help() -> None:
    shown = run_cli("tether", "completion", "--help").stdout
    assert 'eval "$(tether completion bash)"' in shown
    assert "tether completion fish > ~/.config/fish/completions/tether.fish" in shown


def test_tab_completes_commands_and_options_without_a_login(tmp_path: pathlib.Path) -> None:
    env = {"TETHER_HOME": str(tmp_path)}
    assert "clusters" in complete("tether", "tether cl", env)
    assert complete("tether", "tether status --for", env) == ["--format"]
    assert complete("tether", "tether status --format ", env) == ["text", "json", "yaml"]
    # names need a login: none offered, nothing printed, no time lost
    started = time.monotonic()
    assert complete("tether", "tether login ", env) == []
    assert time.monotonic() - started < 10


def test_admin_tab_completes_resource_kinds_and_names(tether_cluster: RunningCluster) -> None:
    config = str(tether_cluster.config_path)
    assert "role" in complete("tetherctl", f"tetherctl -c {config} get ro")
    roles = complete("tetherctl", f"tetherctl -c {config} rm role/")
    assert {"role/access", "role/editor"} <= set(roles)
    assert complete("tetherctl", f"tetherctl -c {config} get role/acc") == ["role/access"]
    tether_cluster.add_user("tab-user", PASSWORD)
    assert "tab-user" in complete("tetherctl", f"tetherctl -c {config} users rm tab")


def test_user_tab_completes_the_cluster_to_log_in_to(tether_cluster: RunningCluster) -> None:
    tether_cluster.add_user("tab-alice", PASSWORD, roles=["access", "editor"])
    tether_cluster.login("tab-alice", PASSWORD)
    env = {"TETHER_HOME": str(tether_cluster.user_home("tab-alice"))}
    assert complete("tether", "tether login ", env) == ["main"]
    # through the login profile, as tctl from a laptop: the user's roles decide
    assert "role/access" in complete("tetherctl", "tetherctl get role/", env)


def test_tab_offers_nothing_and_says_nothing_when_the_proxy_is_gone(
    tether_cluster_factory: object, tmp_path: pathlib.Path
) -> None:
    cluster = tether_cluster_factory("gone")  # type: ignore[operator]
    cluster.add_user("tab-bob", PASSWORD)
    cluster.login("tab-bob", PASSWORD)
    env = {"TETHER_HOME": str(cluster.user_home("tab-bob"))}
    cluster.stop()
    started = time.monotonic()
    assert complete("tether", "tether login ", env) == []
    assert time.monotonic() - started < 15


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_resource_names_with_the_printed_script(
    tether_cluster: RunningCluster,
) -> None:
    # the script `tetherctl completion bash` prints, sourced in a real bash, as ~/.bashrc does
    config = tether_cluster.config_path
    script = (
        'eval "$(tetherctl completion bash)"\n'
        f"COMP_WORDS=(tetherctl -c {config} get role/ed)\n"
        "COMP_CWORD=4\n"
        "_tetherctl_completion tetherctl\n"  # bash passes the command's name
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    path = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    ran = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": path},
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["role/editor"], ran.stdout + ran.stderr
