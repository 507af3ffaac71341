"""What the three command-line programs share: error reporting, output formats, plugins.

Errors a user sees are one line on stderr and a non-zero exit; ``--debug`` turns on verbose
logs and shows the traceback (DESIGN.md, "Conventions").

Every command-line start imports this module, so it imports only click: trio, the
configuration, plugins and the table and YAML printers load in the functions that use them,
and :class:`ProgramGroup` imports a command's module (and the plugins) only when the command
line names it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import json
import logging
import os
import pathlib
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar, cast

import click
from click.shell_completion import CompletionItem, get_completion_class

import tether
from tether.client.env import CLUSTER_ENV
from tether.errors import PluginError, TetherError
from tether.logs import setup_logging

if TYPE_CHECKING:
    from tether.plugins import TetherPluginManager

__all__ = [
    "COMPLETION_TIMEOUT",
    "FORMATS",
    "ProgramGroup",
    "SharedGroup",
    "add_declared_command",
    "add_plugin_commands",
    "cluster_option",
    "complete_clusters",
    "completer",
    "completion_command",
    "config_path_from_argv",
    "configured_disabled",
    "debug_option_everywhere",
    "declared_commands",
    "emit_table",
    "fail",
    "format_option",
    "gc_paused_for_start",
    "load_command",
    "output",
    "plugin_manager",
    "report",
    "resume_gc",
    "run_async",
    "run_command",
    "run_trio",
    "shared_group",
    "split_csv",
    "split_kv",
    "version_info",
]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("tether.cli")


def fail(message: str) -> NoReturn:
    """Print ``ERROR: message`` on standard error and exit 1."""
    click.echo(f"ERROR: {message}", err=True)
    sys.exit(1)


def report(exc: TetherError) -> NoReturn:
    """Print ``exc`` as one line and exit 1; under ``--debug`` log its traceback first."""
    if _debug_enabled():
        log.error("command failed", exc_info=exc)
    fail(str(exc))


def _debug_enabled() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.obj and isinstance(ctx.obj, dict) and ctx.obj.get("debug"):
            return True
        ctx = ctx.parent
    return False


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


#: whether :func:`gc_paused_for_start` paused the cycle collector and nothing resumed it yet
_GC_PAUSED = False


@contextlib.contextmanager
def gc_paused_for_start() -> Iterator[None]:
    """Run a client program's start without the cycle collector, until :func:`resume_gc`.

    A start allocates the objects of hundreds of modules, and each time their count passes
    a threshold the collector walks them all in vain: they live until the process ends.
    Once the command's modules are in, :func:`resume_gc` (called by :func:`run_trio`)
    freezes them (``gc.freeze``: later collections skip them) and collects cycles again for
    the command's work. Frozen on exit too, so the interpreter's shutdown skips them as well.
    """
    global _GC_PAUSED
    was_enabled = gc.isenabled()
    gc.disable()
    _GC_PAUSED = True
    try:
        yield
    finally:
        _GC_PAUSED = False
        gc.freeze()
        if was_enabled:
            gc.enable()


def resume_gc() -> None:
    """End the pause of :func:`gc_paused_for_start` (nothing if there is none): what is
    loaded so far stays frozen, and cycles are collected again."""
    global _GC_PAUSED
    if _GC_PAUSED:
        _GC_PAUSED = False
        gc.freeze()
        gc.enable()


def run_trio(func: Callable[..., Awaitable[R]], *args: Any) -> R:
    """``trio.run`` for a command: an error or Ctrl-C inside nurseries comes out alone.

    Use it where a synchronous command runs one async step; decorate a whole async command
    body with :func:`run_async` instead.

    trio wraps what escapes a nursery in an ExceptionGroup; a user must see the one-line
    TetherError (or a clean Ctrl-C), not a group traceback.
    """
    import trio

    resume_gc()
    try:
        return trio.run(func, *args)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if not all(isinstance(e, TetherError | KeyboardInterrupt) for e in leaves):
            raise
        first = next((e for e in leaves if isinstance(e, TetherError)), None)
        if first is not None:
            raise first from None
        raise KeyboardInterrupt from None


def run_command(
    func: Callable[..., Awaitable[R]],
    *args: Any,
    interrupted: tuple[int, str] = (130, ""),
) -> R:
    """Run a command body under trio: a TetherError becomes one line and exit 1 (with the
    traceback under ``--debug``); Ctrl-C exits with ``interrupted``'s status and message."""
    try:
        return run_trio(func, *args)
    except TetherError as exc:
        report(exc)
    except KeyboardInterrupt:
        status, message = interrupted
        if message:
            click.echo(message)
        sys.exit(status)


