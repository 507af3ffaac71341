"""Plugins declare their commands with ``tether_cli_lazy_commands``; each is imported when its
command line names it, and a declaration two plugins make, or a path that is not a command, is
refused with the plugins named (the startup side is in ``tests/test_cli_startup.py``)."""

from __future__ import annotations

import types

import click
import pytest
from click.testing import CliRunner

from tether.api import hookimpl
from tether.cli._common import ProgramGroup, SharedGroup, declared_commands
from tether.errors import PluginError
from tether.plugins import get_plugin_manager

#: what the declarations below name: this module's commands
HERE = __name__


@click.command("widgets")
def widgets() -> None:
    """List widgets."""
    click.echo("widgets listed")


@click.command("widgets")
def proxy_widgets() -> None:
    """Carry a widget connection."""
    click.echo("widgets proxied")


def _plugin(declared: dict[str, str]) -> types.SimpleNamespace:
    @hookimpl
    def tether_cli_lazy_commands(program: str) -> dict[str, str]:
        return declared if program == "tether" else {}

    return types.SimpleNamespace(tether_cli_lazy_commands=tether_cli_lazy_commands)


def test_two_plugins_declaring_one_command_are_named() -> None:
    pm = get_plugin_manager(autoload=False)
    pm.register(_plugin({"widgets": f"{HERE}:widgets"}), name="widgets-a")
    pm.register(_plugin({"widgets": f"{HERE}:proxy_widgets"}), name="widgets-b")
    with pytest.raises(PluginError, match="'widgets-a' and 'widgets-b'"):
        declared_commands(pm, "tether")


def test_a_declared_path_deeper_than_a_shared_group_is_refused() -> None:
    pm = get_plugin_manager(autoload=False)
    pm.register(_plugin({"proxy widgets list": f"{HERE}:widgets"}), name="widgets")
    with pytest.raises(PluginError, match="'widgets' declares the command"):
        declared_commands(pm, "tether")


def test_user_runs_a_declared_command_and_one_in_the_shared_group() -> None:
    pm = get_plugin_manager(autoload=False)
    pm.register(
        _plugin({"widgets": f"{HERE}:widgets", "proxy widgets": f"{HERE}:proxy_widgets"}),
        name="widgets",
    )

    def add_from_this_manager(cli: ProgramGroup) -> None:
        from tether.cli._common import add_plugin_commands

        add_plugin_commands(pm, "tether", cli)

    @click.group(cls=ProgramGroup, program="tether", add_plugins=add_from_this_manager)
    def cli() -> None:
        """A program."""

    @cli.group("proxy", cls=SharedGroup)
    def proxy() -> None:
        """Raw connections."""

    runner = CliRunner()
    assert runner.invoke(cli, ["widgets"]).output == "widgets listed\n"
    assert runner.invoke(cli, ["proxy", "widgets"]).output == "widgets proxied\n"
    assert "widgets" in runner.invoke(cli, ["proxy", "--help"]).output
