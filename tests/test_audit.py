"""The builtin ``jsonl-audit`` sink: each plugin manager has a sink of its own, which writes a
batch to each cluster's file in order, ends a line a crash tore before writing again, and
answers a search for every cluster it records, or for the one the search names.

Auth services run in this process over SQLite in temporary directories, as several daemons do
in one process (``tetherd demo``, the test fixtures).
"""

from __future__ import annotations

import datetime
import json
import pathlib
from collections.abc import AsyncIterator, Sequence

import pytest

from tether import audit, pki
from tether.audit import AuditEvent, AuditQuery
from tether.auth.service import AuthService
from tether.backend import open_sqlite
from tether.builtins.jsonl_audit import FILE_NAME
from tether.config import default_config
from tether.errors import CompareFailed
from tether.hookspecs import hookimpl
from tether.plugins import TetherPluginManager, get_plugin_manager

START = datetime.datetime(2025, 1, 1, 12, 0, tzinfo=datetime.UTC)


def at(minute: int, cluster: str, event_type: str = "user.login") -> AuditEvent:
    return AuditEvent(
        type=event_type,
        cluster=cluster,
        user=f"{cluster}-{minute}",
        time=START + datetime.timedelta(minutes=minute),
    )


def configured(tmp_path: pathlib.Path, *clusters: str) -> TetherPluginManager:
    """A plugin manager whose sink records ``clusters``, each under a data directory."""
    pm = get_plugin_manager(autoload=False)
    for name in clusters:
        pm.hook.tether_configure(config=default_config(data_dir=tmp_path / name, cluster_name=name))
    return pm


async def test_auditor_searches_every_cluster_of_a_shared_sink_without_naming_one(
    tmp_path: pathlib.Path,
) -> None:
    pm = configured(tmp_path, "root", "leaf")
    # one batch, written out of time order across the two files: the answer is in time order
    await audit.emit(
        pm, [at(1, "root"), at(4, "root"), at(2, "leaf"), at(3, "leaf", "cert.issued")]
    )
    found = await audit.search(pm, AuditQuery())
    assert [e.user for e in found] == ["root-1", "leaf-2", "leaf-3", "root-4"]
    # the limit keeps the newest, oldest first, across both clusters
    assert [e.user for e in await audit.search(pm, AuditQuery(limit=2))] == ["leaf-3", "root-4"]
    since = AuditQuery(type="user.login", since=START + datetime.timedelta(minutes=2))
    assert [e.user for e in await audit.search(pm, since)] == ["leaf-2", "root-4"]
    named = await audit.search(pm, AuditQuery(cluster="leaf"))
    assert [e.user for e in named] == ["leaf-2", "leaf-3"]


async def test_a_batch_is_written_to_each_clusters_file_in_order(tmp_path: pathlib.Path) -> None:
    pm = configured(tmp_path, "root", "leaf")
    clusters = ["leaf", "root", "leaf", "leaf", "elsewhere", "root"]  # a cluster it does not record
    await audit.emit(pm, [at(minute, cluster) for minute, cluster in enumerate(clusters)])
    for cluster, minutes in (("leaf", [0, 2, 3]), ("root", [1, 5])):
        lines = (tmp_path / cluster / "log" / FILE_NAME).read_text().splitlines()
        assert [json.loads(line)["user"] for line in lines] == [f"{cluster}-{m}" for m in minutes]


async def test_after_a_crash_tore_the_last_line_the_next_event_is_whole(
    tmp_path: pathlib.Path,
) -> None:
    await audit.emit(configured(tmp_path, "root"), [at(1, "root")])
    with (tmp_path / "root" / "log" / FILE_NAME).open("a") as f:
        f.write('{"type": "user.lo')  # the crash
    restarted = configured(tmp_path, "root")  # the daemon starts again
    await audit.emit(restarted, [at(2, "root")])
    assert [e.user for e in await audit.search(restarted, AuditQuery())] == ["root-1", "root-2"]


