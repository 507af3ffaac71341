"""``tetherd``: the daemon (``teleport`` in the guide)."""

from __future__ import annotations

import functools
import os
import pathlib
import sys
from typing import Any

import click
import trio

import tether
from tether.cli._common import (
    ProgramGroup,
    add_plugin_commands,
    complete_var,
    completion_command,
    config_path_from_argv,
    configured_disabled,
    emit_table,
    fail,
    format_option,
    output,
    plugin_manager,
    report,
    run_command,
    setup_cli_logging,
    version_info,
)
from tether.cli._progress import Progress, progress
from tether.cli._systemd import (
    DEFAULT_ENV_FILE,
    DEFAULT_FD_LIMIT,
    default_tetherd_path,
    render_unit,
)
from tether.config import (
    DEFAULT_CONFIG,
    Config,
    ConfigSchema,
    apply_start_flags,
    embedded_config,
    load_config,
    render_default_config,
)
from tether.errors import TetherError
from tether.logs import setup_logging
from tether.plugins import TetherPluginManager, describe_plugins, plugin_packages

__all__ = ["cli", "main"]


def _add_plugins(cli: ProgramGroup) -> None:
    """The plugins' commands and service roles (in ``start --help``). A plugin that cannot
    load is left for ``start`` and ``plugins`` to report: they rebuild the manager with the
    configuration's disabled list; ``configure`` and ``version`` need none."""
    try:
        pm = plugin_manager(configured_disabled(config_path_from_argv(sys.argv[1:])))
        schema = ConfigSchema.from_plugins(pm)
    except TetherError:
        return
    add_plugin_commands(pm, "tetherd", cli)
    _describe_roles(schema)


@click.group(
    cls=ProgramGroup,
    program="tetherd",
    plugin_free=("version", "completion"),
    add_plugins=_add_plugins,
)
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run and inspect the Tether daemon.

    Plugins load from the installed distributions (`tetherd plugins` lists them); set
    TETHER_DISABLE_PLUGIN_AUTOLOAD=1 to load only the builtin ones.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=pathlib.Path),
    help=f"Configuration file (default: {DEFAULT_CONFIG} when it exists, as teleport start "
    "reads /etc/teleport.yaml; else none, which runs what `tetherd configure` prints: auth, "
    "proxy and plugins' services such as the SSH plugin's node, on this host).",
)
@click.option(
    "--roles",
    help="Services to run, comma-separated (default: the configuration's).",
)
@click.option(
    "--token",
    help="Join token (`tetherctl tokens add --type=node`), or the absolute path of a file "
    "holding it; first start only.",
)
@click.option("--proxy", "proxy_server", help="Join through this proxy (host:port): tunnel mode.")
@click.option(
    "--auth-server",
    multiple=True,
    help="Join this auth service (host:port): direct mode. Repeat it for each auth server "
    "of a cluster that runs several (a proxy fails over between them).",
)
@click.option("--ca-pin", help="The cluster CA pin, to verify the server when joining.")
@click.option("--insecure", is_flag=True, help="Join without verifying the server (testing only).")
@click.option("--labels", help="Node labels, comma-separated k=v pairs (added to the config's).")
@click.option("--nodename", help="This host's name in the cluster.")
@click.option("--data-dir", type=click.Path(path_type=pathlib.Path), help="Data directory.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines as text for people or JSON for collectors (default: log.format).",
)
@click.option(
    "--debug",
    is_flag=True,
    help="Log everything at DEBUG, the libraries' lines too, and show tracebacks.",
)
@click.pass_context
def start(
    ctx: click.Context,
    /,
    config_path: pathlib.Path | None,
    debug: bool,
    **flags: Any,
) -> None:
    """Start the services the configuration enables.

    A node joins with `tetherd start --roles=node --token=TOKEN --proxy=HOST:PORT`.
    """
    from tether.daemon import run_daemon

    debug = debug or ctx.obj["debug"]
    ctx.obj["debug"] = debug
    try:
        if config_path is None and os.path.exists(DEFAULT_CONFIG):
            config_path = pathlib.Path(DEFAULT_CONFIG)
        config = load_config(config_path) if config_path else None
        pm = plugin_manager(config.plugins.disabled if config else ())
        schema = ConfigSchema.from_plugins(pm)
        if config is None:
            joining = bool(flags["proxy_server"] or flags["auth_server"])
            config = embedded_config(schema, joining=joining)
        config = apply_start_flags(config, **flags, schema=schema)
        setup_logging(config.log.severity, config.log.format, debug=debug, own=plugin_packages(pm))
    except TetherError as exc:
        report(exc)
    server = flags["proxy_server"] or ", ".join(flags["auth_server"])
    if not (flags["token"] and server):
        run_command(run_daemon, config, pm, interrupted=(0, ""))
        return
    # a terminal shows a spinner; elsewhere standard error is the daemon's log (journald,
    # --log-format=json), where the join is told by its own log records, not by plain lines
    with progress(f"Joining the cluster through {server}", plain=False) as shown:
        run_command(_run_joined, config, pm, shown, interrupted=(0, ""))


