"""The public API for plugin authors: the one kernel module a plugin imports.

A plugin (a protocol, an identity connector, an audit sink, a storage backend, a role-map
strategy, client commands) imports names from here and from :mod:`tether.testing` for its
tests, nothing else of ``tether``: ``.importlinter`` checks it in ``tox -e lint``. Every name
is documented in ``docs/api.md`` (``tests/test_api_docs.py`` checks that the two agree); the
modules they come from are the kernel's own business and may move.

The names, grouped as ``docs/api.md`` groups them:

* hooks: :data:`hookimpl`, the marker of every hook implementation (the hooks themselves are
  in ``docs/hooks.md``), and :data:`__version__`;
* errors a plugin raises or catches;
* server side, the types hooks take and return: resource kinds, protocol handlers and the
  targets they reach, node-agent protocols, identity connectors, backends (with the argument
  checks and the watch buffer they share, so that every backend refuses, reports and
  overflows alike), audit events, role-map rules, services, the configuration (the types of
  plugin-owned configuration sections, service roles, token types, role fields and declared
  CA types go with :class:`Config`);
* certificates and identities a protocol verifies;
* client side (``tether`` commands a plugin adds): the login profile, a stream to a target
  through the proxy, the command-line helpers and the groups the kernel owns.
"""

import importlib as _importlib
import typing as _typing

# The names, for type checkers and the import contracts; at run time each loads on first use.
if _typing.TYPE_CHECKING:
    from tether import __version__
    from tether.audit import AuditEvent, AuditQuery
    from tether.auth.sso_flows import SSORequest, is_loopback_http
    from tether.backend import (
        Backend,
        BackendClosed,
        BackendError,
        BackendType,
        Event,
        Item,
        Op,
        WatchBuffer,
        WatchOverflow,
        check_batch,
        check_condition,
        check_key,
        check_limit,
        check_prefix,
        check_swap_revision,
        open_sqlite,
    )
    from tether.cert_authority_types import CertAuthorityType, SignedCertificate
    from tether.cli import (
        cluster_option,
        complete_clusters,
        completer,
        emit_table,
        format_option,
        output,
        progress,
        run_async,
        run_trio,
        shared_group,
    )
    from tether.client.clusters import leaf_clusters
    from tether.client.dial import (
        cluster_host_cas,
        list_targets,
        open_target_stream,
        serve_local_listener,
    )
    from tether.client.env import CLUSTER_ENV, HOME_ENV, LOGIN_ENV
    from tether.client.profile import (
        Profile,
        current_profile,
        not_logged_in,
        profile_ssl_context,
        require_profile,
    )
    from tether.config import (
        Config,
        ConfigSection,
        FieldError,
        HostPort,
        ServiceRole,
        not_blank,
        positive,
    )
    from tether.connectors import (
        ClaimMapping,
        ClaimRules,
        ConnectorContext,
        ExternalIdentity,
        IdentityConnector,
        LoginIdentity,
        PasswordConnector,
        RedirectConnector,
    )
    from tether.dial import DialedTarget
    from tether.errors import (
        AccessDenied,
        AlreadyExists,
        AmbiguousTarget,
        CompareFailed,
        ConfigError,
        NotFound,
        TargetOffline,
        TetherError,
        TrustError,
    )
    from tether.hookspecs import hookimpl
    from tether.node.protocols import AgentContext, AgentProtocol, AgentStream, HostCredentials
    from tether.patterns import match_label_value, validate_label_value
    from tether.pki import (
        CertificateExpired,
        CertificateNotYetValid,
        Identity,
        MalformedCertificate,
        PrincipalNotAllowed,
        PrivateKey,
        known_hosts_ca_line,
        load_private_key,
        private_key_to_openssh,
        verify_ssh_user_cert,
    )
    from tether.protocols import DialedConnection, ProtocolHandler, ProxyConnection, relay_bytes
    from tether.rbac import RoleSet
    from tether.resources import (
        InvalidField,
        KindRegistry,
        Resource,
        ResourceKind,
        RoleField,
        resource_from_dict,
    )
    from tether.route_names import (
        ROUTE_NAME_SUFFIX,
        RouteName,
        parse_route_server_name,
        route_server_name,
    )
    from tether.services import Service, ServiceContext
    from tether.targets import Target, TargetKind, TargetQuery, matching_targets
    from tether.tlsstream import start_tls
    from tether.token_types import TokenType
    from tether.trust import RoleMapRule, expand_groups
    from tether.tunnel.forward import splice

