"""SSH access as users meet it: nodes join, ``tether ls`` lists them, the stock OpenSSH client
reaches them through the proxy with ``tether config``, and every refusal says why.

Real processes on 127.0.0.1: one cluster ``main`` (auth + proxy + a node in the same process),
a node in tunnel mode (joined through the proxy, no inbound port) and a node in direct mode
(joined to the auth service, listening on 127.0.0.1). Sessions run as the real OS account
``visitor`` created here, so the tests need root.
"""

from __future__ import annotations

import json
import os
import pathlib
import pwd
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import attrs
import pytest
from cryptography import x509

from tether.api import current_profile, profile_ssl_context
from tether.testing.accounts import can_create_accounts
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    run_cli,
    start_cluster,
    start_node,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client"),
]

LOGIN = "visitor"
PASSWORD = "correct horse battery staple"
DEV_ONLY = f"""
kind: role
version: v7
metadata:
  name: dev-only
spec:
  allow:
    logins: [{LOGIN}]
    node_labels: {{env: dev}}
---
kind: role
version: v7
metadata:
  name: prod-viewer
spec:
  allow:
    node_labels: {{env: prod}}
"""


@attrs.frozen
class Site:
    cluster: RunningCluster
    tunnel_node: RunningNode
    direct_node: RunningNode
    directory: pathlib.Path

    def ssh(self, user: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The stock OpenSSH client with the configuration ``tether config`` printed."""
        config = self.directory / f"ssh_config.{user}"
        config.write_text(self.cluster.tether(user, "config").stdout)
        return subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TETHER_HOME": str(self.cluster.user_home(user))},
            check=False,
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, os_user: pwd.struct_passwd) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("ssh-access")
    cluster = start_cluster(
        directory / "main",
        "main",
        config={
            "nodename": "auth-node",
            "ssh_service": {
                "enabled": True,
                "listen_addr": "127.0.0.1:0",
                "labels": {"env": "dev"},
                "commands": [{"name": "kernel", "command": ["uname", "-s"], "period": "1h"}],
            },
        },
    )
    nodes: list[RunningNode] = []
    try:
        nodes.append(
            start_node(cluster, directory / "tunnel", "tunnel-node", labels={"env": "dev"})
        )
        nodes.append(
            start_node(
                cluster, directory / "direct", "direct-node", tunnel=False, labels={"env": "prod"}
            )
        )
        cluster.add_user("alice", PASSWORD, roles=["access"], logins=[LOGIN])
        roles = directory / "roles.yaml"
        roles.write_text(DEV_ONLY)
        cluster.tetherctl("create", str(roles))
        cluster.add_user("bob", PASSWORD, roles=["dev-only", "prod-viewer"])
        for user in ("alice", "bob"):
            cluster.login(user, PASSWORD)
        yield Site(cluster, nodes[0], nodes[1], directory)
    finally:
        for node in nodes:
            node.stop()
        cluster.stop()


def _ls(site: Site, user: str, *args: str) -> list[dict[str, object]]:
    """The specs (hostname, addr) of the node resources ``tether ls --format=json`` prints."""
    listed = json.loads(site.cluster.tether(user, "ls", "--format=json", *args).stdout)
    assert all(n["kind"] == "node" for n in listed), listed
    return [dict(n["spec"]) for n in listed]


# --- joining -------------------------------------------------------------------------------


def test_node_joins_with_a_token_and_tether_ls_shows_it_with_labels(site: Site) -> None:
    table = site.cluster.tether("alice", "ls").stdout.splitlines()
    assert table[0].split() == ["Node", "Name", "Address", "Labels"]
    rows = {line.split()[0]: line for line in table[2:]}
    assert set(rows) == {"auth-node", "tunnel-node", "direct-node"}
    assert "⟵ Tunnel" in rows["tunnel-node"]
    assert "env=dev,kernel=Linux" in rows["auth-node"]
    assert "env=prod" in rows["direct-node"]
    direct = next(n for n in _ls(site, "alice") if n["hostname"] == "direct-node")
    assert str(direct["addr"]).startswith("127.0.0.1:")
    assert [n["hostname"] for n in _ls(site, "alice", "env=prod")] == ["direct-node"]


def test_tether_ls_selects_nodes_by_label_as_tether_ssh_does(site: Site) -> None:
    def listed(*selectors: str) -> list[object]:
        return sorted(n["hostname"] for n in _ls(site, "alice", *selectors))

    assert listed("env=p*") == ["direct-node"]
    assert listed("env=^(dev|prod)$") == ["auth-node", "direct-node", "tunnel-node"]
    assert listed("env=dev,kernel=Linux") == ["auth-node"]
    assert listed("env=dev", "kernel=Linux") == ["auth-node"]
    assert listed("env=*") == ["auth-node", "direct-node", "tunnel-node"]
    assert listed("env=staging") == []
    # tether ssh picks the very nodes tether ls listed for the same labels
    ran = site.cluster.tether("alice", "ssh", f"{LOGIN}@env=p*", "true")
    assert ran.returncode == 0
    refused = site.cluster.tether("alice", "ls", "prod", check=False)
    assert refused.returncode == 2
    assert "'prod' is not label=value" in refused.stderr


@pytest.mark.parametrize("tunnel", [True, False], ids=["through-proxy", "direct-to-auth"])
def test_node_with_a_wrong_token_is_refused(
    site: Site, tmp_path: pathlib.Path, tunnel: bool
) -> None:
    with pytest.raises(AssertionError, match="the token is unknown or expired"):
        start_node(site.cluster, tmp_path / "node", "intruder", tunnel=tunnel, token="not-a-token")


def test_node_with_an_expired_token_is_refused(site: Site, tmp_path: pathlib.Path) -> None:
    added = site.cluster.tetherctl("tokens", "add", "--type=node", "--ttl=1s", "--format=json")
    token = json.loads(added.stdout)["token"]
    time.sleep(1.5)
    with pytest.raises(AssertionError, match="the token is unknown or expired"):
        start_node(site.cluster, tmp_path / "node", "latecomer", token=token)


def test_user_sees_only_the_nodes_their_roles_reach(site: Site) -> None:
    assert sorted(n["hostname"] for n in _ls(site, "bob")) == [
        "auth-node",
        "direct-node",
        "tunnel-node",
    ]
    site.cluster.add_user("carol", PASSWORD, roles=["dev-only"])
    site.cluster.login("carol", PASSWORD)
    assert sorted(n["hostname"] for n in _ls(site, "carol")) == ["auth-node", "tunnel-node"]


# --- the stock OpenSSH client with `tether config` ------------------------------------------


@pytest.mark.parametrize("node", ["auth-node", "tunnel-node", "direct-node"])
def test_openssh_client_reaches_each_node_with_tether_config(
    site: Site, os_user: pwd.struct_passwd, node: str
) -> None:
    result = site.ssh("alice", f"{LOGIN}@{node}.main", "whoami; pwd; exit 3")
    assert result.returncode == 3, result.stderr
    assert result.stdout.split() == [LOGIN, os_user.pw_dir]


def test_openssh_refuses_a_node_whose_host_certificate_is_from_another_ca(
    site: Site, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(site.cluster.tether("alice", "config").stdout)
    known_hosts = next(site.cluster.user_home("alice").rglob("openssh_known_hosts"))
    saved = known_hosts.read_text()
    foreign = tmp_path / "foreign"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(foreign)], check=True)
    try:
        known_hosts.write_text(f"@cert-authority *.main {(tmp_path / 'foreign.pub').read_text()}")
        result = subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", f"{LOGIN}@tunnel-node.main", "true"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TETHER_HOME": str(site.cluster.user_home("alice"))},
            check=False,
        )
    finally:
        known_hosts.write_text(saved)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


# --- refusals, each with its reason -----------------------------------------------------------


def test_unknown_node_is_not_found_with_the_closest_names(site: Site) -> None:
    result = site.ssh("alice", f"{LOGIN}@tunnel-nod.main", "true")
    assert result.returncode == 255
    # the closest name comes first
    assert "node 'tunnel-nod' not found in cluster 'main'; did you mean tunnel-node" in (
        result.stderr
    )


def test_login_not_allowed_by_the_roles_is_denied_with_the_reason(site: Site) -> None:
    result = site.ssh("alice", "root@tunnel-node.main", "true")
    assert result.returncode == 255
    # the certificate's principals are the logins the roles allowed at login time
    assert "certificate of alice@main does not allow 'root' (it allows: visitor)" in result.stderr


def test_node_whose_labels_do_not_match_the_role_is_denied_with_the_reason(site: Site) -> None:
    result = site.ssh("bob", f"{LOGIN}@direct-node.main", "true")
    assert result.returncode == 255
    assert (
        "node labels env=prod do not match the node_labels of roles dev-only, "
        f"which allow login '{LOGIN}'"
    ) in result.stderr
    assert site.ssh("bob", f"{LOGIN}@tunnel-node.main", "true").returncode == 0


def test_sessions_and_denials_are_audited(site: Site) -> None:
    assert site.ssh("alice", f"{LOGIN}@tunnel-node.main", "exit 4").returncode == 4
    site.ssh("alice", "root@tunnel-node.main", "true")
    deadline = time.monotonic() + 10
    while True:
        found = json.loads(site.cluster.tetherctl("audit", "search", "--format=json").stdout)
        ended = [e for e in found if e["type"] == "ssh.session.end" and e.get("exit_status") == 4]
        denied = [
            e
            for e in found
            if e["type"] == "ssh.denied" and e.get("login") == "root" and e.get("user") == "alice"
        ]
        if (ended and denied) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ended and ended[-1]["user"] == "alice", found
    assert ended[-1]["node"] == "tunnel-node"
    assert denied and "does not allow 'root'" in denied[-1]["reason"], found
    assert denied[-1]["success"] is False


def test_a_key_no_ca_signed_is_refused_and_the_refusal_is_audited(
    site: Site, tmp_path: pathlib.Path
) -> None:
    key = tmp_path / "stray"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    direct = next(n for n in _ls(site, "alice") if n["hostname"] == "direct-node")
    host, port = str(direct["addr"]).rsplit(":", 1)
    result = subprocess.run(
        [
            "ssh", "-F", "none", "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-p", port, f"{LOGIN}@{host}", "true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 255
    assert "Permission denied" in result.stderr
    # nobody is known behind that key, and the refusal is in the audit log all the same
    deadline = time.monotonic() + 10
    while True:
        found = json.loads(
            site.cluster.tetherctl("audit", "search", "--type=ssh.denied", "--format=json").stdout
        )
        denied = [e for e in found if e.get("node") == "direct-node" and not e.get("user")]
        if denied or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert denied, json.dumps(found, indent=1)
    assert denied[-1]["success"] is False
    assert denied[-1]["login"] == LOGIN
    assert "plain public key" in denied[-1]["reason"]


# --- tether ssh and tether scp ---------------------------------------------------------------


@pytest.mark.parametrize("node", ["auth-node", "tunnel-node", "direct-node"])
def test_tether_ssh_runs_a_command_as_the_os_user_and_returns_its_status(
    site: Site, os_user: pwd.struct_passwd, node: str
) -> None:
    result = site.cluster.tether(
        "alice", "ssh", f"{LOGIN}@{node}", "id -un; echo $TETHER_USER; exit 6", check=False
    )
    assert result.returncode == 6, result.stderr
    assert result.stdout.split() == [LOGIN, "alice"]


def test_tether_ssh_passes_standard_input_through(site: Site) -> None:
    result = site.cluster.tether(
        "alice", "ssh", f"{LOGIN}@tunnel-node", "tr a-z A-Z", input="hello node\n"
    )
    assert result.stdout == "HELLO NODE\n"


def test_tether_ssh_selects_a_node_by_label(site: Site) -> None:
    result = site.cluster.tether("alice", "ssh", f"{LOGIN}@env=prod", "hostname; true")
    assert result.returncode == 0


def test_tether_ssh_says_why_it_was_denied(site: Site) -> None:
    refused = site.cluster.tether("bob", "ssh", f"{LOGIN}@direct-node", "true", check=False)
    assert refused.returncode == 255
    assert "do not match the node_labels of roles dev-only" in refused.stderr
    missing = site.cluster.tether("alice", "ssh", f"{LOGIN}@nowhere", "true", check=False)
    assert missing.returncode == 255
    assert "node 'nowhere' not found in cluster 'main'" in missing.stderr


def test_expired_login_is_refused_with_a_hint_to_log_in_again(site: Site) -> None:
    site.cluster.add_user("erin", PASSWORD, roles=["access"], logins=[LOGIN])
    site.cluster.login("erin", PASSWORD, "--ttl=2s")
    time.sleep(2.5)
    result = site.cluster.tether("erin", "ssh", f"{LOGIN}@tunnel-node", "true", check=False)
    assert result.returncode == 255
    assert "your certificates expired" in result.stderr
    assert "run `tether login" in result.stderr


def test_interactive_shell_in_a_pseudo_terminal_follows_the_window_size(site: Site) -> None:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**os.environ, "TETHER_HOME": str(site.cluster.user_home("alice")), "TERM": "xterm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tether.cli.tether", "ssh", f"{LOGIN}@tunnel-node"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    try:
        os.write(master, b"echo tty=$(tty) size=$(stty size) sum=$((6*7)); exit 5\r")
        output = b""
        deadline = time.monotonic() + 30
        while b"sum=42" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    output += os.read(master, 65536)
                except OSError:
                    break
        assert process.wait(timeout=30) == 5
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    text = output.decode(errors="replace")
    assert "size=30 100 sum=42" in text
    assert "tty=/dev/pts/" in text


def test_tether_scp_copies_a_file_there_and_back(
    site: Site, os_user: pwd.struct_passwd, tmp_path: pathlib.Path
) -> None:
    original = tmp_path / "report.txt"
    original.write_bytes(os.urandom(300_000))
    site.cluster.tether("alice", "scp", str(original), f"{LOGIN}@tunnel-node:report.txt")
    remote = pathlib.Path(os_user.pw_dir) / "report.txt"
    assert remote.read_bytes() == original.read_bytes()
    assert remote.stat().st_uid == os_user.pw_uid
    back = tmp_path / "back.txt"
    site.cluster.tether("alice", "scp", f"{LOGIN}@direct-node:report.txt", str(back))
    assert back.read_bytes() == original.read_bytes()
    remote.unlink()


def test_openssh_scp_and_sftp_work_with_tether_config(
    site: Site, os_user: pwd.struct_passwd, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(site.cluster.tether("alice", "config").stdout)
    env = {**os.environ, "TETHER_HOME": str(site.cluster.user_home("alice"))}
    source = tmp_path / "notes.txt"
    source.write_text("copied with stock scp\n")
    subprocess.run(
        ["scp", "-F", str(config), "-B", str(source), f"{LOGIN}@tunnel-node.main:notes.txt"],
        check=True,
        env=env,
        capture_output=True,
        timeout=60,
    )
    remote = pathlib.Path(os_user.pw_dir) / "notes.txt"
    assert remote.read_text() == "copied with stock scp\n"
    listing = subprocess.run(
        ["sftp", "-F", str(config), "-b", "-", f"{LOGIN}@tunnel-node.main"],
        input="ls -1\n",
        text=True,
        check=True,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert "notes.txt" in listing.stdout
    remote.unlink()


# --- the front door survives bad input --------------------------------------------------------


def _front_door(site: Site, user: str, payload: bytes, *, client_cert: bool = True) -> bytes:
    profile = current_profile(site.cluster.user_home(user))
    assert profile is not None
    context = profile_ssl_context(profile, client_cert=client_cert, alpn=["tether-ssh/1"])
    host, port = site.cluster.proxy_addr.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.selected_alpn_protocol() == "tether-ssh/1"
        tls.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "control message is not JSON"),
        (b'{"type": "dial"}\n', "the dial request needs a non-empty string 'cluster'"),
        (b'{"type": "dial", "cluster": "main", "target": "x", "port": "-1"}\n', "port must be"),
        (b'{"type": "dial", "cluster": "main", "target": "x", "port": 22}\n', "must be a string"),
        (b'{"type": "hello"}\n', "expected a dial, list or host_cas request, got 'hello'"),
        (b'{"type": "dial", "cluster": "elsewhere", "target": "x"}\n', "cluster 'elsewhere'"),
    ],
)
def test_front_door_answers_malformed_requests_with_an_error(
    site: Site, payload: bytes, message: str
) -> None:
    answer = json.loads(_front_door(site, "alice", payload))
    assert answer["type"] == "error"
    assert message in answer["error"]["message"]
    assert site.ssh("alice", f"{LOGIN}@auth-node.main", "true").returncode == 0


def test_front_door_requires_a_client_certificate(site: Site) -> None:
    request = b'{"type": "dial", "cluster": "main", "target": "auth-node"}\n'
    answer = json.loads(_front_door(site, "alice", request, client_cert=False))
    assert answer["error"]["message"] == "a client certificate is required"


# --- a node restarts ------------------------------------------------------------------------


@pytest.fixture
def restarting_node(site: Site) -> Iterator[Site]:
    """The site, for a test that stops its tunnel node: running and reachable again after
    the test, pass or fail, so that no other test finds it stopped."""
    yield site
    if site.tunnel_node.process.poll() is not None:
        site.tunnel_node.restart()
    wait_for(
        lambda: site.ssh("alice", f"{LOGIN}@tunnel-node.main", "true").returncode == 0,
        "the tunnel node to be reachable again",
    )


def test_tunnel_node_restart_and_the_client_reconnects(restarting_node: Site) -> None:
    site = restarting_node
    assert site.ssh("alice", f"{LOGIN}@tunnel-node.main", "true").returncode == 0
    site.tunnel_node.stop()
    # its proxy saw its tunnel close and had its entry removed: unlisted within seconds, and
    # a session to it is refused as to a name no node answers to
    wait_for(
        lambda: "tunnel-node" not in site.cluster.tether("alice", "ls").stdout,
        "the stopped node to be unlisted",
        15,
    )
    gone = site.ssh("alice", f"{LOGIN}@tunnel-node.main", "true")
    assert gone.returncode == 255
    assert "node 'tunnel-node' not found in cluster 'main'" in gone.stderr
    site.tunnel_node.restart()
    deadline = time.monotonic() + 30
    while True:
        again = site.ssh("alice", f"{LOGIN}@tunnel-node.main", "echo back")
        if again.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert again.stdout == "back\n", again.stderr


def test_nodes_renew_their_certificates_and_stay_reachable_past_the_first_ones(
    tmp_path: pathlib.Path, os_user: pwd.struct_passwd
) -> None:
    # a year by default; here a few seconds, so that the renewal (at two thirds) is seen
    lifetime = 15
    cluster = start_cluster(
        tmp_path / "main",
        "main",
        config={
            "nodename": "auth-node",
            "auth_service": {"host_cert_ttl": f"{lifetime}s"},
            "ssh_service": {"enabled": True, "listen_addr": "127.0.0.1:0"},
        },
    )
    nodes: list[RunningNode] = []
    try:
        nodes.append(start_node(cluster, tmp_path / "tunnel", "tunnel-node"))
        nodes.append(start_node(cluster, tmp_path / "direct", "direct-node", tunnel=False))
        first = {
            node.name: x509.load_pem_x509_certificate(
                (node.directory / "data/host/tls.crt").read_bytes()
            )
            for node in nodes
        }
        cluster.add_user("alice", PASSWORD, roles=["access"], logins=[LOGIN])
        cluster.login("alice", PASSWORD)
        site = Site(cluster, nodes[0], nodes[1], tmp_path)
        # past the expiry of the certificates the nodes joined with
        time.sleep(max(c.not_valid_after_utc for c in first.values()).timestamp() - time.time() + 1)
        for name in ("auth-node", "tunnel-node", "direct-node"):
            ran = site.ssh("alice", f"{LOGIN}@{name}.main", "whoami")
            assert (ran.returncode, ran.stdout) == (0, f"{LOGIN}\n"), ran.stderr
        for node in nodes:
            renewed = x509.load_pem_x509_certificate(
                (node.directory / "data/host/tls.crt").read_bytes()
            )
            assert renewed.not_valid_after_utc > first[node.name].not_valid_after_utc
            assert "renewed its certificates" in node.log_text()
        listed = {n["hostname"] for n in _ls(site, "alice")}
        assert listed == {"auth-node", "tunnel-node", "direct-node"}
        events = cluster.tetherctl("audit", "search", "--type=host.renewed", "--format=json")
        renewed_roles = {(e["hostname"], e["role"]) for e in json.loads(events.stdout)}
        assert {("tunnel-node", "node"), ("direct-node", "node")} <= renewed_roles
    finally:
        for node in nodes:
            node.stop()
        cluster.stop()


def test_a_node_stopped_past_its_certificates_expiry_joins_again_with_a_token(
    tmp_path: pathlib.Path,
) -> None:
    cluster = start_cluster(
        tmp_path / "main", "main", config={"auth_service": {"host_cert_ttl": "3s"}}
    )
    try:
        node = start_node(cluster, tmp_path / "node", "sleeper")
        node.stop()
        saved = tmp_path / "node/data/host/tls.crt"
        expired = x509.load_pem_x509_certificate(saved.read_bytes()).not_valid_after_utc
        time.sleep(max(expired.timestamp() - time.time() + 0.5, 0))

        without_token = [arg for arg in node.args if not arg.startswith("--token=")]
        refused = run_cli("tetherd", "start", *without_token, check=False, timeout=30)
        assert refused.returncode == 1
        assert "this node's certificates expired at" in refused.stderr
        assert "join again: pass --token with a new node token" in refused.stderr

        node.restart()  # with the token it joined with, still valid
        try:
            assert "its certificates expired at" in node.log_text()
            assert "joining again with the token" in node.log_text()
            assert x509.load_pem_x509_certificate(saved.read_bytes()).not_valid_after_utc > expired
        finally:
            node.stop()
    finally:
        cluster.stop()
