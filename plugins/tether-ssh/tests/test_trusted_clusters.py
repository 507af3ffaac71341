"""The guide's flow with real processes: a root user reaches a leaf's node through trust.

Root cluster ``root`` (auth + proxy), leaf cluster ``leaf`` (auth + proxy) with a node in
tunnel mode; the leaf trusts the root with the guide's trusted_cluster (``access`` ->
``visitor``). Sessions run as the OS account ``visitor`` created here (needs root).

Every test stands alone, in any order: the clusters are shared by the module, and a test that
changes the trust asks for ``restored_trust``, which puts the guide's trust back after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pwd
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from functools import partial

import attrs
import pytest
import trio
from tether_ssh.frontdoor import FRONT_DOOR_ALPN, TITLE

from tether.api import (
    NotFound,
    current_profile,
    list_targets,
    open_target_stream,
    profile_ssl_context,
)
from tether.testing.accounts import can_create_accounts
from tether.testing.balancer import TCPBalancer
from tether.testing.certificates import login_context
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    run_cli,
    run_completion,
    start_cluster,
    start_node,
    start_proxy,
    wait_for,
)
from tether.testing.http import free_port
from tether.testing.roles import VISITOR_ROLE
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    remote_status,
    trusted_cluster_yaml,
)

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH tools"),
]

PASSWORD = "correct horse battery staple"


@attrs.frozen
class Trust:
    root: RunningCluster
    leaf: RunningCluster
    node: RunningNode
    directory: pathlib.Path

    def apply(self, text: str, *args: str) -> None:
        create_trusted_cluster(self.leaf, text, *args)

    def invite(self) -> str:
        return invite(self.root, ttl="5m")

    def ssh(self, *command: str, user: str = "alice") -> tuple[int, str, str]:
        return self.ssh_to("visitor@leaf-node", *command, user=user)

    def ssh_to(self, target: str, *command: str, user: str = "alice") -> tuple[int, str, str]:
        result = self.root.tether(user, "ssh", "--cluster=leaf", target, *command, check=False)
        return result.returncode, result.stdout, result.stderr

    def wait_until_online(self) -> None:
        wait_for(lambda: connection(self.root) == "online", "the leaf to come online")

    def wait_until_reachable(self) -> None:
        """Wait until alice reaches the leaf's node."""
        # the leaf's nodes learn the root's user CA when auth pushes the new trust
        wait_for(lambda: self.ssh("true")[0] == 0, "the leaf's node to trust the root")

    def restore(self) -> None:
        """Put back the guide's trust (enabled, ``access`` -> ``visitor``, a leaf without
        labels) however a test left it, and wait until alice reaches the node again."""
        self.apply(trusted_cluster_yaml(self.root, self.invite()), "--force")
        self.wait_until_online()
        self.root.tetherctl("update", "rc/leaf", "--set-labels=")
        self.wait_until_reachable()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    """The root cluster, with alice (role ``access``) logged in."""
    cluster = start_cluster(tmp_path_factory.mktemp("root"), "root")
    try:
        # as the guide says: authentication is the root's, so the root user gets the login
        cluster.add_user("alice", PASSWORD, roles=["access"], logins=["alice", "visitor"])
        cluster.login("alice", PASSWORD)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def trust(
    root: RunningCluster, tmp_path_factory: pytest.TempPathFactory, os_user: pwd.struct_passwd
) -> Iterator[Trust]:
    """The leaf and its node, trusting the root as the guide sets it up; alice reaches the
    node. Tests that change the trust take ``restored_trust`` instead."""
    directory = tmp_path_factory.mktemp("trust")
    leaf = start_cluster(directory / "leaf", "leaf")
    started: list[RunningCluster | RunningNode] = [leaf]
    try:
        node = start_node(leaf, directory / "leaf-node", "leaf-node", labels={"env": "leaf"})
        started.append(node)
        role = directory / "visitor.yaml"
        role.write_text(VISITOR_ROLE)
        leaf.tetherctl("create", str(role))
        joined = Trust(root, leaf, node, directory)
        joined.apply(trusted_cluster_yaml(root, joined.invite()))
        joined.wait_until_online()
        joined.wait_until_reachable()
        yield joined
    finally:
        for process in reversed(started):
            process.stop()


