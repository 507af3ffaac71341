"""The auth service: the cluster's certificate authorities, users, roles, tokens and audit.

This module is the auth service's logic with no HTTP in it; :mod:`tether.auth.http_api` maps HTTP
requests onto it and :mod:`tether.auth.http_client` calls it remotely. Every public method that acts
for a caller takes the caller's verified :class:`~tether.pki.Identity` first and checks it
(role rules for users; built-in system identities are trusted for their own duties only).
"""

from __future__ import annotations

import contextlib
import datetime
import hmac
import ipaddress
import json
import logging
import pathlib
import re
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, cast

import attrs
from cryptography import x509

from tether import audit, pki
from tether.auth import passwords, sso_flows, trust_feed
from tether.auth.connectors import (
    IdentityConnector,
    LoginIdentity,
    PasswordConnector,
    RedirectConnector,
)
from tether.auth.trust import establish_trust_with_root
from tether.auth.trust_feed import TrustFeed
from tether.backend import Backend, Item, Op
from tether.config import Config, HostPort
from tether.durations import format_duration
from tether.errors import (
    AccessDenied,
    AlreadyExists,
    CompareFailed,
    NotFound,
    PluginError,
    TetherError,
)
from tether.plugins import TetherPluginManager
from tether.rbac import RoleSet
from tether.resources import (
    KindRegistry,
    Resource,
    ResourceKind,
    preset_roles,
    resource_from_bytes,
    resource_from_dict,
    resource_to_bytes,
)
from tether.trust import ClusterTrust, RemoteClusterStatus

__all__ = ["AuthService", "JoinResult", "LoginResult", "TokenInfo"]

log = logging.getLogger(__name__)

PASSWORD_PREFIX = "/secrets/passwords/"
#: single sign-on logins in flight (by state) and their outcomes (by id), both expiring
SSO_REQUEST_PREFIX = "/secrets/sso/requests/"
SSO_RESULT_PREFIX = "/secrets/sso/results/"
ATTEMPTS_PREFIX = "/secrets/login_attempts/"
#: which host holds each host id, until its certificates expire (renewals extend it)
HOST_ID_PREFIX = "/host_ids/"

TOKEN_TYPES = {"node": "Node", "trusted_cluster": "TrustedCluster", "proxy": "Proxy"}
#: what may join a cluster with a token, and the token role each needs
JOIN_ROLES = {"node": "Node", "proxy": "Proxy"}
_HOST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
SIGNUP_ROLE = "signup"
#: A remote cluster whose tunnels have not heartbeated for this long is offline.
REMOTE_OFFLINE_AFTER = 30.0
#: where tunnel heartbeats are stored, per cluster, proxy and agent
HEARTBEAT_PREFIX = "/tunnels/"
#: a tunnel that has not heartbeated for this long is forgotten by storage
HEARTBEAT_TTL = 600.0
#: How long a published inventory entry may live between heartbeats.
MIN_PUBLISH_TTL = datetime.timedelta(seconds=5)
MAX_PUBLISH_TTL = datetime.timedelta(hours=1)
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


def _everything(resource: Resource) -> bool:
    return True


def _local_host(host: str) -> bool:
    """Whether a dial to ``host`` stays on the dialling machine (loopback, or unspecified,
    which Linux connects to the loopback)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _reaches(addr: HostPort, listener: HostPort) -> bool:
    """Whether dialling ``addr`` may reach ``listener``. Unsure counts as yes: a listener on
    every interface answers on any of the host's names, which auth cannot list."""
    if addr.port != listener.port:
        return False
    if listener.is_unspecified or addr.host == listener.host:
        return True
    return _local_host(addr.host) and _local_host(listener.host)


def _requested_ttl(request: sso_flows.SSORequest) -> datetime.timedelta | None:
    """The certificate lifetime a single sign-on client asked for, if it did."""
    return datetime.timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None


def _created_by_connector(user: Resource) -> bool:
    """Whether ``user`` was made by an SSO login (and may be replaced by the next one)."""
    created_by = user.spec.created_by
    return created_by is not None and created_by.connector is not None


@attrs.frozen
class LoginResult:
    """What a successful login returns to the client."""

    identity: pki.Identity
    ssh_cert: str
    tls_cert_pem: str
    tls_ca_pems: tuple[str, ...]
    ssh_host_ca_lines: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The answer of ``/webapi/login`` (and of a collected single sign-on login)."""
        return {
            "identity": self.identity.to_json(),
            "ssh_cert": self.ssh_cert,
            "tls_cert": self.tls_cert_pem,
            "tls_ca_certs": list(self.tls_ca_pems),
            "ssh_host_ca": list(self.ssh_host_ca_lines),
        }


@attrs.frozen
class JoinResult:
    """What a node or proxy that joined receives: its certificates and the cluster's CAs."""

    identity: pki.Identity
    ssh_host_cert: str
    tls_cert_pem: str
    tls_ca_pems: tuple[str, ...]
    ssh_user_ca_lines: tuple[str, ...]
    ssh_host_ca_lines: tuple[str, ...]


@attrs.frozen
class TokenInfo:
    """A join or invitation token as ``tetherctl tokens`` shows it."""

    token: str
    type: str
    expires: datetime.datetime | None
    ca_pin: str
    labels: Mapping[str, str] = attrs.field(factory=dict)


def _connectors(pm: TetherPluginManager) -> dict[str, IdentityConnector]:
    found: dict[str, IdentityConnector] = {}
    for impl in pm.hook.tether_identity_connectors.get_hookimpls():
        provided = cast("list[IdentityConnector]", impl.function() or [])
        for connector in provided:
            if connector.name in found:
                raise PluginError(
                    f"identity connector {connector.name!r} is provided twice "
                    f"(again by plugin {impl.plugin_name!r})"
                )
            found[connector.name] = connector
    return found


