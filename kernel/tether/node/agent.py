"""The node agent: this host as a member of a cluster, whatever protocols it serves.

Every protocol plugin that serves on a host (SSH today; databases and Kubernetes later) runs
inside this one agent, which does what each would otherwise copy:

* identity: the host id (``data_dir/host_uuid``, created once), and certificates from the
  auth service in the same process, or by joining with a token (``--token`` with
  ``--auth-server`` or ``--proxy``), kept in ``data_dir/host`` and reused, so the token is
  needed only for the first start; the certificates carry the host roles of the protocols it
  runs (``AgentProtocol.host_role``), which the token must allow;
* renewal of those certificates at two thirds of their lifetime (:func:`keep_renewed`), handed
  to the protocols and to the tunnels, which are replaced;
* in tunnel mode (``--proxy`` without an auth service here), reverse tunnels to every proxy:
  the host needs no inbound port; each stream a proxy opens names a protocol (the mux target),
  which the agent hands to that protocol, the user's certificate verified first when the proxy
  forwarded it. In direct mode each protocol listens on its own address;
* heartbeats of the inventory entries each protocol publishes, each on its own (an entry not
  renewed expires; one auth refuses is logged and tried again at the next heartbeat); in
  tunnel mode they ride in the tunnel's own heartbeats once a proxy says it relays them
  (its proxy relays them to auth, batched with its other nodes'), so that the tunnel is
  the one connection the node holds open;
* the cluster's trust and roles (:class:`~tether.trust.cache.TrustCache`, the snapshot proxies
  hold) and the one trust decision over it;
* audit forwarding to the auth service in batches, through a bounded backlog that never
  blocks a session and loses nothing on the way (:mod:`~tether.node.audit_forwarding`);
* certificates signed by the CAs plugins declare, through the agent's auth client
  (:meth:`~tether.node.protocols.AgentContext.sign_certificate`).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import pathlib
import ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio

from tether import pki
from tether.auth.http_api import join_result_to_json
from tether.auth.http_client import AuthClient
from tether.config import Config, HostPort
from tether.dial import refusal_reason
from tether.errors import AccessDenied, ConfigError, PluginError, TetherError, TrustError
from tether.node.audit_forwarding import AUDIT_BACKLOG, AuditBacklog
from tether.node.audit_spool import AUDIT_SPOOL_FILE, AuditSpool
from tether.node.join import (
    SERVER_KINDS,
    JoinedIdentity,
    host_client_context,
    keep_renewed,
    load_or_join_first_reachable,
    renew_and_save,
)
from tether.node.protocols import AgentContext, AgentProtocol, AgentStream, HostCredentials
from tether.rbac import RoleSet
from tether.resources import resource_to_dict
from tether.services import HostIssuer, Service, ServiceContext
from tether.tlsstream import TLSStream
from tether.trust import ClusterTrust
from tether.trust.cache import TrustCache
from tether.tunnel.agent import AgentPool
from tether.tunnel.server import TUNNEL_ALPN
from tether.tunnel.transport import NODE_HEARTBEAT_INTERVAL, IncomingStream, KeepAlive

__all__ = ["AUDIT_BACKLOG", "ENTRY_TTL", "HEARTBEAT_INTERVAL", "NodeAgent", "agent_services"]

log = logging.getLogger(__name__)

#: How often a node joined to auth directly renews its inventory entries over HTTPS; an entry
#: lives four heartbeats, since their expiry is all that unlists such a node when it goes.
#: Through a tunnel, a node heartbeats at the cluster's keep-alive, which its proxy names in
#: the hello; its entries live that keep-alive's dead time and a margin
#: (:attr:`tether.tunnel.transport.KeepAlive.entry_ttl`), and its proxy removes them when its
#: tunnel closes.
HEARTBEAT_INTERVAL = datetime.timedelta(seconds=NODE_HEARTBEAT_INTERVAL)
ENTRY_TTL = 4 * HEARTBEAT_INTERVAL


def host_id(data_dir: pathlib.Path) -> str:
    """This host's id, created on first start and kept in the data directory."""
    path = data_dir / "host_uuid"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        new_id = str(uuid.uuid4())
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(new_id + "\n")
        return new_id


def _credentials(joined: JoinedIdentity) -> HostCredentials:
    return HostCredentials(
        key=joined.private_key, ssh_host_cert=joined.ssh_host_cert, tls_cert=joined.tls_cert
    )


