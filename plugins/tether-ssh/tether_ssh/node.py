"""The node service: this host as an SSH node of a cluster.

Three ways to run, as the guide's nodes do:

* beside the auth service (``ssh_service.enabled: true`` in the same ``tetherd``): the node
  takes its certificates from the auth service in its own process and serves on its
  ``listen_addr``;
* ``tetherd start --roles=node --token=T --auth-server=HOST:PORT`` (direct mode): it joins the
  auth service with the token and serves on its ``listen_addr``; the proxy dials it there;
* ``tetherd start --roles=node --token=T --proxy=HOST:PORT`` (tunnel mode): it joins through
  the proxy and keeps reverse tunnels to every proxy; it needs no inbound port, and the proxy
  reaches it through those tunnels (``⟵ Tunnel`` in ``tether ls``).

The identity obtained by joining is kept in ``data_dir/host`` and reused, so the token is
needed only for the first start. The node then publishes its ``node`` entry on every
heartbeat (an entry not renewed expires), reruns its command labels on their periods, keeps
the cluster's roles, trusted clusters and user CAs as auth pushes them (the trust snapshot
proxies get, through :class:`~tether.proxy.trust_cache.ProxyTrust`), and forwards its audit
events (sessions, refusals) to the auth service.
"""

from __future__ import annotations

import datetime
import logging
import pathlib
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio
from cryptography import x509

import tether
from tether import pki
from tether.auth.http_api import join_result_to_json
from tether.auth.http_client import AuthClient
from tether.config import Config, HostPort
from tether.errors import AccessDenied, ConfigError, TetherError
from tether.node.join import (
    SERVER_KINDS,
    JoinedIdentity,
    keep_renewed,
    load_or_join,
    renew_identity,
    save_identity,
)
from tether.plugins import TetherPluginManager
from tether.proxy.trust_cache import ProxyTrust
from tether.rbac import RoleSet
from tether.resources import Resource, resource_to_dict
from tether.services import Service, ServiceContext
from tether.tlsstream import TLSStream
from tether.trust import ClusterTrust, map_roles, mapped_roles
from tether.tunnel.agent import AgentPool
from tether.tunnel.server import TUNNEL_ALPN
from tether.tunnel.transport import IncomingStream
from tether_ssh.frontdoor import SSH_TARGET
from tether_ssh.inventory import NODE, CommandLabelSpec, NodeSpec
from tether_ssh.server import NodeIdentity, Permissions, open_ssh_server

__all__ = ["HEARTBEAT_INTERVAL", "NodeService", "node_services"]

log = logging.getLogger(__name__)

#: How often the node renews its inventory entry; the entry lives four heartbeats.
HEARTBEAT_INTERVAL = datetime.timedelta(seconds=10)
ENTRY_TTL = 4 * HEARTBEAT_INTERVAL
#: How long a command label's command may run.
COMMAND_TIMEOUT = 30.0
#: Audit events waiting to be sent; beyond this they are logged and dropped, never blocking
#: a session.
AUDIT_BACKLOG = 1000


def _host_id(data_dir: pathlib.Path) -> str:
    """This host's id, created on first start and kept in the data directory."""
    path = data_dir / "host_uuid"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        host_id = str(uuid.uuid4())
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(host_id + "\n")
        return host_id


