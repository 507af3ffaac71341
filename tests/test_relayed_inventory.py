"""A node in tunnel mode sends its inventory entries in its tunnel's heartbeats, and its proxy
relays them to auth, batched with its other nodes', each as the node whose tunnel sent it.

A real cluster (auth and proxy in one ``tetherd``) on 127.0.0.1; the nodes join with a node
token and dial the tunnel with the kernel's own agent pool, as a node's agent does, and never
publish over HTTPS: whatever is listed came through a tunnel.
"""

from __future__ import annotations

import json
import logging
import pathlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio
from tether_ssh.inventory import NODE, NodeSpec

from tether.config import HostPort
from tether.node.join import JoinedIdentity, host_client_context, join_cluster
from tether.resources import resource_to_dict
from tether.testing.cluster import RunningCluster
from tether.testing.roles import VISITOR_ROLE
from tether.tlsstream import TLSStream
from tether.token_types import NODE_ROLE
from tether.tunnel.agent import AgentPool
from tether.tunnel.server import TUNNEL_ALPN
from tether.tunnel.transport import IncomingStream

WAIT = 60.0  # a heartbeat every 2 s (the cluster's keep-alive here), relayed within 5 s
#: the cluster's keep-alive here: the defaults (a heartbeat a minute) would make each test
#: wait minutes for a second heartbeat
KEEP_ALIVE = {"keep_alive_interval": "2s", "keep_alive_count_max": 3}


async def join(cluster: RunningCluster, token: str, hostname: str) -> JoinedIdentity:
    return await join_cluster(
        cluster.proxy_addr,
        token,
        host_id=str(uuid.uuid4()),
        hostname=hostname,
        role="node",
        ca_pin=cluster.ca_pin,
        roles=(NODE_ROLE,),
    )


def node_entry(host_id: str, hostname: str) -> dict[str, Any]:
    spec = NodeSpec(hostname=hostname, addr="", use_tunnel=True)
    return resource_to_dict(NODE.new(host_id, spec, labels={}))


def tunnel_pool(
    cluster: RunningCluster, joined: JoinedIdentity, entries: Callable[[], list[dict[str, Any]]]
) -> AgentPool:
    context = host_client_context(joined, alpn=[TUNNEL_ALPN], peer_kinds=("proxy",))

    async def dial(addr: str) -> trio.abc.Stream:
        target = HostPort.parse(addr)
        return await TLSStream.connect(
            target.connect_host, target.port, context, server_hostname=target.connect_host
        )

    async def refuse(request: IncomingStream) -> None:
        request.reject("serves nothing")

    def inventory() -> dict[str, Any]:
        # entries live as long as the keep-alive the proxy named says, as a node's agent does
        return {"ttl": pool.keep_alive().entry_ttl, "entries": entries()}

    pool = AgentPool(
        cluster=joined.identity.cluster,
        tunnel_addr=cluster.proxy_addr,
        dial=dial,
        handle_stream=refuse,
        inventory=inventory,
    )
    return pool


async def tunnel_node(cluster: RunningCluster, hostname: str) -> tuple[str, AgentPool]:
    """A node joined as ``hostname``: its host id, and its tunnels carrying its own entry."""
    joined = await join(cluster, node_token(cluster), hostname)
    host_id = joined.identity.username
    return host_id, tunnel_pool(cluster, joined, lambda: [node_entry(host_id, hostname)])


def listed_nodes(cluster: RunningCluster) -> dict[str, str]:
    """Host id -> hostname of every node ``tetherctl get nodes`` lists."""
    out = cluster.tetherctl("get", "nodes", "--format=json").stdout
    return {n["metadata"]["name"]: n["spec"]["hostname"] for n in json.loads(out)}


async def wait_listed(cluster: RunningCluster, check: Callable[[dict[str, str]], bool]) -> None:
    with trio.fail_after(WAIT):
        # another process stores them: polled
        while not check(await trio.to_thread.run_sync(listed_nodes, cluster)):  # noqa: ASYNC110
            await trio.sleep(0.5)


def node_token(cluster: RunningCluster) -> str:
    added = cluster.tetherctl("tokens", "add", "--type=node", "--format=json").stdout
    return str(json.loads(added)["token"])


@pytest.fixture
def cluster(tether_cluster_factory: object) -> RunningCluster:
    return tether_cluster_factory(  # type: ignore[operator,no-any-return]
        "main", config={"auth_service": KEEP_ALIVE}
    )


