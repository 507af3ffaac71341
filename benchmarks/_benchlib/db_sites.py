"""The databases behind the ``db_access`` legs: two Tether clusters and private servers.

:func:`db_site` starts, on 127.0.0.1, a root cluster ``root`` and a leaf cluster ``leaf``
(trusted, role ``dbbench`` mapped to ``dbbench``), one database service per cluster, and for
each service a private PostgreSQL and MariaDB set up as ``docs/databases.md`` says, with the
files ``tetherctl auth sign --format=db`` wrote (``tether_db.testing`` starts them, as the
plugin's tests do). Each server also trusts a client CA of the harness, whose certificate for
``CN=alice`` is what the ``direct`` leg presents. A root user ``bench`` runs one
``tether proxy db --tunnel`` per database; every process is stopped by pid on the way out.

The two PostgreSQL (and the two MariaDB) are configured alike; a cluster's database service
verifies its server against that cluster's db CA, so one server cannot serve both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from _benchlib.daemon_settings import LOG
from _benchlib.procs import LOOPBACK, owned_process
from _benchlib.ssh_sites import tether_program, user_env

if TYPE_CHECKING:
    from tether.testing.cluster import RunningCluster

BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password-not-secret"  # a throwaway cluster on loopback
DB_USER = "alice"  # a role tether_db.testing's servers create, in by certificate
PG_DATABASE = "bench"
MARIA_DATABASE = "shop"
PGBENCH_SCALE = 1
READY_TIMEOUT = 60.0

ROLE = f"""\
kind: role
version: v7
metadata:
  name: dbbench
spec:
  allow:
    db_labels: {{"*": "*"}}
    db_users: [{DB_USER}]
    db_names: ["*"]  # mysqlslap connects without a database, then USEs its schema
"""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a leg's client connects, and how."""

    port: int
    #: libpq/mysql client TLS options: a client certificate for ``direct``, none through Tether
    cert: pathlib.Path | None = None
    key: pathlib.Path | None = None

    def conninfo(self, dbname: str) -> str:
        """A libpq connection string (pgbench takes it as its database name)."""
        base = f"host={LOOPBACK} port={self.port} user={DB_USER} dbname={dbname}"
        if self.cert is None:
            return base + " sslmode=disable"
        return base + f" sslmode=require sslcert={self.cert} sslkey={self.key}"

    def mysql_args(self) -> list[str]:
        """``mysqlslap``/``mariadb`` options reaching this endpoint as ``DB_USER``."""
        args = ["--protocol=TCP", "-h", LOOPBACK, "-P", str(self.port), "-u", DB_USER]
        if self.cert is None:
            return [*args, "--skip-ssl"]
        return [*args, "--ssl", f"--ssl-cert={self.cert}", f"--ssl-key={self.key}"]


@dataclasses.dataclass(frozen=True)
class Site:
    """Each leg's endpoints per engine, and the pids worth profiling on the leaf leg."""

    postgres: dict[str, Endpoint]
    mariadb: dict[str, Endpoint]
    leaf_pids: dict[str, int]


def _client_ca(directory: pathlib.Path) -> tuple[bytes, pathlib.Path, pathlib.Path]:
    """A client CA of the harness and its certificate for ``CN=DB_USER`` (files, 0600)."""
    from tether_db.testing import TestCA

    ca = TestCA("db_access benchmark client CA")
    cert, key = ca.issue(DB_USER, hours=24)
    directory.mkdir(parents=True)
    cert_path, key_path = directory / "client.crt", directory / "client.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    os.chmod(key_path, 0o600)
    return ca.pem, cert_path, key_path


def _signed(
    cluster: RunningCluster, directory: pathlib.Path, extra_ca: bytes
) -> dict[str, pathlib.Path]:
    """The server's TLS files, written by the cluster's admin as the docs say; the harness's
    client CA appended to the client CAs."""
    directory.mkdir(parents=True)
    prefix = directory / "server"
    cluster.tetherctl(
        "auth", "sign", "--format=db", "--host=localhost,127.0.0.1", f"--out={prefix}", "--ttl=24h"
    )
    cas = directory / "server.cas"
    cas.write_bytes(cas.read_bytes() + extra_ca)
    return {suffix: directory / f"server.{suffix}" for suffix in ("crt", "key", "cas")}


def _tunnel(
    stack: contextlib.ExitStack, home: pathlib.Path, name: str, cluster: str | None
) -> tuple[int, int]:
    """``tether proxy db --tunnel [--cluster=leaf] NAME`` in the background: (port, pid)."""
    program, _ = tether_program()
    argv = [*program, "proxy", "db", "--tunnel", name]
    if cluster:
        argv.append(f"--cluster={cluster}")
    proc = stack.enter_context(
        owned_process(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**user_env(), "TETHER_HOME": str(home)},
        )
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().decode(errors="replace")
    found = re.search(r"on 127\.0\.0\.1:(\d+)", first)
    if not found:
        raise RuntimeError(f"tether proxy db did not start: {first.strip()}")
    # the listener logs nothing more we need; let its pipe drain into nowhere
    stack.enter_context(_drained(proc))
    return int(found.group(1)), proc.pid


