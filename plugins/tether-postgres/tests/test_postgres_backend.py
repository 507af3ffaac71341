"""What only a database server shared by several auth servers can get wrong, and bad URLs."""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import trio
from tether_postgres import open_postgres
from tether_postgres.backend import parse_postgres_url

from tether.api import BackendError, CompareFailed, ConfigError, Op, WatchOverflow
from tether.testing.backend_conformance import next_event, no_event

# -- garbage in -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_server_is_named_when_the_backend_opens() -> None:
    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/tether"
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:\d+/tether: cannot connect") as info:
        async with open_postgres(url):
            pass
    assert info.value.hint is not None and "host and port" in info.value.hint


async def test_missing_database_is_named_when_the_backend_opens(pg_url: str) -> None:
    url = urlunsplit(urlsplit(pg_url)._replace(path="/no_such_tether_db"))
    with pytest.raises(
        BackendError, match="no_such_tether_db: the database does not exist"
    ) as info:
        async with open_postgres(url):
            pass
    assert info.value.hint is not None and "createdb" in info.value.hint


async def test_unknown_user_is_named_as_a_refused_login(pg_url: str) -> None:
    url = urlunsplit(urlsplit(pg_url)._replace(netloc="no_such_tether_user@127.0.0.1:5432"))
    with pytest.raises(BackendError, match=r"refused the login.*no_such_tether_user") as info:
        async with open_postgres(url):
            pass
    assert info.value.hint is not None and "pg_hba.conf" in info.value.hint


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://postgres@127.0.0.1:5432", "names no database"),
        ("postgresql://postgres@127.0.0.1:5432/", "names no database"),
        ("postgresql://postgres@127.0.0.1/db?colour=blue", 'invalid URI query parameter: "colour"'),
        ("postgresql://postgres@[::1/db", "not a valid PostgreSQL URL"),
        ("mysql://postgres@127.0.0.1/db", "is not a postgresql:// URL"),
    ],
)
async def test_malformed_url_is_refused_before_connecting(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        async with open_postgres(url):
            pass


def _tcp_settings(conninfo: str) -> tuple[int, int, int, int, int]:
    """The socket options libpq set on a connection made with ``conninfo``."""
    with psycopg.connect(conninfo) as conn, socket.socket(fileno=os.dup(conn.fileno())) as sock:
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        )


def test_connections_notice_a_vanished_database_host_within_half_a_minute(pg_url: str) -> None:
    conninfo, _ = parse_postgres_url(pg_url)
    assert _tcp_settings(conninfo) == (1, 15, 5, 3, 30_000)
    # the operator's settings in the URL win
    tuned, _ = parse_postgres_url(f"{pg_url}?keepalives_idle=60&tcp_user_timeout=90000")
    assert _tcp_settings(tuned) == (1, 60, 5, 3, 90_000)


async def test_password_in_url_stays_out_of_errors() -> None:
    url = f"postgresql://tether:s3cret@127.0.0.1:{_free_port()}/tether"
    with pytest.raises(BackendError) as info:
        async with open_postgres(url):
            pass
    assert "s3cret" not in str(info.value)


async def test_database_written_by_a_newer_tether_is_refused(pg_url: str) -> None:
    async with open_postgres(pg_url):
        pass  # creates the tables
    with psycopg.connect(pg_url, autocommit=True) as admin:
        (version,) = admin.execute("SELECT schema_version FROM tether_meta").fetchone() or (0,)
        admin.execute("UPDATE tether_meta SET schema_version = %s", (version + 1,))
        try:
            with pytest.raises(BackendError, match=r"written by a newer Tether \(schema \d+\)"):
                async with open_postgres(pg_url):
                    pass
        finally:
            admin.execute("UPDATE tether_meta SET schema_version = %s", (version,))


