"""The ``ssh`` plugin as Tether's plugin manager sees it (entry point group ``tether``).

It uses only the public hooks, like any third-party protocol plugin: the ``node`` resource
kind, the proxy's SSH front door (ALPN ``tether-ssh/1``), the SSH server a node's agent runs,
and the client commands ``tether ssh``, ``ls``, ``scp``, ``config`` and ``proxy ssh``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.api import hookimpl

if TYPE_CHECKING:  # every command-line start loads this module: each hook imports its own
    from tether.api import (
        AgentProtocol,
        Config,
        ConfigSection,
        ProtocolHandler,
        ResourceKind,
        ServiceRole,
    )

__all__ = [
    "tether_agent_protocols",
    "tether_cli_lazy_commands",
    "tether_config_sections",
    "tether_protocols",
    "tether_resource_kinds",
    "tether_service_roles",
]


@hookimpl
def tether_config_sections() -> list[ConfigSection]:
    """``ssh_service:``, where Teleport's configuration has it."""
    from tether_ssh.config import SECTION

    return [SECTION]


@hookimpl
def tether_service_roles() -> list[ServiceRole]:
    """``node``: ``tetherd start --roles=node`` runs ``ssh_service``."""
    from tether_ssh.config import SERVICE_ROLE

    return [SERVICE_ROLE]


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """``node``: the inventory entries nodes publish on every heartbeat."""
    from tether_ssh.inventory import NODE

    return [NODE]


@hookimpl
def tether_protocols() -> list[ProtocolHandler]:
    """The SSH front door on the proxy's public port."""
    from tether_ssh.frontdoor import protocol_handler  # the proxy's side: only in tetherd

    return [protocol_handler()]


@hookimpl
def tether_agent_protocols(config: Config) -> list[AgentProtocol]:
    """SSH inside the node agent, when this host is a node (``ssh_service.enabled``)."""
    from tether_ssh.agent import agent_protocols  # asyncssh and the server: only in tetherd

    return list(agent_protocols(config))


@hookimpl
def tether_cli_lazy_commands(program: str) -> dict[str, str]:
    """``tether ssh``, ``ls``, ``scp``, ``config`` and ``proxy ssh``: ``tether ssh`` imports
    the module of the session commands alone."""
    if program != "tether":
        return {}
    return {
        "ssh": "tether_ssh.cli:ssh",
        "scp": "tether_ssh.cli:scp",
        "ls": "tether_ssh.cli:ls",
        "config": "tether_ssh.cli:config_command",
        "proxy ssh": "tether_ssh.cli:proxy_ssh",
    }
