"""``db_service:``: the database plugin's section of ``tether.yaml``, in Teleport's shape.

Declared through ``tether_config_sections``; the kernel reads it with its own converter, so a
mistake is reported as ``file:line: db_service.databases[0].uri: ...`` like the kernel's own
sections, and the plugin reads it back typed with ``config.section(DbServiceConfig)``.
``tetherd start --roles=db`` turns it on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from tether.api import ConfigSection, FieldError, HostPort, ServiceRole

__all__ = ["PROTOCOLS", "SECTION", "SERVICE_ROLE", "DatabaseConfig", "DbServiceConfig", "DbTLS"]

#: What ``protocol:`` takes: PostgreSQL, and MySQL's protocol (which MariaDB speaks).
PROTOCOLS = ("postgres", "mysql")

# Database names end up in resource names, audit events and `tether db connect NAME`.
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def _db_name(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if len(value) > 63 or not _NAME.fullmatch(value):
        raise FieldError(
            (attribute.name,),
            f"{value!r} is not a database name: lower-case letters, digits and '-', starting "
            "and ending with a letter or digit, at most 63 characters (as Teleport's)",
        )


def _protocol(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in PROTOCOLS:
        raise FieldError(
            (attribute.name,), f"{value!r} is not one of {', '.join(PROTOCOLS)} (MariaDB: mysql)"
        )


def _uri(value: str | HostPort) -> HostPort:
    """``host:port`` (Teleport writes ``localhost:5432``); a URL's scheme is refused with the
    form to write instead."""
    if isinstance(value, HostPort):
        return value
    if "://" in value:
        raise FieldError((), f"{value!r}: write host:port, without a scheme (127.0.0.1:5432)")
    try:
        return HostPort.parse(value)
    except ValueError as exc:
        raise FieldError((), str(exc)) from None


@attrs.frozen
class DbTLS:
    """``tls:``: how the service verifies the database server.

    :ivar server_name: the name the server's certificate must carry (default: the host of
        ``uri``), for a server reached at an address its certificate does not name.
    """

    server_name: str | None = None


@attrs.frozen
class DatabaseConfig:
    """One database this service serves (``databases:`` item)."""

    name: str = attrs.field(validator=_db_name)
    protocol: str = attrs.field(validator=_protocol)
    uri: HostPort = attrs.field(converter=_uri)
    description: str = ""
    static_labels: Mapping[str, str] = attrs.field(factory=dict)
    tls: DbTLS = attrs.field(factory=DbTLS)

    @property
    def server_name(self) -> str:
        """The name the server's certificate is checked for."""
        return self.tls.server_name or self.uri.host


@attrs.frozen
class DbServiceConfig:
    """``db_service:``: the databases this host serves to users through Tether."""

    enabled: bool = False
    databases: tuple[DatabaseConfig, ...] = ()

    def __attrs_post_init__(self) -> None:
        seen: set[str] = set()
        for index, database in enumerate(self.databases):
            if database.name in seen:
                raise FieldError(
                    ("databases", index, "name"), f"database {database.name!r} is listed twice"
                )
            seen.add(database.name)
        if self.enabled and not self.databases:
            raise FieldError(("databases",), "an enabled db_service needs at least one database")


SECTION = ConfigSection(
    name="db_service",
    type=DbServiceConfig,
    template="""\
db_service:
  # This host serves databases to Tether users (tetherd start --roles=db turns it on). Each
  # database authenticates the service with the cluster's certificates: see docs/databases.md
  # for the server's TLS files (tetherctl auth sign --format=db) and its pg_hba.conf or users.
  enabled: false
  databases: []
  #  - name: orders            # what users type: tether db connect orders
  #    protocol: postgres      # or mysql (MariaDB too)
  #    uri: 127.0.0.1:5432     # host:port the service connects to
  #    static_labels: {env: dev}
  #    tls: {server_name: db.internal}   # when the certificate names another host
""",
)

#: ``tetherd start --roles=db``: this host as a database service
SERVICE_ROLE = ServiceRole("db", "db_service", "this host as a database service")
