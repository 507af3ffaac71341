"""Logins per second through a proxy, with one auth server and with two on one store.

Real ``tetherd`` processes (:mod:`tether.testing.cluster`): auth servers without a proxy of
their own (``proxy_service`` disabled, the store's ``storage.url``), and proxies in processes
of their own that know them (``--auth-server`` for each). The clients run in this process, on
trio, and do what ``tether login --password-stdin`` does with the same functions: trust the
proxy by the cluster's CA pin (``GET /webapi/cluster-ca``, then ``GET /webapi/ping``), make a
fresh Ed25519 key, and ``POST /webapi/login`` (user, password, public keys), each request on a
new HTTPS connection; the proxy forwards the login to auth, which counts the attempt in the
store, checks the argon2id hash, issues the SSH and X.509 certificates and audits the login.
Only the profile ``tether login`` then writes to disk is left out: a CLI process per login
would measure Python's start (about a second of CPU), not the login.

A proxy that knows several auth servers sends every request to the first one as long as it
answers and fails over to the next (:class:`tether.auth.http_client.AuthClient`); it does not
spread the load. So two auth servers are measured twice: behind one proxy that knows both
(what a second auth server gives as it is: a standby), and behind two proxies that each ask
another one first, the clients taking the proxies in turn (as DNS round robin would).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pathlib
import re
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import trio

from tether import pki
from tether.auth import passwords
from tether.client.web import find_proxy, proxy_call
from tether.errors import TetherError
from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_proxy

from . import procs
from .daemon_settings import LOG

__all__ = ["PASSWORD", "hash_cost", "one_login", "store_logins"]

PASSWORD = "correct horse battery staple"
#: every client here comes from 127.0.0.1, where the proxy's per-address limit on anonymous
#: endpoints (10 a second by default) would measure the limiter: raised out of the way
RATE_LIMIT = {"average": 100_000, "burst": 100_000, "period": "1s"}
#: how many unmeasured logins through each proxy come first (connections to auth, caches)
WARM_UP = 2


def hash_cost() -> dict[str, Any]:
    """The stored hashes' parameters (as a hash says them) and what checking one costs here."""
    stored = passwords.hash_password(PASSWORD)
    params = re.match(r"\$(argon2\w+)\$v=\d+\$([^$]+)\$", stored)
    wall, cpu = [], []
    for _ in range(5):
        started, cpu_started = time.perf_counter(), time.process_time()
        matched = passwords.verify_password(stored, PASSWORD)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - cpu_started) * 1000)
    if not matched:
        raise RuntimeError("the password does not match the hash just made of it")
    return {
        "algorithm": params.group(1) if params else "unknown",
        "params": params.group(2) if params else stored.split("$")[3],
        # the CPU time is what a core of its own would take; the time waits for one too
        "verify_cpu_ms_here": round(statistics.median(cpu), 1),
        "verify_ms_here": round(statistics.median(wall), 1),
        "where": "in each auth server, on worker threads, one per core at a time",
    }


def _auth_server(directory: pathlib.Path, storage_url: str | None) -> RunningCluster:
    """An auth server of cluster ``main`` without a proxy; on its own SQLite file when
    ``storage_url`` is None."""
    config: dict[str, Any] = {"proxy_service": {"enabled": False}, "log": LOG}
    if storage_url is not None:
        config["storage"] = {"url": storage_url}
    return start_cluster(directory, "main", config=config)


def _proxy(
    auth: RunningCluster, directory: pathlib.Path, name: str, servers: Sequence[RunningCluster]
) -> RunningNode:
    return start_proxy(
        auth,
        directory,
        name,
        auth_servers=[server.auth_addr for server in servers],
        proxy_service={"rate_limit": RATE_LIMIT},
        config={"log": LOG},
    )


def user_name(client: int) -> str:
    return f"bench-{client}"


async def one_login(proxy: str, ca_pin: str, user: str) -> None:
    """One ``tether login`` against ``proxy``, up to the certificates it answers.

    :raises TetherError: the login failed, as ``tether login`` would report it.
    """
    addr, context = await find_proxy(proxy, insecure=False, ca_pin=ca_pin)
    key = pki.generate_private_key()
    result = await proxy_call(
        addr,
        "POST",
        "/webapi/login",
        context,
        json={
            "user": user,
            "password": PASSWORD,
            "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
            "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
            "ttl_seconds": None,
            "connector": "local",
        },
    )
    identity = pki.Identity.from_json(result["identity"])
    if identity.username != user or not result["tls_cert"] or not result["ssh_cert"]:
        raise TetherError(f"login answered no certificates for {user}: {identity}")


