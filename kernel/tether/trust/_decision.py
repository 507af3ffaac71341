"""The one trust decision: which local roles a verified identity holds in this cluster.

Whatever proved the identity (an X.509 certificate at a proxy or at auth, an SSH certificate at
a node, a forwarded user certificate at any protocol plugin's agent), what it may do here is
decided here, once: a user of this cluster keeps its roles; a user of a root cluster gets the
local roles its root roles map to through the leaf's ``trusted_cluster`` ``role_map``, while that
trust is enabled, and is refused when none maps. Two copies of this rule (one per certificate
kind) drifted apart before; there is one now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from tether import pki
from tether.errors import AccessDenied
from tether.plugins import TetherPluginManager
from tether.rbac import RoleSet
from tether.trust._rolemap import map_roles, mapped_roles

if TYPE_CHECKING:
    from tether.trust._verify import ClusterTrust

__all__ = ["AuditFn", "local_roles", "role_set"]

log = logging.getLogger(__name__)

#: Where the decision's audit events go: ``audit(event_type, fields)``; must not block.
AuditFn: TypeAlias = Callable[[str, Mapping[str, Any]], None]


def local_roles(
    trust: ClusterTrust,
    identity: pki.Identity,
    *,
    pm: TetherPluginManager,
    audit: AuditFn | None = None,
    where: Mapping[str, Any] | None = None,
) -> tuple[str, ...]:
    """The roles ``identity`` (whose certificate is verified already) holds in this cluster.

    A mapped login of a root user is audited as ``trust.login.mapped`` when ``audit`` is given
    (the node that admits the user does; a proxy verifying each connection does not).

    :param where: fields added to audit events to say where the decision was taken
        (``{"node": "web-1"}``).
    :raises AccessDenied: the cluster is not trusted, the trust is disabled, the identity is
        not a root's user, or none of its roles maps to a local role.
    """
    if identity.cluster == trust.cluster_name:
        return tuple(identity.roles)
    root = trust.roots.get(identity.cluster)
    if root is None:
        raise AccessDenied(f"cluster {identity.cluster!r} is not trusted here")
    if identity.kind != "user":
        raise AccessDenied(
            f"{identity.kind} {identity.username!r} of cluster {identity.cluster!r} has no "
            "access here"
        )
    spec = root.trusted_cluster.spec
    if not spec.enabled:
        raise AccessDenied(
            f"the trust in root cluster {identity.cluster!r} is disabled on cluster "
            f"{trust.cluster_name!r}",
            hint="its administrator sets spec.enabled: true on the trusted_cluster",
        )
    local = mapped_roles(map_roles(pm, spec.role_map, identity.roles, identity.cluster))
    if audit is not None:
        audit(
            "trust.login.mapped",
            {
                "user": identity.username,
                "root": identity.cluster,
                **(where or {}),
                "remote_roles": list(identity.roles),
                "local_roles": list(local),
            },
        )
    if not local:
        raise AccessDenied(
            f"no role of {identity.label} ({', '.join(identity.roles) or 'none'}) "
            f"maps to a role of cluster {trust.cluster_name!r}",
            hint=f"the role_map of trusted_cluster {identity.cluster!r} there decides",
        )
    return tuple(local)


def role_set(
    trust: ClusterTrust,
    names: Iterable[str],
    *,
    identity: pki.Identity,
    audit: AuditFn | None = None,
    where: Mapping[str, Any] | None = None,
) -> RoleSet:
    """The roles named ``names`` (local roles already) as this cluster defines them now.

    A name with no role here is skipped, not a reason to deny everything: logged, and audited
    as ``trust.role.missing`` when ``audit`` is given.

    :param identity: whose roles these are, for the log and the audit event.
    """
    names = list(names)
    known = [trust.roles[name] for name in names if name in trust.roles]
    missing = [name for name in names if name not in trust.roles]
    if missing:
        log.warning(
            "roles %s of %s do not exist here; ignoring them", ", ".join(missing), identity.label
        )
        if audit is not None:
            fields = {"user": identity.username, **(where or {}), "roles": missing}
            audit("trust.role.missing", fields)
    return RoleSet(known)
