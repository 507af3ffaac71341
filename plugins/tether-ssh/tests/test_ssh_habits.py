"""``tether ssh`` as an OpenSSH user types it: ``-l``, ``-o``, ``-N``, ``-R``, ``-D``, several
nodes at once, ``-d`` anywhere, and ssh's exit statuses (docs/ssh.md, section by section).

Real processes on 127.0.0.1: a cluster ``main`` whose own host is a node (``auth-node``,
listening on 127.0.0.1) and a node joined through the proxy's tunnel (``tunnel-node``), both
labelled ``env=dev``. Every command runs the real ``tether`` as a subprocess; the programs
behind the forwards are a real HTTP server and ``curl``. Sessions run as the real OS account
``visitor``, so the tests need root.
"""

from __future__ import annotations

import json
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler

import attrs
import pytest

from tether.testing.accounts import can_create_accounts
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    start_cluster,
    start_node,
    wait_for,
)
from tether.testing.http import free_port, serve_http

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]

LOGIN = "visitor"
PASSWORD = "correct horse battery staple"
ROLES = f"""
kind: role
version: v7
metadata: {{name: forwarder}}
spec:
  allow:
    logins: [{LOGIN}]
    node_labels: {{'*': '*'}}
  options:
    port_forwarding: true
    forward_agent: true
---
kind: role
version: v7
metadata: {{name: no-forwarding}}
spec:
  allow:
    logins: [{LOGIN}]
    node_labels: {{'*': '*'}}
  options:
    port_forwarding: false
---
kind: role
version: v7
metadata: {{name: direct-only}}
spec:
  allow:
    logins: [{LOGIN}]
    node_labels: {{via: direct}}
---
kind: role
version: v7
metadata: {{name: dev-viewer}}
spec:
  allow:
    node_labels: {{env: dev}}
"""
GREETING = b"hello from a service on this side\n"


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(GREETING)))
        self.end_headers()
        self.wfile.write(GREETING)

    def log_message(self, format: str, *args: object) -> None:
        pass


