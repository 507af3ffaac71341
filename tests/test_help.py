"""``--help`` is the manual: every command of tetherd, tetherctl and tether, and every option,
says what it does, the installed plugins' commands included.

Each program is built by its real entry point (``main()``, which loads the plugins and lets
them add commands), then walked; every command's ``--help`` is rendered as a user sees it.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from tether.api import CLUSTER_ENV
from tether.cli._ctl_target import CONFIG_ENV
from tether.plugins import AUTOLOAD_ENV
from tether.testing.cluster import run_cli

PROGRAMS = ("tetherd", "tetherctl", "tether")


@pytest.fixture(autouse=True)
def _root_logger() -> Iterator[None]:
    """The programs set up logging to this test's captured stderr: leave no handler behind."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in set(root.handlers) - set(handlers):
        root.removeHandler(handler)
    root.setLevel(level)


def _built(program: str, monkeypatch: pytest.MonkeyPatch) -> click.Group:
    """The program's command group as ``main()`` leaves it: plugins' commands added."""
    module = importlib.import_module(f"tether.cli.{program}")
    monkeypatch.setattr(sys, "argv", [program, "--help"])
    with pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code == 0
    group: click.Group = module.cli
    return group


Walked = Iterator[tuple[tuple[str, ...], click.Command]]


def _walk(command: click.Command, path: tuple[str, ...]) -> Walked:
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            sub = command.get_command(click.Context(command), name)
            assert sub is not None
            yield from _walk(sub, (*path, name))


def _missing_help(path: tuple[str, ...], command: click.Command) -> list[str]:
    where = " ".join(path)
    missing = [] if (command.help or "").strip() else [f"{where}: the command has no help"]
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip():
            missing.append(f"{where} {'/'.join(param.opts)}: the option has no help")
    return missing


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_command_and_option_of_the_program_has_help(
    program: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _built(program, monkeypatch)
    capsys.readouterr()
    runner = CliRunner()

    missing = []
    for path, command in _walk(cli, (program,)):
        missing += _missing_help(path, command)
        shown = runner.invoke(cli, [*path[1:], "--help"], obj={}, prog_name=program)
        assert shown.exit_code == 0, shown.output
        assert shown.output.startswith(f"Usage: {' '.join(path)} "), shown.output

    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    ("program", "variable"),
    [("tetherd", AUTOLOAD_ENV), ("tetherctl", CONFIG_ENV)],
)
def test_admin_programs_name_the_environment_variables_they_read(
    program: str, variable: str
) -> None:
    shown = " ".join(run_cli(program, "--help").stdout.split())

    assert variable in shown


def test_every_cluster_option_of_tether_reads_tether_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _built("tether", monkeypatch)
    capsys.readouterr()
    variables = {
        " ".join(path): param.envvar
        for path, command in _walk(cli, ("tether",))
        for param in command.params
        if isinstance(param, click.Option) and "--cluster" in param.opts
    }

    # the walk finds what it must: the SSH plugin's commands
    assert {"tether ls", "tether ssh", "tether scp"} <= set(variables)
    assert {path: v for path, v in variables.items() if v != CLUSTER_ENV} == {}