@pytest.fixture
def restored_trust(trust: Trust) -> Iterator[Trust]:
    """The module's trust, for a test that changes it: put back as the guide set it after the
    test, pass or fail, so that no other test sees what this one did."""
    yield trust
    trust.restore()


@pytest.fixture(scope="module")
def stranger(
    root: RunningCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningCluster]:
    """A leaf that never came to trust the root: where the refused handshakes are tried, so
    that each can check that nothing at all was stored."""
    cluster = start_cluster(tmp_path_factory.mktemp("stranger"), "leaf")
    try:
        yield cluster
    finally:
        cluster.stop()


def _refused_trust(leaf: RunningCluster, text: str) -> str:
    path = leaf.directory / "refused.yaml"
    path.write_text(text)
    result = leaf.tetherctl("create", str(path), check=False)
    assert result.returncode == 1
    got = leaf.tetherctl("get", "trusted_cluster", "--format=json").stdout
    assert json.loads(got) == [], "a refused handshake must store nothing"
    return result.stderr


def test_unknown_or_expired_invitation_token_is_refused_on_both_sides(
    root: RunningCluster, stranger: RunningCluster
) -> None:
    err = _refused_trust(stranger, trusted_cluster_yaml(root, "not-a-token"))
    assert "the token is unknown or expired" in err
    added = root.tetherctl("tokens", "add", "--type=trusted_cluster", "--ttl=1s", "--format=json")
    time.sleep(1.5)
    expired = json.loads(added.stdout)["token"]
    assert "the token is unknown or expired" in _refused_trust(
        stranger, trusted_cluster_yaml(root, expired)
    )
    refusals = json.loads(
        root.tetherctl("audit", "search", "--type=trusted_cluster.refused", "--format=json").stdout
    )
    assert len(refusals) >= 2 and refusals[-1]["leaf"] == "leaf"


def test_wrong_ca_pin_is_refused_before_the_token_is_sent(
    root: RunningCluster, stranger: RunningCluster
) -> None:
    wrong = "sha256:" + "0" * 64
    text = trusted_cluster_yaml(root, invite(root, ttl="5m")).replace(root.ca_pin, wrong)
    err = _refused_trust(stranger, text)
    assert f"does not present the pinned CA {wrong}" in err


def test_root_with_an_untrusted_web_certificate_and_no_pin_is_refused(
    root: RunningCluster, stranger: RunningCluster
) -> None:
    text = trusted_cluster_yaml(root, invite(root, ttl="5m")).replace(
        f"  ca_pin: {root.ca_pin}\n", ""
    )
    err = _refused_trust(stranger, text)
    assert "The trusted cluster uses misconfigured HTTP/TLS certificate." in err
    assert "spec.ca_pin" in err


def test_root_user_reaches_the_leaf_node_as_the_mapped_visitor(
    trust: Trust, os_user: pwd.struct_passwd
) -> None:
    status, out, err = trust.ssh("pwd; id -un")
    assert status == 0, err
    assert out.split() == [os_user.pw_dir, "visitor"]


def test_a_root_users_session_records_one_mapped_login_at_the_leaf(trust: Trust) -> None:
    """The leaf's node maps the root user's roles once per session: its SSH server decides
    by the SSH certificate, and the agent does not verify the forwarded X.509 one again."""

    def leaf_events(kind: str) -> list[dict[str, object]]:
        found = trust.leaf.tetherctl("audit", "search", f"--type={kind}", "--format=json")
        return list(json.loads(found.stdout))

    mapped, ended = len(leaf_events("trust.login.mapped")), len(leaf_events("ssh.session.end"))
    status, _, err = trust.ssh("true")
    assert status == 0, err
    # the node forwards its events in order: once the session's end is recorded, so is
    # every mapping the session made
    wait_for(lambda: len(leaf_events("ssh.session.end")) > ended, "the session's end")
    new = leaf_events("trust.login.mapped")[mapped:]
    assert [(e["user"], e["local_roles"]) for e in new] == [("alice", ["visitor"])]