@attrs.define
class _State:
    """What changes while the node runs: roles, trusted user CAs, labels."""

    cluster: str = ""
    roles: dict[str, Resource] = attrs.field(factory=dict)
    user_cas: dict[str, list[str]] = attrs.field(factory=dict)
    #: the root clusters this (leaf) cluster trusts, by name: their role maps
    trusted: dict[str, Resource] = attrs.field(factory=dict)
    static_labels: dict[str, str] = attrs.field(factory=dict)
    command_labels: dict[str, CommandLabelSpec] = attrs.field(factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        return {
            **self.static_labels,
            **{name: spec.result for name, spec in self.command_labels.items()},
        }


@attrs.frozen
class _Authorizer:
    """RBAC with the roles the node last fetched from auth and its current labels."""

    state: _State
    node_name: str
    pm: TetherPluginManager
    audit: Callable[[str, Mapping[str, Any]], None]

    def _local_roles(self, identity: pki.Identity) -> list[str]:
        """The identity's roles here: its own, or for a root cluster's user the roles its
        roles map to through that trusted_cluster's role_map."""
        if identity.cluster == self.state.cluster:
            return list(identity.roles)
        trusted = self.state.trusted.get(identity.cluster)
        if trusted is None:
            raise AccessDenied(f"cluster {identity.cluster!r} is not trusted here")
        if not trusted.spec.enabled:
            raise AccessDenied(
                f"the trust in root cluster {identity.cluster!r} is disabled on this cluster",
                hint="its administrator sets spec.enabled: true on the trusted_cluster",
            )
        mappings = map_roles(self.pm, trusted.spec.role_map, identity.roles, identity.cluster)
        local = list(mapped_roles(mappings))
        self.audit(
            "trust.login.mapped",
            {
                "user": identity.username,
                "root": identity.cluster,
                "node": self.node_name,
                "remote_roles": list(identity.roles),
                "local_roles": local,
            },
        )
        if not local:
            raise AccessDenied(
                f"no role of {identity.label} ({', '.join(identity.roles) or 'none'}) is "
                f"mapped to a role of this cluster by the role_map of {identity.cluster!r}",
                hint="ask the leaf's administrator to map one of your roles",
            )
        return local

    def authorize(self, identity: pki.Identity, login: str) -> Permissions:
        names = self._local_roles(identity)
        known = [self.state.roles[name] for name in names if name in self.state.roles]
        missing = [name for name in names if name not in self.state.roles]
        if missing:
            # skipped, not a reason to deny everything; said in the log and the audit
            log.warning(
                "ssh: roles %s of %s do not exist here; ignoring them",
                ", ".join(missing),
                identity.label,
            )
            self.audit(
                "trust.role.missing",
                {"user": identity.username, "node": self.node_name, "roles": missing},
            )
        roleset = RoleSet(known)
        roleset.check_login(login, node_labels=self.state.labels, traits=identity.traits)
        return Permissions(
            port_forwarding=roleset.port_forwarding(), forward_agent=roleset.forward_agent()
        )


class NodeService:
    """One node: identity, SSH server, heartbeats and, in tunnel mode, the agent pool."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.config: Config = ctx.config
        ssh = self.config.ssh_service
        self.state = _State(
            static_labels=dict(ssh.labels),
            command_labels={
                label.name: CommandLabelSpec(command=label.command, period=label.period)
                for label in ssh.commands
            },
        )
        self._audit_send, self._audit_receive = trio.open_memory_channel[
            tuple[str, dict[str, Any]]
        ](AUDIT_BACKLOG)
        self.addr = ""  # the address the proxy dials, in direct mode
        self._tunnel_context: ssl.SSLContext | None = None
        self._tunnels: AgentPool | None = None

    @property
    def tunnel_mode(self) -> bool:
        return self.config.join.proxy_server is not None and "auth" not in self.ctx.extras

    # --- identity ------------------------------------------------------------------------

    async def _identity(self, host_id: str) -> JoinedIdentity:
        config = self.config
        auth = self.ctx.extras.get("auth")
        key = pki.generate_private_key()
        addresses = self._addresses()
        if auth is not None:  # beside the auth service: no token, no network
            result = await auth.issue_host_identity(
                role="node",
                host_id=host_id,
                hostname=config.nodename,
                addresses=addresses,
                ssh_public_key=pki.ssh_public_key_line(key.public_key()),
                tls_public_key_pem=pki.public_key_to_pem(key.public_key()).decode(),
            )
            return JoinedIdentity.from_json(join_result_to_json(result), key)
        join = config.join
        server = join.server
        if server is None:
            raise ConfigError(
                "a node without an auth service in its process must join a cluster",
                hint="pass --proxy=HOST:PORT (or --auth-server) and --token=TOKEN",
            )
        return await load_or_join(
            pathlib.Path(config.data_dir) / "host",
            str(server),
            join.token,
            role="node",
            host_id=host_id,
            hostname=config.nodename,
            addresses=addresses,
            ca_pin=join.ca_pin,
            insecure=join.insecure,
        )

    def _addresses(self) -> list[str]:
        """Addresses to name in the host certificate besides the host name."""
        ssh = self.config.ssh_service
        hosts = [ssh.listen_addr.host]
        if ssh.public_addr is not None:
            hosts.append(ssh.public_addr.host)
        return [h for h in dict.fromkeys(hosts) if h and h not in ("0.0.0.0", "::")]

    def _api_url(self) -> str:
        """Where the node reaches the auth API: its own process's auth, the auth server, or
        the proxy (which forwards ``/v1`` requests with the node's certificate)."""
        auth_addr = self.ctx.extras.get("auth_addr")
        if auth_addr:
            return f"https://{auth_addr}"
        server = self.config.join.server
        assert server is not None  # _identity refused to start without one
        return f"https://{server}"

    def _client_context(
        self,
        joined: JoinedIdentity,
        alpn: Sequence[str] = (),
        peer_kinds: Sequence[str] = SERVER_KINDS,
    ) -> ssl.SSLContext:
        """A context for reaching the cluster as this node; the server must hold a
        certificate of ``peer_kinds`` (another node's, from the same CA, is refused)."""
        insecure = self.config.join.insecure and "auth" not in self.ctx.extras
        return pki.client_ssl_context(
            trusted_cas=None if insecure else list(joined.tls_cas),
            cert=joined.tls_cert,
            key=joined.private_key,
            alpn=alpn,
            insecure=insecure,
            peer_kinds=() if insecure else peer_kinds,
        )

    # --- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host_id = await trio.to_thread.run_sync(_host_id, pathlib.Path(self.config.data_dir))
        joined = await self._identity(host_id)
        self.state.cluster = joined.identity.cluster
        self.state.user_cas = {joined.identity.cluster: list(joined.ssh_user_ca_lines)}
        async with (
            AuthClient(self._api_url(), self._client_context(joined)) as api,
            open_ssh_server(
                node=self._node_identity(joined),
                trusted_user_cas=lambda: self.state.user_cas,
                authorizer=_Authorizer(
                    self.state, self.config.nodename, self.ctx.pm, self._queue_audit
                ),
                audit=self._queue_audit,
            ) as server,
            trio.open_nursery() as nursery,
        ):
            initial = ClusterTrust(
                joined.identity.cluster,
                joined.tls_cas,
                ssh_user_cas={joined.identity.cluster: tuple(joined.ssh_user_ca_lines)},
            )
            trust = ProxyTrust(api, self.ctx.pm, initial)
            trust.on_change.append(lambda: self._trust_changed(trust.current))
            await nursery.start(trust.run)
            await self._trust_changed(trust.current)
            if self.tunnel_mode:
                await nursery.start(self._run_tunnels, joined, server)
            else:
                port = await nursery.start(self._listen, server)
                self.addr = self._advertised(port)
            await self._run_commands_once()
            await self._publish(api, host_id)
            nursery.start_soon(self._command_loop)
            nursery.start_soon(self._heartbeat_loop, api, host_id)
            nursery.start_soon(self._audit_loop, api)
            nursery.start_soon(self._renewal_loop, api, host_id, joined, server)
            log.info(
                "node %s (%s) is up in %s mode",
                self.config.nodename,
                host_id,
                "tunnel" if self.tunnel_mode else f"direct mode at {self.addr}",
            )
            task_status.started()

    async def _listen(
        self, server: Any, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listen = self.config.ssh_service.listen_addr
        try:
            await server.listen(listen.host, listen.port, task_status=task_status)
        except OSError as exc:
            raise ConfigError(
                f"ssh_service.listen_addr: cannot listen on {listen}: {exc.strerror or exc}",
                hint="choose a free port or a local address",
            ) from None

    def _advertised(self, port: int) -> str:
        ssh = self.config.ssh_service
        if ssh.public_addr is not None:
            return str(ssh.public_addr)
        host = ssh.listen_addr.host
        if ssh.listen_addr.is_unspecified or not host:
            host = self.config.nodename
        return str(HostPort(host, port))

    async def _run_tunnels(
        self,
        joined: JoinedIdentity,
        server: Any,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        context = self._client_context(joined, alpn=[TUNNEL_ALPN], peer_kinds=("proxy",))
        self._tunnel_context = context  # a renewal replaces the certificate in it
        proxy = self.config.join.proxy_server
        assert proxy is not None

        async def dial(addr: str) -> trio.abc.Stream:
            target = HostPort.parse(addr)
            return await TLSStream.connect(
                target.connect_host, target.port, context, server_hostname=target.connect_host
            )

        async def handle_stream(request: IncomingStream) -> None:
            if request.target != SSH_TARGET:
                request.reject(f"this node serves only {SSH_TARGET!r}")
                return
            peer = request.metadata.get("client", "the proxy")
            await server.serve_stream(request.accept(), peer=peer)

        pool = AgentPool(
            cluster=joined.identity.cluster,
            tunnel_addr=str(proxy),
            dial=dial,
            handle_stream=handle_stream,
        )
        self._tunnels = pool  # a renewal moves it to new tunnels
        await pool.run(task_status=task_status)

    def _node_identity(self, joined: JoinedIdentity) -> NodeIdentity:
        return NodeIdentity(
            host_key=joined.private_key,
            host_cert=joined.ssh_host_cert,
            node_name=self.config.nodename,
            labels=self.state.labels,
        )

    async def _renewal_loop(
        self, api: AuthClient, host_id: str, joined: JoinedIdentity, server: Any
    ) -> None:
        """Renew the node's certificates once two thirds of their lifetime have passed, and
        present the new ones from then on: to new connections, and through new tunnels, which
        replace the old ones (sessions running through those finish there)."""

        async def renew() -> x509.Certificate:
            renewed = await self._renewed(api)
            await api.present_certificate(renewed.tls_cert, renewed.private_key)
            if self._tunnel_context is not None:
                pki.present_certificate(self._tunnel_context, renewed.tls_cert, renewed.private_key)
            if self._tunnels is not None:  # the proxy closes tunnels whose certificate expired
                self._tunnels.replace_tunnels("the node renewed its certificate")
            server.update(node=self._node_identity(renewed))
            return renewed.tls_cert

        await keep_renewed(f"node {host_id}", joined.tls_cert, renew)

    async def _renewed(self, api: AuthClient) -> JoinedIdentity:
        joined = await renew_identity(
            api, hostname=self.config.nodename, addresses=self._addresses()
        )
        if "auth" not in self.ctx.extras:  # beside auth, a node gets a new one at each start
            directory = pathlib.Path(self.config.data_dir) / "host"
            await trio.to_thread.run_sync(save_identity, directory, joined)
        return joined

    # --- keeping up to date --------------------------------------------------------------

    async def _trust_changed(self, trust: ClusterTrust) -> None:
        """Take the cluster's roles, trusted roots and active user CAs from the snapshot auth
        pushed (a disabled trust's root CA is not among them)."""
        self.state.roles = dict(trust.roles)
        self.state.trusted = {name: root.trusted_cluster for name, root in trust.roots.items()}
        self.state.user_cas = {name: list(lines) for name, lines in trust.ssh_user_cas.items()}

    def _entry(self, host_id: str) -> dict[str, Any]:
        spec = NodeSpec(
            hostname=self.config.nodename,
            addr="" if self.tunnel_mode else self.addr,
            use_tunnel=self.tunnel_mode,
            cmd_labels=dict(self.state.command_labels),
            version=tether.__version__,
        )
        return resource_to_dict(NODE.new(host_id, spec, labels=self.state.labels))

    async def _publish(self, api: AuthClient, host_id: str) -> None:
        await api.publish(self._entry(host_id), ENTRY_TTL)

    async def _heartbeat_loop(self, api: AuthClient, host_id: str) -> None:
        while True:
            await trio.sleep(HEARTBEAT_INTERVAL.total_seconds())
            try:
                await self._publish(api, host_id)
            except (TetherError, OSError) as exc:
                log.warning("node: heartbeat to auth failed: %s", exc)

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
        self.state.command_labels[name] = attrs.evolve(spec, result=result)

    async def _run_commands_once(self) -> None:
        async with trio.open_nursery() as nursery:
            for name, spec in self.state.command_labels.items():
                nursery.start_soon(self._run_command, name, spec)

    async def _command_loop(self) -> None:
        async def every(name: str, period: float) -> None:
            while True:
                await trio.sleep(period)
                await self._run_command(name, self.state.command_labels[name])

        async with trio.open_nursery() as nursery:
            for name, spec in self.state.command_labels.items():
                nursery.start_soon(every, name, spec.period.total_seconds())

    # --- audit ---------------------------------------------------------------------------

    def _queue_audit(self, event_type: str, fields: Mapping[str, Any]) -> None:
        try:
            self._audit_send.send_nowait((event_type, dict(fields)))
        except trio.WouldBlock:
            log.warning("node: audit backlog full; dropped %s %s", event_type, dict(fields))

    async def _audit_loop(self, api: AuthClient) -> None:
        async for event_type, fields in self._audit_receive:
            user = str(fields.pop("user", "") or "")
            success = event_type != "ssh.denied"
            try:
                await api.record_event(event_type, user, fields, success=success)
            except (TetherError, OSError) as exc:
                log.warning("node: cannot record audit event %s: %s", event_type, exc)


def node_services(ctx: ServiceContext) -> list[Service]:
    """The node service when ``ssh_service.enabled`` (``--roles=node``)."""
    if not ctx.config.ssh_service.enabled:
        return []
    node = NodeService(ctx)
    return [Service(name="ssh node", run=node.run)]
