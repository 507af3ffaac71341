"""What the MySQL engine's scenario tests share: the engine behind a real listener with a
session the test chooses, and the real clients (``mariadb``, PyMySQL, a raw socket)."""

from __future__ import annotations

import datetime
import functools
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import trio
from mariadb_server import MariaDB
from tether_db.engine import Database, Session
from tether_db.mysql import MySQLEngine, wire

from tether.api import AccessDenied


def rule(users: tuple[str, ...], names: tuple[str, ...]) -> Callable[[str, str], None]:
    """A role check over allowed database users and names, naming the rule that refuses."""

    def check_access(db_user: str, db_name: str) -> None:
        if db_user not in users:
            raise AccessDenied(
                f"role 'dev' does not allow database user {db_user!r} "
                f"(db_users: {', '.join(users)})"
            )
        if db_name not in names:
            raise AccessDenied(
                f"role 'dev' does not allow database {db_name!r} (db_names: {', '.join(names)})"
            )

    return check_access


@dataclass
class Service:
    """The engine serving one database on a local port, and what it audited."""

    port: int
    server: MariaDB
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    served: int = 0
    session_ended: trio.Event = field(default_factory=trio.Event)

    def count_ended(self) -> None:
        self.served += 1
        self.session_ended.set()
        self.session_ended = trio.Event()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.events if event == kind]

    def queries(self) -> list[str]:
        return [fields["query"] for fields in self.of_type("db.query")]

    async def wait_ended(self, count: int = 1) -> None:
        """Wait until ``count`` sessions have been served to their end."""
        while self.served < count:
            await self.session_ended.wait()


async def start_service(
    nursery: trio.Nursery,
    server: MariaDB,
    *,
    users: tuple[str, ...] = ("alice",),
    names: tuple[str, ...] = ("shop",),
    port: int | None = None,
    server_name: str | None = None,
    **options: Any,
) -> Service:
    """Listen on 127.0.0.1 and hand every connection to one :class:`MySQLEngine`."""
    engine = MySQLEngine()
    service = Service(port=0, server=server)

    async def audit(event: str, fields: Mapping[str, Any]) -> None:
        service.events.append((event, dict(fields)))

    async def server_tls(db_user: str) -> ssl.SSLContext:
        return server.client_context(db_user)

    database = Database(
        name="shop-db",
        protocol="mysql",
        host=server.host,
        port=server.port if port is None else port,
        server_name=server.server_name if server_name is None else server_name,
    )
    session = Session(
        database=database,
        user="alice@example.com",
        cluster="root",
        roles=("dev",),
        client="127.0.0.1:50000",
        check_access=rule(users, names),
        server_tls=server_tls,
        audit=audit,
        **options,
    )

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await engine.serve(stream, session)
        finally:
            await stream.aclose()
            service.count_ended()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    service.port = listeners[0].socket.getsockname()[1]
    return service


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


async def mariadb(
    service: Service, *args: str, user: str = "alice", database: str | None = "shop"
) -> Run:
    """Run the ``mariadb`` command-line client against the service."""
    command = [
        "mariadb",
        "--no-defaults",
        "-h127.0.0.1",
        f"-P{service.port}",
        f"-u{user}",
        "--skip-ssl",
        "-N",
        "-B",
        *args,
    ]
    if database is not None:
        command.append(database)
    with trio.fail_after(60):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def pymysql_connect(service: Service, **kwargs: Any) -> pymysql.connections.Connection[Any]:
    """A PyMySQL connection through the service (PyMySQL uses no TLS unless asked)."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": service.port,
        "user": "alice",
        "database": "shop",
        "connect_timeout": 30,
        "read_timeout": 30,
        **kwargs,
    }
    return pymysql.connect(**options)


class RawClient:
    """A client that speaks the protocol by hand, for what real clients never send."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = wire.FrameReader()

    @classmethod
    async def connect(cls, service: Service) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", service.port))

    async def frame(self, patience: float = 30) -> wire.Frame | None:
        """The next frame, or None when the service closed the connection."""
        while (f := self.reader.next_frame()) is None:
            with trio.fail_after(patience):
                data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.reader.receive_data(data)
        return f

    async def send(self, seq: int, payload: bytes) -> None:
        await self.stream.send_all(wire.frames(seq, payload))

    async def login(self, user: str = "alice", database: str = "shop") -> wire.Greeting:
        first = await self.frame()
        assert first is not None
        greeting = wire.parse_greeting(first.payload)
        capabilities = greeting.capabilities & (wire.OFFERED_CAPABILITIES & ~wire.Cap.CONNECT_ATTRS)
        await self.send(
            1,
            wire.build_handshake_response(
                capabilities=capabilities,
                max_packet=1 << 24,
                charset=45,
                user=user,
                auth_response=b"x" * 20,
                database=database,
                auth_plugin="mysql_native_password",
            ),
        )
        ok = await self.frame()
        assert ok is not None and ok.payload[:1] == b"\x00", ok
        return greeting

    async def aclose(self) -> None:
        await self.stream.aclose()


def now_plus(seconds: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)


class FakeConnection:
    """The database end of a :func:`fake_database` connection, after TLS is set up."""

    def __init__(self, stream: trio.abc.Stream, reader: wire.FrameReader) -> None:
        self.stream = stream
        self.reader = reader

    async def frame(self) -> wire.Frame | None:
        """The next frame from the engine, or None when it closed the connection."""
        while (f := self.reader.next_frame()) is None:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.reader.receive_data(data)
        return f

    async def send(self, seq: int, payload: bytes) -> None:
        await self.stream.send_all(wire.frame(seq, payload))


async def fake_database(
    nursery: trio.Nursery,
    server: MariaDB,
    directory: Path,
    script: Callable[[FakeConnection], Awaitable[None]],
) -> int:
    """Listen as a database that greets, takes the SSL request and sets up TLS with a
    certificate from the test db CA as MariaDB would, then does what ``script`` says (from
    reading the handshake response on). Returns its port."""
    cert, key = server.db_ca.issue(server.server_name, server=True)
    (directory / "fake-cert.pem").write_bytes(cert)
    (directory / "fake-key.pem").write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "fake-cert.pem", directory / "fake-key.pem")

    async def handler(stream: trio.SocketStream) -> None:
        reader = wire.FrameReader()
        caps = wire.OFFERED_CAPABILITIES | wire.Cap.SSL | wire.Cap.LOCAL_FILES
        greeting = wire.build_greeting(
            server_version="10.11.0-fake",
            connection_id=1,
            scramble=b"s" * 20,
            capabilities=caps,
        )
        await stream.send_all(wire.frame(0, greeting))
        if await FakeConnection(stream, reader).frame() is None:  # the SSL request
            return
        tls = trio.SSLStream(stream, context, server_side=True)
        try:
            await script(FakeConnection(tls, reader))
        finally:
            await trio.aclose_forcefully(tls)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port