#: where each name comes from: ``from tether.api import X`` imports X's module then, not every
#: module behind this facade (a plugin's import must not cost a CLI start every kernel module)
_SOURCES: dict[str, str] = {
    "__version__": "tether",
    "AuditEvent": "tether.audit",
    "AuditQuery": "tether.audit",
    "SSORequest": "tether.auth.sso_flows",
    "is_loopback_http": "tether.auth.sso_flows",
    "Backend": "tether.backend",
    "BackendClosed": "tether.backend",
    "BackendError": "tether.backend",
    "BackendType": "tether.backend",
    "Event": "tether.backend",
    "Item": "tether.backend",
    "Op": "tether.backend",
    "WatchBuffer": "tether.backend",
    "WatchOverflow": "tether.backend",
    "check_batch": "tether.backend",
    "check_condition": "tether.backend",
    "check_key": "tether.backend",
    "check_limit": "tether.backend",
    "check_prefix": "tether.backend",
    "check_swap_revision": "tether.backend",
    "open_sqlite": "tether.backend",
    "CertAuthorityType": "tether.cert_authority_types",
    "SignedCertificate": "tether.cert_authority_types",
    "cluster_option": "tether.cli",
    "complete_clusters": "tether.cli",
    "completer": "tether.cli",
    "emit_table": "tether.cli",
    "format_option": "tether.cli",
    "output": "tether.cli",
    "progress": "tether.cli",
    "run_async": "tether.cli",
    "run_trio": "tether.cli",
    "shared_group": "tether.cli",
    "leaf_clusters": "tether.client.clusters",
    "cluster_host_cas": "tether.client.dial",
    "list_targets": "tether.client.dial",
    "open_target_stream": "tether.client.dial",
    "serve_local_listener": "tether.client.dial",
    "CLUSTER_ENV": "tether.client.env",
    "HOME_ENV": "tether.client.env",
    "LOGIN_ENV": "tether.client.env",
    "Profile": "tether.client.profile",
    "current_profile": "tether.client.profile",
    "not_logged_in": "tether.client.profile",
    "profile_ssl_context": "tether.client.profile",
    "require_profile": "tether.client.profile",
    "Config": "tether.config",
    "ConfigSection": "tether.config",
    "FieldError": "tether.config",
    "HostPort": "tether.config",
    "ServiceRole": "tether.config",
    "not_blank": "tether.config",
    "positive": "tether.config",
    "ClaimMapping": "tether.connectors",
    "ClaimRules": "tether.connectors",
    "ConnectorContext": "tether.connectors",
    "ExternalIdentity": "tether.connectors",
    "IdentityConnector": "tether.connectors",
    "LoginIdentity": "tether.connectors",
    "PasswordConnector": "tether.connectors",
    "RedirectConnector": "tether.connectors",
    "DialedTarget": "tether.dial",
    "AccessDenied": "tether.errors",
    "AlreadyExists": "tether.errors",
    "AmbiguousTarget": "tether.errors",
    "CompareFailed": "tether.errors",
    "ConfigError": "tether.errors",
    "NotFound": "tether.errors",
    "TargetOffline": "tether.errors",
    "TetherError": "tether.errors",
    "TrustError": "tether.errors",
    "hookimpl": "tether.hookspecs",
    "AgentContext": "tether.node.protocols",
    "AgentProtocol": "tether.node.protocols",
    "AgentStream": "tether.node.protocols",
    "HostCredentials": "tether.node.protocols",
    "match_label_value": "tether.patterns",
    "validate_label_value": "tether.patterns",
    "CertificateExpired": "tether.pki",
    "CertificateNotYetValid": "tether.pki",
    "Identity": "tether.pki",
    "MalformedCertificate": "tether.pki",
    "PrincipalNotAllowed": "tether.pki",
    "PrivateKey": "tether.pki",
    "known_hosts_ca_line": "tether.pki",
    "load_private_key": "tether.pki",
    "private_key_to_openssh": "tether.pki",
    "verify_ssh_user_cert": "tether.pki",
    "DialedConnection": "tether.protocols",
    "ProtocolHandler": "tether.protocols",
    "ProxyConnection": "tether.protocols",
    "relay_bytes": "tether.protocols",
    "RoleSet": "tether.rbac",
    "InvalidField": "tether.resources",
    "KindRegistry": "tether.resources",
    "Resource": "tether.resources",
    "ResourceKind": "tether.resources",
    "RoleField": "tether.resources",
    "resource_from_dict": "tether.resources",
    "ROUTE_NAME_SUFFIX": "tether.route_names",
    "RouteName": "tether.route_names",
    "parse_route_server_name": "tether.route_names",
    "route_server_name": "tether.route_names",
    "Service": "tether.services",
    "ServiceContext": "tether.services",
    "Target": "tether.targets",
    "TargetKind": "tether.targets",
    "TargetQuery": "tether.targets",
    "matching_targets": "tether.targets",
    "start_tls": "tether.tlsstream",
    "TokenType": "tether.token_types",
    "RoleMapRule": "tether.trust",
    "expand_groups": "tether.trust",
    "splice": "tether.tunnel.forward",
}

