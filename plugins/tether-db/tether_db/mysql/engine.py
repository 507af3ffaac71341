"""The MySQL/MariaDB engine: the trio driver around :mod:`tether_db.mysql.wire`.

For each client connection the engine greets the client as a server would, learns the
database user and database it asks for, lets :attr:`Session.check_access` decide, then logs
in to the database over TLS with the user's short-lived certificate (the database's user is
``REQUIRE SUBJECT '/CN=<user>'`` with no password) and relays. The client's password is
never looked at: Tether authenticated the user before the stream reached the service.

The relay parses what the client sends so every statement is audited before the database
sees it, and follows the server's answers (:class:`~tether_db.mysql.wire.ResponseTracker`)
so that it can tell a ``LOCAL INFILE`` request from a row and knows when it may speak to the
client itself.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import math
import os
import secrets
import ssl
import string

import trio

from tether.api import AccessDenied, TetherError, start_tls
from tether_db.engine import Session
from tether_db.mysql import wire
from tether_db.mysql.wire import Cap, Event, ProtocolError

__all__ = ["MySQLEngine"]

log = logging.getLogger(__name__)

#: How long a client or a database may take over its part of the handshake.
HANDSHAKE_TIMEOUT = 30.0
#: How long connecting to the database may take.
CONNECT_TIMEOUT = 15.0
#: The longest statement the relay holds to audit it before forwarding.
MAX_STATEMENT = 64 * 1024 * 1024
#: What the service's greeting says it is; the real server's version is not known yet.
SERVER_VERSION = "8.0.0-tether"
#: How long recording the end of a session may hold up its end.
AUDIT_END_TIMEOUT = 10.0

_READ = 65536
_SCRAMBLE_CHARS = (string.ascii_letters + string.digits).encode()

# error codes the engine answers with (MySQL's and MariaDB's own numbers, so that clients
# and people recognise them)
ER_HANDSHAKE_ERROR = 1043
ER_DBACCESS_DENIED = 1044
ER_ACCESS_DENIED = 1045
ER_UNKNOWN_COM = 1047
ER_NOT_ALLOWED_COMMAND = 1148
ER_CONNECTION_KILLED = 1927
ER_LOCAL_INFILE_DISABLED = 4166
ER_CLIENT_INTERACTION_TIMEOUT = 4031
# clients reject the 2000s (their own numbers) in an ERR packet: a database the service cannot
# reach or log in to is, for the client, a foreign data source it could not connect to
ER_CONNECT_TO_FOREIGN_DATA_SOURCE = 1429

LOCAL_INFILE_REFUSED = (
    "LOAD DATA LOCAL INFILE is not allowed on database {db!r}: no role of yours allows "
    "local infile (ask an administrator for a role that does)"
)


class _Refusal(Exception):
    """The database leg could not be set up; the ERR fields are what the client is told."""

    def __init__(self, code: int, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.sqlstate = sqlstate
        self.message = message


class _Ended(Exception):
    """The relay ended for a reason worth one log line."""


class MySQLEngine:
    """Serves MySQL's protocol (MariaDB too) for one database service."""

    protocol = "mysql"

    def __init__(self) -> None:
        self._connection_ids = itertools.count(1)

    async def serve(self, client: trio.abc.Stream, session: Session) -> None:
        """See :meth:`tether_db.engine.Engine.serve`."""
        connection = _Connection(client, session, next(self._connection_ids))
        try:
            await connection.run()
        except (ProtocolError, _Ended) as exc:
            log.info("mysql %s: session ended: %s", connection.label, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("mysql %s: session ended: a peer went away (%s)", connection.label, exc)
        finally:
            await connection.close_database()


class _Connection:
    """One client connection, from greeting to the end of the relay."""

    def __init__(self, client: trio.abc.Stream, session: Session, connection_id: int) -> None:
        self.client = client
        self.session = session
        self.connection_id = connection_id
        self.label = f"{session.user}@{session.database.name}#{connection_id}"
        self.db_user = ""
        self.db_name = ""
        self.database: trio.abc.Stream | None = None
        self.tracker = wire.ResponseTracker()
        self._client_reader = wire.FrameReader(max_payload=wire.MAX_HANDSHAKE_PAYLOAD)
        self._database_reader = wire.FrameReader(
            max_payload=wire.MAX_HANDSHAKE_PAYLOAD, keep_raw=True
        )
        self._client_lock = trio.Lock()
        self._statement: bytearray | None = None
        self._held: bytearray = bytearray()
        self._skipping = False

    # -- helpers ------------------------------------------------------------------------------

    async def _to_client(self, data: bytes) -> None:
        async with self._client_lock:
            await self.client.send_all(data)

    async def _err_to_client(self, seq: int, code: int, sqlstate: str, message: str) -> None:
        await self._to_client(wire.frame(seq, wire.build_err(code, sqlstate, message)))

    async def _audit(self, event: str, **fields: object) -> None:
        await self.session.audit(
            event, {**self.session.audit_fields(self.db_user, self.db_name), **fields}
        )

    async def close_database(self) -> None:
        if self.database is not None:
            await trio.aclose_forcefully(self.database)
            self.database = None

    # -- the session --------------------------------------------------------------------------

    async def run(self) -> None:
        allow_infile = self.session.allow_local_infile
        offered = wire.OFFERED_CAPABILITIES | (Cap.LOCAL_FILES if allow_infile else 0)
        scramble = bytes(secrets.choice(_SCRAMBLE_CHARS) for _ in range(20))
        greeting = wire.build_greeting(
            server_version=SERVER_VERSION,
            connection_id=self.connection_id,
            scramble=scramble,
            capabilities=offered,
        )
        await self.client.send_all(wire.frame(0, greeting))

        with trio.move_on_after(HANDSHAKE_TIMEOUT) as timeout:
            response = await self._read_handshake_response()
        if timeout.cancelled_caught:
            raise _Ended(f"the client sent no handshake response within {HANDSHAKE_TIMEOUT:g} s")
        self.db_user, self.db_name = response.user, response.database
        capabilities = response.capabilities & offered

        try:
            self.session.check_access(self.db_user, self.db_name)
        except AccessDenied as exc:
            await self._audit("db.session.denied", reason=str(exc))
            await self._err_to_client(2, ER_ACCESS_DENIED, "28000", str(exc))
            raise _Ended(f"access denied: {exc}") from None

        expires_in = self._seconds_left()
        deadline = math.inf if expires_in is None else trio.current_time() + expires_in
        if expires_in is not None and expires_in <= 0:
            message = "your certificate has expired: log in again (tether login)"
            await self._err_to_client(2, ER_ACCESS_DENIED, "28000", message)
            raise _Ended(message)

        try:
            with trio.fail_after(CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT):
                ok = await self._open_database(response, capabilities)
        except _Refusal as exc:
            await self._err_to_client(2, exc.code, exc.sqlstate, exc.message)
            raise _Ended(exc.message) from None
        except trio.TooSlowError:
            name = self.session.database.name
            message = f"database {name!r} did not finish its handshake in time"
            await self._err_to_client(2, ER_CONNECT_TO_FOREIGN_DATA_SOURCE, "HY000", message)
            raise _Ended(message) from None

        await self._to_client(wire.frame(2, ok))
        await self._audit("db.session.start")
        reason = "ended"
        try:
            reason = await self._relay(deadline)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(AUDIT_END_TIMEOUT):
                await self._audit("db.session.end", reason=reason)
        log.info("mysql %s: session ended: %s", self.label, reason)

    def _seconds_left(self) -> float | None:
        if self.session.expires is None:
            return None
        left: datetime.timedelta = self.session.expires - self.session.now()
        return left.total_seconds()

    async def _read_handshake_response(self) -> wire.HandshakeResponse:
        while True:
            try:
                f = self._client_reader.next_frame()
                if f is not None:
                    parsed = wire.parse_handshake_response(f.payload)
                    break
            except ProtocolError as exc:
                await self._err_to_client(2, ER_HANDSHAKE_ERROR, "08S01", f"bad handshake: {exc}")
                raise
            data = await self.client.receive_some(_READ)
            if not data:
                raise _Ended("the client left during the handshake")
            self._client_reader.receive_data(data)
        if isinstance(parsed, wire.SSLRequest):
            await self._err_to_client(
                2,
                ER_HANDSHAKE_ERROR,
                "08S01",
                "TLS is not offered here: `tether proxy db` already encrypts the connection "
                "(connect with --ssl=0 or --skip-ssl)",
            )
            raise _Ended("the client asked for TLS on the local leg")
        self._client_reader.set_max_payload(wire.MAX_FRAME)
        return parsed

    # -- the database leg ---------------------------------------------------------------------

    async def _open_database(self, response: wire.HandshakeResponse, capabilities: int) -> bytes:
        """Connect and log in; returns the server's OK payload. Raises :class:`_Refusal`."""
        db = self.session.database
        where = f"database {db.name!r} at {db.host}:{db.port}"
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                tcp = await trio.open_tcp_stream(db.host, db.port)
        except trio.TooSlowError:
            raise _Refusal(
                ER_CONNECT_TO_FOREIGN_DATA_SOURCE,
                "HY000",
                f"cannot reach {where}: no answer in time",
            ) from None
        except OSError as exc:
            reason = _os_reason(exc)
            raise _Refusal(
                ER_CONNECT_TO_FOREIGN_DATA_SOURCE, "HY000", f"cannot reach {where}: {reason}"
            ) from None
        self.database = tcp
        reader = self._database_reader
        try:
            f = await _read_frame(tcp, reader)
            try:
                greeting = wire.parse_greeting(f.payload)
            except wire.ServerErr as exc:
                raise _Refusal(
                    exc.err.code,
                    exc.err.sqlstate,
                    f"{where} refused the connection: {exc.err.message}",
                ) from None
            if not greeting.capabilities & Cap.SSL:
                raise _Refusal(
                    ER_CONNECT_TO_FOREIGN_DATA_SOURCE,
                    "HY000",
                    f"{where} does not offer TLS (set ssl-cert, ssl-key and ssl-ca on the server)",
                )
            relayed = capabilities & ~wire.HANDSHAKE_ONLY
            missing = relayed & ~greeting.capabilities
            if missing:
                names = ", ".join(n for c, n in wire.CAPABILITY_NAMES.items() if c & missing)
                raise _Refusal(
                    ER_HANDSHAKE_ERROR, "08S01", f"{where} lacks what the client asked for: {names}"
                )
            ours = (
                relayed
                | (capabilities & Cap.LONG_PASSWORD)
                | Cap.PROTOCOL_41
                | Cap.SECURE_CONNECTION
                | Cap.SSL
                | (
                    greeting.capabilities
                    & (Cap.PLUGIN_AUTH | Cap.CONNECT_ATTRS | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA)
                )
                | (Cap.CONNECT_WITH_DB if self.db_name else 0)
            )
            await tcp.send_all(
                wire.frame(
                    1,
                    wire.build_ssl_request(
                        capabilities=ours, max_packet=response.max_packet, charset=response.charset
                    ),
                )
            )
            try:
                context = await self.session.server_tls(self.db_user)
            except TetherError as exc:
                raise _Refusal(
                    ER_CONNECT_TO_FOREIGN_DATA_SOURCE,
                    "HY000",
                    f"no certificate for {self.db_user!r} to log in to {where}: {exc}",
                ) from exc
            try:
                tls = await start_tls(tcp, context, server_hostname=db.server_name)
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
                reason = (
                    cause.reason or str(cause) if isinstance(cause, ssl.SSLError) else str(cause)
                )
                if isinstance(cause, ssl.SSLCertVerificationError):
                    reason = cause.verify_message or reason
                raise _Refusal(
                    ER_CONNECT_TO_FOREIGN_DATA_SOURCE, "HY000", f"TLS to {where} failed: {reason}"
                ) from None
            self.database = tls
            attrs = {**response.connect_attrs, "tether_user": self.session.user}
            await tls.send_all(
                wire.frame(
                    2,
                    wire.build_handshake_response(
                        capabilities=ours,
                        max_packet=response.max_packet,
                        charset=response.charset,
                        user=self.db_user,
                        auth_response=b"",
                        database=self.db_name,
                        auth_plugin=greeting.auth_plugin or "mysql_native_password",
                        connect_attrs=attrs,
                    ),
                )
            )
            return await self._authenticate(tls, reader, where)
        except trio.BrokenResourceError as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                # TLS 1.3: the server checks the client's certificate after the handshake
                reason = exc.__cause__.reason or str(exc.__cause__)
                raise _Refusal(
                    ER_CONNECT_TO_FOREIGN_DATA_SOURCE,
                    "HY000",
                    f"TLS to {where} failed ({reason}): it may not trust the certificate "
                    f"for {self.db_user!r} (check that its ssl-ca is the cluster's database "
                    "client CA)",
                ) from exc
            message = f"{where} closed the connection during the handshake"
            if self.database is not tcp:
                # what MariaDB does when it does not trust the client's certificate
                message = (
                    f"{where} closed the connection after TLS was set up: it may not trust "
                    f"the certificate for {self.db_user!r} (check that its ssl-ca is the "
                    "cluster's database client CA)"
                )
            raise _Refusal(ER_CONNECT_TO_FOREIGN_DATA_SOURCE, "HY000", message) from exc
        except trio.ClosedResourceError as exc:
            raise _Refusal(
                ER_CONNECT_TO_FOREIGN_DATA_SOURCE,
                "HY000",
                f"{where} closed the connection during the handshake",
            ) from exc
        except ProtocolError as exc:
            raise _Refusal(
                ER_HANDSHAKE_ERROR, "08S01", f"{where} is not speaking MySQL: {exc}"
            ) from exc

    async def _authenticate(
        self, tls: trio.abc.Stream, reader: wire.FrameReader, where: str
    ) -> bytes:
        """Answer the server's authentication exchange with an empty password: the
        certificate is the proof. Returns the OK payload."""
        for _ in range(8):
            f = await _read_frame(tls, reader)
            head = f.payload[:1]
            if head == b"\x00":
                reader.discard()  # the relay starts after the OK
                reader.set_max_payload(wire.MAX_FRAME)
                return f.payload
            if head == b"\xff":
                err = wire.parse_err(f.payload)
                raise _Refusal(
                    err.code, err.sqlstate, f"{where} refused user {self.db_user!r}: {err.message}"
                )
            if head == b"\xfe":  # AuthSwitchRequest
                plugin = f.payload[1:].split(b"\0", 1)[0]
                answer = b"\0" if plugin == b"mysql_clear_password" else b""
                await tls.send_all(wire.frame(f.seq + 1, answer))
            elif head == b"\x01":  # more data: caching_sha2's "fast" or "full" authentication
                if f.payload[1:] == b"\x04":
                    await tls.send_all(wire.frame(f.seq + 1, b"\0"))
            else:
                raise ProtocolError(f"unexpected packet 0x{f.payload[:1].hex()} during login")
        raise _Refusal(ER_HANDSHAKE_ERROR, "08S01", f"{where} kept asking for authentication")

    # -- the relay ----------------------------------------------------------------------------

    async def _relay(self, deadline: float) -> str:
        """Copy both ways until one side ends or ``deadline`` (trio's clock) passes; returns
        why the session ended."""
        reasons: list[str] = []

        async def client_side(cancel: trio.CancelScope) -> None:
            try:
                reasons.append(await self._client_to_database())
            except ProtocolError as exc:
                reasons.append(f"bad packet from the client: {exc}")
                if self.tracker.idle:
                    await self._err_quietly(1, ER_UNKNOWN_COM, "08S01", reasons[-1])
            except _Ended as exc:
                reasons.append(str(exc))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                reasons.append("a peer went away")
            cancel.cancel()

        async def database_side(cancel: trio.CancelScope) -> None:
            try:
                reasons.append(await self._database_to_client())
            except ProtocolError as exc:
                reasons.append(f"the database sent a bad packet: {exc}")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                reasons.append("a peer went away")
            cancel.cancel()

        with trio.move_on_at(deadline) as expiry:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client_side, nursery.cancel_scope)
                nursery.start_soon(database_side, nursery.cancel_scope)
        if expiry.cancelled_caught and not reasons:
            if self.tracker.idle:
                await self._err_quietly(
                    0,
                    ER_CONNECTION_KILLED,
                    "70100",
                    "session ended: your certificate expired; log in again (tether login)",
                )
            return "the user's certificate expired"
        return reasons[0] if reasons else "ended"

    async def _err_quietly(self, seq: int, code: int, sqlstate: str, message: str) -> None:
        """Tell the client why the session ends, if it is still there to hear it."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._err_to_client(seq, code, sqlstate, message)

    async def _client_to_database(self) -> str:
        assert self.database is not None
        idle = self.session.idle_timeout
        while True:
            with trio.move_on_after(math.inf if idle is None else idle) as quiet:
                data = await self.client.receive_some(_READ)
            if quiet.cancelled_caught:
                if self.tracker.idle:
                    await self._err_quietly(
                        0,
                        ER_CLIENT_INTERACTION_TIMEOUT,
                        "HY000",
                        f"session ended: nothing from the client for {idle:g} s "
                        "(the roles' client_idle_timeout)",
                    )
                return f"idle for {idle:g} s"
            if not data:
                return "the client left"
            self._client_reader.receive_data(data)
            out = bytearray()
            while (f := self._client_reader.next_frame()) is not None:
                if await self._client_frame(f, out) is False:
                    if out:
                        await self.database.send_all(out)
                    return "the client quit"
            if out:
                await self.database.send_all(out)

    async def _client_frame(self, f: wire.Frame, out: bytearray) -> bool:
        """Handle one frame from the client, adding what goes to the database to ``out``;
        returns False once the client has quit."""
        if self._statement is not None:
            self._statement += f.payload
            self._held += f.raw
            if len(self._statement) > MAX_STATEMENT:
                raise _Ended(f"the client sent a statement longer than {MAX_STATEMENT} bytes")
            if not f.continues:
                command = wire.parse_command(bytes(self._statement))
                self._statement = None
                await self._audit("db.query", query=command.statement)
                out += self._held
                self._held = bytearray()
            return True
        if self.tracker.uploading:
            if not f.continuation:
                self.tracker.client_upload_frame(f.payload)
            out += f.raw
            return True
        if f.continuation:
            if not self._skipping:
                out += f.raw
            return True
        self._skipping = False
        command = wire.parse_command(f.payload)
        code = command.code
        if code == wire.COM_CHANGE_USER or code not in wire.REPLIES:
            if code == wire.COM_CHANGE_USER:
                message = (
                    "changing the database user inside a session is not allowed through "
                    "Tether: connect again as the other user"
                )
            else:
                message = f"{command.name} is not relayed by Tether's database service"
            await self._refuse_command(f, ER_UNKNOWN_COM, "08S01", message)
            return True
        if code == wire.COM_INIT_DB:
            name = command.argument or ""
            try:
                self.session.check_access(self.db_user, name)
            except AccessDenied as exc:
                fields = self.session.audit_fields(self.db_user, name)
                await self.session.audit("db.session.denied", {**fields, "reason": str(exc)})
                await self._refuse_command(f, ER_DBACCESS_DENIED, "42000", str(exc))
                return True
            self.db_name = name
        self.tracker.client_command(code)
        if code in (wire.COM_QUERY, wire.COM_STMT_PREPARE):
            if f.continues:
                self._statement = bytearray(f.payload)
                self._held = bytearray(f.raw)
                return True
            await self._audit("db.query", query=command.statement)
        out += f.raw
        return code != wire.COM_QUIT

    async def _refuse_command(self, f: wire.Frame, code: int, sqlstate: str, message: str) -> None:
        """Answer a command the relay does not forward, as the server would."""
        if not self.tracker.idle:
            # the answer would land among the server's answers to earlier commands
            raise _Ended(f"refused a pipelined command: {message}")
        self._skipping = f.continues
        await self._err_to_client(f.seq + 1, code, sqlstate, message)

    async def _database_to_client(self) -> str:
        assert self.database is not None
        name = self.session.database.name
        reader = self._database_reader
        while True:
            try:
                data = await self.database.receive_some(_READ)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                if self.tracker.idle:
                    await self._err_quietly(
                        0, ER_CONNECTION_KILLED, "70100", f"database {name!r} closed the connection"
                    )
                return "the database closed the connection"
            reader.receive_data(data)
            out = bytearray()
            while True:
                if self.tracker.in_rows:
                    reader.skip_rows()
                f = reader.next_frame()
                if f is None:
                    break
                event = self.tracker.server_frame(f)
                if event is Event.LOCAL_INFILE and not self.session.allow_local_infile:
                    out += reader.take_raw(but_last=True)
                    reader.discard()
                    await self._refuse_local_infile(f, out)
                    return "the database asked for a local file, which the roles do not allow"
                if event is Event.QUERY_ERR and not self.session.allow_local_infile:
                    err = wire.parse_err(f.payload)
                    if err.code in (ER_NOT_ALLOWED_COMMAND, ER_LOCAL_INFILE_DISABLED):
                        out += reader.take_raw(but_last=True)
                        reader.discard()
                        message = LOCAL_INFILE_REFUSED.format(db=name)
                        out += wire.frame(f.seq, wire.build_err(err.code, err.sqlstate, message))
            out += reader.take_raw()
            if out:
                await self._to_client(bytes(out))

    async def _refuse_local_infile(self, f: wire.Frame, out: bytearray) -> None:
        """Give the database an empty file and the client the reason; the session ends, as
        the database's answer and any further results no longer match what the client
        expects."""
        assert self.database is not None
        if out:
            await self._to_client(bytes(out))
        await self.database.send_all(wire.frame(f.seq + 1, b""))
        message = LOCAL_INFILE_REFUSED.format(db=self.session.database.name)
        await self._err_to_client(f.seq, ER_NOT_ALLOWED_COMMAND, "42000", message)


def _os_reason(exc: OSError) -> str:
    """The operating system's words for a failed connect (trio wraps them in a group)."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        for inner in cause.exceptions:
            if isinstance(inner, OSError) and inner.errno:
                return os.strerror(inner.errno).lower()
    return (exc.strerror or str(exc)).lower()


async def _read_frame(stream: trio.abc.Stream, reader: wire.FrameReader) -> wire.Frame:
    """The next frame from ``stream`` (the handshake: nothing else comes unasked)."""
    while True:
        f = reader.next_frame()
        if f is not None:
            return f
        data = await stream.receive_some(_READ)
        if not data:
            raise trio.BrokenResourceError("the peer closed the connection")
        reader.receive_data(data)
