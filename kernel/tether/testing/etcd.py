"""A real etcd for tests: Debian's ``etcd`` (package ``etcd-server``, which
``scripts/kube-deps.sh`` installs), one member or several forming one cluster, on free ports
of 127.0.0.1, with its data in a temporary directory.

``--max-txn-ops`` is raised to 10,000: Tether writes a batch in one transaction (a root's
heartbeats of many leaves), and etcd refuses more than 128 operations by default.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import attrs

from tether.testing.cluster import stop_process
from tether.testing.http import free_port
from tether.testing.kube import spawn_logged

__all__ = ["EtcdCluster", "etcd_binary", "start_etcd"]

#: Seconds a member may take to answer ``/health`` after it starts.
START_TIMEOUT = 30.0


def etcd_binary() -> str | None:
    """The etcd executable, or None when it is not installed."""
    return shutil.which("etcd") or shutil.which("etcd", path="/usr/sbin:/usr/bin")


@attrs.define
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    directory: pathlib.Path
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def log_text(self) -> str:
        return (self.directory / f"{self.name}.log").read_text(errors="replace")


@attrs.define
class EtcdCluster:
    """Running etcd members; :meth:`url` names them all for ``storage.url``."""

    members: list[EtcdMember]

    def url(self, prefix: str = "/tether") -> str:
        """``etcd://`` naming every member, with the key ``prefix``."""
        hosts = ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)
        return f"etcd://{hosts}{prefix}"

    def leader(self) -> int:
        """The index of the member that leads the cluster now."""
        for index, member in enumerate(self.members):
            if member.process is None or member.process.poll() is not None:
                continue
            request = urllib.request.Request(
                member.client_url + "/v3/maintenance/status", data=b"{}", method="POST"
            )
            with urllib.request.urlopen(request, timeout=5) as answer:
                status = json.load(answer)
            if status.get("leader") == status.get("header", {}).get("member_id"):
                return index
        raise RuntimeError("no etcd member says it leads")

    def kill(self, index: int) -> None:
        """Kill member ``index`` at once (SIGKILL), as a crashed host."""
        member = self.members[index]
        if member.process is not None:
            member.process.kill()
            member.process.wait()

    def stop(self) -> None:
        for member in self.members:
            if member.process is not None:
                stop_process(member.process)


def _healthy(member: EtcdMember) -> bool:
    try:
        with urllib.request.urlopen(member.client_url + "/health", timeout=2) as answer:
            return bool(answer.status == 200 and b'"true"' in answer.read())
    except (urllib.error.URLError, OSError):
        return False


def start_etcd(directory: pathlib.Path, members: int = 1) -> EtcdCluster:
    """Start ``members`` etcd members forming one cluster and wait until each is healthy.

    :raises RuntimeError: etcd is not installed, or a member exited or stayed unhealthy (the
        message has the end of its log).
    """
    binary = etcd_binary()
    if binary is None:
        raise RuntimeError("etcd is not installed (Debian: etcd-server): run scripts/kube-deps.sh")
    directory.mkdir(parents=True, exist_ok=True)
    planned = []
    for i in range(members):
        name = f"member{i}"
        planned.append((name, free_port(), free_port()))
    initial = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, _, peer in planned)
    cluster = EtcdCluster([])
    for name, client, peer in planned:
        data = directory / name
        shutil.rmtree(data, ignore_errors=True)
        argv = [
            binary,
            f"--name={name}",
            f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            "--max-txn-ops=10000",
        ]
        member = EtcdMember(name, client, peer, directory, argv)
        member.process = spawn_logged(argv, directory / f"{name}.log", directory)
        cluster.members.append(member)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        for member in cluster.members:
            while not _healthy(member):
                assert member.process is not None
                if member.process.poll() is not None or time.monotonic() > deadline:
                    tail = "\n".join(member.log_text().splitlines()[-20:])
                    raise RuntimeError(f"etcd {member.name} did not start:\n{tail}")
                time.sleep(0.1)
    except BaseException:
        cluster.stop()
        raise
    return cluster
