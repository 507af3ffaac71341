"""The ``echo`` plugin as Tether's plugin manager sees it (entry point group ``tether``).

Four hooks, each one side of the protocol: the resource kind nodes publish, the proxy's
front door (an ALPN id, a route name prefix and a target kind: the kernel routes), the
service inside the node agent, and the ``tether echo`` commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.api import hookimpl

if TYPE_CHECKING:  # every command-line start loads this module: each hook imports its own
    from tether.api import Config, ProtocolHandler, ProxyConnection, ResourceKind, TetherError
    from tether_echo.agent import EchoProtocol

__all__ = [
    "tether_agent_protocols",
    "tether_cli_lazy_commands",
    "tether_protocols",
    "tether_resource_kinds",
]

#: The start of echo's route names: ``echo-<hex cluster>-<hex node>.tether.cluster.local``.
SERVER_NAME_PREFIX = "echo"


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """``echo``: the entries nodes serving echo publish on every heartbeat."""
    from tether_echo.kind import ECHO

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
    from tether.api import ProtocolHandler
    from tether_echo.cli import ALPN, TITLE
    from tether_echo.kind import ECHO_TARGET, PROTOCOL

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
    from tether_echo.agent import agent_protocols

    return agent_protocols(config)


@hookimpl
def tether_cli_lazy_commands(program: str) -> dict[str, str]:
    """``tether echo ls`` and ``tether echo connect``, imported when named."""
    return {"echo": "tether_echo.cli:echo_group"} if program == "tether" else {}
