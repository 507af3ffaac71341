"""Host roles: a host serves what its join token allowed, publishes several entries named
freely, and learns which of them routing resolved.

Real ``tetherd`` processes on 127.0.0.1: a cluster, and hosts joined through its proxy in
tunnel mode. Hooktest declares a host role of its own (token type ``hooktest``, role
``Hooktest``) and a node protocol, ``hooktest-gadgets``, that needs it and publishes one
``hooktest_gadget`` entry per gadget, named by the gadget with the host's id in the spec, as a
database service publishes one entry per database. The SSH plugin's node (``--roles=node``
with a ``node`` token) is the other host role.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import pytest
import tether_hooktest
import trio

from tether.auth.http_client import AuthClient
from tether.client.dial import open_target_stream
from tether.client.profile import current_profile, profile_ssl_context
from tether.errors import AccessDenied, TetherError
from tether.node.join import JoinedIdentity, host_client_context, load_identity
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    run_cli,
    start_cluster,
    start_node,
    wait_for,
)

PASSWORD = "correct horse battery staple"
GADGETS = {"alpha": {"colour": "red"}, "beta": {"colour": "blue"}}


@attrs.frozen
class Site:
    directory: pathlib.Path
    cluster: RunningCluster
    host: RunningNode
    host_id: str
    hooks: Mapping[str, str]


#: what makes hooktest's kinds and token type known to a command (hooktest is inert without)
HOOKS: dict[str, str] = {}


def ctl(cluster: RunningCluster, *args: str) -> str:
    """``tetherctl ARGS`` as the cluster's admin, with hooktest active; its output."""
    return cluster.tetherctl(*args, env=HOOKS).stdout


def token(cluster: RunningCluster, types: str) -> str:
    out = ctl(cluster, "tokens", "add", f"--type={types}", "--format=json")
    return str(json.loads(out)["token"])


def gadgets(cluster: RunningCluster) -> dict[str, dict[str, Any]]:
    """The ``hooktest_gadget`` entries ``tetherctl get`` lists, by name."""
    out = ctl(cluster, "get", "hooktest_gadget", "--format=json")
    return {entry["metadata"]["name"]: entry for entry in json.loads(out)}


def audit(cluster: RunningCluster, event_type: str) -> list[dict[str, Any]]:
    out = ctl(cluster, "audit", "search", f"--type={event_type}", "--format=json")
    return list(json.loads(out))


def host_id(node: RunningNode) -> str:
    return (node.directory / "data" / "host_uuid").read_text().strip()


def saved_identity(node: RunningNode) -> JoinedIdentity:
    joined = load_identity(node.directory / "data" / "host")
    assert joined is not None
    return joined


def reach(cluster: RunningCluster, user: str, target: str) -> str:
    """Reach gadget ``target`` through the front door as ``user``; the line the host answers."""
    profile = current_profile(cluster.user_home(user))
    assert profile is not None
    context: ssl.SSLContext = profile_ssl_context(profile, alpn=[tether_hooktest.GADGET_ALPN])

    async def run() -> str:
        stream, _ = await open_target_stream(
            cluster.proxy_addr,
            context,
            alpn=tether_hooktest.GADGET_ALPN,
            protocol="hooktest gadgets",
            cluster=cluster.name,
            target=target,
        )
        answer = b""
        async with stream:
            with trio.fail_after(20):
                while not answer.endswith(b"\n"):
                    chunk = await stream.receive_some()
                    if not chunk:
                        break
                    answer += chunk
        return answer.decode().strip()

    return trio.run(run)


def publish_as(
    cluster: RunningCluster, node: RunningNode, name: str, spec: Mapping[str, str]
) -> None:
    """Publish a ``hooktest_gadget`` entry with ``node``'s own, real certificate, as a host
    whose agent was changed to do so could."""
    joined = saved_identity(node)
    document = {
        "kind": "hooktest_gadget",
        "version": "v1",
        "metadata": {"name": name},
        "spec": dict(spec),
    }

    async def run() -> None:
        context = host_client_context(joined)
        async with AuthClient(f"https://{cluster.proxy_addr}", context) as api:
            await api.publish(document, datetime.timedelta(seconds=30))

    trio.run(run)


