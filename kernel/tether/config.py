"""``tether.yaml``: the daemon's configuration, typed, with errors that point at the line.

The file is written by people, so a mistake must be reported as ``file:line: field: problem`` and
unknown keys must be refused (a misspelt key silently falling back to its default is the worst
kind of configuration bug). The YAML is parsed by :mod:`tether.yamlio`, which keeps the line of
every node, then structured into frozen attrs classes by a strict cattrs converter: no implicit
``str()`` of a list, no string accepted as a list of characters. When structuring fails, the
exception tree cattrs builds is walked back into a path, and the path into a line.

Every field has a default, so an empty file (or none at all, for ``tetherd start``) is the
embedded single-host setup: auth and proxy on this host with SQLite under ``data_dir``.
"""

from __future__ import annotations

import datetime
import difflib
import enum
import ipaddress
import os
import pathlib
import re
import socket
import string
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
import cattrs.cols
import cattrs.gen
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)

from tether.durations import format_duration, parse_duration
from tether.errors import ConfigError, TetherError
from tether.yamlio import Document, Path, format_path, load_document

__all__ = [
    "AuthServiceConfig",
    "ByteSize",
    "CaAlgorithm",
    "CommandLabel",
    "Config",
    "FieldError",
    "HostPort",
    "JoinConfig",
    "LogConfig",
    "LogFormat",
    "PluginsConfig",
    "ProxyServiceConfig",
    "RateLimitConfig",
    "Severity",
    "SshServiceConfig",
    "StorageConfig",
    "apply_start_flags",
    "config_to_dict",
    "default_config",
    "load_config",
    "load_config_text",
    "render_default_config",
]

T = TypeVar("T")


class FieldError(ValueError):
    """A value that is well-typed but impossible, raised by a config class's own checks.

    Constructing a section by hand with such a value raises it directly (it is a ValueError);
    the loader turns it into a :class:`ConfigError` with the line. It carries the path of the
    offending field relative to the class that raised it, so the loader can prefix the path of
    that class and find the line; cattrs only knows the path down to the class whose
    constructor failed.
    """

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{format_path(path)}: {message}")
        self.path = path
        self.message = message


# ---------------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class HostPort:
    """A network address as ``host:port``; IPv6 hosts are written in brackets, ``[::1]:3025``."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Parse ``"host:port"`` or ``"[ipv6]:port"``.

        :raises ValueError: the text is not an address; the message quotes it.
        """
        if text.startswith("["):
            close = text.find("]")
            host, rest = text[1:close], text[close + 1 :]
            if close < 0 or not rest.startswith(":"):
                raise ValueError(f"{text!r} is not host:port (example: [::1]:3025)")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
            port_text = rest[1:]
        else:
            host, sep, port_text = text.rpartition(":")
            if ":" in host:
                raise ValueError(
                    f"{text!r} is not host:port (write IPv6 addresses in brackets: [::1]:3025)"
                )
            if not sep or not host or any(c.isspace() or c in "/[]" for c in host):
                raise ValueError(f"{text!r} is not host:port")
        if not port_text.isascii() or not port_text.isdigit():
            raise ValueError(f"{text!r} is not host:port (the port must be a number)")
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"{text!r}: port {port} is out of range 0-65535")
        return cls(host, port)

    @property
    def is_unspecified(self) -> bool:
        """True for a listen-on-every-interface host (``0.0.0.0``, ``::``)."""
        try:
            return ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            return False

    @property
    def connect_host(self) -> str:
        """Where a local client connects to reach this listen address (loopback for a
        listen-on-every-interface host)."""
        return "127.0.0.1" if self.is_unspecified else self.host

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


class ByteSize(int):
    """A size in bytes, written ``1MiB``, ``512KiB``, ``64KB`` or as a number of bytes."""

    UNITS: dict[str, int] = {
        "B": 1,
        "KB": 1000,
        "MB": 1000**2,
        "GB": 1000**3,
        "KiB": 1024,
        "MiB": 1024**2,
        "GiB": 1024**3,
    }
    _SIZE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")

    @classmethod
    def parse(cls, text: str) -> ByteSize:
        """Parse ``"1MiB"``; a number without a unit counts bytes.

        :raises ValueError: the text is not a size; the message shows examples.
        """
        match = cls._SIZE.fullmatch(text)
        unit = (match.group(2) or "B") if match else ""
        if match is None or unit not in cls.UNITS:
            raise ValueError(f"{text!r} is not a size (examples: 1MiB, 512KiB, 65536)")
        return cls(int(match.group(1)) * cls.UNITS[unit])

    def __str__(self) -> str:
        for unit in ("GiB", "MiB", "KiB"):
            if self and self % self.UNITS[unit] == 0:
                return f"{self // self.UNITS[unit]}{unit}"
        return f"{int(self)}B"


