"""The SSH protocol a node serves inside the kernel's node agent (:mod:`tether.node.agent`).

The agent joins, renews, keeps the tunnels, the heartbeats, the audit forwarding and the
trust; this module is only what is SSH: the asyncssh server (:mod:`tether_ssh.server`), its
direct-mode listener on ``ssh_service.listen_addr``, the ``node`` inventory entry it publishes
(host name, address, tunnel mode, labels) and the command labels that feed it.

Command labels stay here rather than in the kernel: they are configured under
``ssh_service.commands`` and published on the SSH plugin's ``node`` kind, which no other
protocol shares; a protocol that wants labels of its own (a database's ``db`` entry) has
its own section. Should labels become one set per host for every protocol, they move to the
agent with the config section that holds them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import attrs
import trio

from tether.api import (
    AgentContext,
    AgentStream,
    Config,
    ConfigError,
    HostPort,
    Identity,
    Resource,
    RoleSet,
    __version__,
)
from tether_ssh.config import SshServiceConfig
from tether_ssh.frontdoor import SSH_TARGET
from tether_ssh.inventory import NODE, CommandLabelSpec, NodeSpec
from tether_ssh.server import (
    NodeIdentity,
    Permissions,
    RoleSetAuthorizer,
    SSHServer,
    open_ssh_server,
)

__all__ = ["COMMAND_TIMEOUT", "SSHProtocol"]

log = logging.getLogger(__name__)

#: How long a command label's command may run.
COMMAND_TIMEOUT = 30.0


@attrs.frozen
class _Authorizer:
    """The node's RBAC with the agent's trust decision and the node's current labels."""

    agent: AgentContext
    node_name: str
    labels: Callable[[], Mapping[str, str]]

    def authorize(self, identity: Identity, login: str) -> Permissions:
        def roles_for(who: Identity) -> RoleSet:
            return self.agent.roles_for(who, node=self.node_name)

        return RoleSetAuthorizer(roles_for, self.labels()).authorize(identity, login)


class SSHProtocol:
    """This host as an SSH node: the agent protocol named ``ssh``."""

    name = SSH_TARGET
    #: a node joins with a ``node`` token (``tetherctl tokens add --type=node``)
    host_role = "Node"
    #: the user's SSH certificate, checked by the server, is the identity: the forwarded
    #: X.509 one would be verified and its login audited twice
    needs_identity = False

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ssh = ssh = config.section(SshServiceConfig)
        self.static_labels = dict(ssh.labels)
        self.command_labels = {
            label.name: CommandLabelSpec(command=label.command, period=label.period)
            for label in ssh.commands
        }
        self.addr = ""  # the address the proxy dials, in direct mode
        self._agent: AgentContext | None = None
        self._server: SSHServer | None = None

    @property
    def labels(self) -> dict[str, str]:
        return {
            **self.static_labels,
            **{name: spec.result for name, spec in self.command_labels.items()},
        }

    def addresses(self) -> list[str]:
        ssh = self.ssh
        hosts = [ssh.listen_addr.host]
        if ssh.public_addr is not None:
            hosts.append(ssh.public_addr.host)
        return hosts

    def _node_identity(self, agent: AgentContext) -> NodeIdentity:
        return NodeIdentity(
            host_key=agent.credentials.key,
            host_cert=agent.credentials.ssh_host_cert,
            node_name=self.config.nodename,
            labels=self.labels,
        )

    async def run(
        self, agent: AgentContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._agent = agent
        authorizer = _Authorizer(agent, self.config.nodename, lambda: self.labels)
        async with (
            open_ssh_server(
                node=self._node_identity(agent),
                trusted_user_cas=agent.ssh_user_cas,
                authorizer=authorizer,
                audit=agent.audit,
            ) as server,
            trio.open_nursery() as nursery,
        ):
            self._server = server
            agent.on_renewal(lambda _: server.update(node=self._node_identity(agent)))
            if not agent.tunnel_mode:
                port = await nursery.start(self._listen, server)
                self.addr = self._advertised(port)
            await self._run_commands_once()
            nursery.start_soon(self._command_loop)
            task_status.started()
            await trio.sleep_forever()  # the server serves tunnelled streams until cancelled

    def resources(self) -> Iterable[Resource]:
        assert self._agent is not None  # run() started first
        spec = NodeSpec(
            hostname=self.config.nodename,
            addr="" if self._agent.tunnel_mode else self.addr,
            use_tunnel=self._agent.tunnel_mode,
            cmd_labels=dict(self.command_labels),
            version=__version__,
        )
        return [NODE.new(self._agent.host_id, spec, labels=self.labels)]

    async def serve(self, stream: AgentStream) -> None:
        assert self._server is not None  # run() started first
        await self._server.serve_stream(stream.stream, peer=stream.client)

    # --- direct mode ---------------------------------------------------------------------

    async def _listen(
        self, server: SSHServer, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listen = self.ssh.listen_addr
        try:
            await server.listen(listen.host, listen.port, task_status=task_status)
        except OSError as exc:
            raise ConfigError(
                f"ssh_service.listen_addr: cannot listen on {listen}: {exc.strerror or exc}",
                hint="choose a free port or a local address",
            ) from None

    def _advertised(self, port: int) -> str:
        ssh = self.ssh
        if ssh.public_addr is not None:
            return str(ssh.public_addr)
        host = ssh.listen_addr.host
        if ssh.listen_addr.is_unspecified or not host:
            host = self.config.nodename
        return str(HostPort(host, port))

    # --- command labels ------------------------------------------------------------------

    async def _run_command(self, name: str, spec: CommandLabelSpec) -> None:
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                done = await trio.run_process(
                    list(spec.command), capture_stdout=True, capture_stderr=True, check=False
                )
        except (OSError, trio.TooSlowError) as exc:
            log.warning("node: command label %s (%s) failed: %s", name, spec.command[0], exc)
            result = ""
        else:
            if done.returncode != 0:
                log.warning(
                    "node: command label %s exited with %d: %s",
                    name,
                    done.returncode,
                    done.stderr.decode(errors="replace").strip()[:200],
                )
            result = done.stdout.decode(errors="replace").strip()
        self.command_labels[name] = attrs.evolve(spec, result=result)

    async def _run_commands_once(self) -> None:
        async with trio.open_nursery() as nursery:
            for name, spec in self.command_labels.items():
                nursery.start_soon(self._run_command, name, spec)

    async def _command_loop(self) -> None:
        async def every(name: str, period: float) -> None:
            while True:
                await trio.sleep(period)
                await self._run_command(name, self.command_labels[name])

        async with trio.open_nursery() as nursery:
            for name, spec in self.command_labels.items():
                nursery.start_soon(every, name, spec.period.total_seconds())


def agent_protocols(config: Config) -> list[SSHProtocol]:
    """SSH on this host when ``ssh_service.enabled`` (``--roles=node``)."""
    return [SSHProtocol(config)] if config.section(SshServiceConfig).enabled else []
