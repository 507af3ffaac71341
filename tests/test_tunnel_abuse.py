"""Agents that abuse a real cluster's tunnels, and the legitimate one beside them.

Real processes on 127.0.0.1: a cluster ``main`` (auth + proxy) and a node in tunnel mode that
root users reach with ``tether ssh``. The attackers hold real tunnel certificates: those of a
node that joined with a token (``mallory``), or a user's from ``tether login``. They flood the
proxy with requests whose answers they never read, dial over TLS 1.2 or with a certificate of
the wrong kind, or keep a tunnel open past their certificate's expiry. Each is refused or sent
away, audited, and ``tether ssh`` through the legitimate tunnel keeps working. Sessions run as
the OS account ``visitor`` created here, so the tests need root.
"""

from __future__ import annotations

import json
import os
import pathlib
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import attrs
import pytest

from tether import pki
from tether.client.profile import current_profile
from tether.node.join import load_identity, renewal_due
from tether.testing.accounts import can_create_accounts
from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_node, wait_for
from tether.testing.tunnel_peer import PeerProcess, init_cluster, start_agent
from tether.tunnel import _frames as fr
from tether.tunnel._frames import FrameType
from tether.tunnel.server import TUNNEL_ALPN

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH tools"),
]

LOGIN = "visitor"
PASSWORD = "correct horse battery staple"
#: a flood is held back once a send makes no progress for this long
STALL = 5.0
#: what a flood may push before the test calls it not held back
FLOOD_LIMIT = 100 << 20


@attrs.frozen
class Site:
    cluster: RunningCluster
    node: RunningNode
    #: a joined node's identity (``tls.crt``, ``key.pem``, ``cas.pem``), its process stopped
    mallory: pathlib.Path
    directory: pathlib.Path

    @property
    def mallory_id(self) -> str:
        """The host id mallory's certificate names (its tunnels' agent)."""
        joined = load_identity(self.mallory)
        assert joined is not None
        return joined.identity.username

    def ssh(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.tether("alice", "ssh", f"{LOGIN}@tunnel-node", *command, check=False)

    def audited(self, event: str) -> list[dict[str, object]]:
        found = self.cluster.tetherctl("audit", "search", f"--type={event}", "--format=json")
        events: list[dict[str, object]] = json.loads(found.stdout)
        return events


def _start_site(directory: pathlib.Path, config: dict[str, object] | None = None) -> Site:
    cluster = start_cluster(directory / "main", "main", config=config)
    node: RunningNode | None = None
    try:
        node = start_node(cluster, directory / "tunnel", "tunnel-node")
        start_node(cluster, directory / "mallory", "mallory").stop()
        cluster.add_user("alice", PASSWORD, roles=["access"], logins=[LOGIN])
        cluster.login("alice", PASSWORD)
    except BaseException:
        if node is not None:
            node.stop()
        cluster.stop()
        raise
    return Site(cluster, node, directory / "mallory/data/host", directory)


def _stop_site(site: Site) -> None:
    site.node.stop()
    site.cluster.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, os_user: pwd.struct_passwd) -> Iterator[Site]:
    started = _start_site(tmp_path_factory.mktemp("tunnel-abuse"))
    try:
        yield started
    finally:
        _stop_site(started)


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


# --- an agent that asks and never reads the answers -------------------------------------------