class Severity(enum.StrEnum):
    """Log severities; ``WARN`` is accepted as Teleport users write it."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARN = "WARN"
    WARNING = "WARNING"
    ERROR = "ERROR"


class LogFormat(enum.StrEnum):
    """``text`` for people reading a terminal, ``json`` for log collectors."""

    TEXT = "text"
    JSON = "json"


class CaAlgorithm(enum.StrEnum):
    """Key algorithm of newly created certificate authorities."""

    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-p256"


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value <= type(value)(0):
        raise FieldError((attribute.name,), "must be greater than zero")


def _not_blank(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise FieldError((attribute.name,), "must not be empty")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _name(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    # Cluster names end up in certificates, storage keys and URLs: keep them to a safe alphabet.
    if not _NAME.fullmatch(value):
        raise FieldError(
            (attribute.name,),
            f"{value!r} is not a valid name (letters, digits, '.', '_' and '-')",
        )


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class LogConfig:
    """``log:``: what the daemon logs and how."""

    severity: Severity = Severity.INFO
    format: LogFormat = LogFormat.TEXT


@attrs.frozen
class StorageConfig:
    """``storage:``: where resources live; ``url: null`` is SQLite under ``data_dir``."""

    url: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.url is not None and "://" not in self.url:
            raise FieldError(
                ("url",), f"{self.url!r} is not a URL (example: postgresql://tether@db/tether)"
            )


@attrs.frozen
class PluginsConfig:
    """``plugins:``: which plugins not to load, and each plugin's own settings by name."""

    disabled: tuple[str, ...] = ()
    settings: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)

    def settings_for(self, name: str) -> Mapping[str, Any]:
        """The settings of plugin ``name``, empty when the file has none for it."""
        return self.settings.get(name, {})


@attrs.frozen
class AuthServiceConfig:
    """``auth_service:``: certificate authorities, users, roles, resources and audit."""

    enabled: bool = True
    listen_addr: HostPort = HostPort("127.0.0.1", 3025)
    session_ttl: datetime.timedelta = attrs.field(
        default=datetime.timedelta(hours=12), validator=_positive
    )
    failed_login_limit: int = attrs.field(default=5, validator=_positive)
    lockout_duration: datetime.timedelta = attrs.field(
        default=datetime.timedelta(minutes=30), validator=_positive
    )
    signup_token_ttl: datetime.timedelta = attrs.field(
        default=datetime.timedelta(hours=1), validator=_positive
    )
    host_cert_ttl: datetime.timedelta = attrs.field(
        default=datetime.timedelta(days=365), validator=_positive
    )
    ca_algorithm: CaAlgorithm = CaAlgorithm.ED25519
    # browsers refuse Ed25519 certificates, and this CA signs the proxy's web certificate
    tls_ca_algorithm: CaAlgorithm = CaAlgorithm.ECDSA_P256
    rate_limit: RateLimitConfig = attrs.field(factory=lambda: RateLimitConfig())
    # callers without a certificate only: hosts' batches (heartbeats of every tunnel) grow
    # with the fleet, and they are authenticated
    max_request_body: ByteSize = attrs.field(default=ByteSize(1024**2), validator=_positive)


@attrs.frozen
class RateLimitConfig:
    """``proxy_service.rate_limit:`` and ``auth_service.rate_limit:``: how often one client
    address may call the endpoints that take no certificate (login, sign-up, SSO login, join,
    trusted cluster validation; at auth, the join of a host that joins it directly)."""

    average: int = attrs.field(default=10, validator=_positive)
    burst: int = attrs.field(default=40, validator=_positive)
    period: datetime.timedelta = attrs.field(
        default=datetime.timedelta(seconds=1), validator=_positive
    )