def test_openssh_client_reaches_the_leaf_node_with_tether_config(trust: Trust) -> None:
    config = trust.directory / "ssh_config"
    config.write_text(trust.root.tether("alice", "config").stdout)
    assert "Host *.root *.leaf" in config.read_text()
    result = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "visitor@leaf-node.leaf", "id -un"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TETHER_HOME": str(trust.root.user_home("alice"))},
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "visitor\n"), result.stderr


def test_tether_clusters_lists_the_root_and_the_online_leaf(trust: Trust) -> None:
    table = trust.root.tether("alice", "clusters").stdout.splitlines()
    assert table[0].split() == [
        "Cluster",
        "Name",
        "Status",
        "Cluster",
        "Type",
        "Labels",
        "Selected",
    ]
    rows = [line.split() for line in table[2:]]
    assert rows == [["root", "online", "root", "*"], ["leaf", "online", "leaf"]]


def _stored_keys(cluster: RunningCluster, prefix: str) -> list[str]:
    """The keys under ``prefix`` in ``cluster``'s store, read beside the running daemon."""
    path = cluster.data_dir / "backend.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT key FROM items WHERE key LIKE ? ORDER BY key", (f"{prefix}%",))
        return [key for (key,) in rows]


def test_a_tunnel_node_is_listed_once_as_a_node_and_never_as_a_cluster(trust: Trust) -> None:
    # the leaf's node holds a tunnel to the leaf's proxy as the leaf holds one to the root's:
    # each admin sees the leaf as a remote cluster at the root, the node as a node at the leaf,
    # and the node's tunnel is not stored as if a leaf's (a write per node joined, for nothing)
    remote = json.loads(trust.root.tetherctl("get", "rc", "--format=json").stdout)
    assert [(rc["metadata"]["name"], rc["status"]["connection"]) for rc in remote] == [
        ("leaf", "online")
    ]
    assert json.loads(trust.leaf.tetherctl("get", "rc", "--format=json").stdout) == []
    nodes = json.loads(trust.leaf.tetherctl("get", "nodes", "--format=json").stdout)
    assert [node["spec"]["hostname"] for node in nodes] == ["leaf-node"]
    assert _stored_keys(trust.leaf, "/tunnels/") == []
    assert _stored_keys(trust.root, "/tunnels/")  # the leaf's own tunnel still is, at the root
    assert all(key.startswith("/tunnels/leaf/") for key in _stored_keys(trust.root, "/tunnels/"))


def test_root_user_tab_completes_clusters_and_the_leaf_nodes(trust: Trust) -> None:
    env = {"TETHER_HOME": str(trust.root.user_home("alice"))}
    assert run_completion("tether", "tether ls --cluster ", env) == ["root", "leaf"]
    assert run_completion("tether", "tether ssh --cluster=l", env) == ["leaf"]
    line = "tether ssh --cluster=leaf visitor@"
    assert run_completion("tether", line, env) == ["visitor@leaf-node"]
    assert run_completion("tether", "tether ssh --cluster leaf le", env) == ["leaf-node"]


def test_root_user_lists_the_leaf_nodes_their_mapped_roles_reach(trust: Trust) -> None:
    listed = json.loads(trust.root.tether("alice", "ls", "--cluster=leaf", "-f", "json").stdout)
    assert [(n["spec"]["hostname"], n["metadata"]["labels"]) for n in listed] == [
        ("leaf-node", {"env": "leaf"})
    ]


