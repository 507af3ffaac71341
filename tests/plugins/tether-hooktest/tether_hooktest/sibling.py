"""A second test plugin in hooktest's distribution (entry point ``hooktest-sibling``).

With hooktest, two plugins that each add a subcommand to a group the kernel owns
(``tetherctl auth``), neither creating it. Inert unless ``TETHER_HOOKTEST_LOG`` is set.
"""

from __future__ import annotations

import click

from tether.api import hookimpl, shared_group
from tether_hooktest import _active


@hookimpl
def tether_cli_commands(program: str, cli: click.Group) -> None:
    if program != "tetherctl" or not _active():
        return

    @shared_group(cli, "auth").command("sibling")
    def auth_sibling() -> None:
        """Prove that a second plugin adds to the same group."""
        click.echo("hooktest-sibling command in tetherctl auth")
