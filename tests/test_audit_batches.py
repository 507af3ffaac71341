"""A host's audit events reach auth in batches, and none is lost while auth is unreachable.

One cluster ``batches``; the host is a node identity minted with the cluster's CA, reaching
auth through a relay on 127.0.0.1 that the test closes (every connection cut, new ones closed
at once) and opens again, as a restarted auth or a broken network would look to the host.
The node agent sends its backlog the same way (:class:`~tether.node.audit_forwarding.
AuditBacklog` with its auth client's ``record_events``).
"""

from __future__ import annotations

import pathlib
import time
import uuid
from collections.abc import Iterator, Sequence

import attrs
import pytest
import trio

from host_identity import host_client
from tether.audit import AuditQuery, HostAuditEvent
from tether.auth.http_client import admin_client
from tether.config import load_config
from tether.errors import TetherError
from tether.node.audit_forwarding import AuditBacklog
from tether.node.audit_spool import AUDIT_SPOOL_FILE, AuditSpool
from tether.testing.cluster import RunningCluster, start_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    running = start_cluster(tmp_path_factory.mktemp("batches"), "batches")
    try:
        yield running
    finally:
        running.stop()


@attrs.define
class Gate:
    """A TCP relay to ``target`` that the test closes and opens again."""

    target: tuple[str, int]
    is_open: bool = True
    #: connections closed at once because the gate was closed
    refused: int = 0
    _cut: trio.Event = attrs.field(factory=trio.Event)
    _refusal: trio.Event = attrs.field(factory=trio.Event)

    async def wait_refusals(self, count: int) -> None:
        """Wait until ``count`` connections have been refused."""
        while self.refused < count:
            await self._refusal.wait()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._relay, listeners)

    def close(self) -> None:
        self.is_open = False
        self._cut.set()  # cuts the connections under way
        self._cut = trio.Event()

    def open(self) -> None:
        self.is_open = True

    async def _relay(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.is_open:
                self.refused += 1
                self._refusal.set()
                self._refusal = trio.Event()
                return
            cut = self._cut
            try:
                server = await trio.open_tcp_stream(*self.target)
            except OSError:
                return
            async with server, trio.open_nursery() as nursery:

                async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                    try:
                        async for data in source:
                            await sink.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                async def watch() -> None:
                    await cut.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(pump, client, server)
                nursery.start_soon(pump, server, client)
                nursery.start_soon(watch)


async def _recorded(cluster: RunningCluster, event_type: str, run: str) -> list[int]:
    """The ``seq`` field of the events of ``event_type`` and ``run`` auth holds, in the order
    its audit search returns them."""
    admin, _ = admin_client(load_config(cluster.config_path))
    async with admin:
        events = await admin.search_audit(AuditQuery(type=event_type, limit=10_000))
    return [int(e.fields["seq"]) for e in events if e.fields.get("run") == run]


async def test_host_bursts_events_while_auth_is_unreachable_and_all_arrive_in_order(
    cluster: RunningCluster,
) -> None:
    host, port = cluster.auth_addr.rsplit(":", 1)
    gate = Gate((host, int(port)))
    run = uuid.uuid4().hex
    count = 300
    # a backlog smaller than the burst: record waits for room rather than dropping
    backlog = AuditBacklog(size=50, batch=40)
    async with trio.open_nursery() as nursery:
        relay_port = await nursery.start(gate.serve)
        async with host_client(cluster, addr=f"127.0.0.1:{relay_port}") as api:
            nursery.start_soon(backlog.forward, api.record_events)
            for seq in range(20):  # some arrive while auth is reachable
                await backlog.record("hooktest.burst", {"seq": seq, "run": run})
            with trio.fail_after(60):
                # auth is another process: poll it
                while len(await _recorded(cluster, "hooktest.burst", run)) < 20:  # noqa: ASYNC110
                    await trio.sleep(0.1)

            gate.close()

            async def burst() -> None:
                for seq in range(20, count):
                    await backlog.record("hooktest.burst", {"seq": seq, "run": run})

            nursery.start_soon(burst)
            with trio.fail_after(60):
                await gate.wait_refusals(3)  # the forwarder tried, and keeps trying
            assert backlog.statistics()["queued"] > 0
            gate.open()

            with trio.fail_after(60):
                while len(seqs := await _recorded(cluster, "hooktest.burst", run)) < count:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            assert seqs == list(range(count))
            assert backlog.statistics() == {"queued": 0, "spooled": 0, "dropped": 0}
            nursery.cancel_scope.cancel()


async def test_statements_a_millisecond_apart_reach_auth_in_one_call(
    cluster: RunningCluster,
) -> None:
    # a database session's pace: without the linger each event would be a call of its own
    run = uuid.uuid4().hex
    backlog = AuditBacklog(linger=2.0)
    calls: list[int] = []
    async with host_client(cluster) as api, trio.open_nursery() as nursery:

        async def counted(batch: Sequence[HostAuditEvent]) -> None:
            calls.append(len(batch))
            await api.record_events(batch)

        nursery.start_soon(backlog.forward, counted)
        for seq in range(20):
            await backlog.record("hooktest.paced", {"seq": seq, "run": run})
            await trio.sleep(0.001)
        with trio.fail_after(30):
            while len(await _recorded(cluster, "hooktest.paced", run)) < 20:  # noqa: ASYNC110
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert calls == [20]
    assert await _recorded(cluster, "hooktest.paced", run) == list(range(20))


async def test_a_stopping_host_sends_what_its_backlog_still_holds(cluster: RunningCluster) -> None:
    run = uuid.uuid4().hex
    backlog = AuditBacklog(linger=60.0)  # nothing would go before the host stops
    async with host_client(cluster) as api:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backlog.forward, api.record_events)
            for seq in range(5):
                await backlog.record("hooktest.last", {"seq": seq, "run": run})
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()  # the host stops
        assert await _recorded(cluster, "hooktest.last", run) == list(range(5))
        assert backlog.statistics() == {"queued": 0, "spooled": 0, "dropped": 0}


