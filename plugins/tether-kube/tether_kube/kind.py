"""The ``kube_cluster`` resource kind: a Kubernetes cluster a Kubernetes service serves, and
how routing sees it.

A service publishes one entry per cluster on every heartbeat, with an expiry, so the inventory
lists the clusters whose service is alive. ``metadata.name`` is the cluster's name, which users
type (``tether kube login east``) and which is unique in a Tether cluster; ``spec.host_id`` is
the service's host, through whose tunnel the proxy reaches it. Who sees an entry is decided
with the roles' ``kubernetes_labels`` against the entry's labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from tether.api import InvalidField, Resource, ResourceKind, RoleSet, Target, TargetKind

__all__ = [
    "HOST_ROLE",
    "KUBE_CLUSTER",
    "KUBE_TARGET",
    "PROTOCOL",
    "KubeClusterSpec",
    "KubeClusterStatus",
    "describe",
]

#: The protocol's name: the mux target proxies open to the service.
PROTOCOL = "kube"
#: The host role a Kubernetes service joins with (``tetherctl tokens add --type=kube``).
HOST_ROLE = "Kube"


@attrs.frozen
class KubeClusterSpec:
    """``spec`` of a ``kube_cluster``.

    :param host_id: the host id of the Kubernetes service that serves it.
    :param hostname: that service's host name, for people.
    :param version: the plugin's version on that host.
    """

    host_id: str = ""
    hostname: str = ""
    version: str = ""


@attrs.frozen
class KubeClusterStatus:
    """``status`` of a ``kube_cluster`` as a user is shown it (never stored): the Kubernetes
    users and groups their roles allow there, as ``tether kube ls`` shows them."""

    kubernetes_users: tuple[str, ...] = ()
    kubernetes_groups: tuple[str, ...] = ()


def _user_view(resource: Resource, roles: RoleSet, traits: Mapping[str, Sequence[str]]) -> Resource:
    labels = resource.metadata.labels

    def allowed(field: str) -> tuple[str, ...]:
        return tuple(
            roles.allowed_values(
                field, labels_field="kubernetes_labels", labels=labels, traits=traits
            )
        )

    status = KubeClusterStatus(allowed("kubernetes_users"), allowed("kubernetes_groups"))
    return attrs.evolve(resource, status=status)


def _validate(resource: Resource) -> None:
    spec: KubeClusterSpec = resource.spec
    if not spec.host_id:
        raise InvalidField(("spec", "host_id"), "must not be empty")


def _publisher(resource: Resource) -> str:
    spec: KubeClusterSpec = resource.spec
    return spec.host_id


KUBE_CLUSTER = ResourceKind(
    name="kube_cluster",
    aliases=("kube_clusters", "kube", "kubernetes_cluster"),
    versions=("v3",),
    spec_type=KubeClusterSpec,
    status_type=KubeClusterStatus,
    storage_prefix="/kube_clusters/",
    validate=_validate,
    published_by="node",
    publisher_role="Kube",
    publisher=_publisher,
    readable_by=("proxy",),
    access_labels="kubernetes_labels",
    user_view=_user_view,
)


def describe(resource: Resource) -> Target:
    """An entry as routing sees it: reached through the tunnel of the service that published
    it, named by the cluster's name, selected by its labels."""
    spec: KubeClusterSpec = resource.spec
    return Target(
        kind=KUBE_CLUSTER.name,
        id=spec.host_id,
        name=resource.metadata.name,
        labels=dict(resource.metadata.labels),
    )


#: What ``tether kube login`` and kubectl reach: the kernel finds and dials clusters with this.
KUBE_TARGET = TargetKind(KUBE_CLUSTER, describe, list_command="tether kube ls")
