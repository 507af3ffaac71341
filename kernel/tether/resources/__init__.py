"""Resources: the kind/version/metadata/spec objects admins create, get and remove.

``tetherctl create -f x.yaml`` parses documents with :func:`parse_resources`, the auth API
validates JSON bodies with :func:`resource_from_dict`, ``get`` prints with
:func:`dump_resources`, and storage keeps :func:`resource_to_bytes`. Kinds come from plugins
through ``tether_resource_kinds`` and are looked up in a :class:`KindRegistry`; the core kinds
(role, user, token, cert_authority) are defined here and registered by the ``core-kinds``
builtin plugin.

Spec types are attrs classes whose fields use: ``str``, ``int``, ``float``, ``bool``,
``datetime``, ``timedelta`` (Go-style ``30h``), ``Literal[...]``, ``X | None``,
``tuple[X, ...]``, ``Mapping[str, X]``, nested attrs classes and :data:`Labels`.
"""

from tether.resources._convert import InvalidField, Labels, LabelValues, Path, show, structure
from tether.resources._io import (
    dump_resources,
    make_resource,
    parse_resources,
    resource_from_bytes,
    resource_from_dict,
    resource_to_bytes,
    resource_to_dict,
)
from tether.resources._kinds import (
    CERT_AUTHORITY,
    LABEL_FIELDS,
    PROXY,
    ROLE,
    TOKEN,
    USER,
    VERBS,
    CAKeys,
    CertAuthoritySpec,
    ConnectorRef,
    CreatedBy,
    ProxySpec,
    ProxyStatus,
    RoleConditions,
    RoleOptions,
    RoleSpec,
    Rule,
    TokenSpec,
    UserRef,
    UserSpec,
    UserStatus,
    preset_roles,
)
from tether.resources._model import KindRegistry, Metadata, Resource, ResourceKind
from tether.resources._role_fields import (
    ROLE_FIELD_KIND,
    RoleField,
    extend_role_kind,
    role_fields,
)

__all__ = [
    "CERT_AUTHORITY",
    "LABEL_FIELDS",
    "PROXY",
    "ROLE",
    "ROLE_FIELD_KIND",
    "TOKEN",
    "USER",
    "VERBS",
    "CAKeys",
    "CertAuthoritySpec",
    "ConnectorRef",
    "CreatedBy",
    "InvalidField",
    "KindRegistry",
    "LabelValues",
    "Labels",
    "Metadata",
    "Path",
    "ProxySpec",
    "ProxyStatus",
    "Resource",
    "ResourceKind",
    "RoleConditions",
    "RoleField",
    "RoleOptions",
    "RoleSpec",
    "Rule",
    "TokenSpec",
    "UserRef",
    "UserSpec",
    "UserStatus",
    "dump_resources",
    "extend_role_kind",
    "make_resource",
    "parse_resources",
    "preset_roles",
    "resource_from_bytes",
    "resource_from_dict",
    "resource_to_bytes",
    "resource_to_dict",
    "role_fields",
    "show",
    "structure",
]
