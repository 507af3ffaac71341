# Hookspecs are signatures with docstrings only; pluggy never runs their bodies.
# mypy: disable-error-code="empty-body"
"""Every extension point of Tether, one documented hook each.

Plugins implement these with ``@tether.hookimpl``; the kernel's own builtins (the SQLite
backend, the JSON-lines audit sink, local users, the core resource kinds) use exactly the same
hooks, so any of them can be disabled in configuration and replaced.

pluggy calls hooks synchronously. A hook documented as "may return an awaitable" is awaited by
the kernel (see :func:`tether.plugins.await_maybe`), so implementations may be plain functions or
return coroutines.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from tether.audit import AuditEvent, AuditQuery
    from tether.backend import BackendType
    from tether.cert_authority_types import CertAuthorityType
    from tether.client.profile import Profile
    from tether.config import Config, ConfigSection, ServiceRole
    from tether.connectors import IdentityConnector
    from tether.node.protocols import AgentProtocol
    from tether.protocols import ProtocolHandler
    from tether.resources import ResourceKind, RoleField
    from tether.services import Service, ServiceContext
    from tether.token_types import TokenType
    from tether.trust import RoleMapRule

hookspec = pluggy.HookspecMarker("tether")
hookimpl = pluggy.HookimplMarker("tether")


# -------------------------------------------------------------------------------------------
# Registration: called once while the plugin manager is assembled, before any service starts.
# -------------------------------------------------------------------------------------------


@hookspec
def tether_configure(config: Config) -> None:
    """Read this daemon's configuration before any service starts.

    Called once by ``tetherd start`` after ``tether.yaml`` is loaded and the plugin manager
    is built. Plugin settings live under ``plugins.settings.<plugin name>``. Returns nothing;
    raise :class:`~tether.errors.ConfigError` to refuse a setting, which stops start-up.

    :param config: the loaded configuration.
    """


@hookspec
def tether_config_sections() -> list[ConfigSection]:
    """Return the top-level sections of ``tether.yaml`` this plugin owns (``ssh_service``).

    Called once when a configuration file is read (by ``tetherd``, ``tetherctl`` and
    :func:`tether.config.load_config`), before the file is structured. Each
    :class:`~tether.config.ConfigSection` names its key and a frozen attrs class with a
    default for every field; the kernel structures it with its own strict converter, so a
    mistake is reported as the kernel's are (``file:line: section.field: problem``, unknown
    keys with "did you mean"). Read it back, typed, with
    :meth:`Config.section(YourSection) <tether.config.Config.section>`: its defaults when the
    file has no such section. A name the kernel uses, or one declared twice, stops start-up
    with an error naming the plugins.
    """


@hookspec
def tether_service_roles() -> list[ServiceRole]:
    """Return the service roles this plugin adds to ``tetherd start --roles`` (``node``).

    Called once when ``tetherd start`` applies its flags. Each
    :class:`~tether.config.ServiceRole` names the section whose ``enabled`` field it sets:
    the roles named on the command line run, the others do not. The kernel registers
    ``auth`` and ``proxy`` the same way. A role declared twice, or one whose section has no
    ``enabled`` field, stops start-up with an error naming the plugin.
    """


@hookspec
def tether_token_types() -> list[TokenType]:
    """Return the join token types this plugin adds to ``tetherctl tokens add --type=...``.

    Called once when the auth service starts, and by ``tetherctl tokens add --help``. Each
    :class:`~tether.token_types.TokenType` names the type and the role stored in the token,
    which is what the join of that kind of host checks; ``host_role=True`` makes the role a
    host role, which node agents running protocols of that ``host_role`` join with (and
    which publishing a kind of that ``publisher_role`` needs). An admin may combine types
    (``--type=node,db``). The kernel registers ``node`` (host role ``Node``), ``proxy`` and
    ``trusted_cluster`` the same way. An unknown type is refused with the list
    of registered ones; a name or role declared twice stops start-up naming the plugins.
    """


@hookspec
def tether_cert_authorities() -> list[CertAuthorityType]:
    """Return the X.509 certificate authorities this plugin declares beside the kernel's.

    Called when the auth service starts, which creates each declared CA the first time
    (``keys/ca_<name>.key`` and ``.crt`` in its data directory, with the algorithm of
    ``auth_service.tls_ca_algorithm``), publishes it as the ``cert_authority`` resource
    ``<name>/<cluster>`` and signs with it for those the
    :class:`~tether.cert_authority_types.CertAuthorityType` allows; and by ``tetherctl`` for
    the choices of ``auth export --type`` and ``auth sign --format``. A declared CA is this
    cluster's own: never sent to another cluster. Once declared, its files stay when the
    plugin is uninstalled. A bad or kernel name (``user``, ``host``, ``tls``), or a name or
    format declared twice, stops start-up naming the plugins.
    """


@hookspec
def tether_resource_kinds() -> list[ResourceKind]:
    """Return the resource kinds this plugin adds (``role``, ``user``, ``node``, ...).

    Called once when a registry of kinds is built (by ``tetherd start``, ``tetherctl`` and the
    auth service). The lists of all plugins are merged; a kind name or alias declared by two
    plugins stops start-up with an error naming both. Kinds are what ``tetherctl create``,
    ``get`` and ``rm`` accept.
    """


@hookspec
def tether_role_fields() -> list[RoleField]:
    """Return the fields this plugin adds to a role's ``allow`` and ``deny`` conditions.

    Called once when a registry of kinds is built, after ``tether_resource_kinds``. Each
    :class:`~tether.resources.RoleField` is a list of strings (each may be a template such
    as ``{{internal.db_users}}``) or a label selector; the ``role`` kind then structures,
    validates (errors carry the file's line) and writes back the field like the kernel's
    own, and :class:`~tether.rbac.RoleSet` evaluates it by name (``traits_values`` for
    strings, ``can_access`` for labels). A name roles already have, or one declared twice,
    is an error naming the plugins.
    """


@hookspec
def tether_backends() -> list[BackendType]:
    """Return the storage backends this plugin provides, each keyed by its URL scheme.

    Called once when the auth service opens its storage (``storage.url`` in ``tether.yaml``,
    ``sqlite://`` under the data dir by default). A scheme provided twice is an error. Every
    backend must pass the conformance suite in :mod:`tether.testing.backend_conformance`.
    """


@hookspec
def tether_identity_connectors() -> list[IdentityConnector]:
    """Return the identity connector kinds this plugin provides (``local``, ``github``, ...).

    Called once when the auth service starts. A connector turns a login attempt into an
    identity (user name, roles, traits); the kernel issues the certificates. Two shapes exist
    (:mod:`tether.connectors`): a ``PasswordConnector`` named what users pass as
    ``--auth``, and a ``RedirectConnector`` (single sign-on) named after the resource kind of
    its settings, whose state, nonce, PKCE, expiry and one-time use the kernel owns
    (:mod:`tether.auth.sso_flows`), as it maps the provider's claims to roles through the
    rules the connector's ``claim_rules`` locate. Connectors receive a
    :class:`~tether.connectors.ConnectorContext`, never the auth service. A connector name
    provided twice is an error.
    """


@hookspec
def tether_cli_commands(program: str, cli: click.Group) -> None:
    """Add subcommands to one of Tether's command-line programs.

    Called at most once per program start, before the named command's arguments are parsed:
    unless that command runs without plugins (``version``, ``completion``, ``tether status``
    and ``logout``). Returns nothing: add commands with ``cli.add_command(...)``.

    :param program: ``"tetherd"``, ``"tetherctl"`` or ``"tether"``.
    :param cli: that program's top-level click group.
    """


@hookspec
def tether_cli_lazy_commands(program: str) -> dict[str, str]:
    """Name the subcommands this plugin adds to one of Tether's programs, each imported only
    when the command line names it.

    Called at most once per program start, before the named command's arguments are parsed,
    with ``tether_cli_commands``. Returns the path of each command (``"ssh"``, or
    ``"proxy ssh"`` for a subcommand of a group the kernel shares) mapped to where its click
    command is, written as an entry point's object (``"tether_ssh.cli:ssh"``). ``tether ssh``
    then imports the SSH plugin's command module alone, not every plugin's; help and
    completion import them all. A path two plugins declare is an error naming both.

    :param program: ``"tetherd"``, ``"tetherctl"`` or ``"tether"``.
    """


@hookspec
def tether_client_logged_in(profile: Profile) -> None:
    """Bring what a plugin wrote for a proxy's users up to date after a new login.

    Called by ``tether login`` once the login's files are written (and the cluster it named
    selected), in the user's process. Returns nothing. A plugin that keeps client
    configuration naming this proxy (the Kubernetes plugin's kubeconfig entries, whose CA
    comes from the login) rewrites it here; an exception is printed as a warning naming the
    plugin, and the login stands.

    :param profile: the new login (``profile.proxy``, ``profile.tls_ca_file``, ...).
    """


@hookspec
def tether_services(ctx: ServiceContext) -> list[Service]:
    """Return long-running services to start inside ``tetherd``'s nursery.

    Called once by ``tetherd start`` after the kernel's own services (auth, proxy) are
    listening. Each :class:`~tether.services.Service` is started with ``nursery.start`` and must
    call ``task_status.started()`` once it is ready; if one fails to start, ``tetherd`` stops.

    :param ctx: the running daemon: configuration, plugin manager, addresses and clients.
    """


@hookspec
def tether_protocols() -> list[ProtocolHandler]:
    """Return the protocols this plugin serves on the proxy's public port.

    Called once by ``tetherd start`` when the proxy starts. Each
    :class:`~tether.protocols.ProtocolHandler` names the ALPN ids that select it; the proxy
    offers them in its TLS handshake. For a protocol that declares a ``target_kind``, the
    kernel answers the dial exchange on them, routes to the target (in this cluster or a
    leaf) and calls the handler's ``relay`` with a
    :class:`~tether.protocols.DialedConnection`; for one served at the proxy, it calls
    ``serve`` with a :class:`~tether.protocols.ProxyConnection` for every connection. A
    protocol that reaches targets may also claim a ``server_name_prefix``: a TLS connection
    asking for one of its route names (:mod:`tether.route_names`) is routed to the cluster
    and target the name carries, whatever its ALPN ids, with no dial exchange, and a refusal
    goes to the handler's ``refuse``. An ALPN id claimed twice, or one the kernel serves
    itself (``h2``, ``http/1.1``, ``tether-tunnel/1``), or a prefix claimed twice, stops
    start-up with an error naming the protocols.
    """


@hookspec
def tether_agent_protocols(config: Config) -> list[AgentProtocol]:
    """Return the protocols this plugin serves on this host, inside the node agent.

    Called once by ``tetherd start``; return ``[]`` unless this host serves the protocol
    (the SSH plugin: ``ssh_service.enabled``, which ``--roles=node`` sets). When any plugin
    returns one, the kernel runs the node agent (:mod:`tether.node.agent`): it joins the
    cluster asking for the ``host_role`` of each protocol (the token must carry them), keeps
    the certificates renewed, the tunnels, the heartbeats of each protocol's
    :meth:`~tether.node.protocols.AgentProtocol.resources` and the audit forwarding, calls
    each protocol's ``run`` with an :class:`~tether.node.protocols.AgentContext`, and its
    ``serve`` for each stream a proxy opens to it (the mux target is the protocol's
    ``name``), with the user's forwarded certificate verified and role-mapped. A protocol
    name returned twice stops start-up with an error naming it.

    :param config: the loaded configuration (a plugin reads its own section).
    """


# -------------------------------------------------------------------------------------------
# Runtime: called while services run.
# -------------------------------------------------------------------------------------------


@hookspec
def tether_audit_events(events: Sequence[AuditEvent]) -> Awaitable[None] | None:
    """Record audit events, in order; every sink receives every event.

    Called by the auth service with one event for a login (success and failure), a resource
    change or an issued certificate, and with a whole batch for what a host forwards (a
    database service's statements): a sink that stores them should store a batch in one
    write, as the builtin one does with one ``fsync``. Events are durable once the call
    returns, and an event that no sink raised for is acknowledged: raise when it was not
    stored. May return an awaitable. A sink that raises is logged with its name and does
    not stop the others; then, with ``auth_service.audit.on_failure: refuse`` (the
    default), the auth service refuses the action the events record (a login, a
    certificate, a join, a change), which has not happened yet, and a host keeps its
    forwarded batch to send again.

    :param events: at least one event, each with type, time, cluster, user and
        event-specific fields, oldest first. An event's ``id`` is its key: a host that sends
        a batch again (its answer was lost) sends the same ids, so a sink that can should
        store an id once (the builtin one skips ids among the latest it wrote).
    """


@hookspec(firstresult=True)
def tether_audit_search(query: AuditQuery) -> Awaitable[list[AuditEvent]] | list[AuditEvent] | None:
    """Return the audit events matching ``query``, oldest first.

    Called by ``tetherctl audit search`` through the auth API. Stops at first non-None result.
    The first sink able to search answers, so a sink that cannot search returns None, and
    returns it directly: a coroutine is not None, even one that would return None.

    :param query: event type, time range, limit and cluster; a query that names no cluster
        asks for the events of every cluster the sink records, merged in time order, the
        limit counted over all of them.
    """


@hookspec(firstresult=True)
def tether_map_role(rule: RoleMapRule, remote_role: str, cluster: str) -> list[str] | None:
    """Return the local roles ``rule`` maps ``remote_role`` to: be a role-map strategy.

    Called by a leaf through :func:`tether.trust.map_roles`, once per rule of a trusted
    cluster's ``spec.role_map`` and per role a root user holds; the local roles of every rule
    that maps one of the user's roles are what the user gets on the leaf. Stops at first
    non-None result. Later-registered plugins are called first, so an installed strategy sees
    each rule before the builtin ``role-maps`` (exact names, ``*`` globs, ``^...$`` re2
    expressions with ``$1``..``$9``), which answers for every pattern.

    Return None when the pattern is not in your syntax: the next strategy reads it. When it is,
    return a list: the local roles (expand ``$n`` with :func:`tether.trust.expand_groups`), or
    ``[]`` when ``remote_role`` does not match. ``[]`` is an answer and stops the search, so no
    later strategy reads your pattern as something else (to the builtin, ``prefix:dev`` is an
    exact role name); return None for a non-match only to let another strategy try the same
    pattern. Empty names in the list are dropped. An exception is not caught: it propagates
    from ``map_roles``, refusing the mapping rather than guessing. Must not block; return the
    list itself, not an awaitable.

    :param rule: one rule, already validated by :func:`tether.trust.parse_role_map`: patterns
        of the form ``^...$`` compile with re2, others arrive as written. ``rule.remote`` is the
        pattern, ``rule.local`` the local roles or templates, in order.
    :param remote_role: one role of the user in the root cluster.
    :param cluster: the root cluster the user comes from (the trusted_cluster's name).
    """