async def test_a_tunnel_node_is_listed_by_its_tunnel_heartbeats_alone(
    cluster: RunningCluster,
) -> None:
    host_id, pool = await tunnel_node(cluster, "quiet")
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await pool.wait_connected()
        assert pool.relays_inventory()
        await wait_listed(cluster, lambda nodes: nodes.get(host_id) == "quiet")
        nursery.cancel_scope.cancel()
    assert "relayed inventory reports in one write" in cluster.log_text()


async def test_a_tunnel_node_stays_listed_past_its_entrys_lifetime(
    cluster: RunningCluster,
) -> None:
    # its entry lives the keep-alive's count of heartbeats and a margin (3 x 2 s + 5 s here)
    # and is renewed only by its tunnel's heartbeats, at the keep-alive's interval the proxy
    # names in the hello: the entry must outlive the gap between two heartbeats
    host_id, pool = await tunnel_node(cluster, "steady")
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await pool.wait_connected()
        keep_alive = pool.keep_alive()
        assert (keep_alive.interval, keep_alive.count_max) == (2.0, 3)
        entry_ttl = keep_alive.entry_ttl
        assert keep_alive.interval < entry_ttl <= 2 * keep_alive.dead_after
        await wait_listed(cluster, lambda nodes: nodes.get(host_id) == "steady")
        deadline = trio.current_time() + entry_ttl + 10
        while trio.current_time() < deadline:
            nodes = await trio.to_thread.run_sync(listed_nodes, cluster)
            assert nodes.get(host_id) == "steady", "its entry expired between heartbeats"
            await trio.sleep(2)
        nursery.cancel_scope.cancel()


async def test_a_node_cannot_publish_another_nodes_entry_through_its_tunnel(
    cluster: RunningCluster, caplog: pytest.LogCaptureFixture
) -> None:
    token = node_token(cluster)
    victim = await join(cluster, token, "victim")
    attacker = await join(cluster, token, "attacker")
    victim_id, attacker_id = victim.identity.username, attacker.identity.username
    caplog.set_level(logging.WARNING, logger="tether.tunnel.agent")
    # the attacker's heartbeats claim the victim's entry (its host id, another address), and
    # its own: the proxy relays both as the attacker, whose tunnel sent them
    claims = [node_entry(victim_id, "victim-now-evil"), node_entry(attacker_id, "attacker")]
    victims = tunnel_pool(cluster, victim, lambda: [node_entry(victim_id, "victim")])
    attackers = tunnel_pool(cluster, attacker, lambda: claims)
    async with trio.open_nursery() as nursery:
        await nursery.start(victims.run)
        await wait_listed(cluster, lambda nodes: nodes.get(victim_id) == "victim")
        await nursery.start(attackers.run)
        await wait_listed(cluster, lambda nodes: attacker_id in nodes)
        with trio.fail_after(WAIT):  # the refusal comes back in a heartbeat's answer
            while "auth refused this host's inventory" not in caplog.text:  # noqa: ASYNC110
                await trio.sleep(0.5)
        # listed while both are connected: a node whose tunnel closes is unlisted at once
        nodes = await trio.to_thread.run_sync(listed_nodes, cluster)
        nursery.cancel_scope.cancel()
    assert f"may only publish its own node entry, not '{victim_id}'" in caplog.text
    assert nodes[victim_id] == "victim"
    assert nodes[attacker_id] == "attacker"  # its own entry went through
    out = cluster.tetherctl("audit", "search", "--type=host.publish.refused", "--format=json")
    refused = [e for e in json.loads(out.stdout) if e["user"] == attacker_id]
    assert refused  # one per heartbeat that claimed it
    assert {e["name"] for e in refused} == {victim_id}


async def test_a_tunnel_node_whose_tunnel_closes_is_unlisted_at_once(
    tether_cluster_factory: object,
) -> None:
    # the default keep-alive: a heartbeat a minute, entries living four; the proxy sees the
    # tunnel close and has auth remove the entries it relayed for that node now
    cluster = tether_cluster_factory("main")  # type: ignore[operator]
    gone_id, gone = await tunnel_node(cluster, "gone")
    stays_id, stays = await tunnel_node(cluster, "stays")
    async with trio.open_nursery() as outer:
        await outer.start(stays.run)
        async with trio.open_nursery() as nursery:
            await nursery.start(gone.run)
            await wait_listed(cluster, lambda nodes: {gone_id, stays_id} <= nodes.keys())
            assert gone.keep_alive().entry_ttl > 120
            nursery.cancel_scope.cancel()  # its tunnel closes
        with trio.fail_after(15):  # far less than its entry's lifetime
            await wait_listed(cluster, lambda nodes: gone_id not in nodes)
        assert stays_id in await trio.to_thread.run_sync(listed_nodes, cluster)
        outer.cancel_scope.cancel()
    assert "relayed inventory reports in one write" in cluster.log_text()