class NodeAgent:
    """One host's agent, serving ``protocols``.

    :param ctx: the daemon; its ``local_auth`` (an auth service in this process) and
        ``auth_addr`` are read here, and never handed to the protocols.
    """

    def __init__(self, ctx: ServiceContext, protocols: Sequence[AgentProtocol]) -> None:
        self.ctx = ctx
        self.config: Config = ctx.config
        self.protocols = {protocol.name: protocol for protocol in protocols}
        #: the host roles this host joins with: its protocols'
        self.host_roles = _host_roles(protocols)
        spool = AuditSpool(pathlib.Path(self.config.data_dir) / AUDIT_SPOOL_FILE)
        self._audit = AuditBacklog(AUDIT_BACKLOG, spool=spool)
        self._tunnel_context: ssl.SSLContext | None = None
        self._tunnels: AgentPool | None = None

    @property
    def _local_auth(self) -> HostIssuer | None:
        return self.ctx.local_auth

    @property
    def tunnel_mode(self) -> bool:
        return self.config.join.proxy_server is not None and self._local_auth is None

    # --- identity ------------------------------------------------------------------------

    def _addresses(self) -> list[str]:
        """Addresses to name in the host certificate besides the host name: the protocols'."""
        hosts = [host for protocol in self.protocols.values() for host in protocol.addresses()]
        return [h for h in dict.fromkeys(hosts) if h and h not in ("0.0.0.0", "::")]

    async def _identity(self, host: str) -> JoinedIdentity:
        config = self.config
        auth = self._local_auth
        key = pki.generate_private_key()
        if auth is not None:  # beside the auth service: no token, no network
            result = await auth.issue_host_identity(
                role="node",
                roles=self.host_roles,
                host_id=host,
                hostname=config.nodename,
                addresses=self._addresses(),
                ssh_public_key=pki.ssh_public_key_line(key.public_key()),
                tls_public_key_pem=pki.public_key_to_pem(key.public_key()).decode(),
            )
            return JoinedIdentity.from_json(join_result_to_json(result), key)
        join = config.join
        if join.server is None:
            raise ConfigError(
                "a node without an auth service in its process must join a cluster",
                hint="pass --proxy=HOST:PORT (or --auth-server) and --token=TOKEN",
            )
        # in direct mode, every auth server in turn: the first may be down for good
        servers = [join.proxy_server] if join.proxy_server else list(join.auth_addresses)
        return await load_or_join_first_reachable(
            pathlib.Path(config.data_dir) / "host",
            [str(server) for server in servers],
            join.token,
            role="node",
            host_id=host,
            hostname=config.nodename,
            addresses=self._addresses(),
            ca_pin=join.ca_pin,
            insecure=join.insecure,
            auth_urls=self._api_urls(),
            roles=self.host_roles,
        )

    def _api_urls(self) -> list[str]:
        """Where the agent reaches the auth API: its own process's auth, the auth servers
        (it fails over between them, as a proxy does), or the proxy (which forwards ``/v1``
        requests with the host's certificate)."""
        auth_addr = self.ctx.auth_addr
        if auth_addr:
            return [f"https://{auth_addr}"]
        join = self.config.join
        servers = [join.proxy_server] if join.proxy_server else list(join.auth_addresses)
        assert servers  # _identity refused to start without one
        return [f"https://{server}" for server in servers]

    def _client_context(
        self,
        joined: JoinedIdentity,
        alpn: Sequence[str] = (),
        peer_kinds: Sequence[str] = SERVER_KINDS,
    ) -> ssl.SSLContext:
        """A context for reaching the cluster as this host; the server must hold a
        certificate of ``peer_kinds`` (another node's, from the same CA, is refused)."""
        insecure = self.config.join.insecure and self._local_auth is None
        return host_client_context(joined, alpn=alpn, peer_kinds=peer_kinds, insecure=insecure)

    def _identity_dir(self) -> pathlib.Path | None:
        """Where the joined identity is kept; beside auth, a node gets a new one at each
        start and keeps none."""
        if self._local_auth is not None:
            return None
        return pathlib.Path(self.config.data_dir) / "host"

    # --- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host = await trio.to_thread.run_sync(host_id, pathlib.Path(self.config.data_dir))
        joined = await self._identity(host)
        cluster = joined.identity.cluster
        initial = ClusterTrust(
            cluster, joined.tls_cas, ssh_user_cas={cluster: joined.ssh_user_ca_lines}
        )
        agent: AgentContext | None = None

        async def handle_stream(request: IncomingStream) -> None:
            assert agent is not None  # the tunnels start after it is made
            await self.handle_stream(request, agent)

        # in tunnel mode, the tunnels carry the trust and the heartbeats as well: the node's
        # one connection to its cluster
        pool = self._tunnel_pool(joined, handle_stream) if self.tunnel_mode else None
        async with (
            AuthClient(self._api_urls(), self._client_context(joined)) as api,
            trio.open_nursery() as nursery,
        ):
            trust = TrustCache(api, self.ctx.pm, initial, tunnel=pool)
            await nursery.start(trust.run)
            agent = AgentContext(
                config=self.config,
                host_id=host,
                cluster_name=cluster,
                tunnel_mode=self.tunnel_mode,
                credentials=_credentials(joined),
                audit=self._queue_audit,
                pm=self.ctx.pm,
                trust=lambda: trust.current,
                record=self._audit.record,
                auth=api,
            )
            for protocol in self.protocols.values():
                await nursery.start(protocol.run, agent)
            if pool is not None:
                await nursery.start(pool.run)
            await self._publish(api, at_start=True)
            nursery.start_soon(self._heartbeat_loop, api)
            nursery.start_soon(self._audit_loop, api)
            nursery.start_soon(self._renewal_loop, api, host, joined, agent)
            log.info(
                "node %s (%s) is up in %s mode, serving %s",
                self.config.nodename,
                host,
                "tunnel" if self.tunnel_mode else "direct",
                ", ".join(self.protocols),
            )
            task_status.started()

    def _tunnel_pool(
        self, joined: JoinedIdentity, handle_stream: Callable[[IncomingStream], Awaitable[None]]
    ) -> AgentPool:
        """The tunnels to every proxy (started once the protocols serve)."""
        context = self._client_context(joined, alpn=[TUNNEL_ALPN], peer_kinds=("proxy",))
        self._tunnel_context = context  # a renewal replaces the certificate in it
        proxy = self.config.join.proxy_server
        assert proxy is not None

        async def dial(addr: str) -> trio.abc.Stream:
            target = HostPort.parse(addr)
            return await TLSStream.connect(
                target.connect_host, target.port, context, server_hostname=target.connect_host
            )

        pool = AgentPool(
            cluster=joined.identity.cluster,
            tunnel_addr=str(proxy),
            dial=dial,
            handle_stream=handle_stream,
            inventory=self._inventory,
        )
        self._tunnels = pool  # a renewal moves it to new tunnels
        return pool

    async def handle_stream(self, request: IncomingStream, agent: AgentContext) -> None:
        """Hand a stream a proxy opened to the protocol it names (the mux target), with the
        forwarded user certificate, if any, verified and role-mapped first; a refusal is
        audited as ``node.stream.denied``, as the SSH server audits ``ssh.denied``, and says
        why as the error it is (:func:`~tether.dial.refusal_reason`), which reaches the user
        through the proxies as the same class."""
        protocol = self.protocols.get(request.target)
        if protocol is None:
            served = ", ".join(repr(name) for name in sorted(self.protocols)) or "nothing"
            refused = TetherError(
                f"this node serves no protocol {request.target!r}; it serves {served}"
            )
            request.reject(refusal_reason(refused))
            return
        metadata = request.metadata
        client = metadata.get("client") or "the proxy"
        identity: pki.Identity | None = None
        roles: RoleSet | None = None
        if protocol.needs_identity and metadata.get("user_cert"):
            try:
                identity, roles = self._verify_user(metadata["user_cert"], agent)
            except TetherError as exc:
                log.warning("node: refused a %s stream from %s: %s", protocol.name, client, exc)
                fields = {"protocol": protocol.name, "node": self.config.nodename}
                self._queue_audit(
                    "node.stream.denied", {**fields, "peer": client, "reason": exc.message}
                )
                request.reject(refusal_reason(exc))
                return
        stream = AgentStream(
            stream=request.accept(),
            client=client,
            target=metadata.get("target", ""),
            resolved=str(metadata.get("resolved") or ""),
            identity=identity,
            roles=roles,
        )
        await protocol.serve(stream)

    def _verify_user(self, cert_b64: str, agent: AgentContext) -> tuple[pki.Identity, RoleSet]:
        """The forwarded user certificate, verified with the cluster's trust: the identity
        with its local roles, and those roles."""
        try:
            der = base64.b64decode(cert_b64, validate=True)
        except (binascii.Error, ValueError):
            raise TrustError("the forwarded user certificate is not base64") from None
        trust = agent.trust
        where = {"node": self.config.nodename}
        identity = trust.verify_client(
            der, pm=self.ctx.pm, now=agent.now(), audit=self._queue_audit, where=where
        )
        if identity.kind != "user":
            raise AccessDenied(f"{identity.label} is not a user")
        roles = trust.role_set(
            identity.roles, identity=identity, audit=self._queue_audit, where=where
        )
        return identity, roles

    async def _renewal_loop(
        self, api: AuthClient, host: str, joined: JoinedIdentity, agent: AgentContext
    ) -> None:
        """Renew the host's certificates once two thirds of their lifetime have passed, and
        present the new ones from then on: to new connections, and through new tunnels, which
        replace the old ones (sessions running through those finish there)."""

        async def renew() -> Any:
            renewed = await self._renewed(api)
            await api.present_certificate(renewed.tls_cert, renewed.private_key)
            if self._tunnel_context is not None:
                pki.present_certificate(self._tunnel_context, renewed.tls_cert, renewed.private_key)
            if self._tunnels is not None:  # the proxy closes tunnels whose certificate expired
                self._tunnels.replace_tunnels("the node renewed its certificate")
            agent.renewed(_credentials(renewed))
            return renewed.tls_cert

        await keep_renewed(f"node {host}", joined.tls_cert, renew)

    async def _renewed(self, api: AuthClient) -> JoinedIdentity:
        return await renew_and_save(
            api, self._identity_dir(), hostname=self.config.nodename, addresses=self._addresses()
        )

    # --- heartbeats ----------------------------------------------------------------------

    async def _publish(self, api: AuthClient, *, at_start: bool = False) -> None:
        """Publish every entry of every protocol, each on its own: an entry auth refuses (a
        name another live host serves) is logged, and the others are still published.

        :param at_start: the first heartbeat, before the host says it is up: when auth
            refuses every entry (the host would serve nothing: an address that is the
            proxy's, names other hosts serve), start-up stops with the first reason, for the
            operator to fix; when some get through, the host serves those.
        """
        published, refused = 0, []
        for protocol in self.protocols.values():
            for resource in protocol.resources():
                try:
                    await api.publish(resource_to_dict(resource), ENTRY_TTL)
                    published += 1
                except AccessDenied as exc:
                    refused.append(exc)
                    log.warning(
                        "node: auth refused %s %r: %s",
                        resource.kind,
                        resource.metadata.name,
                        exc,
                    )
        if at_start and refused and not published:
            raise refused[0]

    def _inventory(self) -> dict[str, Any]:
        """Every entry of every protocol, for a tunnel's heartbeat (its proxy relays them),
        living as long as the cluster's keep-alive says."""
        keep_alive = self._tunnels.keep_alive() if self._tunnels is not None else KeepAlive()
        return {
            "ttl": keep_alive.entry_ttl,
            "entries": [
                resource_to_dict(resource)
                for protocol in self.protocols.values()
                for resource in protocol.resources()
            ],
        }

    async def _heartbeat_loop(self, api: AuthClient) -> None:
        while True:
            await trio.sleep(HEARTBEAT_INTERVAL.total_seconds())
            if self._tunnels is not None and self._tunnels.relays_inventory():
                continue  # the tunnel's heartbeats carry them: one connection, batched
            try:
                await self._publish(api)
            except (TetherError, OSError) as exc:
                log.warning("node: heartbeat to auth failed: %s", exc)

    # --- audit ---------------------------------------------------------------------------

    def _queue_audit(self, event_type: str, fields: Mapping[str, Any]) -> None:
        self._audit.audit_nowait(event_type, fields)

    async def _audit_loop(self, api: AuthClient) -> None:
        await self._audit.forward(api.record_events)


def _host_roles(protocols: Sequence[AgentProtocol]) -> tuple[str, ...]:
    """The host roles of ``protocols``, each once, sorted.

    :raises PluginError: a protocol names no host role.
    """
    roles = set()
    for protocol in protocols:
        role = getattr(protocol, "host_role", None)
        if not isinstance(role, str) or not role:
            raise PluginError(
                f"node protocol {protocol.name!r} names no host role",
                hint="set its host_role to the role of a host-role token type (Node for a node)",
            )
        roles.add(role)
    return tuple(sorted(roles))


def agent_services(ctx: ServiceContext) -> list[Service]:
    """The node agent, when a protocol plugin serves on this host (``tether_agent_protocols``
    returned something: for SSH, ``ssh_service.enabled``, which ``--roles=node`` sets)."""
    protocols: list[AgentProtocol] = [
        protocol
        for group in ctx.pm.hook.tether_agent_protocols(config=ctx.config)
        for protocol in group
    ]
    if not protocols:
        return []
    names = [protocol.name for protocol in protocols]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"two plugins serve the node protocol {', '.join(twice)!s}")
    return [Service(name="node agent", run=NodeAgent(ctx, protocols).run)]