async def _run_joined(config: Config, pm: TetherPluginManager, shown: Progress) -> None:
    """Run the daemon; the join's progress ends once its services are up."""
    from tether.daemon import run_daemon

    async with trio.open_nursery() as nursery:
        info = await nursery.start(functools.partial(run_daemon, config, pm))
        shown.done(f"Joined cluster {info['cluster_name']!r}; tetherd is running")


@cli.command()
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks.")
@click.pass_context
def demo(ctx: click.Context, debug: bool) -> None:
    """Start a root and a leaf cluster that trusts it on 127.0.0.1; print the commands to try."""
    from tether.demo import run_demo
    from tether.plugins import get_plugin_manager

    debug = debug or ctx.obj["debug"]
    ctx.obj["debug"] = debug
    setup_logging("DEBUG" if debug else "WARNING", "text", debug=debug)
    try:
        plugin_manager()  # a plugin that cannot load is reported before anything starts
    except TetherError as exc:
        fail(str(exc))
    # each daemon gets a manager of its own, built as plugin_manager() built that one
    with progress("Starting the demo: a root and a leaf cluster on 127.0.0.1") as shown:
        demo = functools.partial(run_demo, get_plugin_manager, sys.stdout, progress=shown)
        run_command(demo, interrupted=(0, "\nDemo stopped."))


@cli.command()
def configure() -> None:
    """Print a commented default configuration file."""
    click.echo(render_default_config(), nl=False)


@cli.group()
def install() -> None:
    """Install tetherd as a service of this host's init system."""


