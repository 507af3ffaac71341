"""Storage backends: SQLite, PostgreSQL and etcd through Tether's backend interface, each
against its own store written directly, in one run.

For each store, on 127.0.0.1 (PostgreSQL: the server already running on 5432, in a database
of the run's own, dropped afterwards; etcd: a member started for the run, ``--max-txn-ops``
raised as ``docs/operating.md`` says), three figures through Tether's backend
(``open_sqlite``, ``open_postgres``, ``open_etcd``):

- ``writes_per_s``: sequential ``put`` of distinct keys (a heartbeat, a resource), one
  writer, each acknowledged once durable;
- ``cas_per_s``: sequential ``compare_and_swap`` of one key at the revision the previous
  one returned (a lockout counter, a leaf's status);
- ``watch_ms``: from a ``put`` being called to a watcher of its prefix receiving the event
  (the write itself included), median and p99.

The baseline (``raw_writes_per_s``) is the store itself written the simplest durable way,
one key per transaction, with no Tether code: SQLite's ``INSERT OR REPLACE`` and commit in
WAL mode with ``synchronous=FULL`` (as Tether's), PostgreSQL's ``INSERT ... ON CONFLICT`` in
autocommit, etcd's ``/v3/kv/put``. ``ratio`` is Tether's writes per second over the raw
ones: what the backend's revision counter, event log and encoding cost on top of the store.

Logins per second through a proxy with one and with two auth servers come with the second
auth server (issue "High availability"); until then the JSON says so.

    python benchmarks/backends.py [--quick] [--json FILE] [--writes N] [--watch-events N]
"""

# No ``from __future__ import annotations`` here: tests load harnesses without registering
# them in sys.modules, and dataclasses then cannot resolve string annotations.
import argparse
import contextlib
import os
import pathlib
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, from run_all.py, or imported by a test
    sys.path.insert(0, str(HERE))

import machine  # noqa: E402
from _benchlib import results, tables  # noqa: E402

from tether.backend import Backend, open_sqlite  # noqa: E402

NAME = "backends"
STORES = ("sqlite", "postgresql", "etcd")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    parser.add_argument("--writes", type=int, default=2000, help="writes and CAS per store")
    parser.add_argument("--watch-events", type=int, default=500, help="watched puts per store")
    results.add_output_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.writes, args.watch_events = 200, 50
    return args


async def _rate(count: int, step: Callable[[int], Any]) -> float:
    started = time.perf_counter()
    for i in range(count):
        await step(i)
    return count / (time.perf_counter() - started)


async def measure_backend(backend: Backend, writes: int, watch_events: int) -> dict[str, Any]:
    """The three figures of one store, through Tether's backend interface."""
    run = uuid.uuid4().hex[:8]

    async def put(i: int) -> None:
        await backend.put(f"/bench/{run}/w{i:06d}", b"x" * 200)

    writes_per_s = await _rate(writes, put)
    item = await backend.put(f"/bench/{run}/cas", b"0")
    revision = item.revision

    async def cas(i: int) -> None:
        nonlocal revision
        swapped = await backend.compare_and_swap(
            f"/bench/{run}/cas", str(i).encode(), expected_revision=revision
        )
        revision = swapped.revision

    cas_per_s = await _rate(writes, cas)
    delays = []
    async with backend.watch(f"/bench/{run}/watch/") as events:
        for i in range(watch_events):
            written = time.perf_counter()
            await backend.put(f"/bench/{run}/watch/{i}", b"x")
            with trio.fail_after(10):
                await events.__anext__()
            delays.append((time.perf_counter() - written) * 1000)
    delays.sort()
    return {
        "writes_per_s": round(writes_per_s, 1),
        "cas_per_s": round(cas_per_s, 1),
        "watch_ms": {
            "median": round(statistics.median(delays), 3),
            "p99": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))], 3),
        },
    }


def raw_sqlite(directory: pathlib.Path, writes: int) -> float:
    conn = sqlite3.connect(directory / "raw.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB)")
    started = time.perf_counter()
    for i in range(writes):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"/w{i:06d}", b"x" * 200))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return writes / elapsed


def raw_postgres(url: str, writes: int) -> float:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE raw_kv (key text PRIMARY KEY, value bytea)")
        started = time.perf_counter()
        for i in range(writes):
            conn.execute(
                "INSERT INTO raw_kv VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value ="
                " excluded.value",
                (f"/w{i:06d}", b"x" * 200),
            )
        return writes / (time.perf_counter() - started)


