"""The ``db`` plugin as Tether's plugin manager sees it (entry point group ``tether``).

Each hook is one part of database access, all through the kernel's public API: the
``db_service:`` section and ``--roles=db``, the ``db`` token type (host role ``Db``), the
``db`` resource kind databases are published as, the two certificate authorities databases
and the service trust each other with, the proxy's front door (an ALPN id and a target kind:
the kernel routes, through leaves too), the service inside the node agent, and the ``tether
db`` and ``tether proxy db`` commands.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from tether.api import hookimpl

if TYPE_CHECKING:  # every command-line start loads this module: each hook imports its own
    from tether.api import (
        CertAuthorityType,
        Config,
        ConfigSection,
        ProtocolHandler,
        ResourceKind,
        ServiceRole,
        TokenType,
    )
    from tether_db.service import DatabaseService

__all__ = [
    "tether_agent_protocols",
    "tether_cert_authorities",
    "tether_cli_lazy_commands",
    "tether_config_sections",
    "tether_protocols",
    "tether_resource_kinds",
    "tether_service_roles",
    "tether_token_types",
]


@hookimpl
def tether_config_sections() -> list[ConfigSection]:
    """``db_service:``, where Teleport's configuration has it."""
    from tether_db.config import SECTION

    return [SECTION]


@hookimpl
def tether_service_roles() -> list[ServiceRole]:
    """``db``: ``tetherd start --roles=db`` runs ``db_service``."""
    from tether_db.config import SERVICE_ROLE

    return [SERVICE_ROLE]


@hookimpl
def tether_token_types() -> list[TokenType]:
    """``tetherctl tokens add --type=db``: a host joins as a database service."""
    from tether.api import TokenType
    from tether_db.kind import HOST_ROLE

    return [TokenType("db", HOST_ROLE, "a database service joins the cluster", host_role=True)]


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """``db``: the databases services publish on every heartbeat."""
    from tether_db.kind import DB

    return [DB]


@hookimpl
def tether_cert_authorities() -> list[CertAuthorityType]:
    """``db`` signs database servers' certificates (``tetherctl auth sign --format=db``),
    which the service verifies; ``db_client`` signs the service's short-lived client
    certificates, which the databases trust (``PREFIX.cas``)."""
    from tether.api import CertAuthorityType
    from tether_db.kind import HOST_ROLE

    return [
        CertAuthorityType(
            name="db",
            description="signs database servers' certificates, which the service verifies",
            usages=("server",),
            sign_format="db",
            format_trusts=("db_client",),
        ),
        CertAuthorityType(
            name="db_client",
            description="signs the database service's client certificates, which databases trust",
            usages=("client",),
            max_ttl=datetime.timedelta(hours=12),
            host_roles=(HOST_ROLE,),
        ),
    ]


@hookimpl
def tether_protocols() -> list[ProtocolHandler]:
    """The database front door: the kernel answers the dial exchange on ``tether-db/1``,
    finds the database among those the user may see, in this cluster or a leaf, and opens a
    stream to its service; the bytes are the database protocol's own."""
    from tether.api import ProtocolHandler
    from tether_db.cli import ALPN, TITLE
    from tether_db.kind import DB_TARGET, PROTOCOL

    return [ProtocolHandler(name=PROTOCOL, alpn=(ALPN,), target_kind=DB_TARGET, title=TITLE)]


@hookimpl
def tether_agent_protocols(config: Config) -> list[DatabaseService]:
    """The database service inside the node agent, when ``db_service.enabled``."""
    from tether_db.mysql.engine import MySQLEngine
    from tether_db.postgres.engine import PostgresEngine
    from tether_db.service import agent_protocols

    return agent_protocols(config, {"postgres": PostgresEngine(), "mysql": MySQLEngine()})


@hookimpl
def tether_cli_lazy_commands(program: str) -> dict[str, str]:
    """``tether db ls|login|logout|connect|config`` and ``tether proxy db``, imported when
    named."""
    if program != "tether":
        return {}
    return {"db": "tether_db.cli:db_group", "proxy db": "tether_db.cli:proxy_db"}
