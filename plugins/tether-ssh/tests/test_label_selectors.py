"""Which nodes a role's label selectors reach, as users meet it in ``tether ls`` and ``ssh``.

A trait is a value, never a pattern: users can often edit their own claims at the identity
provider, so a trait of ``*`` or ``^.*$`` in ``node_labels: {team: '{{external.team}}'}`` must
not reach every node, and a login filled in from a trait of ``*`` is no wildcard. A deny rule
selects the same nodes whatever the order of its keys. Real processes on 127.0.0.1: a cluster,
a node joined directly (listening on 127.0.0.1, so the stock ssh client reaches it without the
proxy and the node's own check is tested) and a node joined through the proxy's tunnel.
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from tether.testing.accounts import can_create_accounts
from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_node

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client"),
]

LOGIN = "visitor"
PASSWORD = "correct horse battery staple"
ROLES = """
kind: role
version: v7
metadata: {name: by-team}
spec:
  allow:
    logins: ['{{internal.logins}}']
    node_labels: {team: '{{external.team}}'}
---
kind: role
version: v7
metadata: {name: by-stage}
spec:
  allow:
    logins: ['{{internal.logins}}']
    node_labels: {stage: '^dev-{{internal.stage}}-.*$'}
---
kind: role
version: v7
metadata: {name: every-node}
spec:
  allow:
    node_labels: {'*': '*'}
---
kind: role
version: v7
metadata: {name: no-prod-star-first}
spec:
  deny:
    node_labels: {'*': '*', env: prod}
---
kind: role
version: v7
metadata: {name: no-prod-env-first}
spec:
  deny:
    node_labels: {env: prod, '*': '*'}
"""
#: user -> (roles, traits as tetherctl takes them)
USERS = {
    "mallory": ("by-team,by-stage", f"team=*,stage=.*,logins={LOGIN}"),
    "trudy": ("by-team,by-stage", f"team=^.*$,stage=(red|blue),logins={LOGIN}"),
    "carol": ("by-team,by-stage", f"team=red,logins={LOGIN}"),
    "dan": ("by-team,by-stage", f"stage=blue,logins={LOGIN}"),
    "wes": ("access", "logins=*"),
    "dave": ("every-node,no-prod-star-first", ""),
    "erin": ("every-node,no-prod-env-first", ""),
}


@attrs.frozen
class Site:
    cluster: RunningCluster
    red: RunningNode  # joined directly: listens on 127.0.0.1
    blue: RunningNode  # joined through the proxy's tunnel


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, os_user: pwd.struct_passwd) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("selectors")
    cluster = start_cluster(directory / "main", "main", config={"ssh_service": {"enabled": False}})
    nodes: list[RunningNode] = []
    try:
        red = {"team": "red", "env": "prod", "stage": "dev-red-1"}
        blue = {"team": "blue", "env": "dev", "stage": "dev-blue-1"}
        nodes.append(start_node(cluster, directory / "red", "node-red", tunnel=False, labels=red))
        nodes.append(start_node(cluster, directory / "blue", "node-blue", labels=blue))
        roles = directory / "roles.yaml"
        roles.write_text(ROLES)
        cluster.tetherctl("create", str(roles))
        for user, (user_roles, traits) in USERS.items():
            args = ["users", "add", user, "--roles", user_roles, "--password-stdin"]
            if traits:
                args.append(f"--traits={traits}")
            cluster.tetherctl(*args, input=PASSWORD + "\n")
            cluster.login(user, PASSWORD)
        yield Site(cluster, nodes[0], nodes[1])
    finally:
        for node in nodes:
            node.stop()
        cluster.stop()


def _listed(site: Site, user: str) -> list[str]:
    listed = json.loads(site.cluster.tether(user, "ls", "--format=json").stdout)
    return sorted(str(n["spec"]["hostname"]) for n in listed)


def _ssh_to_red(site: Site, user: str) -> subprocess.CompletedProcess[str]:
    """The stock ssh client, straight to node-red's port with the user's certificate: the
    node decides by itself, with no proxy in front."""
    # carol's team is red: she sees where node-red listens
    (node,) = json.loads(site.cluster.tether("carol", "ls", "--format=json").stdout)
    host, port = str(node["spec"]["addr"]).rsplit(":", 1)
    (keys,) = (site.cluster.user_home(user) / "keys").iterdir()
    return subprocess.run(
        [
            "ssh", "-F", "none", "-i", str(keys / "key"), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-p", port, f"{LOGIN}@{host}", "true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip


def _denials(site: Site, user: str) -> list[dict[str, Any]]:
    """The node's ``ssh.denied`` events for ``user``, once they reach the audit log."""
    deadline = time.monotonic() + 15
    while True:
        found = json.loads(
            site.cluster.tetherctl("audit", "search", "--type=ssh.denied", "--format=json").stdout
        )
        denied = [e for e in found if e.get("user") == user and e.get("node") == "node-red"]
        if denied or time.monotonic() > deadline:
            return denied
        time.sleep(0.2)


@pytest.mark.parametrize("user", ["mallory", "trudy"])
def test_a_user_whose_trait_is_a_wildcard_or_a_regex_sees_no_node_through_it(
    site: Site, user: str
) -> None:
    assert _listed(site, user) == []


def test_users_with_real_trait_values_see_their_own_nodes(site: Site) -> None:
    assert _listed(site, "carol") == ["node-red"]  # team: '{{external.team}}'
    assert _listed(site, "dan") == ["node-blue"]  # stage: '^dev-{{internal.stage}}-.*$'


def test_a_node_refuses_a_user_whose_trait_is_a_wildcard_and_audits_it(site: Site) -> None:
    refused = _ssh_to_red(site, "mallory")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    (denied, *_) = _denials(site, "mallory")
    assert denied["success"] is False
    assert denied["login"] == LOGIN
    assert "do not match the node_labels of roles by-team, by-stage" in denied["reason"]
    # the user whose team the node is gets in
    accepted = _ssh_to_red(site, "carol")
    assert accepted.returncode == 0, accepted.stderr


def test_a_login_from_a_trait_of_star_is_no_wildcard(site: Site) -> None:
    status = json.loads(site.cluster.tether("wes", "status", "--format=json").stdout)
    assert status["active"]["logins"] == []
    refused = site.cluster.tether("wes", "ssh", "root@node-blue", "true", check=False)
    assert refused.returncode == 255
    assert "does not allow 'root'" in refused.stderr
    carol = json.loads(site.cluster.tether("carol", "status", "--format=json").stdout)
    assert carol["active"]["logins"] == [LOGIN]


@pytest.mark.parametrize("user", ["dave", "erin"], ids=["star-key-first", "env-key-first"])
def test_a_deny_rule_hides_the_same_nodes_whatever_the_order_of_its_keys(
    site: Site, user: str
) -> None:
    assert _listed(site, user) == ["node-blue"]