async def test_opening_a_newer_database_leaves_its_write_functions_alone(pg_url: str) -> None:
    async with open_postgres(pg_url):
        pass  # creates the tables and the functions
    with psycopg.connect(pg_url, autocommit=True) as admin:
        (version,) = admin.execute("SELECT schema_version FROM tether_meta").fetchone() or (0,)
        admin.execute("UPDATE tether_meta SET schema_version = %s", (version + 1,))
        # stands for a newer Tether's own version of the function
        admin.execute("DROP FUNCTION tether_reap_v1()")
        try:
            with pytest.raises(BackendError, match="newer Tether"):
                async with open_postgres(pg_url):
                    pass
            (left,) = admin.execute("SELECT to_regproc('tether_reap_v1')").fetchone() or (0,)
            assert left is None
        finally:
            admin.execute("UPDATE tether_meta SET schema_version = %s", (version,))
    async with open_postgres(pg_url) as backend:  # and puts it back once it may
        assert await backend.reap_expired() == 0


async def test_item_written_with_a_ttl_reads_back_exactly_as_returned(pg_url: str) -> None:
    async with open_postgres(pg_url) as backend, backend.watch("/s/") as events:
        written = await backend.put("/s/one", b"x", ttl=123.456)
        assert written.expires is not None
        assert await backend.get("/s/one") == written
        assert (await next_event(events)).item == written
        await backend.apply([Op.put("/s/two", b"y", ttl=0.1 + 0.2), Op.delete("/s/one")])
        (two,) = await backend.range("/s/")
        put_two, deleted_one = [await next_event(events) for _ in range(2)]
        assert put_two.item == two
        assert (deleted_one.type, deleted_one.item.key) == ("delete", "/s/one")


# -- several auth servers on one database -----------------------------------------------------


def _terminate(admin: psycopg.Connection, where: str) -> int:
    """End the sessions of this database (but ``admin``'s) matching ``where``; wait till gone."""
    pids = [
        row[0]
        for row in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            f"AND pid <> pg_backend_pid() AND {where}"
        )
    ]
    admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    for _ in range(500):  # gone within 5 s
        if not admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone():
            return len(pids)
        time.sleep(0.01)
    raise AssertionError(f"sessions {pids} outlived pg_terminate_backend")


async def test_second_auth_server_hears_the_first_ones_writes_at_once(pg_url: str) -> None:
    # poll_interval is an hour: only the NOTIFY can bring the event in time
    async with (
        open_postgres(pg_url) as first,
        open_postgres(pg_url, poll_interval=3600) as second,
        second.watch("/users/") as events,
    ):
        written = await first.put("/users/alice", b"spec")
        event = await next_event(events)
        assert (event.type, event.item) == ("put", written)
        assert await second.get("/users/alice") == written


async def test_watch_recovers_when_the_database_drops_the_listening_connection(
    pg_url: str,
) -> None:
    async with (
        open_postgres(pg_url) as first,
        open_postgres(pg_url, poll_interval=3600) as second,
        second.watch("/users/") as events,
    ):
        await first.put("/users/before", b"x")
        assert (await next_event(events)).item.key == "/users/before"
        # an administrator (or a server restart) ends every LISTEN session
        with psycopg.connect(pg_url, autocommit=True) as admin:
            assert _terminate(admin, "query LIKE 'LISTEN %'")
        await first.put("/users/after", b"x")
        # the second server listens again (its poll is an hour away) and reads what it missed
        assert (await next_event(events)).item.key == "/users/after"


async def test_calls_succeed_after_the_database_ends_every_pooled_connection(
    pg_url: str,
) -> None:
    async with open_postgres(pg_url, pool_size=2) as backend:
        async with trio.open_nursery() as nursery:  # two calls at once: two pooled connections
            nursery.start_soon(backend.put, "/a", b"1")
            nursery.start_soon(backend.put, "/b", b"1")
        with psycopg.connect(pg_url, autocommit=True) as admin:
            ended = _terminate(admin, "query NOT LIKE 'LISTEN %'")
        assert ended >= 2
        # a database restart does this too: no call fails for a connection it closed
        assert (await backend.put("/a", b"2")).value == b"2"
        assert [item.value for item in await backend.range("/")] == [b"2", b"1"]