def test_leaf_dials_only_its_own_nodes_and_audits_what_it_refuses(trust: Trust) -> None:
    # an address that is no node of the leaf: the leaf never dials what a root names
    code, _, err = trust.ssh_to("visitor@192.0.2.10:22", "true")
    assert code == 255
    assert "192.0.2.10" in err and "not found" in err, err

    def refused() -> list[dict[str, object]]:
        found = trust.leaf.tetherctl(
            "audit", "search", "--type=trust.stream.refused", "--format=json"
        ).stdout
        return [e for e in json.loads(found) if e.get("node") == "192.0.2.10:22"]

    wait_for(lambda: bool(refused()), "the leaf to audit the refused stream")
    (event,) = refused()
    assert (event["root"], event["target"], event["success"]) == ("root", "ssh", False)
    assert "192.0.2.10" in str(event["reason"])


def test_a_node_missing_in_the_leaf_is_reported_as_the_leaf_itself_reports_it(
    trust: Trust,
) -> None:
    trust.leaf.add_user("lena", PASSWORD, roles=["access"], logins=["visitor"])
    trust.leaf.login("lena", PASSWORD)
    at_leaf = trust.leaf.tether("lena", "ssh", "visitor@nosuchnode", "true", check=False)
    through_root = trust.ssh_to("visitor@nosuchnode", "true")
    missing = (
        "ERROR: node 'nosuchnode' not found in cluster 'leaf' "
        "(run `tether ls{}` to see the nodes you can reach)"
    )
    assert (at_leaf.returncode, at_leaf.stderr.strip()) == (255, missing.format(""))
    # the same line from the root, the hint naming the leaf, which the user's proxy is not
    assert (through_root[0], through_root[2].strip()) == (255, missing.format(" --cluster=leaf"))

    profile = current_profile(trust.root.user_home("alice"))
    assert profile is not None
    dial = partial(
        open_target_stream,
        profile.proxy,
        profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN]),
        alpn=FRONT_DOOR_ALPN,
        protocol=TITLE,
        cluster="leaf",
        target="nosuchnode",
    )
    with pytest.raises(NotFound) as refused:
        trio.run(dial)
    assert refused.value.hint == "run `tether ls --cluster=leaf` to see the nodes you can reach"


def test_login_selects_the_leaf_for_later_commands(trust: Trust) -> None:
    trust.root.login("alice", PASSWORD, "leaf")
    try:
        status = trust.root.tether("alice", "status", "-f", "json").stdout
        assert json.loads(status)["active"]["cluster"] == "leaf"
        ran = trust.root.tether("alice", "ssh", "visitor@leaf-node", "id -un")
        assert ran.stdout == "visitor\n"
        clusters = trust.root.tether("alice", "clusters", "-f", "json").stdout
        assert [c["cluster_name"] for c in json.loads(clusters) if c["selected"]] == ["leaf"]
    finally:
        trust.root.login("alice", PASSWORD)


def test_root_certificate_used_directly_at_the_leaf_is_role_mapped(trust: Trust) -> None:
    # the guide's warning: the leaf trusts the root's CA, so a root certificate works at
    # the leaf's own proxy too, with the same role mapping (not cluster_labels) deciding
    profile = current_profile(trust.root.user_home("alice"))
    assert profile is not None
    context = login_context(profile, trust.leaf, alpn=[FRONT_DOOR_ALPN])
    listing = partial(
        list_targets,
        trust.leaf.proxy_addr,
        context,
        alpn=FRONT_DOOR_ALPN,
        protocol=TITLE,
        cluster="leaf",
    )
    nodes = trio.run(listing)
    assert [n["spec"]["hostname"] for n in nodes] == ["leaf-node"]


def test_unmapped_root_user_is_denied_with_the_reason(trust: Trust) -> None:
    trust.root.add_user("carol", PASSWORD, roles=["auditor"], logins=["visitor"])
    trust.root.login("carol", PASSWORD)
    refused = trust.root.tether(
        "carol", "ssh", "--cluster=leaf", "visitor@leaf-node", "true", check=False
    )
    assert refused.returncode == 255
    assert "no role of carol@root (auditor) maps to a role of cluster 'leaf'" in refused.stderr


