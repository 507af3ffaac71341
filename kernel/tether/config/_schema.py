"""The kernel's sections of ``tether.yaml`` and :class:`Config`, the whole file.

Every field has a default, so an empty file is the single-host setup: auth and proxy on this
host with SQLite under ``data_dir``. Plugins' sections (``ssh_service``, ...) are kept in
:attr:`Config.sections` and read through :meth:`Config.section`; :mod:`tether.config._sections`
says how a plugin declares one, and what its section is when there is no file at all
(``embedded_config``: with the SSH plugin, this host is a node too).
"""

from __future__ import annotations

import datetime
import os
import pathlib
import socket
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

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
    valid_name,
)
from tether.durations import format_duration
from tether.errors import ConfigError

__all__ = [
    "AuditConfig",
    "AuthServiceConfig",
    "Config",
    "JoinConfig",
    "LogConfig",
    "PluginsConfig",
    "ProxyServiceConfig",
    "RateLimitConfig",
    "StorageConfig",
    "default_config",
]

T = TypeVar("T")


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
                ("url",),
                f"{self.url!r} is not a URL (example: sqlite:///var/lib/tether/backend.sqlite)",
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
class AuditConfig:
    """``auth_service.audit:``: what an action that must be audited does when a sink fails.

    Logins, issued certificates, joins, trust and resource changes are recorded before they
    take effect; with ``refuse`` one that no sink could record does not happen (the caller
    gets :class:`~tether.errors.AuditUnavailable`), with ``continue`` it happens, logged.
    """

    on_failure: AuditFailure = AuditFailure.REFUSE


@attrs.frozen
class AuthServiceConfig:
    """``auth_service:``: certificate authorities, users, roles, resources and audit."""

    enabled: bool = True
    listen_addr: HostPort = HostPort("127.0.0.1", 3025)
    session_ttl: datetime.timedelta = attrs.field(
        default=datetime.timedelta(hours=12), validator=positive
    )
    failed_login_limit: int = attrs.field(default=5, validator=positive)
    lockout_duration: datetime.timedelta = attrs.field(
        default=datetime.timedelta(minutes=30), validator=positive
    )
    signup_token_ttl: datetime.timedelta = attrs.field(
        default=datetime.timedelta(hours=1), validator=positive
    )
    host_cert_ttl: datetime.timedelta = attrs.field(
        default=datetime.timedelta(days=365), validator=positive
    )
    ca_algorithm: CaAlgorithm = CaAlgorithm.ED25519
    # browsers refuse Ed25519 certificates, and this CA signs the proxy's web certificate
    tls_ca_algorithm: CaAlgorithm = CaAlgorithm.ECDSA_P256
    # a key (32 bytes, base64) every auth server of the cluster holds a copy of, which seals
    # the CA keys in the store (tether.auth.ca_sealing); none: they are stored in plain text
    ca_keys_key_file: pathlib.Path | None = None
    # key files the CA keys in the store may still be sealed with (rotating the key file):
    # what one of them opens is sealed again with ca_keys_key_file
    ca_keys_previous_key_files: tuple[pathlib.Path, ...] = ()
    rate_limit: RateLimitConfig = attrs.field(factory=lambda: RateLimitConfig())
    # callers without a certificate only: hosts' batches (heartbeats of every tunnel) grow
    # with the fleet, and they are authenticated
    max_request_body: ByteSize = attrs.field(default=ByteSize(1024**2), validator=positive)
    # the cluster's keep-alive (Teleport's cluster_networking_config): how often the agent of
    # every tunnel (leaf proxies, tunnel-mode nodes) heartbeats, and how many heartbeats it
    # may miss before it counts as gone; the cluster's proxies learn it from auth and name it
    # in every tunnel's hello
    keep_alive_interval: datetime.timedelta = attrs.field(
        default=datetime.timedelta(minutes=1), validator=positive
    )
    keep_alive_count_max: int = attrs.field(default=3, validator=positive)
    audit: AuditConfig = attrs.field(factory=lambda: AuditConfig())

    def __attrs_post_init__(self) -> None:
        # a node's relayed entries live the keep-alive's dead time and a heartbeat; auth
        # takes no entry living longer than an hour (MAX_PUBLISH_TTL)
        lives = self.keep_alive_interval * (self.keep_alive_count_max + 1)
        if lives > datetime.timedelta(hours=1):
            raise FieldError(
                ("keep_alive_interval",),
                f"{format_duration(self.keep_alive_interval)} x (keep_alive_count_max "
                f"{self.keep_alive_count_max} + 1) is {format_duration(lives)}: a tunnel-mode "
                "node's entries would live longer than the hour auth allows; shorten either",
            )


