"""The ``kube`` plugin as Tether's plugin manager sees it (entry point group ``tether``).

Each hook is one part of Kubernetes access, all through the kernel's public API: the
``kubernetes_service:`` section and ``--roles=kube``, the ``kube`` token type (host role
``Kube``), the ``kube_cluster`` resource kind clusters are published as, the roles'
``kubernetes_resources``, the proxy's route for kubectl (a TLS server name prefix; the kernel
routes, through leaves too), the service inside the node agent, and ``tether kube``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.api import hookimpl

if TYPE_CHECKING:  # every command-line start loads this module: each hook imports its own
    from tether.api import (
        Config,
        ConfigSection,
        Profile,
        ProtocolHandler,
        ResourceKind,
        RoleField,
        ServiceRole,
        TokenType,
    )
    from tether_kube.service import KubeService

__all__ = [
    "tether_agent_protocols",
    "tether_cli_lazy_commands",
    "tether_client_logged_in",
    "tether_config_sections",
    "tether_protocols",
    "tether_resource_kinds",
    "tether_role_fields",
    "tether_service_roles",
    "tether_token_types",
]


@hookimpl
def tether_config_sections() -> list[ConfigSection]:
    """``kubernetes_service:``, where Teleport's configuration has it."""
    from tether_kube.config import SECTION

    return [SECTION]


@hookimpl
def tether_service_roles() -> list[ServiceRole]:
    """``kube``: ``tetherd start --roles=kube`` runs ``kubernetes_service``."""
    from tether_kube.config import SERVICE_ROLE

    return [SERVICE_ROLE]


@hookimpl
def tether_token_types() -> list[TokenType]:
    """``tetherctl tokens add --type=kube``: a host joins as a Kubernetes service."""
    from tether.api import TokenType
    from tether_kube.kind import HOST_ROLE

    return [TokenType("kube", HOST_ROLE, "a Kubernetes service joins the cluster", host_role=True)]


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """``kube_cluster``: the clusters services publish on every heartbeat."""
    from tether_kube.kind import KUBE_CLUSTER

    return [KUBE_CLUSTER]


@hookimpl
def tether_role_fields() -> list[RoleField]:
    """``kubernetes_resources``: the objects (kind, namespace, name, verbs) a role allows or
    denies."""
    from tether_kube.access import RESOURCES_FIELD

    return [RESOURCES_FIELD]


@hookimpl
def tether_protocols() -> list[ProtocolHandler]:
    """kubectl's route: connections whose TLS server name starts with ``kube-`` (HTTP/1.1,
    so that exec's SPDY upgrade passes), and ``tether-kube/1`` for ``tether kube ls``; the
    kernel finds the cluster among those the user may see, here or in a leaf, and opens a
    stream to its service, which speaks to the API server."""
    from tether.api import ProtocolHandler
    from tether_kube.cli import ALPN, SERVER_NAME_PREFIX, TITLE
    from tether_kube.kind import KUBE_TARGET, PROTOCOL
    from tether_kube.refusal import refuse_at_proxy

    return [
        ProtocolHandler(
            name=PROTOCOL,
            alpn=(ALPN,),
            target_kind=KUBE_TARGET,
            title=TITLE,
            server_name_prefix=SERVER_NAME_PREFIX,
            server_name_alpn=("http/1.1",),
            refuse=refuse_at_proxy,
        )
    ]


@hookimpl
def tether_agent_protocols(config: Config) -> list[KubeService]:
    """The Kubernetes service inside the node agent, when ``kubernetes_service.enabled``."""
    from tether_kube.service import agent_protocols

    return agent_protocols(config)


@hookimpl
def tether_cli_lazy_commands(program: str) -> dict[str, str]:
    """``tether kube ls|login|logout|credentials``, imported when named."""
    return {"kube": "tether_kube.cli:kube_group"} if program == "tether" else {}


@hookimpl
def tether_client_logged_in(profile: Profile) -> None:
    """``tether login`` keeps the kubectl contexts of this proxy current: their CA is the
    new login's (their credentials are read at each use)."""
    from tether_kube.kubeconfig import kubeconfig_path, refresh_entries

    refresh_entries(kubeconfig_path(), profile.proxy, profile.tls_ca_file.read_text())
