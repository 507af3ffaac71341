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

Then logins per second through a proxy (``logins``), on each store again (a fresh database,
a fresh etcd member): real ``tetherd`` auth servers and proxies, and clients in this process
doing what ``tether login`` does (``_benchlib/logins.py`` says exactly what, and why a proxy
that knows two auth servers is also measured as two proxies), with 1 and 8 clients for a few
seconds each: one auth server on every store; two on one store for PostgreSQL and etcd (a
SQLite file is one auth server's). The argon2id check of the password dominates a login; the
JSON gives its cost here and each process's CPU.

    python benchmarks/backends.py [--quick] [--json FILE] [--writes N] [--watch-events N]
        [--login-clients 1,8] [--login-seconds S]
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
from _benchlib import daemon_settings, logins, results, tables  # noqa: E402

from tether.backend import Backend, open_sqlite  # noqa: E402

NAME = "backends"
STORES = ("sqlite", "postgresql", "etcd")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    parser.add_argument("--writes", type=int, default=2000, help="writes and CAS per store")
    parser.add_argument("--watch-events", type=int, default=500, help="watched puts per store")
    parser.add_argument(
        "--login-clients",
        type=_counts,
        default=(1, 8),
        metavar="N,N",
        help="numbers of clients logging in at once, each measured (default 1,8)",
    )
    parser.add_argument(
        "--login-seconds", type=float, default=5.0, help="how long each login figure runs"
    )
    results.add_output_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.writes, args.watch_events, args.login_seconds = 200, 50, 2.0
    return args


def _counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(part) for part in text.split(","))
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("positive numbers, comma-separated")
    return counts


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


def login_store(store: str, stack: contextlib.ExitStack, directory: pathlib.Path) -> str | None:
    """A fresh store for the login figures' auth servers, as their ``storage.url`` (None:
    SQLite, in the auth server's data directory)."""
    if store == "sqlite":
        return None
    if store == "postgresql":
        from tether.testing.postgres import postgres_database

        return stack.enter_context(postgres_database("tether_bench_logins"))
    from tether.testing.etcd import start_etcd

    cluster = start_etcd(directory / "etcd-logins")
    stack.callback(cluster.stop)
    return cluster.url("/tether")


async def measure_logins(args: argparse.Namespace) -> dict[str, Any]:
    """The login figures of every store (``store_logins``), or why one is missing."""
    figures: dict[str, Any] = {}
    for store in STORES:
        print(f"logins on {store}", flush=True)
        with (
            tempfile.TemporaryDirectory(prefix=f"bench-logins-{store}-") as tmp,
            contextlib.ExitStack() as stack,
        ):
            try:
                url = login_store(store, stack, pathlib.Path(tmp))
                figures[store] = await logins.store_logins(
                    url,
                    pathlib.Path(tmp),
                    two_auth_servers=store != "sqlite",
                    clients=args.login_clients,
                    seconds=args.login_seconds,
                )
            except Exception as exc:  # noqa: BLE001 - a store that cannot run is reported
                print(f"  {store}: n/a ({type(exc).__name__}: {exc})", flush=True)
                figures[store] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
        if store == "sqlite":
            figures[store]["two_auth"] = "n/a: a SQLite file is one auth server's store"
    return figures


def logins_report(
    args: argparse.Namespace, hash_cost: dict[str, Any], figures: dict[str, Any]
) -> dict[str, Any]:
    """The ``logins`` section: the figures and what they are."""
    described = machine.describe()
    return {
        "what": "one login is what `tether login --password-stdin` does with a CA pin: GET "
        "/webapi/cluster-ca and GET /webapi/ping (trust), a fresh Ed25519 key, POST "
        "/webapi/login; each on a new HTTPS connection to the proxy, which forwards the login "
        "to an auth server: lockout count (store write), argon2id check, SSH and X.509 "
        "certificates, audit events. The profile written to disk is not included; clients are "
        "trio tasks in the benchmark's process, each its own user",
        "configurations": {
            "one_auth": "one auth server, one proxy",
            "two_auth_one_proxy": "two auth servers on one store, one proxy that knows both",
            "two_auth_two_proxies": "two auth servers, two proxies that each ask another one "
            "first; each client takes the proxies in turn",
        },
        "note": "a proxy that knows several auth servers sends every request to the first "
        "while it answers and only fails over (tether.auth.http_client.AuthClient): behind "
        "one proxy the second auth server is a standby, and the figure is one server's. Two "
        "proxies, one per auth server, spread the logins. An auth server checks passwords on "
        "worker threads, one per core at a time (argon2id; argon2-cffi's lanes use more than "
        "one core per check), so the machine's logins/s is at most about "
        "cores * 1000 / verify_cpu_ms_here, whatever the number of auth servers on it",
        "password_hash": hash_cost,
        "clients": list(args.login_clients),
        "seconds_each": args.login_seconds,
        "cpu": {
            "cores": described.get("cores"),
            "cores_usable": described.get("cores_usable"),
            "model": described.get("cpu_model"),
            "shared": "auth servers, proxies, the store and the clients share these cores; "
            "cpu_percent is of one core, per process",
        },
        "rate_limit": f"the proxies' proxy_service.rate_limit at {logins.RATE_LIMIT} per "
        "address (every client comes from 127.0.0.1; the default 10/s would measure the limiter)",
        "daemons_log_severity": daemon_settings.LOG_DESCRIPTION,
        "figures": figures,
    }


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
    return "\n".join([*tables.grid(header, rows), "", *login_table(report)])


