"""The echo service a node serves inside the kernel's node agent.

The agent joins the cluster, renews the host's certificates, keeps the tunnels, publishes
:meth:`EchoProtocol.resources` on every heartbeat, and hands :meth:`EchoProtocol.serve` each
stream a proxy opened to ``echo``, with the user's certificate already verified against the
cluster's trust and its roles mapped (a root's user gets the leaf's roles). What is left to
the plugin is its own decision: the node checks the mapped roles' ``node_labels`` against its
labels itself (a proxy showed the user this node by the labels auth had; the node is the
authority on its own), then greets the user by the identity it received and echoes.

Settings (``tether.yaml``)::

    plugins:
      settings:
        echo:
          enabled: true
          labels: {env: dev}
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import trio

from tether.api import AgentContext, AgentStream, Config, ConfigError, Resource
from tether_echo.kind import ECHO, PROTOCOL, EchoSpec
from tether_echo.wire import Hello, hello_line, refused_line

__all__ = ["EchoProtocol", "agent_protocols"]

log = logging.getLogger(__name__)

VERSION = "0.1.0"


def _labels(settings: Mapping[str, Any]) -> dict[str, str]:
    labels = settings.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ConfigError(
            "plugins.settings.echo.labels must map names to strings", hint="labels: {env: dev}"
        )
    return dict(labels)


class EchoProtocol:
    """This host's echo service: the agent protocol named ``echo``."""

    name = PROTOCOL
    host_role = "Node"  # served on nodes: the host joins with a node token
    needs_identity = True  # the echo greets and checks the user the agent verified

    def __init__(self, nodename: str, labels: Mapping[str, str]) -> None:
        self.nodename = nodename
        self.labels = dict(labels)
        self._agent: AgentContext | None = None

    def addresses(self) -> Iterable[str]:
        return []  # reached only through the node's tunnel: no address to certify

    async def run(
        self, agent: AgentContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if not agent.tunnel_mode:
            raise ConfigError(
                "plugins.settings.echo: the echo example is served only through the node's tunnels",
                hint="start the node with --proxy=HOST:PORT and no auth service",
            )
        self._agent = agent
        task_status.started()

    def resources(self) -> Iterable[Resource]:
        assert self._agent is not None  # run() started first
        spec = EchoSpec(hostname=self.nodename, version=VERSION)
        return [ECHO.new(self._agent.host_id, spec, labels=self.labels)]

    async def serve(self, stream: AgentStream) -> None:
        assert self._agent is not None  # run() started first
        # a client that goes away ends its session; the agent closes the stream
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._serve(self._agent, stream)

    async def _serve(self, agent: AgentContext, stream: AgentStream) -> None:
        reason = self._refusal(stream)
        fields = {"protocol": PROTOCOL, "node": self.nodename, "client": stream.client}
        if reason:
            who = stream.identity.username if stream.identity else ""
            agent.audit("echo.session.denied", {**fields, "user": who, "reason": reason})
            log.info("echo: refused %s: %s", stream.client, reason)
            await stream.stream.send_all(refused_line(reason))
            return
        identity = stream.identity
        assert identity is not None  # _refusal said so
        agent.audit("echo.session.start", {**fields, "user": identity.username})
        hello = Hello(
            node=self.nodename,
            user=identity.username,
            cluster=identity.cluster,
            roles=tuple(identity.roles),
        )
        await stream.stream.send_all(hello_line(hello))
        while data := await stream.stream.receive_some():
            await stream.stream.send_all(data)

    def _refusal(self, stream: AgentStream) -> str:
        """Why this stream may not be served, or ``""``."""
        if stream.identity is None or stream.roles is None:
            return "the proxy forwarded no user certificate"
        if not stream.roles.can_access("node_labels", self.labels, stream.identity.traits):
            shown = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "(none)"
            return (
                f"the node_labels of roles {', '.join(stream.identity.roles)} do not match "
                f"echo {self.nodename!r} (labels {shown})"
            )
        return ""


def agent_protocols(config: Config) -> list[EchoProtocol]:
    """Echo on this host when ``plugins.settings.echo.enabled`` is true."""
    settings = config.plugins.settings_for("echo")
    enabled = settings.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError("plugins.settings.echo.enabled must be true or false")
    return [EchoProtocol(config.nodename, _labels(settings))] if enabled else []
