"""Several proxies for one auth service: how a second proxy joins, and what it must refuse.

A proxy of its own (``tetherd start --roles=proxy --auth-server=... --token=...``) joins with
a proxy token, keeps its identity, publishes itself in the cluster's ``proxy`` list (which
the tunnel servers tell agents about) and asks auth for everything else. The trust it acts
on is auth's (``GET /v1/trust``), read back into the same :class:`~tether.trust.ClusterTrust`.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator

import pytest

from tether import pki
from tether.node.join import load_identity, renewal_due
from tether.resources import KindRegistry, parse_resources
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    run_cli,
    start_proxy,
)
from tether.testing.roles import core_registry
from tether.trust import ClusterTrust
from tether.yamlio import dump_yaml


@pytest.fixture(scope="module")
def cluster(tether_cluster: RunningCluster) -> RunningCluster:
    return tether_cluster


@pytest.fixture(scope="module")
def second_proxy(
    cluster: RunningCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningNode]:
    proxy = start_proxy(cluster, tmp_path_factory.mktemp("proxy-b"), "proxy-b")
    try:
        yield proxy
    finally:
        proxy.stop()


def proxy_entries(cluster: RunningCluster) -> dict[str, str]:
    docs = json.loads(cluster.tetherctl("get", "proxies", "--format=json").stdout)
    return {d["metadata"]["name"]: d["spec"]["public_addr"] for d in docs}


def wait_for_entries(cluster: RunningCluster, names: set[str]) -> dict[str, str]:
    deadline = time.monotonic() + 30
    while set(entries := proxy_entries(cluster)) != names:
        assert time.monotonic() < deadline, f"proxies listed: {entries}"
        time.sleep(0.3)
    return entries


def test_second_proxy_joins_and_both_are_listed_with_their_addresses(
    cluster: RunningCluster, second_proxy: RunningNode
) -> None:
    entries = wait_for_entries(cluster, {"main-node", "proxy-b"})
    # each proxy's public address (a loopback listen address is published as localhost)
    assert entries == {
        "main-node": cluster.proxy_addr.replace("127.0.0.1", "localhost"),
        "proxy-b": second_proxy.proxy_addr.replace("127.0.0.1", "localhost"),
    }
    assert second_proxy.info["cluster_name"] == "main"
    assert second_proxy.info["ca_pin"] == cluster.ca_pin


def test_second_proxy_answers_users_like_the_first(
    cluster: RunningCluster, second_proxy: RunningNode
) -> None:
    cluster.add_user("paula", "correct horse battery staple")
    login = run_cli(
        "tether",
        "login",
        f"--proxy={second_proxy.proxy_addr}",
        "--user=paula",
        "--password-stdin",
        f"--ca-pin={cluster.ca_pin}",
        env={"TETHER_HOME": str(cluster.user_home("paula"))},
        input="correct horse battery staple\n",
    )
    assert "paula" in login.stdout
    status = cluster.tether("paula", "status").stdout
    assert second_proxy.proxy_addr in status and "main" in status


def test_restarted_proxy_needs_no_token(cluster: RunningCluster, second_proxy: RunningNode) -> None:
    token_args = [a for a in second_proxy.args if a.startswith("--token=")]
    second_proxy.args[:] = [a for a in second_proxy.args if a not in token_args]
    second_proxy.restart()
    assert "proxy proxy-b: using the identity saved in" in second_proxy.log_text()
    wait_for_entries(cluster, {"main-node", "proxy-b"})


def test_restarted_proxy_renews_certificates_two_thirds_through_their_lifetime(
    tether_cluster_factory: object, tmp_path: pathlib.Path
) -> None:
    # renewal is due two thirds through the lifetime, and the restarted proxy must reach it
    # before the certificates expire (past expiry it joins again with its token instead). At
    # a load of 17 on two cores the first start alone took 32 s from join to listening, so a
    # 12 s lifetime (4 s for the restart) had expired before the restart began: 90 s leaves
    # the restart 30 s, and costs the test a minute's wait on a quiet machine
    short: RunningCluster = tether_cluster_factory(  # type: ignore[operator]
        config={"auth_service": {"host_cert_ttl": "90s"}}
    )
    proxy = start_proxy(short, tmp_path / "proxy-c", "proxy-c")
    try:
        proxy.stop()
        joined = load_identity(tmp_path / "proxy-c/data/proxy")
        assert joined is not None
        time.sleep(max(renewal_due(joined).timestamp() - time.time() + 0.2, 0))
        proxy.restart()
        assert "proxy proxy-c renewed its certificates" in proxy.log_text()
        renewed = load_identity(tmp_path / "proxy-c/data/proxy")
        assert renewed is not None
        assert renewed.tls_cert.not_valid_after_utc > joined.tls_cert.not_valid_after_utc
        wait_for_entries(short, {"main-node", "proxy-c"})  # and it works with them
    finally:
        proxy.stop()


def _start_lone_proxy(tmp_path: pathlib.Path, *flags: str) -> tuple[int, str]:
    config = tmp_path / "tether.yaml"
    config.write_text(
        dump_yaml(
            {
                "nodename": "lonely",
                "data_dir": str(tmp_path / "data"),
                "auth_service": {"enabled": False},
                "proxy_service": {"enabled": True, "listen_addr": "127.0.0.1:0"},
            }
        )
    )
    result = run_cli("tetherd", "start", "-c", str(config), *flags, check=False)
    return result.returncode, result.stderr.strip()


def test_proxy_without_an_auth_server_says_which_flag_it_needs(tmp_path: pathlib.Path) -> None:
    code, err = _start_lone_proxy(tmp_path)
    assert code == 1
    assert "needs the auth server's address" in err and "--auth-server" in err


def test_proxy_that_never_joined_needs_a_token(
    cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    code, err = _start_lone_proxy(
        tmp_path, f"--auth-server={cluster.auth_addr}", f"--ca-pin={cluster.ca_pin}"
    )
    assert code == 1
    assert "has not joined yet and has no token" in err
    assert "tetherctl tokens add --type=proxy" in err


@pytest.mark.parametrize("token_type", ["none", "node"])
def test_proxy_with_a_wrong_token_is_refused(
    cluster: RunningCluster, tmp_path: pathlib.Path, token_type: str
) -> None:
    token = "not-a-token"
    if token_type == "node":
        added = cluster.tetherctl("tokens", "add", "--type=node", "--format=json")
        token = json.loads(added.stdout)["token"]
    code, err = _start_lone_proxy(
        tmp_path,
        f"--auth-server={cluster.auth_addr}",
        f"--ca-pin={cluster.ca_pin}",
        f"--token={token}",
    )
    assert code == 1
    expected = {"none": "the token is unknown or expired", "node": "not a Proxy token"}
    assert expected[token_type] in err
    assert not (tmp_path / "data" / "proxy").exists(), "a refused join must keep nothing"


def test_proxy_checks_the_auth_server_against_the_pin(
    cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    wrong = pki.ca_pin(pki.ClusterAuthorities.generate("other").tls.certificate)
    code, err = _start_lone_proxy(
        tmp_path, f"--auth-server={cluster.auth_addr}", f"--ca-pin={wrong}", "--token=x"
    )
    assert code == 1
    assert "does not present the pinned CA" in err


# --- the trust snapshot a proxy reads --------------------------------------------------------


@pytest.fixture
def registry() -> KindRegistry:
    return core_registry()


def test_trust_snapshot_reads_back_equal(registry: KindRegistry) -> None:
    own = pki.ClusterAuthorities.generate("leaf").tls.certificate
    root = pki.ClusterAuthorities.generate("root").tls.certificate
    other = pki.ClusterAuthorities.generate("leaf2").tls.certificate
    (trusted,) = parse_resources(
        """
kind: trusted_cluster
version: v2
metadata: {name: root}
spec:
  web_proxy_addr: root.example:3080
  role_map: [{remote: access, local: [visitor]}]
""",
        "trusted_cluster.yaml",
        registry,
    )
    snapshot = ClusterTrust.build("leaf", [own], {"root": [root], "leaf2": [other]}, [trusted])
    assert list(snapshot.roots) == ["root"]
    assert ClusterTrust.from_json(snapshot.to_json(), registry) == snapshot
    # tunnels: each cluster's own CAs only, and never the root's (it does not dial its leaves)
    assert snapshot.tunnel_cas() == {"leaf": (own,), "leaf2": (other,)}


@pytest.mark.parametrize(
    "broken",
    [{}, {"cluster_name": "x", "own_cas": [], "others": [], "trusted_clusters": []}],
)
def test_trust_snapshot_that_is_malformed_is_a_value_error(
    registry: KindRegistry, broken: dict[str, object]
) -> None:
    with pytest.raises(ValueError, match="malformed trust snapshot"):
        ClusterTrust.from_json(broken, registry)