async def measure(
    proxies: Sequence[RunningNode],
    ca_pin: str,
    clients: int,
    seconds: float,
    watched: Mapping[str, int],
) -> dict[str, Any]:
    """``clients`` users logging in again and again for ``seconds`` (each once at least),
    each through the proxies in turn; the rate counts the logins that ended with
    certificates, over the time until the last one under way at the deadline answered.
    ``watched``: the daemons' pids, by name, whose CPU is reported (percent of one core, and
    milliseconds per login)."""
    latencies: list[float] = []
    by_proxy = {proxy.name: 0 for proxy in proxies}
    errors: list[str] = []

    async def client(index: int, deadline: float) -> None:
        turn = index
        while True:  # one login at least, however short ``seconds``
            proxy = proxies[turn % len(proxies)]
            turn += 1
            started = time.perf_counter()
            try:
                await one_login(proxy.proxy_addr, ca_pin, user_name(index))
            except TetherError as exc:
                errors.append(f"{proxy.name}: {exc.message}")
                await trio.sleep(0.1)  # a refusal comes at once: no busy loop of them
            else:
                latencies.append((time.perf_counter() - started) * 1000)
                by_proxy[proxy.name] += 1
            if time.perf_counter() >= deadline:
                return

    cpu_before = {name: procs.cpu_seconds(pid) for name, pid in watched.items()}
    own_before = time.process_time()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(clients):
            nursery.start_soon(client, index, started + seconds)
    elapsed = time.perf_counter() - started
    used = {name: procs.cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
    used["clients"] = time.process_time() - own_before
    done = len(latencies)
    latencies.sort()
    return {
        "logins_per_s": round(done / elapsed, 2),
        "logins": done,
        "seconds": round(elapsed, 2),
        "by_proxy": by_proxy,
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:3],
        "latency_ms": {
            "median": round(statistics.median(latencies), 1) if latencies else None,
            "p99": round(latencies[min(done - 1, int(done * 0.99))], 1) if latencies else None,
        },
        # of one core, over the run; and per login, which other work on the machine skews
        # less than the rate (a process waiting for a core uses none meanwhile)
        "cpu_percent": {name: round(s / elapsed * 100, 1) for name, s in used.items()},
        "cpu_ms_per_login": {
            name: round(s * 1000 / done, 1) if done else None for name, s in used.items()
        },
    }


async def _figures(
    proxies: Sequence[RunningNode],
    ca_pin: str,
    clients: Sequence[int],
    seconds: float,
    watched: Mapping[str, int],
) -> dict[str, Any]:
    """:func:`measure` at each number of clients, after a few unmeasured logins."""
    for proxy in proxies:
        for _ in range(WARM_UP):
            await one_login(proxy.proxy_addr, ca_pin, user_name(0))
    figures = {}
    for count in clients:
        figures[str(count)] = await measure(proxies, ca_pin, count, seconds, watched)
        print(f"    {count} clients: {figures[str(count)]['logins_per_s']} logins/s", flush=True)
    return figures


@contextlib.contextmanager
def _stopped_at_exit() -> Iterator[list[RunningCluster | RunningNode]]:
    """What is started, stopped (by its pid) at the end whatever happened, last first."""
    running: list[RunningCluster | RunningNode] = []
    try:
        yield running
    finally:
        for process in reversed(running):
            process.stop()


def _add_users(auth: RunningCluster, count: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 2)) as pool:
        added = [
            pool.submit(auth.add_user, user_name(i), PASSWORD, roles=["access"])
            for i in range(count)
        ]
        for future in added:
            future.result()


async def store_logins(
    storage_url: str | None,
    directory: pathlib.Path,
    *,
    two_auth_servers: bool,
    clients: Sequence[int],
    seconds: float,
) -> dict[str, Any]:
    """The login figures of one store: through one proxy to one auth server; then, with
    ``two_auth_servers``, through one proxy that knows two, and through two proxies.

    ``storage_url`` None: SQLite in the first auth server's data directory (one server only).
    """
    run = trio.to_thread.run_sync
    figures: dict[str, Any] = {}
    with _stopped_at_exit() as running:
        first = await run(_auth_server, directory / "auth-1", storage_url)
        running.append(first)
        await run(_add_users, first, max(clients))
        only = await run(_proxy, first, directory / "proxy-1", "proxy-1", [first])
        running.append(only)
        print("  one auth server, one proxy", flush=True)
        watched = {"auth-1": first.process.pid, "proxy-1": only.process.pid}
        figures["one_auth"] = await _figures([only], first.ca_pin, clients, seconds, watched)
        only.stop()
        if not two_auth_servers:
            return figures
        second = await run(_auth_server, directory / "auth-2", storage_url)
        running.append(second)
        both = await run(_proxy, first, directory / "proxy-2", "proxy-2", [first, second])
        running.append(both)
        print("  two auth servers, one proxy that knows both", flush=True)
        watched = {
            "auth-1": first.process.pid,
            "auth-2": second.process.pid,
            "proxy-2": both.process.pid,
        }
        figures["two_auth_one_proxy"] = await _figures(
            [both], first.ca_pin, clients, seconds, watched
        )
        other = await run(_proxy, first, directory / "proxy-3", "proxy-3", [second, first])
        running.append(other)
        print("  two auth servers, two proxies (each asks another one first)", flush=True)
        watched = {**watched, "proxy-3": other.process.pid}
        figures["two_auth_two_proxies"] = await _figures(
            [both, other], first.ca_pin, clients, seconds, watched
        )
    return figures
