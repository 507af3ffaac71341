"""A proxy relays its nodes' inventory reports to auth in batches, and an unchanged report no
more often than half its TTL: auth keeps the entry alive meanwhile. Driven in memory, with a
clock the test moves."""

from __future__ import annotations

from collections.abc import Sequence

from tether.tunnel.heartbeats import InventoryRecorder, InventoryReport


class Auth:
    """Stores every batch; refuses the reports of the hosts in ``refuse``."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.refuse: set[str] = set()

    async def write(self, reports: Sequence[InventoryReport]) -> list[str | None]:
        self.batches.append([r.agent for r in reports])
        return ["not yours" if r.agent in self.refuse else None for r in reports]


def report(agent: str, hostname: str = "web") -> InventoryReport:
    entry = {"kind": "node", "metadata": {"name": agent}, "spec": {"hostname": hostname}}
    return InventoryReport(agent=agent, cert=b"der", entries=(entry,), ttl_seconds=40.0)


async def test_an_unchanged_report_is_relayed_every_other_heartbeat() -> None:
    auth, now = Auth(), [0.0]
    recorder = InventoryRecorder(auth.write, flush_interval=5.0, clock=lambda: now[0])
    for at in (0, 10, 20, 30, 40):  # a heartbeat every 10 s, each flushed at once
        now[0] = at
        recorder.record(report("n1"))
        await recorder.flush()
    # stored at 0, due again at 15 (40 / 2 - 5): relayed at 0, 20 and 40
    assert auth.batches == [["n1"], ["n1"], ["n1"]]


async def test_a_changed_or_refused_report_is_relayed_at_its_next_heartbeat() -> None:
    auth, now = Auth(), [0.0]
    recorder = InventoryRecorder(auth.write, flush_interval=5.0, clock=lambda: now[0])
    auth.refuse.add("n2")
    recorder.record(report("n1"))
    recorder.record(report("n2"))
    await recorder.flush()
    assert recorder.refusals("n2") == "not yours"
    assert recorder.refusals("n2") is None  # said once
    now[0] = 10
    recorder.record(report("n1", hostname="web-renamed"))
    recorder.record(report("n2"))
    await recorder.flush()
    assert auth.batches == [["n1", "n2"], ["n1", "n2"]]


async def test_a_host_that_reconnects_is_relayed_at_once() -> None:
    auth, now = Auth(), [0.0]
    recorder = InventoryRecorder(auth.write, flush_interval=5.0, clock=lambda: now[0])
    recorder.record(report("n1"))
    await recorder.flush()
    recorder.forget("n1")  # its tunnel closed
    now[0] = 1
    recorder.record(report("n1"))
    await recorder.flush()
    assert auth.batches == [["n1"], ["n1"]]


class Removals(Auth):
    """Also keeps every report, removals included."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[InventoryReport] = []

    async def write(self, reports: Sequence[InventoryReport]) -> list[str | None]:
        self.reports.extend(reports)
        return await super().write(reports)


async def test_a_host_whose_last_tunnel_closed_has_what_was_relayed_removed_at_once() -> None:
    auth, now = Removals(), [0.0]
    recorder = InventoryRecorder(auth.write, flush_interval=5.0, clock=lambda: now[0])
    recorder.record(report("n1"))
    await recorder.flush()
    now[0] = 30
    recorder.forget("n1", remove=True)
    assert recorder._urgent.is_set()  # written now, not with the next batch
    await recorder.flush()
    removal = auth.reports[-1]
    assert removal.removed_relayed_ago == 30  # auth keeps it if published again since
    assert removal.entries == report("n1").entries and removal.cert == b"der"
    # gone once: a second close, or a removal written, removes nothing more
    recorder.forget("n1", remove=True)
    assert await recorder.flush() == 0


async def test_a_host_with_nothing_stored_or_still_connected_has_nothing_removed() -> None:
    auth, now = Removals(), [0.0]
    recorder = InventoryRecorder(auth.write, flush_interval=5.0, clock=lambda: now[0])
    auth.refuse.add("n2")
    for host in ("n1", "n2", "n3"):
        recorder.record(report(host))
    await recorder.flush()
    recorder.forget("n1")  # another tunnel of it is up here: it keeps its entries
    recorder.forget("n2", remove=True)  # auth refused what it reported: nothing of it stored
    assert await recorder.flush() == 0
    # a host that reconnects before its removal is written is relayed, not removed
    recorder.forget("n3", remove=True)
    recorder.record(report("n3"))
    await recorder.flush()
    assert auth.reports[-1].removed_relayed_ago is None and auth.reports[-1].agent == "n3"


async def test_a_host_that_closed_before_its_first_report_went_out_is_removed() -> None:
    # a tunnel-mode node publishes its entries itself as it starts: one killed within its
    # first flush would stay listed until they expire. Removed, keeping whatever another
    # tunnel published since it was first heard of here
    auth, now = Removals(), [0.0]
    recorder = InventoryRecorder(auth.write, flush_interval=5.0, clock=lambda: now[0])
    recorder.record(report("n4"))
    now[0] = 2
    recorder.forget("n4", remove=True)
    assert await recorder.flush() == 1
    [removal] = auth.reports
    assert removal.agent == "n4" and removal.removed_relayed_ago == 2


async def test_a_host_whose_tunnel_closed_while_its_report_was_written_is_removed_after() -> None:
    now = [0.0]
    recorder: InventoryRecorder

    class Slow(Removals):
        async def write(self, reports: Sequence[InventoryReport]) -> list[str | None]:
            if not self.reports:  # the tunnel closes while auth stores its first report
                now[0] = 1
                recorder.forget("n1", remove=True)
            return await super().write(reports)

    auth = Slow()
    recorder = InventoryRecorder(auth.write, flush_interval=5.0, clock=lambda: now[0])
    recorder.record(report("n1"))
    await recorder.flush()
    await recorder.flush()
    first, removal = auth.reports
    assert first.removed_relayed_ago is None
    # written after the report, removing whatever was published up to the close
    assert removal.removed_relayed_ago == 0
    # nothing of it is held as stored: the host, back, is relayed at once
    recorder.record(report("n1"))
    assert await recorder.flush() == 1
