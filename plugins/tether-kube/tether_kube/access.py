"""What the user's roles allow on a Kubernetes cluster: which requests (``kubernetes_resources``)
and as whom Kubernetes sees them (``kubernetes_users``, ``kubernetes_groups``).

Tether decides first, then Kubernetes: a request the roles do not allow never reaches the API
server, and one they allow is forwarded with ``Impersonate-User`` and ``Impersonate-Group``
headers, so the cluster's own RBAC applies to what the mapped user and groups may do. As
Teleport does: one allowed ``kubernetes_users`` value is used; none means the Tether user name;
several require the user to choose one with kubectl's ``--as``; the groups are the allowed
``kubernetes_groups`` plus ``system:authenticated``; what a user asks to impersonate
themselves is honoured only within what the roles allow. Pure: the roles are evaluated by the
kernel's :class:`~tether.api.RoleSet`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from tether.api import (
    AccessDenied,
    FieldError,
    RoleField,
    RoleSet,
    TetherError,
    match_label_value,
    validate_label_value,
)
from tether_kube.requests import KubeRequest

__all__ = [
    "AUTHENTICATED_GROUP",
    "KINDS",
    "RESOURCES_FIELD",
    "VERBS",
    "Impersonation",
    "KubeResourceRule",
    "check_request",
    "impersonation",
]

#: The group the API server gives every authenticated user; impersonation must name it.
AUTHENTICATED_GROUP = "system:authenticated"
#: The labels field of roles that selects Kubernetes clusters.
LABELS_FIELD = "kubernetes_labels"

#: The kinds a ``kubernetes_resources`` rule names (Teleport's v7 role kinds), by API group
#: and plural resource; the flag says whether the kind is cluster-scoped. A resource not
#: listed here (events, custom resources) is matched only by ``kind: '*'``.
KINDS: Mapping[tuple[str, str], tuple[str, bool]] = {
    ("", "pods"): ("pod", False),
    ("", "secrets"): ("secret", False),
    ("", "configmaps"): ("configmap", False),
    ("", "namespaces"): ("namespace", True),
    ("", "services"): ("service", False),
    ("", "serviceaccounts"): ("serviceaccount", False),
    ("", "nodes"): ("kube_node", True),
    ("", "persistentvolumes"): ("persistentvolume", True),
    ("", "persistentvolumeclaims"): ("persistentvolumeclaim", False),
    ("apps", "deployments"): ("deployment", False),
    ("apps", "replicasets"): ("replicaset", False),
    ("apps", "statefulsets"): ("statefulset", False),
    ("apps", "daemonsets"): ("daemonset", False),
    ("rbac.authorization.k8s.io", "clusterroles"): ("clusterrole", True),
    ("rbac.authorization.k8s.io", "roles"): ("role", False),
    ("rbac.authorization.k8s.io", "clusterrolebindings"): ("clusterrolebinding", True),
    ("rbac.authorization.k8s.io", "rolebindings"): ("rolebinding", False),
    ("batch", "cronjobs"): ("cronjob", False),
    ("batch", "jobs"): ("job", False),
    ("certificates.k8s.io", "certificatesigningrequests"): ("certificatesigningrequest", True),
    ("networking.k8s.io", "ingresses"): ("ingress", False),
}
_KIND_NAMES = frozenset(kind for kind, _ in KINDS.values())
#: The verbs a rule may name.
VERBS = frozenset(
    {
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "exec",
        "portforward",
    }
)


def _kind(_instance: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value != "*" and value not in _KIND_NAMES:
        raise FieldError(
            ("kind",),
            f"{value!r} is not a Kubernetes kind Tether knows; use one of "
            f"{', '.join(sorted(_KIND_NAMES))}, or '*'",
        )


def _pattern(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        validate_label_value(value)
    except TetherError as exc:
        raise FieldError((attribute.name,), exc.message) from None


def _verbs(_instance: object, _attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for index, verb in enumerate(value):
        if verb != "*" and verb not in VERBS:
            raise FieldError(
                ("verbs", index), f"{verb!r} is not one of {', '.join(sorted(VERBS))}, or '*'"
            )


@attrs.frozen
class KubeResourceRule:
    """One item of a role's ``kubernetes_resources``: the objects of a kind, in namespaces and
    with names (literals, ``*`` globs or ``^...$`` expressions), and the verbs on them.

    A request without an object name in its path (a list, a watch, a create) matches only a
    rule whose ``name`` is ``*``; a cluster-scoped kind ignores ``namespace``, and a
    ``namespace`` rule names namespaces by ``name``.
    """

    kind: str = attrs.field(validator=_kind)
    namespace: str = attrs.field(default="*", validator=_pattern)
    name: str = attrs.field(default="*", validator=_pattern)
    verbs: tuple[str, ...] = attrs.field(default=("*",), validator=_verbs)

    def matches(self, request: KubeRequest) -> bool:
        kind, cluster_scoped = KINDS.get((request.api_group, request.resource), ("", False))
        if self.kind != "*" and self.kind != kind:
            return False
        if "*" not in self.verbs and request.verb not in self.verbs:
            return False
        if not cluster_scoped and not match_label_value(self.namespace, request.namespace):
            return False
        if not request.name:
            return self.name == "*"
        return match_label_value(self.name, request.name)


#: ``kubernetes_resources`` in roles' allow and deny.
RESOURCES_FIELD = RoleField(
    "kubernetes_resources",
    "records",
    "Kubernetes objects (kind, namespace, name, verbs) the role allows or denies",
    record=KubeResourceRule,
)


def _describe(request: KubeRequest) -> str:
    what = request.resource if not request.api_group else f"{request.resource}.{request.api_group}"
    if request.subresource:
        what = f"{what}/{request.subresource}"
    where = f" in namespace {request.namespace!r}" if request.namespace else ""
    named = f" {request.name!r}" if request.name and request.resource != "namespaces" else ""
    if request.resource == "namespaces" and request.name:
        named, where = f" {request.name!r}", ""
    return f"{request.verb} {what}{named}{where}"


def check_request(
    roles: RoleSet,
    request: KubeRequest,
    *,
    labels: Mapping[str, str],
    traits: Mapping[str, Sequence[str]],
) -> None:
    """Check a request against the ``kubernetes_resources`` of the roles that reach a cluster
    with ``labels``. A deny rule that matches refuses it; otherwise one reaching role must
    allow it: one that lists no rules allows every object (Kubernetes' RBAC decides), one that
    lists rules allows what they match. Non-resource requests (discovery) are allowed.

    :raises AccessDenied: naming the deny role, or the roles that do not allow it.
    """
    if not request.is_resource:
        return
    for role, rules in roles.conditions_matching(
        RESOURCES_FIELD.name, side="deny", labels_field=LABELS_FIELD, labels=labels, traits=traits
    ):
        if any(rule.matches(request) for rule in rules):
            raise AccessDenied(f"{_describe(request)} is denied by role {role!r}")
    reaching = roles.conditions_matching(
        RESOURCES_FIELD.name, side="allow", labels_field=LABELS_FIELD, labels=labels, traits=traits
    )
    for _role, rules in reaching:
        if not rules or any(rule.matches(request) for rule in rules):
            return
    names = ", ".join(role for role, _ in reaching) or "(none)"
    raise AccessDenied(
        f"{_describe(request)} is not allowed by the kubernetes_resources of roles {names}",
        hint="ask an admin for a role whose kubernetes_resources allow it",
    )


@attrs.frozen
class Impersonation:
    """Who the API server sees: the user and groups the service impersonates."""

    user: str
    groups: tuple[str, ...]


def impersonation(
    roles: RoleSet,
    *,
    username: str,
    labels: Mapping[str, str],
    traits: Mapping[str, Sequence[str]],
    requested_user: str = "",
    requested_groups: Sequence[str] = (),
) -> Impersonation:
    """The Kubernetes user and groups for one request, from what the roles allow on a cluster
    with ``labels`` and what the user asked for (kubectl's ``--as`` and ``--as-group``).

    :raises AccessDenied: the roles allow no Kubernetes user or group here; several users and
        the user chose none; or the user asked for a user or group the roles do not allow.
    """
    users = roles.allowed_values(
        "kubernetes_users", labels_field=LABELS_FIELD, labels=labels, traits=traits
    )
    groups = roles.allowed_values(
        "kubernetes_groups", labels_field=LABELS_FIELD, labels=labels, traits=traits
    )
    if not users and not groups:
        raise AccessDenied(
            f"roles {', '.join(roles.names) or '(none)'} allow no kubernetes_users or "
            "kubernetes_groups on this Kubernetes cluster",
            hint="ask an admin for a role with kubernetes_groups or kubernetes_users",
        )
    if requested_user:
        if (
            requested_user not in users
            and "*" not in users
            and not (not users and requested_user == username)
        ):
            raise AccessDenied(
                f"impersonating Kubernetes user {requested_user!r} is not allowed by roles "
                f"{', '.join(roles.names)} (their kubernetes_users: {', '.join(users) or 'none'})"
            )
        user = requested_user
    else:
        named = [u for u in users if u != "*"]
        if len(named) > 1:
            raise AccessDenied(
                f"roles {', '.join(roles.names)} allow several Kubernetes users "
                f"({', '.join(named)}): choose one with kubectl --as",
                hint="kubectl --as=USER ...",
            )
        user = named[0] if named else username
    if requested_groups:
        for group in requested_groups:
            if group != AUTHENTICATED_GROUP and group not in groups and "*" not in groups:
                raise AccessDenied(
                    f"impersonating Kubernetes group {group!r} is not allowed by roles "
                    f"{', '.join(roles.names)} (their kubernetes_groups: "
                    f"{', '.join(groups) or 'none'})"
                )
        chosen = list(requested_groups)
    else:
        chosen = [g for g in groups if g != "*"]
    if AUTHENTICATED_GROUP not in chosen:
        chosen.append(AUTHENTICATED_GROUP)
    return Impersonation(user=user, groups=tuple(chosen))
