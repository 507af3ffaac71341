"""Trust is not transitive, as in Teleport: a root user reaches its leaves, not a leaf's own
leaves. Real processes on 127.0.0.1.

Three clusters in a chain: ``mid`` trusts ``root`` (``access`` -> ``visitor``), and ``bottom``
trusts ``mid`` (the same mapping), each leaf with a node in tunnel mode. Alice is a user of
the root, Mo one of mid. Mo reaches bottom; alice reaches mid and never bottom, whether she
asks the root's proxy, presents her certificate at mid's own proxy, or a hostile proxy holding
the root's CA forges the request through mid's tunnel. Sessions run as the OS account
``visitor`` (needs root).

Every test stands alone, in any order: the clusters are shared by the module, and the one test
that moves mid's tunnel to a hostile proxy puts it back (and waits for it) when it ends.
"""

from __future__ import annotations

import base64
import json
import pathlib
import pwd
import shutil
import ssl
from collections.abc import Iterator
from functools import partial
from typing import Any

import attrs
import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding
from tether_ssh.frontdoor import FRONT_DOOR_ALPN, TITLE

from tether import pki
from tether.auth.http_client import AuthClient
from tether.client.dial import list_targets, open_target_stream
from tether.client.profile import current_profile
from tether.datadir import admin_identity_paths
from tether.dial import refusal_error
from tether.errors import AccessDenied, NotFound, TetherError
from tether.testing.accounts import can_create_accounts
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    start_cluster,
    start_node,
    wait_for,
)
from tether.testing.roles import VISITOR_ROLE
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    trusted_cluster_yaml,
)
from tether.testing.tunnel_peer import serve_tunnels
from tether.tunnel.control import ControlChannel
from tether.tunnel.server import TargetRefused

pytestmark = [
    pytest.mark.skipif(not can_create_accounts(), reason="creates an OS account (needs root)"),
    pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH tools"),
]

PASSWORD = "correct horse battery staple"


@attrs.frozen
class Chain:
    root: RunningCluster
    mid: RunningCluster
    bottom: RunningCluster

    def alice(self, *args: str) -> tuple[int, str, str]:
        """``tether ARGS`` run by alice, a user of the root."""
        result = self.root.tether("alice", *args, check=False)
        return result.returncode, result.stdout, result.stderr

    def mo(self, *args: str) -> tuple[int, str, str]:
        """``tether ARGS`` run by mo, a user of mid."""
        result = self.mid.tether("mo", *args, check=False)
        return result.returncode, result.stdout, result.stderr

    def refused_at(self, cluster: RunningCluster) -> list[dict[str, Any]]:
        found = cluster.tetherctl(
            "audit", "search", "--type=trust.stream.refused", "--format=json"
        ).stdout
        return list(json.loads(found))

    def mid_tunnel_to(self, addr: str) -> None:
        """Point mid's tunnels to the root at ``addr``: the same trust, changed live (without
        a token, so no new handshake)."""
        moved = trusted_cluster_yaml(self.root, "").replace(
            f"tunnel_addr: {self.root.proxy_addr}", f"tunnel_addr: {addr}"
        )
        create_trusted_cluster(self.mid, moved, "--force")

    def alice_at_mid(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        """Alice's root-issued certificate, presented at mid's own proxy (the guide's
        warning: a leaf trusts the root's CA, so it works there too)."""
        profile = current_profile(self.root.user_home("alice"))
        assert profile is not None
        return pki.client_ssl_context(
            trusted_cas=pki.load_certs(admin_identity_paths(self.mid.data_dir)[2].read_bytes()),
            cert=pki.load_cert(profile.tls_cert_file.read_bytes()),
            key=pki.load_private_key(profile.tls_key_file.read_bytes()),
            alpn=alpn or (),
        )

    def wait_until_alice_reaches_mid(self) -> None:
        wait_for(lambda: connection(self.root, "mid") == "online", "mid to come online")
        wait_for(lambda: self.alice("ls", "--cluster=mid")[0] == 0, "alice to list mid's nodes")


def _create_role(cluster: RunningCluster, directory: pathlib.Path) -> None:
    path = directory / f"visitor-{cluster.name}.yaml"
    path.write_text(VISITOR_ROLE)
    cluster.tetherctl("create", str(path))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, os_user: pwd.struct_passwd) -> Iterator[Chain]:
    directory = tmp_path_factory.mktemp("chain")
    started: list[RunningCluster | RunningNode] = []
    try:
        root = start_cluster(directory / "root", "root")
        started.append(root)
        mid = start_cluster(directory / "mid", "mid")
        started.append(mid)
        bottom = start_cluster(directory / "bottom", "bottom")
        started.append(bottom)
        started.append(start_node(mid, directory / "mid-node", "mid-node"))
        started.append(start_node(bottom, directory / "bottom-node", "bottom-node"))
        for leaf in (mid, bottom):
            _create_role(leaf, directory)
        root.add_user("alice", PASSWORD, roles=["access"], logins=["visitor"])
        root.login("alice", PASSWORD)
        mid.add_user("mo", PASSWORD, roles=["access"], logins=["visitor"])
        mid.login("mo", PASSWORD)
        create_trusted_cluster(mid, trusted_cluster_yaml(root, invite(root, ttl="5m")))
        create_trusted_cluster(bottom, trusted_cluster_yaml(mid, invite(mid, ttl="5m")))
        wait_for(lambda: connection(mid, "bottom") == "online", "bottom to come online at mid")
        found = Chain(root, mid, bottom)
        found.wait_until_alice_reaches_mid()
        wait_for(lambda: found.mo("ls", "--cluster=bottom")[0] == 0, "mo to list bottom's nodes")
        yield found
    finally:
        for process in reversed(started):
            process.stop()


