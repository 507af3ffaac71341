"""``tetherd start``'s flags applied over the configuration file: flags win.

``--roles`` chooses the services as Teleport's does: the ones named run, the others do not.
The kernel registers ``auth`` and ``proxy``; plugins register theirs (the SSH plugin's
``node``) through ``tether_service_roles``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import attrs

from tether.config._schema import Config
from tether.config._sections import ConfigSchema, installed_schema
from tether.config._values import FieldError, HostPort, LogFormat
from tether.errors import ConfigError

__all__ = ["apply_start_flags"]


def apply_start_flags(
    config: Config,
    *,
    roles: str | None = None,
    token: str | None = None,
    proxy_server: str | None = None,
    auth_server: str | Sequence[str] | None = None,
    ca_pin: str | None = None,
    insecure: bool = False,
    labels: str | None = None,
    nodename: str | None = None,
    data_dir: pathlib.Path | None = None,
    log_format: str | None = None,
    schema: ConfigSchema | None = None,
) -> Config:
    """``config`` with ``tetherd start``'s flags applied; flags win over the file.

    ``auth_server`` may be several addresses (``--auth-server`` repeated: every auth server
    of the cluster, ``join.auth_servers``). ``labels`` are added to every plugin section
    that has a ``labels`` field (the SSH plugin's ``ssh_service.labels``); ``log_format``
    replaces ``log.format``.

    :param schema: the registered roles and sections; default: the installed plugins'.
    :raises ConfigError: a flag's value is impossible, with the flag named.
    """
    if schema is None:
        schema = installed_schema(config.plugins.disabled)
    try:
        if roles is not None:
            config = _apply_roles(config, roles, schema)
        if labels:
            config = _apply_labels(config, _parse_labels_flag(labels), schema)
        join: dict[str, Any] = {}
        if token is not None:
            join["token"] = token
        if proxy_server is not None:
            # one flag replaces the file's choice of server entirely
            join.update(
                proxy_server=_host_port("--proxy", proxy_server), auth_server=None, auth_servers=()
            )
        servers = (auth_server,) if isinstance(auth_server, str) else tuple(auth_server or ())
        if servers:
            addrs = tuple(_host_port("--auth-server", server) for server in servers)
            # one auth server as auth_server; several (the flag repeated) as auth_servers
            join.update(
                proxy_server=None,
                auth_server=addrs[0] if len(addrs) == 1 else None,
                auth_servers=addrs if len(addrs) > 1 else (),
            )
        if ca_pin is not None:
            join["ca_pin"] = ca_pin
        if insecure:
            join["insecure"] = True
        changes: dict[str, Any] = {}
        if join:
            changes["join"] = attrs.evolve(config.join, **join)
        if nodename is not None:
            changes["nodename"] = nodename
        if data_dir is not None:
            changes["data_dir"] = data_dir
        if log_format is not None:
            changes["log"] = attrs.evolve(config.log, format=_log_format(log_format))
        return attrs.evolve(config, **changes)
    except FieldError as exc:
        raise ConfigError(str(exc)) from None


def _host_port(flag: str, value: str) -> HostPort:
    try:
        return HostPort.parse(value)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def _apply_roles(config: Config, roles: str, schema: ConfigSchema) -> Config:
    wanted = {r.strip() for r in roles.split(",") if r.strip()}
    unknown = wanted - set(schema.roles)
    if unknown or not wanted:
        raise ConfigError(
            f"--roles: {', '.join(sorted(unknown)) or 'nothing'} is not a role; "
            f"choose from {', '.join(schema.roles)}"
        )
    for role in schema.roles.values():
        config = _set_section(config, role.section, schema, enabled=role.name in wanted)
    return config


def _apply_labels(config: Config, labels: dict[str, str], schema: ConfigSchema) -> Config:
    for name, section in schema.sections.items():
        if "labels" in attrs.fields_dict(section.type):
            current = config.section(section.type)
            config = _set_section(config, name, schema, labels={**current.labels, **labels})
    return config


def _set_section(config: Config, name: str, schema: ConfigSchema, **changes: Any) -> Config:
    if name in schema.sections:
        current = config.section(schema.sections[name].type)
        return config.with_section(name, attrs.evolve(current, **changes))
    evolved = attrs.evolve(getattr(config, name), **changes)
    return attrs.evolve(config, **{name: evolved})


def _log_format(text: str) -> LogFormat:
    try:
        return LogFormat(text.lower())
    except ValueError:
        choices = ", ".join(f.value for f in LogFormat)
        raise ConfigError(f"--log-format: {text!r} is not one of {choices}") from None


def _parse_labels_flag(text: str) -> dict[str, str]:
    labels = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--labels: {pair!r} is not key=value (example: env=dev,os=linux)")
        labels[key.strip()] = value.strip()
    return labels
