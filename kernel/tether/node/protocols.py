"""What a protocol plugin serving on a node sees of the node agent, and what it gives back.

A plugin returns :class:`AgentProtocol` objects from ``tether_agent_protocols``; the agent
(:mod:`tether.node.agent`) joins the cluster, keeps the host's certificates renewed, keeps the
tunnels, the heartbeats, the audit forwarding and the trust snapshot, and calls the protocol's
``run`` once with an :class:`AgentContext` and its ``serve`` for every stream a proxy opened to
it. The context is narrow on purpose: what a protocol server needs (its key and certificates,
the trust decision, the audit function), typed, and nothing of the daemon around it.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio
from cryptography import x509

from tether import pki
from tether.cert_authority_types import CertUsage, SignedCertificate
from tether.config import Config
from tether.errors import TetherError
from tether.plugins import TetherPluginManager
from tether.rbac import RoleSet
from tether.resources import Resource
from tether.trust import AuditFn, ClusterTrust

if TYPE_CHECKING:
    from tether.auth.http_client import AuthClient

__all__ = [
    "AgentContext",
    "AgentProtocol",
    "AgentStream",
    "HostCredentials",
]


@attrs.frozen
class HostCredentials:
    """This host's key and the certificates issued for it (they change on each renewal).

    :param key: the host's private key (an SSH server's host key too).
    :param ssh_host_cert: the OpenSSH host certificate line for that key.
    :param tls_cert: the host's X.509 certificate.
    """

    key: pki.PrivateKey
    ssh_host_cert: str
    tls_cert: x509.Certificate


@attrs.frozen(kw_only=True)
class AgentStream:
    """A stream a proxy opened to this host for one protocol, accepted by the agent.

    :param stream: the bytes, both ways; closed by the agent when ``serve`` returns.
    :param client: the user's address as the proxy saw it (``host:port``), or ``"the proxy"``.
    :param target: the name the user asked for (empty when the proxy did not say): a name,
        an id or labels (``env=prod``), as typed.
    :param resolved: the name of the target the proxy's routing resolved that to
        (``Target.name``; empty when the proxy did not say). A host serving several targets
        of one protocol serves this one, but only after checking that it is one of its own
        entries: the proxy is trusted to route, not to name what this host serves.
    :param identity: the user, when the proxy forwarded the user's certificate: verified here
        with the cluster's trust and carrying its local roles (a root's user, role-mapped).
    :param roles: those roles as this cluster defines them (None without ``identity``).
    """

    stream: trio.abc.Stream
    client: str
    target: str = ""
    resolved: str = ""
    identity: pki.Identity | None = None
    roles: RoleSet | None = None


@attrs.define(kw_only=True)
class AgentContext:
    """The node agent as a protocol sees it, for the protocol's whole ``run``.

    :param config: the daemon's configuration (a protocol reads its own section).
    :param host_id: this host's id (the name of the resources it publishes).
    :param cluster_name: the cluster this host joined.
    :param tunnel_mode: proxies reach this host through its reverse tunnels; when false the
        protocol listens on its own address (direct mode) and publishes that address.
    :param credentials: the current key and certificates; replaced on each renewal.
    :param audit: records an audit event at the auth service; never blocks (a full backlog
        is logged and dropped). An event type ending in ``.denied`` is recorded as a failure.
        See :meth:`record` for the variant that waits instead of dropping.
    :param record: what :meth:`record` calls (the agent's backlog); None outside an agent.
    :param auth: the agent's client of the auth API, acting as this host; None outside an
        agent (then :meth:`sign_certificate` and :meth:`authority_certificates` refuse).
    """

    config: Config
    host_id: str
    cluster_name: str
    tunnel_mode: bool
    credentials: HostCredentials
    audit: AuditFn
    _pm: TetherPluginManager
    _trust: Callable[[], ClusterTrust]
    _record: Callable[[str, Mapping[str, Any]], Awaitable[None]] | None = None
    _auth: AuthClient | None = None
    _renewal_listeners: list[Callable[[HostCredentials], None]] = attrs.field(factory=list)

    async def record(self, event_type: str, fields: Mapping[str, Any]) -> None:
        """Record an audit event like :attr:`audit`, but wait for room in the agent's backlog
        instead of dropping the event: once this returns, the event is queued and will reach
        the auth service (the agent sends it again until auth records it). For a protocol
        that must not act unaudited (a database statement is forwarded after its event).

        :raises TetherError: the type is not lower-case dotted words, or the fields are not
            JSON.
        """
        if self._record is None:
            self.audit(event_type, fields)
            return
        await self._record(event_type, fields)

    def _api(self, what: str) -> AuthClient:
        if self._auth is None:
            raise TetherError(f"cannot {what}: this context has no connection to the auth service")
        return self._auth

    async def sign_certificate(
        self,
        ca_type: str,
        public_key: pki.SubjectPublicKey | str,
        common_name: str,
        *,
        usage: CertUsage = "client",
        ttl: datetime.timedelta,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> SignedCertificate:
        """Have the cluster's CA of ``ca_type`` (declared by a plugin) sign a certificate for
        ``public_key``, subject exactly ``CN=<common_name>``, as this host: allowed when one
        of the host's roles is among the type's ``host_roles``. Each call asks auth, which
        signs anew and audits ``cert.issued``: nothing is cached by the kernel. A protocol
        that starts sessions often keeps the certificate per common name and reuses it
        until near its expiry.

        :raises AccessDenied: this host has none of the roles the CA type names.
        :raises TetherError: the TTL exceeds the type's bound, or auth cannot be reached.
        """
        return await self._api("sign a certificate").sign_certificate(
            ca_type,
            public_key,
            common_name,
            usage=usage,
            ttl=ttl,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )

    async def authority_certificates(self, ca_type: str) -> list[str]:
        """The certificates (PEM) of this cluster's CA of ``ca_type``, to verify peers it
        signed (a database's server certificate): the current ones and, during a rotation,
        the next ones. Asked of auth on each call, not cached: a protocol may keep them for a
        while (they change only when the CA is rotated).
        """
        return await self._api("read a CA").authority_certificates(ca_type, self.cluster_name)

    def on_renewal(self, listener: Callable[[HostCredentials], None]) -> None:
        """Call ``listener`` with the new credentials after each renewal (present them to new
        connections from then on)."""
        self._renewal_listeners.append(listener)

    def renewed(self, credentials: HostCredentials) -> None:
        """Called by the agent: the host has new credentials."""
        self.credentials = credentials
        for listener in self._renewal_listeners:
            listener(credentials)

    @property
    def trust(self) -> ClusterTrust:
        """What the cluster trusts now (its CAs, its roots, its roles); kept fresh by the
        agent, so read it at each decision rather than keeping it."""
        return self._trust()

    def ssh_user_cas(self) -> Mapping[str, tuple[str, ...]]:
        """The SSH user CA lines active now, by cluster."""
        return self._trust().ssh_user_cas

    def roles_for(self, identity: pki.Identity, **where: Any) -> RoleSet:
        """The trust decision for an identity whose certificate the protocol verified: its
        local roles here (a root's user role-mapped, audited as ``trust.login.mapped``;
        missing roles skipped, audited as ``trust.role.missing``).

        :param where: fields naming where the decision was taken, for the audit events.
        :raises AccessDenied: see :meth:`tether.trust.ClusterTrust.local_roles`.
        """
        trust = self._trust()
        names = trust.local_roles(identity, pm=self._pm, audit=self.audit, where=where)
        return trust.role_set(names, identity=identity, audit=self.audit, where=where)

    def now(self) -> datetime.datetime:
        """The time decisions are taken at (UTC)."""
        return datetime.datetime.now(datetime.UTC)


class AgentProtocol(Protocol):
    """One protocol a node serves (``ssh``, later ``db``, ``kube``...).

    :attr name: the protocol's name, which is also the mux target proxies open streams to.
    :attr host_role: the host role serving it needs (``Node`` for SSH; a plugin's
        ``TokenType`` with ``host_role=True`` declares it): the agent joins asking for the
        host roles of every protocol it runs, the join token must carry each, and the host's
        certificate then carries them, which publishing entries of a kind whose
        ``publisher_role`` is that role requires.
    :attr needs_identity: whether the agent verifies and role-maps the user certificate a
        proxy forwards with each stream, and hands the result in :class:`AgentStream`. False
        for a protocol that authenticates the user inside the stream itself (SSH, whose
        certificate the node's server checks end to end): the agent then neither decides nor
        audits a second time.
    """

    name: str
    host_role: str
    needs_identity: bool

    def addresses(self) -> Iterable[str]:
        """Host names and addresses clients reach this host by for the protocol, to name in
        the host's certificates besides its host name (asked before the agent joins)."""
        ...

    async def run(
        self, agent: AgentContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run for the agent's lifetime (open the protocol's server, listen in direct mode);
        call ``task_status.started()`` once streams may be served and :meth:`resources`
        answered."""
        ...

    def resources(self) -> Iterable[Resource]:
        """The inventory entries this host publishes for the protocol on every heartbeat:
        any number (one per node; one per database a database service serves), each
        published on its own, so that one auth refuses does not keep the others out."""
        ...

    async def serve(self, stream: AgentStream) -> None:
        """Serve one stream a proxy opened to this protocol, until it ends."""
        ...