async def test_racing_compare_and_swaps_from_two_servers_have_one_winner(pg_url: str) -> None:
    async with open_postgres(pg_url) as first, open_postgres(pg_url) as second:
        read = await first.put("/counter", b"0")
        outcomes: list[str] = []

        async def bump(server: object, value: bytes) -> None:
            assert server is first or server is second
            try:
                await server.compare_and_swap("/counter", value, expected_revision=read.revision)
            except CompareFailed:
                outcomes.append("lost")
            else:
                outcomes.append("won")

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(bump, (first, second)[n % 2], str(n).encode())
        assert sorted(outcomes) == ["lost"] * 7 + ["won"]


async def test_revisions_from_two_servers_follow_the_commit_order(pg_url: str) -> None:
    async with (
        open_postgres(pg_url) as first,
        open_postgres(pg_url) as second,
        first.watch("/w/") as events,
    ):
        written: list[int] = []

        async def writer(server: object, name: str) -> None:
            assert server is first or server is second
            for n in range(10):
                written.append((await server.put(f"/w/{name}{n}", b"x")).revision)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, first, "a")
            nursery.start_soon(writer, second, "b")
        seen = [(await next_event(events)).item.revision for _ in range(20)]
        assert seen == sorted(written) == list(range(seen[0], seen[0] + 20))
        await no_event(events)


# -- cancellation and lagging watchers ---------------------------------------------------------


async def test_cancelled_write_waiting_for_the_lock_is_rolled_back(pg_url: str) -> None:
    async with open_postgres(pg_url, pool_size=1) as backend, backend.watch("/k") as events:
        before = await backend.put("/k", b"before")
        await next_event(events)
        # another auth server holds the writers' lock, so our write waits in the database
        blocker = await trio.to_thread.run_sync(psycopg.connect, pg_url)
        try:
            await trio.to_thread.run_sync(
                blocker.execute, "SELECT revision FROM tether_meta FOR UPDATE"
            )
            with trio.move_on_after(0.3) as waited:
                await backend.put("/k", b"during")
            # the caller got control back while the lock was still held
            assert waited.cancelled_caught
            await trio.to_thread.run_sync(blocker.commit)
        finally:
            blocker.close()
        # the database cancelled the write: nothing was written, nothing announced, and the
        # backend (with its one pooled connection) works on
        assert await backend.get("/k") == before
        await no_event(events)
        after = await backend.put("/k", b"after")
        assert (await next_event(events)).item == after


class _Link:
    """A TCP relay to the database that stands for one auth server's network link to it.

    ``stall()`` stops bytes in both directions (a partition, a frozen host); ``resume()``
    lets them flow again. ``url`` is the database URL through the relay.
    """

    def __init__(self, url: str, port: int) -> None:
        self.url = urlunsplit(urlsplit(url)._replace(netloc=f"postgres@127.0.0.1:{port}"))
        self._flowing = trio.Event()
        self._flowing.set()
        #: the relay's own ports towards the database: pg_stat_activity's ``client_port``
        #: of every session opened through this link
        self.database_side_ports: set[int] = set()

    def stall(self) -> None:
        self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    async def pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            async for chunk in source:
                await self._flowing.wait()
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def _link_to(pg_url: str) -> AsyncIterator[_Link]:
    target = urlsplit(pg_url).port or 5432
    link: _Link | None = None

    async def handle(client: trio.SocketStream) -> None:
        assert link is not None
        server = await trio.open_tcp_stream("127.0.0.1", target)
        link.database_side_ports.add(server.socket.getsockname()[1])
        async with server, client, trio.open_nursery() as nursery:
            # one end hanging up hangs up the other, as a TCP connection does
            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                assert link is not None
                await link.pump(source, sink)
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)

    async with trio.open_nursery() as relay:
        listeners = await relay.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), handle, 0
        )
        link = _Link(pg_url, listeners[0].socket.getsockname()[1])
        yield link
        relay.cancel_scope.cancel()