async def test_a_batch_with_one_bad_event_is_refused_naming_it_and_records_nothing(
    cluster: RunningCluster,
) -> None:
    run = uuid.uuid4().hex
    async with host_client(cluster) as api:
        with pytest.raises(
            TetherError, match=r"^audit event 2 of 3: audit event type 'Not Valid' is not valid"
        ) as refused:
            await api.record_events(
                [
                    HostAuditEvent("hooktest.batch", "", {"seq": 1, "run": run}),
                    HostAuditEvent("Not Valid", "", {"seq": 2, "run": run}),
                    HostAuditEvent("hooktest.batch", "", {"seq": 3, "run": run}),
                ]
            )
        assert refused.value.hint and "lower-case words" in refused.value.hint
        with pytest.raises(
            TetherError, match=r"^audit event 2 of 2: request field 'fields' must be an object"
        ):
            await api.call(
                "POST",
                "/v1/audit/batch",
                json={
                    "events": [
                        {"type": "hooktest.batch", "fields": {"seq": 4, "run": run}},
                        {"type": "hooktest.batch", "fields": [5]},
                    ]
                },
            )
        await api.record_events([HostAuditEvent("hooktest.batch", "", {"seq": 6, "run": run})])
    assert await _recorded(cluster, "hooktest.batch", run) == [6]


async def test_a_user_may_not_record_a_hosts_events(cluster: RunningCluster) -> None:
    admin, _ = admin_client(load_config(cluster.config_path))
    async with admin:
        with pytest.raises(TetherError, match="may not record events"):
            await admin.record_events([HostAuditEvent("hooktest.batch", "", {})])


async def test_protocol_recording_a_malformed_event_is_told_why_and_a_full_backlog_drops() -> None:
    backlog = AuditBacklog(size=2)
    with pytest.raises(TetherError, match="audit event type 'Bad' is not valid"):
        await backlog.record("Bad", {})
    with pytest.raises(TetherError, match=r"fields of audit event db\.query are not JSON"):
        await backlog.record("db.query", {"statement": object()})
    for _ in range(3):  # the non-blocking way never waits: the third is dropped, logged
        backlog.audit_nowait("ssh.session.data", {"bytes": 1})
    backlog.audit_nowait("Bad", {})  # and a malformed event never fails a session
    assert backlog.statistics() == {"queued": 2, "spooled": 0, "dropped": 2}


