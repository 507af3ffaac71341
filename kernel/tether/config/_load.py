"""Reading ``tether.yaml`` (kernel and plugin sections, errors at the line) and writing it
back: ``tetherd configure``'s commented default file and plain values for ``-f json``."""

from __future__ import annotations

import pathlib
import string
from collections.abc import Mapping
from typing import Any

from cattrs.errors import BaseValidationError

from tether.config._convert import converter, failures, kind_of
from tether.config._schema import Config, LogConfig, default_config
from tether.config._sections import (
    NOT_INSTALLED_SECTIONS,
    ConfigSchema,
    embedded_config,
    installed_schema,
)
from tether.errors import ConfigError, TetherError
from tether.structuring import did_you_mean
from tether.yamlio import Document, Path, dump_yaml, format_path, load_document

#: where in the file, what is wrong, what to do
Problem = tuple[Path, str, str | None]

__all__ = [
    "DEFAULT_CONFIG",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_config_text",
    "render_default_config",
]


def load_config_text(text: str, source: str, schema: ConfigSchema | None = None) -> Config:
    """Parse configuration from ``text``; an empty document is the default configuration.

    :param source: the file name used in error messages.
    :param schema: the plugins' sections; default: those of the plugins installed here that
        the file's ``plugins.disabled`` leaves enabled.
    :raises ConfigError: ``source:line: field: problem``.
    :raises PluginError: an installed plugin cannot load or declares a section wrongly.
    """
    doc = load_document(text, source, error=ConfigError)
    if doc is None:
        return default_config()
    if not isinstance(doc.data, dict):
        raise ConfigError(
            f"{doc.where()}: expected a mapping of settings, got {kind_of(doc.data)}",
            hint="run `tetherd configure` to see an example",
        )
    if schema is None:
        schema = installed_schema(_disabled_in(doc.data))
    return _structure(doc, doc.data, schema)


def config_from_dict(data: Mapping[str, Any], schema: ConfigSchema | None = None) -> Config:
    """The configuration a file holding ``data`` (plain values) would give.

    :raises ConfigError: ``field: problem``.
    """
    return load_config_text(dump_yaml(dict(data)), "<config>", schema)


def _disabled_in(data: Mapping[str, Any]) -> list[str]:
    """``plugins.disabled`` as written, read before the file is structured: the plugins it
    names declare no section."""
    plugins = data.get("plugins")
    disabled = plugins.get("disabled") if isinstance(plugins, dict) else None
    if not isinstance(disabled, list):
        return []
    return [name for name in disabled if isinstance(name, str)]


def _structure(doc: Document, data: dict[str, Any], schema: ConfigSchema) -> Config:
    """Structure the kernel's sections and each plugin's, and report the problem nearest the
    top of the file (that is where the operator looks)."""
    problems: list[Problem] = []
    kernel: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    known = schema.known_sections()
    for key, value in data.items():
        if key in schema.sections:
            try:
                sections[key] = converter.structure(value, schema.sections[key].type)
            except (BaseValidationError, ValueError, TypeError) as exc:
                problems.extend(failures(exc, (key,)))
        elif key in known:
            kernel[key] = value
        elif key == "teleport" and "teleport" not in known:
            log, found = _teleport_log(value, has_log=data.get("log") is not None)
            problems.extend(found)
            if log is not None:
                kernel["log"] = log
        else:
            problems.append(_unknown_section(key, schema))
    try:
        config = converter.structure(kernel, Config)
    except BaseValidationError as exc:
        problems.extend(failures(exc, ()))
    if problems:
        path, message, hint = min(problems, key=lambda problem: doc.line_of(problem[0]))
        field = format_path(path)
        prefix = f"{doc.where(path)}: {field}: " if field else f"{doc.where(path)}: "
        raise ConfigError(prefix + message, hint=hint) from None
    for name, value in sections.items():
        config = config.with_section(name, value)
    return config


def _teleport_log(value: Any, *, has_log: bool) -> tuple[dict[str, Any] | None, list[Problem]]:
    """A ``teleport.yaml``'s ``teleport: log: {output, severity, format: {output}}`` as Tether's
    ``log:``; everything else under ``teleport:`` is refused with a pointer to Tether's key.

    :returns: the ``log:`` mapping it stands for (None when nothing maps) and the problems.
    """
    base: Path = ("teleport",)
    to_log = "Tether's settings are top-level keys; logging is the log: key (severity, format)"
    if not isinstance(value, dict):
        return None, [(base, f"expected a mapping, got {kind_of(value)}", to_log)]
    problems: list[Problem] = [
        ((*base, str(key)), "not a Tether setting; only teleport.log is read, as log:", to_log)
        for key in value
        if key != "log"
    ]
    raw = value.get("log")
    if raw is None:
        return None, problems
    where: Path = (*base, "log")
    if has_log:
        return None, [*problems, (where, "log is also set; set it once", "keep the log: key")]
    if not isinstance(raw, dict):
        return None, [*problems, (where, f"expected a mapping, got {kind_of(raw)}", to_log)]
    log: dict[str, Any] = {}
    for key, item in raw.items():
        if key == "severity":
            log["severity"] = item
        elif key == "output":
            if item != "stderr":
                problems.append(
                    (
                        (*where, "output"),
                        f"Tether logs to standard error only, got {item!r}",
                        "remove it; your service manager (journald) keeps standard error",
                    )
                )
        elif key == "format" and isinstance(item, dict) and set(item) <= {"output"}:
            if "output" in item:
                log["format"] = item["output"]
        else:
            problems.append(((*where, str(key)), "not supported by Tether", to_log))
    try:
        converter.structure(log, LogConfig)
    except BaseValidationError as exc:
        problems.extend(failures(exc, where))
        return None, problems
    return log, problems


