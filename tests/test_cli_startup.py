"""A command-line start imports what its command needs, not the kernel and every plugin: the
user who types ``tether version`` or ``tetherctl version`` waits for Python and click only,
and a command that needs plugins still finds them. The figure itself (wall time against
``python -c pass``) is measured in ``benchmarks/ssh_session.py``, never asserted here."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

from tether.testing.cluster import run_cli

#: starts a program as its console script does and prints the modules of tether and of its
#: plugins that the command loaded
PROBE = """
import contextlib, io, sys
sys.argv = [{program!r}, *{argv!r}]
from tether.cli.{program} import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main()
print(sorted(m for m in sys.modules if m.split(".")[0].startswith("tether")))
"""


def _loaded(program: str, *argv: str, home: pathlib.Path | None = None) -> list[str]:
    probe = PROBE.format(program=program, argv=list(argv))
    env = {**os.environ, "TETHER_HOME": str(home)} if home else None
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    return list(ast.literal_eval(out.stdout.splitlines()[-1]))


def _plugins(loaded: list[str]) -> list[str]:
    return [m for m in loaded if m.split(".")[0] != "tether"]


@pytest.mark.parametrize("program", ["tether", "tetherctl", "tetherd"])
def test_version_loads_no_plugin(program: str) -> None:
    loaded = _loaded(program, "version")
    assert not _plugins(loaded), loaded
    if program != "tetherd":  # the daemon's own module imports what `start` needs
        heavy = {"tether.plugins", "tether.config", "tether.pki", "tether.client.profile"}
        assert not heavy & set(loaded), loaded


#: the modules of the plugins' commands, each imported only when its command is named
COMMAND_MODULES = ("tether_ssh.cli", "tether_db.cli", "tether_kube.cli", "tether_echo.cli")


def test_a_plugins_command_loads_its_plugin() -> None:
    assert "tether_ssh.cli" in _loaded("tether", "ssh", "--help")


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (("ssh", "--help"), "tether_ssh.cli"),
        (("proxy", "ssh", "--help"), "tether_ssh.cli"),
        (("db", "--help"), "tether_db.cli"),
        (("kube", "--help"), "tether_kube.cli"),
    ],
)
def test_a_plugins_command_loads_no_other_plugins_commands(
    argv: tuple[str, ...], module: str
) -> None:
    loaded = _loaded("tether", *argv)
    assert module in loaded
    others = set(COMMAND_MODULES) - {module}
    assert not others & set(loaded), loaded


def test_tether_ssh_loads_nothing_only_listings_need() -> None:
    """``tether ssh NODE`` reaches one node: the resource machinery, the node kind and the
    leaf clusters are for ``tether ls``, ``config`` and label selectors, which import them."""
    loaded = set(_loaded("tether", "ssh", "--help"))
    listing = {"tether.resources", "tether.targets", "tether.client.clusters"}
    assert not (listing | {"tether_ssh.inventory", "tether.config"}) & loaded, sorted(loaded)


def test_tether_status_and_logout_load_no_plugin(tmp_path: pathlib.Path) -> None:
    assert not _plugins(_loaded("tether", "status", home=tmp_path))
    assert not _plugins(_loaded("tether", "logout", home=tmp_path))


def test_help_lists_the_kernels_commands_and_the_plugins() -> None:
    out = run_cli("tether", "--help").stdout
    for name in ("login", "status", "logout", "clusters", "version", "ssh", "ls", "proxy"):
        assert f"  {name} " in out, name


def test_a_plugin_adds_to_the_kernels_shared_group_on_first_use() -> None:
    out = run_cli("tether", "proxy", "--help").stdout
    assert "ssh" in out
