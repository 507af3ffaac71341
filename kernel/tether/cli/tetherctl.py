"""``tetherctl``: cluster administration (``tctl`` in the guide).

It reaches auth like ``tctl``: on the auth host with ``-c tether.yaml`` (the daemon's config)
and the local admin identity in the data dir; anywhere else through the current ``tether login``
profile, where the proxy forwards to auth and the user's role rules decide.
"""

from __future__ import annotations

import pathlib
import sys

import click

import tether
from tether.cli._common import (
    ProgramGroup,
    add_plugin_commands,
    complete_var,
    completion_command,
    config_path_from_argv,
    configured_disabled,
    fail,
    format_option,
    output,
    plugin_manager,
    setup_cli_logging,
    version_info,
)
from tether.errors import TetherError

__all__ = ["cli", "main"]


#: the commands, a module per job (_ctl_*.py), imported when named
_COMMANDS = {
    "create": "tether.cli._ctl_resources:create",
    "get": "tether.cli._ctl_resources:get",
    "update": "tether.cli._ctl_resources:update",
    "edit": "tether.cli._ctl_resources:edit",
    "rm": "tether.cli._ctl_resources:rm",
    "rolemap": "tether.cli._ctl_rolemap:rolemap",
    "users": "tether.cli._ctl_users:users",
    "tokens": "tether.cli._ctl_tokens:tokens",
    "audit": "tether.cli._ctl_audit:audit",
    "auth": "tether.cli._ctl_auth:auth_group",
    "status": "tether.cli._ctl_status:status",
}


def _add_plugins(cli: ProgramGroup) -> None:
    """The plugins' commands, and the token and CA types they register in the help and the
    choices of ``tokens add`` and ``auth export``/``sign``; a plugin that cannot load stops
    the command (``plugins.disabled`` of ``-c``'s configuration leaves it out)."""
    from tether.cert_authority_types import cert_authority_types
    from tether.cli._ctl_auth import describe_ca_types
    from tether.cli._ctl_target import CONFIG_ENV
    from tether.cli._ctl_tokens import describe_token_types
    from tether.token_types import token_types

    try:
        pm = plugin_manager(configured_disabled(config_path_from_argv(sys.argv[1:], CONFIG_ENV)))
        add_plugin_commands(pm, "tetherctl", cli)
        describe_token_types(token_types(pm))
        describe_ca_types(cert_authority_types(pm))
    except TetherError as exc:
        fail(str(exc))


@click.group(
    cls=ProgramGroup,
    program="tetherctl",
    lazy=_COMMANDS,
    plugin_free=("version", "completion"),
    add_plugins=_add_plugins,
)
@click.option(
    "-c",
    "--config",
    type=click.Path(path_type=pathlib.Path),
    help="The daemon's tether.yaml (on the auth host; uses the local admin identity); "
    "default: $TETHER_CONFIG, else the `tether login` profile.",
)
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks.")
@click.pass_context
def cli(ctx: click.Context, config: pathlib.Path | None, debug: bool) -> None:
    """Administer a Tether cluster: resources, users, tokens, CAs, audit."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["debug"] = debug
    setup_cli_logging(debug)


@cli.command()
@format_option()
def version(fmt: str) -> None:
    """Print the version."""
    output(version_info(), fmt, text=lambda: click.echo(f"Tether v{tether.__version__}"))


cli.add_command(completion_command("tetherctl"))


def main() -> None:
    cli(obj={}, prog_name="tetherctl", complete_var=complete_var("tetherctl"))


if __name__ == "__main__":
    main()