def _unknown_section(key: object, schema: ConfigSchema) -> Problem:
    distribution = NOT_INSTALLED_SECTIONS.get(str(key))
    if distribution is not None:
        return (
            (str(key),),
            f"this section belongs to the plugin {distribution}, which is not installed",
            f"install it (pip install {distribution}) or remove the section",
        )
    known = schema.known_sections()
    close = did_you_mean(str(key), known)
    if close:
        return (str(key),), "unknown field", f"did you mean {close}?"
    plugins = ", ".join(f"{name} ({schema.owners[name]})" for name in schema.sections)
    hint = f"known fields: {', '.join(known)}" + (f"; from plugins: {plugins}" if plugins else "")
    return (str(key),), "unknown field", hint


#: Where ``tetherd start`` and ``tetherctl`` look when given no ``-c`` (Teleport's
#: ``/etc/teleport.yaml``).
DEFAULT_CONFIG = "/etc/tether.yaml"


def load_config(path: pathlib.Path, schema: ConfigSchema | None = None) -> Config:
    """Read and parse the configuration file at ``path``.

    :raises ConfigError: the file is missing, unreadable or wrong; the message names it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file", hint=f"run `tetherd configure > {path}` to create one"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{path}: permission denied", hint="run as the user that owns it, or fix its mode"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (bad byte at offset {exc.start})",
            hint="save the file as UTF-8",
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return load_config_text(text, str(path), schema)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain values (strings, numbers, lists, dicts) that :func:`load_config_text` reads back
    to an equal :class:`Config`; for ``tetherd configure`` and ``-f json``/``-f yaml`` output."""
    result: dict[str, Any] = converter.unstructure(config)
    for name, value in config.sections.items():
        result[name] = converter.unstructure(value)
    return result