@contextlib.contextmanager
def _drained(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Read what a background client prints, so a full pipe never blocks it."""
    assert proc.stdout is not None
    reader = subprocess.Popen(  # cat, not a thread: owned and stopped by pid like the rest
        ["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        reader.terminate()
        reader.wait()


def _wait(what: str, ok: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ok():
                return
        except (subprocess.SubprocessError, ValueError, RuntimeError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


@contextlib.contextmanager
def db_site() -> Iterator[Site]:
    """Start everything (see the module's docstring); yield the legs' endpoints."""
    from tether_db.testing import start_mariadb, start_postgres

    from tether.testing.cluster import start_cluster, start_node
    from tether.testing.trusted_clusters import (
        connection,
        create_trusted_cluster,
        invite,
        trusted_cluster_yaml,
    )

    if shutil.which("pgbench") is None or shutil.which("mysqlslap") is None:
        raise NotImplementedError("pgbench and mysqlslap are needed (postgresql, mariadb clients)")
    with contextlib.ExitStack() as stack:
        base = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tether-dbb-")))
        # the postgres OS user must reach its directories: not under a 0700 one of root's
        pg_base = pathlib.Path(tempfile.mkdtemp(prefix="tether-dbb-pg-"))
        stack.callback(shutil.rmtree, pg_base, True)
        os.chmod(pg_base, 0o755)
        client_ca, client_cert, client_key = _client_ca(base / "client")
        clusters = {}
        for name in ("root", "leaf"):
            cluster = start_cluster(base / name, name, config={"log": LOG})
            stack.callback(cluster.stop)
            clusters[name] = cluster
            (base / f"{name}-role.yaml").write_text(ROLE)
            cluster.tetherctl("create", str(base / f"{name}-role.yaml"))
        root, leaf = clusters["root"], clusters["leaf"]
        create_trusted_cluster(
            leaf, trusted_cluster_yaml(root, invite(root), role_map={"dbbench": ["dbbench"]})
        )
        root.add_user(BENCH_USER, BENCH_PASSWORD, roles=["access", "dbbench"], logins=["root"])
        root.login(BENCH_USER, BENCH_PASSWORD)
        postgres, mariadb, service_pids = {}, {}, {}
        for name, cluster in clusters.items():
            files = _signed(cluster, base / f"{name}-tls", client_ca)
            pg = stack.enter_context(
                start_postgres(
                    pg_base / name,
                    cert=files["crt"].read_bytes(),
                    key=files["key"].read_bytes(),
                    client_cas=files["cas"].read_bytes(),
                    server_name="localhost",
                )
            )
            pg.admin(f"CREATE DATABASE {PG_DATABASE} OWNER {DB_USER}")
            maria_dir = base / f"{name}-maria"
            maria_dir.mkdir()
            maria = stack.enter_context(
                start_mariadb(
                    maria_dir,
                    cert_file=files["crt"],
                    key_file=files["key"],
                    ca_file=files["cas"],
                    server_name="localhost",
                )
            )
            direct = Endpoint(pg.port, client_cert, client_key)
            subprocess.run(
                ["pgbench", "-i", "-q", "-s", str(PGBENCH_SCALE), direct.conninfo(PG_DATABASE)],
                capture_output=True,
                check=True,
                timeout=300,
            )
            postgres[f"direct_{name}"] = direct
            mariadb[f"direct_{name}"] = Endpoint(maria.port, client_cert, client_key)
            databases = [
                {"name": f"{name}-pg", "protocol": "postgres", "uri": f"{LOOPBACK}:{pg.port}",
                 "tls": {"server_name": "localhost"}},
                {"name": f"{name}-maria", "protocol": "mysql", "uri": f"{LOOPBACK}:{maria.port}",
                 "tls": {"server_name": "localhost"}},
            ]  # fmt: skip
            service = start_node(
                cluster,
                base / f"{name}-db-service",
                f"{name}-db-service",
                roles="db",
                ssh_service={"enabled": False},
                config={"db_service": {"enabled": True, "databases": databases}, "log": LOG},
            )
            stack.callback(service.stop)
            service_pids[name] = service.process.pid
            _wait(f"{name}'s database service heartbeat", functools.partial(_serves_two, cluster))
        _wait("the leaf's tunnel to the root", lambda: connection(root) == "online")
        home = root.user_home(BENCH_USER)
        pids: dict[str, int] = {}
        for leg, cluster_flag in (("local", None), ("leaf", "leaf")):
            where = "root" if leg == "local" else "leaf"
            port, pid = _tunnel(stack, home, f"{where}-pg", cluster_flag)
            postgres[leg] = Endpoint(port)
            if leg == "leaf":
                pids["tether proxy db (client)"] = pid
            port, _ = _tunnel(stack, home, f"{where}-maria", cluster_flag)
            mariadb[leg] = Endpoint(port)
        pids["root proxy"] = root.process.pid
        pids["leaf proxy"] = leaf.process.pid
        pids["leaf db service"] = service_pids["leaf"]
        # the leaf's databases are seen through the root once the leaf's heartbeat crossed
        _wait(
            "the leaf's database through the root",
            lambda: (
                subprocess.run(
                    ["psql", "-X", "-At", postgres["leaf"].conninfo(PG_DATABASE), "-c", "select 1"],
                    capture_output=True,
                    timeout=30,
                    check=False,
                ).returncode
                == 0
            ),
        )
        yield Site(
            postgres={
                "direct": postgres["direct_leaf"],
                "local": postgres["local"],
                "leaf": postgres["leaf"],
            },
            mariadb={
                "direct": mariadb["direct_leaf"],
                "local": mariadb["local"],
                "leaf": mariadb["leaf"],
            },
            leaf_pids=pids,
        )


def _serves_two(cluster: RunningCluster) -> bool:
    """Whether the cluster lists its database service's two databases yet."""
    return len(json.loads(cluster.tetherctl("get", "db", "-f", "json").stdout)) == 2
