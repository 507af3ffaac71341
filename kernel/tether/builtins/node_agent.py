"""Builtin plugin ``node-agent``: the node agent, when a protocol plugin serves on this host.

Registered through ``tether_services`` like any plugin's service, so a daemon with no
protocol to serve (``tether_agent_protocols`` returns nothing) runs no agent and joins nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.hookspecs import hookimpl

if TYPE_CHECKING:  # every command-line start registers the builtins: they import when called
    from tether.services import Service, ServiceContext

__all__ = ["tether_services"]


@hookimpl
def tether_services(ctx: ServiceContext) -> list[Service]:
    """The node agent serving every protocol plugins declared for this host."""
    from tether.node.agent import agent_services  # the tunnel and auth client: only in tetherd

    return agent_services(ctx)