@attrs.frozen
class Site:
    cluster: RunningCluster
    tunnel_node: RunningNode

    def tether(self, user: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.cluster.tether(user, *args, check=False, **kwargs)

    def start(
        self, user: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """``tether ARGS`` left running (``-N``), its output captured."""
        return subprocess.Popen(
            [sys.executable, "-m", "tether.cli.tether", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TETHER_HOME": str(self.cluster.user_home(user)), **(env or {})},
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, os_user: pwd.struct_passwd) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("ssh-habits")
    cluster = start_cluster(
        directory / "main",
        "main",
        config={
            "nodename": "auth-node",
            "ssh_service": {
                "enabled": True,
                "listen_addr": "127.0.0.1:0",
                "labels": {"env": "dev", "via": "direct"},
            },
        },
    )
    node: RunningNode | None = None
    try:
        node = start_node(
            cluster, directory / "tunnel", "tunnel-node", labels={"env": "dev", "via": "tunnel"}
        )
        roles = directory / "roles.yaml"
        roles.write_text(ROLES)
        cluster.tetherctl("create", str(roles))
        cluster.add_user("alice", PASSWORD, roles=["forwarder"])
        cluster.add_user("bob", PASSWORD, roles=["no-forwarding"])
        cluster.add_user("carol", PASSWORD, roles=["direct-only", "dev-viewer"])
        for user in ("alice", "bob", "carol"):
            cluster.login(user, PASSWORD)
        wait_for(
            lambda: len(json.loads(cluster.tether("alice", "ls", "--format=json").stdout)) == 2,
            "both nodes to be listed",
        )
        yield Site(cluster, node)
    finally:
        if node is not None:
            node.stop()
        cluster.stop()


@pytest.fixture
def http_service() -> Iterator[int]:
    """A real HTTP server on this host (which is also the nodes' host): its port."""
    with serve_http(_Hello) as url:
        yield int(url.rsplit(":", 1)[1])


def _wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"tether exited {process.returncode}: {process.stderr.read()}")  # type: ignore[union-attr]
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, f"tether to listen on port {port}")


def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C, as a user ends ``tether ssh -N``; the exit status and what it said."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return process.returncode, err


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- Logins: -l and -o User -------------------------------------------------------------------


def test_user_picks_the_login_with_dash_l(site: Site) -> None:
    ran = site.tether("alice", "ssh", "-l", LOGIN, "tunnel-node", "whoami")
    assert (ran.returncode, ran.stdout) == (0, f"{LOGIN}\n"), ran.stderr
    # as in ssh, -l wins over LOGIN@ in the destination
    ran = site.tether("alice", "ssh", f"-l{LOGIN}", "root@auth-node", "whoami")
    assert (ran.returncode, ran.stdout) == (0, f"{LOGIN}\n"), ran.stderr


def test_user_picks_the_login_with_dash_o_user(site: Site) -> None:
    ran = site.tether("alice", "ssh", "-o", f"User={LOGIN}", "tunnel-node", "whoami")
    assert (ran.returncode, ran.stdout) == (0, f"{LOGIN}\n"), ran.stderr
    ran = site.tether("alice", "ssh", "-o", f"user {LOGIN}", "auth-node", "whoami")
    assert (ran.returncode, ran.stdout) == (0, f"{LOGIN}\n"), ran.stderr


# --- -o options -------------------------------------------------------------------------------


def test_an_unsupported_option_is_refused_by_name(site: Site) -> None:
    refused = site.tether("alice", "ssh", "-o", "ProxyJump=bastion", f"{LOGIN}@tunnel-node", "true")
    assert refused.returncode == 2
    assert "ssh option 'ProxyJump' is not supported by tether ssh" in refused.stderr
    assert "User, Port, ServerAliveInterval" in refused.stderr
    bad = site.tether("alice", "ssh", "-o", "ServerAliveInterval=soon", f"{LOGIN}@tunnel-node")
    assert bad.returncode == 2
    assert "option ServerAliveInterval: 'soon' is not a number of seconds" in bad.stderr


def test_dash_o_port_is_dash_p(site: Site) -> None:
    nodes = json.loads(site.tether("alice", "ls", "--format=json").stdout)
    port = next(n["addr"] for n in nodes if n["hostname"] == "auth-node").rsplit(":", 1)[1]
    ran = site.tether(
        "alice", "ssh", "-o", f"Port={port}", f"{LOGIN}@auth-node", "echo $SSH_CONNECTION"
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[-1] == port
    wrong = site.tether("alice", "ssh", "-o", "Port=1", f"{LOGIN}@auth-node", "true")
    assert wrong.returncode == 255
    assert (
        wrong.stderr == site.tether("alice", "ssh", "-p", "1", f"{LOGIN}@auth-node", "true").stderr
    )


def test_strict_host_key_checking_is_accepted_and_the_host_ca_still_decides(site: Site) -> None:
    for value in ("yes", "no", "accept-new"):
        ran = site.tether(
            "alice", "ssh", "-o", f"StrictHostKeyChecking={value}", f"{LOGIN}@tunnel-node", "true"
        )
        assert ran.returncode == 0, ran.stderr
    bad = site.tether("alice", "ssh", "-o", "StrictHostKeyChecking=maybe", f"{LOGIN}@tunnel-node")
    assert bad.returncode == 2


def test_request_tty_and_dash_t_decide_the_terminal_as_in_ssh(site: Site) -> None:
    forced = site.tether("alice", "ssh", "-o", "RequestTTY=force", f"{LOGIN}@tunnel-node", "tty")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith("/dev/pts/")
    assert site.tether("alice", "ssh", "-tt", f"{LOGIN}@tunnel-node", "tty").stdout.startswith(
        "/dev/pts/"
    )
    # one -t asks for a terminal only when there is one here, and says so, as ssh does
    once = site.tether("alice", "ssh", "-t", f"{LOGIN}@tunnel-node", "tty")
    assert once.returncode == 1
    assert once.stdout == "not a tty\n"
    assert "Pseudo-terminal will not be allocated because stdin is not a terminal" in once.stderr
    never = site.tether("alice", "ssh", "-o", "RequestTTY=no", f"{LOGIN}@tunnel-node", "tty")
    assert never.stdout == "not a tty\n"


def test_send_env_chooses_the_variables_sent(site: Site) -> None:
    env = {"LC_TETHER_TEST": "sent", "LANG": "C.UTF-8"}
    show = "echo ${LC_TETHER_TEST-unset} ${LANG-unset}"
    default = site.tether("alice", "ssh", f"{LOGIN}@tunnel-node", show, env=env)
    assert default.stdout == "sent C.UTF-8\n", default.stderr  # LANG and LC_*, as Debian's ssh
    removed = site.tether(
        "alice", "ssh", "-o", "SendEnv=-LC_*", f"{LOGIN}@tunnel-node", show, env=env
    )
    assert removed.stdout == "unset C.UTF-8\n", removed.stderr
    again = site.tether(
        "alice", "ssh", "-o", "SendEnv=-LC_* -LANG", "-o", "SendEnv LC_TETHER_TEST",
        f"{LOGIN}@tunnel-node", show, env=env,
    )  # fmt: skip
    assert again.stdout == "sent unset\n", again.stderr


def test_forward_agent_option_forwards_the_agent(site: Site, tmp_path: pathlib.Path) -> None:
    if shutil.which("ssh-agent") is None:
        pytest.skip("needs ssh-agent")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        key = tmp_path / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        env = {"SSH_AUTH_SOCK": str(sock)}
        wait_for(
            lambda: subprocess.run(
                ["ssh-add", str(key)], env={**os.environ, **env}, capture_output=True
            ).returncode == 0,
            "ssh-agent to take the key",
        )  # fmt: skip
        ran = site.tether(
            "alice", "ssh", "-o", "ForwardAgent=yes", f"{LOGIN}@tunnel-node", "ssh-add -l", env=env
        )
        assert ran.returncode == 0, ran.stderr
        assert "ED25519" in ran.stdout
        without = site.tether("alice", "ssh", f"{LOGIN}@tunnel-node", "ssh-add -l", env=env)
        assert without.returncode == 2  # ssh-add: no agent to talk to
    finally:
        agent.terminate()
        agent.wait()


def test_server_alive_interval_gives_up_on_a_node_that_stopped_answering(site: Site) -> None:
    node = site.tunnel_node.process
    start = time.monotonic()
    session = site.start(
        "alice", "ssh", "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2",
        f"{LOGIN}@tunnel-node", "echo started; sleep 60",
    )  # fmt: skip
    try:
        assert session.stdout is not None
        assert session.stdout.readline() == "started\n"
        node.send_signal(signal.SIGSTOP)  # alive, connected, and silent
        status, err = _stop_after(session, 30)
    finally:
        node.send_signal(signal.SIGCONT)
    assert status == 255, err
    assert "not responding to keepalive" in err
    assert time.monotonic() - start < 30


def _stop_after(process: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"tether did not give up within {timeout}s: {err}") from None
    return process.returncode, err


# --- Port forwarding: -L, -R, -D, -N -----------------------------------------------------------


def test_local_forward_option_with_dash_n_reaches_a_service(site: Site, http_service: int) -> None:
    port = free_port()
    process = site.start(
        "alice", "ssh", "-N", "-o", f"LocalForward={port} 127.0.0.1:{http_service}",
        f"{LOGIN}@tunnel-node",
    )  # fmt: skip
    try:
        _wait_listening(port, process)
        fetched = _curl(f"http://127.0.0.1:{port}/")
        assert fetched.stdout.encode() == GREETING, fetched.stderr
        assert process.poll() is None  # -N: still running, no command to end it
    finally:
        status, err = _stop(process)
    assert status == 130, err


def test_dash_n_with_a_command_is_a_usage_error(site: Site) -> None:
    refused = site.tether("alice", "ssh", "-N", f"{LOGIN}@tunnel-node", "uptime")
    assert refused.returncode == 2
    assert "-N runs no command" in refused.stderr


@pytest.mark.parametrize("flag", ["--socks5-hostname", "--socks5", "--socks4a", "--socks4"])
def test_dynamic_forward_is_a_socks_proxy_through_the_node(
    site: Site, http_service: int, flag: str
) -> None:
    port = free_port()
    process = site.start("alice", "ssh", "-N", "-D", str(port), f"{LOGIN}@tunnel-node")
    try:
        _wait_listening(port, process)
        host = "localhost" if "hostname" in flag or flag == "--socks4a" else "127.0.0.1"
        fetched = _curl(flag, f"127.0.0.1:{port}", f"http://{host}:{http_service}/")
        assert fetched.stdout.encode() == GREETING, fetched.stderr
    finally:
        _stop(process)


def test_dynamic_forward_option_is_refused_by_the_node_when_roles_forbid_forwarding(
    site: Site, http_service: int
) -> None:
    port = free_port()
    process = site.start(
        "bob", "ssh", "-N", "-o", f"DynamicForward=127.0.0.1:{port}", f"{LOGIN}@tunnel-node"
    )
    try:
        _wait_listening(port, process)
        fetched = _curl(
            "--socks5-hostname", f"127.0.0.1:{port}", f"http://localhost:{http_service}/"
        )
        assert fetched.returncode != 0
        assert fetched.stdout == ""
    finally:
        _, err = _stop(process)
    # bob's certificate does not permit port forwarding: his roles did not, at login
    assert f"channel open failed: localhost:{http_service}: administratively prohibited" in err


def test_remote_forward_lets_the_node_reach_a_service_on_this_side(
    site: Site, http_service: int
) -> None:
    port = free_port()
    ran = site.tether(
        "alice", "ssh", "-R", f"{port}:127.0.0.1:{http_service}", f"{LOGIN}@tunnel-node",
        f"curl --silent --max-time 20 http://127.0.0.1:{port}/",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.encode() == GREETING
    # the forward ended with the session
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_remote_forward_to_nothing_here_is_reported_and_closed_at_once(site: Site) -> None:
    port, nothing = free_port(), free_port()
    started = time.monotonic()
    ran = site.tether(
        "alice", "ssh", "-R", f"{port}:127.0.0.1:{nothing}", f"{LOGIN}@tunnel-node",
        f"curl --silent --max-time 20 http://127.0.0.1:{port}/ || echo failed",
    )  # fmt: skip
    assert (ran.returncode, ran.stdout) == (0, "failed\n"), ran.stderr
    assert f"connect to 127.0.0.1 port {nothing} failed: Connection refused" in ran.stderr
    assert time.monotonic() - started < 15  # the node's connection closed, not timed out


def test_remote_forward_on_any_port_reports_the_port_the_node_chose(
    site: Site, http_service: int
) -> None:
    process = site.start(
        "alice", "ssh", "-N", "-o", f"RemoteForward=0 127.0.0.1:{http_service}",
        f"{LOGIN}@tunnel-node",
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"allocated port (\d+) for remote forward to 127.0.0.1:(\d+)", line)
        assert found, line
        assert int(found.group(2)) == http_service
        fetched = _curl(f"http://127.0.0.1:{found.group(1)}/")
        assert fetched.stdout.encode() == GREETING, fetched.stderr
    finally:
        _stop(process)


def test_remote_forward_is_refused_when_roles_forbid_forwarding(
    site: Site, http_service: int
) -> None:
    port = free_port()
    ran = site.tether(
        "bob", "ssh", "-R", f"{port}:127.0.0.1:{http_service}", f"{LOGIN}@tunnel-node",
        f"curl --silent --max-time 5 http://127.0.0.1:{port}/ || echo unreachable",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "unreachable\n"
    assert f"remote port forwarding failed for listen port {port}" in ran.stderr


def test_remote_forward_on_a_privileged_port_needs_root(site: Site, http_service: int) -> None:
    ran = site.tether(
        "alice", "ssh", "-R", f"80:127.0.0.1:{http_service}", f"{LOGIN}@tunnel-node", "true"
    )
    assert ran.returncode == 0
    assert "remote port forwarding failed for listen port 80" in ran.stderr


# --- Several nodes at once --------------------------------------------------------------------


def test_labels_that_select_several_nodes_run_the_command_on_each(site: Site) -> None:
    ran = site.tether(
        "alice", "ssh", f"{LOGIN}@env=dev", "echo out; echo err >&2; echo -n last; exit 3"
    )
    assert ran.returncode == 3
    assert sorted(ran.stdout.splitlines()) == [
        "[auth-node] last",
        "[auth-node] out",
        "[tunnel-node] last",
        "[tunnel-node] out",
    ]
    assert sorted(ran.stderr.splitlines()) == ["[auth-node] err", "[tunnel-node] err"]


def test_exit_status_of_several_nodes_is_the_highest(site: Site) -> None:
    # the same machine twice: SSH_CONNECTION tells the direct node from the tunnelled one
    nodes = json.loads(site.tether("alice", "ls", "--format=json").stdout)
    port = next(n["addr"] for n in nodes if n["hostname"] == "auth-node").rsplit(":", 1)[1]
    command = f'case "$SSH_CONNECTION" in *" {port}") exit 4;; *) exit 1;; esac'
    assert site.tether("alice", "ssh", f"{LOGIN}@env=dev", command).returncode == 4


def test_a_node_that_refuses_is_named_and_the_others_still_run(site: Site) -> None:
    # carol sees both nodes, and may log in as visitor on the directly joined one only
    ran = site.tether("carol", "ssh", f"{LOGIN}@env=dev", "echo ran")
    assert ran.returncode == 255
    assert ran.stdout == "[auth-node] ran\n"
    (refusal,) = ran.stderr.splitlines()
    assert refusal.startswith("[tunnel-node] ERROR: ")
    assert "do not match the node_labels of roles direct-only" in refusal


@pytest.mark.parametrize(
    ("options", "command", "why"),
    [
        ((), (), "an interactive shell"),
        (("-N",), (), "-N"),
        (("-L", "9999:127.0.0.1:80"), ("true",), "port forwarding"),
    ],
    ids=["shell", "no-command", "forwarding"],
)
def test_a_shell_or_forwarding_on_several_nodes_is_refused_listing_them(
    site: Site, options: Sequence[str], command: Sequence[str], why: str
) -> None:
    refused = site.tether("alice", "ssh", *options, f"{LOGIN}@env=dev", *command)
    assert refused.returncode == 2
    assert f"env=dev selects 2 nodes (auth-node, tunnel-node): {why} needs one" in refused.stderr


# --- -d/--debug anywhere; exit statuses ---------------------------------------------------------


@pytest.mark.parametrize(
    "before", [("-d", "ssh"), ("--debug", "ssh"), ("ssh", "-d"), ("ssh", "--debug")]
)
def test_debug_goes_before_or_after_the_command_name(site: Site, before: Sequence[str]) -> None:
    ran = site.tether("alice", *before, f"{LOGIN}@tunnel-node", "echo done")
    assert (ran.returncode, ran.stdout) == (0, "done\n"), ran.stderr
    assert "DEBUG" in ran.stderr


def test_debug_after_the_node_belongs_to_the_remote_command(site: Site) -> None:
    ran = site.tether("alice", "ssh", f"{LOGIN}@tunnel-node", "ls", "-d", "/")
    assert (ran.returncode, ran.stdout) == (0, "/\n"), ran.stderr
    assert "DEBUG" not in ran.stderr


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (("-x", f"{LOGIN}@tunnel-node", "true"), 2),
        (("-L", "nonsense", f"{LOGIN}@tunnel-node", "true"), 2),
        (("-D", "http", f"{LOGIN}@tunnel-node", "true"), 2),
        (("-R", "1:2", f"{LOGIN}@tunnel-node", "true"), 2),
        ((f"{LOGIN}@nowhere", "true"), 255),
        (("root@tunnel-node", "true"), 255),
        ((f"{LOGIN}@tunnel-node", "exit 7"), 7),
        ((f"{LOGIN}@tunnel-node", "kill -TERM $$"), 128 + signal.SIGTERM),
    ],
    ids=["unknown-flag", "bad-L", "bad-D", "bad-R", "no-such-node", "login-denied", "exit-7",
         "killed"],
)  # fmt: skip
def test_exit_status_is_what_ssh_would_return(site: Site, args: Sequence[str], status: int) -> None:
    ran = site.tether("alice", "ssh", *args)
    assert ran.returncode == status, ran.stderr
