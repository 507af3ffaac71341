"""Database access as the guide's users get it, with real processes: a root user reaches a
PostgreSQL and a MariaDB database served in a leaf cluster, through the root's proxy, the
leaf's tunnel, the leaf's proxy and the database service's own tunnel, with real clients.

Root cluster ``root`` with ``alice`` (db_users alice, db_names shop) and ``bob`` (db_users
bob, db_names hr), both ``access``; leaf cluster ``leaf`` mapping ``access`` to ``dbuser``,
whose rules are the guide's "Sharing user traits" ones (``{{internal.db_users}}``,
``{{internal.db_names}}``) on ``env=dev`` databases. The leaf's database service joins with a
``db`` token and serves ``shop-pg`` and ``shop-maria`` (``env=dev``) and ``vault-pg``
(``env=prod``, out of reach). The two database servers are private instances set up as
``docs/databases.md`` says, with the files ``tetherctl auth sign --format=db`` wrote. A user
of the leaf itself (``carol``) reaches the same databases with no trusted cluster on the way.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import attrs
import pytest
from tether_db.testing import MariaDB, PostgresServer, start_mariadb, start_postgres

from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    start_cluster,
    start_node,
    stop_process,
    wait_for,
)
from tether.testing.terminal import run_in_terminal
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    trusted_cluster_yaml,
)

pytestmark = pytest.mark.skipif(
    shutil.which("psql") is None or shutil.which("mariadb") is None,
    reason="needs the psql and mariadb clients",
)

PASSWORD = "correct horse battery staple"

DBUSER_ROLE = """\
kind: role
version: v7
metadata:
  name: dbuser
spec:
  allow:
    db_labels: {env: dev}
    db_users: ["{{internal.db_users}}"]
    db_names: ["{{internal.db_names}}"]
"""


@attrs.frozen
class Site:
    root: RunningCluster
    leaf: RunningCluster
    service: RunningNode
    postgres: PostgresServer
    mariadb: MariaDB

    def tether(self, user: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.root.tether(user, *args, **kwargs)  # type: ignore[arg-type]


def _signed(leaf: RunningCluster, directory: pathlib.Path) -> dict[str, bytes]:
    """The database server's TLS files, written by the leaf's admin as the docs say."""
    directory.mkdir(parents=True)
    prefix = directory / "server"
    leaf.tetherctl(
        "auth", "sign", "--format=db", "--host=localhost,127.0.0.1", f"--out={prefix}", "--ttl=24h"
    )
    return {
        suffix: (directory / f"server.{suffix}").read_bytes() for suffix in ("crt", "key", "cas")
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("db-through-leaf")
    root = start_cluster(directory / "root", "root")
    leaf = start_cluster(directory / "leaf", "leaf")
    service: RunningNode | None = None
    # the postgres OS user must reach its directory, which pytest's (root's, 0700) hide
    pg_dir = pathlib.Path(tempfile.mkdtemp(prefix="tether-pg-"))
    try:
        files = _signed(leaf, directory / "tls")
        with (
            start_postgres(
                pg_dir,
                cert=files["crt"],
                key=files["key"],
                client_cas=files["cas"],
                server_name="localhost",
            ) as postgres,
            start_mariadb_from(directory / "maria", files) as mariadb,
        ):
            postgres.admin("CREATE DATABASE shop OWNER alice")
            postgres.admin("CREATE DATABASE hr OWNER bob")
            (directory / "dbuser.yaml").write_text(DBUSER_ROLE)
            leaf.tetherctl("create", str(directory / "dbuser.yaml"))
            create_trusted_cluster(
                leaf, trusted_cluster_yaml(root, invite(root), role_map={"access": ["dbuser"]})
            )
            wait_for(lambda: connection(root) == "online", "the leaf's tunnel")
            for user, db_name in (("alice", "shop"), ("bob", "hr")):
                root.tetherctl(
                    "users", "add", user, "--roles=access", f"--logins={user}",
                    f"--traits=db_users={user},db_names={db_name}", "--password-stdin",
                    input=PASSWORD + "\n",
                )  # fmt: skip
                root.login(user, PASSWORD)
            databases = [
                {"name": "shop-pg", "protocol": "postgres", "uri": f"127.0.0.1:{postgres.port}",
                 "static_labels": {"env": "dev"}, "tls": {"server_name": "localhost"}},
                {"name": "shop-maria", "protocol": "mysql", "uri": f"127.0.0.1:{mariadb.port}",
                 "static_labels": {"env": "dev"}, "tls": {"server_name": "localhost"}},
                {"name": "vault-pg", "protocol": "postgres", "uri": f"127.0.0.1:{postgres.port}",
                 "static_labels": {"env": "prod"}, "tls": {"server_name": "localhost"}},
            ]  # fmt: skip
            service = start_node(
                leaf,
                directory / "db-service",
                "db-service",
                roles="db",
                ssh_service={"enabled": False},
                config={"db_service": {"enabled": True, "databases": databases}},
            )
            wait_for(
                lambda: len(json.loads(leaf.tetherctl("get", "db", "-f", "json").stdout)) == 3,
                "the database service's first heartbeat",
            )
            yield Site(root, leaf, service, postgres, mariadb)
    finally:
        if service is not None:
            service.stop()
        leaf.stop()
        root.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


def start_mariadb_from(directory: pathlib.Path, files: dict[str, bytes]) -> object:
    directory.mkdir(parents=True)
    for suffix, content in files.items():
        (directory / f"server.{suffix}").write_bytes(content)
    return start_mariadb(
        directory,
        cert_file=directory / "server.crt",
        key_file=directory / "server.key",
        ca_file=directory / "server.cas",
        server_name="localhost",
    )


# --- listing --------------------------------------------------------------------------------


def test_root_user_lists_the_leafs_databases_with_the_users_their_roles_allow(site: Site) -> None:
    table = site.tether("alice", "db", "ls", "--cluster=leaf").stdout
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert set(rows) == {"shop-maria", "shop-pg"}  # vault-pg's labels are out of reach
    assert "PostgreSQL" in rows["shop-pg"] and "env=dev" in rows["shop-pg"]
    assert rows["shop-pg"].rstrip().endswith("alice")
    listed = json.loads(site.tether("bob", "db", "ls", "--cluster=leaf", "-f", "json").stdout)
    assert {d["metadata"]["name"]: d["status"]["allowed_users"] for d in listed} == {
        "shop-maria": ["bob"],
        "shop-pg": ["bob"],
    }


# --- PostgreSQL -----------------------------------------------------------------------------


def _tunnel(site: Site, user: str, name: str) -> tuple[subprocess.Popen[str], int]:
    """``tether proxy db --tunnel --cluster=leaf NAME`` in the background, and its port."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether.cli.tether",
            "proxy",
            "db",
            "--tunnel",
            "--cluster=leaf",
            name,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TETHER_HOME": str(site.root.user_home(user))},
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    found = re.search(r"on 127\.0\.0\.1:(\d+)", first)
    assert found, first + process.stdout.read()
    process.stdout.readline()  # "Use the following command..."
    return process, int(found.group(1))


