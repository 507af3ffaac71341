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
  targets they reach, node-agent protocols, identity connectors, backends, audit events,
  role-map rules, services, the configuration (the types of plugin-owned configuration
  sections, service roles, token types, role fields and declared CA types go with
  :class:`Config`);
* certificates and identities a protocol verifies;
* client side (``tether`` commands a plugin adds): the login profile, a stream to a target
  through the proxy, the command-line helpers and the groups the kernel owns.
"""

from tether import __version__
from tether.audit import AuditEvent, AuditQuery
from tether.auth.sso_flows import SSORequest, is_loopback_http
from tether.backend import Backend, BackendType, open_sqlite
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
from tether.client.profile import (
    CLUSTER_ENV,
    HOME_ENV,
    LOGIN_ENV,
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
    AmbiguousTarget,
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
    "AmbiguousTarget",
    "AuditEvent",
    "AuditQuery",
    "Backend",
    "BackendType",
    "CertAuthorityType",
    "CertificateExpired",
    "CertificateNotYetValid",
    "ClaimMapping",
    "ClaimRules",
    "Config",
    "ConfigError",
    "ConfigSection",
    "ConnectorContext",
    "DialedConnection",
    "DialedTarget",
    "ExternalIdentity",
    "FieldError",
    "HostCredentials",
    "HostPort",
    "Identity",
    "IdentityConnector",
    "InvalidField",
    "KindRegistry",
    "LoginIdentity",
    "MalformedCertificate",
    "NotFound",
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
    "__version__",
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