class AuthService:
    """Owns the cluster's CAs and state. Create with :meth:`open` (bootstraps on first start)."""

    def __init__(
        self,
        *,
        config: Config,
        pm: TetherPluginManager,
        backend: Backend,
        registry: KindRegistry,
        authorities: pki.ClusterAuthorities,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.pm = pm
        self.backend = backend
        self.registry = registry
        self.authorities = authorities
        self.cluster_name = config.cluster_name
        self._clock = clock
        #: host id -> the certificate expiry whose hold this process has seen recorded
        self._kept_host_ids: dict[str, datetime.datetime] = {}
        self.connectors = _connectors(pm)
        #: what this cluster trusts, kept current by a watch on the store (the daemon runs
        #: its :meth:`~tether.auth.trust_feed.TrustFeed.run` for as long as auth serves)
        self.trust_feed = TrustFeed(
            cluster_name=self.cluster_name,
            own_cas=self.trusted_tls_cas(),
            backend=backend,
            registry=registry,
        )
        #: the addresses this cluster's services in this process listen on, by service (the
        #: daemon fills it once they are bound): no host may register one as its own
        self.service_addrs: dict[str, HostPort] = {}

    def password_key(self, username: str) -> str:
        """Storage key of a local user's password hash (read by the ``local`` connector)."""
        return PASSWORD_PREFIX + username

    # --- bootstrap -----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        *,
        config: Config,
        pm: TetherPluginManager,
        backend: Backend,
        clock: Callable[[], float] = time.time,
    ) -> AuthService:
        """Load or create the CAs, publish them as ``cert_authority`` resources, and create
        the preset roles that do not exist yet."""
        registry = KindRegistry.from_plugins(pm)
        keys_dir = pathlib.Path(config.data_dir) / "keys"
        authorities = pki.ClusterAuthorities.load_or_create(
            keys_dir,
            config.cluster_name,
            algorithm=config.auth_service.ca_algorithm,
            tls_algorithm=config.auth_service.tls_ca_algorithm,
        )
        service = cls(
            config=config,
            pm=pm,
            backend=backend,
            registry=registry,
            authorities=authorities,
            clock=clock,
        )
        await service._publish_authorities()
        await service.trust_feed.load()
        await service.hold_own_host_id()
        for role in preset_roles():
            kind = registry.get("role")
            with contextlib.suppress(AlreadyExists):
                await backend.create(kind.key(role.metadata.name), resource_to_bytes(role))
        return service

    def make(
        self,
        kind: str,
        name: str,
        spec: Mapping[str, Any],
        *,
        expires: datetime.datetime | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Resource:
        """Build a resource of ``kind`` through the same validation as user input."""
        metadata: dict[str, Any] = {"name": name}
        if labels:
            metadata["labels"] = dict(labels)
        if expires is not None:
            metadata["expires"] = expires.isoformat()
        return resource_from_dict(
            {
                "kind": kind,
                "version": self.registry.get(kind).versions[0],
                "metadata": metadata,
                "spec": dict(spec),
            },
            self.registry,
        )

    def _ca_resources(self) -> list[Resource]:
        a = self.authorities
        out = []
        for ca_type, ssh_keys, tls_certs in (
            ("user", [a.ssh_user.public_key_line()], []),
            ("host", [a.ssh_host.public_key_line()], []),
            ("tls", [], [pki.cert_to_pem(a.tls.certificate).decode()]),
        ):
            spec = {
                "type": ca_type,
                "cluster_name": self.cluster_name,
                "active_keys": {"ssh": ssh_keys, "tls": tls_certs},
            }
            out.append(self.make("cert_authority", self.cluster_name, spec))
        return out

    async def _publish_authorities(self) -> None:
        kind = self.registry.get("cert_authority")
        for res in self._ca_resources():
            await self.backend.put(kind.key(kind.ref_of(res)), resource_to_bytes(res))

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)

    @property
    def ca_pin(self) -> str:
        return pki.ca_pin(self.authorities.tls.certificate)

    def trusted_tls_cas(self) -> list[x509.Certificate]:
        """The X.509 CAs whose client certificates this cluster's own API accepts: its own.

        Other clusters' CAs are trusted for tunnels and for their users at the proxy only
        (:meth:`other_tls_cas`), never for the auth API, where a certificate's kind decides
        what the caller may do.
        """
        return [self.authorities.tls.certificate]

    async def other_tls_cas(self) -> dict[str, list[x509.Certificate]]:
        """The X.509 CAs of the clusters this one trusts (its leaves' and its root's)."""
        return await trust_feed.other_tls_cas(self.backend, self.registry, self.cluster_name)

    async def _needs_handshake(self, trusted: Resource, existing: Item | None) -> bool:
        """Whether creating ``trusted`` must run the handshake with its root.

        The first time, yes. Afterwards the clusters know each other's CAs, so a changed role
        map or enabled flag applies without a (by then expired) token; the guide's edit flow
        reads the resource back with the token hidden. A new token, though, asks for a new
        handshake: that is how trust is restored after the root removed its remote_cluster.
        """
        if not await self.trusts(trusted.metadata.name):
            return True
        token = trusted.spec.token
        if not token:
            return False
        if existing is None:
            return True
        return bool(token != resource_from_bytes(existing.value, self.registry).spec.token)

    async def trusts(self, cluster: str) -> bool:
        """Whether this cluster holds another cluster's X.509 CA (a handshake happened)."""
        return await trust_feed.trusts(self.backend, self.registry, self.cluster_name, cluster)

    async def _forget_cluster(self, cluster: str) -> None:
        """Remove another cluster's CAs: the trust between the two ends here."""
        if cluster == self.cluster_name:
            return
        kind = self.registry.get("cert_authority")
        for ca_type in ("user", "host", "tls"):
            await self.backend.delete(kind.key(f"{ca_type}/{cluster}"))

    # --- identities ----------------------------------------------------------------------

    def issue_system_certificate(
        self,
        kind: str,
        name: str,
        public_key: Any,
        *,
        ttl: datetime.timedelta,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> x509.Certificate:
        """Issue the X.509 certificate of one of the cluster's own daemons (or the local
        admin identity ``tetherctl -c`` uses)."""
        identity = pki.Identity(
            username=name,
            cluster=self.cluster_name,
            roles=(),
            traits={},
            logins=(),
            expires=self.now() + ttl,
            kind=kind,
        )
        return pki.issue_x509_cert(
            self.authorities.tls,
            public_key,
            identity,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            server=kind in ("proxy", "auth"),
            now=self.now(),
        )

    @property
    def trust(self) -> ClusterTrust:
        """What this cluster trusts now (see :mod:`tether.auth.trust_feed`)."""
        return self.trust_feed.current

    def verify_client(self, cert: bytes | x509.Certificate) -> pki.Identity:
        """Verify a client certificate: one of this cluster's, or a user of a trusted root
        (role-mapped); see :meth:`tether.trust.ClusterTrust.verify_client`."""
        return self.trust_feed.verify_client(cert, pm=self.pm, now=self.now())

    async def _roleset(self, role_names: Sequence[str]) -> RoleSet:
        kind = self.registry.get("role")
        roles = []
        for name in role_names:
            item = await self.backend.get(kind.key(name))
            if item is None:
                log.warning("role %r named by a user does not exist; ignoring it", name)
                continue
            roles.append(resource_from_bytes(item.value, self.registry))
        return RoleSet(roles)

    async def authorize(self, identity: pki.Identity, kind: str, verb: str) -> None:
        """Allow ``verb`` on ``kind`` for ``identity`` or raise AccessDenied."""
        if identity.kind == "admin":
            return
        if identity.kind != "user":
            raise AccessDenied(
                f"{identity.kind} identity {identity.username!r} may not {verb} {kind}"
            )
        roleset = await self._roleset(identity.roles)
        roleset.check_rule(kind, verb)

    async def audit_event(
        self, event_type: str, user: str, fields: Mapping[str, Any], *, success: bool = True
    ) -> None:
        """Record an event that happened in this cluster."""
        await audit.emit(
            self.pm,
            audit.AuditEvent(
                type=event_type,
                cluster=self.cluster_name,
                user=user,
                success=success,
                fields=fields,
            ),
        )

    # --- resources -----------------------------------------------------------------------

    async def get_resources(
        self,
        identity: pki.Identity,
        kind_name: str,
        name: str | None = None,
        *,
        with_secrets: bool = False,
    ) -> list[Resource]:
        kind = self.registry.get(kind_name)
        verb = "read" if name or with_secrets else "list"
        visible = await self._reader(identity, kind, verb, with_secrets=with_secrets)
        if name is not None:
            item = await self.backend.get(kind.key(name))
            found = None if item is None else resource_from_bytes(item.value, self.registry)
            if found is None or not visible(found):
                # out of reach is "not found", not "denied": it does not confirm it exists
                raise NotFound(f"{kind.name} {name!r} not found")
            shown = [found]
        else:
            items = await self.backend.range(kind.storage_prefix)
            found_all = [resource_from_bytes(item.value, self.registry) for item in items]
            shown = [res for res in found_all if visible(res)]
        if kind.name == "remote_cluster":
            shown = [await self._with_connection(res) for res in shown]
        return shown

    async def _with_connection(self, remote: Resource) -> Resource:
        """A remote_cluster with its status: online while a tunnel from it heartbeats."""
        latest: float | None = None
        proxies: set[str] = set()
        for item in await self.backend.range(f"{HEARTBEAT_PREFIX}{remote.metadata.name}/"):
            record = json.loads(item.value)
            when = float(record.get("last_heartbeat", 0))
            latest = when if latest is None else max(latest, when)
            fresh = self._clock() - when < REMOTE_OFFLINE_AFTER
            if fresh and record.get("status", {}).get("connected") is not False:
                proxies.add(str(record.get("proxy")))
        status = RemoteClusterStatus(
            connection="online" if proxies else "offline",
            last_heartbeat=(
                datetime.datetime.fromtimestamp(latest, datetime.UTC) if latest else None
            ),
            proxies=tuple(sorted(proxies)),
        )
        return attrs.evolve(remote, status=status)

    async def _reader(
        self, identity: pki.Identity, kind: ResourceKind, verb: str, *, with_secrets: bool
    ) -> Callable[[Resource], bool]:
        """Check that ``identity`` may ``verb`` ``kind``; return which resources it may see.

        As in Teleport, "list" shows resources without secrets and "read" with them. The
        cluster's own hosts read the kinds that name them in ``readable_by`` (nodes read roles
        to authorize logins). A user without a rule for an ``access_labels`` kind still sees
        the resources their roles reach, as ``tsh ls`` lists the nodes one may log in to.
        """
        own_host = identity.kind in kind.readable_by and identity.cluster == self.cluster_name
        if own_host and not with_secrets:
            return _everything
        try:
            await self.authorize(identity, kind.name, verb)
        except AccessDenied:
            if kind.access_labels is None or identity.kind != "user" or with_secrets:
                raise
        else:
            # rules grant the kind; cluster visibility still applies to users, as the guide
            # says of a labelled leaf: "the Auth Service won't return any information about
            # the cluster unless you are assigned a role that allows" its labels
            if kind.access_labels != "cluster_labels" or identity.kind != "user":
                return _everything
        roleset = await self._roleset(identity.roles)
        field = kind.access_labels
        return lambda res: roleset.can_access(field, res.metadata.labels, identity.traits)

    async def publish(
        self,
        identity: pki.Identity,
        resource: Resource,
        ttl: datetime.timedelta,
        *,
        host_names: Collection[str] = (),
    ) -> None:
        """Store a host's own inventory entry (a node's ``node``), expiring after ``ttl``.

        Hosts call this on every heartbeat; an entry not renewed in time disappears, so the
        inventory shows only hosts that are alive. A host may publish only the kind whose
        ``published_by`` is its identity kind, under its own host id; an address the proxy
        will dial (:attr:`~tether.resources.ResourceKind.dialed_addr`) must be on a host
        among ``host_names`` (what the caller's certificate names) and be none of the
        cluster's own listening addresses.
        """
        kind = self.registry.get(resource.kind)
        if kind.published_by is None or kind.published_by != identity.kind:
            raise AccessDenied(f"{identity.kind} {identity.username!r} may not publish {kind.name}")
        if identity.cluster != self.cluster_name or resource.metadata.name != identity.username:
            raise AccessDenied(
                f"{identity.kind} {identity.username!r} of cluster {identity.cluster!r} may "
                f"only publish its own {kind.name} entry, not {resource.metadata.name!r}"
            )
        if not MIN_PUBLISH_TTL <= ttl <= MAX_PUBLISH_TTL:
            raise TetherError(
                f"publish ttl {format_duration(ttl)} is out of range "
                f"({format_duration(MIN_PUBLISH_TTL)} to {format_duration(MAX_PUBLISH_TTL)})"
            )
        if kind.dialed_addr is not None:
            try:
                await self._check_dialed_addr(identity, kind.dialed_addr(resource), host_names)
            except AccessDenied as exc:
                await self.audit_event(
                    "host.publish.refused",
                    identity.username,
                    {"role": identity.kind, "kind": kind.name, "reason": exc.message},
                    success=False,
                )
                raise
        stamped = attrs.evolve(
            resource, metadata=attrs.evolve(resource.metadata, expires=self.now() + ttl)
        )
        await self.backend.put(
            kind.key_for(stamped), resource_to_bytes(stamped), ttl=ttl.total_seconds()
        )
        await self._keep_host_id(identity)

    async def _keep_host_id(self, identity: pki.Identity) -> None:
        """Hold the id of a host that publishes with a certificate for it, as long as that
        certificate lasts. Joins and renewals record their ids; a host that joined before
        ids were recorded gets its record at its next heartbeat, so that no token can take
        its id meanwhile. Costs a read only once per certificate and process."""
        if self._kept_host_ids.get(identity.username) == identity.expires:
            return
        item = await self.backend.get(HOST_ID_PREFIX + identity.username)
        held = (
            datetime.datetime.fromisoformat(str(json.loads(item.value)["expires"]))
            if item is not None
            else None
        )
        if held is None or held < identity.expires:
            try:
                await self._hold_id(
                    identity.username,
                    identity.kind,
                    identity.username,
                    identity.expires,
                    replaces=item,
                )
            except AccessDenied:
                return  # a join or renewal wrote it meanwhile: try at the next heartbeat
        self._kept_host_ids[identity.username] = identity.expires

    async def _check_dialed_addr(
        self, identity: pki.Identity, text: str, host_names: Collection[str]
    ) -> None:
        """Refuse an address a host asks the proxy to dial unless it is on a host its
        certificate names, and none of the cluster's own services' (the proxy dialling its own
        port or auth's would hand a user a raw connection to it)."""
        if not text:
            return
        who = f"{identity.kind} {identity.username!r}"
        try:
            addr = HostPort.parse(text)
        except ValueError as exc:
            raise AccessDenied(f"{who} registers an unusable address: {exc}") from None
        if addr.host not in host_names:
            names = ", ".join(sorted(host_names)) or "none"
            raise AccessDenied(
                f"{who} may register an address only on a host its certificate names "
                f"({names}), not {text}",
                hint="set the node's public_addr to one of them, or join again with a token "
                "for the new name",
            )
        for service, listener in await self._listening_addrs():
            if _reaches(addr, listener):
                raise AccessDenied(
                    f"{who} may not register {text}: it is the address of this cluster's "
                    f"{service} ({listener})",
                    hint="give the node an SSH listen_addr (or public_addr) of its own",
                )

    async def _listening_addrs(self) -> list[tuple[str, HostPort]]:
        """The cluster's own listening addresses: of the services in this process, and every
        proxy's public address as it published it."""
        found = [(service, addr) for service, addr in self.service_addrs.items()]
        kind = self.registry.get("proxy")
        for item in await self.backend.range(kind.storage_prefix):
            proxy = resource_from_bytes(item.value, self.registry)
            with contextlib.suppress(ValueError):
                found.append(
                    (f"proxy {proxy.metadata.name!r}", HostPort.parse(proxy.spec.public_addr))
                )
        return found

    async def record_tunnel_heartbeats(
        self, identity: pki.Identity, records: Sequence[Mapping[str, Any]]
    ) -> None:
        """Store one proxy's batch of tunnel heartbeats (see
        :class:`tether.tunnel.heartbeats.HeartbeatRecorder`), each under
        ``/tunnels/<cluster>/<proxy>/<agent>`` with a TTL, which is what a remote_cluster's
        ``connection`` is computed from. The proxy is the caller, never a field of the batch.
        """
        if identity.kind != "proxy" or identity.cluster != self.cluster_name:
            raise AccessDenied("only the cluster's proxies may record tunnel heartbeats")
        ops = []
        now = self._clock()
        for i, record in enumerate(records):
            cluster, agent = record.get("cluster"), record.get("agent")
            when, status = record.get("last_heartbeat"), record.get("status")
            if not (
                isinstance(cluster, str)
                and _HOST_ID.match(cluster)
                and isinstance(agent, str)
                and agent
                and "/" not in agent
                and isinstance(when, int | float)
                and isinstance(status, dict)
            ):
                raise TetherError(
                    f"heartbeat {i} is malformed",
                    hint="expected cluster, agent, last_heartbeat (a number) and status",
                )
            value = {
                "cluster": cluster,
                "proxy": identity.username,
                "agent": agent,
                "last_heartbeat": min(float(when), now),  # never from the future
                "status": status,
            }
            key = f"{HEARTBEAT_PREFIX}{cluster}/{identity.username}/{agent}"
            ops.append(Op.put(key, json.dumps(value, default=str).encode(), ttl=HEARTBEAT_TTL))
        await self.backend.apply(ops)

    async def record_host_event(
        self,
        identity: pki.Identity,
        event_type: str,
        user: str,
        fields: Mapping[str, Any],
        *,
        success: bool,
    ) -> None:
        """Record an audit event reported by one of the cluster's hosts (a node's SSH
        sessions and refusals). The event names the host that reported it."""
        if identity.kind not in JOIN_ROLES or identity.cluster != self.cluster_name:
            raise AccessDenied(f"{identity.kind} {identity.username!r} may not record events")
        if not _EVENT_TYPE.match(event_type):
            raise TetherError(
                f"audit event type {event_type!r} is not valid",
                hint="use lower-case words separated by dots, like ssh.session.start",
            )
        await self.audit_event(
            event_type, user, {**fields, "host": identity.username}, success=success
        )

    async def create_resources(
        self, identity: pki.Identity, resources: Sequence[Resource], *, force: bool = False
    ) -> list[str]:
        """Create (or with ``force`` replace) every resource, all or none.

        Returns one line per resource saying what happened, as ``tetherctl create`` prints.
        """
        ops = []
        messages = []
        events = []
        for res in resources:
            kind = self.registry.get(res.kind)
            key = kind.key(kind.ref_of(res))
            existing = await self.backend.get(key)
            verb = "update" if existing is not None else "create"
            await self.authorize(identity, kind.name, verb)
            if existing is not None and not force:
                raise AlreadyExists(
                    f"{kind.name} {res.metadata.name!r} already exists",
                    hint="use `tetherctl create -f` to overwrite it",
                )
            if kind.name == "remote_cluster" and existing is None:
                raise TetherError(
                    "a remote_cluster is created by the handshake of a leaf, not by hand",
                    hint="create a trusted_cluster on the leaf with a token from "
                    "`tetherctl tokens add --type=trusted_cluster`",
                )
            if kind.name == "trusted_cluster" and await self._needs_handshake(res, existing):
                await establish_trust_with_root(self, res)
            expected = existing.revision if existing is not None else 0
            ops.append(Op.put(key, resource_to_bytes(res), expected_revision=expected))
            done = "updated" if existing is not None else "created"
            messages.append(f'{kind.name} "{res.metadata.name}" has been {done}')
            event = audit.RESOURCE_UPDATED if existing else audit.RESOURCE_CREATED
            events.append((event, {"kind": kind.name, "name": res.metadata.name}))
        await self.backend.apply(ops)
        for event, fields in events:
            await self.audit_event(event, identity.username, fields)
        return messages

    async def delete_resource(self, identity: pki.Identity, kind_name: str, name: str) -> str:
        kind = self.registry.get(kind_name)
        await self.authorize(identity, kind.name, "delete")
        if not await self.backend.delete(kind.key(name)):
            raise NotFound(f"{kind.name} {name!r} not found")
        if kind.name in ("trusted_cluster", "remote_cluster"):
            await self._forget_cluster(name)
            await self.audit_event(
                "trust.removed", identity.username, {"kind": kind.name, "name": name}
            )
        if kind.name == "user":
            await self.backend.delete(PASSWORD_PREFIX + name)
            await self.backend.delete(ATTEMPTS_PREFIX + name)
        await self.audit_event(
            audit.RESOURCE_DELETED, identity.username, {"kind": kind.name, "name": name}
        )
        return f'{kind.name} "{name}" has been deleted'

    # --- users ---------------------------------------------------------------------------

    async def add_user(
        self,
        identity: pki.Identity,
        name: str,
        *,
        roles: Sequence[str],
        traits: Mapping[str, Sequence[str]],
        password: str | None = None,
    ) -> TokenInfo | None:
        """Create a local user; returns a one-time sign-up token unless a password is given."""
        if not roles:
            raise TetherError(f"user {name!r} needs at least one role", hint="pass --roles")
        role_kind = self.registry.get("role")
        for role in roles:
            if await self.backend.get(role_kind.key(role)) is None:
                raise NotFound(
                    f"role {role!r} does not exist", hint="create it first, or check the spelling"
                )
        if password is not None:
            self._check_password(password)
        user = self.make(
            "user", name, {"roles": list(roles), "traits": {k: list(v) for k, v in traits.items()}}
        )
        await self.create_resources(identity, [user])
        if password is not None:
            await self.backend.put(
                PASSWORD_PREFIX + name, passwords.hash_password(password).encode()
            )
            return None
        ttl = self.config.auth_service.signup_token_ttl
        return await self._create_token(
            identity, SIGNUP_ROLE, ttl, extra={"user": name}, type_name="signup"
        )

    async def update_user(
        self,
        identity: pki.Identity,
        name: str,
        *,
        roles: Sequence[str] | None = None,
        traits: Mapping[str, Sequence[str]] | None = None,
    ) -> str:
        kind = self.registry.get("user")
        await self.authorize(identity, "user", "update")
        item = await self.backend.get(kind.key(name))
        if item is None:
            raise NotFound(f"user {name!r} not found")
        user = resource_from_bytes(item.value, self.registry)
        if _created_by_connector(user):
            by = user.spec.created_by.connector
            raise TetherError(
                f"user {name!r} signs in through connector '{by.type}/{by.id}', which sets "
                "their roles and traits at every login; an update here would be undone at "
                "the next one",
                hint="change the connector's mapping (claims_to_roles or its equivalent) "
                "or the user's groups at the identity provider",
            )
        spec = user.spec
        if roles is not None:
            spec = attrs.evolve(spec, roles=tuple(roles))
        if traits is not None:
            merged = dict(spec.traits)
            merged.update({k: tuple(v) for k, v in traits.items()})
            spec = attrs.evolve(spec, traits=merged)
        user = attrs.evolve(user, spec=spec)
        await self.backend.compare_and_swap(
            kind.key(name), resource_to_bytes(user), expected_revision=item.revision
        )
        await self.audit_event(
            audit.RESOURCE_UPDATED, identity.username, {"kind": "user", "name": name}
        )
        return f'user "{name}" has been updated'

    def _check_password(self, password: str) -> None:
        try:
            passwords.check_password_strength(password)
        except ValueError as exc:
            raise TetherError(str(exc)) from None

    async def complete_signup(self, token: str, password: str) -> str:
        """Set a new user's password with the one-time sign-up token; returns the user name."""
        self._check_password(password)
        kind = self.registry.get("token")
        item = await self.backend.get(kind.key(token))
        res = resource_from_bytes(item.value, self.registry) if item else None
        if res is None or SIGNUP_ROLE not in res.spec.roles or self._expired(res):
            raise AccessDenied(
                "sign-up token is invalid or expired", hint="ask an admin for a new one"
            )
        user = res.spec.user
        await self.backend.apply(
            [
                Op.delete(kind.key(token), expected_revision=item.revision),  # type: ignore[union-attr]
                Op.put(PASSWORD_PREFIX + user, passwords.hash_password(password).encode()),
            ]
        )
        return str(user)

    # --- login ---------------------------------------------------------------------------

    async def login_password(
        self,
        username: str,
        password: str,
        *,
        ssh_public_key: str,
        tls_public_key_pem: str,
        ttl: datetime.timedelta | None = None,
        connector_name: str = "local",
    ) -> LoginResult:
        """Check a password through a password connector and issue the user's certificates.

        Failures say "invalid user name or password" whichever was wrong; after
        ``failed_login_limit`` consecutive failures the name is locked for
        ``lockout_duration``, whether or not the user exists. Each attempt is counted before
        its password is checked (:meth:`_count_login_attempt`), so concurrent guesses lock
        the name as the same guesses one after another would.
        """
        connector = self.connectors.get(connector_name)
        if not isinstance(connector, PasswordConnector):
            known = (
                ", ".join(
                    sorted(
                        n for n, c in self.connectors.items() if isinstance(c, PasswordConnector)
                    )
                )
                or "none"
            )
            raise TetherError(
                f"no password connector named {connector_name!r}",
                hint=f"password connectors here: {known}",
            )
        counted = await self._count_login_attempt(username, connector_name)
        try:
            login = await connector.authenticate_password(self, username, password)
        except AccessDenied:
            await self._audit_login_failure(
                username, connector_name, "invalid user name or password"
            )
            failed, locked_until = passwords.decode_attempts(counted.value)
            if locked_until is not None:
                await self.audit_event(
                    audit.USER_LOCKED,
                    username,
                    {
                        "method": connector_name,
                        "failed": failed,
                        "until": _utc(locked_until).isoformat(),
                    },
                    success=False,
                )
            raise AccessDenied("invalid user name or password") from None
        # A success resets the count, unless an attempt was counted since this one: that one
        # may still fail, and forgetting it would give a guesser racing the user free tries.
        with contextlib.suppress(CompareFailed, NotFound):
            await self.backend.apply([Op.delete(counted.key, expected_revision=counted.revision)])
        result = await self._issue_user_certs(
            login, ssh_public_key=ssh_public_key, tls_public_key_pem=tls_public_key_pem, ttl=ttl
        )
        await self.audit_event(
            audit.USER_LOGIN,
            username,
            {
                "method": connector_name,
                "roles": list(result.identity.roles),
                "expires": result.identity.expires.isoformat(),
            },
        )
        return result

    async def _count_login_attempt(self, username: str, connector_name: str) -> Item:
        """Count one password attempt at ``username`` before its password is checked.

        The count is written with compare-and-swap, so of N attempts at once each sees the
        ones before it: the attempt that reaches ``failed_login_limit`` writes the lock with
        its count (it is lifted by a success, see :meth:`login_password`) and the ones after
        it are refused without a check. A lock that has run out starts a fresh count.

        :returns: the counter as this attempt wrote it.
        :raises AccessDenied: the name is locked, saying until when and why.
        """
        cfg = self.config.auth_service
        key = ATTEMPTS_PREFIX + username
        ttl = cfg.lockout_duration.total_seconds()
        while True:
            item = await self.backend.get(key)
            failed, locked_until = passwords.decode_attempts(item.value if item else None)
            now = self._clock()
            if locked_until is not None and locked_until > now:
                await self._audit_login_failure(username, connector_name, "account locked")
                raise AccessDenied(
                    f"too many failed logins: {username!r} is locked until "
                    f"{_utc(locked_until):%Y-%m-%d %H:%M:%S} UTC after {failed} failed logins "
                    "in a row",
                    hint="wait until then and try again; auth_service.failed_login_limit and "
                    "lockout_duration set the lock",
                )
            if locked_until is not None:  # the lock ran out: its failures are forgiven
                failed = 0
            failed += 1
            lock = now + ttl if failed >= cfg.failed_login_limit else None
            value = passwords.encode_attempts(failed, lock)
            try:
                if item is None:
                    return await self.backend.create(key, value, ttl=ttl)
                return await self.backend.compare_and_swap(
                    key, value, expected_revision=item.revision, ttl=ttl
                )
            except (AlreadyExists, CompareFailed, NotFound):
                continue  # another attempt was counted (or the count expired) meanwhile

    async def _audit_login_failure(self, username: str, connector_name: str, reason: str) -> None:
        await self.audit_event(
            audit.USER_LOGIN_FAILED,
            username,
            {"method": connector_name, "reason": reason},
            success=False,
        )

    def _session_ttl(self, roleset: RoleSet, ttl: datetime.timedelta | None) -> datetime.timedelta:
        """How long a user's certificates last: what they asked for (or the cluster's
        default), capped by their roles."""
        return min(ttl or self.config.auth_service.session_ttl, roleset.max_session_ttl())

    async def _issue_user_certs(
        self,
        login: LoginIdentity,
        *,
        ssh_public_key: str,
        tls_public_key_pem: str,
        ttl: datetime.timedelta | None,
    ) -> LoginResult:
        roles = login.roles
        traits = dict(login.traits)
        roleset = await self._roleset(roles)
        ttl_effective = self._session_ttl(roleset, ttl)
        identity = pki.Identity(
            username=login.username,
            cluster=self.cluster_name,
            roles=roles,
            traits=traits,
            logins=tuple(roleset.logins(traits)),
            expires=self.now() + ttl_effective,
            kind="user",
        )
        try:
            ssh_key = pki.load_public_key(ssh_public_key.encode())
            tls_key = pki.load_public_key(tls_public_key_pem.encode())
        except ValueError as exc:
            raise TetherError(f"login request carries an unusable public key: {exc}") from None
        ssh_cert = pki.issue_ssh_user_cert(
            self.authorities.ssh_user,
            ssh_key,
            identity,
            now=self.now(),
            permit_port_forwarding=roleset.port_forwarding(),
            permit_agent_forwarding=roleset.forward_agent(),
        )
        tls_cert = pki.issue_x509_cert(self.authorities.tls, tls_key, identity, now=self.now())
        await self.audit_event(
            audit.CERT_ISSUED,
            identity.username,
            {
                "logins": list(identity.logins),
                "roles": list(roles),
                "ttl": format_duration(ttl_effective),
            },
        )
        return LoginResult(
            identity=identity,
            ssh_cert=ssh_cert,
            tls_cert_pem=pki.cert_to_pem(tls_cert).decode(),
            tls_ca_pems=tuple(pki.cert_to_pem(c).decode() for c in self.trusted_tls_cas()),
            ssh_host_ca_lines=(self.authorities.ssh_host.public_key_line(),),
        )

    # --- single sign-on ------------------------------------------------------------------

    async def _redirect_connector(self, name: str) -> tuple[RedirectConnector, Resource]:
        """The redirect connector whose resource is called ``name``, and that resource."""
        found = []
        for connector in self.connectors.values():
            if not isinstance(connector, RedirectConnector):
                continue
            kind = self.registry.get(connector.name)
            item = await self.backend.get(kind.key(name))
            if item is not None:
                found.append((connector, resource_from_bytes(item.value, self.registry)))
        if len(found) > 1:  # users name a connector by its name alone: it must be unique
            kinds = " and ".join(f"{c.name}/{name}" for c, _ in found)
            raise TetherError(
                f"connector name {name!r} is ambiguous ({kinds})",
                hint="rename one of them with tetherctl",
            )
        if found:
            return found[0]
        raise NotFound(
            f"no single sign-on connector is called {name!r}",
            hint="`tetherctl get connectors` lists them; `--auth=local` logs in with a password",
        )

    async def list_connectors(self) -> list[dict[str, str]]:
        """Every way to log in here, by name: ``{"name", "type"}``, where ``type`` is
        ``password`` or a redirect connector's resource kind (``oidc``). Names and types only:
        a client needs them to choose a login flow before the user is known."""
        found = []
        for connector in self.connectors.values():
            if isinstance(connector, RedirectConnector):
                kind = self.registry.get(connector.name)
                for item in await self.backend.range(kind.storage_prefix):
                    res = resource_from_bytes(item.value, self.registry)
                    found.append({"name": res.metadata.name, "type": connector.name})
            elif isinstance(connector, PasswordConnector):
                found.append({"name": connector.name, "type": "password"})
        return sorted(found, key=lambda c: (c["type"] != "password", c["name"]))

    async def begin_sso(
        self,
        connector_name: str,
        *,
        client_redirect_url: str,
        client_secret_hash: str,
        ssh_public_key: str,
        tls_public_key_pem: str,
        ttl: datetime.timedelta | None = None,
    ) -> tuple[str, str]:
        """Start a single sign-on login; returns its id and the URL to send the browser to.

        The login is stored, one-time, under its random ``state`` until the provider calls
        back or :data:`tether.auth.sso_flows.REQUEST_TTL` passes.
        """
        connector, resource = await self._redirect_connector(connector_name)
        try:  # refuse unusable keys now, not after the user went through the provider
            pki.load_public_key(ssh_public_key.encode())
            pki.load_public_key(tls_public_key_pem.encode())
        except ValueError as exc:
            raise TetherError(f"login request carries an unusable public key: {exc}") from None
        request = sso_flows.new_request(
            connector_kind=connector.name,
            connector_name=resource.metadata.name,
            client_redirect_url=client_redirect_url,
            client_secret_hash=client_secret_hash,
            ssh_public_key=ssh_public_key,
            tls_public_key=tls_public_key_pem,
            ttl_seconds=ttl.total_seconds() if ttl else None,
            now=self._clock(),
        )
        url = await connector.login_url(self, resource, request)
        await self.backend.put(
            SSO_REQUEST_PREFIX + request.state,
            json.dumps(request.to_json()).encode(),
            ttl=sso_flows.REQUEST_TTL.total_seconds(),
        )
        return request.id, url

    async def complete_sso(self, params: Mapping[str, str]) -> sso_flows.Approval | str:
        """Finish a login from the provider's callback: what the browser is to approve, or,
        for a refused login, where to send the browser (the client, to collect the refusal).

        The state is spent first, so a replayed callback finds nothing. Whatever happens
        after that, success or refusal, is kept for the client to collect under a one-time
        code minted here, which only the browser carries on to the client's loopback
        listener. Certificates are issued when the client collects, not before.

        :raises AccessDenied: no login in flight has this state (unknown, expired or used).
        """
        state = params.get("state") or params.get("RelayState") or ""
        key = SSO_REQUEST_PREFIX + state
        item = await self.backend.get(key) if state else None
        # delete() is the atomic step: of two identical callbacks only one gets True
        if item is None or not await self.backend.delete(key):
            await self.audit_event(
                audit.USER_LOGIN_FAILED,
                "",
                {"method": "sso", "reason": "unknown, expired or already used login state"},
                success=False,
            )
            raise AccessDenied(
                "this login is unknown, expired or already used",
                hint="run `tether login --auth=...` again",
            )
        request = sso_flows.SSORequest.from_json(json.loads(item.value))
        method = request.method
        code = sso_flows.new_code()
        outcome: dict[str, Any] = {
            "request": request.to_json(),
            "client_secret_hash": request.client_secret_hash,
            "code_hash": sso_flows.hash_code(code),
        }
        approval: sso_flows.Approval | None = None
        try:
            if self._clock() > request.expires:
                raise AccessDenied("the login took too long; it expired")
            external, roles = await self._verify_sso(request, params)
            certificate_ttl = self._session_ttl(await self._roleset(roles), _requested_ttl(request))
        except (AccessDenied, TetherError) as exc:
            await self._audit_login_failure("", method, exc.message)
            outcome |= {"error": exc.message, "hint": exc.hint}
        else:
            outcome |= {"identity": external.to_json(), "roles": list(roles)}
            approval = sso_flows.Approval(
                request_id=request.id,
                username=external.username,
                method=method,
                roles=roles,
                cluster=self.cluster_name,
                client=request.client_address(),
                certificate_ttl_seconds=certificate_ttl.total_seconds(),
                expires=self._clock() + sso_flows.RESULT_TTL.total_seconds(),
                redirect=request.client_redirect(code),
            )
        await self.backend.put(
            SSO_RESULT_PREFIX + request.id,
            json.dumps(outcome).encode(),
            ttl=sso_flows.RESULT_TTL.total_seconds(),
        )
        return approval or request.client_redirect(code)

    async def _verify_sso(
        self, request: sso_flows.SSORequest, params: Mapping[str, str]
    ) -> tuple[sso_flows.ExternalIdentity, tuple[str, ...]]:
        """Who the provider's callback says logged in, and their roles; refuses what the
        certificates would be refused for."""
        connector, resource = await self._redirect_connector(request.connector_name)
        if connector.name != request.connector_kind:
            raise AccessDenied(f"connector {request.connector_name!r} changed during the login")
        method = request.method
        try:
            external = await connector.complete(self, resource, request, params)
            roles = tuple(connector.roles_for(self, resource, external))
        except TetherError:
            raise
        except Exception as exc:  # a connector's bug must not leave the user waiting
            log.exception("connector %s failed to complete a login", method)
            raise TetherError(f"connector {method!r} failed: {exc!r}") from None
        if external.nonce is not None and not hmac.compare_digest(external.nonce, request.nonce):
            raise AccessDenied("the identity provider's answer is for another login (nonce)")
        if not roles:
            raise AccessDenied(
                f"no role is mapped to {external.username!r} by connector {method!r}",
                hint="the connector's claims_to_roles (or equivalent) decides",
            )
        await self._sso_user_record(external.username, method)
        return external, roles

    async def _sso_user_record(self, username: str, method: str) -> Item | None:
        """The stored user ``username``, if any, which a login through ``method`` replaces.

        :raises AccessDenied: it is a local user, whose name a provider's user never takes.
        """
        existing = await self.backend.get(self.registry.get("user").key(username))
        if existing is not None and not _created_by_connector(
            resource_from_bytes(existing.value, self.registry)
        ):
            raise AccessDenied(
                f"a local user {username!r} already exists; a login through "
                f"connector {method!r} cannot take its name",
                hint=f"remove the local user (`tetherctl users rm {username}`) if "
                "the same person now signs in through the provider",
            )
        return existing

    async def _issue_sso(
        self,
        request: sso_flows.SSORequest,
        external: sso_flows.ExternalIdentity,
        roles: tuple[str, ...],
    ) -> LoginResult:
        """The certificates of a login the browser approved and its client collected."""
        method = request.method
        existing = await self._sso_user_record(external.username, method)
        login = LoginIdentity(username=external.username, roles=roles, traits=external.claims)
        result = await self._issue_user_certs(
            login,
            ssh_public_key=request.ssh_public_key,
            tls_public_key_pem=request.tls_public_key,
            ttl=_requested_ttl(request),
        )
        # the user is kept while the certificate lasts, as Teleport keeps SSO users: listed by
        # `tetherctl get users`, and the name stays the provider's (a local user can't take
        # it). Conditional on what was read above: a local user created meanwhile wins, and
        # the certificates just issued are then never handed out.
        user = self.make(
            "user",
            external.username,
            {
                "roles": list(roles),
                "traits": {k: list(v) for k, v in external.claims.items()},
                "created_by": {
                    "time": self.now().isoformat(),
                    "connector": {
                        "type": request.connector_kind,
                        "id": request.connector_name,
                        "identity": external.subject,
                    },
                },
            },
            expires=result.identity.expires,
        )
        lifetime = (result.identity.expires - self.now()).total_seconds()
        await self.backend.apply(
            [
                Op.put(
                    self.registry.get("user").key(external.username),
                    resource_to_bytes(user),
                    ttl=max(lifetime, 1.0),
                    expected_revision=existing.revision if existing is not None else 0,
                )
            ]
        )
        await self.audit_event(
            audit.USER_LOGIN,
            external.username,
            {
                "method": method,
                "subject": external.subject,
                "roles": list(roles),
                "expires": result.identity.expires.isoformat(),
            },
        )
        return result

    async def collect_sso(self, request_id: str, client_secret: str, code: str) -> dict[str, Any]:
        """The outcome of a login, once, for the client that started it and received its
        one-time code from the browser that approved it.

        A client that started the login but brings no code, or a wrong one, is the one who
        shared the login's link, or an old client: the login is void (audited), whoever
        signed in.

        :raises AccessDenied: unknown or already collected, another client's secret, no code
            or a wrong one, or the login was refused (with the reason).
        """
        key = SSO_RESULT_PREFIX + request_id
        item = await self.backend.get(key) if request_id else None
        if item is None:
            raise AccessDenied("no login result is waiting under this id (expired or collected)")
        outcome = json.loads(item.value)
        request = sso_flows.SSORequest.from_json(outcome["request"])
        method = request.method
        if not hmac.compare_digest(
            sso_flows.hash_client_secret(client_secret), str(outcome["client_secret_hash"])
        ):
            # the login stands for its own client; the stranger's try is on the record
            await self._audit_login_failure(
                "", method, "a client without this login's secret tried to collect it"
            )
            raise AccessDenied("this login was started by another client")
        if not hmac.compare_digest(sso_flows.hash_code(code), str(outcome["code_hash"])):
            await self.backend.delete(key)  # one try: the login is void for everyone
            username = str(outcome.get("identity", {}).get("username", ""))
            await self._audit_login_failure(
                username,
                method,
                "collected without the one-time code the browser delivers to the client's "
                f"loopback address {request.client_address()} (a shared login link?)",
            )
            raise AccessDenied(
                "this login was not approved in a browser for this client: the one-time code "
                "from the browser is missing or wrong",
                hint=f"run `tether login --auth={request.connector_name}` again (a tether "
                "client as new as the cluster) and approve in a browser on the computer it runs on",
            )
        if not await self.backend.delete(key):
            raise AccessDenied("no login result is waiting under this id (expired or collected)")
        if "error" in outcome:
            raise AccessDenied(str(outcome["error"]), hint=outcome.get("hint"))
        external = sso_flows.ExternalIdentity.from_json(outcome["identity"])
        try:
            result = await self._issue_sso(request, external, tuple(outcome["roles"]))
        except (AccessDenied, TetherError) as exc:
            await self._audit_login_failure(external.username, method, exc.message)
            raise
        return result.to_json()

    # --- tokens --------------------------------------------------------------------------

    def _expired(self, res: Resource) -> bool:
        exp = res.metadata.expires
        return exp is not None and exp <= self.now()

    async def add_token(
        self,
        identity: pki.Identity,
        type_name: str,
        ttl: datetime.timedelta,
        labels: Mapping[str, str] | None = None,
    ) -> TokenInfo:
        if type_name not in TOKEN_TYPES:
            raise TetherError(
                f"unknown token type {type_name!r}",
                hint=f"use one of: {', '.join(sorted(TOKEN_TYPES))}",
            )
        return await self._create_token(
            identity, TOKEN_TYPES[type_name], ttl, type_name=type_name, labels=labels
        )

    async def _create_token(
        self,
        identity: pki.Identity,
        role: str,
        ttl: datetime.timedelta,
        *,
        type_name: str,
        extra: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> TokenInfo:
        await self.authorize(identity, "token", "create")
        if ttl <= datetime.timedelta(0):
            raise TetherError("token TTL must be positive", hint="for example --ttl=5m")
        value = secrets.token_hex(16)
        expires = self.now() + ttl
        kind = self.registry.get("token")
        res = self.make(
            "token", value, {"roles": [role], **(extra or {})}, expires=expires, labels=labels
        )
        await self.backend.create(kind.key(value), resource_to_bytes(res), ttl=ttl.total_seconds())
        await self.audit_event(
            audit.TOKEN_CREATED,
            identity.username,
            {"token_type": type_name, "expires": expires.isoformat()},
        )
        return TokenInfo(
            token=value,
            type=type_name,
            expires=expires,
            ca_pin=self.ca_pin,
            labels=dict(labels or {}),
        )

    async def list_tokens(self, identity: pki.Identity) -> list[TokenInfo]:
        await self.authorize(identity, "token", "list")
        out = []
        role_to_type = {v: k for k, v in TOKEN_TYPES.items()} | {SIGNUP_ROLE: "signup"}
        for res in await self.get_resources(identity, "token"):
            if self._expired(res):
                continue
            type_name = ",".join(role_to_type.get(r, r) for r in res.spec.roles)
            out.append(
                TokenInfo(
                    token=res.metadata.name,
                    type=type_name,
                    expires=res.metadata.expires,
                    ca_pin=self.ca_pin,
                    labels=dict(res.metadata.labels),
                )
            )
        return out

    async def delete_token(self, identity: pki.Identity, token: str) -> str:
        await self.delete_resource(identity, "token", token)
        return f'token "{token}" has been deleted'

    async def check_token(self, token: str, role: str) -> Resource:
        """Validate a join token of the given role; raise AccessDenied saying why not."""
        kind = self.registry.get("token")
        item = await self.backend.get(kind.key(token))
        if item is None:
            raise AccessDenied(
                "the token is unknown or expired",
                hint="create a new one with `tetherctl tokens add`",
            )
        res = resource_from_bytes(item.value, self.registry)
        if self._expired(res):
            raise AccessDenied(
                "the token is unknown or expired",
                hint="create a new one with `tetherctl tokens add`",
            )
        if role not in res.spec.roles:
            raise AccessDenied(f"the token is not a {role} token")
        return res

    # --- joining -------------------------------------------------------------------------

    async def join(
        self,
        token: str,
        *,
        role: str,
        host_id: str,
        hostname: str,
        addresses: Sequence[str],
        ssh_public_key: str,
        tls_public_key_pem: str,
    ) -> JoinResult:
        """Let a node or proxy join with a token: issue its SSH host certificate and its X.509
        certificate (identity kind ``role``), and hand it the CAs it must trust.

        The token lets the joiner choose its host id, but not one another host holds (until
        that host's certificates expire): the id is what its inventory entry, its tunnel and
        its SSH host certificate are known by.
        """
        self._check_host(role, host_id)
        try:
            await self.check_token(token, JOIN_ROLES[role])
            held = await self._host_id_holder(host_id)
            result, principals = self._issue_host_certs(
                role, host_id, hostname, addresses, ssh_public_key, tls_public_key_pem
            )
            await self._hold_host_id(result, hostname, replaces=held)
        except AccessDenied as exc:
            await self.audit_event(
                "host.join.failed", host_id, {"role": role, "reason": exc.message}, success=False
            )
            raise
        await self.audit_event(
            "host.joined", host_id, {"role": role, "hostname": hostname, "addresses": principals}
        )
        return result

    def _check_host(self, role: str, host_id: str) -> None:
        if role not in JOIN_ROLES:
            raise TetherError(f"cannot join as {role!r}", hint="join as node or proxy")
        if not _HOST_ID.match(host_id):
            raise TetherError(
                f"host id {host_id!r} is not valid",
                hint="use letters, digits, dots, dashes and underscores",
            )

    async def issue_host_identity(
        self,
        *,
        role: str,
        host_id: str,
        hostname: str,
        addresses: Sequence[str],
        ssh_public_key: str,
        tls_public_key_pem: str,
    ) -> JoinResult:
        """Issue a host's certificates without a token: for a service in this auth's own
        process (``ssh_service.enabled`` beside ``auth_service``), which needs no proof.

        The SSH host certificate names the host id, the host name and addresses, and both
        names qualified by the cluster (``web-1.main``), which is what OpenSSH checks when a
        user runs ``ssh visitor@web-1.main`` with ``tether config``'s configuration.
        """
        self._check_host(role, host_id)
        result, principals = self._issue_host_certs(
            role, host_id, hostname, addresses, ssh_public_key, tls_public_key_pem
        )
        await self._hold_host_id(result, hostname, replaces=True)
        await self.audit_event(
            "host.joined", host_id, {"role": role, "hostname": hostname, "addresses": principals}
        )
        return result

    async def hold_own_host_id(self) -> None:
        """Hold this host's id (``nodename``), which the certificates of auth and of the
        proxy in its process carry, so that no node token joins under it: for as long as a
        host's certificates last. Called at start and whenever those certificates renew."""
        nodename = self.config.nodename
        expires = self.now() + self.config.auth_service.host_cert_ttl
        await self._hold_id(nodename, "auth", nodename, expires, replaces=True)

    async def _host_id_holder(self, host_id: str) -> Item | None:
        """Whether a join may take ``host_id``: None when no host ever held it, or the
        record of a holder whose certificates expired (which the join replaces).

        :raises AccessDenied: a host holds it: a token cannot take over another host's id,
            with which it would stand in for that host (its inventory entry, its tunnel).
        """
        item = await self.backend.get(HOST_ID_PREFIX + host_id)
        if item is None:
            return None
        holder = json.loads(item.value)
        expires = datetime.datetime.fromisoformat(str(holder["expires"]))
        if expires <= self.now():
            return item
        raise AccessDenied(
            f"host id {host_id!r} is held by {holder['kind']} {holder['hostname']!r} until "
            f"{expires:%Y-%m-%d %H:%M} UTC; a join cannot take another host's id",
            hint="join with an id of its own (a node makes one in its data directory's host_uuid)",
        )

    async def _hold_host_id(
        self, result: JoinResult, hostname: str, *, replaces: Item | bool | None
    ) -> None:
        """Record that the host ``result`` was issued to holds its id until its certificates
        expire.

        :param replaces: for a join, the expired record it replaces, or None when the id was
            free, so that two joins racing for one id cannot both win; True for a host that
            proved it holds the id (a renewal) or needs no proof (one in this process).
        :raises AccessDenied: another join took the id meanwhile.
        """
        identity = result.identity
        await self._hold_id(identity.username, identity.kind, hostname, identity.expires, replaces)

    async def _hold_id(
        self,
        host_id: str,
        kind: str,
        hostname: str,
        expires: datetime.datetime,
        replaces: Item | bool | None,
    ) -> None:
        record = {"kind": kind, "hostname": hostname, "expires": expires}
        if replaces is True:
            expected: int | None = None
        else:
            expected = replaces.revision if isinstance(replaces, Item) else 0
        lifetime = (expires - self.now()).total_seconds()
        op = Op.put(
            HOST_ID_PREFIX + host_id,
            json.dumps(record, default=str).encode(),
            ttl=max(lifetime, 1.0),
            expected_revision=expected,
        )
        try:
            await self.backend.apply([op])
        except (AlreadyExists, CompareFailed):
            raise AccessDenied(
                f"host id {host_id!r} was taken by another join at the same time",
                hint="join with an id of its own",
            ) from None

    async def renew_host_identity(
        self,
        certificate: bytes,
        *,
        hostname: str,
        addresses: Sequence[str],
        ssh_public_key: str,
        tls_public_key_pem: str,
    ) -> JoinResult:
        """Issue new certificates to a joined host that proves itself with its current, still
        valid one (DER): same host id and kind, new key, a full ``host_cert_ttl``. Hosts call
        this once two thirds of their certificate's lifetime have passed.

        The names asked for must be among those of the current certificate: a renewal never
        widens what a host may claim to be (joining again with a token does).
        """
        identity = self.verify_client(certificate)
        if identity.kind not in JOIN_ROLES or identity.cluster != self.cluster_name:
            raise AccessDenied(
                f"{identity.kind} {identity.username!r} of cluster {identity.cluster!r} has no "
                "host certificates to renew here",
                hint="only this cluster's nodes and proxies renew theirs",
            )
        beyond = {hostname, *addresses} - pki.x509_host_names(certificate)
        if beyond:
            raise AccessDenied(
                f"{identity.kind} {identity.username!r} asks to renew for names its certificate "
                f"does not hold: {', '.join(sorted(beyond))}",
                hint="a host renews for the names it joined with; to change them, join again "
                "with a token",
            )
        result, principals = self._issue_host_certs(
            identity.kind,
            identity.username,
            hostname,
            addresses,
            ssh_public_key,
            tls_public_key_pem,
        )
        await self._hold_host_id(result, hostname, replaces=True)
        await self.audit_event(
            "host.renewed",
            identity.username,
            {
                "role": identity.kind,
                "hostname": hostname,
                "addresses": principals,
                "expires": result.identity.expires.isoformat(),
            },
        )
        return result

    def _issue_host_certs(
        self,
        role: str,
        host_id: str,
        hostname: str,
        addresses: Sequence[str],
        ssh_public_key: str,
        tls_public_key_pem: str,
    ) -> tuple[JoinResult, list[str]]:
        """The host's certificates and the SSH principals they name."""
        try:
            ssh_key = pki.load_public_key(ssh_public_key.encode())
            tls_key = pki.load_public_key(tls_public_key_pem.encode())
        except ValueError as exc:
            raise TetherError(f"join request carries an unusable public key: {exc}") from None
        ttl = self.config.auth_service.host_cert_ttl
        identity = pki.Identity(
            username=host_id,
            cluster=self.cluster_name,
            roles=(),
            traits={},
            logins=(),
            expires=self.now() + ttl,
            kind=role,
        )
        ips, names = pki.split_host_addresses([hostname, *addresses])
        tls_cert = pki.issue_x509_cert(
            self.authorities.tls,
            tls_key,
            identity,
            dns_names=names,
            ip_addresses=ips,
            server=True,
            now=self.now(),
        )
        qualified = [f"{host_id}.{self.cluster_name}", f"{hostname}.{self.cluster_name}"]
        principals = list(dict.fromkeys([host_id, hostname, *qualified, *addresses]))
        ssh_cert = pki.issue_ssh_host_cert(
            self.authorities.ssh_host,
            ssh_key,
            host_id=host_id,
            principals=principals,
            cluster=self.cluster_name,
            ttl=ttl,
            now=self.now(),
        )
        result = JoinResult(
            identity=identity,
            ssh_host_cert=ssh_cert,
            tls_cert_pem=pki.cert_to_pem(tls_cert).decode(),
            tls_ca_pems=tuple(pki.cert_to_pem(c).decode() for c in self.trusted_tls_cas()),
            ssh_user_ca_lines=(self.authorities.ssh_user.public_key_line(),),
            ssh_host_ca_lines=(self.authorities.ssh_host.public_key_line(),),
        )
        return result, principals

    # --- audit ---------------------------------------------------------------------------

    async def search_audit(
        self, identity: pki.Identity, query: audit.AuditQuery
    ) -> list[audit.AuditEvent]:
        await self.authorize(identity, "event", "list")
        return await audit.search(self.pm, attrs.evolve(query, cluster=self.cluster_name))