async def test_watcher_behind_a_pruned_event_log_gets_overflow(pg_url: str) -> None:
    # the lagging auth server reaches the database through a link that stalls, the other
    # directly
    async with (
        _link_to(pg_url) as link,
        open_postgres(pg_url, keep_revisions=3) as writer,
        open_postgres(link.url) as lagging,
        lagging.watch("/p/") as events,
    ):
        await writer.put("/p/first", b"x")
        assert (await next_event(events)).item.key == "/p/first"
        link.stall()
        for n in range(10):
            await writer.apply([Op.put(f"/p/{n}", b"x")])
        await writer.reap_expired()  # prunes the log to its last 3 revisions
        link.resume()
        with pytest.raises(WatchOverflow, match="pruned"):
            for _ in range(11):
                await next_event(events)


async def test_auth_server_cut_off_mid_write_does_not_block_the_others(pg_url: str) -> None:
    async with (
        _link_to(pg_url) as link,
        open_postgres(pg_url) as healthy,
        open_postgres(link.url, pool_size=1, stalled_transaction_timeout=1.0) as cut_off,
    ):
        failures: list[BackendError] = []

        async def cut_off_write() -> None:
            try:
                await cut_off.put("/cut-off", b"never acknowledged")
            except BackendError as exc:
                failures.append(exc)

        blocker = await trio.to_thread.run_sync(psycopg.connect, pg_url)
        # a session of its own, in autocommit: pg_stat_activity is a snapshot per transaction
        observer = await trio.to_thread.run_sync(
            functools.partial(psycopg.connect, pg_url, autocommit=True)
        )
        try:
            # hold the writers' lock so that the write is surely inside its transaction,
            # waiting for the lock, when its link fails
            await trio.to_thread.run_sync(
                blocker.execute, "SELECT revision FROM tether_meta FOR UPDATE"
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cut_off_write)
                for _ in range(250):  # within 5 s
                    # the cut-off server's session, not any other that waits for a lock
                    waiting = observer.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE client_port = ANY(%s) "
                        "AND wait_event_type = 'Lock'",
                        (sorted(link.database_side_ports),),
                    ).fetchone()
                    if waiting:
                        break
                    await trio.sleep(0.02)
                assert waiting, "the write never waited for the writers' lock"
                link.stall()
                try:
                    await trio.to_thread.run_sync(blocker.commit)
                    # the lock goes to the cut-off server's waiting write, unless a write
                    # sent now overtakes it (the row is free once the blocker commits): wait
                    # until the write holds it, idle in its transaction behind its dead link
                    for _ in range(250):  # within 5 s
                        holding = observer.execute(
                            "SELECT 1 FROM pg_stat_activity WHERE client_port = ANY(%s) "
                            "AND state = 'idle in transaction'",
                            (sorted(link.database_side_ports),),
                        ).fetchone()
                        if holding:
                            break
                        await trio.sleep(0.02)
                    assert holding, "the cut-off write never took the writers' lock"
                    # the cut-off server now holds the lock and cannot go on: the database
                    # ends its transaction after stalled_transaction_timeout, and the others
                    # write
                    with trio.fail_after(10):
                        written = await healthy.put("/healthy", b"acknowledged")
                finally:
                    link.resume()
        finally:
            blocker.close()
            observer.close()
        assert [type(exc) for exc in failures] == [BackendError]
        assert await healthy.get("/healthy") == written
        assert await healthy.get("/cut-off") is None
        # and the cut-off server works again once its link does
        assert (await cut_off.put("/cut-off", b"later")).value == b"later"
