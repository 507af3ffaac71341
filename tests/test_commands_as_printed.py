"""What a Teleport user types works, and every command Tether prints runs as printed.

Issue 16, "Commands that work as printed": the sign-up and login lines of ``users add`` and
``signup``, the ``tetherd start`` line of ``tokens add``, ``tether login`` without a port
(443 and 3080 at once), messages that say what failed where, ``tether login LEAF`` on a valid
login, the ``TETHER_*`` environment variables, and tokens kept in files. Real daemons on
loopback addresses, the real programs; a password prompt is answered on a real terminal.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tether.datadir import PROCESS_FILE
from tether.testing.cluster import (
    RunningCluster,
    run_cli,
    start_cluster,
    start_node,
    stop_process,
    wait_for,
)
from tether.testing.http import free_port, loopback_address
from tether.testing.terminal import run_in_terminal
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    trusted_cluster_yaml,
)

PASSWORD = "correct horse battery staple"


def printed_line(output: str, program: str) -> list[str]:
    """The one line of ``output`` that is a ``program`` command, split as a shell would."""
    lines = [line for line in output.splitlines() if line.startswith(f"{program} ")]
    assert len(lines) == 1, output
    return shlex.split(lines[0])


def run_printed(
    argv: list[str], *, env: Mapping[str, str], answers: Mapping[bytes, str]
) -> tuple[int, str]:
    """Run a printed ``tether``/``tetherctl``/``tetherd`` command on a terminal of its own,
    answering the prompts in ``answers``; returns the exit status and everything it wrote."""
    program, *args = argv
    command = [sys.executable, "-m", f"tether.cli.{program}", *args]
    return run_in_terminal(command, env={**os.environ, **env}, answers=answers)


def status_of(cluster: RunningCluster, user: str, **env: str) -> dict[str, Any]:
    active: dict[str, Any] = json.loads(
        cluster.tether(user, "status", "--format=json", env=env).stdout
    )["active"]
    return active


def profile_json(cluster: RunningCluster, user: str) -> dict[str, Any]:
    home = cluster.user_home(user)
    proxy = (home / "current-profile").read_text().strip()
    data: dict[str, Any] = json.loads(
        (home / "keys" / proxy.replace(":", "_") / "profile.json").read_text()
    )
    return data


# --- printed commands ----------------------------------------------------------------------


def test_new_user_runs_the_printed_signup_and_login_commands(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    added = cluster.tetherctl("users", "add", "hana", "--roles=access", "--logins=hana")
    signup = printed_line(added.stdout, "tether")
    assert signup[:2] == ["tether", "signup"]
    assert f"--proxy={cluster.proxy_addr}" in signup
    assert f"--ca-pin={cluster.ca_pin}" in signup

    env = {"TETHER_HOME": str(cluster.user_home("hana"))}
    status, said = run_printed(signup, env=env, answers={b"New password:": PASSWORD})
    assert status == 0, said
    login = printed_line(said, "tether")
    assert login == [
        "tether",
        "login",
        f"--proxy={cluster.proxy_addr}",
        "--user=hana",
        f"--ca-pin={cluster.ca_pin}",
    ]

    status, said = run_printed(login, env=env, answers={b"Password:": PASSWORD})
    assert status == 0, said
    assert "Logged in as:       hana" in said


def test_admin_adds_a_node_token_and_the_printed_tetherd_start_joins_the_node(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    cluster = tether_cluster
    added = cluster.tetherctl("tokens", "add", "--type=node", "--ttl=5m").stdout
    start = printed_line(added, "tetherd")
    token = next(arg.split("=", 1)[1] for arg in start if arg.startswith("--token="))
    listed = json.loads(cluster.tetherctl("tokens", "ls", "--format=json").stdout)
    (mine,) = [t for t in listed if t["metadata"]["name"] == token]  # among the module's others
    assert mine["spec"]["roles"] == ["node"]
    assert start == [
        "tetherd",
        "start",
        "--roles=node",
        f"--token={token}",
        f"--proxy={cluster.proxy_addr}",
        f"--ca-pin={cluster.ca_pin}",
    ]
    assert f"{cluster.proxy_addr} must be reachable from the new host" in added

    # a command meant for another host, run here: only the data directory is its own (as
    # root, the default is /var/lib/tether, which this machine's daemons may use)
    data_dir = tmp_path / "new-host"
    log = (tmp_path / "tetherd.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tether.cli.tetherd", *start[1:], f"--data-dir={data_dir}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: (data_dir / PROCESS_FILE).exists(), "the new node to start", 60)
        nodes = json.loads(cluster.tetherctl("get", "node", "--format=json").stdout)
        host_id = (data_dir / "host_uuid").read_text().strip()
        assert host_id in {doc["metadata"]["name"] for doc in nodes}
    finally:
        stop_process(process)
        log.close()


def test_user_logs_in_again_with_the_bare_tether_login_that_hints_print(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    cluster.add_user("ivan", PASSWORD, logins=("ivan",))
    cluster.login("ivan", PASSWORD)
    env = {"TETHER_HOME": str(cluster.user_home("ivan"))}
    status, said = run_printed(["tether", "login"], env=env, answers={b"Password:": PASSWORD})
    assert status == 0, said
    assert f"Profile URL:        https://{cluster.proxy_addr}" in said
    assert "Logged in as:       ivan" in said
    assert profile_json(cluster, "ivan")["ca_pin"] == cluster.ca_pin


def test_login_without_any_proxy_says_how_to_give_one(tmp_path: pathlib.Path) -> None:
    failed = run_cli("tether", "login", env={"TETHER_HOME": str(tmp_path)}, check=False)
    assert failed.returncode == 1
    assert failed.stderr == (
        "ERROR: no proxy to log in to (pass --proxy=HOST[:PORT], or set TETHER_PROXY)\n"
    )


# --- tether login --proxy=HOST -------------------------------------------------------------


def test_login_to_a_host_without_a_port_finds_the_proxy_on_3080(tmp_path: pathlib.Path) -> None:
    host = loopback_address()
    cluster = start_cluster(
        tmp_path / "c", "main", config={"proxy_service": {"listen_addr": f"{host}:3080"}}
    )
    try:
        cluster.add_user("jan", PASSWORD, logins=("jan",))
        login = cluster.tether(
            "jan",
            "login",
            f"--proxy={host}",
            "--user=jan",
            "--password-stdin",
            f"--ca-pin={cluster.ca_pin}",
            input=PASSWORD + "\n",
        )
        assert f"Profile URL:        https://{host}:3080" in login.stdout
    finally:
        cluster.stop()


def test_login_to_a_host_where_no_proxy_answers_names_both_ports(tmp_path: pathlib.Path) -> None:
    host = loopback_address()
    failed = run_cli(
        "tether",
        "login",
        f"--proxy={host}",
        "--password-stdin",
        env={"TETHER_HOME": str(tmp_path)},
        input="x\n",
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr == (
        f"ERROR: no proxy answers at {host}:443 (Connection refused) or {host}:3080 "
        "(Connection refused) (check the host name, or give the port the proxy listens on: "
        f"--proxy={host}:PORT)\n"
    )


def test_login_to_a_closed_port_says_refused_without_pointing_at_the_users_machine(
    tmp_path: pathlib.Path,
) -> None:
    port = free_port()
    failed = run_cli(
        "tether",
        "login",
        f"--proxy=127.0.0.1:{port}",
        "--password-stdin",
        env={"TETHER_HOME": str(tmp_path)},
        input="x\n",
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith(
        f"ERROR: cannot connect to 127.0.0.1:{port}: Connection refused"
    )
    assert "sub-exception" not in failed.stderr
    assert "tetherd is running" not in failed.stderr
    assert len(failed.stderr.splitlines()) == 1


@pytest.fixture
def not_tls() -> Iterator[str]:
    """An address where something answers that is not TLS (an SSH server's greeting)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                conn.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_login_to_a_port_that_speaks_no_tls_says_the_handshake_failed(
    not_tls: str, tmp_path: pathlib.Path
) -> None:
    failed = run_cli(
        "tether",
        "login",
        f"--proxy={not_tls}",
        "--password-stdin",
        "--insecure",
        env={"TETHER_HOME": str(tmp_path)},
        input="x\n",
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"ERROR: the TLS handshake with {not_tls} failed: "), (
        failed.stderr
    )
    assert "it should be the port of a Tether proxy" in failed.stderr
    assert "tetherd is running" not in failed.stderr


