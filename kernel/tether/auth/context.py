"""What every job of the auth service shares: the cluster's settings, plugins, storage, kinds
and CAs, and the acts all of them perform (build a resource, authorize a caller, audit).

Kept apart so that each job module (:mod:`tether.auth.tokens`, :mod:`tether.auth.joins`, ...)
depends on this small object rather than on :class:`tether.auth.service.AuthService`, which
assembles the jobs; a job never reaches another job through it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import attrs
from cryptography import x509

from tether import audit, pki
from tether.auth.decoded import DecodedResources
from tether.backend import Backend
from tether.config import Config
from tether.errors import AccessDenied, AuditUnavailable, TetherError
from tether.plugins import TetherPluginManager
from tether.rbac import RoleSet
from tether.resources import KindRegistry, Resource, make_resource, resource_from_bytes
from tether.tunnel.transport import KeepAlive

__all__ = ["AuthContext"]

log = logging.getLogger(__name__)


@attrs.frozen
class AuthContext:
    """The auth service's shared state. ``clock`` returns seconds since the epoch."""

    config: Config
    pm: TetherPluginManager
    backend: Backend
    registry: KindRegistry
    authorities: pki.ClusterAuthorities
    clock: Callable[[], float]
    #: stored resources decoded once per revision (listings of thousands of node entries)
    decoded: DecodedResources = attrs.field(
        default=attrs.Factory(lambda self: DecodedResources(self.registry), takes_self=True)
    )

    @property
    def cluster_name(self) -> str:
        return self.config.cluster_name

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)

    @property
    def keep_alive(self) -> KeepAlive:
        """The cluster's keep-alive (``auth_service.keep_alive_*``): what its proxies name to
        every tunnel's agent, and how long a leaf's tunnels may be silent before it is offline."""
        section = self.config.auth_service
        return KeepAlive(section.keep_alive_interval.total_seconds(), section.keep_alive_count_max)

    @property
    def ca_pin(self) -> str:
        return pki.ca_pin(self.authorities.tls.certificate)

    def trusted_tls_cas(self) -> list[x509.Certificate]:
        """The X.509 CAs whose client certificates this cluster's own API accepts: its own.

        Other clusters' CAs are trusted for tunnels and for their users at the proxy only
        (:meth:`tether.auth.service.AuthService.other_tls_cas`), never for the auth API, where
        a certificate's kind decides what the caller may do.
        """
        return [self.authorities.tls.certificate]

    def expired(self, res: Resource) -> bool:
        exp = res.metadata.expires
        return exp is not None and exp <= self.now()

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
        return make_resource(self.registry, kind, name, spec, expires=expires, labels=labels)

    async def roleset(self, role_names: Sequence[str]) -> RoleSet:
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
        roleset = await self.roleset(identity.roles)
        roleset.check_rule(kind, verb)

    async def audit_event(
        self, event_type: str, user: str, fields: Mapping[str, Any], *, success: bool = True
    ) -> None:
        """Record an event that happened in this cluster (see :meth:`audit_events`)."""
        await self.audit_events([(event_type, user, fields, success)])

    @contextlib.asynccontextmanager
    async def audited(
        self, user: str, events: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> AsyncIterator[None]:
        """Record ``events`` (each ``(type, fields)``, done by ``user``), then run the block
        that makes the change they record.

        A change that must be audited is stored only once its record is: with
        ``auth_service.audit.on_failure: refuse`` a sink that is down stops it before it
        happens, never after others could see it. If the block then fails (someone changed
        the resource meanwhile), each event is recorded again as a failure with the error,
        so the log never shows a change that did not happen without saying so.
        """
        await self.audit_events([(event_type, user, fields, True) for event_type, fields in events])
        try:
            yield
        except Exception as exc:
            error = exc.message if isinstance(exc, TetherError) else str(exc)
            # the block's error is the answer; a sink failing now is logged by emit
            with contextlib.suppress(AuditUnavailable):
                await self.audit_events(
                    [(t, user, {**fields, "error": error}, False) for t, fields in events]
                )
            raise

    async def audit_events(
        self, events: Sequence[tuple[str, str, Mapping[str, Any], bool]]
    ) -> None:
        """Record events that happened in this cluster, in order, in one call to each sink:
        each is ``(type, user, fields, success)``.

        :raises AuditUnavailable: a sink could not record them and
            ``auth_service.audit.on_failure`` is ``refuse``: the caller must not go on with
            what they record.
        """
        await self.record_audit(
            [
                audit.AuditEvent(
                    type=event_type,
                    cluster=self.cluster_name,
                    user=user,
                    success=success,
                    fields=fields,
                )
                for event_type, user, fields, success in events
            ]
        )

    async def record_audit(self, events: Sequence[audit.AuditEvent]) -> None:
        """Send whole events to every sink (see :meth:`audit_events`)."""
        await audit.emit(self.pm, events, on_failure=self.config.auth_service.audit.on_failure)