async def test_a_host_stopped_while_auth_is_unreachable_sends_its_events_at_the_next_start(
    cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    run = uuid.uuid4().hex
    spool = tmp_path / AUDIT_SPOOL_FILE
    host, port = cluster.auth_addr.rsplit(":", 1)
    gate = Gate((host, int(port)))
    async with trio.open_nursery() as nursery:
        relay = f"127.0.0.1:{await nursery.start(gate.serve)}"
        gate.close()
        async with host_client(cluster, addr=relay) as api:
            # memory for 5: the other 45 of a burst go to disk rather than being dropped
            backlog = AuditBacklog(size=5, spool=AuditSpool(spool), final_flush=0.5)
            async with trio.open_nursery() as running:
                running.start_soon(backlog.forward, api.record_events)
                for seq in range(50):
                    backlog.audit_nowait("hooktest.spooled", {"seq": seq, "run": run})
                assert backlog.statistics() == {"queued": 50, "spooled": 45, "dropped": 0}
                with trio.fail_after(30):
                    await gate.wait_refusals(2)
                running.cancel_scope.cancel()  # the host stops; its last try fails too
        assert backlog.statistics() == {"queued": 50, "spooled": 50, "dropped": 0}
        assert await _recorded(cluster, "hooktest.spooled", run) == []

        gate.open()
        async with host_client(cluster, addr=relay) as api:  # the host starts again
            again = AuditBacklog(size=5, spool=AuditSpool(spool))
            assert again.statistics()["queued"] == 50
            async with trio.open_nursery() as running:
                running.start_soon(again.forward, api.record_events)
                with trio.fail_after(60):
                    while len(await _recorded(cluster, "hooktest.spooled", run)) < 50:  # noqa: ASYNC110
                        await trio.sleep(0.2)
                running.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    assert await _recorded(cluster, "hooktest.spooled", run) == list(range(50))  # once, in order
    assert again.statistics() == {"queued": 0, "spooled": 0, "dropped": 0}
    assert not spool.exists()


async def test_a_torn_spool_line_is_skipped_and_a_full_spool_drops(tmp_path: pathlib.Path) -> None:
    path = tmp_path / AUDIT_SPOOL_FILE
    spool = AuditSpool(path, max_bytes=500)
    assert spool.append([HostAuditEvent("ssh.session.start", "alice", {"n": 1})])
    with path.open("ab") as f:
        f.write(b'["ssh.session.end", "al')  # a crash in the middle of a write
    spool = AuditSpool(path, max_bytes=500)  # the host starts again
    spool.append([HostAuditEvent("ssh.session.start", "bob", {"n": 2})])
    assert not spool.append([HostAuditEvent("ssh.session.data", "bob", {"bytes": "x" * 500})])
    sent: list[Sequence[HostAuditEvent]] = []

    async def record(batch: Sequence[HostAuditEvent]) -> None:
        sent.append(batch)

    backlog = AuditBacklog(size=1, spool=spool)
    with trio.move_on_after(1):
        await backlog.forward(record)
    # the torn line is skipped; the event written after it is whole, and the spool is gone
    assert [e.fields for batch in sent for e in batch] == [{"n": 1}, {"n": 2}]
    assert backlog.statistics() == {"queued": 0, "spooled": 0, "dropped": 0}
    assert not path.exists()


async def test_a_batch_sent_again_after_a_lost_answer_is_recorded_once(
    cluster: RunningCluster,
) -> None:
    run = uuid.uuid4().hex
    batch = [HostAuditEvent("hooktest.twice", "", {"seq": seq, "run": run}) for seq in range(3)]
    async with host_client(cluster) as api:
        await api.record_events(batch)
        await api.record_events(batch)  # the host never saw the first answer
        await api.record_events(
            [*batch, HostAuditEvent("hooktest.twice", "", {"seq": 3, "run": run})]
        )
    assert await _recorded(cluster, "hooktest.twice", run) == [0, 1, 2, 3]


async def test_a_host_cannot_name_its_event_so_that_anothers_is_dropped(
    cluster: RunningCluster,
) -> None:
    run = uuid.uuid4().hex
    victim = HostAuditEvent("hooktest.named", "", {"seq": 1, "run": run})
    async with host_client(cluster, name="victim-host") as api:
        await api.record_events([victim])
    # a host that learnt the id (or guessed it) reports an event under it first, then again
    forged = HostAuditEvent("hooktest.named", "", {"seq": 2, "run": run}, id=victim.id)
    async with host_client(cluster, name="forging-host") as api:
        await api.record_events([forged])
    async with host_client(cluster, name="victim-host") as api:
        await api.record_events([HostAuditEvent("hooktest.named", "", {"seq": 3, "run": run})])
    assert await _recorded(cluster, "hooktest.named", run) == [1, 2, 3]


async def test_an_event_sent_late_keeps_the_time_it_happened(cluster: RunningCluster) -> None:
    run = uuid.uuid4().hex
    now = time.time()
    late = HostAuditEvent("hooktest.late", "", {"seq": 1, "run": run}, time=now - 3600)
    ahead = HostAuditEvent("hooktest.late", "", {"seq": 2, "run": run}, time=now + 86400)
    async with host_client(cluster) as api:
        await api.record_events([late, ahead])
        with pytest.raises(TetherError, match=r"audit event 2 of 2: audit event id 'a b' is"):
            await api.record_events([late, HostAuditEvent("hooktest.late", "", {}, id="a b")])
    admin, _ = admin_client(load_config(cluster.config_path))
    async with admin:
        found = await admin.search_audit(AuditQuery(type="hooktest.late", limit=10))
    times = {e.fields["seq"]: e.time.timestamp() for e in found if e.fields.get("run") == run}
    assert abs(times[1] - (now - 3600)) < 1  # an hour ago, when it happened
    assert now - 1 < times[2] < time.time() + 1  # a clock ahead: dated when auth got it
