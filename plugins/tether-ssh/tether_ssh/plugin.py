"""The ``ssh`` plugin as Tether's plugin manager sees it (entry point group ``tether``).

It uses only the public hooks, like any third-party protocol plugin: the ``node`` resource
kind, the proxy's SSH front door (ALPN ``tether-ssh/1``), the node service, and the client
commands ``tether ssh``, ``ls``, ``scp``, ``config`` and ``proxy ssh``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tether
from tether_ssh.inventory import NODE

if TYPE_CHECKING:
    import click

    from tether.protocols import ProtocolHandler
    from tether.resources import ResourceKind
    from tether.services import Service, ServiceContext

__all__ = [
    "tether_cli_commands",
    "tether_protocols",
    "tether_resource_kinds",
    "tether_services",
]


@tether.hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """``node``: the inventory entries nodes publish on every heartbeat."""
    return [NODE]


@tether.hookimpl
def tether_protocols() -> list[ProtocolHandler]:
    """The SSH front door on the proxy's public port."""
    from tether_ssh.frontdoor import protocol_handler  # the proxy's side: only in tetherd

    return [protocol_handler()]


@tether.hookimpl
def tether_services(ctx: ServiceContext) -> list[Service]:
    """The node service, when this daemon runs one (``ssh_service.enabled``)."""
    from tether_ssh.node import node_services  # asyncssh and the server: only in tetherd

    return node_services(ctx)


@tether.hookimpl
def tether_cli_commands(program: str, cli: click.Group) -> None:
    """``tether ssh``, ``ls``, ``scp``, ``config`` and ``proxy ssh``."""
    if program == "tether":
        from tether_ssh.cli import add_commands

        add_commands(cli)
