"""Several auth servers of one cluster on one PostgreSQL database, a proxy that knows them all,
and the probes a load balancer asks each auth server (``/healthz``, ``/readyz``).

Real ``tetherd`` processes on a database of their own on the local PostgreSQL (the
tether-postgres plugin's backend); an auth server is killed with SIGKILL, not stopped.
"""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import json
import os
import pathlib
import pwd
import shutil
import signal
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from tether import pki
from tether.node.join import join_cluster, load_identity, pending_join_key
from tether.testing.balancer import TCPBalancer
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    start_cluster,
    start_node,
    start_proxy,
    wait_for,
)
from tether.testing.postgres import SERVER, available, key_held, postgres_database, query
from tether.testing.roles import VISITOR_ROLE, core_registry
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    remote_status,
    trusted_cluster_yaml,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

PASSWORD = "correct horse battery staple"

ROLE_YAML = """\
kind: role
version: v5
metadata:
  name: visitor-{n}
spec:
  allow:
    logins: [visitor]
"""


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def started() -> Iterator[list[RunningCluster | RunningNode]]:
    """What a test starts, stopped at its end whatever happened."""
    running: list[RunningCluster | RunningNode] = []
    yield running
    for process in reversed(running):
        process.stop()


def _auth_server(
    directory: pathlib.Path, url: str, extra: dict[str, Any] | None = None
) -> RunningCluster:
    """An auth server of cluster ``main`` on the store at ``url``, without a proxy."""
    config = {"storage": {"url": url}, "proxy_service": {"enabled": False}, **(extra or {})}
    return start_cluster(directory, "main", config=config)


def _two_auth_servers_and_a_proxy(
    tmp_path: pathlib.Path,
    url: str,
    started: list[RunningCluster | RunningNode],
    extra: dict[str, Any] | None = None,
) -> tuple[RunningCluster, RunningCluster, RunningNode]:
    """auth-1 and auth-2 on the store at ``url``, and a proxy that knows both, auth-1 first."""
    first = _auth_server(tmp_path / "auth-1", url, extra)
    started.append(first)
    second = _auth_server(tmp_path / "auth-2", url, extra)
    started.append(second)
    proxy = start_proxy(
        first, tmp_path / "proxy", "proxy-1", auth_servers=[first.auth_addr, second.auth_addr]
    )
    started.append(proxy)
    return first, second, proxy


def _probe(cluster: RunningCluster, path: str) -> tuple[int, dict[str, Any]]:
    """GET ``path`` on the auth port as a load balancer does: no client certificate."""
    context = ssl.create_default_context(cafile=str(cluster.data_dir / "keys" / "tls_ca.crt"))
    context.check_hostname = False
    try:
        with urllib.request.urlopen(
            f"https://{cluster.auth_addr}{path}", context=context, timeout=10
        ) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def _login(cluster: RunningCluster, user: str, password: str) -> Any:
    return cluster.login(user, password, check=False)


