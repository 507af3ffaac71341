"""The PostgreSQL engine: the trio driver around :mod:`tether_db.postgres.wire`.

One :class:`PostgresEngine` serves every session of one database service. It reads the
client's startup, asks the session whether that database user and name are allowed, logs in
to the real database over TLS with a certificate for that user, and relays: the database's
bytes go to the client untouched (cheap, however large the result), the client's are split
into messages so that every ``Query`` and ``Parse`` is audited before it is forwarded.

Cancel keys: the database's ``BackendKeyData`` is replaced by a secret the engine makes, so
the real key never leaves the service and a ``CancelRequest`` must come through Tether, from
the same Tether user, to reach the database.
"""

from __future__ import annotations

import logging
import math
import secrets
import ssl
from collections.abc import Awaitable, Callable
from typing import NoReturn

import attrs
import trio

from tether.api import AccessDenied, start_tls
from tether_db.engine import Database, Session
from tether_db.postgres import wire

__all__ = ["PostgresEngine"]

log = logging.getLogger(__name__)

#: How long a client may take to send its startup packets.
STARTUP_TIMEOUT = 60.0
#: How long reaching, securing and logging in to the database may take.
CONNECT_TIMEOUT = 20.0
_CHUNK = 65536
#: ``ReadyForQuery`` (any transaction status): when the database's last bytes end with one,
#: it is idle and between messages, so the engine may speak to the client itself.
_READY_PREFIX = b"Z\x00\x00\x00\x05"


class _SessionEnded(Exception):
    """Ends the startup of a session after the client has been told why (or cannot be)."""


@attrs.frozen
class _CancelTarget:
    """What a cancel key the engine gave out stands for."""

    database: Database
    pid: int
    key: bytes
    user: str
    cluster: str
    db_user: str
    server_tls: Callable[[str], Awaitable[ssl.SSLContext]]


