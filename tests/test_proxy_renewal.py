"""Proxies renew their certificates while they run, and move their tunnels to the new ones.

Real processes on 127.0.0.1, with certificates that live seconds (renewed at two thirds of
their lifetime): a leaf cluster (auth and proxy in one process) that trusts a root, whose root
closes a tunnel once the certificate it was opened with expires; and a proxy of its own
(``tetherd start --roles=proxy --token=...``) that users log in through. Sessions run as the
OS account ``visitor`` created here, so the tests need root.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import time
from functools import partial

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_public_identity
from cryptography.hazmat.primitives.serialization.ssh import SSHCertificate

from tether import pki
from tether.node.join import join_cluster, load_identity, save_identity
from tether.route_names import ROUTE_NAME_WILDCARD
from tether.testing.accounts import can_create_accounts
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    served_certificate,
    start_cluster,
    start_node,
    start_proxy,
    wait_for,
)
from tether.testing.roles import VISITOR_ROLE
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    trusted_cluster_yaml,
)

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH tools"),
]

LIFETIME = 15  # seconds; renewal at two thirds of it
#: the leaf's: a session across a renewal must end before the old certificate expires, a third
#: of the lifetime after the renewal (10 s: 24 s left a loaded machine too little, and the
#: root closed the session's tunnel under it)
LEAF_LIFETIME = 30
#: seconds a ``tether ssh`` through the root may take to start its session
SESSION_START = 5


def short_lived(seconds: int) -> dict[str, dict[str, str]]:
    return {"auth_service": {"host_cert_ttl": f"{seconds}s"}}


PASSWORD = "correct horse battery staple"
TETHER = (sys.executable, "-m", "tether.cli.tether")


def renewal_due(cert: x509.Certificate) -> float:
    """When two thirds of ``cert``'s lifetime (from its issue) have passed, as a timestamp."""
    issued = cert.not_valid_before_utc + pki.CLOCK_SKEW
    return (issued + (cert.not_valid_after_utc - issued) * 2 / 3).timestamp()


def sleep_until(timestamp: float) -> None:
    time.sleep(max(timestamp - time.time(), 0))


def renewals(process: RunningCluster | RunningNode, proxy: str) -> int:
    return process.log_text().count(f"proxy {proxy} renewed its certificates")


