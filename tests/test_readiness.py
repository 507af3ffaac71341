"""``/readyz``'s probe asks the store at most once a second however often it is asked: the
route is anonymous and not rate limited, so a flood of probes must not become a flood of
reads. A real SQLite backend, counted; a clock the test moves."""

from __future__ import annotations

import pathlib
from typing import Any

import trio

from tether.auth.authorities import CLUSTER_CA_KEYS
from tether.auth.readiness import KEEP_FOR, Readiness, Verdict
from tether.backend import Item, SqliteBackend, open_sqlite


class CountedReads:
    """The backend, with its reads counted (a wrapper, not a mock: the reads happen)."""

    def __init__(self, backend: SqliteBackend) -> None:
        self.backend = backend
        self.reads = 0

    async def get(self, key: str) -> Item | None:
        self.reads += 1
        return await self.backend.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


async def test_many_probes_at_once_make_one_read_of_the_store_a_second(
    tmp_path: pathlib.Path,
) -> None:
    now = [0.0]
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.db'}") as backend:
        counted = CountedReads(backend)
        readiness = Readiness(counted, clock=lambda: now[0])  # type: ignore[arg-type]
        verdicts: list[Verdict] = []

        async def probe() -> None:
            verdicts.append(await readiness.check())

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(probe)
        assert counted.reads == 1
        assert set(verdicts) == {Verdict(False, "the storage does not hold the cluster's CAs")}

        await backend.put(CLUSTER_CA_KEYS, b"{}")
        now[0] += KEEP_FOR / 2
        assert not (await readiness.check()).ready  # the kept verdict
        now[0] += KEEP_FOR
        assert await readiness.check() == Verdict(True)
        assert counted.reads == 2