@attrs.frozen
class RateLimitConfig:
    """``proxy_service.rate_limit:`` and ``auth_service.rate_limit:``: how often one client
    address may call the endpoints that take no certificate (login, sign-up, SSO login, join,
    trusted cluster validation; at auth, the join of a host that joins it directly)."""

    average: int = attrs.field(default=10, validator=positive)
    burst: int = attrs.field(default=40, validator=positive)
    period: datetime.timedelta = attrs.field(
        default=datetime.timedelta(seconds=1), validator=positive
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
    max_request_body: ByteSize = attrs.field(default=ByteSize(1024**2), validator=positive)

    def __attrs_post_init__(self) -> None:
        # A certificate without its key (or the reverse) cannot serve TLS; say so at load time
        # rather than when the first client connects.
        if self.https_cert_file is not None and self.https_key_file is None:
            raise FieldError(("https_cert_file",), "needs https_key_file as well")
        if self.https_key_file is not None and self.https_cert_file is None:
            raise FieldError(("https_key_file",), "needs https_cert_file as well")


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
    #: every auth server of a cluster that runs several (on one shared store): a proxy fails
    #: over between them (:class:`~tether.auth.http_client.AuthClient`); instead of auth_server
    auth_servers: tuple[HostPort, ...] = ()
    ca_pin: str | None = None
    insecure: bool = False

    def __attrs_post_init__(self) -> None:
        if self.auth_server is not None and self.auth_servers:
            raise FieldError(
                ("auth_servers",),
                "give auth_server (one auth server) or auth_servers (a list), not both",
            )
        if self.proxy_server is not None and self.auth_addresses:
            field = "auth_server" if self.auth_server is not None else "auth_servers"
            raise FieldError(
                ("proxy_server",),
                f"give proxy_server (tunnel mode, no inbound port) or {field} "
                "(direct mode), not both",
            )

    @property
    def auth_addresses(self) -> tuple[HostPort, ...]:
        """The auth servers to reach, the first one first: auth_server, or auth_servers."""
        return (self.auth_server,) if self.auth_server is not None else self.auth_servers

    @property
    def server(self) -> HostPort | None:
        """The address to join through: the proxy, else the (first) auth server."""
        return self.proxy_server or next(iter(self.auth_addresses), None)


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

    cluster_name: str = attrs.field(default="main", validator=valid_name)
    nodename: str = attrs.field(factory=_default_nodename, validator=not_blank)
    data_dir: pathlib.Path = attrs.field(factory=_default_data_dir)
    log: LogConfig = attrs.field(factory=LogConfig)
    storage: StorageConfig = attrs.field(factory=StorageConfig)
    plugins: PluginsConfig = attrs.field(factory=PluginsConfig)
    auth_service: AuthServiceConfig = attrs.field(factory=AuthServiceConfig)
    proxy_service: ProxyServiceConfig = attrs.field(factory=ProxyServiceConfig)
    join: JoinConfig = attrs.field(factory=JoinConfig)
    #: plugins' top-level sections by name (``ssh_service``, ...), only those that differ from
    #: their defaults, so that a file that spells out the defaults equals an empty one; read
    #: one with :meth:`section`.
    sections: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    def section(self, kind: type[T]) -> T:
        """The plugin section of class ``kind``: as the file gave it, else its defaults.

        Plugins read their settings this way (``config.section(SshServiceConfig).enabled``),
        typed, whether or not the file has the section.
        """
        for value in self.sections.values():
            if type(value) is kind:
                return value
        return kind()

    def with_section(self, name: str, value: object) -> Config:
        """This configuration with plugin section ``name`` replaced by ``value``."""
        sections = {key: other for key, other in self.sections.items() if key != name}
        if value != type(value)():
            sections[name] = value
        return attrs.evolve(self, sections=sections)

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
