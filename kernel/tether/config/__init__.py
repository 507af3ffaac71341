"""``tether.yaml``: the daemon's configuration, typed, with errors that point at the line.

The file is written by people, so a mistake must be reported as ``file:line: field: problem`` and
unknown keys must be refused (a misspelt key silently falling back to its default is the worst
kind of configuration bug). The YAML is parsed by :mod:`tether.yamlio`, which keeps the line of
every node, then structured into frozen attrs classes by a strict cattrs converter
(:mod:`._convert`, built on :mod:`tether.structuring` as the resources' one is). The kernel's
sections are in :mod:`._schema`; plugins declare theirs, and their ``tetherd start --roles``,
through hooks (:mod:`._sections`), and the loader (:mod:`._load`) reads both with the same
converter and the same errors.
"""

from __future__ import annotations

from tether.config._flags import apply_start_flags
from tether.config._load import (
    DEFAULT_CONFIG,
    config_from_dict,
    config_to_dict,
    load_config,
    load_config_text,
    render_default_config,
)
from tether.config._schema import (
    AuditConfig,
    AuthServiceConfig,
    Config,
    JoinConfig,
    LogConfig,
    PluginsConfig,
    ProxyServiceConfig,
    RateLimitConfig,
    StorageConfig,
    default_config,
)
from tether.config._sections import (
    NOT_INSTALLED_SECTIONS,
    ConfigSchema,
    ConfigSection,
    ServiceRole,
    embedded_config,
    installed_schema,
)
from tether.config._values import (
    AuditFailure,
    ByteSize,
    CaAlgorithm,
    FieldError,
    HostPort,
    LogFormat,
    Severity,
    not_blank,
    positive,
    secret_or_file,
    valid_name,
)

__all__ = [
    "DEFAULT_CONFIG",
    "NOT_INSTALLED_SECTIONS",
    "AuditConfig",
    "AuditFailure",
    "AuthServiceConfig",
    "ByteSize",
    "CaAlgorithm",
    "Config",
    "ConfigSchema",
    "ConfigSection",
    "FieldError",
    "HostPort",
    "JoinConfig",
    "LogConfig",
    "LogFormat",
    "PluginsConfig",
    "ProxyServiceConfig",
    "RateLimitConfig",
    "ServiceRole",
    "Severity",
    "StorageConfig",
    "apply_start_flags",
    "config_from_dict",
    "config_to_dict",
    "default_config",
    "embedded_config",
    "installed_schema",
    "load_config",
    "load_config_text",
    "not_blank",
    "positive",
    "render_default_config",
    "secret_or_file",
    "valid_name",
]
