"""``tether proxy ssh`` outlives OpenSSH's SIGHUP to deliver what ssh wrote last.

OpenSSH sends its ProxyCommand SIGHUP as it exits; its last packets may still be unread in
the command's standard input. The scanner scenario (test_scanners.py) met the loss about one
run in ten; here it is made certain, with a real ``tether proxy ssh`` between this test and
a real node (``web``, its own ``tetherd``, reached through its reverse tunnel): the command is
stopped (SIGSTOP) once its relay is up, the client's banner and a KEXINIT are written into
its standard input, SIGHUP is sent and standard input ends, and only then does it run again
(SIGCONT). The bytes were in the pipe before the hangup, unread, as ssh's last packets are.
A KEXINIT offering a key exchange the node does not have makes the node audit an
``ssh.denied`` naming what the client offered: the proof that the bytes reached it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import attrs
import pytest
from tether_ssh.cli import HANGUP_GRACE

from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    start_cluster,
    start_node,
    wait_for,
)

PASSWORD = "correct horse battery staple"
#: A hang guard, not a figure: far beyond the grace, for a loaded machine.
EXIT_TIMEOUT = HANGUP_GRACE + 55
SSH_MSG_KEXINIT = 20


@attrs.frozen
class Site:
    cluster: RunningCluster
    node: RunningNode

    @contextlib.contextmanager
    def proxy_command(self) -> Iterator[subprocess.Popen[bytes]]:
        """``tether proxy ssh`` as OpenSSH starts it, its stdin and stdout ours, once the
        node's banner came through it (the relay is up); killed if the block leaves it."""
        proxy = subprocess.Popen(
            [sys.executable, "-m", "tether.cli.tether", "proxy", "ssh", "visitor@web"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "TETHER_HOME": str(self.cluster.user_home("alice"))},
        )
        try:
            assert proxy.stdout is not None
            banner = proxy.stdout.readline()
            assert banner.startswith(b"SSH-2.0-"), banner
            yield proxy
        finally:
            if proxy.poll() is None:
                proxy.kill()
                proxy.wait()
            for pipe in (proxy.stdin, proxy.stdout, proxy.stderr):
                if pipe is not None:
                    pipe.close()

    @staticmethod
    def wait_finished(proxy: subprocess.Popen[bytes]) -> None:
        """Until ``proxy`` exits by itself, which must be as a finished command (status 0),
        not killed by the signal."""
        status = proxy.wait(timeout=EXIT_TIMEOUT)
        assert proxy.stderr is not None
        assert status == 0, proxy.stderr.read()

    def denied(self, offered: str) -> list[dict[str, object]]:
        found = json.loads(
            self.cluster.tetherctl("audit", "search", "--type=ssh.denied", "--format=json").stdout
        )
        return [e for e in found if offered in str(e.get("reason", ""))]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("hangup")
    cluster = start_cluster(directory / "main", "main")
    node: RunningNode | None = None
    try:
        node = start_node(cluster, directory / "web", "web")
        # the key exchange is refused before any login: no OS account is needed
        cluster.add_user("alice", PASSWORD, roles=["access"], logins=["visitor"])
        cluster.login("alice", PASSWORD)
        yield Site(cluster, node)
    finally:
        if node is not None:
            node.stop()
        cluster.stop()


def _name_list(names: list[str]) -> bytes:
    joined = ",".join(names).encode()
    return struct.pack(">I", len(joined)) + joined


def _kexinit(kex: str) -> bytes:
    """A cleartext SSH_MSG_KEXINIT packet (RFC 4253 7.1) offering the key exchange ``kex``
    and otherwise what every node has."""
    payload = bytes([SSH_MSG_KEXINIT]) + secrets.token_bytes(16)
    for names in (
        [kex],
        ["ssh-ed25519"],
        ["aes128-gcm@openssh.com"],
        ["aes128-gcm@openssh.com"],
        ["hmac-sha2-256"],
        ["hmac-sha2-256"],
        ["none"],
        ["none"],
        [],
        [],
    ):
        payload += _name_list(names)
    payload += b"\x00" + struct.pack(">I", 0)  # first_kex_packet_follows, reserved
    padding = 8 - (5 + len(payload)) % 8
    padding += 8 if padding < 4 else 0
    return struct.pack(">IB", 1 + len(payload) + padding, padding) + payload + bytes(padding)


def _wait_stopped(pid: int) -> None:
    """Until the kernel shows ``pid`` stopped (SIGSTOP takes effect asynchronously)."""
    while True:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.01)


def test_bytes_ssh_wrote_before_its_hangup_reach_the_node(site: Site) -> None:
    offered = f"hangup-{secrets.token_hex(4)}@example.com"
    with site.proxy_command() as proxy:
        assert proxy.stdin is not None
        os.kill(proxy.pid, signal.SIGSTOP)
        _wait_stopped(proxy.pid)
        proxy.stdin.write(b"SSH-2.0-OpenSSH_9.2 hangup-test\r\n" + _kexinit(offered))
        proxy.stdin.flush()
        os.kill(proxy.pid, signal.SIGHUP)  # as ssh exits...
        proxy.stdin.close()  # ...its end of the pipe closes
        os.kill(proxy.pid, signal.SIGCONT)
        site.wait_finished(proxy)
    # the node's audit events reach auth in batches
    wait_for(lambda: site.denied(offered), f"an ssh.denied event naming {offered}", timeout=60)
    (event,) = site.denied(offered)
    assert event["node"] == "web"
    assert "no key exchange algorithm in common with the client" in str(event["reason"])


def test_a_hung_up_proxy_command_exits_by_itself_when_its_input_never_ends(site: Site) -> None:
    with site.proxy_command() as proxy:
        os.kill(proxy.pid, signal.SIGHUP)
        # standard input stays open, as a writer that holds the pipe would keep it: the grace
        # ends the relay, and the command exits as a finished one
        site.wait_finished(proxy)
