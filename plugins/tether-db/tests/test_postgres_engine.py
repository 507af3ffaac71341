"""The PostgreSQL engine between real clients (psql, psycopg, raw sockets) and a real
PostgreSQL that authenticates the engine by certificate only."""

from __future__ import annotations

import datetime
import functools
import logging
import os
import struct
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs
import psycopg
import pytest
import trio
from postgres_server import PASSWORD_USER, PostgresServer, TestCA, free_port
from tether_db.engine import Database, Session
from tether_db.postgres import PostgresEngine, wire

from tether.api import AccessDenied

_PROTOCOL_3_0 = 196608


@attrs.define
class Harness:
    """Listeners on 127.0.0.1 that hand each connection to one shared engine, with a
    Session for a given Tether user, and the audit events every session recorded."""

    server: PostgresServer
    nursery: trio.Nursery
    engine: PostgresEngine = attrs.Factory(PostgresEngine)
    events: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)

    def database(self, *, port: int | None = None, server_name: str | None = None) -> Database:
        return Database(
            name="shop-db",
            protocol="postgres",
            host=self.server.host,
            port=self.server.port if port is None else port,
            server_name=server_name or self.server.server_name,
        )

    async def listen(
        self,
        *,
        user: str = "alice",
        cluster: str = "root",
        db_users: tuple[str, ...] = ("alice", PASSWORD_USER),
        db_names: tuple[str, ...] = ("shop", "postgres"),
        database: Database | None = None,
        idle_timeout: float | None = None,
        expires: datetime.datetime | None = None,
        client_ca: TestCA | None = None,
    ) -> int:
        """Start a listener whose connections are ``user``'s; returns its port."""

        def check_access(db_user: str, db_name: str) -> None:
            if db_user not in db_users:
                raise AccessDenied(
                    f'role "dba" does not allow database user "{db_user}" '
                    f"(db_users: {', '.join(db_users)})"
                )
            if db_name not in db_names:
                raise AccessDenied(
                    f'role "dba" does not allow database "{db_name}" '
                    f"(db_names: {', '.join(db_names)})"
                )

        async def server_tls(db_user: str) -> Any:
            return self.server.client_context(db_user, client_ca=client_ca)

        async def audit(kind: str, fields: Mapping[str, Any]) -> None:
            self.events.append((kind, dict(fields)))
            self._changed.set()
            self._changed = trio.Event()

        session_database = database or self.database()

        async def handle(stream: trio.SocketStream) -> None:
            session = Session(
                database=session_database,
                user=user,
                cluster=cluster,
                roles=("dba",),
                client="127.0.0.1:1",
                check_access=check_access,
                server_tls=server_tls,
                audit=audit,
                idle_timeout=idle_timeout,
                expires=expires,
            )
            try:
                await self.engine.serve(stream, session)
            finally:
                await stream.aclose()

        listeners = await self.nursery.start(
            functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
        )
        port: int = listeners[0].socket.getsockname()[1]
        return port

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.events if event == kind]

    async def wait_for(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        with trio.fail_after(30):
            while len(self.of(kind)) < count:
                await self._changed.wait()
        return self.of(kind)


@pytest.fixture
async def harness(postgres_server: PostgresServer) -> AsyncIterator[Harness]:
    async with trio.open_nursery() as nursery:
        yield Harness(server=postgres_server, nursery=nursery)
        nursery.cancel_scope.cancel()


def dsn(port: int, user: str = "alice", dbname: str = "shop") -> str:
    return (
        f"host=127.0.0.1 port={port} user={user} dbname={dbname} sslmode=disable connect_timeout=20"
    )


async def psql(port: int, sql: str, *, user: str = "alice", dbname: str = "shop") -> Any:
    """Run the real psql against the engine; returns the completed process."""
    env = {**os.environ, "PGCONNECT_TIMEOUT": "20"}
    return await trio.run_process(
        ["psql", "-X", "-w", "-At", dsn(port, user, dbname), "-c", sql],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


def startup_packet(user: str = "alice", database: str = "shop") -> bytes:
    body = f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!II", 8 + len(body), _PROTOCOL_3_0) + body


async def read_message(stream: trio.SocketStream, parser: wire.BackendParser) -> Any:
    """The next backend message, or None when the engine closed the connection."""
    with trio.fail_after(30):
        while (message := parser.next_event()) is None:
            data = await stream.receive_some(65536)
            if not data:
                return None
            parser.feed(data)
        return message


async def raw_login(port: int) -> tuple[trio.SocketStream, wire.BackendParser, Any]:
    """Log in as alice with a hand-written client; returns the stream, its parser and the
    BackendKeyData the engine handed out."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(startup_packet())
    parser = wire.BackendParser()
    key = None
    while (message := await read_message(stream, parser)).type != b"Z":
        if message.type == b"K":
            key = wire.parse_backend_key_data(message)
    return stream, parser, key


def query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(body) + 4) + body


async def wait_until_sleeping(server: PostgresServer, *, state: str = "active") -> str:
    """The pid of the backend running pg_sleep, once PostgreSQL shows it running."""
    sql = (
        "select pid from pg_stat_activity where query like 'select pg_sleep%' "
        f"and state = '{state}'"
    )
    with trio.fail_after(30):
        while True:
            pid: str = (await in_thread(lambda: server.admin(sql))).strip()
            if pid:
                return pid
            await trio.sleep(0.05)  # PostgreSQL's activity view is polled: it has no waits


async def still_serves(port: int) -> None:
    """The engine answers the next connection normally."""
    result = await psql(port, "select 40 + 2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "42"


# -- sessions ------------------------------------------------------------------------------


async def test_user_runs_queries_with_psql(harness: Harness) -> None:
    port = await harness.listen()
    result = await psql(
        port,
        "select current_user, current_database(), ssl from pg_stat_ssl "
        "where pid = pg_backend_pid()",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "alice|shop|t"
    (start,) = await harness.wait_for("db.session.start")
    assert start["user"] == "alice"
    assert start["db_user"] == "alice"
    assert start["db_name"] == "shop"
    assert start["db_service"] == "shop-db"
    await harness.wait_for("db.session.end")


async def test_user_runs_queries_with_psycopg(harness: Harness) -> None:
    port = await harness.listen()

    def run() -> Any:
        with psycopg.connect(dsn(port)) as conn:
            conn.execute("create temp table t (n int)")
            conn.execute("insert into t select generate_series(1, 10)")
            return conn.execute("select sum(n) from t").fetchone()

    assert await in_thread(run) == (55,)


async def test_database_defaults_to_the_user_name(harness: Harness) -> None:
    port = await harness.listen(db_names=("shop",))
    result = await trio.run_process(
        [
            "psql",
            "-X",
            "-w",
            "-At",
            f"host=127.0.0.1 port={port} user=alice sslmode=disable",
            "-c",
            "select 1",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode != 0
    assert 'role "dba" does not allow database "alice"' in result.stderr.decode()


async def test_denied_user_is_refused_with_the_rules_message(harness: Harness) -> None:
    port = await harness.listen()
    result = await psql(port, "select 1", user="bob")
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert 'FATAL:  role "dba" does not allow database user "bob" (db_users: alice' in stderr
    (denied,) = await harness.wait_for("db.session.denied")
    assert denied["db_user"] == "bob"
    assert "does not allow database user" in denied["reason"]
    assert not harness.of("db.session.start")
    await still_serves(port)


async def test_denied_database_is_refused_with_the_rules_message(harness: Harness) -> None:
    port = await harness.listen()
    result = await psql(port, "select 1", dbname="hr")
    assert result.returncode != 0
    assert 'FATAL:  role "dba" does not allow database "hr"' in result.stderr.decode()
    (denied,) = await harness.wait_for("db.session.denied")
    assert denied["db_name"] == "hr"


async def test_database_asking_for_a_password_is_named_misconfigured(harness: Harness) -> None:
    port = await harness.listen()
    result = await psql(port, "select 1", user=PASSWORD_USER)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert 'database "shop-db" is not configured for certificate authentication' in stderr
    assert "pg_hba.conf" in stderr
    await still_serves(port)


async def test_database_that_is_down_is_a_clear_error(harness: Harness) -> None:
    port = await harness.listen(database=harness.database(port=free_port()))
    result = await psql(port, "select 1")
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert 'FATAL:  cannot reach database "shop-db": cannot connect to 127.0.0.1:' in stderr
    good = await harness.listen()
    await still_serves(good)


async def test_database_with_another_name_in_its_certificate_is_refused(
    harness: Harness,
) -> None:
    port = await harness.listen(database=harness.database(server_name="impostor.db.test"))
    result = await psql(port, "select 1")
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert 'FATAL:  cannot reach database "shop-db": TLS failed: Hostname mismatch' in stderr
    await still_serves(await harness.listen())


async def test_database_that_distrusts_the_service_certificate_says_so(harness: Harness) -> None:
    port = await harness.listen(client_ca=TestCA("some other CA"))
    result = await psql(port, "select 1")
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert 'FATAL:  database "shop-db" broke the connection during login' in stderr
    assert "ssl_ca_file" in stderr
    await still_serves(await harness.listen())


async def test_database_ending_the_session_ends_the_client_promptly(harness: Harness) -> None:
    port = await harness.listen()

    def run() -> None:
        with psycopg.connect(dsn(port), autocommit=True) as conn:
            pid = conn.execute("select pg_backend_pid()").fetchone()
            harness.server.admin(f"select pg_terminate_backend({pid[0]})")
            with pytest.raises(psycopg.OperationalError, match="terminating connection"):
                conn.execute("select 1")

    await in_thread(run)
    (end,) = await harness.wait_for("db.session.end")
    assert end["reason"] == "database closed the connection"
    await still_serves(port)


# -- the protocol's features ---------------------------------------------------------------


async def test_user_copies_data_in_and_out(harness: Harness) -> None:
    port = await harness.listen()

    def run() -> list[str]:
        with psycopg.connect(dsn(port)) as conn, conn.cursor() as cur:
            cur.execute("create temp table items (id int, name text)")
            with cur.copy("copy items from stdin") as copy:
                for i in range(20000):
                    copy.write_row((i, f"item {i}"))
            out: list[str] = []
            with cur.copy("copy (select * from items where id < 3 order by id) to stdout") as copy:
                out.extend(bytes(chunk).decode() for chunk in copy)
            count = cur.execute("select count(*) from items").fetchone()
            assert count == (20000,)
            return out

    assert "".join(await in_thread(run)) == "0\titem 0\n1\titem 1\n2\titem 2\n"


async def test_user_runs_statements_with_parameters(harness: Harness) -> None:
    port = await harness.listen()

    def run() -> Any:
        with psycopg.connect(dsn(port)) as conn:
            first = conn.execute("select %s::int + %s::int", (40, 2), prepare=True).fetchone()
            again = conn.execute("select %s::int + %s::int", (1, 2), prepare=True).fetchone()
            text = conn.execute("select %s || '!'", ("hi\0x".replace("\0", ""),)).fetchone()
            return first, again, text

    assert await in_thread(run) == ((42,), (3,), ("hix!",))
    queries = [event["query"] for event in harness.of("db.query")]
    assert "select $1::int + $2::int" in queries


async def test_user_fetches_a_million_rows(harness: Harness) -> None:
    port = await harness.listen()

    def run() -> tuple[int, int]:
        with psycopg.connect(dsn(port)) as conn:
            rows = conn.execute("select g, repeat('x', 20) from generate_series(1, 1000000) g")
            total = count = 0
            for n, _ in rows:
                total += n
                count += 1
            return count, total

    assert await in_thread(run) == (1_000_000, 1_000_000 * 1_000_001 // 2)


async def test_user_listens_for_notifications(harness: Harness) -> None:
    port = await harness.listen()

    def run() -> list[tuple[str, str]]:
        with (
            psycopg.connect(dsn(port), autocommit=True) as listener,
            psycopg.connect(dsn(port), autocommit=True) as sender,
        ):
            listener.execute("listen orders")
            sender.execute("notify orders, 'order 7 paid'")
            return [(n.channel, n.payload) for n in listener.notifies(timeout=20, stop_after=1)]

    assert await in_thread(run) == [("orders", "order 7 paid")]


async def test_audit_shows_the_queries_in_order(harness: Harness) -> None:
    port = await harness.listen()

    def run() -> None:
        with psycopg.connect(dsn(port), autocommit=True) as conn:
            conn.execute("select 'first'")
            conn.execute("select 'second' where %s", (True,))
            conn.execute("select 'third'")

    await in_thread(run)
    await harness.wait_for("db.session.end")
    kinds = [kind for kind, _ in harness.events]
    assert kinds[0] == "db.session.start"
    assert kinds[-1] == "db.session.end"
    queries = [event["query"] for event in harness.of("db.query")]
    mine = [q for q in queries if q.startswith("select '")]
    assert mine == ["select 'first'", "select 'second' where $1", "select 'third'"]
    assert all(event["user"] == "alice" for event in harness.of("db.query"))


# -- cancellation --------------------------------------------------------------------------


async def test_user_cancels_a_running_query(harness: Harness) -> None:
    port = await harness.listen()
    conn = await in_thread(lambda: psycopg.connect(dsn(port), autocommit=True))
    try:

        def sleep() -> None:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(60)")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_thread, sleep)
            await wait_until_sleeping(harness.server)
            # cancel_safe() is psycopg's cancel() on libpq's non-blocking cancel API; the
            # legacy cancel() holds the GIL while it waits for the database to close, which
            # would freeze this process's engine (a test artefact: the engine normally runs
            # in another process than the client)
            await in_thread(conn.cancel_safe)
    finally:
        await in_thread(conn.close)


#: A user's program: a query runs in one thread, the main one cancels it with psycopg's
#: classic cancel() (libpq's blocking PQcancel), once a second session sees it running.
_CANCEL_IN_ANOTHER_PROCESS = """
import sys, threading, time
import psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
outcome = []
def sleep():
    try:
        conn.execute("select pg_sleep(60)")
        outcome.append("finished")
    except psycopg.errors.QueryCanceled as error:
        outcome.append(f"canceled: {error}")
worker = threading.Thread(target=sleep)
worker.start()
with psycopg.connect(sys.argv[1], autocommit=True) as watcher:
    running = "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'"
    while watcher.execute(running + " and state = 'active'").fetchone() != (1,):
        time.sleep(0.02)
conn.cancel()
worker.join()
print(outcome[0])
"""


async def test_user_cancels_with_psycopgs_classic_cancel(harness: Harness) -> None:
    port = await harness.listen()
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-c", _CANCEL_IN_ANOTHER_PROCESS, dsn(port)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "canceled: canceling statement due to user request"


async def test_another_users_cancel_key_does_nothing(harness: Harness) -> None:
    alice_port = await harness.listen(user="alice")
    bob_port = await harness.listen(user="bob", db_users=("bob",), db_names=("hr",))
    stream, parser, key = await raw_login(alice_port)
    assert key is not None
    await stream.send_all(query("select pg_sleep(60)"))
    pid = await wait_until_sleeping(harness.server)
    assert str(key.pid) == pid

    async def send_cancel(port: int, key_bytes: bytes) -> None:
        cancel = await trio.open_tcp_stream("127.0.0.1", port)
        await cancel.send_all(wire.cancel_request(key.pid, key_bytes))
        with trio.fail_after(30):
            assert await cancel.receive_some(10) == b""  # answered with a close, as PostgreSQL
        await cancel.aclose()

    await send_cancel(bob_port, key.key)
    await send_cancel(alice_port, bytes(4))  # alice, but a key the engine never gave
    assert (await wait_until_sleeping(harness.server)) == pid

    await send_cancel(alice_port, key.key)
    while (error := await read_message(stream, parser)).type != b"E":
        assert error.type == b"T"  # the row description comes before the error
    assert wire.error_response_fields(error)["C"] == "57014"  # query_canceled
    await stream.aclose()


# -- what a peer may do wrong --------------------------------------------------------------


async def _refused(port: int, data: bytes) -> dict[str, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    parser = wire.BackendParser()
    if data.startswith(wire.ssl_request()):
        with trio.fail_after(30):
            assert await stream.receive_some(1) == b"N"
    error = await read_message(stream, parser)
    assert error is not None and error.type == b"E"
    assert await read_message(stream, parser) is None
    await stream.aclose()
    return wire.error_response_fields(error)


async def test_http_request_instead_of_postgres_is_refused(harness: Harness) -> None:
    port = await harness.listen()
    fields = await _refused(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert fields["C"] == "08P01"
    assert "not a PostgreSQL startup packet" in fields["M"]
    await still_serves(port)


async def test_huge_startup_length_is_refused_at_once(harness: Harness) -> None:
    port = await harness.listen()
    fields = await _refused(port, struct.pack("!II", 0x7FFF_FFFF, _PROTOCOL_3_0))
    assert "length 2147483647" in fields["M"]
    await still_serves(port)


async def test_garbage_after_ssl_request_is_refused(harness: Harness) -> None:
    port = await harness.listen()
    fields = await _refused(port, wire.ssl_request() + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc")
    assert fields["C"] == "08P01"
    await still_serves(port)


async def test_huge_statement_is_refused(harness: Harness) -> None:
    port = await harness.listen()
    stream, parser, _ = await raw_login(port)
    await stream.send_all(b"Q" + struct.pack("!I", 0x7000_0000) + b"select")
    error = await read_message(stream, parser)
    assert error.type == b"E"
    assert "the most this service relays is" in wire.error_response_fields(error)["M"]
    assert await read_message(stream, parser) is None
    await stream.aclose()
    await still_serves(port)


async def test_client_vanishing_mid_query_ends_the_session(harness: Harness) -> None:
    port = await harness.listen()
    stream, _, _ = await raw_login(port)
    await stream.send_all(query("select g from generate_series(1, 2000000) g"))
    await stream.aclose()
    (end,) = await harness.wait_for("db.session.end")
    assert end["reason"] == "client disconnected"
    await still_serves(port)


# -- time limits ---------------------------------------------------------------------------


async def test_idle_session_is_ended_with_a_reason(harness: Harness) -> None:
    port = await harness.listen(idle_timeout=0.3)
    stream, parser, _ = await raw_login(port)
    await stream.send_all(query("select 1"))
    while (await read_message(stream, parser)).type != b"Z":
        pass
    error = await read_message(stream, parser)
    fields = wire.error_response_fields(error)
    assert fields["S"] == "FATAL"
    assert fields["C"] == "57P05"
    assert "without a message from the client" in fields["M"]
    assert await read_message(stream, parser) is None
    (end,) = await harness.wait_for("db.session.end")
    assert end["reason"] == "idle timeout"


async def test_session_ends_when_the_certificate_expires(harness: Harness) -> None:
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=0.5)
    port = await harness.listen(expires=expires)
    stream, parser, _ = await raw_login(port)
    error = await read_message(stream, parser)
    fields = wire.error_response_fields(error)
    assert fields["C"] == "57P01"
    assert "certificate has expired" in fields["M"]
    assert fields["H"] == "run tether login again"
    assert await read_message(stream, parser) is None


async def test_expired_certificate_is_refused_before_the_database(harness: Harness) -> None:
    expires = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    port = await harness.listen(expires=expires)
    result = await psql(port, "select 1")
    assert "your Tether certificate has expired" in result.stderr.decode()


async def test_cancel_key_is_forgotten_when_its_session_ends(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether_db.postgres.engine")
    port = await harness.listen()
    stream, parser, key = await raw_login(port)
    await stream.send_all(b"X\0\0\0\x04")  # Terminate
    assert await read_message(stream, parser) is None
    await stream.aclose()
    (end,) = await harness.wait_for("db.session.end")
    assert end["reason"] == "client ended the session"

    cancel = await trio.open_tcp_stream("127.0.0.1", port)
    await cancel.send_all(wire.cancel_request(key.pid, key.key))
    with trio.fail_after(30):
        assert await cancel.receive_some(10) == b""
    await cancel.aclose()
    assert "postgres cancel request from alice with an unknown key ignored" in caplog.messages


async def test_database_vanishing_silently_gives_the_client_a_clear_error(
    harness: Harness,
) -> None:
    # a TCP relay in front of the database, cut while the session is idle: the engine sees
    # the connection drop without a word from PostgreSQL (a host that went away)
    cut = trio.CancelScope()

    async def relay(stream: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(harness.server.host, harness.server.port)

        async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
            while data := await source.receive_some(65536):
                await sink.send_all(data)

        with cut:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, stream, upstream)
                nursery.start_soon(pump, upstream, stream)
        await upstream.aclose()

    listeners = await harness.nursery.start(
        functools.partial(trio.serve_tcp, relay, 0, host="127.0.0.1")
    )
    port = await harness.listen(
        database=harness.database(port=listeners[0].socket.getsockname()[1])
    )
    stream, parser, _ = await raw_login(port)
    cut.cancel()
    error = await read_message(stream, parser)
    fields = wire.error_response_fields(error)
    assert (fields["S"], fields["C"]) == ("FATAL", "08006")
    assert fields["M"] == 'database "shop-db" closed the connection'
    assert await read_message(stream, parser) is None
    (end,) = await harness.wait_for("db.session.end")
    assert end["reason"] == "database closed the connection"