def test_cluster_labels_hide_a_labelled_leaf_from_users_without_them(
    restored_trust: Trust,
) -> None:
    trust = restored_trust
    trust.root.tetherctl("update", "rc/leaf", "--set-labels=env=prod")
    clusters = json.loads(trust.root.tether("alice", "clusters", "-f", "json").stdout)
    assert [c["cluster_name"] for c in clusters] == ["root"]
    # as the guide says, even an editor's `tetherctl get rc` shows no labelled leaf
    # until one of their roles has matching cluster_labels
    trust.root.add_user("ed", PASSWORD, roles=["editor"])
    trust.root.login("ed", PASSWORD)
    editor_env = {"TETHER_HOME": str(trust.root.user_home("ed"))}
    seen = run_cli("tetherctl", "get", "rc", "--format=json", env=editor_env).stdout
    assert json.loads(seen) == []
    hidden = trust.ssh("true")
    assert hidden[0] == 255 and "cluster 'leaf' not found" in hidden[2]
    prod = trust.directory / "prod.yaml"
    prod.write_text(
        "kind: role\nversion: v7\nmetadata:\n  name: prod-access\nspec:\n"
        "  allow:\n    cluster_labels: {env: prod}\n"
    )
    trust.root.tetherctl("create", str(prod))
    trust.root.add_user("dave", PASSWORD, roles=["access", "prod-access"], logins=["visitor"])
    trust.root.login("dave", PASSWORD)
    shown = json.loads(trust.root.tether("dave", "clusters", "-f", "json").stdout)
    assert [(c["cluster_name"], c["labels"]) for c in shown] == [
        ("root", {}),
        ("leaf", {"env": "prod"}),
    ]
    ran = trust.root.tether("dave", "ssh", "--cluster=leaf", "visitor@leaf-node", "true")
    assert ran.returncode == 0


def test_leaf_admin_tests_the_role_map(trust: Trust) -> None:
    shown = trust.leaf.tetherctl(
        "rolemap", "test", "--cluster=root", "--roles=access,auditor", "--format=json"
    )
    assert json.loads(shown.stdout) == [
        {"remote_role": "access", "local_roles": ["visitor"], "rule": "access"},
        {"remote_role": "auditor", "local_roles": [], "rule": None},
    ]


def test_regex_mapping_with_a_group_and_trait_templates_apply_live(
    restored_trust: Trust,
) -> None:
    trust = restored_trust
    # a user of the test's own, since it gives them a trait
    trust.root.add_user("rex", PASSWORD, roles=["access"], logins=["rex", "visitor"])
    trust.root.login("rex", PASSWORD)
    role = trust.directory / "visitor-ess.yaml"
    role.write_text(
        "kind: role\nversion: v7\nmetadata:\n  name: visitor-ess\nspec:\n  allow:\n"
        "    logins: ['{{internal.logins}}']\n    node_labels: {env: '{{internal.env}}'}\n"
    )
    trust.leaf.tetherctl("create", str(role))
    regex = trusted_cluster_yaml(trust.root, "").replace(
        '- remote: "access"\n      local: ["visitor"]',
        '- remote: "^acc(.*)$"\n      local: ["visitor-$1"]',
    )
    assert "visitor-$1" in regex
    trust.apply(regex, "--force")
    # rex's traits have no env: the template selects nothing, so he sees no node
    hidden = trust.ssh("true", user="rex")
    assert hidden[0] == 255 and "node 'leaf-node' not found in cluster 'leaf'" in hidden[2]
    trust.root.tetherctl(
        "users", "update", "rex", "--set-logins=rex,visitor", "--set-traits=env=leaf"
    )
    trust.root.login("rex", PASSWORD)

    def mapped_through_the_regex() -> bool:
        # the node forwards its audit events as they happen, and a change of trusted_cluster
        # reaches it by push: a session may still map the old way for a moment
        status, out, err = trust.ssh("id -un", user="rex")
        assert (status, out) == (0, "visitor\n"), err
        events = json.loads(
            trust.leaf.tetherctl(
                "audit", "search", "--type=trust.login.mapped", "--format=json"
            ).stdout
        )
        assert events[-1]["remote_roles"] == ["access"]
        return bool(events[-1]["local_roles"] == ["visitor-ess"])

    wait_for(mapped_through_the_regex, "the leaf's node to map access to visitor-ess")
    assert connection(trust.root) == "online"  # the tunnels stayed up


