"""The example connector in a real cluster, as its author would test it: users from a file
written by Apache's own ``htpasswd -B``, through ``tether login --auth=htpasswd``."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tether.testing.cluster import RunningCluster, run_cli, start_cluster

pytestmark = pytest.mark.skipif(shutil.which("htpasswd") is None, reason="needs htpasswd")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    directory = tmp_path_factory.mktemp("htpasswd")
    users = directory / "htpasswd"
    subprocess.run(["htpasswd", "-B", "-b", "-c", str(users), "alice", "alice-pw"], check=True)
    subprocess.run(["htpasswd", "-B", "-b", str(users), "bob", "bob-pw"], check=True)
    settings = {"file": str(users), "roles": {"alice": ["access", "editor"]}}
    running = start_cluster(
        directory / "cluster",
        config={"plugins": {"settings": {"htpasswd": {**settings, "default_roles": ["access"]}}}},
    )
    try:
        yield running
    finally:
        running.stop()


def login(cluster: RunningCluster, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return cluster.tether(
        user,
        "login",
        f"--proxy={cluster.proxy_addr}",
        f"--ca-pin={cluster.ca_pin}",
        "--auth=htpasswd",
        f"--user={user}",
        "--password-stdin",
        input=password + "\n",
        check=False,
    )


def roles_of(cluster: RunningCluster, user: str) -> list[str]:
    status = json.loads(cluster.tether(user, "status", "--format=json").stdout)
    return list(status["active"]["roles"])


def test_users_in_the_file_log_in_with_their_roles(cluster: RunningCluster) -> None:
    assert login(cluster, "alice", "alice-pw").returncode == 0
    assert roles_of(cluster, "alice") == ["access", "editor"]
    assert login(cluster, "bob", "bob-pw").returncode == 0
    assert roles_of(cluster, "bob") == ["access"]


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "alice-pw")])
def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(
    cluster: RunningCluster, user: str, password: str
) -> None:
    result = login(cluster, user, password)
    assert result.returncode == 1
    assert "invalid user name or password" in result.stderr


def test_the_connector_is_listed_beside_local(cluster: RunningCluster) -> None:
    found = json.loads(cluster.tetherctl("get", "connectors", "--format=json").stdout)
    assert {"name": "htpasswd", "type": "password"} in found
    assert "htpasswd" in run_cli("tetherd", "plugins").stdout


def test_a_weak_hash_in_the_file_is_refused_naming_the_line(cluster: RunningCluster) -> None:
    users = cluster.directory.parent / "htpasswd"  # where the fixture wrote it
    subprocess.run(["htpasswd", "-m", "-b", str(users), "carol", "carol-pw"], check=True)
    try:
        result = login(cluster, "carol", "carol-pw")
        assert result.returncode == 1
        assert "htpasswd line 3: expected user:bcrypt-hash (htpasswd -B)" in result.stderr
    finally:
        subprocess.run(["htpasswd", "-D", str(users), "carol"], check=True)
