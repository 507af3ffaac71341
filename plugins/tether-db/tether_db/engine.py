"""What a database engine gets from the database service for one client connection.

The database service runs inside the node agent. For every stream a proxy opens to it, the
kernel has already verified the user's certificate and mapped a root user's roles; the
service picks the database the user asked for and hands the stream to that database's
:class:`Engine` with a :class:`Session`. The engine does the rest, which only it can do
because only it speaks the protocol:

1. read the client's startup (PostgreSQL: ``SSLRequest``, then ``StartupMessage`` or a
   ``CancelRequest``; MySQL: send the service's own server greeting, read the client's
   ``HandshakeResponse``) to learn the database user and database name asked for;
2. call :attr:`Session.check_access` with them *before any byte reaches the database*, and
   on refusal answer in the protocol's own error framing (PostgreSQL ``ErrorResponse``, MySQL
   ``ERR`` packet) with the refusal's message, so ``psql`` and ``mysql`` print it as a normal
   error;
3. connect to the database over TLS with :attr:`Session.server_tls` (a short-lived client
   certificate whose common name is the database user; the server's certificate verified),
   authenticate there, and relay the session, auditing every statement with
   :attr:`Session.audit` before it is forwarded;
4. end the session at :attr:`Session.expires` and after :attr:`Session.idle_timeout` of
   silence from the client, and give the client a clean protocol error when the database
   goes away.

The client leg is plaintext: it is carried inside the user's TLS front-door stream and the
reverse tunnel, from ``tether proxy db`` on the user's machine (which listens on loopback
only) to here.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

__all__ = ["AuditFn", "Database", "Engine", "Session"]

#: Records one audit event (type, fields); waits while the agent's backlog is full, so that
#: no statement is forwarded unaudited, and never drops one.
AuditFn = Callable[[str, Mapping[str, Any]], Awaitable[None]]


@attrs.frozen(kw_only=True)
class Database:
    """One database the service serves, as its configuration describes it.

    :param name: the name users type (``tether db connect NAME``), unique in the cluster.
    :param protocol: ``postgres`` or ``mysql`` (MariaDB speaks MySQL's protocol).
    :param host: where the service connects.
    :param port: ditto.
    :param server_name: the name the database server's certificate must carry (the host
        of the configured URI unless the configuration names another).
    """

    name: str
    protocol: str
    host: str
    port: int
    server_name: str


@attrs.frozen(kw_only=True)
class Session:
    """One client connection to one database, after the kernel verified the user.

    :param database: the database asked for.
    :param user: the Tether user (``alice``), as audit records and messages name them.
    :param cluster: the user's own cluster (a root's user keeps the root's name here).
    :param roles: the user's roles in this cluster (a root's user: the mapped ones), for audit.
    :param client: the user's address as the first proxy saw it, for audit.
    :param check_access: ``check_access(db_user, db_name)`` returns when the roles allow
        that database user and database name on this database, and raises
        ``tether.api.AccessDenied`` otherwise, its message naming what denied it (for
        PostgreSQL's ``CancelRequest``, which carries neither, it is not called).
    :param server_tls: ``await server_tls(db_user)`` is a client TLS context for connecting
        to the database as ``db_user``: it presents a fresh short-lived certificate whose
        common name is ``db_user``, verifies the server's certificate against the cluster's
        database CA and checks :attr:`Database.server_name`. Secure the TCP stream with
        ``tether.api.start_tls(tcp, context, server_hostname=database.server_name)``.
    :param audit: records an audit event; see :data:`AuditFn`. Types: ``db.session.start``,
        ``db.session.end``, ``db.session.denied`` (the refusal, with ``reason``) and
        ``db.query`` (``query``: the statement text); every event carries the fields of
        :meth:`audit_fields`.
    :param idle_timeout: end the session after this many seconds with nothing from the
        client (the roles' ``client_idle_timeout``); None for never.
    :param expires: end the session at this moment (the user's certificate expiry, when the
        roles' ``disconnect_expired_cert`` asks for it); None for never.
    :param allow_local_infile: whether MySQL's ``LOAD DATA LOCAL`` may run (a role option
        allows it); when false the engine clears ``CLIENT_LOCAL_FILES`` and refuses a
        ``LOCAL INFILE`` request from the server.
    :param now: the time decisions are taken at (UTC).
    """

    database: Database
    user: str
    cluster: str
    roles: tuple[str, ...]
    client: str
    check_access: Callable[[str, str], None]
    server_tls: Callable[[str], Awaitable[ssl.SSLContext]]
    audit: AuditFn
    idle_timeout: float | None = None
    expires: datetime.datetime | None = None
    allow_local_infile: bool = False
    now: Callable[[], datetime.datetime] = attrs.field(
        default=lambda: datetime.datetime.now(datetime.UTC)
    )

    def audit_fields(self, db_user: str, db_name: str) -> dict[str, Any]:
        """The fields every event of this session carries."""
        return {
            "user": self.user,
            "user_cluster": self.cluster,  # "cluster" is where the event is recorded
            "roles": list(self.roles),
            "client": self.client,
            "db_service": self.database.name,
            "db_protocol": self.database.protocol,
            "db_user": db_user,
            "db_name": db_name,
        }


class Engine(Protocol):
    """A database protocol the service speaks: one object per database service, shared by
    all of its sessions (PostgreSQL's cancel keys live in it)."""

    #: ``postgres`` or ``mysql``: the :attr:`Database.protocol` it serves.
    protocol: str

    async def serve(self, client: trio.abc.Stream, session: Session) -> None:
        """Speak the protocol with ``client`` until the session ends (see the module's
        docstring). Returns normally when either side ends the session; never raises for
        what the client or the database did (garbage, a vanished peer, a refusal): those are
        answered in the protocol and logged. The caller closes ``client`` afterwards."""
        ...