class PostgresEngine:
    """Speaks PostgreSQL between a Tether client and a database; see the module docstring."""

    protocol = "postgres"

    def __init__(self) -> None:
        self._cancel_keys: dict[tuple[int, bytes], _CancelTarget] = {}

    async def serve(self, client: trio.abc.Stream, session: Session) -> None:
        """Serve one client connection until either side ends it (see
        :meth:`tether_db.engine.Engine.serve`)."""
        try:
            await _Connection(self, client, session).run()
        except _SessionEnded:
            pass
        except wire.ProtocolError as error:
            log.info(
                "postgres session of %s to %s: %s",
                session.user,
                session.database.name,
                error.message,
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.info(
                "postgres session of %s to %s: connection lost: %s",
                session.user,
                session.database.name,
                error.__cause__ or error,
            )

    async def _cancel(self, request: wire.CancelRequest, session: Session) -> None:
        """Forward a client's ``CancelRequest`` when its key is one this engine gave to the
        same Tether user; otherwise drop it, as PostgreSQL answers nothing to a cancel."""
        target = self._cancel_keys.get((request.pid, request.key))
        if target is None:
            log.info("postgres cancel request from %s with an unknown key ignored", session.user)
            return
        if (target.user, target.cluster) != (session.user, session.cluster):
            log.warning(
                "postgres cancel request from %s@%s for a session of %s@%s ignored",
                session.user,
                session.cluster,
                target.user,
                target.cluster,
            )
            return
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                server = await _open_tls(target.database, target.server_tls, target.db_user)
                try:
                    await server.send_all(wire.cancel_request(target.pid, target.key))
                    # PostgreSQL closes the connection once it has signalled the backend.
                    while await server.receive_some(_CHUNK):
                        pass
                finally:
                    await trio.aclose_forcefully(server)
        except (trio.TooSlowError, _DatabaseUnreachable, trio.BrokenResourceError) as error:
            log.warning(
                "postgres cancel request of %s to %s not delivered: %s",
                session.user,
                target.database.name,
                error,
            )
            return
        log.info(
            "postgres cancel request of %s forwarded to %s", session.user, target.database.name
        )


class _DatabaseUnreachable(Exception):
    """The database could not be reached, secured or spoken to; the message says why."""


async def _open_tls(
    database: Database, server_tls: Callable[[str], Awaitable[ssl.SSLContext]], db_user: str
) -> trio.abc.Stream:
    """A TLS stream to ``database``, after PostgreSQL's ``SSLRequest`` handshake."""
    try:
        tcp = await trio.open_tcp_stream(database.host, database.port)
    except OSError as error:
        raise _DatabaseUnreachable(
            f"cannot connect to {database.host}:{database.port}: {_os_reason(error)}"
        ) from None
    try:
        await tcp.send_all(wire.ssl_request())
        # Exactly one byte: anything after it belongs to the TLS handshake (CVE-2021-23222).
        answer = await tcp.receive_some(1)
        if answer != b"S":
            raise _DatabaseUnreachable(
                "it does not accept TLS connections (set ssl = on in postgresql.conf)"
                if answer
                else "it closed the connection when asked for TLS"
            )
        context = await server_tls(db_user)
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    try:
        return await start_tls(tcp, context, server_hostname=database.server_name)
    except trio.BrokenResourceError as error:
        raise _DatabaseUnreachable(f"TLS failed: {_tls_reason(error)}") from None
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise


def _os_reason(error: OSError) -> str:
    """The operating system's words for a failed connect (trio wraps one error per address
    tried in a summary that only says they all failed)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]
        else:
            cause = cause.__cause__
    return str(error)


def _tls_reason(error: BaseException) -> str:
    cause = error.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return cause.verify_message or str(cause)
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause or error) or "the connection was closed"


class _Connection:
    """One client connection: startup, then the relay."""

    def __init__(self, engine: PostgresEngine, client: trio.abc.Stream, session: Session):
        self.engine = engine
        self.client = client
        self.session = session
        self.database = session.database
        self.db_user = ""
        self.db_name = ""
        self.client_lock = trio.StrictFIFOLock()
        #: the last bytes the client got from the database (to see if it is idle)
        self.server_tail = b""
        self.client_terminated = False
        self.end_reason = ""
        #: the key handed to the client in place of the database's, while it is valid
        self.cancel_key: tuple[int, bytes] | None = None

    # -- startup ---------------------------------------------------------------------------

    async def run(self) -> None:
        message, leftover = await self._read_startup()
        if isinstance(message, wire.CancelRequest):
            await self.engine._cancel(message, self.session)
            return
        self.db_user, self.db_name = message.user, message.database
        fields = self.session.audit_fields(self.db_user, self.db_name)
        try:
            self.session.check_access(self.db_user, self.db_name)
        except AccessDenied as denied:
            log.info(
                "postgres session of %s as %s to %s/%s denied: %s",
                self.session.user,
                self.db_user,
                self.database.name,
                self.db_name,
                denied,
            )
            await self.session.audit("db.session.denied", {**fields, "reason": str(denied)})
            await self._fatal("28000", denied.message, hint=denied.hint)
            return
        expires_at = self._expiry_deadline()
        if expires_at <= trio.current_time():
            await self._fatal(
                "28000",
                "your Tether certificate has expired",
                hint="run tether login again",
            )
            return
        try:
            server = await self._login(message)
        except BaseException:
            self._forget_cancel_key()
            raise
        try:
            await self.session.audit("db.session.start", fields)
            await self._relay(server, leftover, expires_at)
        finally:
            self._forget_cancel_key()
            await trio.aclose_forcefully(server)
            with trio.CancelScope(shield=True):
                await self.session.audit(
                    "db.session.end", {**fields, "reason": self.end_reason or "ended"}
                )

    async def _read_startup(
        self,
    ) -> tuple[wire.StartupMessage | wire.CancelRequest, bytes]:
        parser = wire.StartupParser()
        try:
            with trio.fail_after(STARTUP_TIMEOUT):
                while True:
                    try:
                        event = parser.next_event()
                    except wire.ProtocolError as error:
                        await self._fatal("08P01", error.message, hint=error.hint)
                        raise
                    if isinstance(event, wire.SSLRequest | wire.GSSENCRequest):
                        await self.client.send_all(b"N")
                        continue
                    if isinstance(event, wire.StartupMessage | wire.CancelRequest):
                        return event, bytes(parser.buffer)
                    data = await self.client.receive_some(_CHUNK)
                    if not data:
                        raise wire.ProtocolError("the client closed before its startup")
                    parser.feed(data)
        except trio.TooSlowError:
            raise wire.ProtocolError("the client sent no startup in time") from None

    async def _login(self, startup: wire.StartupMessage) -> trio.abc.Stream:
        """Open the database connection and relay its login until ``ReadyForQuery``."""
        name = self.database.name
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                server = await _open_tls(self.database, self.session.server_tls, self.db_user)
        except (_DatabaseUnreachable, trio.TooSlowError) as error:
            reason = str(error) if isinstance(error, _DatabaseUnreachable) else "timed out"
            log.warning("postgres database %s unreachable: %s", name, reason)
            await self._fatal(
                "08006",
                f'cannot reach database "{name}": {reason}',
                hint="ask your Tether administrator to check the database service",
            )
            raise _SessionEnded from None
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                await self._authenticate(server, startup)
        except trio.TooSlowError:
            await trio.aclose_forcefully(server)
            await self._fatal("08006", f'database "{name}" did not finish logging in in time')
            raise _SessionEnded from None
        except BaseException:
            await trio.aclose_forcefully(server)
            raise
        return server

    def _forget_cancel_key(self) -> None:
        if self.cancel_key is not None:
            self.engine._cancel_keys.pop(self.cancel_key, None)
            self.cancel_key = None

    async def _authenticate(self, server: trio.abc.Stream, startup: wire.StartupMessage) -> None:
        name = self.database.name
        parser = wire.BackendParser()
        out = bytearray()
        try:
            await server.send_all(startup.raw)
        except trio.BrokenResourceError as error:
            await self._login_failed(error)
        while True:
            message = parser.next_event()
            if message is None:
                try:
                    data = await server.receive_some(_CHUNK)
                except trio.BrokenResourceError as error:
                    await self._login_failed(error)
                if not data:
                    await self._fatal(
                        "08006", f'database "{name}" closed the connection during login'
                    )
                    raise _SessionEnded
                parser.feed(data)
                continue
            if message.type == b"R":
                code = wire.parse_authentication(message).code
                if code != wire.AUTH_OK:
                    log.warning(
                        "postgres database %s asked %s for authentication method %d, "
                        "not certificate authentication",
                        name,
                        self.db_user,
                        code,
                    )
                    await self._fatal(
                        "28000",
                        f'database "{name}" is not configured for certificate authentication '
                        f'(it asked for a password for user "{self.db_user}")',
                        hint="its pg_hba.conf needs a 'hostssl ... cert' line for this service",
                    )
                    raise _SessionEnded
            elif message.type == b"K":
                real = wire.parse_backend_key_data(message)
                fake = secrets.token_bytes(len(real.key))
                self._forget_cancel_key()
                self.cancel_key = (real.pid, fake)
                self.engine._cancel_keys[self.cancel_key] = _CancelTarget(
                    database=self.database,
                    pid=real.pid,
                    key=real.key,
                    user=self.session.user,
                    cluster=self.session.cluster,
                    db_user=self.db_user,
                    server_tls=self.session.server_tls,
                )
                out += wire.backend_key_data(real.pid, fake)
                continue
            elif message.type == b"E":
                fields = wire.error_response_fields(message)
                log.info("postgres database %s refused %s: %s", name, self.db_user, fields.get("M"))
                await self.client.send_all(bytes(out) + message.raw)
                raise _SessionEnded
            out += message.raw
            if message.type == b"Z":
                out += parser.buffer
                await self.client.send_all(bytes(out))
                self.server_tail = bytes(out[-6:])
                return

    async def _login_failed(self, error: trio.BrokenResourceError) -> NoReturn:
        """The database broke the connection while logging in: most often its TLS refused
        the service's certificate."""
        reason = _tls_reason(error)
        name = self.database.name
        log.warning("postgres database %s broke the login of %s: %s", name, self.db_user, reason)
        await self._fatal(
            "08006",
            f'database "{name}" broke the connection during login: {reason}',
            hint="check that its ssl_ca_file trusts the cluster's database client CA",
        )
        raise _SessionEnded

    # -- relay -----------------------------------------------------------------------------

    def _expiry_deadline(self) -> float:
        if self.session.expires is None:
            return math.inf
        left = (self.session.expires - self.session.now()).total_seconds()
        return trio.current_time() + left

    async def _relay(self, server: trio.abc.Stream, leftover: bytes, expires_at: float) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._server_to_client, server, nursery.cancel_scope)
            nursery.start_soon(
                self._client_to_server, server, leftover, expires_at, nursery.cancel_scope
            )

    async def _server_to_client(self, server: trio.abc.Stream, scope: trio.CancelScope) -> None:
        name = self.database.name
        while True:
            try:
                data = await server.receive_some(_CHUNK)
            except trio.BrokenResourceError as error:
                log.info("postgres database %s connection broke: %s", name, error.__cause__)
                data = b""
            if not data:
                break
            try:
                async with self.client_lock:
                    await self.client.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.end_reason = self.end_reason or "client disconnected"
                scope.cancel()
                return
            self.server_tail = bytes((self.server_tail + data[-6:])[-6:])
        if self.client_terminated:
            self.end_reason = self.end_reason or "client ended the session"
        else:
            self.end_reason = self.end_reason or "database closed the connection"
            log.info("postgres database %s closed the session of %s", name, self.session.user)
            await self._fatal_if_idle("08006", f'database "{name}" closed the connection')
        scope.cancel()

    async def _client_to_server(
        self,
        server: trio.abc.Stream,
        leftover: bytes,
        expires_at: float,
        scope: trio.CancelScope,
    ) -> None:
        parser = wire.FrontendParser()
        parser.feed(leftover)
        idle = self.session.idle_timeout
        try:
            while True:
                await self._forward_client_messages(parser, server)
                idle_at = math.inf if idle is None else trio.current_time() + idle
                with trio.move_on_at(min(idle_at, expires_at)):
                    try:
                        data = await self.client.receive_some(_CHUNK)
                    except trio.BrokenResourceError:
                        data = b""
                    if not data:
                        self.end_reason = self.end_reason or "client disconnected"
                        scope.cancel()
                        return
                    parser.feed(data)
                    continue
                await self._end_on_timeout(expires_at, parser.at_boundary)
                scope.cancel()
                return
        except wire.ProtocolError as error:
            self.end_reason = f"client protocol error: {error.message}"
            log.info("postgres session of %s: %s", self.session.user, error.message)
            await self._fatal_if_idle("08P01", error.message, hint=error.hint)
            scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.end_reason = self.end_reason or "database connection broke"
            scope.cancel()

    async def _forward_client_messages(
        self, parser: wire.FrontendParser, server: trio.abc.Stream
    ) -> None:
        """Forward what the client sent, each statement audited before it goes."""
        fields = self.session.audit_fields(self.db_user, self.db_name)
        out = bytearray()
        while (event := parser.next_event()) is not None:
            if isinstance(event, wire.Passthrough):
                out += event.data
                continue
            await self.session.audit("db.query", {**fields, "query": wire.statement_text(event)})
            out += event.raw
        if out:
            if out[-5:] == b"X\x00\x00\x00\x04" and parser.at_boundary:
                self.client_terminated = True
            await server.send_all(bytes(out))

    async def _end_on_timeout(self, expires_at: float, client_idle: bool) -> None:
        if trio.current_time() >= expires_at:
            self.end_reason = "the user's certificate expired"
            log.info("postgres session of %s ended: certificate expired", self.session.user)
            await self._fatal_if_idle(
                "57P01",
                "Tether ended the session: your certificate has expired",
                hint="run tether login again",
                client_idle=client_idle,
            )
            return
        idle = self.session.idle_timeout
        self.end_reason = "idle timeout"
        log.info("postgres session of %s ended: idle for %gs", self.session.user, idle)
        await self._fatal_if_idle(
            "57P05",
            f"Tether ended the session after {idle:g} seconds without a message from the"
            " client (client_idle_timeout)",
            client_idle=client_idle,
        )

    # -- errors to the client ---------------------------------------------------------------

    async def _fatal_if_idle(
        self, sqlstate: str, message: str, *, hint: str | None = None, client_idle: bool = True
    ) -> None:
        """Tell the client why the session ends, if both sides are between messages (an
        error in the middle of a result would garble it: then the close says it)."""
        async with self.client_lock:
            if client_idle and self.server_tail[:5] == _READY_PREFIX:
                await self._send_quietly(wire.error_response("FATAL", sqlstate, message, hint=hint))

    async def _fatal(self, sqlstate: str, message: str, *, hint: str | None = None) -> None:
        """Send a FATAL ``ErrorResponse`` to the client; it may be gone already."""
        await self._send_quietly(wire.error_response("FATAL", sqlstate, message, hint=hint))

    async def _send_quietly(self, data: bytes) -> None:
        try:
            with trio.move_on_after(5):
                await self.client.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