@attrs.frozen
class ProxyServiceConfig:
    """``proxy_service:``: the one public port (tunnels, SSH front door, web API)."""

    enabled: bool = True
    listen_addr: HostPort = HostPort("0.0.0.0", 3080)
    public_addr: HostPort | None = None
    https_cert_file: pathlib.Path | None = None
    https_key_file: pathlib.Path | None = None
    rate_limit: RateLimitConfig = RateLimitConfig()
    max_request_body: ByteSize = attrs.field(default=ByteSize(1024**2), validator=_positive)

    def __attrs_post_init__(self) -> None:
        # A certificate without its key (or the reverse) cannot serve TLS; say so at load time
        # rather than when the first client connects.
        if self.https_cert_file is not None and self.https_key_file is None:
            raise FieldError(("https_cert_file",), "needs https_key_file as well")
        if self.https_key_file is not None and self.https_cert_file is None:
            raise FieldError(("https_key_file",), "needs https_cert_file as well")


@attrs.frozen
class CommandLabel:
    """A dynamic node label: the output of ``command``, refreshed every ``period``."""

    name: str = attrs.field(validator=_not_blank)
    command: tuple[str, ...] = attrs.field()
    period: datetime.timedelta = attrs.field(
        default=datetime.timedelta(hours=1), validator=_positive
    )

    @command.validator
    def _check_command(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if not value:
            raise FieldError((attribute.name,), "must name a program, like [uname, -p]")


@attrs.frozen
class SshServiceConfig:
    """``ssh_service:``: this host as a node users reach with ``tether ssh``."""

    enabled: bool = False
    listen_addr: HostPort = HostPort("0.0.0.0", 3022)
    public_addr: HostPort | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict)
    commands: tuple[CommandLabel, ...] = ()

    def __attrs_post_init__(self) -> None:
        # Static and command labels share one namespace on the node; two values for one
        # label would make role matching depend on which one happened to win.
        seen = set(self.labels)
        for index, label in enumerate(self.commands):
            if label.name in seen:
                raise FieldError(
                    ("commands", index, "name"), f"label {label.name!r} is defined twice"
                )
            seen.add(label.name)


@attrs.frozen
class JoinConfig:
    """``join:``: how a host that runs no auth service (a node, or another proxy) joins its
    cluster.

    The token is needed only for the first start: the identity it yields is kept in the data
    directory and reused, as Teleport's nodes do.
    """

    token: str | None = None
    proxy_server: HostPort | None = None
    auth_server: HostPort | None = None
    ca_pin: str | None = None
    insecure: bool = False

    def __attrs_post_init__(self) -> None:
        if self.proxy_server is not None and self.auth_server is not None:
            raise FieldError(
                ("proxy_server",),
                "give proxy_server (tunnel mode, no inbound port) or auth_server "
                "(direct mode), not both",
            )

    @property
    def server(self) -> HostPort | None:
        """The address to join through: the proxy, else the auth server."""
        return self.proxy_server or self.auth_server


def _default_nodename() -> str:
    return socket.gethostname()


def _default_data_dir() -> pathlib.Path:
    # Only root may write under /var/lib; anyone else gets a per-user directory, so that
    # `tetherd start` works out of the box for a developer.
    geteuid: Callable[[], int] | None = getattr(os, "geteuid", None)
    if geteuid is not None and geteuid() == 0:
        return pathlib.Path("/var/lib/tether")
    return pathlib.Path("~/.local/share/tether").expanduser()


@attrs.frozen
class Config:
    """The whole of ``tether.yaml``."""

    cluster_name: str = attrs.field(default="main", validator=_name)
    nodename: str = attrs.field(factory=_default_nodename, validator=_not_blank)
    data_dir: pathlib.Path = attrs.field(factory=_default_data_dir)
    log: LogConfig = attrs.field(factory=LogConfig)
    storage: StorageConfig = attrs.field(factory=StorageConfig)
    plugins: PluginsConfig = attrs.field(factory=PluginsConfig)
    auth_service: AuthServiceConfig = attrs.field(factory=AuthServiceConfig)
    proxy_service: ProxyServiceConfig = attrs.field(factory=ProxyServiceConfig)
    ssh_service: SshServiceConfig = attrs.field(factory=SshServiceConfig)
    join: JoinConfig = attrs.field(factory=JoinConfig)

    @property
    def storage_url(self) -> str:
        """The backend URL: ``storage.url``, else SQLite in ``data_dir``.

        The SQLite URL is ``sqlite:///var/lib/tether/backend.sqlite``: an empty host and an
        absolute path, so ``urllib.parse.urlsplit(url).path`` is the database file.
        """
        if self.storage.url is not None:
            return self.storage.url
        database = (self.data_dir.absolute() / "backend.sqlite").as_posix()
        return "sqlite://" + ("" if database.startswith("/") else "/") + database

    @property
    def proxy_public_addr(self) -> HostPort:
        """Where users and leaf clusters reach the proxy.

        Defaults to ``listen_addr``; a listen-on-everything host is no use to a client, so it
        is replaced by ``nodename`` (``localhost`` if that is empty).
        """
        proxy = self.proxy_service
        if proxy.public_addr is not None:
            return proxy.public_addr
        if proxy.listen_addr.is_unspecified or not proxy.listen_addr.host:
            return HostPort(self.nodename or "localhost", proxy.listen_addr.port)
        return proxy.listen_addr