def raw_etcd(client_url: str, writes: int) -> float:
    import base64

    import httpx

    value = base64.b64encode(b"x" * 200).decode()
    with httpx.Client() as client:
        started = time.perf_counter()
        for i in range(writes):
            key = base64.b64encode(f"/raw/w{i:06d}".encode()).decode()
            client.post(f"{client_url}/v3/kv/put", json={"key": key, "value": value})
        return writes / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def opened(
    store: str, stack: contextlib.ExitStack, directory: pathlib.Path
) -> AsyncIterator[tuple[Backend, Callable[[int], float]]]:
    """The store's Tether backend, and its raw writer."""
    if store == "sqlite":
        async with open_sqlite(f"sqlite://{directory / 'tether.sqlite'}") as backend:
            yield backend, lambda n: raw_sqlite(directory, n)
    elif store == "postgresql":
        from tether_postgres import open_postgres

        from tether.testing.postgres import postgres_database

        url = stack.enter_context(postgres_database("tether_bench"))
        async with open_postgres(url) as backend:
            yield backend, lambda n: raw_postgres(url, n)
    else:
        from tether_etcd import open_etcd

        from tether.testing.etcd import start_etcd

        cluster = start_etcd(directory / "etcd")
        stack.callback(cluster.stop)
        async with open_etcd(cluster.url("/bench")) as backend:
            yield backend, lambda n: raw_etcd(cluster.members[0].client_url, n)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for store in STORES:
        print(f"measuring {store}", flush=True)
        with (
            tempfile.TemporaryDirectory(prefix=f"bench-{store}-") as tmp,
            contextlib.ExitStack() as stack,
        ):
            try:
                async with opened(store, stack, pathlib.Path(tmp)) as (backend, raw):
                    tether = await measure_backend(backend, args.writes, args.watch_events)
                    raw_rate = await trio.to_thread.run_sync(raw, args.writes)
            except Exception as exc:  # noqa: BLE001 - a store that cannot run is reported
                print(f"  {store}: n/a ({type(exc).__name__}: {exc})", flush=True)
                figures[store] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
        figures[store] = {
            **tether,
            "raw_writes_per_s": round(raw_rate, 1),
            "ratio": round(tether["writes_per_s"] / raw_rate, 3),
        }
    return figures


def table(report: dict[str, Any]) -> str:
    rows = []
    for store in STORES:
        f = report["figures"].get(store, {})
        if "error" in f:
            rows.append([store, "n/a", "", "", "", "", f["error"][:40]])
            continue
        rows.append(
            [
                store,
                tables.fmt(f["writes_per_s"], ".0f"),
                tables.fmt(f["raw_writes_per_s"], ".0f"),
                tables.fmt(f["ratio"], ".2f", "x"),
                tables.fmt(f["cas_per_s"], ".0f"),
                tables.fmt(f["watch_ms"]["median"], ".2f"),
                tables.fmt(f["watch_ms"]["p99"], ".2f"),
            ]
        )
    header = ["store", "writes/s", "raw writes/s", "ratio", "CAS/s", "watch ms", "watch p99"]
    return "\n".join(tables.grid(header, rows))


def index_line(report: dict[str, Any], json_name: str, png_name: str | None) -> str:
    parts = []
    for store in STORES:
        f = report["figures"].get(store, {})
        if "error" in f:
            parts.append(f"{store} n/a")
        else:
            parts.append(
                f"{store} {f['writes_per_s']:.0f} writes/s ({f['ratio']:.2f}x raw), "
                f"{f['cas_per_s']:.0f} CAS/s, watch {f['watch_ms']['median']:.2f} ms"
            )
    return (
        f"- {NAME} {report['machine']['date'][:10]}: {'; '.join(parts)}. "
        f"Machine: {machine.summary(report['machine'])}. [{json_name}]({json_name})"
    )


def main(argv: list[str]) -> int:
    """Measure every store, print the table, write the JSON and the index line."""
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()
    figures = trio.run(measure, args)
    report = {
        "harness": NAME,
        "machine": machine.describe(),
        "params": {"writes": args.writes, "watch_events": args.watch_events, "value_bytes": 200},
        "figures": figures,
        "logins_per_s": None,
        "logins_note": "logins through a proxy with one and two auth servers: not measured "
        "yet (needs several auth servers behind the proxy)",
        "load": {
            "what": "1, 5 and 15 minute load averages (other work on the machine skews figures)",
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
    results.save_report(
        NAME, report, args, table=table, chart=lambda _r, _p: False, index_line=index_line
    )
    return 0 if all("error" not in f for f in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
