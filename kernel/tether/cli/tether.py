"""``tether``: the user's client (``tsh`` in the guide).

This module holds the program and the commands that cost nothing to import; the others load
when named (:class:`~tether.cli._common.ProgramGroup`), so ``tether version`` starts in the
time Python and click take.
"""

from __future__ import annotations

import click

import tether
from tether.cli._common import (
    ProgramGroup,
    SharedGroup,
    complete_var,
    completion_command,
    format_option,
    gc_paused_for_start,
    output,
    setup_cli_logging,
    version_info,
)
from tether.client.env import CLUSTER_ENV, HOME_ENV, LOGIN_ENV, PROXY_ENV, USER_ENV

__all__ = ["cli", "main"]


_ENVIRONMENT = f"""\b
Environment variables (as tsh's TELEPORT_*):
  {HOME_ENV}     where logins are kept (default: ~/.tether)
  {PROXY_ENV}    the proxy of login and signup (--proxy)
  {USER_ENV}     the Tether user to log in as (login --user)
  {CLUSTER_ENV}  the cluster to target (--cluster; login's CLUSTER)
  {LOGIN_ENV}    the login on nodes when LOGIN@ is left out
"""


#: the built-in commands that live in other modules
_LOGIN_COMMANDS = ("login", "clusters", "signup", "status", "logout")
_COMMANDS = {name: f"tether.cli._login:{name}" for name in _LOGIN_COMMANDS}


@click.group(
    cls=ProgramGroup,
    program="tether",
    lazy=_COMMANDS,
    plugin_free=("version", "completion", "status", "logout"),
    debug_everywhere=True,
    epilog=_ENVIRONMENT,
)
@click.option("-d", "--debug", is_flag=True, help="Verbose logs and tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Log in to a Tether cluster and reach its resources."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    setup_cli_logging(debug)


@cli.group("proxy", cls=SharedGroup)
def proxy_group() -> None:
    """Open raw connections through the proxy (for other programs' ProxyCommand)."""


# `tether proxy` is the kernel's, so that several protocol plugins can each add a subcommand
# (`proxy ssh`, later `proxy db`) with tether.api.shared_group.


@cli.command()
@format_option()
def version(fmt: str) -> None:
    """Print the version."""
    output(version_info(), fmt, text=lambda: click.echo(f"Tether v{tether.__version__}"))


cli.add_command(completion_command("tether"))


def main() -> None:
    with gc_paused_for_start():
        cli(obj={}, prog_name="tether", complete_var=complete_var("tether"))


if __name__ == "__main__":
    main()
