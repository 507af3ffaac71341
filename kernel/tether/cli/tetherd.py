"""``tetherd``: the daemon (``teleport`` in the guide)."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import click

import tether
from tether.cli._common import (
    config_path_from_argv,
    configured_disabled,
    emit_table,
    fail,
    plugin_manager,
    report,
    run_command,
    setup_cli_logging,
)
from tether.config import (
    ConfigSchema,
    apply_start_flags,
    embedded_config,
    load_config,
    render_default_config,
)
from tether.errors import TetherError
from tether.logs import setup_logging
from tether.plugins import describe_plugins

__all__ = ["cli", "main"]


@click.group()
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run and inspect the Tether daemon."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=pathlib.Path),
    help="Configuration file (default: none, which runs what `tetherd configure` prints: "
    "auth, proxy and plugins' services such as the SSH plugin's node, on this host).",
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
@click.option("--auth-server", help="Join this auth service (host:port): direct mode.")
@click.option("--ca-pin", help="The cluster CA pin, to verify the server when joining.")
@click.option("--insecure", is_flag=True, help="Join without verifying the server (testing only).")
@click.option("--labels", help="Node labels, comma-separated k=v pairs (added to the config's).")
@click.option("--nodename", help="This host's name in the cluster.")
@click.option("--data-dir", type=click.Path(path_type=pathlib.Path), help="Data directory.")
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks.")
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
        config = load_config(config_path) if config_path else None
        pm = plugin_manager(config.plugins.disabled if config else ())
        schema = ConfigSchema.from_plugins(pm)
        if config is None:
            joining = bool(flags["proxy_server"] or flags["auth_server"])
            config = embedded_config(schema, joining=joining)
        config = apply_start_flags(config, **flags, schema=schema)
        setup_logging(config.log.severity, config.log.format, debug=debug)
    except TetherError as exc:
        report(exc)
    run_command(run_daemon, config, pm, interrupted=(0, ""))


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
    run_command(run_demo, get_plugin_manager, sys.stdout, interrupted=(0, "\nDemo stopped."))


@cli.command()
def configure() -> None:
    """Print a commented default configuration file."""
    click.echo(render_default_config(), nl=False)


@cli.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=pathlib.Path),
    help="Apply this configuration's plugins.disabled list.",
)
def plugins(config_path: pathlib.Path | None) -> None:
    """List the loaded plugins, where they come from and the hooks they implement."""
    try:
        disabled = load_config(config_path).plugins.disabled if config_path else []
        pm = plugin_manager(disabled)
    except TetherError as exc:
        fail(str(exc))
    rows = [(p.name, p.distribution, p.version, ", ".join(p.hooks)) for p in describe_plugins(pm)]
    emit_table(["Plugin", "Distribution", "Version", "Hooks"], rows)


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"Tether v{tether.__version__} python{sys.version_info[0]}.{sys.version_info[1]}")


def main() -> None:
    setup_cli_logging(debug="--debug" in sys.argv)
    try:
        pm = plugin_manager(configured_disabled(config_path_from_argv(sys.argv[1:])))
        schema = ConfigSchema.from_plugins(pm)
    except TetherError:
        # `start` and `plugins` rebuild the manager with the configuration's disabled list
        # and report a plugin that still cannot load; `configure` and `version` need none.
        pass
    else:
        pm.hook.tether_cli_commands(program="tetherd", cli=cli)
        _describe_roles(schema)
    cli(obj={})


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