def test_load_balancer_sees_an_auth_server_unready_while_its_store_is_unreachable(
    pg_url: str, tmp_path: pathlib.Path, started: list[RunningCluster | RunningNode]
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    with TCPBalancer([SERVER.rsplit("@", 1)[1]]) as relay:
        auth = _auth_server(tmp_path / "auth", f"postgresql://postgres@{relay.addr}/{database}")
        started.append(auth)
        assert _probe(auth, "/healthz") == (200, {"status": "ok"})
        assert _probe(auth, "/readyz") == (200, {"ready": True})

        relay.cut()  # PostgreSQL goes on running; this auth server cannot reach it
        wait_for(lambda: _probe(auth, "/readyz")[0] == 503, "readyz to answer 503")
        status, body = _probe(auth, "/readyz")
        assert status == 503 and body["ready"] is False
        assert "storage" in body["reason"], body
        assert _probe(auth, "/healthz") == (200, {"status": "ok"})  # the process still serves

        relay.restore()
        wait_for(lambda: _probe(auth, "/readyz") == (200, {"ready": True}), "readyz again")
        assert "name: access" in auth.tetherctl("get", "role/access").stdout
        # probes are not audited: a balancer asking every second would flood the log
        events = auth.tetherctl("audit", "search", "--format=json", "--limit=1000").stdout
        assert "readyz" not in events and "healthz" not in events


def test_second_auth_server_signs_with_the_cas_the_first_one_stored(
    pg_url: str, tmp_path: pathlib.Path, started: list[RunningCluster | RunningNode]
) -> None:
    first = _auth_server(tmp_path / "auth-1", pg_url)
    started.append(first)
    # nothing copied: the second finds the CAs in the store
    second = _auth_server(tmp_path / "auth-2", pg_url)
    started.append(second)
    assert second.ca_pin == first.ca_pin
    # and keeps a copy of them in its data directory, as the first one does
    copies = [pki.ClusterAuthorities.load(s.data_dir / "keys", "main") for s in (first, second)]
    assert copies[0] is not None and copies[1] is not None
    assert copies[0].fingerprints() == copies[1].fingerprints()


def test_auth_servers_started_at_once_create_one_set_of_cas(
    pg_url: str, tmp_path: pathlib.Path, started: list[RunningCluster | RunningNode]
) -> None:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        starting = [pool.submit(_auth_server, tmp_path / f"auth-{i}", pg_url) for i in range(3)]
        servers = [future.result() for future in starting]
    started.extend(servers)
    assert len({server.ca_pin for server in servers}) == 1


def _stored_ca_keys(pg_url: str) -> str:
    """The stored CA keys as the store holds them (the tether-postgres backend's table)."""
    return query(
        pg_url,
        "SELECT convert_from(value, 'UTF8') FROM tether_items "
        "WHERE key = convert_to('/ca_keys/cluster', 'UTF8')",
    )


def _new_key_file(path: pathlib.Path) -> str:
    """A key file as `openssl rand -base64 32 > PATH; chmod 600 PATH` makes one."""
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return str(path)


def test_ca_keys_in_the_store_are_sealed_with_the_key_file_every_auth_server_holds(
    pg_url: str, tmp_path: pathlib.Path, started: list[RunningCluster | RunningNode]
) -> None:
    sealed = {"auth_service": {"ca_keys_key_file": _new_key_file(tmp_path / "ca-keys.key")}}
    first = _auth_server(tmp_path / "auth-1", pg_url, sealed)
    started.append(first)
    stored = _stored_ca_keys(pg_url)
    assert "aes-256-gcm" in stored and "PRIVATE KEY" not in stored

    with pytest.raises(AssertionError, match="in the storage are encrypted"):
        _auth_server(tmp_path / "auth-2", pg_url)
    other = {"auth_service": {"ca_keys_key_file": _new_key_file(tmp_path / "other.key")}}
    with pytest.raises(AssertionError, match="do not open with"):
        _auth_server(tmp_path / "auth-3", pg_url, other)
    second = _auth_server(tmp_path / "auth-4", pg_url, sealed)
    started.append(second)
    assert second.ca_pin == first.ca_pin


def test_a_key_file_given_later_seals_the_ca_keys_stored_plain(
    pg_url: str, tmp_path: pathlib.Path
) -> None:
    first = _auth_server(tmp_path / "auth-1", pg_url)
    pin = first.ca_pin
    first.stop()
    assert "PRIVATE KEY" in _stored_ca_keys(pg_url)
    path = _new_key_file(tmp_path / "ca-keys.key")
    again = _auth_server(tmp_path / "auth-1", pg_url, {"auth_service": {"ca_keys_key_file": path}})
    try:
        assert again.ca_pin == pin
        stored = _stored_ca_keys(pg_url)
        assert "aes-256-gcm" in stored and "PRIVATE KEY" not in stored
    finally:
        again.stop()


def test_admin_rotates_the_key_file_one_auth_server_at_a_time(
    pg_url: str, tmp_path: pathlib.Path, started: list[RunningCluster | RunningNode]
) -> None:
    old = _new_key_file(tmp_path / "old.key")
    first = _auth_server(tmp_path / "auth-1", pg_url, {"auth_service": {"ca_keys_key_file": old}})
    second = _auth_server(tmp_path / "auth-2", pg_url, {"auth_service": {"ca_keys_key_file": old}})
    started.extend([first, second])
    sealed_with_old = _stored_ca_keys(pg_url)
    # every auth server gets the new file; the first one restarted with both reseals the keys
    new = _new_key_file(tmp_path / "new.key")
    rotating = {"ca_keys_key_file": new, "ca_keys_previous_key_files": [old]}
    first.stop()
    first = _auth_server(tmp_path / "auth-1", pg_url, {"auth_service": rotating})
    started.append(first)
    assert "sealed with the previous key file" in first.log_text()
    resealed = _stored_ca_keys(pg_url)
    assert resealed != sealed_with_old and "PRIVATE KEY" not in resealed
    second.stop()  # its turn: it now opens them with the new key alone
    second = _auth_server(tmp_path / "auth-2", pg_url, {"auth_service": {"ca_keys_key_file": new}})
    started.append(second)
    assert first.ca_pin == second.ca_pin
    # the old file no longer opens them: a copy of it stolen later is worth nothing
    with pytest.raises(AssertionError, match=r"do not open with .*old\.key"):
        _auth_server(tmp_path / "auth-3", pg_url, {"auth_service": {"ca_keys_key_file": old}})
    # previous key files without a current one is a mistake, said so at start
    with pytest.raises(AssertionError, match="ca_keys_previous_key_files is set without"):
        _auth_server(
            tmp_path / "auth-4", pg_url, {"auth_service": {"ca_keys_previous_key_files": [old]}}
        )


def test_auth_server_refuses_a_data_dir_whose_cas_are_not_the_stores(
    pg_url: str, tmp_path: pathlib.Path, started: list[RunningCluster | RunningNode]
) -> None:
    # an auth server that ran alone on SQLite, pointed at a store another one created
    alone = start_cluster(tmp_path / "alone", "main", config={"proxy_service": {"enabled": False}})
    alone.stop()
    started.append(_auth_server(tmp_path / "auth-1", pg_url))
    with pytest.raises(AssertionError, match="are not those the storage holds"):
        start_cluster(
            tmp_path / "alone",
            "main",
            config={"storage": {"url": pg_url}, "proxy_service": {"enabled": False}},
        )


def test_logins_go_on_through_the_other_auth_server_when_one_is_killed(
    pg_url: str,
    tmp_path: pathlib.Path,
    started: list[RunningCluster | RunningNode],
) -> None:
    # heartbeats every 2 s, so that the node's next one after the kill comes soon
    often = {"auth_service": {"keep_alive_interval": "2s"}}
    first, second, proxy = _two_auth_servers_and_a_proxy(tmp_path, pg_url, started, often)
    cluster = first.through(proxy)
    cluster.add_user("alice", PASSWORD, roles=["access", "editor"])
    node = start_node(cluster, tmp_path / "node", "web-1")
    started.append(node)
    # a node in direct mode knows both auth servers itself
    direct = start_node(
        cluster,
        tmp_path / "direct",
        "db-1",
        tunnel=False,
        extra_args=[f"--auth-server={second.auth_addr}"],
    )
    started.append(direct)
    for name in ("web-1", "db-1"):
        wait_for(functools.partial(_listed, second, name), f"{name} to be listed")

    created: list[str] = []
    failures: list[str] = []
    killer = threading.Timer(0.2, first.stop, (signal.SIGKILL,))
    for n in range(12):
        if n == 4:  # auth-1 dies while this login is under way
            killer.start()
        login = _login(cluster, "alice", PASSWORD)
        if login.returncode != 0:
            failures.append(f"login {n}: {login.stderr}")
            continue
        role = tmp_path / f"visitor-{n}.yaml"
        role.write_text(ROLE_YAML.format(n=n))
        made = cluster.as_user("alice", "tetherctl", "create", str(role), check=False)
        if made.returncode == 0:
            created.append(f"visitor-{n}")
        else:
            failures.append(f"create {n}: {made.stderr}")

    killer.join()
    assert first.process.returncode == -signal.SIGKILL
    # at most the one request in flight when auth-1 died fails, and says why
    assert len(failures) <= 1, failures
    assert all("auth" in failure or "connection" in failure for failure in failures), failures
    assert len(created) >= 11
    roles = second.tetherctl("get", "roles").stdout
    for name in created:  # every acknowledged write is in the store
        assert f"name: {name}" in roles
    assert "web-1" in second.tetherctl("get", "nodes").stdout
    assert proxy.log_text().count(f"auth server https://{first.auth_addr} failed") == 1
    # the nodes go on reporting: web-1 through the proxy, which now asks auth-2, and db-1
    # to auth-2 itself
    for name in ("web-1", "db-1"):
        before = _node_entry(second, name)["metadata"]["expires"]
        wait_for(
            functools.partial(_heartbeat_since, second, name, before),
            f"{name}'s next heartbeat through auth-2",
        )
    assert direct.log_text().count(f"auth server https://{first.auth_addr} failed") == 1


def _listed(auth: RunningCluster, hostname: str) -> bool:
    return hostname in auth.tetherctl("get", "nodes").stdout


def _heartbeat_since(auth: RunningCluster, hostname: str, expires: str) -> bool:
    return _node_entry(auth, hostname)["metadata"]["expires"] != expires


def _node_entry(auth: RunningCluster, hostname: str) -> dict[str, Any]:
    listed = json.loads(auth.tetherctl("get", "nodes", "--format=json").stdout)
    (entry,) = [doc for doc in listed if doc["spec"]["hostname"] == hostname]
    return dict(entry)


def test_failed_logins_split_between_auth_servers_lock_the_user_at_the_limit(
    pg_url: str,
    tmp_path: pathlib.Path,
    started: list[RunningCluster | RunningNode],
) -> None:
    limits = {"auth_service": {"failed_login_limit": 4}}
    first = _auth_server(tmp_path / "auth-1", pg_url, limits)
    started.append(first)
    second = _auth_server(tmp_path / "auth-2", pg_url, limits)
    started.append(second)
    # each proxy asks another auth server first
    to_first = start_proxy(
        first, tmp_path / "proxy-1", "proxy-1", auth_servers=[first.auth_addr, second.auth_addr]
    )
    started.append(to_first)
    to_second = start_proxy(
        first, tmp_path / "proxy-2", "proxy-2", auth_servers=[second.auth_addr, first.auth_addr]
    )
    started.append(to_second)
    first.add_user("alice", PASSWORD)
    through: list[Callable[[str], Any]] = [
        lambda password: _login(first.through(to_first), "alice", password),
        lambda password: _login(first.through(to_second), "alice", password),
    ]
    for attempt in range(4):  # two wrong passwords at each auth server
        refused = through[attempt % 2]("wrong password")
        assert refused.returncode != 0 and "locked" not in refused.stderr, refused.stderr

    for login in through:
        locked = login(PASSWORD)
        assert locked.returncode != 0
        assert "too many failed logins: 'alice' is locked until" in locked.stderr


def _node_token(auth: RunningCluster) -> str:
    added = auth.tetherctl("tokens", "add", "--type=node", "--ttl=10m", "--format=json")
    return str(json.loads(added.stdout)["token"])


def test_nodes_join_through_the_other_auth_server_when_one_is_killed(
    pg_url: str,
    tmp_path: pathlib.Path,
    started: list[RunningCluster | RunningNode],
) -> None:
    first, second, proxy = _two_auth_servers_and_a_proxy(tmp_path, pg_url, started)
    cluster = first.through(proxy)
    token = _node_token(first)  # node tokens are used again until they expire

    def join(name: str, tunnel: bool) -> RunningNode:
        """A node joining with the token: through the proxy, or in direct mode to both auth
        servers, auth-1 first."""
        extra = [] if tunnel else [f"--auth-server={second.auth_addr}"]
        node = start_node(
            cluster, tmp_path / name, name, tunnel=tunnel, token=token, extra_args=extra
        )
        started.append(node)
        return node

    joined = [join("web-1", tunnel=True)]
    # auth-1 dies with web-2's join through the proxy in it: waiting in the database to
    # record that web-2 holds its host id
    web_2 = tmp_path / "web-2" / "data"
    web_2.mkdir(parents=True)
    (web_2 / "host_uuid").write_text("web-2-id\n")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with key_held(pg_url, "/host_ids/web-2-id") as waiting:
            joining = pool.submit(join, "web-2", True)
            wait_for(waiting, "web-2's join to wait in the database")
            first.stop(signal.SIGKILL)
        with pytest.raises(AssertionError) as refused:
            joining.result()
    assert first.process.returncode == -signal.SIGKILL
    message = str(refused.value)
    assert f"auth server https://{first.auth_addr} failed while handling the request" in message
    assert "try again" in message
    # the same host joins when started again, with the same token and host id: auth-1 died
    # before it recorded anything, auth-2 takes it
    joined.append(join("web-2", tunnel=True))
    # later joins, through the proxy or in direct mode, go to auth-2
    joined += [join("web-3", False), join("web-4", True), join("web-5", False)]
    for node in joined:  # auth-2 lists every node that joined
        wait_for(functools.partial(_listed, second, node.name), f"{node.name} to be listed")
    assert _node_entry(second, "web-2")["metadata"]["name"] == "web-2-id"
    for node in joined[2::2]:  # those in direct mode asked auth-1 first, then auth-2
        assert f"auth server {first.auth_addr} cannot be reached" in node.log_text()

    # the token is no key to a host id that joined through auth-1: a host with a copy of
    # web-1's id, joining with the same token through auth-2, is refused
    impostor = tmp_path / "impostor" / "data"
    impostor.mkdir(parents=True)
    (impostor / "host_uuid").write_text((tmp_path / "web-1" / "data" / "host_uuid").read_text())
    with pytest.raises(AssertionError, match="is held by node 'web-1'"):
        join("impostor", tunnel=True)
    web_1 = (tmp_path / "web-1" / "data" / "host_uuid").read_text().strip()
    assert _node_entry(second, "web-1")["metadata"]["name"] == web_1


def test_a_node_whose_join_answer_died_with_its_auth_server_joins_through_the_other(
    pg_url: str,
    tmp_path: pathlib.Path,
    started: list[RunningCluster | RunningNode],
) -> None:
    first, second, proxy = _two_auth_servers_and_a_proxy(tmp_path, pg_url, started)
    token = _node_token(first)
    data = tmp_path / "web-1" / "data"
    data.mkdir(parents=True)
    (data / "host_uuid").write_text("web-1-id\n")
    # web-1 sent its join to auth-1 with the key it keeps for it; auth-1 recorded that web-1
    # holds its id and died before the answer reached web-1 (the test drops the answer)
    key = pending_join_key(data / "host", "node")
    lost = functools.partial(
        join_cluster,
        first.auth_addr,
        token,
        host_id="web-1-id",
        hostname="web-1",
        addresses=["127.0.0.1", "localhost"],
        ca_pin=first.ca_pin,
        key=key,
    )
    trio.run(lost)
    first.stop(signal.SIGKILL)
    assert load_identity(data / "host") is None

    # started again, it joins through auth-2 with the same key: the id is its own
    node = start_node(
        first.through(proxy),
        tmp_path / "web-1",
        "web-1",
        tunnel=False,
        token=token,
        extra_args=[f"--auth-server={second.auth_addr}"],
    )
    started.append(node)
    wait_for(functools.partial(_listed, second, "web-1"), "web-1 to be listed")
    assert _node_entry(second, "web-1")["metadata"]["name"] == "web-1-id"
    saved = load_identity(data / "host")
    assert saved is not None
    assert pki.public_key_to_pem(saved.private_key.public_key()) == pki.public_key_to_pem(
        key.public_key()
    )
    assert not (data / "host" / "join_key.pem").exists()
    assert f"auth server {first.auth_addr} cannot be reached" in node.log_text()


def _leaf(
    directory: pathlib.Path, name: str, started: list[RunningCluster | RunningNode]
) -> RunningCluster:
    """Leaf cluster ``name`` on SQLite of its own, with node ``NAME-node`` and the guide's
    ``visitor`` role."""
    leaf = start_cluster(directory / name, name)
    started.append(leaf)
    started.append(start_node(leaf, directory / f"{name}-node", f"{name}-node"))
    role = directory / f"{name}-visitor.yaml"
    role.write_text(VISITOR_ROLE)
    leaf.tetherctl("create", str(role))
    return leaf


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH tools")
def test_leaves_join_and_stay_online_through_the_other_auth_server_when_one_is_killed(
    pg_url: str,
    tmp_path: pathlib.Path,
    started: list[RunningCluster | RunningNode],
    os_user: pwd.struct_passwd,
) -> None:
    # the root's keep-alive is short, so that the leaves' heartbeats come every 2 s
    often = {"auth_service": {"keep_alive_interval": "2s"}}
    first, second, proxy = _two_auth_servers_and_a_proxy(tmp_path, pg_url, started, often)
    root = first.through(proxy)
    root.add_user("alice", PASSWORD, roles=["access"], logins=["visitor"])
    root.login("alice", PASSWORD)
    # "steady": a leaf that trusted the root before auth-1 dies; "late": one whose handshake
    # auth-1 is handling when it dies, with an invitation made before
    steady = _leaf(tmp_path, "steady", started)
    create_trusted_cluster(steady, trusted_cluster_yaml(root, invite(root, ttl="5m")))
    wait_for(lambda: connection(second, "steady") == "online", "the leaf to come online")
    late = _leaf(tmp_path, "late", started)
    invitation = trusted_cluster_yaml(root, invite(root, ttl="5m"))

    # auth-1 dies with the late leaf's handshake in it: waiting in the database to store the
    # leaf's remote_cluster
    remote_cluster = core_registry().get("remote_cluster").key("late")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with key_held(pg_url, remote_cluster) as waiting:
            handshake = pool.submit(create_trusted_cluster, late, invitation, check=False)
            wait_for(waiting, "the handshake to wait in the database")
            first.stop(signal.SIGKILL)
        refused = handshake.result()
    assert refused.returncode != 0
    assert f"auth server https://{first.auth_addr} failed while handling the request" in (
        refused.stderr
    ), refused.stderr
    assert "try again" in refused.stderr, refused.stderr
    create_trusted_cluster(late, invitation)  # again, as the error says: through auth-2
    wait_for(lambda: connection(second, "late") == "online", "the late leaf to come online")
    assert proxy.log_text().count(f"auth server https://{first.auth_addr} failed") == 1

    def reach(leaf: str) -> tuple[int, str, str]:
        ssh = root.tether("alice", "ssh", f"--cluster={leaf}", f"visitor@{leaf}-node", "pwd")
        return ssh.returncode, ssh.stdout, ssh.stderr

    for leaf in ("steady", "late"):
        # both stay online: their heartbeats go on reaching the store, through auth-2
        before = remote_status(second, leaf)["last_heartbeat"]
        wait_for(
            lambda: remote_status(second, leaf)["last_heartbeat"] != before,  # noqa: B023
            f"{leaf}'s next heartbeat through auth-2",
        )
        assert connection(second, leaf) == "online"
        # and a root user reaches each leaf's node (the late one's once it trusts the root)
        wait_for(lambda: reach(leaf)[0] == 0, f"alice to reach {leaf}-node")  # noqa: B023
        code, out, err = reach(leaf)
        assert (code, out.strip()) == (0, os_user.pw_dir), err
    listed = json.loads(root.tether("alice", "clusters", "--format=json").stdout)
    leaves = {row["cluster_name"]: row["status"] for row in listed if row["cluster_type"] == "leaf"}
    assert leaves == {"steady": "online", "late": "online"}