# --- environment variables -----------------------------------------------------------------


def test_tether_proxy_and_tether_user_stand_for_the_login_flags(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    cluster.add_user("kim", PASSWORD, logins=("kim",))
    env = {"TETHER_PROXY": cluster.proxy_addr, "TETHER_USER": "kim"}
    login = cluster.tether(
        "kim",
        "login",
        "--password-stdin",
        f"--ca-pin={cluster.ca_pin}",
        input=PASSWORD + "\n",
        env=env,
    )
    assert "Logged in as:       kim" in login.stdout


def test_help_shows_the_environment_variables_tsh_users_know() -> None:
    top = run_cli("tether", "--help").stdout
    for name in ("TETHER_HOME", "TETHER_PROXY", "TETHER_USER", "TETHER_CLUSTER", "TETHER_LOGIN"):
        assert name in top
    login = " ".join(run_cli("tether", "login", "--help").stdout.split())
    assert "[env var: TETHER_PROXY]" in login
    assert "[env var: TETHER_USER]" in login
    assert "TETHER_CLUSTER" in login


# --- token files -----------------------------------------------------------------------------


def test_node_joins_with_its_token_in_a_file(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    token = json.loads(
        tether_cluster.tetherctl("tokens", "add", "--type=node", "--format=json").stdout
    )["token"]
    token_file = tmp_path / "node.token"
    token_file.write_text(token + "\n")
    node = start_node(tether_cluster, tmp_path / "node", "filed-node", token=str(token_file))
    try:
        assert "joined cluster main" in node.log_text()
    finally:
        node.stop()


def test_a_missing_token_file_is_named_in_one_line(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    missing = tmp_path / "no-such.token"
    failed = run_cli(
        "tetherd",
        "start",
        "--roles=node",
        f"--token={missing}",
        f"--proxy={tether_cluster.proxy_addr}",
        f"--ca-pin={tether_cluster.ca_pin}",
        f"--data-dir={tmp_path / 'data'}",
        check=False,
    )
    assert failed.returncode == 1
    assert (
        f"ERROR: the join token: cannot read the file {missing}: No such file or directory"
        in failed.stderr
    )


# --- a root and a leaf -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def root_and_leaf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """A root with ``lea`` (role access) and a leaf that trusts it, its invitation token kept
    in a file that the trusted_cluster names."""
    directory = tmp_path_factory.mktemp("trust")
    root = start_cluster(directory / "root", "root")
    leaf = None
    try:
        leaf = start_cluster(directory / "leaf", "leaf")
        root.add_user("lea", PASSWORD, logins=("lea",))
        token_file = leaf.directory / "invitation.token"
        token_file.write_text(invite(root) + "\n")
        create_trusted_cluster(leaf, trusted_cluster_yaml(root, str(token_file)))
        wait_for(lambda: connection(root) == "online", "the leaf to come online")
        yield root, leaf
    finally:
        if leaf is not None:
            leaf.stop()
        root.stop()


def test_leaf_admin_keeps_the_invitation_token_in_a_file(
    root_and_leaf: tuple[RunningCluster, RunningCluster],
) -> None:
    root, leaf = root_and_leaf
    assert connection(root) == "online"
    (stored,) = json.loads(
        leaf.tetherctl("get", "tc/root", "--with-secrets", "--format=json").stdout
    )
    assert not stored["spec"]["token"].startswith("/")


def test_a_trusted_cluster_naming_a_missing_token_file_is_refused_in_one_line(
    root_and_leaf: tuple[RunningCluster, RunningCluster], tmp_path: pathlib.Path
) -> None:
    root, leaf = root_and_leaf
    missing = tmp_path / "gone.token"
    failed = create_trusted_cluster(
        leaf, trusted_cluster_yaml(root, str(missing)), "--force", check=False
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith(
        f"ERROR: trusted_cluster 'root': spec.token: cannot read the file {missing}: "
        "No such file or directory"
    )
    assert len(failed.stderr.splitlines()) == 1


def test_user_switches_to_the_leaf_without_a_password_while_logged_in(
    root_and_leaf: tuple[RunningCluster, RunningCluster],
) -> None:
    root, _ = root_and_leaf
    root.login("lea", PASSWORD)
    switched = root.tether("lea", "login", f"--proxy={root.proxy_addr}", "leaf", input="")
    assert "Cluster:            leaf" in switched.stdout
    assert status_of(root, "lea")["cluster"] == "leaf"

    back = root.tether("lea", "login", "root", input="")
    assert "Cluster:            root" in back.stdout
    by_env = root.tether("lea", "login", input="", env={"TETHER_CLUSTER": "leaf"})
    assert "Cluster:            leaf" in by_env.stdout

    unknown = root.tether("lea", "login", "nowhere", input="", check=False)
    assert unknown.stderr == (
        "ERROR: cluster 'nowhere' not found (run `tether clusters` to see them)\n"
    )
    assert root.tether("lea", "clusters").returncode == 0  # the hint runs as printed


def test_a_refused_tunnel_is_logged_for_the_operator_without_the_users_hint(
    root_and_leaf: tuple[RunningCluster, RunningCluster],
) -> None:
    root, leaf = root_and_leaf
    # the root's admin removes the leaf: its agent, dialling again, is refused
    root.tetherctl("rm", "rc/leaf")

    def refusals() -> list[str]:
        return [
            line
            for line in root.log_text().splitlines()
            if "tunnel from" in line and "refused: certificate of" in line
        ]

    try:
        wait_for(refusals, "the root to log the refused tunnel")
        for line in refusals():
            assert line.endswith("is signed by a CA this cluster does not trust"), line
    finally:  # trust as the fixture made it, for the other tests of this module
        token_file = leaf.directory / "invitation.token"
        token_file.write_text(invite(root) + "\n")
        create_trusted_cluster(leaf, trusted_cluster_yaml(root, str(token_file)), "--force")
        wait_for(lambda: connection(root) == "online", "the leaf to come online again")


def test_a_node_with_an_unknown_token_is_told_the_command_that_makes_one(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    cluster = tether_cluster
    failed = run_cli(
        "tetherd",
        "start",
        "--roles=node",
        "--token=0123456789abcdef0123456789abcdef",
        f"--proxy={cluster.proxy_addr}",
        f"--ca-pin={cluster.ca_pin}",
        f"--data-dir={tmp_path / 'data'}",
        check=False,
    )
    assert failed.returncode == 1
    hint = re.search(r"create a new one with `([^`]*)`", failed.stderr)
    assert hint is not None, failed.stderr
    assert hint.group(1) == "tetherctl tokens add --type=node"
    # as printed, on the auth host, where TETHER_CONFIG names the daemon's configuration
    made = run_cli(*shlex.split(hint.group(1)), env={"TETHER_CONFIG": str(cluster.config_path)})
    assert "tetherd start --roles=node" in made.stdout


def test_tether_login_and_tether_cluster_choose_the_login_and_cluster_of_tether_ssh(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    cluster = tether_cluster
    node = start_node(cluster, tmp_path / "node", "env-node")
    try:
        cluster.add_user("lou", PASSWORD, logins=("lou",))
        cluster.login("lou", PASSWORD)

        def ssh(**env: str) -> subprocess.CompletedProcess[str]:
            return cluster.tether("lou", "ssh", "env-node", "true", env=env, check=False)

        wait_for(lambda: "not found" not in ssh().stderr, "the node to be listed")
        refused = ssh(TETHER_LOGIN="nobody")
        assert refused.returncode == 255
        # the login from the environment, the node by its name (not its host id)
        assert refused.stderr.startswith("ERROR: env-node refused login 'nobody': "), refused.stderr
        elsewhere = ssh(TETHER_CLUSTER="elsewhere")
        assert "'elsewhere'" in elsewhere.stderr
    finally:
        node.stop()