def test_disabling_the_trust_closes_access_and_enabling_restores_it(
    restored_trust: Trust,
) -> None:
    trust = restored_trust
    assert trust.ssh("true")[0] == 0
    trust.apply(trusted_cluster_yaml(trust.root, "", enabled=False), "--force")
    wait_for(lambda: connection(trust.root) == "offline", "the leaf to go offline")
    status, _, err = trust.ssh("true")
    assert status == 255
    assert "cluster 'leaf' is offline" in err
    trust.apply(trusted_cluster_yaml(trust.root, "", enabled=True), "--force")
    wait_for(lambda: connection(trust.root) == "online", "the leaf to come back")
    wait_for(lambda: trust.ssh("true")[0] == 0, "access to come back")


def test_removing_the_remote_cluster_on_the_root_and_restoring_it(
    restored_trust: Trust,
) -> None:
    trust = restored_trust
    assert trust.ssh("true")[0] == 0
    trust.root.tetherctl("rm", "rc/leaf")
    wait_for(lambda: trust.ssh("true")[0] != 0, "access to end")
    assert "cluster 'leaf' not found" in trust.ssh("true")[2]
    # the guide: creating the trusted_cluster again on the leaf, with a valid token
    trust.apply(trusted_cluster_yaml(trust.root, trust.invite()), "--force")
    wait_for(lambda: connection(trust.root) == "online", "the leaf to come back")
    wait_for(lambda: trust.ssh("true")[0] == 0, "access to come back")


def test_removing_the_trust_on_the_leaf_and_creating_it_again(
    restored_trust: Trust,
) -> None:
    trust = restored_trust
    trust.leaf.tetherctl("rm", "trusted_cluster/root")
    wait_for(lambda: trust.ssh("true")[0] != 0, "access to end")
    trust.apply(trusted_cluster_yaml(trust.root, trust.invite()))
    wait_for(lambda: trust.ssh("true")[0] == 0, "access to come back")


def test_restarted_root_sees_the_leaf_reconnect_and_come_back_online(
    tmp_path: pathlib.Path,
) -> None:
    root_config = {"proxy_service": {"listen_addr": f"127.0.0.1:{free_port()}"}}
    root = start_cluster(tmp_path / "root", "root", config=root_config)
    leaf = start_cluster(tmp_path / "leaf", "leaf")
    try:
        create_trusted_cluster(leaf, trusted_cluster_yaml(root, invite(root)))
        wait_for(lambda: connection(root) == "online", "the leaf to come online")
        root.stop()
        root = start_cluster(tmp_path / "root", "root", config=root_config)
        # the leaf's agents redial with backoff; no new token is needed
        wait_for(lambda: connection(root) == "online", "the leaf to reconnect", timeout=60)
    finally:
        leaf.stop()
        root.stop()