@pytest.fixture
async def two_auths(tmp_path: pathlib.Path) -> AsyncIterator[tuple[AuthService, AuthService]]:
    """Two auth services in one process, each with its own plugin manager."""
    services = []
    async with (
        open_sqlite(f"sqlite://{tmp_path / 'one.sqlite'}") as one,
        open_sqlite(f"sqlite://{tmp_path / 'two.sqlite'}") as two,
    ):
        for name, backend in (("one", one), ("two", two)):
            config = default_config(data_dir=tmp_path / name, cluster_name=name)
            pm = get_plugin_manager(autoload=False)
            pm.hook.tether_configure(config=config)
            services.append(await AuthService.open(config=config, pm=pm, backend=backend))
        yield services[0], services[1]


async def test_two_auth_services_in_one_process_keep_their_audit_logs_apart(
    two_auths: tuple[AuthService, AuthService],
) -> None:
    one, two = two_auths
    await one.audit_event("user.login", "alice", {})
    await two.audit_event("user.login", "bob", {})
    # a search that names no cluster reads the sink of that service's plugin manager only
    assert [e.user for e in await audit.search(one.pm, AuditQuery())] == ["alice"]
    assert [e.user for e in await audit.search(two.pm, AuditQuery())] == ["bob"]
    assert await audit.search(one.pm, AuditQuery(cluster="two")) == []
    assert one.pm.get_plugin("jsonl-audit") is not two.pm.get_plugin("jsonl-audit")


class RacingAdmin:
    """A sink that, on recording an update of role ``raced``, lets another admin change it
    first: the window between an event's record and its change, made certain."""

    def __init__(self, auth: AuthService) -> None:
        self.auth = auth

    @hookimpl
    async def tether_audit_events(self, events: Sequence[AuditEvent]) -> None:
        if any(e.success and e.fields.get("name") == "raced" for e in events):
            key = self.auth.context.registry.get("role").key("raced")
            item = await self.auth.context.backend.get(key)
            assert item is not None
            await self.auth.context.backend.put(key, item.value)


async def test_a_change_recorded_then_beaten_by_another_admin_is_recorded_as_failed(
    two_auths: tuple[AuthService, AuthService],
) -> None:
    auth, _ = two_auths
    admin = pki.Identity(
        username="admin",
        cluster="one",
        roles=(),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
        kind="admin",
    )
    role = auth.context.make("role", "raced", {"allow": {"logins": ["a"]}})
    await auth.create_resources(admin, [role])
    item = await auth.context.backend.get(auth.context.registry.get("role").key("raced"))
    assert item is not None
    auth.pm.register(RacingAdmin(auth), name="racing-admin")
    changed = auth.context.make("role", "raced", {"allow": {"logins": ["b"]}})
    with pytest.raises(CompareFailed):
        await auth.create_resources(admin, [changed], force=True, expected_revision=item.revision)
    updates = await audit.search(auth.pm, AuditQuery(type="resource.updated"))
    assert [(e.success, e.fields.get("error", "")[:17]) for e in updates] == [
        (True, ""),
        (False, "key '/roles/raced"),
    ]


async def test_an_event_sent_again_after_a_restart_is_written_once(tmp_path: pathlib.Path) -> None:
    first = at(1, "root")
    await audit.emit(configured(tmp_path, "root"), [first])
    restarted = configured(tmp_path, "root")  # remembers the ids at the end of the file
    await audit.emit(restarted, [first, at(2, "root")])
    assert [e.user for e in await audit.search(restarted, AuditQuery())] == ["root-1", "root-2"]


async def test_auditor_pages_back_through_one_users_events(tmp_path: pathlib.Path) -> None:
    pm = configured(tmp_path, "root")
    events = [
        AuditEvent(
            type="user.login",
            cluster="root",
            user="alice" if minute % 2 else "bob",
            time=START + datetime.timedelta(minutes=minute),
        )
        for minute in range(10)
    ]
    await audit.emit(pm, events)
    alices = [START + datetime.timedelta(minutes=m) for m in (1, 3, 5, 7, 9)]
    newest = await audit.search(pm, AuditQuery(user="alice", limit=2))
    second = await audit.search(pm, AuditQuery(user="alice", limit=2, offset=2))
    last = await audit.search(pm, AuditQuery(user="alice", limit=2, offset=4))
    assert [e.time for e in last + second + newest] == alices
    assert await audit.search(pm, AuditQuery(user="alice", limit=2, offset=6)) == []
    window = AuditQuery(since=alices[1], until=alices[3])  # until is exclusive
    assert [e.time.minute for e in await audit.search(pm, window)] == [3, 4, 5, 6]
