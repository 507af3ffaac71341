"""The database service: the agent protocol ``db`` a host runs with ``db_service.enabled``.

The kernel's node agent joins the cluster (with a ``db`` token: host role ``Db``), keeps the
host's certificates and its reverse tunnels, publishes :meth:`DatabaseService.resources` on
every heartbeat and hands :meth:`DatabaseService.serve` each stream a proxy opens to ``db``,
with the user's certificate verified and a root's user role-mapped. What is left here:

* which database the stream is for: the entry routing resolved (``AgentStream.resolved``),
  which must be one this service serves;
* the session's rules from the roles: the database user and name checked by
  ``RoleSet.check_db_access`` against the database's labels (this service is the authority on
  its own labels), ``client_idle_timeout`` and ``disconnect_expired_cert``;
* a client certificate for the database user, signed by the cluster's ``db_client`` CA and
  kept until near its expiry, and the ``db`` CA's certificates to verify the server with;
* the protocol itself, which the database's :class:`~tether_db.engine.Engine` speaks.
"""

from __future__ import annotations

import datetime
import logging
import pathlib
import ssl
import tempfile
from collections.abc import Iterable, Mapping

import attrs
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tether.api import (
    AgentContext,
    AgentStream,
    Config,
    ConfigError,
    Resource,
)
from tether_db import VERSION
from tether_db.config import DatabaseConfig, DbServiceConfig
from tether_db.engine import Database, Engine, Session
from tether_db.kind import DB, HOST_ROLE, PROTOCOL, DbSpec

__all__ = ["CLIENT_CERT_TTL", "DatabaseService", "agent_protocols"]

log = logging.getLogger(__name__)

#: How long a client certificate for a database user lives; it is reused until a third of
#: that is left, so a busy service asks auth about once per user every 40 minutes.
CLIENT_CERT_TTL = datetime.timedelta(hours=1)


@attrs.define
class _ClientCertificate:
    context: ssl.SSLContext
    renew_at: datetime.datetime


class DatabaseService:
    """This host's database service: the agent protocol named ``db``."""

    name = PROTOCOL
    needs_identity = True  # the user's roles decide the database user and name
    host_role = HOST_ROLE

    def __init__(
        self, nodename: str, settings: DbServiceConfig, engines: Mapping[str, Engine]
    ) -> None:
        self.nodename = nodename
        self.databases = {database.name: database for database in settings.databases}
        self._engines = dict(engines)
        self._agent: AgentContext | None = None
        self._clients: dict[str, _ClientCertificate] = {}
        self._server_cas: tuple[str, ...] = ()
        self._lock = trio.Lock()

    def addresses(self) -> Iterable[str]:
        return []  # reached only through the host's tunnels: no address to certify

    async def run(
        self, agent: AgentContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if not agent.tunnel_mode:
            raise ConfigError(
                "db_service: the database service is reached only through the host's reverse "
                "tunnels, so it needs --proxy (tunnel mode)",
                hint="start it with tetherd start --roles=db --proxy=HOST:PORT --token=TOKEN",
            )
        self._agent = agent
        task_status.started()

    def resources(self) -> Iterable[Resource]:
        agent = self._context()
        for database in self.databases.values():
            yield DB.new(
                database.name,
                DbSpec(
                    protocol=database.protocol,
                    uri=str(database.uri),
                    description=database.description,
                    host_id=agent.host_id,
                    hostname=self.nodename,
                    version=VERSION,
                ),
                labels=dict(database.static_labels),
            )

    def _context(self) -> AgentContext:
        if self._agent is None:
            raise RuntimeError("the database service is not running yet")
        return self._agent

    async def serve(self, stream: AgentStream) -> None:
        agent = self._context()
        database = self.databases.get(stream.resolved)
        identity, roles = stream.identity, stream.roles
        if database is None or identity is None or roles is None:
            # routing resolved a database of this host's; anything else is not for us
            log.warning(
                "db: refused a stream from %s for %r: not a database this service serves",
                stream.client,
                stream.resolved or stream.target,
            )
            return
        labels = dict(database.static_labels)

        def check_access(db_user: str, db_name: str) -> None:
            roles.check_db_access(db_user, db_name, db_labels=labels, traits=identity.traits)

        idle = roles.client_idle_timeout()
        session = Session(
            database=_database(database),
            user=identity.username,
            cluster=identity.cluster,
            roles=tuple(identity.roles),
            client=stream.client,
            check_access=check_access,
            server_tls=lambda db_user: self._server_tls(database, db_user),
            audit=agent.record,
            idle_timeout=idle.total_seconds() if idle is not None else None,
            expires=identity.expires if roles.disconnect_expired_cert() else None,
            allow_local_infile=roles.db_load_data_local(),
            now=agent.now,
        )
        await self._engines[database.protocol].serve(stream.stream, session)

    async def _server_tls(self, database: DatabaseConfig, db_user: str) -> ssl.SSLContext:
        """A TLS context that presents a client certificate for ``db_user`` and verifies the
        database's server certificate against the cluster's ``db`` CA."""
        agent = self._context()
        async with self._lock:
            held = self._clients.get(db_user)
            if held is not None and agent.now() < held.renew_at:
                return held.context
            if not self._server_cas:
                self._server_cas = tuple(await agent.authority_certificates("db"))
            key = ec.generate_private_key(ec.SECP256R1())
            signed = await agent.sign_certificate(
                "db_client", key.public_key(), db_user, usage="client", ttl=CLIENT_CERT_TTL
            )
            context = _client_context(key, signed.certificate, self._server_cas)
            self._clients[db_user] = _ClientCertificate(
                context, agent.now() + CLIENT_CERT_TTL * 2 / 3
            )
            return context


def _database(database: DatabaseConfig) -> Database:
    return Database(
        name=database.name,
        protocol=database.protocol,
        host=database.uri.connect_host,
        port=database.uri.port,
        server_name=database.server_name,
    )


def _client_context(
    key: ec.EllipticCurvePrivateKey, certificate: str, server_cas: Iterable[str]
) -> ssl.SSLContext:
    """Python's ssl loads a key and certificate only from files: write them to a private
    temporary directory, load them, and remove them."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata="".join(server_cas))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with tempfile.TemporaryDirectory(prefix="tether-db-") as directory:
        key_path = pathlib.Path(directory) / "client.key"
        cert_path = pathlib.Path(directory) / "client.crt"
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        cert_path.write_text(certificate)
        context.load_cert_chain(cert_path, key_path)
    return context


def agent_protocols(config: Config, engines: Mapping[str, Engine]) -> list[DatabaseService]:
    """The database service, when ``db_service.enabled``."""
    settings = config.section(DbServiceConfig)
    if not settings.enabled:
        return []
    return [DatabaseService(config.nodename, settings, engines)]
