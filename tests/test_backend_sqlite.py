"""The SQLite backend: the conformance suite, plus what only a file on disk can get wrong."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import tether.backend
from tether.backend import (
    Backend,
    BackendError,
    BackendType,
    Op,
    SqliteBackend,
    open_backend,
    open_sqlite,
)
from tether.builtins import sqlite_backend
from tether.errors import AlreadyExists, ConfigError, NotFound
from tether.hookspecs import hookimpl
from tether.plugins import TetherPluginManager
from tether.testing.backend_conformance import Advance, BackendConformance, next_event, no_event


class FakeClock:
    """Unix time that moves only when a test says so, so TTLs are tested without waiting."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def url_for(path: Path) -> str:
    return f"sqlite://{path}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestSqliteConformance(BackendConformance):
    watch_overflow_events = 200
    expiry_event_timeout = 2.0

    @pytest.fixture
    async def backend(self, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Backend]:
        # reap_interval is real time: small, so expiry events arrive right after advance().
        async with open_sqlite(
            url_for(tmp_path / "backend.db"), clock=clock, reap_interval=0.01, watch_buffer=64
        ) as backend:
            yield backend

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Advance:
        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        return advance


def test_public_api_is_what_all_says() -> None:
    assert sorted(tether.backend.__all__) == [
        "Backend",
        "BackendClosed",
        "BackendError",
        "BackendType",
        "Event",
        "Item",
        "Op",
        "SqliteBackend",
        "WatchBuffer",
        "WatchOverflow",
        "backend_schemes",
        "check_batch",
        "check_condition",
        "check_key",
        "check_limit",
        "check_prefix",
        "check_swap_revision",
        "open_backend",
        "open_sqlite",
    ]
    for name in tether.backend.__all__:
        assert getattr(tether.backend, name).__module__.startswith("tether.backend")


# -- choosing the backend by URL -----------------------------------------------------------


def plugin_manager(*plugins: object) -> TetherPluginManager:
    pm = TetherPluginManager()
    pm.register(sqlite_backend, name="sqlite")
    for n, plugin in enumerate(plugins):
        pm.register(plugin, name=f"extra-{n}")
    return pm


async def test_storage_url_with_sqlite_scheme_opens_the_builtin_plugin(tmp_path: Path) -> None:
    async with open_backend(url_for(tmp_path / "data" / "backend.db"), plugin_manager()) as b:
        assert isinstance(b, SqliteBackend)
        assert isinstance(b, Backend)
        await b.put("/roles/visitor", b"x")
        assert (await b.get("/roles/visitor")) is not None


def test_unknown_scheme_lists_the_known_schemes() -> None:
    with pytest.raises(ConfigError, match=r"postgresql://.*known: sqlite"):
        open_backend("postgresql://db/tether", plugin_manager())


def test_url_without_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="no scheme"):
        open_backend("/var/lib/tether/backend.db", plugin_manager())


