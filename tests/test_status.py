"""An operator asks ``tetherctl status`` what the cluster is and what is connected to it.

Real processes on 127.0.0.1: a root cluster with a node joined through its proxy, and a leaf
that trusts the root as the guide sets it up (docs/operating.md, "Is everything connected?";
docs/trusted-clusters.md, "Observability").
"""

from __future__ import annotations

import json
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_node, wait_for
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    trusted_cluster_yaml,
)
from tether.yamlio import load_document


@attrs.frozen
class Site:
    root: RunningCluster
    leaf: RunningCluster
    node: RunningNode


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("status")
    root = start_cluster(base / "root", "root")
    leaf = node = None
    try:
        leaf = start_cluster(base / "leaf", "leaf")
        create_trusted_cluster(leaf, trusted_cluster_yaml(root, invite(root)))
        wait_for(lambda: connection(root) == "online", "the leaf's tunnel")
        node = start_node(root, base / "node", "web-1")
        yield Site(root, leaf, node)
    finally:
        for running in (node, leaf, root):
            if running is not None:
                running.stop()


def status_json(cluster: RunningCluster) -> dict[str, Any]:
    return dict(json.loads(cluster.tetherctl("status", "--format=json").stdout))


def ssh_keygen_fingerprint(cluster: RunningCluster, ca_type: str, tmp_path: pathlib.Path) -> str:
    """The fingerprint ssh-keygen gives the SSH CA ``tetherctl get cert_authority`` shows."""
    cas = json.loads(cluster.tetherctl("get", "cert_authority", "--format=json").stdout)
    [ca] = [
        c for c in cas if (c["spec"]["type"], c["spec"]["cluster_name"]) == (ca_type, cluster.name)
    ]
    key = tmp_path / f"{ca_type}.pub"
    key.write_text(ca["spec"]["active_keys"]["ssh"][0] + "\n")
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, check=True
    )
    return listed.stdout.split()[1]


def test_root_admin_sees_the_ca_pins_the_proxy_the_node_and_the_leaf_online(
    site: Site, tmp_path: pathlib.Path
) -> None:
    wait_for(lambda: status_json(site.root)["hosts"]["node"] == ["web-1"], "the node")
    status = status_json(site.root)

    assert status["cluster"] == "root"
    assert status["ca_pin"] == status["fingerprints"]["tls"] == site.root.ca_pin
    for ca_type in ("user", "host"):
        assert status["fingerprints"][ca_type] == ssh_keygen_fingerprint(
            site.root, ca_type, tmp_path
        )
    [proxy] = status["proxies"]
    assert proxy["public_addr"].endswith(site.root.proxy_addr.rpartition(":")[2])
    assert [(c["name"], c["connection"]) for c in status["leaf_clusters"]] == [("leaf", "online")]
    assert status["root_clusters"] == []
    assert status["not_shown"] == []


def test_leaf_admin_sees_its_root_cluster_online_through_its_proxy(site: Site) -> None:
    root_proxy = status_json(site.root)["proxies"][0]["name"]

    def root_cluster() -> dict[str, Any]:
        [root] = status_json(site.leaf)["root_clusters"]
        return dict(root)

    wait_for(lambda: root_cluster()["connection"] == "online", "the leaf's proxy to report")
    assert root_cluster() == {"name": "root", "connection": "online", "proxies": [root_proxy]}
    assert status_json(site.leaf)["leaf_clusters"] == []


def test_status_text_lines_up_what_a_person_reads(site: Site) -> None:
    wait_for(lambda: "web-1" in site.root.tetherctl("status").stdout, "the node")
    lines = site.root.tetherctl("status").stdout.splitlines()

    assert lines[0].split() == ["Cluster", "root"]
    assert lines[2].split()[:3] == ["CA", "pin", site.root.ca_pin]
    assert "(the X.509 CA's: what --ca-pin takes)" in lines[2]
    assert lines[3].split()[:2] == ["User", "CA"] and lines[3].split()[2].startswith("SHA256:")
    assert "Nodes          1 online: web-1" in lines
    assert "Leaf clusters  leaf (online)" in lines
    assert "Root clusters  none" in lines
    # two blocks, the cluster's and what is connected, each with its values in one column
    cut = lines.index("")
    for block in (lines[:cut], lines[cut + 1 :]):
        assert len({len(line) - len(line.split("  ", 1)[1].lstrip()) for line in block}) == 1


def test_status_as_yaml_is_the_json_document(site: Site) -> None:
    document = load_document(site.leaf.tetherctl("status", "--format=yaml").stdout, "status")
    assert document is not None
    as_yaml = document.data

    assert as_yaml["cluster"] == "leaf"
    assert as_yaml["ca_pin"] == site.leaf.ca_pin
    assert set(as_yaml) == set(status_json(site.leaf))


def test_user_without_admin_rules_sees_the_pins_and_is_told_what_is_not_shown(
    site: Site,
) -> None:
    site.root.add_user("uma", "uma-password-123", roles=("access",))
    site.root.login("uma", "uma-password-123")

    status = json.loads(site.root.as_user("uma", "tetherctl", "status", "--format=json").stdout)
    text = site.root.as_user("uma", "tetherctl", "status").stdout

    assert status["ca_pin"] == site.root.ca_pin
    assert "proxy" in status["not_shown"] and status["proxies"] is None
    assert "Not shown" in text and "(your roles may not list)" in text
