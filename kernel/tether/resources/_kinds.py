"""The core kinds: role, user, token and cert_authority, in Teleport's shapes.

The guide's documents (``visitor.yaml``, ``demo-cluster-access.yaml``, the output of
``tctl get user/x``) must parse unchanged, so field names and nesting follow Teleport. Secrets
never live in these resources: passwords and CA private keys stay in the auth service's own
storage and data directory, so ``get`` cannot leak them.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import attrs

from tether.errors import ResourceError
from tether.patterns import validate_label_value, validate_template
from tether.resources._convert import InvalidField, Labels, Path
from tether.resources._model import Resource, ResourceKind
from tether.structuring import did_you_mean

__all__ = [
    "CERT_AUTHORITY",
    "PROXY",
    "ROLE",
    "TOKEN",
    "USER",
    "VERBS",
    "CAKeys",
    "CertAuthoritySpec",
    "ConnectorRef",
    "CreatedBy",
    "ProxySpec",
    "ProxyStatus",
    "RoleConditions",
    "RoleOptions",
    "RoleSpec",
    "Rule",
    "TokenSpec",
    "UserRef",
    "UserSpec",
    "UserStatus",
    "check_conditions",
    "preset_roles",
]

#: Verbs a role rule may grant or deny; ``*`` means all of them.
#: ``sign`` applies to kind ``cert_authority`` only: having a certificate signed by a CA a
#: plugin declares (``tetherctl auth sign``), without the right to replace any CA.
VERBS: tuple[str, ...] = ("list", "read", "create", "update", "delete", "sign")


# -- role -------------------------------------------------------------------------------------


@attrs.frozen
class Rule:
    """Permission to use ``verbs`` on the listed resource kinds (``*`` for all)."""

    resources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()


@attrs.frozen
class RoleConditions:
    """What a role allows (or, under ``deny``, forbids). Values may be templates."""

    logins: tuple[str, ...] = ()
    node_labels: Labels = attrs.field(factory=dict)
    cluster_labels: Labels = attrs.field(factory=dict)
    kubernetes_groups: tuple[str, ...] = ()
    kubernetes_users: tuple[str, ...] = ()
    kubernetes_labels: Labels = attrs.field(factory=dict)
    db_users: tuple[str, ...] = ()
    db_names: tuple[str, ...] = ()
    db_labels: Labels = attrs.field(factory=dict)
    rules: tuple[Rule, ...] = ()


#: The template-able list fields of RoleConditions (what ``RoleSet.traits_values`` reads).
LIST_FIELDS = ("logins", "kubernetes_groups", "kubernetes_users", "db_users", "db_names")
LABEL_FIELDS = ("node_labels", "cluster_labels", "kubernetes_labels", "db_labels")


@attrs.frozen
class RoleOptions:
    """Session options. Limits (``max_session_ttl``) take the most restrictive value across a
    user's roles; permissions (``port_forwarding``, ``forward_agent``) are granted when any
    role grants them, as in Teleport."""

    max_session_ttl: datetime.timedelta = datetime.timedelta(hours=30)
    forward_agent: bool = False
    port_forwarding: bool = True
    client_idle_timeout: datetime.timedelta | None = None
    disconnect_expired_cert: bool = False
    permit_x11_forwarding: bool = False
    cert_format: Literal["standard", "oldssh"] = "standard"
    #: Tether's own: MySQL's ``LOAD DATA LOCAL INFILE`` (the database server reads a file
    #: from the client's machine) through the database service; off unless a role allows it
    db_load_data_local: bool = False


@attrs.frozen
class RoleSpec:
    """``spec`` of a role: allow and deny conditions plus options."""

    allow: RoleConditions = RoleConditions()
    deny: RoleConditions = RoleConditions()
    options: RoleOptions = RoleOptions()


def _validate_role(resource: Resource) -> None:
    spec: RoleSpec = resource.spec
    for side in ("allow", "deny"):
        check_conditions(getattr(spec, side), side, LIST_FIELDS, LABEL_FIELDS)
        conditions: RoleConditions = getattr(spec, side)
        for i, rule in enumerate(conditions.rules):
            for j, verb in enumerate(rule.verbs):
                if verb != "*" and verb not in VERBS:
                    guess = did_you_mean(verb, VERBS)
                    raise InvalidField(
                        ("spec", side, "rules", i, "verbs", j),
                        f"unknown verb {verb!r}" + (f" (did you mean {guess}?)" if guess else ""),
                        hint="verbs: " + ", ".join((*VERBS, "*")),
                    )
            if not rule.resources:
                raise InvalidField(
                    ("spec", side, "rules", i, "resources"),
                    "a rule needs at least one resource kind (or '*')",
                )
    if spec.options.max_session_ttl <= datetime.timedelta(0):
        raise InvalidField(("spec", "options", "max_session_ttl"), "must be positive")


def check_conditions(
    conditions: RoleConditions,
    side: str,
    list_fields: Iterable[str],
    label_fields: Iterable[str],
) -> None:
    """Check the template-able lists and the label selectors of one side of a role.

    :raises InvalidField: a bad template or label value, with its path in the role.
    """
    for field in list_fields:
        for i, value in enumerate(getattr(conditions, field)):
            _check(("spec", side, field, i), validate_template, value)
    for field in label_fields:
        selector: Mapping[str, tuple[str, ...]] = getattr(conditions, field)
        for key, values in selector.items():
            base: Path = ("spec", side, field, key)
            if key == "*" and values != ("*",):
                raise InvalidField(base, "the '*' key only accepts the value '*'")
            for i, value in enumerate(values):
                path = (*base, i) if len(values) > 1 else base
                _check(path, validate_template, value)
                if "{{" not in value:
                    _check(path, validate_label_value, value)


def _check(path: Path, check: Callable[[str], None], value: str) -> None:
    """Run ``check`` and turn its ResourceError into one that names the field."""
    try:
        check(value)
    except InvalidField:
        raise
    except ResourceError as exc:
        raise InvalidField(path, exc.message, hint=exc.hint) from None


#: Fields of Teleport's roles (conditions and options) that Tether's roles do not have: a role
#: written for Teleport that uses them is refused naming each as "not supported by Tether",
#: never as a misspelling of a field Tether has (``app_labels`` is not ``db_labels``).
TELEPORT_ONLY_ROLE_FIELDS = frozenset(
    [
        "windows_desktop_logins",
        "windows_desktop_labels",
        "node_labels_expression",
        "app_labels",
        "app_labels_expression",
        "aws_role_arns",
        "azure_identities",
        "gcp_service_accounts",
        "kubernetes_resources",
        "db_roles",
        "db_service_labels",
        "db_permissions",
        "host_groups",
        "host_sudoers",
        "desktop_groups",
        "request",
        "review_requests",
        "impersonate",
        "join_sessions",
        "require_session_join",
        "github_permissions",
        "group_labels",
        "account_assignments",
        "spiffe",
        "workload_identity_labels",
        "mcp",
        "ssh_port_forwarding",
        "require_session_mfa",
        "mfa_verification_interval",
        "record_session",
        "desktop_clipboard",
        "desktop_directory_sharing",
        "pin_source_ip",
        "ssh_file_copy",
        "create_host_user_mode",
        "create_host_user",
        "create_db_user",
        "create_db_user_mode",
        "create_desktop_user",
        "max_sessions",
        "max_connections",
        "max_kubernetes_connections",
        "enhanced_recording",
        "lock",
        "request_access",
        "request_prompt",
        "device_trust_mode",
        "idp",
        "cert_extensions",
        "bpf",
    ]
)

ROLE = ResourceKind(
    name="role",
    aliases=("roles",),
    # v8 (Teleport 18) changed only kubernetes_resources; _io refuses that field in a v8 role.
    versions=("v5", "v6", "v7", "v8"),
    spec_type=RoleSpec,
    storage_prefix="/roles/",
    validate=_validate_role,
    readable_by=("node", "proxy"),
)


# -- user -------------------------------------------------------------------------------------


@attrs.frozen
class UserRef:
    """Who created a user (``created_by.user.name``)."""

    name: str = ""


@attrs.frozen
class ConnectorRef:
    """The identity connector that created a user on first login."""

    type: str = ""
    id: str = ""
    identity: str = ""


@attrs.frozen
class CreatedBy:
    """Provenance of a user, shown by ``get user``."""

    time: datetime.datetime | None = None
    user: UserRef = UserRef()
    connector: ConnectorRef | None = None


@attrs.frozen
class UserSpec:
    """``spec`` of a user: roles and traits. The password is not part of the resource."""

    roles: tuple[str, ...] = ()
    traits: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    created_by: CreatedBy | None = None


@attrs.frozen
class UserStatus:
    """What the auth service reports about a user; ignored when a person writes it."""

    is_locked: bool = False
    locked_until: datetime.datetime | None = None
    locked_message: str = ""
    failed_logins: int = 0


def _validate_user(resource: Resource) -> None:
    spec: UserSpec = resource.spec
    for key in spec.traits:
        if not key:
            raise InvalidField(("spec", "traits"), "trait names must not be empty")


USER = ResourceKind(
    name="user",
    aliases=("users",),
    versions=("v2",),
    spec_type=UserSpec,
    status_type=UserStatus,
    storage_prefix="/users/",
    validate=_validate_user,
)


# -- token ------------------------------------------------------------------------------------


@attrs.frozen
class TokenSpec:
    """``spec`` of a join or sign-up token; the token value is ``metadata.name``.

    Tokens stay visible to admins (``tetherctl tokens ls`` shows them, as tctl does), so the
    name is not a secret path.
    """

    roles: tuple[str, ...] = ()
    user: str = ""


def _validate_token(resource: Resource) -> None:
    spec: TokenSpec = resource.spec
    if not spec.roles:
        raise InvalidField(
            ("spec", "roles"), "a token needs at least one role (Node, TrustedCluster, signup, ...)"
        )
    if "signup" in spec.roles and not spec.user:
        raise InvalidField(("spec", "user"), "a sign-up token names the user it is for")


TOKEN = ResourceKind(
    name="token",
    aliases=("tokens",),
    versions=("v2",),
    spec_type=TokenSpec,
    storage_prefix="/tokens/",
    validate=_validate_token,
)


# -- cert_authority ---------------------------------------------------------------------------


@attrs.frozen
class CAKeys:
    """Public halves of a CA: SSH public key lines and X.509 certificates in PEM."""

    ssh: tuple[str, ...] = ()
    tls: tuple[str, ...] = ()


@attrs.frozen
class CertAuthoritySpec:
    """``spec`` of a certificate authority; private keys stay in the data directory."""

    #: ``user``, ``host``, ``tls`` (the kernel's) or a type a plugin declares (``db``)
    type: str
    cluster_name: str
    active_keys: CAKeys = CAKeys()
    additional_trusted_keys: CAKeys = CAKeys()


_SSH_KEY = re.compile(r"^(ssh-|ecdsa-|sk-)\S+ \S+")


_CA_TYPE = re.compile(r"[a-z][a-z0-9_]*")


def _validate_cert_authority(resource: Resource) -> None:
    spec: CertAuthoritySpec = resource.spec
    if not _CA_TYPE.fullmatch(spec.type):
        guess = did_you_mean(spec.type, ("user", "host", "tls"))
        raise InvalidField(
            ("spec", "type"),
            f"{spec.type!r} is not a CA type" + (f" (did you mean {guess}?)" if guess else ""),
            hint="user, host, tls, or a type a plugin declares (tetherctl auth export --help)",
        )
    if spec.cluster_name != resource.metadata.name:
        raise InvalidField(
            ("spec", "cluster_name"),
            f"{spec.cluster_name!r} differs from metadata.name "
            f"{resource.metadata.name!r}; a CA is named after its cluster",
        )
    for group in ("active_keys", "additional_trusted_keys"):
        keys: CAKeys = getattr(spec, group)
        for field, values in (("ssh", keys.ssh), ("tls", keys.tls)):
            for i, value in enumerate(values):
                path = ("spec", group, field, i)
                if "PRIVATE KEY" in value:
                    raise InvalidField(
                        path,
                        "private keys do not belong in resources",
                        hint="they stay in the auth service's data directory",
                    )
                if field == "ssh" and not _SSH_KEY.match(value):
                    raise InvalidField(
                        path, "expected an SSH public key line ('ssh-ed25519 AAAA...')"
                    )
                if field == "tls" and "-----BEGIN CERTIFICATE-----" not in value:
                    raise InvalidField(path, "expected a PEM certificate")


def _cert_authority_ref(resource: Resource) -> str:
    return f"{resource.spec.type}/{resource.metadata.name}"


#: Named after the cluster as in Teleport; since a cluster has several CAs, the reference used
#: on the command line and in storage is ``<type>/<cluster>`` (``cert_authority/host/leaf``,
#: key ``/authorities/host/leaf``), so listing ``/authorities/host/`` finds every host CA.
CERT_AUTHORITY = ResourceKind(
    name="cert_authority",
    aliases=("cert_authorities", "ca", "cas"),
    versions=("v2",),
    spec_type=CertAuthoritySpec,
    storage_prefix="/authorities/",
    validate=_validate_cert_authority,
    ref=_cert_authority_ref,
    readable_by=("node", "proxy"),
)


# -- proxy ------------------------------------------------------------------------------------


@attrs.frozen
class ProxySpec:
    """``spec`` of a ``proxy``: one of the cluster's proxies, as it announces itself.

    :param public_addr: ``host:port`` where users and tunnel agents reach this proxy itself
        (not a load balancer in front of several), so an agent can hold a tunnel to each.
    :param version: the Tether version the proxy runs.
    """

    public_addr: str = ""
    version: str = ""


@attrs.frozen
class ProxyStatus:
    """What a proxy reports about itself each time it renews its entry.

    :param root_tunnels: on a leaf, each root cluster this proxy keeps tunnels to, with the
        root's proxies a tunnel is up to now (empty while none is).
    """

    root_tunnels: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)


def _validate_proxy(resource: Resource) -> None:
    spec: ProxySpec = resource.spec
    host, sep, port = spec.public_addr.rpartition(":")
    if not (sep and host and port.isdigit()):
        raise InvalidField(("spec", "public_addr"), "expected host:port")


#: Every proxy publishes its own entry (named by its host id, renewed by heartbeats), so each
#: proxy can tell tunnel agents about all of them: that is what keeps a leaf's tunnels to
#: every root proxy, and a node's to every proxy of its cluster (high availability).
PROXY = ResourceKind(
    name="proxy",
    aliases=("proxies",),
    versions=("v2",),
    spec_type=ProxySpec,
    status_type=ProxyStatus,
    storage_prefix="/proxies/",
    validate=_validate_proxy,
    published_by="proxy",
    readable_by=("node", "proxy"),
)


# -- presets ----------------------------------------------------------------------------------

_PRESET_LABELS = {"tether.internal/resource-type": "preset"}


def preset_roles() -> list[Resource]:
    """The roles every cluster starts with: ``access``, ``editor`` and ``auditor``.

    ``access`` takes its logins, Kubernetes and database identities from the user's traits, so
    a leaf can map a root user to it and grant exactly what the root granted.
    """
    everything = {"*": ("*",)}
    access = RoleSpec(
        allow=RoleConditions(
            logins=("{{internal.logins}}",),
            node_labels=everything,
            kubernetes_groups=("{{internal.kubernetes_groups}}",),
            kubernetes_users=("{{internal.kubernetes_users}}",),
            kubernetes_labels=everything,
            db_users=("{{internal.db_users}}",),
            db_names=("{{internal.db_names}}",),
            db_labels=everything,
        )
    )
    editor = RoleSpec(allow=RoleConditions(rules=(Rule(resources=("*",), verbs=("*",)),)))
    auditor = RoleSpec(
        allow=RoleConditions(rules=(Rule(resources=("event", "session"), verbs=("list", "read")),))
    )
    return [
        ROLE.new(
            "access",
            access,
            labels=_PRESET_LABELS,
            description="Access cluster resources with the logins in the user's traits",
        ),
        ROLE.new(
            "editor",
            editor,
            labels=_PRESET_LABELS,
            description="Edit cluster configuration: every resource kind, every verb",
        ),
        ROLE.new(
            "auditor",
            auditor,
            labels=_PRESET_LABELS,
            description="Read the audit log and recorded sessions",
        ),
    ]
