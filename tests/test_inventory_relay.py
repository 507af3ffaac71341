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
