"""The Kubernetes service: the agent protocol ``kube`` a host runs with
``kubernetes_service.enabled``.

The kernel's node agent joins the cluster (with a ``kube`` token: host role ``Kube``), keeps
the host's certificates and reverse tunnels, publishes :meth:`KubeService.resources` on every
heartbeat and hands :meth:`KubeService.serve` each stream a proxy opens to ``kube``: kubectl's
HTTP/1.1, decrypted by the first proxy, with the user's certificate verified and a root's user
role-mapped. What is left here, per request: the roles' ``kubernetes_resources``, the
Kubernetes user and groups to impersonate, the API server's own credentials, and the audit.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterable, Mapping

import attrs
import trio

from tether.api import (
    AccessDenied,
    AgentContext,
    AgentStream,
    Config,
    ConfigError,
    Identity,
    Resource,
    RoleSet,
    start_tls,
)
from tether_kube import VERSION
from tether_kube.access import Impersonation, check_request, impersonation
from tether_kube.config import KubeServiceConfig, check_name
from tether_kube.forward import Admitted, Gate, Headers, Refused, serve_http
from tether_kube.kind import HOST_ROLE, KUBE_CLUSTER, PROTOCOL, KubeClusterSpec
from tether_kube.requests import KubeRequest, read_request
from tether_kube.upstream import Upstream, context_names, read_upstream

__all__ = [
    "CONNECT_TIMEOUT",
    "KubeService",
    "ServedCluster",
    "agent_protocols",
]

log = logging.getLogger(__name__)

#: How long the service waits for an API server's TCP and TLS handshake.
CONNECT_TIMEOUT = 10.0
#: Request headers a user may not send through: the service authenticates itself, and
#: impersonation is the service's to set (a user's own ``--as`` is read, then replaced).
_STRIPPED = frozenset({b"authorization", b"host"})
_IMPERSONATE = b"impersonate-"
#: An API server that trusts an authenticating proxy reads the user from these (its
#: ``--requestheader-*-headers``, ``X-Remote-`` by default); the service's credentials may be
#: such a proxy's, so a user's own are never passed on.
_REMOTE_USER = b"x-remote-"


@attrs.frozen
class ServedCluster:
    """A Kubernetes cluster this service serves: its name, labels and API server."""

    name: str
    labels: Mapping[str, str]
    upstream: Upstream


@attrs.frozen
class _Request:
    """What the gate keeps of an admitted request for its audit event."""

    request: KubeRequest
    impersonated: Impersonation


def read_clusters(settings: KubeServiceConfig) -> list[ServedCluster]:
    """The clusters of the section: every context of ``kubeconfig_file``, then ``clusters``.

    :raises ConfigError: a file or context is unusable, a context's name cannot name a
        cluster, or two clusters have one name.
    """
    clusters: dict[str, ServedCluster] = {}

    def add(cluster: ServedCluster) -> None:
        if cluster.name in clusters:
            raise ConfigError(
                f"kubernetes_service: cluster {cluster.name!r} is named twice "
                f"({clusters[cluster.name].upstream.source} and {cluster.upstream.source})"
            )
        clusters[cluster.name] = cluster

    if settings.kubeconfig_file:
        path = pathlib.Path(settings.kubeconfig_file)
        for context in context_names(path):
            problem = check_name(context)
            if problem:
                raise ConfigError(
                    f"kubernetes_service.kubeconfig_file {path}: context {problem}",
                    hint=f"list it under clusters: with a name of its own and context: {context}",
                )
            add(ServedCluster(context, dict(settings.labels), read_upstream(path, context)))
    for item in settings.clusters:
        upstream = read_upstream(pathlib.Path(item.kubeconfig_file), item.context)
        add(ServedCluster(item.name, {**settings.labels, **item.labels}, upstream))
    return list(clusters.values())


class KubeService:
    """This host's Kubernetes service: the agent protocol named ``kube``."""

    name = PROTOCOL
    needs_identity = True  # the user's roles decide the Kubernetes user and groups
    host_role = HOST_ROLE

    def __init__(self, nodename: str, settings: KubeServiceConfig) -> None:
        self.nodename = nodename
        self.settings = settings
        self.clusters: dict[str, ServedCluster] = {}
        self._agent: AgentContext | None = None

    def addresses(self) -> Iterable[str]:
        return []  # reached only through the host's tunnels: no address to certify

    async def run(
        self, agent: AgentContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if not agent.tunnel_mode:
            raise ConfigError(
                "kubernetes_service: the Kubernetes service is reached only through the host's "
                "reverse tunnels, so it needs --proxy (tunnel mode)",
                hint="start it with tetherd start --roles=kube --proxy=HOST:PORT --token=TOKEN",
            )
        self.clusters = {cluster.name: cluster for cluster in read_clusters(self.settings)}
        self._agent = agent
        for cluster in self.clusters.values():
            log.info(
                "kube: serving Kubernetes cluster %r (%s)", cluster.name, cluster.upstream.source
            )
        task_status.started()

    def resources(self) -> Iterable[Resource]:
        agent = self._context()
        for cluster in self.clusters.values():
            yield KUBE_CLUSTER.new(
                cluster.name,
                KubeClusterSpec(host_id=agent.host_id, hostname=self.nodename, version=VERSION),
                labels=dict(cluster.labels),
            )

    def _context(self) -> AgentContext:
        if self._agent is None:
            raise RuntimeError("the Kubernetes service is not running yet")
        return self._agent

    async def serve(self, stream: AgentStream) -> None:
        cluster = self.clusters.get(stream.resolved)
        identity, roles = stream.identity, stream.roles
        if cluster is None or identity is None or roles is None:
            # routing resolved a cluster of this host's; anything else is not for us
            log.warning(
                "kube: refused a stream from %s for %r: not a cluster this service serves",
                stream.client,
                stream.resolved or stream.target,
            )
            return
        upstream = cluster.upstream

        async def connect() -> trio.abc.Stream:
            with trio.fail_after(CONNECT_TIMEOUT):
                tcp = await trio.open_tcp_stream(upstream.host, upstream.port)
                return await start_tls(
                    tcp, upstream.ssl_context, server_hostname=upstream.server_name
                )

        def unreachable(error: BaseException) -> Refused:
            cause = error.__cause__ or error
            return Refused(
                503,
                f"Kubernetes cluster {cluster.name!r} is unreachable from its Tether service: "
                f"{_reason(cause)}",
            )

        gate = _RequestGate(self._context(), cluster, identity, roles, stream.client)
        await serve_http(stream.stream, connect, gate.as_gate(), unreachable=unreachable)


def _reason(error: BaseException) -> str:
    if isinstance(error, trio.TooSlowError):
        return f"no answer in {CONNECT_TIMEOUT:g} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


class _RequestGate:
    """The decisions about one user's requests to one cluster, and their audit."""

    def __init__(
        self,
        agent: AgentContext,
        cluster: ServedCluster,
        identity: Identity,
        roles: RoleSet,
        client: str,
    ) -> None:
        self.agent = agent
        self.cluster = cluster
        self.identity = identity
        self.roles = roles
        self.client = client

    def as_gate(self) -> Gate:
        return Gate(
            admit=self.admit, answered=self.answered, refused=self.refused, session=self.session
        )

    def _fields(self, request: KubeRequest) -> dict[str, object]:
        return {
            "user": self.identity.username,
            "user_cluster": self.identity.cluster,
            "roles": list(self.identity.roles),
            "client": self.client,
            "kube_cluster": self.cluster.name,
            "verb": request.verb,
            "api_group": request.api_group,
            "resource": request.resource,
            "subresource": request.subresource,
            "namespace": request.namespace,
            "name": request.name,
            "path": request.path,
        }

    async def admit(self, method: bytes, target: bytes, headers: Headers) -> Admitted:
        request = read_request(method.decode("latin-1"), target.decode("latin-1"))
        traits = self.identity.traits
        labels = self.cluster.labels
        requested_user = ""
        requested_groups: list[str] = []
        forwarded: Headers = []
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"impersonate-user":
                requested_user = value.decode("latin-1")
            elif lowered == b"impersonate-group":
                requested_groups.append(value.decode("latin-1"))
            elif lowered.startswith(_IMPERSONATE):
                raise Refused(
                    403,
                    f"Tether does not pass on {name.decode('latin-1')} headers: impersonation "
                    "is decided by your roles",
                )
            elif lowered not in _STRIPPED and not lowered.startswith(_REMOTE_USER):
                forwarded.append((name, value))
        if not self.roles.can_access("kubernetes_labels", labels, traits):
            raise Refused(
                403,
                f"Kubernetes cluster {self.cluster.name!r}: its labels match the "
                f"kubernetes_labels of none of roles {', '.join(self.roles.names)}",
            )
        try:
            check_request(self.roles, request, labels=labels, traits=traits)
            impersonated = impersonation(
                self.roles,
                username=self.identity.username,
                labels=labels,
                traits=traits,
                requested_user=requested_user,
                requested_groups=requested_groups,
            )
        except AccessDenied as exc:
            raise Refused(403, f"Tether: {exc.message}") from None
        upstream = self.cluster.upstream
        forwarded.append((b"host", upstream.authority.encode()))
        if upstream.token:
            forwarded.append((b"authorization", f"Bearer {upstream.token}".encode()))
        forwarded.append((b"impersonate-user", impersonated.user.encode()))
        forwarded.extend((b"impersonate-group", group.encode()) for group in impersonated.groups)
        return Admitted(method, target, forwarded, _Request(request, impersonated))

    async def answered(self, context: object, code: int) -> None:
        assert isinstance(context, _Request)
        fields = self._fields(context.request)
        fields["kubernetes_user"] = context.impersonated.user
        fields["kubernetes_groups"] = list(context.impersonated.groups)
        fields["code"] = code
        await self.agent.record("kube.request", fields)

    async def refused(self, method: bytes, target: bytes, refusal: Refused) -> None:
        request = read_request(method.decode("latin-1"), target.decode("latin-1"))
        fields = self._fields(request)
        fields["code"] = refusal.code
        fields["reason"] = refusal.message
        log.info(
            "kube: %s@%s: %s %s refused: %s",
            self.identity.username,
            self.identity.cluster,
            method.decode("latin-1"),
            request.path,
            refusal.message,
        )
        # a refusal of the roles is a failure of the user's; an API server that cannot be
        # reached is a request that was answered (503), with why
        denied = refusal.code == 403
        await self.agent.record("kube.request.denied" if denied else "kube.request", fields)

    async def session(self, context: object, phase: str) -> None:
        assert isinstance(context, _Request)
        fields = self._fields(context.request)
        fields["kubernetes_user"] = context.impersonated.user
        await self.agent.record(f"kube.session.{phase}", fields)


def agent_protocols(config: Config) -> list[KubeService]:
    """The Kubernetes service, when ``kubernetes_service.enabled``."""
    settings = config.section(KubeServiceConfig)
    if not settings.enabled:
        return []
    return [KubeService(config.nodename, settings)]