def reachable(site: Site, gadget: str) -> bool:
    """Whether alice reaches ``gadget`` now (its entry is listed and its host's tunnel up)."""
    try:
        return reach(site.cluster, "alice", gadget).startswith(f"{gadget} on ")
    except TetherError:
        return False


def gadget_host(
    site: Site, name: str, served: Mapping[str, Mapping[str, str]], **kwargs: Any
) -> RunningNode:
    """``tetherd start --roles=hooktest`` serving ``served``, with a ``hooktest`` token unless
    another is given."""
    env = {**site.hooks, tether_hooktest.GADGETS_ENV: json.dumps(served)}
    return start_node(
        site.cluster, site.directory / name, name, roles="hooktest", env=env, **kwargs
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("roles")
    hooks = {tether_hooktest.LOG_ENV: str(directory / "hooks.jsonl")}
    HOOKS.update(hooks)
    started: list[RunningCluster | RunningNode] = []
    try:
        cluster = start_cluster(directory / "main", "main", env=hooks)
        started.append(cluster)
        env = {**hooks, tether_hooktest.GADGETS_ENV: json.dumps(GADGETS)}
        host = start_node(cluster, directory / "gadgets", "gadget-host", roles="hooktest", env=env)
        started.append(host)
        cluster.add_user("alice", PASSWORD, roles=["access"])
        cluster.login("alice", PASSWORD)

        def reachable() -> bool:
            try:
                return reach(cluster, "alice", "alpha").startswith("alpha on gadget-host")
            except TetherError:  # until the entries and the tunnel are there
                return False

        wait_for(reachable, "the gadget host's entries and tunnel")
        yield Site(directory, cluster, host, host_id(host), hooks)
    finally:
        for process in reversed(started):
            process.stop()


def test_a_host_joined_with_a_hooktest_token_publishes_both_gadgets(site: Site) -> None:
    listed = gadgets(site.cluster)
    assert set(GADGETS) <= set(listed)
    for name, labels in GADGETS.items():
        assert listed[name]["spec"]["host_id"] == site.host_id
        assert listed[name]["metadata"]["labels"] == labels
    assert saved_identity(site.host).identity.roles == ("Hooktest",)
    [joined] = [e for e in audit(site.cluster, "host.joined") if e["user"] == site.host_id]
    assert joined["host_roles"] == ["Hooktest"]


@pytest.mark.parametrize(
    ("typed", "resolved"),
    [("alpha", "alpha"), ("beta", "beta"), ("colour=red", "alpha"), ("colour=blue", "beta")],
)
def test_a_user_reaches_each_gadget_by_name_or_labels_and_the_host_learns_which(
    site: Site, typed: str, resolved: str
) -> None:
    line = reach(site.cluster, "alice", typed)
    assert line == (f"{resolved} on gadget-host ({site.host_id}) for alice, who asked for {typed}")


def test_a_host_joined_with_a_node_token_cannot_publish_gadgets(site: Site) -> None:
    node = start_node(site.cluster, site.directory / "ssh-node", "ssh-node", env=site.hooks)
    try:
        assert saved_identity(node).identity.roles == ("Node",)
        spec = {"host_id": host_id(node), "hostname": "ssh-node"}
        with pytest.raises(AccessDenied, match="that needs host role Hooktest") as refused:
            publish_as(site.cluster, node, "smuggled", spec)
        assert "its certificate carries Node" in refused.value.message
    finally:
        node.stop()
    assert "smuggled" not in gadgets(site.cluster)
    [event] = [e for e in audit(site.cluster, "host.publish.refused") if e["name"] == "smuggled"]
    assert event["user"] == host_id(node)
    assert event["kind"] == "hooktest_gadget"
    assert event["success"] is False


def test_a_host_cannot_take_over_a_gadget_another_live_host_serves(site: Site) -> None:
    # a host with a valid hooktest token serves a gadget named like one the first host serves
    thief = gadget_host(site, "thief", {"alpha": {"colour": "green"}, "gamma": {}})
    try:
        thief_id = host_id(thief)
        wait_for(lambda: reachable(site, "gamma"), "the thief's own gadget and tunnel")
        # and, with its real certificate, claims to publish for the victim
        victim_spec = {"host_id": site.host_id, "hostname": "gadget-host"}
        with pytest.raises(AccessDenied, match=f"which names host '{site.host_id}'"):
            publish_as(site.cluster, thief, "alpha", victim_spec)
        alpha = gadgets(site.cluster)["alpha"]
        assert alpha["spec"]["host_id"] == site.host_id
        assert alpha["metadata"]["labels"] == {"colour": "red"}
        refusals = [
            e
            for e in audit(site.cluster, "host.publish.refused")
            if e["user"] == thief_id and e["name"] == "alpha"
        ]
        reasons = {e["reason"] for e in refusals}
        served_by = (
            f"hooktest_gadget 'alpha' is served by host {site.host_id}; hooktest_gadget "
            "names are unique in a cluster"
        )
        assert served_by in reasons
        assert any("which names host" in reason for reason in reasons)
        assert "auth refused hooktest_gadget 'alpha'" in thief.log_text()
        # users still reach the victim's gadget, and the thief serves its own
        assert reach(site.cluster, "alice", "alpha").startswith("alpha on gadget-host ")
        assert reach(site.cluster, "alice", "gamma").startswith(f"gamma on thief ({thief_id})")
    finally:
        thief.stop()


def test_a_node_token_cannot_join_a_host_asking_for_the_hooktest_role(site: Site) -> None:
    with pytest.raises(AssertionError) as failed:
        gadget_host(site, "impostor", {"delta": {}}, token=token(site.cluster, "node"))
    refusal = "token for node cannot join as hooktest: it is not a Hooktest token"
    assert refusal in str(failed.value)
    assert "tetherctl tokens add --type=hooktest" in str(failed.value)
    failures = audit(site.cluster, "host.join.failed")
    assert any(e["reason"] == refusal and e["host_roles"] == ["Hooktest"] for e in failures)
    assert "delta" not in gadgets(site.cluster)


def test_a_token_for_node_and_hooktest_joins_a_host_serving_both(site: Site) -> None:
    printed = ctl(site.cluster, "tokens", "add", "--type=node,hooktest")
    assert "tetherd start --roles=node,hooktest --token=" in printed
    both = token(site.cluster, "node,hooktest")
    listed = json.loads(ctl(site.cluster, "tokens", "ls", "--format=json"))
    [entry] = [t for t in listed if t["metadata"]["name"] == both]
    assert entry["spec"]["roles"] == ["node", "hooktest"]
    env = {**site.hooks, tether_hooktest.GADGETS_ENV: json.dumps({"epsilon": {}})}
    node = start_node(
        site.cluster, site.directory / "both", "both", roles="node,hooktest", token=both, env=env
    )
    try:
        assert saved_identity(node).identity.roles == ("Hooktest", "Node")

        def published() -> bool:
            nodes = json.loads(ctl(site.cluster, "get", "node", "--format=json"))
            return "epsilon" in gadgets(site.cluster) and host_id(node) in {
                n["metadata"]["name"] for n in nodes
            }

        wait_for(published, "the node's entry and its gadget")
        wait_for(lambda: reachable(site, "epsilon"), "the node's tunnel")
        assert reach(site.cluster, "alice", "epsilon").startswith(
            f"epsilon on both ({host_id(node)})"
        )
    finally:
        node.stop()


def test_a_node_that_joined_as_node_joins_again_to_serve_gadgets_too(site: Site) -> None:
    node = start_node(site.cluster, site.directory / "grows", "grows", env=site.hooks)
    node.stop()
    # started again serving gadgets too, without a token: it says what to do
    env = {**site.hooks, tether_hooktest.GADGETS_ENV: json.dumps({"zeta": {}})}
    config = str(node.directory / "tether.yaml")
    server = [f"--proxy={site.cluster.proxy_addr}", f"--ca-pin={site.cluster.ca_pin}"]
    refused = run_cli(
        "tetherd", "start", "-c", config, "--roles=node,hooktest", *server, env=env, check=False
    )
    assert refused.returncode != 0
    assert (
        "this node joined with host roles Node; what it serves now needs Hooktest too"
        in refused.stdout + refused.stderr
    )
    # with a token for both, it joins again and serves both
    grown = start_node(
        site.cluster,
        node.directory,
        "grows",
        roles="node,hooktest",
        token=token(site.cluster, "node,hooktest"),
        env=env,
    )
    try:
        assert host_id(grown) == host_id(node)
        assert saved_identity(grown).identity.roles == ("Hooktest", "Node")
        wait_for(lambda: reachable(site, "zeta"), "the grown node's gadget")
    finally:
        grown.stop()
