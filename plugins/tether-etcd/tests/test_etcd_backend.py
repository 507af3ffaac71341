"""What an operator running Tether on etcd sees: a URL that names no member or a member
nobody answers at is refused at start saying which; one of three members killed, the
cluster goes on (reads, writes and a watch that resumes where it was)."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator

import pytest
import trio
from tether_etcd import open_etcd

from tether.api import BackendError, ConfigError
from tether.testing.etcd import EtcdCluster, etcd_binary, start_etcd
from tether.testing.http import free_port


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd:///tether", "names no etcd member"),
        ("etcd://127.0.0.1/tether", "has no port"),
        ("etcd://127.0.0.1:2379/tether?timeout=3", "unknown parameter 'timeout'"),
        ("etcd://127.0.0.1:2379/tether?ca_file=/ca.pem", "gives TLS files to a plain"),
    ],
)
async def test_operator_with_a_malformed_etcd_url_is_told_what_is_wrong(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        async with open_etcd(url):
            pass


async def test_operator_whose_etcd_is_not_running_is_told_at_start() -> None:
    port = free_port()
    with pytest.raises(BackendError, match=rf"no etcd member answers \(http://127.0.0.1:{port}: "):
        async with open_etcd(f"etcd://127.0.0.1:{port}/tether"):
            pass


@pytest.fixture
def three_members(tmp_path: pathlib.Path) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (scripts/kube-deps.sh installs Debian's etcd-server)")
    cluster = start_etcd(tmp_path, members=3)
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_one_of_three_members_killed_the_storage_goes_on(
    three_members: EtcdCluster,
) -> None:
    prefix = f"/failover-{uuid.uuid4().hex[:8]}"
    async with open_etcd(three_members.url(prefix)) as backend:
        before = await backend.put("/roles/before", b"1")
        async with backend.watch("/roles/") as events:
            # the member the backend talks to first dies, as a crashed host does
            await trio.to_thread.run_sync(three_members.kill, 0)
            with trio.fail_after(30):
                while True:
                    try:
                        after = await backend.put("/roles/after", b"2")
                        break
                    except BackendError:  # a write in flight on the dead member
                        await trio.sleep(0.2)
            assert await backend.get("/roles/before") == before
            assert await backend.get("/roles/after") == after
            taken = await backend.create("/locks/l", b"x")
            swapped = await backend.compare_and_swap(
                "/locks/l", b"y", expected_revision=taken.revision
            )
            assert swapped.revision > taken.revision
            with trio.fail_after(30):  # the watch resumed at another member, nothing lost
                seen = await events.__anext__()
            assert (seen.type, seen.item.key, seen.item.value) == ("put", "/roles/after", b"2")