def _psql(
    port: int, user: str, dbname: str, sql: str, *, sslmode: str = "disable"
) -> subprocess.CompletedProcess[str]:
    conninfo = f"host=127.0.0.1 port={port} user={user} dbname={dbname} sslmode={sslmode}"
    return subprocess.run(
        ["psql", "-X", "-At", conninfo, "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_root_user_reaches_leaf_postgres_with_psql_through_a_local_tunnel(site: Site) -> None:
    process, port = _tunnel(site, "alice", "shop-pg")
    try:
        ran = _psql(port, "alice", "shop", "select current_user, current_database()")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == "alice|shop"
        refused = _psql(port, "bob", "shop", "select 1")
        assert refused.returncode != 0
        assert "database user 'bob' is not allowed by roles dbuser" in refused.stderr
        other_db = _psql(port, "alice", "hr", "select 1")
        assert "database name 'hr' is not allowed by roles dbuser" in other_db.stderr
        # TLS asked of the local listener: it is plain (TLS is Tether's, to the proxy)
        insisting = _psql(port, "alice", "shop", "select 1", sslmode="require")
        assert insisting.returncode != 0
        assert "server does not support SSL, but SSL was required" in insisting.stderr
        assert _psql(port, "alice", "shop", "select 1").returncode == 0  # and it goes on
    finally:
        stop_process(process)  # type: ignore[arg-type]


def test_tether_db_connect_runs_psql_and_the_leaf_audits_each_query(site: Site) -> None:
    site.tether(
        "alice", "db", "login", "--cluster=leaf", "--db-user=alice", "--db-name=shop", "shop-pg"
    )
    ran = site.tether(
        "alice", "db", "connect", "--cluster=leaf", "shop-pg",
        input="select 'hello from the leaf';\n",
    )  # fmt: skip
    assert "hello from the leaf" in ran.stdout

    def audited() -> list[dict[str, object]]:
        found = site.leaf.tetherctl("audit", "search", "--type=db", "--format=json").stdout
        return [e for e in json.loads(found) if e.get("type") == "db.query"]

    wait_for(
        lambda: any("hello from the leaf" in str(e) for e in audited()), "the query's audit event"
    )
    event = next(e for e in audited() if "hello from the leaf" in str(e))
    assert event["user"] == "alice"
    assert event["cluster"] == "leaf"  # where it was recorded
    assert event["user_cluster"] == "root"  # where alice logged in
    assert event["db_service"] == "shop-pg"
    assert event["roles"] == ["dbuser"]


def test_ctrl_c_in_psql_cancels_the_running_query_and_the_session_goes_on(site: Site) -> None:
    # psql sends the cancel on a new connection to the local listener tether db connect
    # runs; it crosses the root and the leaf and reaches the session it was given for
    site.tether(
        "alice", "db", "login", "--cluster=leaf", "--db-user=alice", "--db-name=shop", "shop-pg"
    )
    env = {
        **os.environ,
        "TETHER_HOME": str(site.root.user_home("alice")),
        "PSQLRC": os.devnull,
        "PAGER": "cat",
        "TERM": "dumb",
    }
    argv = [sys.executable, "-m", "tether.cli.tether", "db", "connect", "--cluster=leaf", "shop-pg"]
    running = (
        "select count(*) from pg_stat_activity "
        "where query = 'select pg_sleep(60);' and state = 'active'"
    )

    def ctrl_c_once_it_runs() -> str:
        wait_for(lambda: site.postgres.admin(running).strip() == "1", "the query running")
        return "\x03"  # Ctrl-C

    status, seen = run_in_terminal(
        argv,
        env=env,
        script=[
            (b"shop=>", "select pg_sleep(60);"),
            (b"pg_sleep(60);", ctrl_c_once_it_runs),  # the terminal echoed the line
            (b"canceling statement due to user request", "select 'still connected' as answer;"),
            (b"(1 row)", "\\q"),  # the answer's row, not the echo of the question
        ],
    )
    assert status == 0, seen
    assert "canceling statement due to user request" in seen
    assert "\n still connected\n(1 row)" in seen


def test_a_database_out_of_the_roles_reach_is_not_found(site: Site) -> None:
    refused = site.tether("alice", "db", "connect", "--cluster=leaf", "vault-pg", check=False)
    assert refused.returncode != 0
    assert "database 'vault-pg' not found in cluster 'leaf'" in refused.stderr
    assert "tether db ls --cluster=leaf" in refused.stderr


# --- a cluster's own user ---------------------------------------------------------------------


def test_a_leaf_user_reaches_their_own_clusters_databases_with_tether_db_connect(
    site: Site,
) -> None:
    # no trusted cluster on the way: the leaf's proxy, the service's tunnel, the database
    site.leaf.tetherctl(
        "users", "add", "carol", "--roles=dbuser", "--logins=carol",
        "--traits=db_users=alice,db_names=shop", "--password-stdin", input=PASSWORD + "\n",
    )  # fmt: skip
    site.leaf.login("carol", PASSWORD)
    postgres = site.leaf.tether(
        "carol", "db", "connect", "--db-user=alice", "--db-name=shop", "shop-pg",
        input="select 'in the leaf as ' || current_user;\n",
    )  # fmt: skip
    assert "in the leaf as alice" in postgres.stdout
    mariadb = site.leaf.tether(
        "carol", "db", "connect", "--db-user=alice", "--db-name=shop", "shop-maria",
        input="select concat('in the leaf as ', current_user());\n",
    )  # fmt: skip
    assert "in the leaf as alice@" in mariadb.stdout
    refused = site.leaf.tether(
        "carol", "db", "connect", "--db-user=bob", "shop-pg", input="select 1;\n", check=False
    )
    assert "database user 'bob' is not allowed by roles dbuser" in refused.stderr


# --- MariaDB --------------------------------------------------------------------------------


def test_root_user_reaches_leaf_mariadb_with_tether_db_connect(site: Site) -> None:
    ran = site.tether(
        "alice", "db", "connect", "--cluster=leaf", "--db-user=alice", "--db-name=shop",
        "shop-maria", input="select concat('maria ', current_user());\n",
    )  # fmt: skip
    assert "maria alice@" in ran.stdout
    refused = site.tether(
        "bob", "db", "connect", "--cluster=leaf", "--db-user=alice", "shop-maria",
        input="select 1;\n", check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "database user 'alice' is not allowed by roles dbuser" in refused.stderr


def test_a_user_configures_a_gui_client_and_logs_out(site: Site) -> None:
    site.tether("bob", "db", "login", "--cluster=leaf", "--db-user=bob", "--db-name=hr", "shop-pg")
    shown = json.loads(
        site.tether("bob", "db", "config", "--cluster=leaf", "-f", "json", "shop-pg").stdout
    )
    assert shown["user"] == "bob" and shown["database"] == "hr" and shown["protocol"] == "postgres"
    assert shown["tunnel"] == "tether proxy db --tunnel --port=PORT shop-pg --cluster=leaf"
    logged_out = site.tether("bob", "db", "logout").stdout
    assert "Logged out of database 'shop-pg' (cluster 'leaf')." in logged_out
    after = json.loads(
        site.tether("bob", "db", "config", "--cluster=leaf", "-f", "json", "shop-pg").stdout
    )
    assert after["user"] is None