#: the login configurations, as the tables name them
LOGIN_SETUPS = {
    "one_auth": "1 auth",
    "two_auth_one_proxy": "2 auth, 1 proxy",
    "two_auth_two_proxies": "2 auth, 2 proxies",
}


def login_table(report: dict[str, Any]) -> list[str]:
    """Logins per second by store, configuration and number of clients, with the auth
    servers' CPU (percent of one core) that says which one did the work."""
    figures = report.get("logins", {}).get("figures", {})
    rows = []
    for store in STORES:
        f = figures.get(store, {})
        if "error" in f:
            rows.append([store, "", "n/a", "", "", "", "", f["error"][:40]])
            continue
        for setup, label in LOGIN_SETUPS.items():
            for clients, m in f.get(setup, {}).items():
                auth_cpu = "/".join(
                    f"{m['cpu_percent'][name]:.0f}"
                    for name in ("auth-1", "auth-2")
                    if name in m["cpu_percent"]
                )
                per_login = [
                    m["cpu_ms_per_login"][name]
                    for name in ("auth-1", "auth-2")
                    if m["cpu_ms_per_login"].get(name) is not None
                ]
                rows.append(
                    [
                        f"{store}, {label}",
                        clients,
                        tables.fmt(m["logins_per_s"], ".1f"),
                        tables.fmt(m["latency_ms"]["median"], ".0f"),
                        tables.fmt(m["latency_ms"]["p99"], ".0f"),
                        str(m["errors"]),
                        auth_cpu,
                        tables.fmt(sum(per_login) if per_login else None, ".0f"),
                    ]
                )
    hashed = report.get("logins", {}).get("password_hash", {})
    header = [
        "logins",
        "clients",
        "logins/s",
        "ms",
        "p99 ms",
        "errors",
        "auth CPU %",
        "auth CPU ms/login",
    ]
    checked = (
        f"one password check ({hashed.get('algorithm')} {hashed.get('params')}): "
        f"{tables.fmt(hashed.get('verify_cpu_ms_here'), '.0f')} ms of CPU here"
    )
    return [*tables.grid(header, rows), checked]


def login_summary(report: dict[str, Any]) -> str:
    """Logins/s at the most clients measured, for the index line."""
    section = report.get("logins", {})
    most = str(max(section.get("clients", [0])))
    parts = []
    for store in STORES:
        f = section.get("figures", {}).get(store, {})
        rates = [
            tables.fmt(f[setup].get(most, {}).get("logins_per_s"), ".1f")
            for setup in LOGIN_SETUPS
            if setup in f
        ]
        parts.append(f"{store} {'/'.join(rates) if rates else 'n/a'}")
    return (
        f"logins/s with {most} clients (1 auth / 2 auth 1 proxy / 2 auth 2 proxies): "
        + ", ".join(parts)
    )


def index_line(report: dict[str, Any], json_name: str, png_name: str | None) -> str:
    """One line of ``results/README.md``: headline figures, machine, files (as the other
    harnesses write theirs)."""
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
    files = f"[json]({json_name})" + (f", [chart]({png_name})" if png_name else "")
    return (
        f"- {report['machine']['date']} `{NAME}`: {'; '.join(parts)}; {login_summary(report)}; "
        f"{machine.summary(report['machine'])}; {files}"
    )


def main(argv: list[str]) -> int:
    """Measure every store, print the table, write the JSON and the index line."""
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()
    hash_cost = logins.hash_cost()  # before the runs, as the load is measured
    figures = trio.run(measure, args)
    login_figures = trio.run(measure_logins, args)
    report = {
        "harness": NAME,
        "machine": machine.describe(),
        "params": {"writes": args.writes, "watch_events": args.watch_events, "value_bytes": 200},
        "figures": figures,
        "logins": logins_report(args, hash_cost, login_figures),
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
    failed = [f for f in [*figures.values(), *login_figures.values()] if "error" in f]
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
