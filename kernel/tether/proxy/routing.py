"""Routing a stream to a target in any cluster, for any protocol.

``(user, cluster, target, protocol) -> stream``. In this proxy's own cluster the target is
found among the resources of the protocol's target kind that auth shows the user (asked *as
the user*, with their forwarded certificate), then reached through its own tunnel or at its
registered address. In a leaf cluster, the leaf must be one the user may see (a leaf hidden by
``cluster_labels`` is "not found", as one that does not exist); the request goes through the
leaf's tunnel to the leaf's proxy, which routes it the same way within its own inventory only
(:meth:`Router.serve_remote`): a leaf never dials an address a root names, never passes a
request on to a cluster of its own (trust is not transitive: a root reaches its leaves, not
theirs), and audits what it refuses (``trust.stream.refused``). Every hop speaks the one dial
format of :mod:`tether.dial`, refusals included: the error a leaf or an agent raised reaches
the user as the same class, with the same message and hint.

The front door's port rule lives here too: a client may name the port its target registered,
never another service on the target's host (:func:`check_port`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from tether.auth.http_client import FORWARDED_CERT_HEADER
from tether.dial import (
    DIAL,
    LIST,
    DialedTarget,
    DialRequest,
    parse_targets,
    refusal_error,
    refusal_reason,
    targets_answer,
)
from tether.errors import AccessDenied, NotFound, TargetOffline, TetherError
from tether.protocols import ProtocolHandler, ProxyContext
from tether.resources import CERT_AUTHORITY, KindRegistry, resource_from_dict
from tether.targets import Target, TargetKind, TargetQuery, matching_targets, resolve_target
from tether.tcpdial import open_tcp
from tether.tunnel.control import MAX_LISTING, ControlChannel, ControlError
from tether.tunnel.forward import splice
from tether.tunnel.server import ClusterOffline, TargetRefused
from tether.tunnel.transport import IncomingStream

__all__ = [
    "DIAL_TIMEOUT",
    "PortRefused",
    "Routed",
    "Router",
    "check_port",
]

log = logging.getLogger(__name__)

#: How long reaching a target (or a leaf's answer) may take.
DIAL_TIMEOUT = 10.0

_CAS = KindRegistry([CERT_AUTHORITY], plugin="kernel")


class PortRefused(AccessDenied):
    """A client asked for a port of a target's host other than the target's own."""


@attrs.frozen
class Routed:
    """A stream routed to a target.

    :param stream: to the target's server.
    :param dialed: which target it is (with its cluster's host CAs when it is a leaf's).
    :param early: bytes the target sent that arrived with a leaf's answer: they come first.
    """

    stream: trio.abc.Stream
    dialed: DialedTarget
    early: bytes = b""


def check_port(handler: ProtocolHandler, target: Target, port: int) -> None:
    """A client's port (``tether ssh -p``) may name the port the target registered, never
    another service on its host; other ports are the protocol's business (SSH port
    forwarding, which the target allows or not by the user's roles).

    :raises PortRefused: another port, or any port for a target reached through its tunnel.
    """
    if not port:
        return
    what = f"{target.kind} {target.name!r}"
    protocol = handler.display_name
    hint = "; ".join(h for h in ("leave out the port", handler.port_hint) if h)
    if target.use_tunnel:
        raise PortRefused(
            f"{what} is reached through its tunnel, which leads only to its {protocol} "
            f"server; port {port} cannot be chosen",
            hint=hint,
        )
    registered = target.addr.rpartition(":")[2]
    if str(port) != registered:
        raise PortRefused(
            f"{what} serves {protocol} on port {registered}; the front door connects only "
            f"there, not to port {port}",
            hint=hint,
        )


def _dialed(target: Target) -> DialedTarget:
    return DialedTarget(
        kind=target.kind,
        id=target.id,
        name=target.name,
        addr=target.addr,
        use_tunnel=target.use_tunnel,
    )


class Router:
    """Opens streams to targets for this proxy's protocols.

    :param proxy: this proxy (its cluster, its client of auth, its tunnel server).
    :param protocols: the protocols that reach targets, by name.
    """

    def __init__(self, proxy: ProxyContext, protocols: Mapping[str, ProtocolHandler]) -> None:
        self.proxy = proxy
        self._protocols = {
            name: handler for name, handler in protocols.items() if handler.target_kind
        }
        kinds = [
            handler.target_kind.resource
            for handler in self._protocols.values()
            if handler.target_kind
        ]
        #: reads the targets' documents from auth (one kind may serve several protocols)
        self._kinds = KindRegistry({kind.name: kind for kind in kinds}.values(), plugin="routing")

    @property
    def cluster_name(self) -> str:
        return self.proxy.cluster_name

    # --- what the user may see -----------------------------------------------------------

    async def _visible_docs(self, kind: TargetKind, user_cert: str) -> list[dict[str, Any]]:
        """The documents of ``kind`` in this cluster the user may see (a root's user too:
        auth maps their roles first)."""
        return await self.proxy.auth.get_resources(
            kind.name, headers={FORWARDED_CERT_HEADER: user_cert}
        )

    async def _visible(
        self, kind: TargetKind, user_cert: str, query: str | None = None
    ) -> list[Target]:
        """The targets of ``kind`` the user may see, or only those ``query`` (what the user
        typed) names: auth matches it against every entry and sends those few, rather than
        the whole inventory for this proxy to decode and describe."""
        docs = await self.proxy.auth.get_resources(
            kind.name, target=query, headers={FORWARDED_CERT_HEADER: user_cert}
        )
        source = f"{kind.name} from auth"
        return [kind.describe(resource_from_dict(doc, self._kinds, source=source)) for doc in docs]

    async def _check_leaf_visible(self, cluster: str, user_cert: str) -> None:
        """A leaf the user may not see (``cluster_labels``) is "not found", as one that does
        not exist."""
        try:
            await self.proxy.auth.get_resources(
                "remote_cluster", cluster, headers={FORWARDED_CERT_HEADER: user_cert}
            )
        except NotFound:
            raise NotFound(
                f"cluster {cluster!r} not found",
                hint="run `tether clusters` to see the clusters you can reach",
            ) from None

    async def _host_cas(self, cluster: str) -> list[str]:
        """The SSH host CA lines of ``cluster`` (this one or a leaf), from this cluster's auth.

        One resource by name (``host/<cluster>``): listing every CA cost the root half a
        second of CPU per session with 1,000 leaves (benchmarks/many_leaves.py).
        """
        try:
            [doc] = await self.proxy.auth.get_resources("cert_authority", f"host/{cluster}")
        except NotFound:
            return []
        ca = resource_from_dict(doc, _CAS, source="cert_authority from auth")
        return [*ca.spec.active_keys.ssh, *ca.spec.additional_trusted_keys.ssh]

    # --- the first proxy's operations ------------------------------------------------------

    async def list_targets(
        self, handler: ProtocolHandler, request: DialRequest
    ) -> list[dict[str, Any]]:
        """The targets of ``request.cluster`` the user may see (``tether ls``), as documents."""
        kind = _kind(handler)
        if request.cluster == self.cluster_name:
            return await self._visible_docs(kind, request.user_cert)
        stream = await self._open_leaf(handler, request)
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                answer = await ControlChannel(stream, max_message=MAX_LISTING).receive()
        finally:
            await trio.aclose_forcefully(stream)
        if answer is None:
            raise ControlError(f"the leaf cluster {request.cluster!r} answered nothing")
        return parse_targets(answer)

    async def host_cas(self, request: DialRequest) -> list[str]:
        """The SSH host CAs of a cluster the user may see (``tether config``)."""
        if request.cluster != self.cluster_name:
            await self._check_leaf_visible(request.cluster, request.user_cert)
        return await self._host_cas(request.cluster)

    async def open(self, handler: ProtocolHandler, request: DialRequest, *, user: str) -> Routed:
        """A stream to the target ``request`` names, in this cluster or a leaf.

        :param user: who asks (the verified identity's user name), for the audit.

        :raises NotFound: no such target or cluster among those the user may see.
        :raises AmbiguousTarget: several targets answer to what the user typed.
        :raises PortRefused: a port other than the target's own (audited here).
        :raises TargetOffline: the target or its cluster cannot be reached now.
        :raises TetherError: the leaf, or the agent serving the target, refused: its error,
            as the class it raised there.
        """
        if request.cluster == self.cluster_name:
            target = await self._find(handler, request)
            try:
                check_port(handler, target, request.port)
            except PortRefused as exc:
                await self._audit_port_refused(handler, request, target, user, exc.message)
                raise
            return Routed(await self._reach(handler, target, request), _dialed(target))
        stream = await self._open_leaf(handler, request)
        channel = ControlChannel(stream)
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                answer = await channel.receive()
            if answer is None:
                raise ControlError(f"the leaf cluster {request.cluster!r} answered nothing")
            dialed = DialedTarget.from_answer(answer)
            # a leaf's host CA comes from the handshake; the client has its own cluster's
            # from the login, so the common case costs no second call to auth per session
            host_cas = await self._host_cas(request.cluster)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        dialed = attrs.evolve(dialed, host_cas=tuple(host_cas))
        return Routed(stream, dialed, channel.take_buffered())

    async def _find(
        self, handler: ProtocolHandler, request: DialRequest, *, from_root: bool = False
    ) -> Target:
        """The target ``request`` names among the ones of this cluster the user may see.

        :param from_root: a root's proxy asks: this cluster is a leaf of the user's proxy,
            which hints name (``tether ls --cluster=LEAF``).
        """
        kind = _kind(handler)
        query = TargetQuery.parse(request.target)
        # the targets it names, as auth matched them; resolved here all the same (an auth
        # older than the query answers every target), and when none matches, the listing
        # the "not found" message suggests the closest names from
        targets = await self._visible(kind, request.user_cert, request.target)
        if not matching_targets(targets, query):
            targets = await self._visible(kind, request.user_cert)
        return resolve_target(targets, query, kind=kind, cluster=self.cluster_name, leaf=from_root)

    async def _reach(
        self, handler: ProtocolHandler, target: Target, request: DialRequest
    ) -> trio.abc.Stream:
        """A stream to ``target``'s server: through its tunnel (the mux target is the
        protocol's name, the metadata the dial request and the name of the target it
        resolved to, ``resolved``: an agent serving several targets learns which one), or at
        its registered address."""
        what = f"{target.kind} {target.name!r}"
        if target.use_tunnel:
            fields = {**request.to_fields(), "resolved": target.name}
            try:
                return await self.proxy.tunnels.dial(
                    self.cluster_name, handler.name, fields, agent=target.id
                )
            except ClusterOffline as exc:
                raise TargetOffline(
                    f"{what} is offline: its tunnel is not connected to this proxy",
                    hint="check that its tetherd runs and reaches the proxy",
                ) from exc
            except TargetRefused as exc:
                # its agent refused the stream (a protocol it does not serve, a user its
                # trust refuses): its error, as its class, saying which target refused
                error = refusal_error(exc.reason)
                raise type(error)(
                    f"{what} refused the stream: {error.message}", hint=error.hint
                ) from None
        host, _, port = target.addr.rpartition(":")
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                return await open_tcp(host, int(port))
        except (OSError, trio.TooSlowError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or "timed out"
            raise TargetOffline(
                f"{what} at {target.addr} is unreachable: {reason}",
                hint="check that its tetherd runs and its listen address is reachable",
            ) from None

    async def _open_leaf(self, handler: ProtocolHandler, request: DialRequest) -> trio.abc.Stream:
        """A stream to the leaf's proxy carrying ``request``, if the user may see the leaf.
        The leaf verifies the forwarded certificate itself and maps its roles."""
        cluster = request.cluster
        await self._check_leaf_visible(cluster, request.user_cert)
        try:
            return await self.proxy.tunnels.dial(cluster, handler.name, request.to_fields())
        except ClusterOffline:
            raise TargetOffline(
                f"cluster {cluster!r} is offline: it has no tunnel to this proxy",
                hint="check the leaf's proxy and its trusted_cluster (spec.enabled)",
            ) from None
        except TargetRefused as exc:
            # the leaf's own error (a node not found there, a user its role map refuses),
            # rebuilt as its class with its hint
            raise refusal_error(exc.reason) from None

    async def _audit_port_refused(
        self,
        handler: ProtocolHandler,
        request: DialRequest,
        target: Target,
        user: str,
        reason: str,
    ) -> None:
        """Record ``proxy.dial.refused`` for a port the proxy would not dial, with the
        target under its kind's name (``node``, ``node_id``), through the proxy's audit
        backlog: it reaches auth even if auth is out of reach right now."""
        fields = {
            "protocol": handler.name,
            target.kind: target.name,
            f"{target.kind}_id": target.id,
            "port": request.port,
            "client": request.client,
            "reason": reason,
        }
        await self.proxy.record_event("proxy.dial.refused", user, fields, success=False)

    # --- at a leaf: streams from a root --------------------------------------------------

    async def serve_remote(self, root: str, incoming: IncomingStream) -> None:
        """At a leaf's proxy: a root's proxy asks, through the leaf's tunnel, for a target
        here (or for the list of them).

        Only targets of this cluster's inventory are dialled, never an address the root
        names, and never a target of another cluster: a request that names one (a leaf of
        this cluster, say) is refused, as trust is not transitive. The stream's first line is
        the answer; then bytes flow between the root user's client and the target, which
        verifies the root-issued certificate and maps its roles. A refusal is the error's
        :func:`~tether.dial.refusal_reason`, so the root's user sees the same error.
        """
        handler = self._protocols.get(incoming.target)
        if handler is None:
            refused = TetherError(f"cluster {self.cluster_name!r} serves no {incoming.target!r}")
            await self._refuse(root, incoming, refused, {})
            return
        kind = _kind(handler)
        metadata = incoming.metadata
        fields: dict[str, str] = (
            {"op": LIST}
            if metadata.get("type") == LIST
            else {kind.name: metadata.get("target", ""), "port": metadata.get("port", "0") or "0"}
        )
        try:
            request = DialRequest.from_fields(metadata)
            if request.cluster != self.cluster_name:
                fields["requested_cluster"] = request.cluster
                raise AccessDenied(
                    f"cluster {self.cluster_name!r} passes no request on to cluster "
                    f"{request.cluster!r}: trust is not transitive, a root cluster reaches "
                    "its own leaves only",
                    hint="run `tether clusters` to see the clusters you can reach",
                )
            if request.op == LIST:
                docs = await self._visible_docs(kind, request.user_cert)
            elif request.op == DIAL:
                target = await self._find(handler, request, from_root=True)
                check_port(handler, target, request.port)
                stream = await self._reach(handler, target, request)
            else:
                raise ControlError(f"{request.op!r} is asked of the first proxy only")
        except TetherError as exc:
            await self._refuse(root, incoming, exc, fields)
            return
        accepted = incoming.accept()
        if request.op == LIST:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await ControlChannel(accepted).send(targets_answer(docs))
            await trio.aclose_forcefully(accepted)
            return
        try:
            await ControlChannel(accepted).send(_dialed(target).answer())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.aclose_forcefully(stream)
            await trio.aclose_forcefully(accepted)
            return
        await splice(accepted, stream)

    async def _refuse(
        self, root: str, incoming: IncomingStream, error: TetherError, fields: Mapping[str, str]
    ) -> None:
        """Reject the stream with ``error`` (its :func:`~tether.dial.refusal_reason`) and
        audit the refusal here, on the leaf where it happened, as ``trust.stream.refused``
        (with the root, the protocol as ``target``, the error's message as ``reason`` and
        ``fields``), through the proxy's audit backlog."""
        reason = error.message
        log.info("refused root cluster %s (%s): %s", root, incoming.target, reason)
        incoming.reject(refusal_reason(error))
        event = {"root": root, "target": incoming.target, "reason": reason, **fields}
        await self.proxy.record_event("trust.stream.refused", "", event, success=False)


def _kind(handler: ProtocolHandler) -> TargetKind:
    if handler.target_kind is None:
        raise TetherError(f"protocol {handler.name!r} reaches no targets")
    return handler.target_kind
