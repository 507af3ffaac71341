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
from tether.cert_authority_types import cert_authority_types
from tether.cli._common import (
    complete_var,
    completion_command,
    config_path_from_argv,
    configured_disabled,
    format_option,
    output,
    plugin_manager,
    setup_cli_logging,
    version_info,
)
from tether.cli._ctl_audit import audit
from tether.cli._ctl_auth import auth_group, describe_ca_types
from tether.cli._ctl_resources import create, edit, get, rm, update
from tether.cli._ctl_rolemap import rolemap
from tether.cli._ctl_status import status
from tether.cli._ctl_target import CONFIG_ENV
from tether.cli._ctl_tokens import describe_token_types, tokens
from tether.cli._ctl_users import users
from tether.errors import TetherError
from tether.token_types import token_types

__all__ = ["cli", "main"]


@click.group()
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


# The commands live in a module per job (_ctl_*.py). Help sorts them by name; ``cli.commands``
# keeps the order they are added in, which is the order they were written in here before.
for _command in (create, get, update, edit, rm, rolemap, users, tokens, audit, auth_group, status):
    cli.add_command(_command)


@cli.command()
@format_option()
def version(fmt: str) -> None:
    """Print the version."""
    output(version_info(), fmt, text=lambda: click.echo(f"Tether v{tether.__version__}"))


cli.add_command(completion_command("tetherctl"))


def main() -> None:
    try:
        disabled = configured_disabled(config_path_from_argv(sys.argv[1:], CONFIG_ENV))
        pm = plugin_manager(disabled)
        pm.hook.tether_cli_commands(program="tetherctl", cli=cli)
        describe_token_types(token_types(pm))
        describe_ca_types(cert_authority_types(pm))
    except TetherError as exc:
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(1)
    cli(obj={}, prog_name="tetherctl", complete_var=complete_var("tetherctl"))


if __name__ == "__main__":
    main()
