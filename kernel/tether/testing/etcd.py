"""A real etcd for tests: Debian's ``etcd`` (package ``etcd-server``, which
``scripts/kube-deps.sh`` installs), one member or several forming one cluster, on free ports
of 127.0.0.1, with its data in a temporary directory.

``--max-txn-ops`` is raised to 10,000: Tether writes a batch in one transaction (a root's
heartbeats of many leaves), and etcd refuses more than 128 operations by default.

:mod:`tether.testing.kube` starts the Kubernetes API server's etcd with :func:`start_etcd` too.
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
from tether.testing.processes import spawn_logged

__all__ = ["EtcdCluster", "etcd_binary", "start_etcd"]

#: Seconds a member may take to answer ``/health`` after it starts (a loaded 2-core machine).
START_TIMEOUT = 120.0
#: Times :func:`start_etcd` picks new ports when another process took one before etcd bound it.
PORT_ATTEMPTS = 3


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

    @property
    def log_path(self) -> pathlib.Path:
        """The member's output (etcd logs to it)."""
        return self.directory / f"{self.name}.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


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


def start_etcd(
    directory: pathlib.Path, members: int = 1, *, binary: str | None = None
) -> EtcdCluster:
    """Start ``members`` etcd members forming one cluster and wait until each is healthy.

    Each member's data is ``directory/memberN`` and its log ``directory/memberN.log``. When
    another process takes a port between the look and etcd's bind, every member starts again
    on new ports (:data:`PORT_ATTEMPTS` times at most).

    :param binary: the etcd executable; :func:`etcd_binary` by default.
    :raises RuntimeError: etcd is not installed, or a member exited or stayed unhealthy (the
        message has the end of its log).
    """
    binary = binary or etcd_binary()
    if binary is None:
        raise RuntimeError("etcd is not installed (Debian: etcd-server): run scripts/kube-deps.sh")
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(PORT_ATTEMPTS):
        cluster = _spawn(binary, directory, members)
        try:
            _wait_healthy(cluster)
        except _PortTaken:
            cluster.stop()
            continue
        except BaseException:
            cluster.stop()
            raise
        return cluster
    raise RuntimeError(
        f"etcd: {PORT_ATTEMPTS} sets of free ports were taken by others before it could bind"
    )


def _spawn(binary: str, directory: pathlib.Path, members: int) -> EtcdCluster:
    """Start the members on free ports, each told of all the others; return without waiting."""
    planned = [(f"member{i}", free_port(), free_port()) for i in range(members)]
    initial = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, _, peer in planned)
    cluster = EtcdCluster([])
    for name, client, peer in planned:
        data = directory / name
        shutil.rmtree(data, ignore_errors=True)  # an earlier attempt's, if any
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
        member.process = spawn_logged(argv, member.log_path, directory)
        cluster.members.append(member)
    return cluster


class _PortTaken(Exception):
    """A member exited because another process had taken its port meanwhile."""


def _wait_healthy(cluster: EtcdCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    for member in cluster.members:
        while not _healthy(member):
            assert member.process is not None
            exited = member.process.poll() is not None
            if exited and "address already in use" in member.log_text():
                raise _PortTaken(member.name)
            if exited or time.monotonic() > deadline:
                tail = "\n".join(member.log_text().splitlines()[-20:])
                raise RuntimeError(f"etcd {member.name} did not start:\n{tail}")
            time.sleep(0.1)
