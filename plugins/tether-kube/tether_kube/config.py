"""``kubernetes_service:``: the Kubernetes plugin's section of ``tether.yaml``, in Teleport's
shape.

Teleport's ``kubeconfig_file`` (every context of the file is a cluster, named after the
context) and ``labels`` (on every cluster), and, for clusters named otherwise or with labels of
their own, ``clusters:`` (a name, a kubeconfig file and a context each). ``tetherd start
--roles=kube`` turns it on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from tether.api import ConfigSection, FieldError, ServiceRole

__all__ = ["SECTION", "SERVICE_ROLE", "KubeClusterConfig", "KubeServiceConfig", "check_name"]

# Cluster names are what users type (`tether kube login east`), resource names and, hex-encoded,
# part of the TLS server name kubectl asks for.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str) -> str | None:
    """Why ``name`` cannot name a Kubernetes cluster, or None."""
    if len(name) > 63 or not _NAME.fullmatch(name):
        return (
            f"{name!r} is not a Kubernetes cluster name: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    return None


def _name(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    problem = check_name(value)
    if problem:
        raise FieldError((attribute.name,), problem)


@attrs.frozen
class KubeClusterConfig:
    """One cluster this service serves (``clusters:`` item).

    :ivar name: what users type.
    :ivar kubeconfig_file: the file with the API server's address and the service's own
        credentials (a client certificate or a token) for it.
    :ivar context: the context of that file (default: its ``current-context``).
    :ivar labels: this cluster's labels, on top of the section's.
    """

    name: str = attrs.field(validator=_name)
    kubeconfig_file: str
    context: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class KubeServiceConfig:
    """``kubernetes_service:``: the Kubernetes clusters this host serves to Tether users."""

    enabled: bool = False
    kubeconfig_file: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)
    clusters: tuple[KubeClusterConfig, ...] = ()

    def __attrs_post_init__(self) -> None:
        seen: set[str] = set()
        for index, cluster in enumerate(self.clusters):
            if cluster.name in seen:
                raise FieldError(
                    ("clusters", index, "name"), f"cluster {cluster.name!r} is listed twice"
                )
            seen.add(cluster.name)
        if self.enabled and not (self.kubeconfig_file or self.clusters):
            raise FieldError(
                ("kubeconfig_file",),
                "an enabled kubernetes_service needs a kubeconfig_file or clusters",
            )


SECTION = ConfigSection(
    name="kubernetes_service",
    type=KubeServiceConfig,
    template="""\
kubernetes_service:
  # This host serves Kubernetes clusters to Tether users (tetherd start --roles=kube turns it
  # on), forwarding their requests with its own credentials and impersonation headers; its
  # credentials need the `impersonate` verb on users and groups (docs/kubernetes.md).
  enabled: false
  # every context of this file is a cluster, named after the context
  kubeconfig_file: ""
  labels: {}
  clusters: []
  #  - name: east                       # what users type: tether kube login east
  #    kubeconfig_file: /etc/tether/east.kubeconfig
  #    context: admin                   # default: the file's current-context
  #    labels: {env: dev}
""",
)

#: ``tetherd start --roles=kube``: this host as a Kubernetes service
SERVICE_ROLE = ServiceRole("kube", "kubernetes_service", "this host as a Kubernetes service")