# Sorted for ruff; docs/api.md groups them by what a plugin does.
__all__ = [
    "CLUSTER_ENV",
    "HOME_ENV",
    "LOGIN_ENV",
    "ROUTE_NAME_SUFFIX",
    "AccessDenied",
    "AgentContext",
    "AgentProtocol",
    "AgentStream",
    "AlreadyExists",
    "AmbiguousTarget",
    "AuditEvent",
    "AuditQuery",
    "Backend",
    "BackendClosed",
    "BackendError",
    "BackendType",
    "CertAuthorityType",
    "CertificateExpired",
    "CertificateNotYetValid",
    "ClaimMapping",
    "ClaimRules",
    "CompareFailed",
    "Config",
    "ConfigError",
    "ConfigSection",
    "ConnectorContext",
    "DialedConnection",
    "DialedTarget",
    "Event",
    "ExternalIdentity",
    "FieldError",
    "HostCredentials",
    "HostPort",
    "Identity",
    "IdentityConnector",
    "InvalidField",
    "Item",
    "KindRegistry",
    "LoginIdentity",
    "MalformedCertificate",
    "NotFound",
    "Op",
    "PasswordConnector",
    "PrincipalNotAllowed",
    "PrivateKey",
    "Profile",
    "ProtocolHandler",
    "ProxyConnection",
    "RedirectConnector",
    "Resource",
    "ResourceKind",
    "RoleField",
    "RoleMapRule",
    "RoleSet",
    "RouteName",
    "SSORequest",
    "Service",
    "ServiceContext",
    "ServiceRole",
    "SignedCertificate",
    "Target",
    "TargetKind",
    "TargetOffline",
    "TargetQuery",
    "TetherError",
    "TokenType",
    "TrustError",
    "WatchBuffer",
    "WatchOverflow",
    "__version__",
    "check_batch",
    "check_condition",
    "check_key",
    "check_limit",
    "check_prefix",
    "check_swap_revision",
    "cluster_host_cas",
    "cluster_option",
    "complete_clusters",
    "completer",
    "current_profile",
    "emit_table",
    "expand_groups",
    "format_option",
    "hookimpl",
    "is_loopback_http",
    "known_hosts_ca_line",
    "leaf_clusters",
    "list_targets",
    "load_private_key",
    "match_label_value",
    "matching_targets",
    "not_blank",
    "not_logged_in",
    "open_sqlite",
    "open_target_stream",
    "output",
    "parse_route_server_name",
    "positive",
    "private_key_to_openssh",
    "profile_ssl_context",
    "progress",
    "relay_bytes",
    "require_profile",
    "resource_from_dict",
    "route_server_name",
    "run_async",
    "run_trio",
    "serve_local_listener",
    "shared_group",
    "splice",
    "start_tls",
    "validate_label_value",
    "verify_ssh_user_cert",
]


def __getattr__(name: str) -> _typing.Any:
    """Import the module *name* comes from, on its first use (PEP 562)."""
    try:
        module = _SOURCES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
