"""The ``echo`` plugin as Tether's plugin manager sees it (entry point group ``tether``).

Four hooks, each one side of the protocol: the resource kind nodes publish, the proxy's
front door (an ALPN id, a route name prefix and a target kind: the kernel routes), the
service inside the node agent, and the ``tether echo`` commands.
"""

from __future__ import annotations

import click

from tether.api import Config, ProtocolHandler, ProxyConnection, ResourceKind, TetherError, hookimpl
from tether_echo.agent import PROTOCOL, EchoProtocol, agent_protocols
from tether_echo.cli import ALPN, TITLE, echo_group
from tether_echo.kind import ECHO, ECHO_TARGET

__all__ = [
    "tether_agent_protocols",
    "tether_cli_commands",
    "tether_protocols",
    "tether_resource_kinds",
]

#: The start of echo's route names: ``echo-<hex cluster>-<hex node>.tether.cluster.local``.
SERVER_NAME_PREFIX = "echo"


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """``echo``: the entries nodes serving echo publish on every heartbeat."""
    return [ECHO]


async def refuse(conn: ProxyConnection, error: TetherError) -> None:
    """Say why the proxy refused a connection that asked for a route name: it reads no
    answer line, so this is the only line it gets."""
    await conn.stream.send_all(f"refused: {error}\n".encode())


@hookimpl
def tether_protocols() -> list[ProtocolHandler]:
    """The echo front door: the kernel answers the dial exchange on ``tether-echo/1``, finds
    the node's entry among those the user may see, in this cluster or a leaf, opens a stream
    to it and copies bytes both ways. A client that can only name a server asks for
    ``route_server_name("echo", cluster, node)`` instead, and sends no first line."""
    return [
        ProtocolHandler(
            name=PROTOCOL,
            alpn=(ALPN,),
            target_kind=ECHO_TARGET,
            title=TITLE,
            server_name_prefix=SERVER_NAME_PREFIX,
            refuse=refuse,
        )
    ]


@hookimpl
def tether_agent_protocols(config: Config) -> list[EchoProtocol]:
    """Echo inside the node agent, when ``plugins.settings.echo.enabled``."""
    return agent_protocols(config)


@hookimpl
def tether_cli_commands(program: str, cli: click.Group) -> None:
    """``tether echo ls`` and ``tether echo connect``."""
    if program == "tether":
        cli.add_command(echo_group)