def ssh(cluster: RunningCluster, target: str, command: str, *args: str) -> subprocess.Popen[str]:
    """``tether ssh`` as alice, running while the test goes on."""
    return subprocess.Popen(
        [*TETHER, "ssh", *args, target, command],
        env={**os.environ, "TETHER_HOME": str(cluster.user_home("alice"))},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(session: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = session.communicate(timeout=60)
    finally:
        session.kill()
    return session.returncode, out, err


# --- a leaf's proxy, in auth's process ----------------------------------------------------------


def test_a_leaf_whose_proxy_renews_stays_online_at_the_root_past_its_first_certificate(
    tmp_path: pathlib.Path, os_user: pwd.struct_passwd
) -> None:
    root = start_cluster(tmp_path / "root", "root")
    started: list[RunningCluster | RunningNode] = [root]
    try:
        # the root's part first: the leaf's certificate lives from the leaf's start on
        root.add_user("alice", PASSWORD, roles=["access"], logins=["visitor"])
        root.login("alice", PASSWORD)
        leaf = start_cluster(tmp_path / "leaf", "leaf", config=short_lived(LEAF_LIFETIME))
        started.append(leaf)
        started.append(start_node(leaf, tmp_path / "leaf-host", "leaf-host"))
        role = tmp_path / "visitor.yaml"
        role.write_text(VISITOR_ROLE)
        leaf.tetherctl("create", str(role))
        create_trusted_cluster(leaf, trusted_cluster_yaml(root, invite(root, ttl="5m")))
        wait_for(lambda: connection(root) == "online", "the leaf to come online")

        def reach(command: str) -> tuple[int, str, str]:
            return finished(ssh(root, "visitor@leaf-host", command, "--cluster=leaf"))

        wait_for(lambda: reach("true")[0] == 0, "the leaf's node to trust the root", 60)

        first = served_certificate(leaf.proxy_addr)
        if renewal_due(first) - SESSION_START < time.time():  # too close to start it before
            count = renewals(leaf, "leaf-node")
            wait_for(lambda: renewals(leaf, "leaf-node") > count, "the leaf's proxy to renew")
            first = served_certificate(leaf.proxy_addr)
        assert first.not_valid_after_utc - first.not_valid_before_utc <= datetime.timedelta(
            seconds=LEAF_LIFETIME + 2 * pki.CLOCK_SKEW.total_seconds()
        ), "the leaf's proxy holds a certificate of a host's lifetime"
        count = renewals(leaf, "leaf-node")
        # a session running across the renewal, on the tunnel to the root that it replaces,
        # started now and ending 4 s after the renewal is due (by the clock of this machine,
        # where the node runs): it has to end before the old certificate expires, when the root
        # closes that tunnel
        end = math.ceil(renewal_due(first)) + 4
        command = f"echo started; sleep $(({end} - $(date +%s))); echo finished"
        running = ssh(root, "visitor@leaf-host", command, "--cluster=leaf")
        try:
            assert running.stdout is not None
            assert running.stdout.readline() == "started\n"
            assert renewals(leaf, "leaf-node") == count, "the session started too late to test"
            wait_for(lambda: renewals(leaf, "leaf-node") > count, "the leaf's proxy to renew")
            wait_for(
                lambda: (
                    "peer is going away: the leaf's proxy renewed its certificate"
                    in root.log_text()
                ),
                "GOAWAY on the leaf's old tunnel to the root",
            )
        finally:
            status, out, err = finished(running)
        assert (status, out) == (0, "finished\n"), err
        assert served_certificate(leaf.proxy_addr) != first  # its own port presents the new one

        # past the first certificate's expiry, and across more renewals, the leaf stays online
        sleep_until(first.not_valid_after_utc.timestamp() + 1)
        wait_for(
            lambda: renewals(leaf, "leaf-node") >= count + 3, "more renewals", 3 * LEAF_LIFETIME
        )
        assert connection(root) == "online"
        listed = root.tetherctl("get", "rc").stdout
        assert "leaf" in listed and "online" in listed, listed
        status, out, err = reach("echo renewed")
        assert (status, out) == (0, "renewed\n"), err
        assert "the certificate of this tunnel expired" not in root.log_text()
        assert "could not renew" not in leaf.log_text()
    finally:
        for process in reversed(started):
            process.stop()


# --- a proxy of its own -------------------------------------------------------------------------


def test_a_joined_proxy_renews_while_running_and_serves_logins_and_tunnels_past_expiry(
    tmp_path: pathlib.Path, os_user: pwd.struct_passwd
) -> None:
    cluster = start_cluster(tmp_path / "main", "main", config=short_lived(LIFETIME))
    started: list[RunningCluster | RunningNode] = [cluster]
    try:
        proxy = start_proxy(cluster, tmp_path / "proxy-b", "proxy-b")
        started.append(proxy)
        first = load_identity(tmp_path / "proxy-b/data/proxy")
        assert first is not None
        assert served_certificate(proxy.proxy_addr) == first.tls_cert
        cluster.add_user("alice", PASSWORD, roles=["access"], logins=["visitor"])

        def login() -> subprocess.CompletedProcess[str]:
            return cluster.tether(
                "alice",
                "login",
                f"--proxy={proxy.proxy_addr}",
                "--user=alice",
                "--password-stdin",
                f"--ca-pin={cluster.ca_pin}",
                input=PASSWORD + "\n",
                check=False,
            )

        sleep_until(first.tls_cert.not_valid_after_utc.timestamp() + 1)
        wait_for(lambda: renewals(proxy, "proxy-b") >= 2, "two renewals", 3 * LIFETIME)
        renewed = load_identity(tmp_path / "proxy-b/data/proxy")  # saved for its next start
        assert renewed is not None
        assert renewed.tls_cert.not_valid_after_utc > first.tls_cert.not_valid_after_utc
        assert served_certificate(proxy.proxy_addr) != first.tls_cert

        # a user logs in through it, past its first certificate's expiry (it asks auth with
        # its renewed one) ...
        result = login()
        assert result.returncode == 0, result.stderr
        assert proxy.proxy_addr in cluster.tether("alice", "status").stdout
        # ... and a node that joins through it keeps a tunnel to it and is reached through it
        node = start_node_through(cluster, proxy, tmp_path / "tunnel-node")
        started.append(node)
        wait_for(
            lambda: finished(ssh(cluster, "visitor@tunnel-node", "true"))[0] == 0,
            "the node to be reached through the renewed proxy",
        )
        assert "tunnel to proxy proxy-b (" in node.log_text()
        assert "could not renew" not in proxy.log_text()
    finally:
        for process in reversed(started):
            process.stop()


def test_a_proxy_that_joined_before_route_names_gains_the_wildcard_when_it_starts(
    tmp_path: pathlib.Path,
) -> None:
    cluster = start_cluster(tmp_path / "main", "main")
    started: list[RunningCluster | RunningNode] = [cluster]
    try:
        # what a proxy listening on 127.0.0.1 asked for before it answered to route names
        added = cluster.tetherctl("tokens", "add", "--type=proxy", "--format=json").stdout
        old = trio.run(
            partial(
                join_cluster,
                cluster.proxy_addr,
                str(json.loads(added)["token"]),
                host_id="proxy-b",
                hostname="proxy-b",
                role="proxy",
                addresses=["localhost", "proxy-b", "127.0.0.1", "::1"],
                ca_pin=cluster.ca_pin,
            )
        )
        assert ROUTE_NAME_WILDCARD not in pki.x509_host_names(old.tls_cert)
        save_identity(tmp_path / "proxy-b/data/proxy", old)

        proxy = start_proxy(cluster, tmp_path / "proxy-b", "proxy-b")
        started.append(proxy)
        assert "proxy proxy-b renewed its certificate to answer to route names" in proxy.log_text()
        served = served_certificate(proxy.proxy_addr)
        assert served != old.tls_cert
        assert pki.x509_host_names(served) == pki.x509_host_names(old.tls_cert) | {
            ROUTE_NAME_WILDCARD
        }
        renewed = load_identity(tmp_path / "proxy-b/data/proxy")  # kept for its next start
        assert renewed is not None and renewed.tls_cert == served
        # the wildcard is a TLS server name; OpenSSH would read it as a pattern
        principals = load_ssh_public_identity(renewed.ssh_host_cert.encode())
        assert isinstance(principals, SSHCertificate)
        assert b"*.tether.cluster.local" not in principals.valid_principals
        assert "could not renew" not in proxy.log_text()
    finally:
        for process in reversed(started):
            process.stop()


def start_node_through(
    cluster: RunningCluster, proxy: RunningNode, directory: pathlib.Path
) -> RunningNode:
    """A node in tunnel mode that joins through ``proxy`` (not the cluster's first one)."""
    return start_node(cluster, directory, "tunnel-node", extra_args=[f"--proxy={proxy.proxy_addr}"])
