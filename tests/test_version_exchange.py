"""The guide's version rule at the trust handshake: a leaf runs the root's major version or the
one before it, and anything else is refused with both versions named.

Only one Tether release can be installed here, so the other release is played by this test
process: a leaf cluster opened in-process runs the real handshake
(:func:`~tether.trust.handshake.establish_trust_with_root`) against a real root process over real
TLS, reporting the version the test gives it. That stand-in for a second release is the only
thing not real.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator

import pytest

import tether
from tether.auth.service import AuthService
from tether.backend import open_sqlite
from tether.config import default_config
from tether.errors import TetherError
from tether.plugins import get_plugin_manager
from tether.testing.cluster import RunningCluster
from tether.trust.handshake import check_version, establish_trust_with_root

#: the root process runs the installed release, the one this process imported
ROOT_VERSION = tether.__version__
ROOT_MAJOR = int(ROOT_VERSION.split(".")[0])


@pytest.mark.parametrize(
    ("root", "leaf"),
    [("3.2.1", "3.0.0"), ("3.0.0", "3.9.4"), ("3.2.1", "2.7.0"), ("0.1.0", "0.2.0")],
)
def test_a_leaf_of_the_roots_major_version_or_the_one_before_is_accepted(
    root: str, leaf: str
) -> None:
    check_version(root, leaf)


@pytest.mark.parametrize(("root", "leaf"), [("3.2.1", "1.9.0"), ("3.2.1", "4.0.0")])
def test_a_leaf_two_majors_behind_or_newer_than_the_root_is_refused_naming_both(
    root: str, leaf: str
) -> None:
    with pytest.raises(TetherError) as refused:
        check_version(root, leaf)
    assert f"the leaf cluster runs Tether {leaf} and the root {root}" in refused.value.message
    assert refused.value.hint == "upgrade the older cluster first"


def test_a_version_that_is_not_a_release_is_refused_by_name() -> None:
    with pytest.raises(TetherError, match="version 'nightly' is not a release version"):
        check_version("3.2.1", "nightly")


@pytest.fixture
async def leaf(tmp_path: pathlib.Path) -> AsyncIterator[AuthService]:
    """A leaf cluster's auth service in this process (whose version the tests choose)."""
    pm = get_plugin_manager()
    config = default_config(data_dir=tmp_path, cluster_name="leaf")
    pm.hook.tether_configure(config=config)
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.sqlite'}") as backend:
        yield await AuthService.open(config=config, pm=pm, backend=backend)


def _invite(root: RunningCluster) -> str:
    added = root.tetherctl("tokens", "add", "--type=trusted_cluster", "--format=json")
    return str(json.loads(added.stdout)["token"])


async def _join(leaf: AuthService, root: RunningCluster) -> None:
    spec = {
        "enabled": True,
        "token": _invite(root),
        "web_proxy_addr": root.proxy_addr,
        "tunnel_addr": root.proxy_addr,
        "ca_pin": root.ca_pin,
        "role_map": [{"remote": "access", "local": ["visitor"]}],
    }
    await establish_trust_with_root(
        leaf.handshake_party, leaf.make("trusted_cluster", root.name, spec)
    )


def _remote_clusters(root: RunningCluster) -> list[str]:
    docs = json.loads(root.tetherctl("get", "rc", "--format=json").stdout)
    return [doc["metadata"]["name"] for doc in docs]


async def test_root_refuses_a_leaf_newer_than_itself_naming_both_versions(
    tether_cluster: RunningCluster, leaf: AuthService, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = f"{ROOT_MAJOR + 1}.0.0"
    monkeypatch.setattr(tether, "__version__", newer)
    with pytest.raises(TetherError) as refused:
        await _join(leaf, tether_cluster)
    assert (
        f"the leaf cluster runs Tether {newer} and the root {ROOT_VERSION}" in refused.value.message
    )
    assert "leaf" not in _remote_clusters(tether_cluster), "a refused leaf must leave no trace"
    refusals = json.loads(
        tether_cluster.tetherctl(
            "audit", "search", "--type=trusted_cluster.refused", "--format=json"
        ).stdout
    )
    assert refusals[-1]["leaf"] == "leaf"
    assert newer in refusals[-1]["reason"]
    assert tether_cluster.name not in await leaf.other_tls_cas(), "nor may the leaf trust it"


async def test_root_accepts_a_leaf_of_its_major_version_with_another_minor(
    tether_cluster: RunningCluster, leaf: AuthService, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_minor = f"{ROOT_MAJOR}.999.0"
    monkeypatch.setattr(tether, "__version__", other_minor)
    await _join(leaf, tether_cluster)
    assert "leaf" in _remote_clusters(tether_cluster)
    joined = json.loads(
        tether_cluster.tetherctl(
            "audit", "search", "--type=trusted_cluster.joined", "--format=json"
        ).stdout
    )
    assert joined[-1]["version"] == other_minor
    tether_cluster.tetherctl("rm", "rc/leaf")