def dial_tunnel(
    site: Site,
    cert: pathlib.Path,
    key: pathlib.Path,
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLSocket:
    """A TLS connection to the proxy's tunnel port with a certificate of our choice."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(site.mallory / "cas.pem"))
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols([TUNNEL_ALPN])
    context.minimum_version = context.maximum_version = version
    host, port = site.cluster.proxy_addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return context.wrap_socket(sock, server_hostname="localhost")


@attrs.define
class Flood:
    """One connection that sends frames needing an answer and reads none of the answers."""

    tls: ssl.SSLSocket
    chunks: Iterator[bytes]
    sent: int = 0
    outcome: str = ""

    def run(self) -> None:
        self.tls.settimeout(STALL)
        try:
            self.tls.sendall(fr.encode_hello(256 * 1024, 16 * 1024 * 1024))
            for chunk in self.chunks:
                self.tls.sendall(chunk)
                self.sent += len(chunk)
                if self.sent >= FLOOD_LIMIT:
                    self.outcome = "not held back"
                    return
        except TimeoutError:
            self.outcome = "held back"
        except OSError as exc:
            self.outcome = f"closed: {exc}"

    def closed_by_the_proxy(self) -> bool:
        """Read what the proxy sent (the answers held back) until the connection ends."""
        self.tls.settimeout(30)
        try:
            while self.tls.recv(1 << 20):
                pass
        except TimeoutError:
            return False  # still open
        except OSError:
            pass  # reset: the proxy closed with our requests unread
        return True


def pings() -> Iterator[bytes]:
    chunk = fr.frame(FrameType.PING, 0, b"pingpong") * 4096
    while True:
        yield chunk


def opens() -> Iterator[bytes]:
    """OPENs the proxy refuses (agents may not open streams into it), fresh ids each time."""
    stream_id = 1
    while True:
        frames = []
        for _ in range(4096):
            frames.append(fr.encode_open(stream_id, 64 * 1024, b"127.0.0.1:22", b""))
            stream_id += 2
        yield b"".join(frames)


def test_an_agent_flooding_pings_and_opens_without_reading_is_sent_away_with_bounded_memory(
    site: Site,
) -> None:
    assert site.ssh("echo", "before").stdout == "before\n"
    pid = site.cluster.process.pid
    before = rss(pid)
    peak = before
    floods = [
        Flood(dial_tunnel(site, site.mallory / "tls.crt", site.mallory / "key.pem"), chunks)
        for chunks in (pings(), opens())
    ]
    threads = [threading.Thread(target=flood.run) for flood in floods]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, rss(pid))
        time.sleep(0.05)
    outcomes = [flood.outcome for flood in floods]
    assert "not held back" not in outcomes, (outcomes, [f.sent for f in floods])

    # held back, not served: the legitimate tunnel carries sessions meanwhile
    assert site.ssh("echo", "during").stdout == "during\n"

    def sent_away() -> list[dict[str, object]]:
        return [
            event
            for event in site.audited("tunnel.closed")
            if event.get("agent") == site.mallory_id and "replies" in str(event.get("reason"))
        ]

    wait_for(lambda: len(sent_away()) == 2, "both floods sent away", timeout=120)
    peak = max(peak, rss(pid))
    for flood in floods:
        assert flood.closed_by_the_proxy()
        assert flood.sent < 64 << 20, flood.sent
    assert peak - before < 64 << 20, f"the proxy grew from {before} to {peak} bytes"
    log = site.cluster.log_text()
    assert "closed: connection terminated by this side" in log or "did not read the" in log
    assert site.ssh("echo", "after").stdout == "after\n"


# --- refusals of the proxy's own tunnel check ---------------------------------------------------


def agent_presenting(
    site: Site, name: str, cert: pathlib.Path, key: pathlib.Path, *args: str
) -> PeerProcess:
    """The tests' tunnel agent, dialling the cluster's proxy with ``cert``."""
    directory = site.directory / name
    init_cluster(directory, "main")  # only names the agent; the certificate comes from --cert
    return start_agent(
        directory,
        site.mallory / "cas.pem",
        site.cluster.proxy_addr,
        *("--cert", str(cert), "--key", str(key), "--backoff-initial", "0.5", *args),
        wait=False,
    )


def test_a_tunnel_over_tls_1_2_or_with_a_user_certificate_is_refused_by_the_proxy(
    site: Site,
) -> None:
    profile = current_profile(site.cluster.user_home("alice"))
    assert profile is not None
    agents = [
        agent_presenting(
            site, "old-tls", site.mallory / "tls.crt", site.mallory / "key.pem", "--tls-version=1.2"
        ),
        agent_presenting(site, "user-cert", profile.tls_cert_file, profile.tls_key_file),
    ]
    try:
        reasons = {
            site.mallory_id: "it negotiated TLSv1.2, tunnels need TLS 1.3",
            "alice": "a user certificate (alice of cluster main) may not open tunnels",
        }

        def refusals() -> dict[str, str]:
            return {
                str(event["agent"]): str(event["reason"])
                for event in site.audited("tunnel.refused")
                if event.get("success") is False
            }

        wait_for(lambda: reasons.items() <= refusals().items(), "both refusals audited")
        for reason in reasons.values():
            assert f"refused: {reason}" in site.cluster.log_text()
        for agent in agents:
            assert agent.info().get("connected") in (None, [])
        assert site.ssh("echo", "unaffected").stdout == "unaffected\n"
    finally:
        for agent in agents:
            agent.stop()


# --- certificates renewed, and expired ----------------------------------------------------------

# seconds; renewal at two thirds of it. The session that crosses a renewal must end before the
# first certificate expires (its tunnel closes then), a third of the lifetime after the renewal:
# long enough for a client's start on a loaded two-core machine.
LIFETIME = 24
TETHER = (sys.executable, "-m", "tether.cli.tether")


@pytest.fixture
def short_lived(tmp_path: pathlib.Path, os_user: pwd.struct_passwd) -> Iterator[Site]:
    started = _start_site(tmp_path, {"auth_service": {"host_cert_ttl": f"{LIFETIME}s"}})
    try:
        yield started
    finally:
        _stop_site(started)


def test_a_renewing_node_moves_to_new_tunnels_and_its_running_session_finishes(
    short_lived: Site,
) -> None:
    site = short_lived
    first = load_identity(site.node.directory / "data/host")
    assert first is not None
    time.sleep(max(renewal_due(first).timestamp() - time.time() - 3, 0))
    # a session running across the renewal, on the tunnel the renewal replaces
    running = subprocess.Popen(
        [*TETHER, "ssh", f"{LOGIN}@tunnel-node", "echo started; sleep 6; echo finished"],
        env={**os.environ, "TETHER_HOME": str(site.cluster.user_home("alice"))},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: "renewed its certificates" in site.node.log_text(), "the renewal")
        # a new tunnel with the new certificate first, then GOAWAY on the old one
        wait_for(
            lambda: (
                "peer is going away: the node renewed its certificate" in site.cluster.log_text()
            ),
            "GOAWAY on the old tunnel",
        )
        assert "replacing the tunnel to proxy main-node" in site.node.log_text()
        out, err = running.communicate(timeout=30)
    finally:
        running.kill()
    assert (running.returncode, out) == (0, "started\nfinished\n"), err
    # past the first certificate's expiry the proxy closed no tunnel for it: the node's are new
    time.sleep(max(first.tls_cert.not_valid_after_utc.timestamp() - time.time() + 1, 0))
    assert site.ssh("echo", "renewed").stdout == "renewed\n"
    assert "the certificate of this tunnel expired" not in site.cluster.log_text()


def test_a_tunnel_whose_certificate_expires_unrenewed_is_closed_by_the_proxy(
    short_lived: Site,
) -> None:
    site = short_lived
    expires = pki.load_cert((site.mallory / "tls.crt").read_bytes()).not_valid_after_utc
    # mallory's agent keeps the certificate it joined with: it never renews
    agent = agent_presenting(site, "unrenewed", site.mallory / "tls.crt", site.mallory / "key.pem")
    try:
        agent.wait_for(lambda info: info.get("connected") == ["main-node"], timeout=15)
        assert time.time() < expires.timestamp(), "the agent connected too late to test"

        def closed() -> list[dict[str, object]]:
            return [e for e in site.audited("tunnel.closed") if e.get("agent") == site.mallory_id]

        wait_for(lambda: bool(closed()), "the expired tunnel closed", timeout=LIFETIME + 10)
        assert time.time() >= expires.timestamp()
        [event] = closed()
        assert str(event["reason"]).startswith(
            f"the certificate of this tunnel expired at {expires:%H:%M:%S} UTC"
        )
        assert "closed: the certificate of this tunnel expired at" in site.cluster.log_text()
        agent.wait_for(lambda info: info.get("connected") == [], timeout=15)
        # and it cannot come back with that certificate
        time.sleep(2)
        assert agent.info().get("connected") == []
        assert site.ssh("echo", "unaffected").stdout == "unaffected\n"
    finally:
        agent.stop()