def default_config(**overrides: Any) -> Config:
    """The configuration used when there is no file, with top-level fields replaced.

    :param overrides: top-level :class:`Config` fields, e.g. ``data_dir=tmp_path``.
    :raises ConfigError: an override is impossible (they often come from command-line flags,
        and the CLIs print ConfigError as a one-line message).
    """
    try:
        return Config(**overrides)
    except FieldError as exc:
        raise ConfigError(str(exc)) from None


def apply_start_flags(
    config: Config,
    *,
    roles: str | None = None,
    token: str | None = None,
    proxy_server: str | None = None,
    auth_server: str | None = None,
    ca_pin: str | None = None,
    insecure: bool = False,
    labels: str | None = None,
    nodename: str | None = None,
    data_dir: pathlib.Path | None = None,
) -> Config:
    """``config`` with ``tetherd start``'s flags applied; flags win over the file.

    ``roles`` chooses the services (``auth``, ``proxy``, ``node``) as Teleport's ``--roles``:
    the ones named run, the others do not.

    :raises ConfigError: a flag's value is impossible, with the flag named.
    """
    try:
        changes: dict[str, Any] = {}
        if roles is not None:
            wanted = {r.strip() for r in roles.split(",") if r.strip()}
            unknown = wanted - set(START_ROLES)
            if unknown or not wanted:
                raise ConfigError(
                    f"--roles: {', '.join(sorted(unknown)) or 'nothing'} is not a role; "
                    f"choose from {', '.join(START_ROLES)}"
                )
            changes["auth_service"] = attrs.evolve(config.auth_service, enabled="auth" in wanted)
            changes["proxy_service"] = attrs.evolve(config.proxy_service, enabled="proxy" in wanted)
            changes["ssh_service"] = attrs.evolve(config.ssh_service, enabled="node" in wanted)
        if labels:
            changes["ssh_service"] = attrs.evolve(
                changes.get("ssh_service", config.ssh_service),
                labels={**config.ssh_service.labels, **_parse_labels_flag(labels)},
            )
        join: dict[str, Any] = {}
        if token is not None:
            join["token"] = token
        for flag, field, value in (
            ("--proxy", "proxy_server", proxy_server),
            ("--auth-server", "auth_server", auth_server),
        ):
            if value is not None:
                try:
                    join[field] = HostPort.parse(value)
                except ValueError as exc:
                    raise ConfigError(f"{flag}: {exc}") from None
                # one flag replaces the file's choice of server entirely
                other = "auth_server" if field == "proxy_server" else "proxy_server"
                join.setdefault(other, None)
        if ca_pin is not None:
            join["ca_pin"] = ca_pin
        if insecure:
            join["insecure"] = True
        if join:
            changes["join"] = attrs.evolve(config.join, **join)
        if nodename is not None:
            changes["nodename"] = nodename
        if data_dir is not None:
            changes["data_dir"] = data_dir
        return attrs.evolve(config, **changes)
    except FieldError as exc:
        raise ConfigError(str(exc)) from None


#: What ``tetherd start --roles`` accepts.
START_ROLES = ("auth", "proxy", "node")


def _parse_labels_flag(text: str) -> dict[str, str]:
    labels = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--labels: {pair!r} is not key=value (example: env=dev,os=linux)")
        labels[key.strip()] = value.strip()
    return labels


# ---------------------------------------------------------------------------------------------
# Structuring: a strict converter
# ---------------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    """Name the YAML type of ``value`` the way a person reading the file would."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return "a date"
    return type(value).__name__


def _expect(value: object, kind: type, name: str) -> None:
    if not isinstance(value, kind):
        raise _mismatch(name, value)


def _mismatch(name: str, value: object) -> TypeError:
    return TypeError(f"expected {name}, got {_kind(value)}")


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise _mismatch("a string", value)
    return value


