"""A newcomer's first hour with one cluster, as the guide assumes it went.

Start a cluster, create a role, add a user, log in non-interactively, inspect the certificates
with the OpenSSH and OpenSSL tools, administer through the login, and log out. Real processes,
real TLS on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import time
from typing import Any

import httpx
import pytest

from tether.testing.cluster import RunningCluster, run_cli

VISITOR_YAML = """\
kind: role
version: v5
metadata:
  name: visitor
spec:
  allow:
    logins:
      - visitor
    node_labels:
      '*': '*'
"""

SHORT_ROLE_YAML = """\
kind: role
version: v5
metadata:
  name: short
spec:
  allow:
    logins: ['{{internal.logins}}']
  options:
    max_session_ttl: 1h
"""


def status_json(cluster: RunningCluster, user: str) -> dict[str, Any]:
    result = cluster.tether(user, "status", "-f", "json")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(args[0]) is None:
        pytest.fail(f"{args[0]} is not installed (scripts/system-deps.sh installs it)")
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)


def test_newcomer_creates_a_role_adds_a_user_logs_in_and_holds_standard_certificates(
    tether_cluster: RunningCluster, tmp_path: Any
) -> None:
    cluster = tether_cluster
    role_file = tmp_path / "visitor.yaml"
    role_file.write_text(VISITOR_YAML)
    created = cluster.tetherctl("create", str(role_file))
    assert created.stdout.strip() == 'role "visitor" has been created'

    cluster.add_user("alice", "alice-password-1", roles=("access", "visitor"), logins=("alice",))
    login = cluster.login("alice", "alice-password-1")
    assert "Logged in as:       alice" in login.stdout

    active = status_json(cluster, "alice")["active"]
    assert active["username"] == "alice"
    assert active["cluster"] == "main"
    assert active["roles"] == ["access", "visitor"]
    assert sorted(active["logins"]) == ["alice", "visitor"]
    assert active["profile_url"] == f"https://{cluster.proxy_addr}"
    for key in ("ssh_cert_file", "tls_cert_file", "tls_ca_file", "private_key_file"):
        mode = stat.S_IMODE(os.stat(active[key]).st_mode)
        assert mode == 0o600, f"{key} is {oct(mode)}"

    listing = tool("ssh-keygen", "-L", "-f", active["ssh_cert_file"])
    assert listing.returncode == 0, listing.stderr
    assert "user certificate" in listing.stdout
    principals = listing.stdout.split("Principals:")[1].split("Critical Options:")[0].split()
    assert sorted(principals) == ["alice", "visitor"]
    assert "tether-identity@tether.dev" in listing.stdout

    verified = tool("openssl", "verify", "-CAfile", active["tls_ca_file"], active["tls_cert_file"])
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip().endswith(": OK")

    logout = cluster.tether("alice", "logout")
    assert f"Logged out of {cluster.proxy_addr}." in logout.stdout
    assert not os.path.exists(active["tls_cert_file"])
    after = cluster.tether("alice", "status", check=False)
    assert after.returncode == 1
    assert "not logged in" in after.stderr


def test_editor_adds_a_login_to_their_user_like_the_guide(
    tether_cluster: RunningCluster, tmp_path: Any
) -> None:
    cluster = tether_cluster
    cluster.add_user("myuser", "myuser-password", roles=("access", "editor"), logins=("root",))
    cluster.login("myuser", "myuser-password")

    # tctl get user/myuser > user.yaml, add the visitor login, tctl create -f user.yaml
    got = cluster.as_user("myuser", "tetherctl", "get", "user/myuser")
    assert "logins:\n    - root\n" in got.stdout
    user_file = tmp_path / "user.yaml"
    user_file.write_text(got.stdout.replace("    - root\n", "    - visitor\n    - root\n"))
    applied = cluster.as_user("myuser", "tetherctl", "create", "-f", str(user_file))
    assert applied.stdout.strip() == 'user "myuser" has been updated'

    cluster.login("myuser", "myuser-password")
    assert sorted(status_json(cluster, "myuser")["active"]["logins"]) == ["root", "visitor"]


def test_new_user_chooses_a_password_with_the_signup_token(tether_cluster: RunningCluster) -> None:
    cluster = tether_cluster
    added = cluster.tetherctl("users", "add", "bob", "--roles=access", "--logins=bob")
    match = re.search(r"tether signup --proxy=(\S+) --token=(\S+)", added.stdout)
    assert match, added.stdout
    assert match.group(1) == cluster.proxy_addr
    token = match.group(2)

    refused = cluster.login("bob", "whatever-password", check=False)
    assert "invalid user name or password" in refused.stderr

    signup = cluster.tether(
        "bob",
        "signup",
        f"--proxy={cluster.proxy_addr}",
        f"--token={token}",
        f"--ca-pin={cluster.ca_pin}",
        "--password-stdin",
        input="bobs-new-password\n",
    )
    assert "User 'bob' is ready" in signup.stdout
    cluster.login("bob", "bobs-new-password")
    assert status_json(cluster, "bob")["active"]["username"] == "bob"

    again = cluster.tether(
        "bob",
        "signup",
        f"--proxy={cluster.proxy_addr}",
        f"--token={token}",
        f"--ca-pin={cluster.ca_pin}",
        "--password-stdin",
        input="another-password\n",
        check=False,
    )
    assert again.returncode == 1
    assert "sign-up token is invalid or expired" in again.stderr
    # the auditor sees bob set his password, and the refused second try
    changes = json.loads(
        cluster.tetherctl("audit", "search", "--type=user.password.change", "--format=json").stdout
    )
    assert [(e["user"], e["success"], e["reason"]) for e in changes][-2:] == [
        ("bob", True, "signup"),
        ("", False, "signup"),
    ]


def test_account_locks_after_repeated_failed_logins_without_revealing_users(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    cluster.add_user("carol", "carol-password", roles=("access",), logins=("carol",))
    for name in ("carol", "nobody-by-this-name"):
        for _ in range(3):  # failed_login_limit is 3 in tether.testing's config
            failed = cluster.login(name, "wrong-password", check=False)
            assert failed.returncode == 1
            assert failed.stderr.strip() == "ERROR: invalid user name or password"
        locked = cluster.login(name, "carol-password", check=False)
        assert locked.returncode == 1
        assert f"too many failed logins: {name!r} is locked until" in locked.stderr

    events = cluster.tetherctl(
        "audit", "search", "--type=user.login.failed", "--format=json"
    ).stdout
    reasons = {(e["user"], e["reason"]) for e in json.loads(events)}
    assert ("carol", "invalid user name or password") in reasons
    assert ("carol", "account locked") in reasons


def test_certificate_lifetime_is_capped_by_the_role_max_session_ttl(
    tether_cluster: RunningCluster, tmp_path: Any
) -> None:
    cluster = tether_cluster
    role_file = tmp_path / "short.yaml"
    role_file.write_text(SHORT_ROLE_YAML)
    cluster.tetherctl("create", str(role_file))
    cluster.add_user("dave", "dave-password", roles=("short",), logins=("dave",))
    cluster.login("dave", "dave-password", "--ttl=8h")
    until = status_json(cluster, "dave")["active"]["valid_until"]
    left = datetime.datetime.fromisoformat(until.replace("Z", "+00:00")) - datetime.datetime.now(
        datetime.UTC
    )
    assert datetime.timedelta(minutes=55) < left <= datetime.timedelta(hours=1)


def test_a_command_without_a_login_names_the_login_to_run(tether_cluster: RunningCluster) -> None:
    cluster = tether_cluster
    never = cluster.tether("nobody", "clusters", check=False)
    assert never.returncode == 1
    assert "not logged in" in never.stderr
    assert "run `tether login --proxy=PROXY`, PROXY being your cluster's proxy address" in (
        never.stderr
    )
    # with TETHER_PROXY set the hint runs as printed
    env = {"TETHER_PROXY": cluster.proxy_addr}
    with_proxy = cluster.tether("nobody", "clusters", check=False, env=env)
    assert "run `tether login` (to $TETHER_PROXY)" in with_proxy.stderr


def test_a_user_whose_certificates_expired_is_told_to_log_in_again(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    cluster.add_user("brief", "brief-password", roles=("access",), logins=("brief",))
    cluster.login("brief", "brief-password", "--ttl=1s")
    time.sleep(1.5)  # the certificates' own lifetime: nothing to poll
    refused = cluster.tether("brief", "clusters", check=False)
    assert refused.returncode == 1
    assert "your certificates expired at" in refused.stderr
    assert f"run `tether login --proxy={cluster.proxy_addr}`" in refused.stderr
    # tether status still shows the expired login, as tsh status does
    assert status_json(cluster, "brief")["active"]["expired"] is True


def test_admin_adds_lists_and_removes_a_node_token(tether_cluster: RunningCluster) -> None:
    cluster = tether_cluster
    added = json.loads(
        cluster.tetherctl("tokens", "add", "--type=node", "--ttl=5m", "--format=json").stdout
    )
    assert set(added) >= {"token", "expires", "ca_pin"}
    assert added["ca_pin"] == cluster.ca_pin
    expires = datetime.datetime.fromisoformat(added["expires"].replace("Z", "+00:00"))
    assert expires - datetime.datetime.now(datetime.UTC) <= datetime.timedelta(minutes=5)

    text = cluster.tetherctl("tokens", "add", "--type=node").stdout
    assert re.search(r"^The invite token: [0-9a-f]{32}$", text, re.M)
    assert f"CA pin: {cluster.ca_pin}" in text

    listed = cluster.tetherctl("tokens", "ls").stdout
    assert listed.splitlines()[0].split() == ["Token", "Type", "Labels", "Expiry", "Time", "(UTC)"]
    assert added["token"] in listed
    removed = cluster.tetherctl("tokens", "rm", added["token"])
    assert removed.stdout.strip() == f'token "{added["token"]}" has been deleted'
    assert added["token"] not in cluster.tetherctl("tokens", "ls").stdout


def test_admin_updates_lists_and_removes_users(tether_cluster: RunningCluster) -> None:
    cluster = tether_cluster
    cluster.add_user("erin", "erin-password", roles=("access",), logins=("erin",))
    cluster.tetherctl("users", "update", "erin", "--set-roles=access,auditor")
    rows = {
        line.split()[0]: line.split()[1]
        for line in cluster.tetherctl("users", "ls").stdout.splitlines()[2:]
    }
    assert rows["erin"] == "access,auditor"
    cluster.login("erin", "erin-password")
    assert status_json(cluster, "erin")["active"]["roles"] == ["access", "auditor"]

    assert cluster.tetherctl("users", "rm", "erin").stdout.strip() == 'user "erin" has been deleted'
    gone = cluster.login("erin", "erin-password", check=False)
    assert "invalid user name or password" in gone.stderr


def test_auditor_reads_logins_resource_changes_and_issued_certificates(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    cluster.add_user("frank", "frank-password", roles=("auditor",), logins=("frank",))
    cluster.login("frank", "frank-password")
    events = json.loads(
        cluster.as_user("frank", "tetherctl", "audit", "search", "--format=json").stdout
    )
    types = {e["type"] for e in events}
    assert {"user.login", "resource.created", "cert.issued"} <= types
    login = next(e for e in events if e["type"] == "user.login" and e["user"] == "frank")
    assert login["roles"] == ["auditor"]
    assert login["method"] == "local"
    recent = json.loads(
        cluster.as_user(
            "frank",
            "tetherctl",
            "audit",
            "search",
            "--since=1h",
            "--type=user.login",
            "--format=json",
        ).stdout
    )
    assert recent and {e["type"] for e in recent} <= {"user.login", "user.login.failed"}
    future_only = cluster.as_user("frank", "tetherctl", "audit", "search", "--since=0s")
    assert len(future_only.stdout.splitlines()) <= 2  # a header at most: nothing that new
    denied = cluster.as_user("frank", "tetherctl", "get", "user", check=False)
    assert denied.returncode == 1
    assert "role rules do not allow list on user" in denied.stderr


def test_the_guides_jq_lines_work_on_webapi_ping(tether_cluster: RunningCluster) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ping = httpx.get(f"https://{tether_cluster.proxy_addr}/webapi/ping", verify=context).json()
    proxy = ping["proxy"]
    tunnel_addr = (
        proxy["ssh"]["public_addr"]
        if proxy["tls_routing_enabled"]
        else proxy["ssh"]["ssh_tunnel_public_addr"]
    )
    port = tether_cluster.proxy_addr.rsplit(":", 1)[1]
    assert tunnel_addr.endswith(f":{port}")
    assert proxy["ssh"]["public_addr"].endswith(f":{port}")
    assert ping["cluster_name"] == "main"
    assert ping["server_version"]


def test_tetherd_configure_prints_a_file_tetherd_accepts(tmp_path: Any) -> None:
    printed = run_cli("tetherd", "configure").stdout
    assert "cluster_name:" in printed and "#" in printed
    config = tmp_path / "tether.yaml"
    config.write_text(printed)
    listed = run_cli("tetherd", "plugins", "-c", str(config))
    assert "jsonl-audit" in listed.stdout


def test_tester_logs_in_with_insecure_and_tetherctl_follows_the_profile(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    cluster.add_user("gina", "gina-password", roles=("access", "editor"), logins=("gina",))
    cluster.tether(
        "gina",
        "login",
        f"--proxy={cluster.proxy_addr}",
        "--user=gina",
        "--password-stdin",
        "--insecure",
        input="gina-password\n",
    )
    assert status_json(cluster, "gina")["active"]["username"] == "gina"
    got = cluster.as_user("gina", "tetherctl", "get", "user/gina")
    assert "name: gina" in got.stdout