def run_async(func: Callable[P, Awaitable[R]]) -> Callable[P, R]:
    """Decorate an async click command body to run under trio: a TetherError becomes one
    line on standard error and exit status 1 (the traceback too under ``--debug``), Ctrl-C
    exit status 130. Put it below the click decorators."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return run_command(functools.partial(func, *args, **kwargs))

    return wrapper


def setup_cli_logging(debug: bool, severity: str = "WARNING") -> None:
    setup_logging(severity, "text", debug=debug)


def _turn_on_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj["debug"] = True
        setup_cli_logging(True)


def debug_option_everywhere(group: click.Group) -> None:
    """Give every subcommand of ``group`` (plugins' too, so call it once they are added) the
    group's ``-d/--debug``: ``tether ssh -d NODE`` as well as ``tether -d ssh NODE``, as tsh
    takes its global flags anywhere. A subcommand's arguments after its own positional ones
    (a remote command's ``-d``) stay its own."""
    for command in group.commands.values():
        _give_debug_option(command)


def _give_debug_option(command: click.Command) -> None:
    if not any("--debug" in getattr(p, "opts", ()) for p in command.params):
        command.params.append(
            click.Option(
                ["-d", "--debug"],
                is_flag=True,
                expose_value=False,
                callback=_turn_on_debug,
                help="Verbose logs and tracebacks.",
            )
        )
    if isinstance(command, click.Group):
        debug_option_everywhere(command)


def load_command(target: str) -> click.Command:
    """The click command ``target`` names, written as an entry point's object
    (``"tether_ssh.cli:ssh"``), imported now."""
    module, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{target} is not a click command")
    return command


class SharedGroup(click.Group):
    """A command group the kernel owns for plugins to share (``tether proxy``): subcommands
    added with :meth:`add_lazy_command` are imported when named, all of them when listed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy: dict[str, str] = {}

    def add_lazy_command(self, name: str, target: str) -> None:
        """Add subcommand ``name``, imported from ``target`` (``"module:attribute"``) when
        named."""
        self._lazy[name] = target

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy and cmd_name not in self.commands:
            self._import(cmd_name)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_all()
        return super().list_commands(ctx)

    def load_all(self) -> None:
        """Import every subcommand added with :meth:`add_lazy_command`."""
        for name in self._lazy:
            if name not in self.commands:
                self._import(name)

    def _import(self, name: str) -> None:
        command = load_command(self._lazy[name])
        if any("--debug" in getattr(p, "opts", ()) for p in self.params):
            _give_debug_option(command)  # as debug_option_everywhere gave the group's own
        self.add_command(command, name)


def declared_commands(pm: TetherPluginManager, program: str) -> dict[str, str]:
    """The commands plugins declare for ``program`` with ``tether_cli_lazy_commands``: each
    path (``"ssh"``, ``"proxy ssh"``) to its ``"module:attribute"``.

    :raises PluginError: two plugins declare one path, or a path is not one or two words.
    """
    declared: dict[str, str] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.tether_cli_lazy_commands.get_hookimpls():  # in registration order
        paths = cast("dict[str, str] | None", impl.function(program=program)) or {}
        for path, target in paths.items():
            words = path.split()
            if not 1 <= len(words) <= 2:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} declares the command {path!r} of {program}",
                    hint="a command is NAME, or GROUP NAME in a group the kernel shares",
                )
            key = " ".join(words)
            if key in owners:
                raise PluginError(
                    f"{program} {key} is declared by plugins {owners[key]!r} and "
                    f"{impl.plugin_name!r}",
                    hint="uninstall or disable one of them",
                )
            owners[key] = impl.plugin_name
            declared[key] = target
    return declared


def add_declared_command(cli: click.Group, path: str, target: str) -> None:
    """Add the command a plugin declared at ``path`` to ``cli``: into a kernel's
    :class:`SharedGroup` to be imported when named, else imported now."""
    *group, name = path.split()
    if not group:
        cli.add_command(load_command(target), name)
        return
    parent = shared_group(cli, group[0])
    if isinstance(parent, SharedGroup):
        parent.add_lazy_command(name, target)
    else:
        parent.add_command(load_command(target), name)


def add_plugin_commands(pm: TetherPluginManager, program: str, cli: click.Group) -> None:
    """Every plugin's commands in ``cli``: those ``tether_cli_commands`` adds, then those
    ``tether_cli_lazy_commands`` declares."""
    pm.hook.tether_cli_commands(program=program, cli=cli)
    for path, target in declared_commands(pm, program).items():
        add_declared_command(cli, path, target)


class ProgramGroup(click.Group):
    """A program's top-level group that loads only what its command line names.

    A start costs what it imports, and ``tether version`` must not import the kernel and
    every plugin: the built-in commands in ``lazy`` (name to ``"module:attribute"``) are
    imported when named. The plugins' commands are added the first time a command outside
    ``plugin_free`` is named, or the list of commands is asked for (help, completion): those
    of ``tether_cli_commands``, and of those ``tether_cli_lazy_commands`` declares, only the
    one named (all of them for the list).

    :param program: ``"tether"``, ``"tetherctl"`` or ``"tetherd"``, as the hooks are told.
    :param lazy: built-in commands, imported when named.
    :param plugin_free: built-in commands that run without the plugins' commands (none of
        their subcommands or help comes from a plugin).
    :param debug_everywhere: give each command the group's ``-d/--debug``
        (:func:`debug_option_everywhere`), as ``tether`` does.
    :param add_plugins: what adds the plugins' commands, all at once (and help that names
        what plugins register); by default :func:`add_plugin_commands` with
        :func:`plugin_manager`, command by command. A :class:`TetherError` it raises is a
        warning, and the built-in commands still run.
    """

    def __init__(
        self,
        *args: Any,
        program: str,
        lazy: dict[str, str] | None = None,
        plugin_free: Iterable[str] = (),
        debug_everywhere: bool = False,
        add_plugins: Callable[[ProgramGroup], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.program = program
        self._debug_everywhere = debug_everywhere
        self._lazy = dict(lazy or {})
        self._plugin_free = frozenset(plugin_free)
        self._add_plugins = add_plugins
        self._plugins_added = False
        self._builtin_names = set(self._lazy)
        #: the plugins' declared commands not added yet; None before the hooks ran
        self._declared: dict[str, str] | None = None

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(cmd, name)
        if not self._plugins_added and self._declared is None:  # the kernel's own
            self._builtin_names.add(name or cmd.name or "")

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self._plugin_free:
            self._add_plugin_command(cmd_name)
        command = self.builtin(cmd_name) or self.commands.get(cmd_name)
        if command is not None and self._debug_everywhere:
            _give_debug_option(command)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_all()
        return super().list_commands(ctx)

    def load_all(self) -> ProgramGroup:
        """Import every built-in command and add the plugins' (for help, docs and tests that
        walk the whole program); returns the group."""
        for name in self._lazy:
            if name not in self.commands:
                self._import(name)
        self.add_plugin_commands()
        for command in self.commands.values():
            if isinstance(command, SharedGroup):
                command.load_all()
        if self._debug_everywhere:
            debug_option_everywhere(self)
        return self

    def builtin(self, name: str) -> click.Command | None:
        """The built-in command ``name`` (imported now if it is lazy), else None; plugins'
        commands are not looked at (and not loaded)."""
        if name in self._lazy and name not in self.commands:
            return self._import(name)
        return self.commands.get(name) if name in self._builtin_names else None

    def add_plugin_commands(self) -> None:
        """Add every plugin's commands, once."""
        if self._plugins_added:
            return
        if self._add_plugins is not None:
            self._plugins_added = True
            add = self._add_plugins
            self._warn_if_fails(add, self)
            return
        self._warn_if_fails(self._declare_plugin_commands)
        self._plugins_added = True
        for path in list(self._declared or {}):
            self._warn_if_fails(self._add_declared, path)

    def _add_plugin_command(self, name: str) -> None:
        """Add the plugins' commands that ``name`` needs: all those of ``add_plugins`` when
        given, else those ``tether_cli_commands`` adds and the declared ones under ``name``."""
        if self._plugins_added:
            return
        if self._add_plugins is not None:
            self.add_plugin_commands()
            return
        self._warn_if_fails(self._declare_plugin_commands)
        for path in [p for p in self._declared or {} if p.split()[0] == name]:
            self._warn_if_fails(self._add_declared, path)

    def _declare_plugin_commands(self) -> None:
        if self._declared is not None:
            return
        self._declared = {}
        pm = plugin_manager()
        pm.hook.tether_cli_commands(program=self.program, cli=self)
        self._declared = declared_commands(pm, self.program)

    def _add_declared(self, path: str) -> None:
        declared = self._declared or {}
        if path in declared:
            add_declared_command(self, path, declared.pop(path))

    def _warn_if_fails(self, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except TetherError as exc:
            click.echo(f"WARNING: plugins not loaded: {exc}", err=True)

    def _import(self, name: str) -> click.Command:
        command = load_command(self._lazy[name])
        self.add_command(command, name)
        return command


_PM: dict[str, TetherPluginManager] = {}


def plugin_manager(disabled: Sequence[str] = ()) -> TetherPluginManager:
    """The plugin manager for this process (built once)."""
    from tether.plugins import get_plugin_manager

    key = ",".join(sorted(disabled))
    if key not in _PM:
        _PM[key] = get_plugin_manager(disabled)
    return _PM[key]


def config_path_from_argv(argv: Sequence[str], env: str | None = None) -> str | None:
    """The ``-c/--config`` value on a command line (before click parses it), else ``env``'s.

    Plugins must be loaded before arguments are parsed (they add commands), and which plugins
    to load depends on the configuration's ``plugins.disabled``.
    """
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return os.environ.get(env) if env else None


def configured_disabled(config_path: str | os.PathLike[str] | None) -> tuple[str, ...]:
    """``plugins.disabled`` of that configuration; nothing when there is none or it is broken
    (the command reports a broken file itself, with its line)."""
    if not config_path:
        return ()
    from tether.config import load_config

    try:
        return tuple(load_config(pathlib.Path(config_path)).plugins.disabled)
    except TetherError:
        return ()


#: What ``-f/--format`` takes on every command that prints a listing or a status: a table (or
#: lines) for people, JSON or YAML for scripts.
FORMATS = ("text", "json", "yaml")


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain table like tctl's: a header, a dashed rule, one row per line."""
    click.echo(format_table(headers, rows))


#: spaces between columns, and how much wider than its header a column is at least
_GAP = 2


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The text of :func:`emit_table`: each column left-aligned as wide as its widest cell
    (and its header and two more), two spaces between columns, no trailing blanks; a cell is
    ``str()`` of its value stripped of surrounding blanks (``None`` is empty), and a cell with
    several lines makes its row as many lines tall.

    It is tabulate's ``simple`` format with number parsing off, written out: tabulate typed
    every cell to decide an alignment these tables never use, a third of ``tether clusters``
    with a thousand leaves, and importing it was another 50 ms of every listing.
    """
    cells = [["" if cell is None else str(cell).strip() for cell in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"a row of {len(row)} cells under {len(headers)} headers")
    if any("\n" in cell for row in cells for cell in row):
        # each line of a cell a row of its own, the others' cells empty on it
        cells = [
            [lines[k] if k < len(lines) else "" for lines in split]
            for split in ([cell.split("\n") for cell in row] for row in cells)
            for k in range(max((len(lines) for lines in split), default=1))
        ]
    widths = [
        max(len(header) + _GAP, max((len(row[i]) for row in cells), default=0))
        for i, header in enumerate(headers)
    ]
    line = (" " * _GAP).join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers).rstrip(), (" " * _GAP).join("-" * w for w in widths)]
    out += [line.format(*row).rstrip() for row in cells]
    return "\n".join(out)


def format_option(
    *choices: str, default: str = "text", help: str | None = None
) -> Callable[[F], F]:
    """The ``-f/--format`` option every command that prints a listing or a status carries
    (its value reaches the command as ``fmt``); print with :func:`output`.

    ``tests/test_output_formats.py`` walks every installed command and fails when one that
    prints a table, or is named ``ls``, ``status`` or ``version``, lacks it.

    :param choices: the formats it prints (default :data:`FORMATS`: text, json and yaml).
    :param help: what the formats are for, when the default sentence does not say it.
    """
    choices = choices or FORMATS
    scripts = " or ".join(c for c in choices if c != "text")
    return click.option(
        "-f",
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help=help
        or f"text for people; {scripts} for scripts (resources as tetherctl get shows them: "
        "kind, version, metadata, spec, status).",
    )


def output(data: Any, fmt: str, text: Callable[[], None] | None = None) -> None:
    """Print ``data`` in the ``-f/--format`` the user chose: ``"json"`` or ``"yaml"`` for
    scripts; ``"text"`` by calling ``text`` (which prints a table with :func:`emit_table`, or
    lines, for people).

    ``data`` is what a script reads: the resources themselves (``kind``, ``version``,
    ``metadata``, ``spec``, ``status``) where the command lists resources, as ``tetherctl
    get`` prints them; a list prints as a JSON array or a YAML list even when it holds one item.
    """
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    elif fmt == "yaml":
        from tether.yamlio import dump_yaml

        click.echo(dump_yaml(data), nl=False)
    elif fmt == "text" and text is not None:
        text()
    else:
        raise click.BadParameter(f"unknown format {fmt!r}", param_hint="--format")


def version_info() -> dict[str, str]:
    """What ``version --format=json`` prints, with tsh's keys: ``version`` and ``runtime``."""
    return {"version": tether.__version__, "runtime": f"python{sys.version.split()[0]}"}


#: How long a shell's Tab may wait for names a server knows (nodes, clusters, resources)
#: before it offers none.
COMPLETION_TIMEOUT = 3.0

#: What ``tether completion SHELL`` prints a script for.
SHELLS = ("bash", "zsh", "fish")


def completer(
    fetch: Callable[[click.Context, str], Awaitable[Iterable[str]]],
    *,
    timeout: float = COMPLETION_TIMEOUT,
) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    """A click ``shell_complete`` callback from ``fetch(ctx, incomplete)``, an async function
    that lists the names a word may be (it reads the login profile or asks the proxy).

    It is fast and silent on error, as a shell's Tab must be: the names that start with what
    was typed, or none when ``fetch`` fails or takes longer than ``timeout``; nothing is ever
    printed but the names. ``ctx.params`` holds the options typed before the word
    (``--cluster``), ``ctx.find_root().params`` the program's own (``-c``).
    """

    async def bounded(ctx: click.Context, incomplete: str) -> list[str]:
        import trio

        with trio.move_on_after(timeout):
            return [str(name) for name in await fetch(ctx, incomplete)]
        return []

    def complete(
        ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        try:
            import trio

            with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
                names = trio.run(bounded, ctx, incomplete)
        except Exception:  # noqa: BLE001 - a Tab shows no traceback, whatever went wrong
            return []
        return [CompletionItem(n) for n in dict.fromkeys(names) if n.startswith(incomplete)]

    return complete


async def _login_clusters(ctx: click.Context, incomplete: str) -> list[str]:
    from tether.client.clusters import leaf_clusters
    from tether.client.profile import current_profile

    profile = current_profile()
    if profile is None:
        return []
    return [profile.identity().cluster, *await leaf_clusters(profile)]


_complete_clusters = completer(_login_clusters)


def complete_clusters(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The ``shell_complete`` callback of ``--cluster`` options and ``tether login CLUSTER``:
    the cluster logged in to and the leaf clusters the login may see (as ``tether
    clusters`` lists them)."""
    return _complete_clusters(ctx, param, incomplete)


def cluster_option(
    help: str = "The target's cluster (default: the one logged in to).",
) -> Callable[[F], F]:
    """The ``--cluster`` option of every client command that reaches a cluster's targets
    (``tether ls``, ``tether ssh``, a protocol plugin's commands; its value reaches the
    command as ``cluster``, ``None`` for the login's own). It reads ``TETHER_CLUSTER`` when
    not given, as tsh's reads ``TELEPORT_CLUSTER``, and completes cluster names.

    ``tests/test_help.py`` walks every installed ``tether`` command and fails when a
    ``--cluster`` option lacks the variable.

    :param help: what the cluster is for, when the default sentence does not say it.
    """
    return click.option(
        "--cluster",
        envvar=CLUSTER_ENV,
        show_envvar=True,
        shell_complete=complete_clusters,
        help=help,
    )


def completion_command(program: str) -> click.Command:
    """``PROGRAM completion bash|zsh|fish``: print the shell's completion script (click's)."""

    @click.command("completion")
    @click.argument("shell", type=click.Choice(SHELLS))
    @click.pass_context
    def completion(ctx: click.Context, shell: str) -> None:
        cls = get_completion_class(shell)
        assert cls is not None  # every choice has a class
        root = ctx.find_root().command
        click.echo(cls(root, {}, program, complete_var(program)).source())

    completion.help = f"""Print the {program} completion script for bash, zsh or fish.

    It completes commands and options, and names a cluster knows: nodes, clusters and
    resources, from your login (or from -c on the auth host).

    \b
    bash, in ~/.bashrc:        eval "$({program} completion bash)"
    zsh, in ~/.zshrc:          eval "$({program} completion zsh)"
    fish, once:                {program} completion fish > ~/.config/fish/completions/{program}.fish
    """
    return completion


def complete_var(program: str) -> str:
    """The environment variable the completion scripts set: ``_TETHER_COMPLETE``, ..."""
    return f"_{program.upper()}_COMPLETE"


def split_csv(value: str | None) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def split_kv(value: str | None, option: str) -> dict[str, list[str]]:
    """``"env=dev,team=a,team=b"`` -> ``{"env": ["dev"], "team": ["a", "b"]}``."""
    out: dict[str, list[str]] = {}
    for part in split_csv(value):
        key, sep, val = part.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{part!r} is not key=value", param_hint=option)
        out.setdefault(key.strip(), []).append(val.strip())
    return out


def shared_group(cli: click.Group, name: str) -> click.Group:
    """The group ``name`` the kernel created in ``cli`` for plugins to share.

    Two plugins can each add a subcommand to ``tether proxy`` only if neither creates it:
    the kernel does, and a plugin adds to it in ``tether_cli_commands``, as in
    ``shared_group(cli, "proxy").add_command(proxy_ssh)``.

    :raises PluginError: ``cli`` has no such group (the program, or the kernel's version,
        does not share it).
    """
    group = cli.builtin(name) if isinstance(cli, ProgramGroup) else cli.commands.get(name)
    if not isinstance(group, click.Group):
        shared = sorted(n for n, c in cli.commands.items() if isinstance(c, click.Group))
        raise PluginError(
            f"{cli.name or 'this program'} has no shared command group {name!r}",
            hint=f"its groups: {', '.join(shared) or 'none'}",
        )
    return group