def test_root_user_reaches_mid_but_bottom_is_not_found_as_a_cluster_that_does_not_exist(
    chain: Chain,
) -> None:
    # bottom is there, online, and mid's own user reaches it
    code, out, err = chain.mo("ls", "--cluster=bottom", "-f", "json")
    assert code == 0, err
    assert [node["hostname"] for node in json.loads(out)] == ["bottom-node"]

    # alice, of the root, sees and reaches mid
    code, out, err = chain.alice("clusters", "-f", "json")
    assert code == 0, err
    assert [cluster["name"] for cluster in json.loads(out)] == ["root", "mid"]
    code, out, err = chain.alice("ls", "--cluster=mid", "-f", "json")
    assert (code, [node["hostname"] for node in json.loads(out)]) == (0, ["mid-node"]), err
    wait_for(
        lambda: chain.alice("ssh", "--cluster=mid", "visitor@mid-node", "id -un")[1] == "visitor\n",
        "alice's session on mid-node",
    )

    # and never bottom: one line, the same as for a cluster that does not exist
    absent = (
        "ERROR: cluster '{}' not found (run `tether clusters` to see the clusters you can reach)"
    )
    for command, status in (("ls", 1), ("ssh", 255)):
        args = ["visitor@bottom-node", "true"] if command == "ssh" else []
        code, out, err = chain.alice(command, "--cluster=bottom", *args)
        assert (code, out, err.strip()) == (status, "", absent.format("bottom"))
        nowhere = chain.alice(command, "--cluster=nowhere", *args)
        assert (nowhere[0], nowhere[2].strip()) == (status, absent.format("nowhere"))
    assert chain.refused_at(chain.bottom) == []  # the request never left the root


def test_root_certificate_at_mids_own_proxy_does_not_reach_bottom(chain: Chain) -> None:
    context = chain.alice_at_mid([FRONT_DOOR_ALPN])
    listing = partial(
        list_targets, chain.mid.proxy_addr, context, alpn=FRONT_DOOR_ALPN, protocol=TITLE
    )
    assert [node["spec"]["hostname"] for node in trio.run(partial(listing, cluster="mid"))] == [
        "mid-node"
    ]
    with pytest.raises(NotFound) as hidden:
        trio.run(partial(listing, cluster="bottom"))
    assert hidden.value.message == "cluster 'bottom' not found"
    dial = partial(
        open_target_stream,
        chain.mid.proxy_addr,
        context,
        alpn=FRONT_DOOR_ALPN,
        protocol=TITLE,
        cluster="bottom",
        target="bottom-node",
    )
    with pytest.raises(NotFound, match="cluster 'bottom' not found"):
        trio.run(dial)

    # mid's auth shows a user of another cluster none of mid's leaves
    async def clusters_alice_sees_at_mid() -> list[dict[str, Any]]:
        async with AuthClient(f"https://{chain.mid.proxy_addr}", chain.alice_at_mid()) as auth:
            return await auth.get_resources("remote_cluster")

    assert trio.run(clusters_alice_sees_at_mid) == []
    assert chain.refused_at(chain.bottom) == []  # mid passed nothing on