_TEMPLATE = string.Template(
    """\
# tether.yaml: the configuration of tetherd, as `tetherd start` runs with no file at all.
# A file need only hold what differs: a kernel value it leaves out is the one shown here. A
# plugin's section may differ without a file (it says so): in a file, what it leaves out of
# that section takes the plugin's defaults, so its service runs only where a file says so.
# Durations are written like 30s, 5m, 12h or 1h30m.

# The cluster's name, shown to users and used by trusted clusters: it must differ from the name
# of every cluster this one trusts or is trusted by.
cluster_name: main
# This host's name inside the cluster (defaults to the host name).
nodename: $nodename
# Keys, certificates and the SQLite database live here.
data_dir: $data_dir

log:
  # DEBUG, INFO, WARN (or WARNING) or ERROR, for Tether's own lines; libraries (httpx,
  # asyncssh, hypercorn) write WARNING and above. `tetherd start --debug` logs everything.
  severity: INFO
  # text for people, json for log collectors (one object per line); --log-format overrides.
  format: text

storage:
  # The backend URL; its scheme is one of those installed here: $storage_schemes.
  # null keeps everything in sqlite:///<data_dir>/backend.sqlite.
  url: null

plugins:
  # Plugins not to load, builtin or installed, by name (`tetherd plugins` lists them).
  disabled: []
  # Settings of individual plugins, by plugin name, e.g.
  #   settings:
  #     audit-file: {path: /var/log/tether/audit.log}
  settings: {}

auth_service:
  enabled: true
  listen_addr: 127.0.0.1:3025
  # Lifetime of the certificates issued at login; a role's max_session_ttl caps it.
  session_ttl: 12h
  # An account is locked for lockout_duration after this many consecutive failed logins.
  failed_login_limit: 5
  lockout_duration: 30m
  # How long a sign-up invitation stays valid.
  signup_token_ttl: 1h
  # Lifetime of the certificates of nodes, proxies and auth's own server certificate; each
  # renews its own once two thirds of it have passed, while it runs.
  host_cert_ttl: 8760h
  # Key algorithm of new certificate authorities, ed25519 or ecdsa-p256: the SSH ones, and
  # the X.509 one, which signs the proxy's web certificate (browsers refuse Ed25519 there).
  ca_algorithm: ed25519
  tls_ca_algorithm: ecdsa-p256
  # The CA keys are kept in the storage, shared by every auth server of the cluster, and in
  # plain text there unless this names a key file (`openssl rand -base64 32`, mode 0600) that
  # seals them: then every auth server needs a copy of the same file.
  ca_keys_key_file: null
  # Rotating that key file: the files the stored CA keys may still be sealed with. An auth
  # server that opens them with one of these seals them again with ca_keys_key_file.
  ca_keys_previous_key_files: []
  # Per client address, on the join of hosts that join auth directly (--auth-server), as
  # proxy_service.rate_limit on the proxy's anonymous endpoints.
  rate_limit:
    average: 10
    burst: 40
    period: 1s
  # The largest request body read from a caller without a certificate (a host joining with
  # --auth-server); a larger one is refused with 413 before it is read.
  max_request_body: 1MiB
  # The cluster's keep-alive (Teleport's cluster_networking_config): every tunnel's agent
  # (a leaf's proxies, nodes in tunnel mode) heartbeats every keep_alive_interval and counts
  # as gone after keep_alive_count_max missed; a leaf is offline after as long. The proxies
  # read it from auth when they start and name it in every tunnel's hello. A node whose
  # process dies is unlisted at once (its proxy sees its tunnel close); one whose host
  # vanishes, after interval x count. Shorter finds a vanished host sooner and costs the root
  # proxy a heartbeat per tunnel per interval (10,000 tunnels at 10s: half a core).
  keep_alive_interval: 1m
  keep_alive_count_max: 3
  # An action that must be audited (a login, an issued certificate, a join, a trust or
  # resource change) is recorded before it takes effect. When a sink cannot record it:
  # refuse (the caller is told the audit log is unavailable, and it does not happen) or
  # continue (it happens, and the failure is logged).
  audit:
    on_failure: refuse

proxy_service:
  enabled: true
  # The one public port: tunnels, SSH and the web API, told apart by ALPN.
  listen_addr: 0.0.0.0:3080
  # host:port users and leaf clusters reach this proxy at; null takes listen_addr, with an
  # any-interface host such as 0.0.0.0 replaced by nodename.
  public_addr: null
  # The web certificate and its key (PEM files); null issues one from the cluster's X.509 CA.
  https_cert_file: null
  https_key_file: null
  # Per client address, on the endpoints anyone may call (login, sign-up, SSO login, join,
  # trusted cluster validation): average requests per period, burst of them at once. Raise it
  # when many clients share one address (a NAT, a load balancer that hides them).
  rate_limit:
    average: 10
    burst: 40
    period: 1s
  # The largest request body the web API reads (SAML posts and trust validation are a few
  # KiB): a larger one is refused with 413 before it is read.
  max_request_body: 1MiB

join:
  # How a host without a local auth service joins: a node (`tetherd start --roles=node`) or
  # another proxy of the cluster (`--roles=proxy`, which needs auth_server).
  # The token from `tetherctl tokens add --type=node` (or proxy); needed only the first time.
  token: null
  # The proxy's host:port: the node dials out through a reverse tunnel and needs no inbound
  # port. Or auth_server: the auth service's host:port, and the node serves on its listen_addr.
  proxy_server: null
  auth_server: null
  # Or, for a cluster that runs several auth servers on one shared store, all of them
  # (a list of host:port): a proxy fails over between them. Not with auth_server.
  auth_servers: []
  # The cluster CA pin printed by `tetherctl tokens add`, to verify the server on first join.
  ca_pin: null
  insecure: false
"""
)


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain when it reads back unchanged, else double-quoted."""
    try:
        doc = load_document(f"value: {text}\n", "<scalar>")
    except TetherError:
        doc = None
    if doc is not None and doc.data == {"value": text}:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_default_config(schema: ConfigSchema | None = None) -> str:
    """The commented ``tether.yaml`` that ``tetherd configure`` prints: the kernel's sections,
    then each installed plugin's.

    It loads back to exactly :func:`embedded_config` on this host (what ``tetherd start`` runs
    without a file), so an operator can start from it and change only what they need.
    """
    if schema is None:
        schema = installed_schema()
    plugins = "".join(
        "\n" + section.template.rstrip("\n") + "\n"
        for section in schema.sections.values()
        if section.template
    )
    config = embedded_config(schema)
    data_dir = config.data_dir
    home = pathlib.Path.home()
    if data_dir.is_relative_to(home):
        # `~/...` keeps the file valid for whoever runs it, not just the user who generated it.
        shown = "~/" + data_dir.relative_to(home).as_posix()
    else:
        shown = data_dir.as_posix()
    schemes = ", ".join(schema.storage_schemes) or "none"
    kernel = _TEMPLATE.substitute(
        nodename=_scalar(config.nodename), data_dir=_scalar(shown), storage_schemes=schemes
    )
    return kernel + plugins