def _structure_int(value: object, _: type) -> int:
    # bool is an int subclass, but `failed_login_limit: true` is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _mismatch("an integer", value)
    return value


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise _mismatch("true or false", value)
    return value


def _structure_duration(value: object, _: type) -> datetime.timedelta:
    if not isinstance(value, str):
        raise _mismatch("a duration such as 30s, 5m or 12h", value)
    return parse_duration(value)


def _structure_path(value: object, _: type) -> pathlib.Path:
    if not isinstance(value, str):
        raise _mismatch("a path", value)
    if not value.strip():
        raise ValueError("must not be empty")
    return pathlib.Path(value).expanduser()


def _structure_size(value: object, _: type) -> ByteSize:
    if isinstance(value, int) and not isinstance(value, bool):
        return ByteSize(value)
    if not isinstance(value, str):
        raise _mismatch("a size such as 1MiB or 512KiB", value)
    return ByteSize.parse(value)


def _structure_host_port(value: object, _: type) -> HostPort:
    if not isinstance(value, str):
        raise _mismatch("host:port", value)
    return HostPort.parse(value)


def _structure_enum(value: object, cl: type[enum.StrEnum]) -> enum.StrEnum:
    if not isinstance(value, str):
        raise _mismatch("a string", value)
    # Case-insensitive: `severity: info` is unambiguous, so refusing it would only annoy.
    for member in cl:
        if member.value.lower() == value.lower():
            return member
    allowed = ", ".join(member.value for member in cl)
    raise ValueError(f"{value!r} is not one of {allowed}")