@pytest.fixture
def hostile_root_proxy(chain: Chain) -> Iterator[Chain]:
    """The chain, for a test that moves mid's tunnel to a hostile proxy: put back on the
    root's own proxy afterwards, pass or fail, and alice reaching mid again."""
    yield chain
    chain.mid_tunnel_to(chain.root.proxy_addr)
    chain.wait_until_alice_reaches_mid()


async def _ask_mid_through_a_hostile_proxy(
    chain: Chain, requests: list[dict[str, str]]
) -> list[TetherError | dict[str, Any]]:
    """Serve tunnels as a proxy of the root would (a certificate of the root's CA: an
    attacker who took a root proxy host), move mid's tunnel there, and send each request
    through it; each answer is mid's error, rebuilt, or the message it accepted with."""
    authorities = pki.ClusterAuthorities.load_or_create(chain.root.data_dir / "keys", "root")
    mid_ca = pki.load_certs(chain.mid.data_dir.joinpath("keys", "tls_ca.crt").read_bytes())
    answers: list[TetherError | dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        server, addr = await nursery.start(
            partial(serve_tunnels, authorities, mid_ca, proxy_id="hostile-proxy")
        )
        await trio.to_thread.run_sync(chain.mid_tunnel_to, addr)
        with trio.fail_after(30):
            while "mid" not in server.clusters():  # noqa: ASYNC110 (another process connects)
                await trio.sleep(0.1)
        for request in requests:
            try:
                stream = await server.dial("mid", "ssh", request)
            except TargetRefused as exc:
                answers.append(refusal_error(exc.reason))
                continue
            async with stream:
                with trio.fail_after(10):
                    answer = await ControlChannel(stream).receive()
            assert answer is not None
            answers.append(answer)
        nursery.cancel_scope.cancel()
    return answers


def test_a_forged_request_for_bottom_reaching_mid_is_refused_and_audited(
    hostile_root_proxy: Chain,
) -> None:
    chain = hostile_root_proxy
    profile = current_profile(chain.root.user_home("alice"))
    assert profile is not None
    der = pki.load_cert(profile.tls_cert_file.read_bytes()).public_bytes(Encoding.DER)
    alice = {"user_cert": base64.b64encode(der).decode(), "client": "127.0.0.1:1"}
    before = len(chain.refused_at(chain.mid))
    listed, dialled, own = trio.run(
        _ask_mid_through_a_hostile_proxy,
        chain,
        [
            {"type": "list", "cluster": "bottom", **alice},
            {"type": "dial", "cluster": "bottom", "target": "bottom-node", **alice},
            {"type": "list", "cluster": "mid", **alice},  # mid's own: answered as ever
        ],
    )
    assert isinstance(own, dict) and own["type"] == "targets"
    assert [doc["spec"]["hostname"] for doc in own["targets"]] == ["mid-node"]
    for refused in (listed, dialled):
        assert isinstance(refused, AccessDenied), refused
        assert refused.message == (
            "cluster 'mid' passes no request on to cluster 'bottom': trust is not transitive, "
            "a root cluster reaches its own leaves only"
        )
        assert refused.hint == "run `tether clusters` to see the clusters you can reach"

    def audited() -> list[dict[str, Any]]:
        events = chain.refused_at(chain.mid)[before:]
        return [e for e in events if e.get("requested_cluster") == "bottom"]

    wait_for(lambda: len(audited()) == 2, "mid to audit both refusals")
    assert sorted((e.get("op", ""), e.get("node", "")) for e in audited()) == [
        ("", "bottom-node"),
        ("list", ""),
    ]
    for event in audited():
        assert (event["root"], event["target"], event["success"]) == ("root", "ssh", False)
        assert "trust is not transitive" in event["reason"]
    assert chain.refused_at(chain.bottom) == []  # mid never routed it on