async def test_a_node_cannot_get_another_nodes_entry_removed_by_closing_its_tunnel(
    cluster: RunningCluster,
) -> None:
    # the attacker claims the victim's name in its heartbeats (refused), then its tunnel
    # closes: what its proxy removes is what auth stored as the attacker's, never the victim's
    token = node_token(cluster)
    victim = await join(cluster, token, "victim")
    attacker = await join(cluster, token, "attacker")
    victim_id, attacker_id = victim.identity.username, attacker.identity.username
    claims = [node_entry(victim_id, "victim-now-evil"), node_entry(attacker_id, "attacker")]
    victims = tunnel_pool(cluster, victim, lambda: [node_entry(victim_id, "victim")])
    attackers = tunnel_pool(cluster, attacker, lambda: claims)
    async with trio.open_nursery() as outer:
        await outer.start(victims.run)
        await wait_listed(cluster, lambda nodes: nodes.get(victim_id) == "victim")
        async with trio.open_nursery() as nursery:
            await nursery.start(attackers.run)
            await wait_listed(cluster, lambda nodes: attacker_id in nodes)
            # then it reports only the victim's entry, as if it were its own
            claims[:] = [node_entry(victim_id, "victim-now-evil")]
            await trio.sleep(3 * 2.0)  # a heartbeat or more with it
            nursery.cancel_scope.cancel()
        with trio.fail_after(WAIT):
            await wait_listed(cluster, lambda nodes: attacker_id not in nodes)
        await trio.sleep(2)  # a removal of the victim's would be written by now
        nodes = await trio.to_thread.run_sync(listed_nodes, cluster)
        outer.cancel_scope.cancel()
    assert nodes.get(victim_id) == "victim"


async def test_a_tunnel_node_learns_of_a_new_role_through_its_tunnel(
    cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    _, pool = await tunnel_node(cluster, "follower")
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        await pool.wait_follows_trust()
        with trio.fail_after(WAIT):  # the first answer names the revision
            await pool.wait_trust(None)
        before = pool.trust_revision()
        assert b'"visitor"' not in await pool.read_trust()
        role = tmp_path / "visitor.yaml"
        role.write_text(VISITOR_ROLE)
        await trio.to_thread.run_sync(lambda: cluster.tetherctl("create", str(role)))
        with trio.fail_after(WAIT):  # named in the next heartbeat's answer
            await pool.wait_trust(before)
        snapshot = json.loads(await pool.read_trust())
        after = pool.trust_revision()
        nursery.cancel_scope.cancel()
    assert snapshot["revision"] == after != before
    assert "visitor" in json.dumps(snapshot["roles"])


async def test_a_node_whose_heartbeats_carry_non_numbers_cannot_stop_its_proxys_relay(
    cluster: RunningCluster,
) -> None:
    # JSON has no NaN or Infinity, but Python's parser takes them: relayed on to auth, they
    # would fail the proxy's encoder and, with it, the relay of every node's entries
    token = node_token(cluster)
    liar = await join(cluster, token, "liar")
    liar_id = liar.identity.username
    liar_pool = tunnel_pool(
        cluster, liar, lambda: [{**node_entry(liar_id, "liar"), "weight": float("nan")}]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(liar_pool.run)
        # the proxy closes the liar's tunnel at its first heartbeat; then honest nodes come
        honest_id, honest = await tunnel_node(cluster, "honest")
        await nursery.start(honest.run)
        await honest.wait_connected()
        await wait_listed(cluster, lambda nodes: nodes.get(honest_id) == "honest")
        later_id, later = await tunnel_node(cluster, "later")
        await nursery.start(later.run)
        await wait_listed(cluster, lambda nodes: nodes.get(later_id) == "later")
        assert liar_id not in await trio.to_thread.run_sync(listed_nodes, cluster)
        nursery.cancel_scope.cancel()
    log = cluster.log_text()
    assert "control message is not JSON" in log
    assert "Traceback" not in log