def _guarded(
    factory: Callable[[Any, cattrs.Converter], Callable[[Any, Any], Any]],
    kind: type,
    name: str,
    *,
    null_is_empty: bool = False,
) -> Callable[[Any, cattrs.Converter], Callable[[Any, Any], Any]]:
    """Wrap a cattrs hook factory so the hook refuses input of the wrong YAML type.

    cattrs converts any iterable to a tuple (so ``disabled: abc`` would become
    ``("a", "b", "c")``); checking the type first turns that into an error.
    """

    def make(cl: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
        inner = factory(cl, converter)

        def structure(value: Any, target: Any) -> Any:
            if value is None and null_is_empty:
                # `ssh_service:` with every line below commented out means "all defaults".
                value = kind()
            _expect(value, kind, name)
            return inner(value, target)

        return structure

    return make


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(datetime.timedelta, _structure_duration)
    converter.register_structure_hook(pathlib.Path, _structure_path)
    converter.register_structure_hook(HostPort, _structure_host_port)
    converter.register_structure_hook(ByteSize, _structure_size)
    # Registered by class, not by predicate: a StrEnum is a str, and the str hook would win.
    converter.register_structure_hook(enum.StrEnum, _structure_enum)
    converter.register_structure_hook_factory(
        cattrs.cols.is_sequence,
        _guarded(cattrs.cols.homogenous_tuple_structure_factory, list, "a list"),
    )
    converter.register_structure_hook_factory(
        cattrs.cols.is_mapping,
        _guarded(cattrs.cols.mapping_structure_factory, dict, "a mapping"),
    )
    converter.register_structure_hook_factory(
        lambda cl: attrs.has(cl) and cl is not HostPort,
        _guarded(
            lambda cl, conv: cattrs.gen.make_dict_structure_fn(cl, conv),
            dict,
            "a mapping",
            null_is_empty=True,
        ),
    )

    converter.register_unstructure_hook(datetime.timedelta, format_duration)
    converter.register_unstructure_hook(pathlib.Path, str)
    converter.register_unstructure_hook(HostPort, str)
    converter.register_unstructure_hook(ByteSize, str)
    converter.register_unstructure_hook(enum.StrEnum, lambda member: member.value)
    # Lists, not tuples, so the result dumps as YAML and JSON alike.
    converter.register_unstructure_hook_factory(
        cattrs.cols.is_sequence,
        lambda cl, conv: lambda seq: [conv.unstructure(item) for item in seq],
    )
    return converter


_converter = _make_converter()


def _failures(exc: BaseException, path: Path) -> Iterator[tuple[Path, str, str | None]]:
    """Flatten cattrs' exception tree into ``(path, message, hint)``, one per problem."""
    if isinstance(exc, BaseValidationError):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    sub_path = (*path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = (*path, note.index)
            yield from _failures(sub, sub_path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        known = [field.name for field in attrs.fields(exc.cl)]
        for key in sorted(exc.extra_fields, key=str):
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known fields: {', '.join(known)}"
            yield (*path, key), "unknown field", hint
    elif isinstance(exc, FieldError):
        yield (*path, *exc.path), exc.message, None
    else:
        yield path, str(exc) or type(exc).__name__, None


def _structure(doc: Document) -> Config:
    if not isinstance(doc.data, dict):
        raise ConfigError(
            f"{doc.where()}: expected a mapping of settings, got {_kind(doc.data)}",
            hint="run `tetherd configure` to see an example",
        )
    try:
        return _converter.structure(doc.data, Config)
    except BaseValidationError as exc:
        failures = list(_failures(exc, ()))
        # Report the problem nearest the top of the file: that is where the operator looks.
        path, message, hint = min(failures, key=lambda failure: doc.line_of(failure[0]))
        field = format_path(path)
        prefix = f"{doc.where(path)}: {field}: " if field else f"{doc.where(path)}: "
        raise ConfigError(prefix + message, hint=hint) from None


# ---------------------------------------------------------------------------------------------
# Loading and rendering
# ---------------------------------------------------------------------------------------------


def load_config_text(text: str, source: str) -> Config:
    """Parse configuration from ``text``; an empty document is the default configuration.

    :param source: the file name used in error messages.
    :raises ConfigError: ``source:line: field: problem``.
    """
    doc = load_document(text, source, error=ConfigError)
    if doc is None:
        return default_config()
    return _structure(doc)


def load_config(path: pathlib.Path) -> Config:
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
    return load_config_text(text, str(path))


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain values (strings, numbers, lists, dicts) that :func:`load_config_text` reads back
    to an equal :class:`Config`; for ``tetherd configure`` and ``-f json``/``-f yaml`` output."""
    result: dict[str, Any] = _converter.unstructure(config)
    return result


_TEMPLATE = string.Template(
    """\
# tether.yaml: the configuration of tetherd. Every value below is the default; an empty file
# (or no file at all) means the same. Durations are written like 30s, 5m, 12h or 1h30m.

# The cluster's name, shown to users and used by trusted clusters: it must differ from the name
# of every cluster this one trusts or is trusted by.
cluster_name: main
# This host's name inside the cluster (defaults to the host name).
nodename: $nodename
# Keys, certificates and the SQLite database live here.
data_dir: $data_dir

log:
  # DEBUG, INFO, WARN (or WARNING) or ERROR; `tetherd --debug` forces DEBUG.
  severity: INFO
  # text for people, json for log collectors (one object per line).
  format: text

storage:
  # The backend URL, e.g. postgresql://tether@db/tether; null keeps everything in
  # sqlite:///<data_dir>/backend.sqlite.
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
  # Per client address, on the join of hosts that join auth directly (--auth-server), as
  # proxy_service.rate_limit on the proxy's anonymous endpoints.
  rate_limit:
    average: 10
    burst: 40
    period: 1s
  # The largest request body read from a caller without a certificate (a host joining with
  # --auth-server); a larger one is refused with 413 before it is read.
  max_request_body: 1MiB

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
  # The cluster CA pin printed by `tetherctl tokens add`, to verify the server on first join.
  ca_pin: null
  insecure: false

ssh_service:
  enabled: false
  listen_addr: 0.0.0.0:3022
  # host:port the proxy reaches this node at (direct mode); null takes listen_addr, with an
  # any-interface host replaced by nodename. Unused in tunnel mode (join.proxy_server).
  public_addr: null
  # Static labels that roles select nodes by, e.g. {env: dev}.
  labels: {}
  # Labels from a command's output, refreshed every period, e.g.
  #   commands:
  #     - {name: arch, command: [uname, -p], period: 1h}
  commands: []
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


def render_default_config() -> str:
    """The commented ``tether.yaml`` that ``tetherd configure`` prints.

    It loads back to exactly :func:`default_config` on this host, so an operator can start
    from it and change only what they need.
    """
    config = default_config()
    data_dir = config.data_dir
    home = pathlib.Path.home()
    if data_dir.is_relative_to(home):
        # `~/...` keeps the file valid for whoever runs it, not just the user who generated it.
        shown = "~/" + data_dir.relative_to(home).as_posix()
    else:
        shown = data_dir.as_posix()
    return _TEMPLATE.substitute(nodename=_scalar(config.nodename), data_dir=_scalar(shown))
