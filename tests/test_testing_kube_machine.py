"""``tether.testing.kube_machine``: a test node talks to nothing but 127.0.0.1 (not even the
cloud metadata address the kubelet's ECR credential provider asks by default) and leaves the
machine as it found it (its processes, mounts, cgroups, kernel parameters and the paths the
kubelet makes outside its directory), also when the test run that started it was killed (the
next node undoes it)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tether.testing.kube import KubeAPIServer
from tether.testing.kube_machine import (
    CGROUP_NAMES,
    KUBELET_SYSCTLS,
    LOCK,
    RECORD,
    Footprint,
    cgroup_roots,
    machine_lock,
    mounts_under,
    processes_naming,
    socket_peers,
)
from tether.testing.kube_node import NODE_NAME, kube_node_components, leftovers, start_kube_node

OUTSIDE = ("/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/run/containerd")


def _sysctls() -> dict[str, str]:
    return {name: pathlib.Path("/proc/sys", name).read_text() for name in KUBELET_SYSCTLS}


def _cgroups() -> set[pathlib.Path]:
    return {
        root / name
        for root in cgroup_roots().values()
        for name in CGROUP_NAMES
        if (root / name).exists()
    }


def test_a_node_talks_only_to_loopback_and_leaves_the_machine_as_it_found_it(
    kube_apiserver: KubeAPIServer,
) -> None:
    components = kube_node_components()
    before = (_sysctls(), _cgroups(), {path for path in OUTSIDE if os.path.lexists(path)})
    directory = pathlib.Path(tempfile.mkdtemp(prefix="tether-kube-node-"))
    # where the node's processes (containerd, the kubelet, shims, containers) connect to
    peers: set[tuple[str, int]] = set()
    watching = threading.Event()
    watching.set()

    def watch() -> None:
        while watching.is_set():
            peers.update(socket_peers(processes_naming(f"{directory}/")))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with start_kube_node(kube_apiserver, directory, components=components) as node:
            node.run_pod(node.pod("sleeper", ["sleep", "3600"]))
            # the kubelet changed the machine, as it always does
            assert _sysctls() != before[0]
            assert _cgroups() - before[1]
            assert mounts_under(directory)
            assert RECORD.exists()
            # containerd, the kubelet, and the pod's shim (one for its sandbox and container)
            assert len(processes_naming(f"{directory}/")) == 3
            node.server.kubectl("exec", "sleeper", "--", "true")
        watching.clear()
        watcher.join()
        assert peers  # the kubelet's connections to the API server, at least
        assert {address for address, _ in peers} <= {"127.0.0.1", "::1"}
        assert leftovers(directory) == []
        assert processes_naming(f"{directory}/") == []
        assert _sysctls() == before[0]
        assert _cgroups() == before[1]
        assert {path for path in OUTSIDE if os.path.lexists(path)} == before[2]
        assert not RECORD.exists()
        gone = kube_apiserver.kubectl("get", "node", NODE_NAME, check=False)
        assert "not found" in gone.stderr
        pods = kube_apiserver.kubectl("get", "pods", "-n", "default", "-o", "name").stdout
        assert "pod/sleeper" not in pods
    finally:
        watching.clear()
        watcher.join()
        if not leftovers(directory):
            shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="a node's footprint is root's")
def test_a_killed_nodes_footprint_is_undone_by_the_next(tmp_path: pathlib.Path) -> None:
    """What a run that was killed with its node leaves (a process still running from the
    node's files, a mount under its directory, a kernel parameter the kubelet set) is undone
    from the record it left."""
    directory = tmp_path / "node"
    (directory / "a").mkdir(parents=True)
    (directory / "b").mkdir()
    name = "kernel/keys/root_maxkeys"  # of those the kubelet sets, one harmless to change
    with machine_lock(60) as held:
        assert held, f"another test node holds {LOCK}"
        assert Footprint.saved() is None
        Footprint.take(directory).save()
        original = pathlib.Path("/proc/sys", name).read_text().strip()
        straggler = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)", f"{directory}/a"]
        )
        try:
            pathlib.Path("/proc/sys", name).write_text(str(int(original) + 1))
            subprocess.run(["mount", "--bind", directory / "a", directory / "b"], check=True)

            left = Footprint.saved()
            assert left is not None
            assert left.undo() == []

            assert straggler.wait(timeout=10) == -9
            assert mounts_under(directory) == []
            assert pathlib.Path("/proc/sys", name).read_text().strip() == original
            assert Footprint.saved() is None
        finally:
            straggler.kill()
            straggler.wait()
            subprocess.run(["umount", directory / "b"], check=False, capture_output=True)
            pathlib.Path("/proc/sys", name).write_text(original)
            RECORD.unlink(missing_ok=True)
