"""``-f/--format=text|json|yaml`` on every command that prints a listing or a status, with the
resources themselves in JSON and YAML (kind, version, metadata, spec), as tctl and tsh print
them; and a walk over every installed command, plugins' included, so later ones keep it."""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable, Iterator
from typing import Any

import click
import pytest
from ruamel.yaml import YAML

import tether
from tether.cli import _common, tetherctl, tetherd
from tether.cli import tether as tether_cli
from tether.cli._common import FORMATS
from tether.testing.cluster import RunningCluster, run_cli

PASSWORD = "correct horse battery"
#: commands people read a listing or a status from, whatever their body calls
LISTING_NAMES = frozenset({"ls", "list", "status", "version"})
PRINTERS = (_common.emit_table, _common.output)


def _installed_programs() -> dict[str, click.Group]:
    """The three programs with every installed plugin's commands, as their ``main`` adds them."""
    programs = {"tether": tether_cli.cli, "tetherctl": tetherctl.cli, "tetherd": tetherd.cli}
    for cli in programs.values():
        cli.load_all()
    return programs


def _walk(group: click.Group, path: str) -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _walk(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


def _calls_a_printer(func: Callable[..., Any], seen: set[types.CodeType]) -> bool:
    """Whether ``func``, or a function of its module that it names, prints with
    ``emit_table`` or ``output`` (the listing helpers of ``tether.api``)."""
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    names: set[str] = set()
    stack = [code]
    while stack:  # the body and the lambdas and functions nested in it
        current = stack.pop()
        names.update(current.co_names)
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    found = [func.__globals__.get(name) for name in names]
    if any(any(f is printer for printer in PRINTERS) for f in found):
        return True
    return any(
        inspect.isfunction(f) and f.__module__ == func.__module__ and _calls_a_printer(f, seen)
        for f in found
    )


def _format_choices(command: click.Command) -> tuple[str, ...]:
    for param in command.params:
        if isinstance(param, click.Option) and "--format" in param.opts:
            assert isinstance(param.type, click.Choice), command.name
            return tuple(str(c) for c in param.type.choices)
    return ()


def test_every_listing_and_status_command_installed_takes_text_json_and_yaml() -> None:
    listing: list[str] = []
    missing: list[str] = []
    for program, cli in _installed_programs().items():
        for path, command in _walk(cli, program):
            callback = command.callback
            assert callback is not None, path
            if command.name in LISTING_NAMES or _calls_a_printer(callback, set()):
                listing.append(path)
                if set(_format_choices(command)) != set(FORMATS):
                    missing.append(path)
    assert not missing, (
        f"these print a listing or a status but lack --format=text|json|yaml: {missing} "
        "(add @tether.api.format_option())"
    )
    # the walk finds what it must: the kernel's and the SSH plugin's listings
    for expected in (
        "tether ls",
        "tether clusters",
        "tether status",
        "tetherctl status",
        "tetherctl version",
        "tetherctl tokens ls",
        "tetherctl audit search",
        "tetherd plugins",
    ):
        assert expected in listing


def _yaml(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(text)


def test_scripts_read_the_version_of_each_program_as_json_or_yaml() -> None:
    for program in ("tether", "tetherctl", "tetherd"):
        shown = json.loads(run_cli(program, "version", "--format=json").stdout)
        assert shown["version"] == tether.__version__
        assert shown["runtime"].startswith("python3.")
        assert _yaml(run_cli(program, "version", "-f", "yaml").stdout) == shown
        assert run_cli(program, "version").stdout.startswith(f"Tether v{tether.__version__}")


def test_admin_reads_the_cluster_status_as_json_or_yaml(tether_cluster: RunningCluster) -> None:
    shown = json.loads(tether_cluster.tetherctl("status", "--format=json").stdout)
    # what is connected is tests/test_status.py's; here, the cluster as a script reads it
    assert {k: shown[k] for k in ("cluster", "version", "ca_pin")} == {
        "cluster": "main",
        "version": tether.__version__,
        "ca_pin": tether_cluster.ca_pin,
    }
    assert _yaml(tether_cluster.tetherctl("status", "-f", "yaml").stdout) == shown
    assert f"CA pin   {tether_cluster.ca_pin}" in tether_cluster.tetherctl("status").stdout


def test_admin_lists_tokens_as_token_resources(tether_cluster: RunningCluster) -> None:
    added = json.loads(
        tether_cluster.tetherctl(
            "tokens", "add", "--type=node", "--labels=env=dev", "-f", "json"
        ).stdout
    )
    assert (
        _yaml(tether_cluster.tetherctl("tokens", "add", "--type=node", "-f", "yaml").stdout).keys()
        == added.keys()
    )
    listed = _yaml(tether_cluster.tetherctl("tokens", "ls", "--format=yaml").stdout)
    (mine,) = [t for t in listed if t["metadata"]["name"] == added["token"]]
    assert mine["kind"] == "token" and mine["version"] == "v2"
    assert mine["spec"] == {"roles": ["node"]}
    assert mine["metadata"]["labels"] == {"env": "dev"}
    assert mine["metadata"]["expires"] == added["expires"]
    assert json.loads(tether_cluster.tetherctl("tokens", "ls", "-f", "json").stdout) == listed


def test_admin_lists_users_and_audit_events_for_scripts(tether_cluster: RunningCluster) -> None:
    tether_cluster.add_user("fmt-user", PASSWORD, roles=["access"])
    users = _yaml(tether_cluster.tetherctl("users", "ls", "-f", "yaml").stdout)
    (user,) = [u for u in users if u["metadata"]["name"] == "fmt-user"]
    assert user["kind"] == "user" and user["spec"]["roles"] == ["access"]
    events = _yaml(
        tether_cluster.tetherctl("audit", "search", "--type=user.create", "-f", "yaml").stdout
    )
    assert isinstance(events, list)


def test_user_lists_clusters_and_status_as_tsh_prints_them(
    tether_cluster: RunningCluster,
) -> None:
    tether_cluster.add_user("fmt-alice", PASSWORD, roles=["access"])
    tether_cluster.login("fmt-alice", PASSWORD)
    clusters = _yaml(tether_cluster.tether("fmt-alice", "clusters", "-f", "yaml").stdout)
    assert clusters == [
        {
            "cluster_name": "main",
            "status": "online",
            "cluster_type": "root",
            "labels": {},
            "selected": True,
        }
    ]
    status = _yaml(tether_cluster.tether("fmt-alice", "status", "--format=yaml").stdout)
    assert status["active"]["username"] == "fmt-alice"
    assert status["active"]["cluster"] == "main"


def test_operator_lists_plugins_as_json() -> None:
    listed = json.loads(run_cli("tetherd", "plugins", "--format=json").stdout)
    names = {p["name"] for p in listed}
    assert "ssh" in names or "tether-ssh" in {p["distribution"] for p in listed}
    assert all(isinstance(p["hooks"], list) for p in listed)
    assert _yaml(run_cli("tetherd", "plugins", "-f", "yaml").stdout) == listed


@pytest.mark.parametrize("program", ["tether", "tetherctl", "tetherd"])
def test_an_unknown_format_is_refused_with_the_choices(program: str) -> None:
    refused = run_cli(program, "version", "--format=xml", check=False)
    assert refused.returncode == 2
    assert "'xml' is not one of 'text', 'json', 'yaml'" in refused.stderr


@pytest.mark.parametrize(
    ("headers", "rows", "printed"),
    [
        pytest.param(
            ["Cluster Name", "Status", "Cluster Type", "Labels", "Selected"],
            [("root", "online", "root", "", "*"), ("leaf-1", "offline", "leaf", "env=a,t=o", "")],
            "Cluster Name    Status    Cluster Type    Labels     Selected\n"
            "--------------  --------  --------------  ---------  ----------\n"
            "root            online    root                       *\n"
            "leaf-1          offline   leaf            env=a,t=o",
            id="columns-as-wide-as-header-plus-two-no-trailing-blanks",
        ),
        pytest.param(
            ["Node Name", "Address", "Labels"],
            [],
            "Node Name    Address    Labels\n-----------  ---------  --------",
            id="no-rows",
        ),
        pytest.param(
            ["Time (UTC)", "User", "Success", "Details"],
            [("2026-12-06 13:00:00", "alice", True, None), ("x", "bob", False, " 007 ")],
            "Time (UTC)           User    Success    Details\n"
            "-------------------  ------  ---------  ---------\n"
            "2026-12-06 13:00:00  alice   True\n"
            "x                    bob     False      007",
            id="values-as-str-none-empty-blanks-stripped-numbers-left-aligned",
        ),
        pytest.param(
            ["Name", "Note"],
            [("a", "two\nlines"), ("longer-name", "1.50")],
            "Name         Note\n-----------  ------\na            two\n             lines\n"
            "longer-name  1.50",
            id="a-cell-of-several-lines",
        ),
    ],
)
def test_tables_print_as_they_did_through_tabulate(
    headers: list[str], rows: list[tuple[Any, ...]], printed: str
) -> None:
    # each expected text is what tabulate's "simple" format (number parsing off) printed for
    # the same table before the CLI wrote the format out: scripts that cut columns by position
    # and the tables in the docs keep reading the same bytes
    assert _common.format_table(headers, rows) == printed


def test_a_table_row_with_a_cell_too_many_is_refused() -> None:
    with pytest.raises(ValueError, match="a row of 3 cells under 2 headers"):
        _common.format_table(["A", "B"], [("1", "2", "3")])