def test_leaf_stays_reachable_through_the_other_root_proxy_when_one_stops(
    tmp_path: pathlib.Path, os_user: pwd.struct_passwd
) -> None:
    # The guide's HA setup: the root's auth, two root proxies of their own behind a load
    # balancer; the leaf's trusted_cluster and the user's login name the balancer. The root's
    # keep-alive is short, so that a dead proxy's tunnels go stale in seconds: its proxies
    # learn it from auth and name it to the leaf's agents, whose heartbeats follow it.
    keep_alive = {"keep_alive_interval": "2s", "keep_alive_count_max": 3}
    root = start_cluster(
        tmp_path / "root",
        "root",
        config={"proxy_service": {"enabled": False}, "auth_service": keep_alive},
    )
    started: list[RunningCluster | RunningNode] = [root]
    try:
        token = json.loads(root.tetherctl("tokens", "add", "--type=proxy", "--format=json").stdout)[
            "token"
        ]
        proxies = [
            start_proxy(root, tmp_path / name, name, token=token)
            for name in ("root-proxy-a", "root-proxy-b")
        ]
        started += proxies
        leaf = start_cluster(tmp_path / "leaf", "leaf")
        started.append(leaf)
        node = start_node(leaf, tmp_path / "leaf-node", "leaf-node")
        started.append(node)
        role = tmp_path / "visitor.yaml"
        role.write_text(VISITOR_ROLE)
        leaf.tetherctl("create", str(role))
        with TCPBalancer([p.proxy_addr for p in proxies]) as balancer:
            trust = Trust(root, leaf, node, tmp_path)
            trust.apply(trusted_cluster_yaml(root, trust.invite(), proxy_addr=balancer.addr))
            # one tunnel through the balancer, then one to each proxy it was told about
            wait_for(
                lambda: remote_status(root).get("proxies") == ["root-proxy-a", "root-proxy-b"],
                "the leaf to hold a tunnel to both root proxies",
                timeout=60,
            )
            root.add_user("alice", PASSWORD, roles=["access"], logins=["visitor"])
            root.tether(
                "alice",
                "login",
                f"--proxy={balancer.addr}",
                "--user=alice",
                "--password-stdin",
                f"--ca-pin={root.ca_pin}",
                input=PASSWORD + "\n",
            )
            for _ in proxies:  # round robin: a session through each proxy
                code, out, err = trust.ssh("pwd")
                assert (code, out.strip()) == (0, os_user.pw_dir), err
            assert all(balancer.forwarded[p.proxy_addr] >= 2 for p in proxies)

            proxies[0].stop(signal.SIGKILL)  # a crash: no goodbye to the leaf or the balancer
            for _ in proxies:
                code, out, err = trust.ssh("pwd")
                assert (code, out.strip()) == (0, os_user.pw_dir), err
            clusters = root.tether("alice", "clusters").stdout
            assert "leaf" in clusters and "online" in clusters, clusters
            # the dead proxy's heartbeats go stale after the keep-alive's count of intervals
            # and a heartbeat batch (3 x 2 s + 5 s here, docs/tunnel-protocol.md); the leaf
            # stays online through the other meanwhile
            wait_for(
                lambda: remote_status(root).get("proxies") == ["root-proxy-b"],
                "the root to see the leaf through root-proxy-b only",
                timeout=60,
            )
            assert connection(root) == "online"
    finally:
        for process in reversed(started):
            process.stop()


def test_a_leaf_without_the_ssh_plugin_says_so_and_audits_the_refused_stream(
    tmp_path: pathlib.Path,
) -> None:
    root = start_cluster(tmp_path / "root", "root")
    started: list[RunningCluster] = [root]
    try:
        leaf = start_cluster(tmp_path / "leaf", "leaf", config={"plugins": {"disabled": ["ssh"]}})
        started.append(leaf)
        root.add_user("alice", PASSWORD, roles=["access"], logins=["visitor"])
        root.login("alice", PASSWORD)
        create_trusted_cluster(leaf, trusted_cluster_yaml(root, invite(root, ttl="5m")))
        wait_for(lambda: connection(root) == "online", "the leaf to come online")

        listed = root.tether("alice", "ls", "--cluster=leaf", check=False)
        assert listed.returncode == 1
        assert "cluster 'leaf' serves no 'ssh'" in listed.stderr

        def refused() -> list[dict[str, object]]:
            found = leaf.tetherctl(
                "audit", "search", "--type=trust.stream.refused", "--format=json"
            ).stdout
            return list(json.loads(found))

        wait_for(lambda: bool(refused()), "the leaf to audit the refused stream")
        (event,) = refused()
        assert (event["root"], event["target"], event["success"]) == ("root", "ssh", False)
        assert not event.get("user")  # nobody is known: the stream was refused before a login
    finally:
        for process in reversed(started):
            process.stop()