@install.command("systemd")
@click.option(
    "-c",
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    metavar="PATH",
    help="The configuration the service starts with (checked when it exists); %i in it "
    "makes a template unit, tetherd@NAME.",
)
@click.option(
    "--tetherd-path",
    default=default_tetherd_path,
    show_default="this tetherd",
    metavar="PATH",
    help="The tetherd executable the service runs.",
)
@click.option(
    "--env-file",
    default=DEFAULT_ENV_FILE,
    show_default=True,
    metavar="PATH",
    help="Environment variables for tetherd (TETHER_...), read when the file exists.",
)
@click.option(
    "--fd-limit",
    type=click.IntRange(min=1024),
    default=DEFAULT_FD_LIMIT,
    show_default=True,
    help="How many files and connections tetherd may hold open (LimitNOFILE).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="Write the unit to this file (e.g. /etc/systemd/system/tetherd.service) instead "
    "of standard output.",
)
def install_systemd(
    config_path: str,
    tetherd_path: str,
    env_file: str,
    fd_limit: int,
    output: pathlib.Path | None,
) -> None:
    """Print a systemd unit that runs tetherd start.

    The unit runs `tetherd start --config=CONFIG` and restarts it if it fails. Save it as
    /etc/systemd/system/tetherd.service, then run
    `systemctl daemon-reload && systemctl enable --now tetherd`.
    """
    config_path = os.path.abspath(config_path)
    if "%i" not in config_path and os.path.exists(config_path):
        try:
            load_config(pathlib.Path(config_path))
        except TetherError as exc:
            fail(str(exc))
    unit = render_unit(
        config=config_path,
        tetherd_path=os.path.abspath(tetherd_path),
        env_file=os.path.abspath(env_file),
        fd_limit=fd_limit,
    )
    if output is None:
        click.echo(unit, nl=False)
        return
    try:
        output.write_text(unit)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    service = "tetherd@NAME" if "%i" in config_path else output.name.removesuffix(".service")
    click.echo(f"Wrote {output}; start it with:")
    click.echo(f"systemctl daemon-reload && systemctl enable --now {service}")


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=pathlib.Path),
    help="Apply this configuration's plugins.disabled list.",
)
@format_option()
def plugins(config_path: pathlib.Path | None, fmt: str) -> None:
    """List the loaded plugins, where they come from and the hooks they implement."""
    try:
        disabled = load_config(config_path).plugins.disabled if config_path else []
        pm = plugin_manager(disabled)
    except TetherError as exc:
        fail(str(exc))
    found = describe_plugins(pm)
    output(
        [
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "hooks": list(p.hooks),
            }
            for p in found
        ],
        fmt,
        text=lambda: emit_table(
            ["Plugin", "Distribution", "Version", "Hooks"],
            [(p.name, p.distribution, p.version, ", ".join(p.hooks)) for p in found],
        ),
    )


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=pathlib.Path),
    help=f"The cluster's configuration (default: {DEFAULT_CONFIG} when it exists): its "
    "storage.url (else SQLite in its data_dir) is copied, with the plugins it enables.",
)
@click.option("--from", "source", metavar="URL", help="Copy this store instead (a backup).")
@click.option(
    "--to",
    "destination",
    metavar="URL",
    required=True,
    help="The empty store to copy into: postgresql://..., etcd://..., sqlite:///FILE.",
)
def migrate(config_path: pathlib.Path | None, source: str | None, destination: str) -> None:
    """Copy a cluster's whole store into an empty one: to PostgreSQL or etcd, or a backup.

    Stop the cluster's auth servers first; then set storage.url to the new store. Each key
    keeps its value and the time it has left to live.
    """
    try:
        if config_path is None and os.path.exists(DEFAULT_CONFIG):
            config_path = pathlib.Path(DEFAULT_CONFIG)
        config = load_config(config_path) if config_path else None
        pm = plugin_manager(config.plugins.disabled if config else ())
        if config is None:
            config = embedded_config(ConfigSchema.from_plugins(pm), joining=False)
    except TetherError as exc:
        report(exc)
    from_url = source or config.storage_url
    if from_url == destination:
        fail("--to names the store being copied; give a new, empty store")
    copied = run_command(_migrate, from_url, destination, pm)
    click.echo(
        f"copied {copied} keys from {_without_password(from_url)} to "
        f"{_without_password(destination)}"
    )


async def _migrate(source: str, destination: str, pm: TetherPluginManager) -> int:
    import time

    from tether.backend import open_backend
    from tether.backend.migrate import copy_store

    async with open_backend(source, pm) as src, open_backend(destination, pm) as dst:
        return await copy_store(src, dst, now=time.time)


def _without_password(url: str) -> str:
    """``url`` as it may be printed: a password in it replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@cli.command()
@format_option()
def version(fmt: str) -> None:
    """Print the version."""
    short = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    output(version_info(), fmt, text=lambda: click.echo(f"Tether v{tether.__version__} {short}"))


cli.add_command(completion_command("tetherd"))


def main() -> None:
    setup_cli_logging(debug="--debug" in sys.argv)
    cli(obj={}, prog_name="tetherd", complete_var=complete_var("tetherd"))


def _describe_roles(schema: ConfigSchema) -> None:
    """List the registered service roles in ``tetherd start --help``."""
    for param in start.params:
        if param.name == "roles" and isinstance(param, click.Option):
            known = "; ".join(f"{role.name}: {role.description}" for role in schema.roles.values())
            param.help = (
                f"Services to run, comma-separated ({known}); default: the configuration's."
            )


if __name__ == "__main__":
    main()