def test_scheme_claimed_by_two_plugins_names_both() -> None:
    class Rival:
        @hookimpl
        def tether_backends(self) -> list[BackendType]:
            return [BackendType(scheme="sqlite", open=open_sqlite)]

    with pytest.raises(ConfigError, match=r"'sqlite'.*'extra-0'|'extra-0'.*'sqlite'") as info:
        open_backend("sqlite:///tmp/x.db", plugin_manager(Rival()))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite://relative/backend.db", "relative path or a host"),
        ("sqlite:relative/backend.db", "relative path"),
        ("sqlite://", "names no database file"),
        ("sqlite:///", "names a directory"),
        ("sqlite:///var/lib/tether/backend.db?mode=ro", "takes no"),
    ],
)
async def test_malformed_sqlite_urls_are_config_errors(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        async with open_sqlite(url):
            pass
    assert "sqlite:///absolute/path" in str(info.value)


# -- the file on disk ----------------------------------------------------------------------


async def test_missing_data_directory_is_created_private(tmp_path: Path) -> None:
    db = tmp_path / "state" / "backend.db"
    async with open_sqlite(url_for(db)):
        pass
    assert stat.S_IMODE(db.parent.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(db.stat().st_mode) & 0o077 == 0


async def test_reopening_keeps_data_and_revisions_keep_increasing(tmp_path: Path) -> None:
    url = url_for(tmp_path / "backend.db")
    async with open_sqlite(url) as backend:
        first = await backend.put("/roles/visitor", b"spec")
        await backend.put("/tmp/gone", b"x")
        await backend.delete("/tmp/gone")  # the highest revision now belongs to no key
    async with open_sqlite(url) as backend:
        assert await backend.get("/roles/visitor") == first
        later = await backend.put("/roles/editor", b"spec")
        assert later.revision == first.revision + 3


async def test_garbage_file_gives_a_one_line_error_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "backend.db"
    db.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    with pytest.raises(BackendError) as info:
        async with open_sqlite(url_for(db)):
            pass
    message = str(info.value)
    assert str(db) in message and "not a usable SQLite database" in message
    assert "\n" not in message
    assert db.read_bytes().startswith(b"this is not a database")  # left untouched


async def test_second_owner_of_the_database_is_refused(tmp_path: Path) -> None:
    url = url_for(tmp_path / "backend.db")
    async with open_sqlite(url) as backend:
        with pytest.raises(BackendError, match="in use by another process"):
            async with open_sqlite(url):
                pass
        await backend.put("/still/works", b"x")
    async with open_sqlite(url) as backend:  # released on close
        assert await backend.get("/still/works") is not None


async def test_exception_in_the_block_comes_out_unwrapped(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="mine"):
        async with open_sqlite(url_for(tmp_path / "backend.db")):
            raise NotFound("mine")


# -- TTL without sleeping ------------------------------------------------------------------


async def test_expired_keys_are_invisible_before_the_reaper_runs(
    tmp_path: Path, clock: FakeClock
) -> None:
    url = url_for(tmp_path / "backend.db")
    async with open_sqlite(url, clock=clock, reap_interval=3600) as backend:
        session = await backend.put("/sessions/s", b"x", ttl=60)
        assert session.expires == clock.now + 60
        clock.advance(59.9)
        assert await backend.get("/sessions/s") == session
        clock.advance(0.1)  # expiry is inclusive: at `expires` the key is gone
        assert await backend.get("/sessions/s") is None
        assert await backend.range("/sessions/") == []
        with pytest.raises(NotFound):
            await backend.compare_and_swap("/sessions/s", b"y", expected_revision=session.revision)
        assert await backend.delete("/sessions/s") is False
        assert await backend.apply([Op.put("/sessions/s", b"new", expected_revision=0)]) > 0


async def test_recreating_an_expired_key_reports_the_expiry_first(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with open_sqlite(url_for(tmp_path / "b.db"), clock=clock, reap_interval=3600) as b:
        await b.create("/locks/l", b"one", ttl=10)
        async with b.watch("/locks/") as events:
            clock.advance(11)
            await b.create("/locks/l", b"two")
            expired, created = await next_event(events), await next_event(events)
            await no_event(events)
    assert (expired.type, created.type, created.item.value) == ("delete", "put", b"two")
    assert expired.item.revision < created.item.revision


async def test_reaper_deletes_expired_keys_on_its_schedule(tmp_path: Path) -> None:
    async with open_sqlite(url_for(tmp_path / "b.db"), reap_interval=0.05) as b:
        async with b.watch("") as events:
            await b.put("/sessions/s", b"x", ttl=0.1)
            assert (await next_event(events)).type == "put"
            with trio.fail_after(2):
                expired = await next_event(events)
        assert (expired.type, expired.item.key) == ("delete", "/sessions/s")
        assert await b.reap_expired() == 0


async def test_expired_keys_written_before_a_restart_are_reaped_after_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    url = url_for(tmp_path / "b.db")
    async with open_sqlite(url, clock=clock) as b:
        await b.put("/sessions/s", b"x", ttl=5)
    clock.advance(10)
    async with (
        open_sqlite(url, clock=clock, reap_interval=3600) as b,
        b.watch("/sessions/") as events,
    ):
        assert await b.reap_expired() == 1
        assert (await next_event(events)).type == "delete"


async def test_create_reports_already_exists_with_the_key(tmp_path: Path) -> None:
    async with open_sqlite(url_for(tmp_path / "b.db")) as b:
        await b.create("/users/alice", b"x")
        with pytest.raises(AlreadyExists) as info:
            await b.create("/users/alice", b"x")
    assert "'/users/alice'" in str(info.value) and "\n" not in str(info.value)


def test_invalid_arguments_are_refused_before_touching_storage() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Op.put("", b"x")
    with pytest.raises(TypeError, match="bytes"):
        Op.put("/k", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        Op.put("/k", b"x", ttl=0)
    with pytest.raises(ValueError, match="expected_revision"):
        Op.delete("/k", expected_revision=-1)


async def test_batch_naming_a_key_twice_is_refused(tmp_path: Path) -> None:
    async with open_sqlite(url_for(tmp_path / "b.db")) as b:
        with pytest.raises(ValueError, match="/k"):
            await b.apply([Op.put("/k", b"1"), Op.delete("/k")])


# -- crash safety --------------------------------------------------------------------------


async def test_database_runs_in_wal_mode_with_full_fsync(tmp_path: Path) -> None:
    # What makes an acknowledged write survive power loss, not just a killed process.
    async with open_sqlite(url_for(tmp_path / "b.db")) as backend:
        assert backend._store is not None
        conn = backend._store.conn
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        assert await backend.apply([]) == 0


WRITER = """
import sys, trio
from tether.backend import Op, open_sqlite

async def main(url):
    async with open_sqlite(url) as backend:
        n = 0
        while True:
            if n % 3 == 2:  # some batches too: all keys of a batch or none
                await backend.apply([Op.put(f"/crash/{n:06d}", b"v%d" % n),
                                     Op.put(f"/crash/{n:06d}/twin", b"v%d" % n)])
            else:
                await backend.put(f"/crash/{n:06d}", b"v%d" % n)
            print(n, flush=True)
            n += 1

trio.run(main, sys.argv[1])
"""


async def test_every_acknowledged_write_survives_sigkill_of_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "backend.db"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", WRITER, url_for(db)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(30):
            while output.count(b"\n") < 150:
                chunk = await process.stdout.receive_some()
                assert chunk, f"writer exited early with status {await process.wait()}"
                output += chunk
    finally:
        process.kill()  # SIGKILL, mid-stream: no cleanup in the writer runs
        await process.wait()
    while chunk := await process.stdout.receive_some():
        output += chunk
    await process.stdout.aclose()
    assert process.returncode == -9
    acknowledged = [int(line) for line in output.split(b"\n")[:-1]]  # drop a torn last line
    assert acknowledged == list(range(len(acknowledged)))

    async with open_sqlite(url_for(db)) as backend:
        stored = {item.key: item.value for item in await backend.range("/crash/")}
    for n in acknowledged:
        assert stored[f"/crash/{n:06d}"] == b"v%d" % n
        if n % 3 == 2:
            assert stored[f"/crash/{n:06d}/twin"] == b"v%d" % n
    for key in stored:  # batches are atomic even when cut short
        if key.endswith("/twin"):
            assert key.removesuffix("/twin") in stored
        elif int(key.rsplit("/", 1)[1]) % 3 == 2:
            assert key + "/twin" in stored
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
