"""Scenarios of the MySQL engine: real clients, a real listener, a real MariaDB over TLS."""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import pymysql
import pytest
import trio
from mariadb_server import MariaDB, TestCA
from mysql_harness import (
    FakeConnection,
    RawClient,
    Service,
    fake_database,
    mariadb,
    now_plus,
    pymysql_connect,
    start_service,
)
from tether_db.mysql import wire

pytestmark = pytest.mark.slow


async def test_allowed_user_runs_queries_with_the_mariadb_client(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    run = await mariadb(service, "-e", "SELECT name FROM items ORDER BY id; SELECT CURRENT_USER()")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["tea", "cake", "alice@%"]
    await service.wait_ended()
    kinds = [event for event, _ in service.events]
    assert kinds[0] == "db.session.start" and kinds[-1] == "db.session.end"
    start = service.of_type("db.session.start")[0]
    assert start["user"] == "alice@example.com"
    assert (start["db_user"], start["db_name"], start["db_service"]) == ("alice", "shop", "shop-db")
    assert start["db_protocol"] == "mysql" and start["roles"] == ["dev"]
    assert "SELECT name FROM items ORDER BY id" in service.queries()


async def test_session_uses_the_certificate_over_tls(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    run = await mariadb(service, "-e", "SHOW STATUS LIKE 'Ssl_version'")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0] == "Ssl_version"
    assert run.stdout.split()[1].startswith("TLS")


async def test_user_works_with_pymysql(nursery: trio.Nursery, mariadb_server: MariaDB) -> None:
    service = await start_service(nursery, mariadb_server)

    def work() -> list[tuple[object, ...]]:
        connection = pymysql_connect(service)
        try:
            with connection.cursor() as cursor:
                cursor.execute("CREATE TABLE IF NOT EXISTS notes (n INT, t VARCHAR(20))")
                cursor.execute("DELETE FROM notes")
                cursor.executemany("INSERT INTO notes VALUES (%s, %s)", [(1, "a"), (2, "b")])
                connection.commit()
                cursor.execute("SELECT n, t FROM notes WHERE n > %s ORDER BY n", (0,))
                return list(cursor.fetchall())
        finally:
            connection.close()

    assert await trio.to_thread.run_sync(work) == [(1, "a"), (2, "b")]
    await service.wait_ended()
    assert "SELECT n, t FROM notes WHERE n > 0 ORDER BY n" in service.queries()


async def test_audit_shows_the_queries_in_order(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    statements = [f"SELECT {n} AS n" for n in range(10)]
    run = await mariadb(service, "-e", "; ".join(statements))
    assert run.returncode == 0, run.stderr
    await service.wait_ended()
    queries = [q for q in service.queries() if q in statements]
    assert queries == statements


async def test_denied_database_user_is_refused_with_the_rule(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    run = await mariadb(service, "-e", "SELECT 1", user="bob")
    assert run.returncode != 0
    assert "ERROR 1045 (28000)" in run.stderr
    assert "role 'dev' does not allow database user 'bob' (db_users: alice)" in run.stderr
    await service.wait_ended()
    [denied] = service.of_type("db.session.denied")
    assert denied["db_user"] == "bob"
    assert "does not allow database user 'bob'" in denied["reason"]
    assert not service.of_type("db.session.start")


async def test_denied_database_is_refused_with_the_rule(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    run = await mariadb(service, "-e", "SELECT 1", database="hr")
    assert run.returncode != 0
    assert "ERROR 1045 (28000)" in run.stderr
    assert "role 'dev' does not allow database 'hr' (db_names: shop)" in run.stderr


async def test_switching_to_a_denied_database_is_refused(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    run = await mariadb(service, "-e", "USE hr")
    assert run.returncode != 0
    assert "role 'dev' does not allow database 'hr'" in run.stderr
    allowed = await start_service(nursery, mariadb_server, names=("shop", "hr"))
    run = await mariadb(allowed, "-e", "USE hr; SELECT DATABASE()")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["hr"]


async def test_prepared_statements_run_with_prepare_and_execute(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    run = await mariadb(
        service,
        "-e",
        "PREPARE s FROM 'SELECT name FROM items WHERE id = ?'; SET @id = 2; EXECUTE s USING @id;"
        " DEALLOCATE PREPARE s",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["cake"]


async def test_client_prepares_and_executes_on_the_server(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    """COM_STMT_PREPARE and COM_STMT_EXECUTE (binary protocol), as connectors send them."""
    service = await start_service(nursery, mariadb_server)
    client = await RawClient.connect(service)
    await client.login()
    statement = "SELECT id, name FROM items WHERE id >= ? ORDER BY id"
    await client.send(0, bytes([wire.COM_STMT_PREPARE]) + statement.encode())
    ok = await client.frame()
    assert ok is not None and ok.payload[0] == 0, ok
    statement_id, columns, params = struct.unpack("<IHH", ok.payload[1:9])
    assert (columns, params) == (2, 1)
    for _ in range(params + 1 + columns + 1):  # definitions, each block closed by an EOF
        assert await client.frame() is not None
    execute = (
        bytes([wire.COM_STMT_EXECUTE])
        + struct.pack("<IBI", statement_id, 0, 1)
        + b"\x00"  # null bitmap
        + b"\x01"  # new parameters bound
        + struct.pack("<BB", 8, 0)  # LONGLONG
        + struct.pack("<q", 1)
    )
    await client.send(0, execute)
    packets, eofs = [], 0
    while eofs < 2:  # the one after the column definitions, the one after the rows
        f = await client.frame()
        assert f is not None
        packets.append(f.payload)
        eofs += f.payload[:1] == b"\xfe" and len(f.payload) < 9
    rows = packets[4:-1]
    assert len(rows) == 2 and rows[0][:1] == b"\x00" and b"cake" in rows[1]
    await client.send(0, bytes([wire.COM_QUERY]) + b"SELECT 42")
    answer = [await client.frame() for _ in range(5)]
    assert answer[3] is not None and answer[3].payload == b"\x0242"
    await client.send(0, bytes([wire.COM_QUIT]))
    assert await client.frame() is None
    await client.aclose()
    await service.wait_ended()
    assert service.queries() == [statement, "SELECT 42"]


async def test_multi_statement_query_returns_every_result(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)

    def work() -> list[list[tuple[object, ...]]]:
        connection = pymysql_connect(service, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        results = []
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1; SELECT name FROM items ORDER BY id; SELECT 'x', 'y'")
                results.append(list(cursor.fetchall()))
                while cursor.nextset():
                    results.append(list(cursor.fetchall()))
                cursor.execute("DROP PROCEDURE IF EXISTS two")
                cursor.execute("CREATE PROCEDURE two() BEGIN SELECT 1; SELECT 2; END")
                cursor.execute("CALL two()")
                results.append(list(cursor.fetchall()))
                while cursor.nextset():
                    results.append(list(cursor.fetchall()))
                cursor.execute("SELECT 'after'")
                results.append(list(cursor.fetchall()))
        finally:
            connection.close()
        return results

    results = await trio.to_thread.run_sync(work)
    assert results == [
        [(1,)],
        [("tea",), ("cake",)],
        [("x", "y")],
        [(1,)],
        [(2,)],
        [],
        [("after",)],
    ]


async def test_load_data_local_is_refused_when_the_roles_do_not_allow_it(
    nursery: trio.Nursery, mariadb_server: MariaDB, tmp_path: Path
) -> None:
    service = await start_service(nursery, mariadb_server)
    data = tmp_path / "rows.tsv"
    data.write_text("10\tsecret\n")
    run = await mariadb(
        service,
        "--local-infile=1",
        "-e",
        f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE items",
    )
    assert run.returncode != 0
    assert "LOAD DATA LOCAL INFILE is not allowed on database 'shop-db'" in run.stderr
    assert mariadb_server.sql("SELECT COUNT(*) FROM shop.items WHERE id = 10").split() == ["0"]


async def test_load_data_local_works_when_the_roles_allow_it(
    nursery: trio.Nursery, mariadb_server: MariaDB, tmp_path: Path
) -> None:
    service = await start_service(nursery, mariadb_server, allow_local_infile=True)
    mariadb_server.sql("CREATE TABLE IF NOT EXISTS shop.loaded (id INT, name VARCHAR(64))")
    data = tmp_path / "rows.tsv"
    data.write_text("".join(f"{n}\tname {n}\n" for n in range(1000)))
    run = await mariadb(
        service,
        "--local-infile=1",
        "-e",
        f"DELETE FROM loaded; LOAD DATA LOCAL INFILE '{data}' INTO TABLE loaded;"
        " SELECT COUNT(*) FROM loaded",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1000"]


async def test_garbage_from_the_client_gets_an_error_and_the_service_goes_on(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    client = await RawClient.connect(service)
    assert await client.frame() is not None  # the greeting
    await client.stream.send_all(b"\x05\x00\x00\x01hello")
    err = await client.frame()
    assert err is not None
    parsed = wire.parse_err(err.payload)
    assert parsed.code == 1043 and "bad handshake" in parsed.message
    assert await client.frame() is None
    await client.aclose()
    run = await mariadb(service, "-e", "SELECT 'still here'")
    assert run.stdout.split() == ["still", "here"]


async def test_a_huge_length_gets_an_error_and_the_service_goes_on(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    client = await RawClient.connect(service)
    assert await client.frame() is not None
    await client.stream.send_all(b"\xff\xff\xff\x01" + b"A" * 100)
    err = await client.frame()
    assert err is not None
    assert "16777215 bytes announced" in wire.parse_err(err.payload).message
    assert await client.frame() is None
    await client.aclose()
    run = await mariadb(service, "-e", "SELECT 'still here'")
    assert run.stdout.split() == ["still", "here"]


async def test_garbage_after_login_ends_only_that_session(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    client = await RawClient.connect(service)
    await client.login()
    await client.stream.send_all(b"\x00\x00\x00\x00")  # an empty command
    while await client.frame() is not None:
        pass
    await client.aclose()
    await service.wait_ended()
    assert service.of_type("db.session.end")
    run = await mariadb(service, "-e", "SELECT 'still here'")
    assert run.stdout.split() == ["still", "here"]


async def test_client_that_vanishes_mid_query_ends_its_session(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    client = await RawClient.connect(service)
    await client.login()
    await client.send(0, bytes([wire.COM_QUERY]) + b"SELECT SLEEP(1), 'gone'")
    await client.stream.send_all(b"\x40\x00\x00\x00\x03SELECT")  # half a packet
    await client.aclose()
    await service.wait_ended()
    [end] = service.of_type("db.session.end")
    assert end["reason"] == "the client left"
    run = await mariadb(service, "-e", "SELECT 'still here'")
    assert run.stdout.split() == ["still", "here"]


async def test_database_that_is_down_gets_a_clear_error(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    down = await start_service(nursery, mariadb_server, port=closed_port)
    run = await mariadb(down, "-e", "SELECT 1")
    assert run.returncode != 0
    assert "ERROR 1429 (HY000)" in run.stderr
    assert (
        f"cannot reach database 'shop-db' at 127.0.0.1:{closed_port}: connection refused"
        in run.stderr
    )
    run = await mariadb(down, "-e", "SELECT 1")
    assert "cannot reach database 'shop-db'" in run.stderr


async def test_database_with_the_wrong_name_fails_tls_clearly(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server, server_name="db.example.com")
    run = await mariadb(service, "-e", "SELECT 1")
    assert run.returncode != 0
    assert "TLS to database 'shop-db' at 127.0.0.1" in run.stderr
    assert "db.example.com" in run.stderr or "mismatch" in run.stderr.lower()


async def test_database_refusing_the_user_says_so(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server, users=("alice", "carol"))
    run = await mariadb(service, "-e", "SELECT 1", user="carol")
    assert run.returncode != 0
    assert "database 'shop-db' at 127.0.0.1" in run.stderr
    assert "refused user 'carol'" in run.stderr
    assert "Access denied for user 'carol'" in run.stderr


async def test_certificate_from_an_unknown_ca_is_refused(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    stranger = TestCA("stranger CA")
    original = mariadb_server.client_context

    class Other(MariaDB):
        pass

    impostor = Other(**{**mariadb_server.__dict__})
    impostor.client_context = lambda user, ca=None: original(user, ca=stranger)  # type: ignore[method-assign]
    service = await start_service(nursery, impostor)
    run = await mariadb(service, "-e", "SELECT 1")
    assert run.returncode != 0
    assert "database 'shop-db' at 127.0.0.1" in run.stderr
    assert "may not trust the certificate for 'alice'" in run.stderr


async def test_idle_session_is_ended(nursery: trio.Nursery, mariadb_server: MariaDB) -> None:
    service = await start_service(nursery, mariadb_server, idle_timeout=0.3)
    client = await RawClient.connect(service)
    await client.login()
    err = await client.frame()
    assert err is not None
    assert "nothing from the client for 0.3 s" in wire.parse_err(err.payload).message
    assert await client.frame() is None
    await client.aclose()
    await service.wait_ended()
    [end] = service.of_type("db.session.end")
    assert end["reason"] == "idle for 0.3 s"


async def test_session_ends_when_the_certificate_expires(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server, expires=now_plus(1))
    client = await RawClient.connect(service)
    await client.login()
    err = await client.frame()
    assert err is not None
    assert "your certificate expired" in wire.parse_err(err.payload).message
    assert await client.frame() is None
    await client.aclose()
    expired = await start_service(nursery, mariadb_server, expires=now_plus(-1))
    run = await mariadb(expired, "-e", "SELECT 1")
    assert "your certificate has expired" in run.stderr


async def test_database_going_away_ends_the_client_connection(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    service = await start_service(nursery, mariadb_server)
    client = await RawClient.connect(service)
    await client.login()
    await client.send(0, bytes([wire.COM_QUERY]) + b"SELECT CONNECTION_ID()")
    frames = [await client.frame() for _ in range(5)]
    assert frames[3] is not None
    connection_id = frames[3].payload[1:].decode()
    mariadb_server.sql(f"KILL {connection_id}")
    while await client.frame() is not None:
        pass
    await client.aclose()
    await service.wait_ended()
    [end] = service.of_type("db.session.end")
    assert end["reason"] == "the database closed the connection"


async def test_change_user_is_refused(nursery: trio.Nursery, mariadb_server: MariaDB) -> None:
    service = await start_service(nursery, mariadb_server)
    client = await RawClient.connect(service)
    await client.login()
    await client.send(0, bytes([wire.COM_CHANGE_USER]) + b"bob\0\0shop\0")
    err = await client.frame()
    assert err is not None
    assert "changing the database user" in wire.parse_err(err.payload).message
    await client.send(0, bytes([wire.COM_QUERY]) + b"SELECT CURRENT_USER()")
    frames = [await client.frame() for _ in range(5)]
    assert frames[3] is not None and frames[3].payload[1:] == b"alice@%"
    await client.aclose()


async def test_database_asking_for_a_local_file_gets_none_when_not_allowed(
    nursery: trio.Nursery, mariadb_server: MariaDB, tmp_path: Path
) -> None:
    """A hostile database asks for a file although the capability was cleared."""
    received: list[bytes] = []

    async def hostile(db: FakeConnection) -> None:
        await db.frame()  # the handshake response
        await db.send(3, wire.build_ok())
        query = await db.frame()
        assert query is not None
        await db.send(query.seq + 1, b"\xfb/home/alice/.ssh/id_ed25519")
        while (f := await db.frame()) is not None:
            received.append(f.payload)

    port = await fake_database(nursery, mariadb_server, tmp_path, hostile)
    service = await start_service(nursery, mariadb_server, port=port)
    secret = tmp_path / "secret"
    secret.write_text("do not send me\n")
    run = await mariadb(service, "--local-infile=1", "-e", f"SELECT '{secret}'")
    assert run.returncode != 0
    assert "LOAD DATA LOCAL INFILE is not allowed on database 'shop-db'" in run.stderr
    await service.wait_ended()
    assert received[:1] == [b""]  # an empty file, then nothing of the client's
    assert not any(b"do not send me" in payload for payload in received)


async def test_database_that_switches_authentication_method_lets_the_user_in(
    nursery: trio.Nursery, mariadb_server: MariaDB, tmp_path: Path
) -> None:
    answers: list[bytes] = []

    async def switching(db: FakeConnection) -> None:
        response = await db.frame()
        assert response is not None
        login = wire.parse_handshake_response(response.payload)
        assert isinstance(login, wire.HandshakeResponse)
        answers.append(login.auth_response)
        await db.send(3, b"\xfemysql_clear_password\0")
        answer = await db.frame()
        assert answer is not None and answer.seq == 4
        answers.append(answer.payload)
        await db.send(5, wire.build_ok())
        ping = await db.frame()
        assert ping is not None and ping.payload == bytes([wire.COM_PING])
        await db.send(1, wire.build_ok())
        await db.frame()

    port = await fake_database(nursery, mariadb_server, tmp_path, switching)
    service = await start_service(nursery, mariadb_server, port=port)
    client = await RawClient.connect(service)
    await client.login()
    await client.send(0, bytes([wire.COM_PING]))
    pong = await client.frame()
    assert pong is not None and pong.payload[:1] == b"\x00"
    await client.aclose()
    assert answers == [b"", b"\0"]  # no password: the certificate is the proof


async def test_database_that_refuses_at_the_greeting_says_why(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    async def busy(stream: trio.SocketStream) -> None:
        await stream.send_all(wire.frame(0, wire.build_err(1040, "08004", "Too many connections")))

    listeners = await nursery.start(functools.partial(trio.serve_tcp, busy, 0, host="127.0.0.1"))
    service = await start_service(
        nursery, mariadb_server, port=listeners[0].socket.getsockname()[1]
    )
    run = await mariadb(service, "-e", "SELECT 1")
    assert "ERROR 1040 (08004)" in run.stderr
    assert "refused the connection: Too many connections" in run.stderr


async def test_statements_and_rows_over_16_mib_go_through_whole(
    nursery: trio.Nursery, mariadb_server: MariaDB
) -> None:
    """Packets of 16 MiB and more travel as several frames, both ways."""
    service = await start_service(nursery, mariadb_server)
    size = wire.MAX_FRAME + 1000
    statement = f"SELECT LENGTH('{'x' * size}') AS n"

    def work() -> tuple[object, ...]:
        connection = pymysql_connect(service, max_allowed_packet=64 * 1024 * 1024)
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement)
                [(length,)] = cursor.fetchall()
                cursor.execute(f"SELECT REPEAT('y', {size}), 'after'")
                [(row, after)] = cursor.fetchall()
                return length, len(row), after
        finally:
            connection.close()

    assert await trio.to_thread.run_sync(work) == (size, size, "after")
    await service.wait_ended()
    assert statement in service.queries()


async def test_statement_is_audited_before_the_database_sees_it(
    nursery: trio.Nursery, mariadb_server: MariaDB, tmp_path: Path
) -> None:
    seen_at_arrival: list[list[str]] = []
    service: Service | None = None

    async def database(db: FakeConnection) -> None:
        await db.frame()
        await db.send(3, wire.build_ok())
        while (f := await db.frame()) is not None and f.payload[:1] == b"\x03":
            assert service is not None
            seen_at_arrival.append(service.queries())
            await db.send(1, wire.build_ok())

    port = await fake_database(nursery, mariadb_server, tmp_path, database)
    service = await start_service(nursery, mariadb_server, port=port)
    client = await RawClient.connect(service)
    await client.login()
    for n in range(3):
        await client.send(0, bytes([wire.COM_QUERY]) + f"UPDATE t SET n = {n}".encode())
        assert await client.frame() is not None
    await client.aclose()
    assert seen_at_arrival == [
        ["UPDATE t SET n = 0"],
        ["UPDATE t SET n = 0", "UPDATE t SET n = 1"],
        ["UPDATE t SET n = 0", "UPDATE t SET n = 1", "UPDATE t SET n = 2"],
    ]


async def test_database_that_never_greets_gets_a_clear_error_not_a_hang(
    nursery: trio.Nursery, mariadb_server: MariaDB, autojump_clock: trio.abc.Clock
) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    silent_port = listeners[0].socket.getsockname()[1]
    service = await start_service(nursery, mariadb_server, port=silent_port, names=("",))
    client = await RawClient.connect(service)
    assert await client.frame() is not None  # the greeting
    await client.send(
        1,
        wire.build_handshake_response(
            capabilities=wire.Cap.PROTOCOL_41 | wire.Cap.SECURE_CONNECTION,
            max_packet=1 << 24,
            charset=45,
            user="alice",
            auth_response=b"",
            database="",
            auth_plugin="",
        ),
    )
    err = await client.frame(patience=600)
    assert err is not None
    message = wire.parse_err(err.payload).message
    assert message == "database 'shop-db' did not finish its handshake in time"
    await client.aclose()


async def test_client_that_never_answers_the_greeting_is_let_go(
    nursery: trio.Nursery, mariadb_server: MariaDB, autojump_clock: trio.abc.Clock
) -> None:
    service = await start_service(nursery, mariadb_server)
    client = await RawClient.connect(service)
    assert await client.frame() is not None
    with trio.fail_after(600):
        await service.wait_ended()
    await client.aclose()
    assert not service.events
