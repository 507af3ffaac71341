"""A Kubernetes node for tests: Debian's containerd and runc and a kubelet 1.20.2 built from
Debian's source, registered with a :class:`~tether.testing.kube.KubeAPIServer`, so that pods
run and ``kubectl exec``, ``attach``, ``logs`` and ``port-forward`` reach real containers.

``scripts/kube-deps.sh`` prepares the node's components with the server's, in the same
background step and cache (``v1.20.2-node/``, its status in ``v1.20.2-node.status``): the
kubelet, containerd, its ``ctr`` and runc shim, runc, and two images built from Debian's
``busybox-static`` (:data:`BUSYBOX_IMAGE` for the tests' pods, :data:`PAUSE_IMAGE` for their
sandboxes). Nothing is pulled from a registry: a pod names :data:`BUSYBOX_IMAGE` with
``imagePullPolicy: Never``.

There is no network plugin, so the node stays ``NotReady`` and only ``hostNetwork`` pods run;
there is no scheduler either, so a pod names the node (``nodeName``). :meth:`KubeNode.pod`
writes such a pod. The node's name is ``localhost``: the API server reaches the kubelet at its
host name only (on 127.0.0.1, both sides' certificates from the server's CA). The kubelet must
still declare an address, one of the machine's own that is not a loopback one
(:func:`node_address`: the first global address, 192.0.2.2 on the Firecracker machines); it is
the pods' IP address too, and nothing here dials it: a test reaches a pod's port through
``kubectl port-forward``, which dials 127.0.0.1 on the host's network.

A node needs root, cgroup controllers it can write and writable kernel parameters; without,
:func:`start_kube_node` skips the test with one line saying why (:func:`node_unavailable`).
What the kubelet and containerd change on the machine is put back when the node stops
(:mod:`tether.testing.kube_machine`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import attrs
import pytest

from tether.testing.cluster import stop_process
from tether.testing.http import free_port
from tether.testing.kube import (
    KUBE_VERSION,
    KubeAPIServer,
    kube_cache_dir,
    wait_for_preparation,
    wait_timeout,
)
from tether.testing.kube_machine import (
    Footprint,
    machine_lock,
    mounts_under,
    processes_naming,
    required_cgroup_controllers,
)
from tether.testing.processes import spawn_logged

__all__ = [
    "BUSYBOX_IMAGE",
    "NODE_NAME",
    "PAUSE_IMAGE",
    "KubeNode",
    "KubeNodeComponents",
    "kube_node_components",
    "leftovers",
    "node_address",
    "node_unavailable",
    "start_kube_node",
]

#: The node's name and host name, which the API server dials (``localhost:PORT``).
NODE_NAME = "localhost"
#: The image of the tests' pods: busybox-static, a link for each applet, ``/bin/sh``.
BUSYBOX_IMAGE = "tether.local/busybox:1"
#: The pods' sandbox image (containerd's ``sandbox_image``).
PAUSE_IMAGE = "tether.local/pause:1"
#: How long the node may take to register once started (a loaded 2-core machine).
START_TIMEOUT = 120.0
#: The longest path a unix socket may have (sun_path, less its final NUL).
_MAX_SOCKET_PATH = 107


@attrs.frozen
class KubeNodeComponents:
    """The node's programs and images, as ``kube-deps.sh`` left them in the cache."""

    kubelet: Path
    containerd: Path
    ctr: Path
    runc: Path
    images: tuple[Path, ...]

    @property
    def directory(self) -> Path:
        return self.kubelet.parent


_outcomes: dict[Path, KubeNodeComponents | str] = {}


def kube_node_components(*, timeout: float | None = None) -> KubeNodeComponents:
    """The node's components ``scripts/kube-deps.sh`` prepared, waiting while it is at work
    (as :func:`~tether.testing.kube.kube_components` does); skips the calling test with one
    line naming the reason when they cannot be had."""
    cache = kube_cache_dir()
    if cache not in _outcomes:
        _outcomes[cache] = wait_for_preparation(
            cache,
            f"{KUBE_VERSION}-node",
            f"Kubernetes {KUBE_VERSION} node components",
            _found,
            wait_timeout() if timeout is None else timeout,
        )
    outcome = _outcomes[cache]
    if isinstance(outcome, str):
        pytest.skip(outcome)
    return outcome


def _found(cache: Path) -> KubeNodeComponents | str:
    directory = cache / f"{KUBE_VERSION}-node"
    components = KubeNodeComponents(
        kubelet=directory / "kubelet",
        containerd=directory / "containerd",
        ctr=directory / "ctr",
        runc=directory / "runc",
        images=(directory / "images" / "pause.tar", directory / "images" / "busybox.tar"),
    )
    binaries = [components.kubelet, components.containerd, components.ctr, components.runc]
    for path in [*binaries, directory / "containerd-shim-runc-v2"]:
        if not os.access(path, os.X_OK):
            return f"{path} is missing: run scripts/kube-deps.sh again"
    for image in components.images:
        if not image.is_file():
            return f"{image} is missing: run scripts/kube-deps.sh again"
    return components


def node_unavailable() -> str | None:
    """Why no node can run on this machine, as one line; None when one can."""
    if os.geteuid() != 0:
        return "a node (kubelet, containerd, runc) runs only as root"
    cgroups = required_cgroup_controllers()
    if cgroups:
        return cgroups
    if not os.access("/proc/sys/vm/overcommit_memory", os.W_OK):
        return "the kernel parameters (/proc/sys) are read-only here, and the kubelet sets some"
    if node_address() is None:
        return "no address but loopback ones for the kubelet to declare as the node's"
    return None


def node_address() -> str | None:
    """The address the kubelet declares as the node's: this machine's first global IPv4
    address (else IPv6), as ``ip`` lists them. The kubelet accepts only an address of one of
    the machine's interfaces, and no loopback one; nothing is sent to it."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    try:
        shown = subprocess.run(
            [ip, "-json", "address", "show", "scope", "global"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found: dict[str, list[str]] = {"inet": [], "inet6": []}
    for interface in json.loads(shown.stdout or "[]"):
        for info in interface.get("addr_info", []):
            if info.get("family") in found and info.get("local"):
                found[info["family"]].append(info["local"])
    addresses = found["inet"] + found["inet6"]
    return addresses[0] if addresses else None


@attrs.frozen
class KubeNode:
    """A running node: its kubelet and containerd, registered with ``server``."""

    name: str
    server: KubeAPIServer
    directory: Path
    components: KubeNodeComponents
    #: ``containerd`` and ``kubelet``, as started
    processes: Mapping[str, subprocess.Popen[bytes]]
    #: containerd's API socket (``ctr --address``)
    containerd_socket: Path
    #: the kubelet's HTTPS port on 127.0.0.1
    kubelet_port: int
    #: the node's declared address (:func:`node_address`): the pods' IP, never dialled
    address: str

    def pod(
        self,
        name: str,
        command: Sequence[str],
        *,
        namespace: str = "default",
        stdin: bool = False,
        tty: bool = False,
    ) -> dict[str, object]:
        """A pod that runs here: ``command`` in :data:`BUSYBOX_IMAGE`, on the host's network,
        bound to this node, no service account token, ``stdin`` kept open for ``kubectl
        attach`` when asked."""
        container: dict[str, object] = {
            "name": "main",
            "image": BUSYBOX_IMAGE,
            "imagePullPolicy": "Never",
            "command": list(command),
        }
        if stdin:
            container["stdin"] = True
        if tty:
            container["tty"] = True
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "nodeName": self.name,
                "hostNetwork": True,
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 1,
                "containers": [container],
            },
        }

    def run_pod(self, manifest: Mapping[str, object], timeout: float = 60.0) -> None:
        """Create the pod of ``manifest`` as the administrator and wait until it runs."""
        deadline = time.monotonic() + timeout
        while True:
            created = self.server.kubectl(
                "apply", "-f", "-", input=json.dumps(manifest), check=False
            )
            if created.returncode == 0:
                break
            # a namespace just made has no service account "default" for a moment
            if "serviceaccount" not in created.stderr or time.monotonic() > deadline:
                raise AssertionError(f"kubectl apply of a pod: {created.stderr}")
            time.sleep(0.5)
        metadata = manifest["metadata"]
        assert isinstance(metadata, Mapping)
        self.wait_for_pod(metadata["name"], metadata.get("namespace", "default"), timeout=timeout)

    def wait_for_pod(
        self, name: str, namespace: str = "default", *, phase: str = "Running", timeout: float = 60
    ) -> None:
        """Wait until the pod is in ``phase``; fail with its state and the kubelet's log."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.server.kubectl(
                "get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False
            )
            if got.stdout == phase:
                return
            if time.monotonic() > deadline:
                described = self.server.kubectl("describe", "pod", name, "-n", namespace)
                raise AssertionError(
                    f"pod {namespace}/{name} not {phase} after {timeout:g} s:\n"
                    f"{described.stdout}\n{self.logs()}"
                )
            time.sleep(0.5)

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Debian's ``ctr`` on this node's containerd, in the kubelet's namespace ``k8s.io``."""
        return subprocess.run(
            [
                str(self.components.ctr),
                f"--address={self.containerd_socket}",
                "--namespace=k8s.io",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def logs(self, lines: int = 40) -> str:
        """The last ``lines`` lines of containerd's and the kubelet's logs."""
        parts = []
        for name, process in self.processes.items():
            text = (self.directory / f"{name}.log").read_text(errors="replace")
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {name} (exit status {process.poll()}) ---\n{tail}")
        return "\n".join(parts)


def _containerd_config(directory: Path, socket_path: Path, runc: Path) -> str:
    """containerd's configuration: all its files under ``directory``, the CRI plugin with the
    local pause image, runc by path with cgroupfs (the kubelet's driver), the simplest
    snapshotter (plain copies: no overlay mounts), no AppArmor profile loaded, and
    ``restrict_oom_score_adj`` (runc may not lower an OOM score here: no CAP_SYS_RESOURCE).
    The plugins that would touch the machine (``opt`` installs into /opt, ``aufs`` runs
    modprobe) are off."""
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{directory / "root"}"
state = "{directory / "state"}"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket_path}"

[ttrpc]
  address = "{socket_path}.ttrpc"

{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

{cri}.cni]
  bin_dir = "{directory / "cni" / "bin"}"
  conf_dir = "{directory / "cni" / "net.d"}"

{cri}.containerd]
  snapshotter = "native"
  default_runtime_name = "runc"

{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

{cri}.containerd.runtimes.runc.options]
  BinaryName = "{runc}"
  Root = "{directory / "runc"}"
  SystemdCgroup = false
"""


def _kubelet_config(
    port: int, cert: Path, key: Path, client_ca: Path, directory: Path
) -> dict[str, object]:
    """The kubelet's configuration (``KubeletConfiguration``): on 127.0.0.1, clients
    authenticated by the server's CA (the API server) and then allowed everything, cgroupfs
    without per-QoS cgroups, no eviction and no image garbage collection (the images cannot
    be pulled again), no iptables chains."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "makeIPTablesUtilChains": False,
        "volumePluginDir": str(directory / "volume-plugins"),
        "staticPodPath": "",
        "resolvConf": "",
    }


@contextlib.contextmanager
def start_kube_node(
    server: KubeAPIServer, directory: Path, *, components: KubeNodeComponents | None = None
) -> Iterator[KubeNode]:
    """Start containerd and a kubelet with their files under ``directory`` and register the
    node :data:`NODE_NAME` with ``server``; yields once the node is registered and its
    kubelet answers. When the block ends, whatever happened in it: the node's pods are
    deleted, the kubelet and containerd stopped by PID, every container killed, and the
    machine put back (:mod:`tether.testing.kube_machine`); the node and its role binding
    are removed from the server.

    ``directory`` holds containerd's unix sockets, so its path must be short (one of
    ``tempfile.mkdtemp()``, not pytest's ``tmp_path``). ``components`` defaults to
    :func:`kube_node_components` (which may wait, or skip the test); the test is also
    skipped when the machine cannot run a node (:func:`node_unavailable`), or when another
    test's node still runs on it after ``TETHER_KUBE_WAIT`` seconds.
    """
    components = components or kube_node_components()
    unavailable = node_unavailable()
    if unavailable:
        pytest.skip(f"no Kubernetes node here: {unavailable}")
    with machine_lock(wait_timeout()) as held:
        if not held:
            pytest.skip("no Kubernetes node here: another test's node runs on this machine")
        left = Footprint.saved()
        if left is not None:  # a run that was killed with its node
            for problem in left.undo():
                warnings.warn(f"a killed test node's leftovers: {problem}", stacklevel=2)
        directory.mkdir(parents=True, exist_ok=True)
        footprint = Footprint.take(directory)
        footprint.save()
        try:
            with _running_node(server, directory, components) as node:
                yield node
        finally:
            problems = footprint.undo()
            if problems:
                warnings.warn(
                    "the test node left the machine changed: " + "; ".join(problems),
                    stacklevel=2,
                )


@contextlib.contextmanager
def _running_node(
    server: KubeAPIServer,
    directory: Path,
    components: KubeNodeComponents,
) -> Iterator[KubeNode]:
    address = node_address()
    assert address is not None  # node_unavailable() said so
    processes: dict[str, subprocess.Popen[bytes]] = {}
    environment = {
        **os.environ,
        # containerd finds its runc shim on PATH
        "PATH": f"{components.directory}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        # the kubelet's ECR credential provider asks the EC2 metadata service (169.254.169.254)
        # for AWS credentials at start: nothing may leave the machine
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    containerd_dir = directory / "containerd"
    containerd_dir.mkdir(exist_ok=True)
    socket_path = containerd_dir / "containerd.sock"
    if len(f"{socket_path}.ttrpc") > _MAX_SOCKET_PATH:
        raise ValueError(
            f"{directory} is too long a path for containerd's sockets in it (at most "
            f"{_MAX_SOCKET_PATH - len('/containerd/containerd.sock.ttrpc')} characters): "
            "use a directory of tempfile.mkdtemp()"
        )
    (containerd_dir / "config.toml").write_text(
        _containerd_config(containerd_dir, socket_path, components.runc)
    )
    with contextlib.ExitStack() as stack:
        stack.callback(_forget_node, server)
        containerd = spawn_logged(
            [str(components.containerd), f"--config={containerd_dir / 'config.toml'}"],
            directory / "containerd.log",
            directory,
            environment,
        )
        processes["containerd"] = containerd
        stack.callback(stop_process, containerd)
        stack.callback(_remove_containers, components, socket_path)
        node = KubeNode(
            name=NODE_NAME,
            server=server,
            directory=directory,
            components=components,
            processes=processes,
            containerd_socket=socket_path,
            kubelet_port=free_port(),
            address=address,
        )
        _wait(lambda: node.ctr("version").returncode == 0, containerd, "containerd", node)
        for image in components.images:
            imported = node.ctr("images", "import", "--snapshotter=native", str(image))
            if imported.returncode != 0:
                raise RuntimeError(f"ctr images import {image}: {imported.stderr}")
        kubelet = _start_kubelet(server, node, environment)
        processes["kubelet"] = kubelet
        stack.callback(stop_process, kubelet)
        stack.callback(_delete_pods, server)
        _wait(lambda: _registered(server, node), kubelet, "kubelet", node)
        yield node


def _start_kubelet(
    server: KubeAPIServer, node: KubeNode, environment: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    kubelet_dir = node.directory / "kubelet"
    kubelet_dir.mkdir(exist_ok=True)
    # the node's credentials: user system:node:NAME of group system:nodes, whose rights
    # (ClusterRole system:node) RBAC alone gives only when bound: there is no Node authorizer
    user = f"system:node:{node.name}"
    identity = server.issue_client_cert(user, ["system:nodes"])
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"tether-test-node-{node.name}"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:node",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    server.kubectl("apply", "-f", "-", input=json.dumps(binding))
    cert, key = server.issue_serving_cert(
        f"kubelet-{node.name}", dns_names=[node.name], addresses=["127.0.0.1"]
    )
    config = _kubelet_config(node.kubelet_port, cert, key, server.ca_file, kubelet_dir)
    (kubelet_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return spawn_logged(
        [
            str(node.components.kubelet),
            f"--config={kubelet_dir / 'config.json'}",
            f"--kubeconfig={identity.kubeconfig}",
            f"--root-dir={kubelet_dir / 'root'}",
            f"--cert-dir={kubelet_dir / 'pki'}",
            f"--seccomp-profile-root={kubelet_dir / 'seccomp'}",
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{node.containerd_socket}",
            # cAdvisor's own look at containerd: ours, not a containerd the machine may run
            f"--containerd={node.containerd_socket}",
            f"--hostname-override={node.name}",
            f"--node-ip={node.address}",
            "--v=2",
        ],
        node.directory / "kubelet.log",
        node.directory,
        environment,
    )


def _registered(server: KubeAPIServer, node: KubeNode) -> bool:
    got = server.kubectl("get", "node", node.name, "-o", "name", check=False)
    if got.returncode != 0:
        return False
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", node.kubelet_port)) == 0


def _wait(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], name: str, node: KubeNode
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited {process.returncode} at start:\n{node.logs(60)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {START_TIMEOUT:.0f} s:\n{node.logs(60)}")
        time.sleep(0.2)


def _delete_pods(server: KubeAPIServer) -> None:
    """The pods bound to the node, gone from the server at once (their containers are
    removed with containerd's)."""
    server.kubectl(
        "delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={NODE_NAME}",
        "--force", "--grace-period=0", "--wait=false", check=False,
    )  # fmt: skip


def _remove_containers(components: KubeNodeComponents, socket_path: Path) -> None:
    """Kill and remove every container (sandboxes included) while containerd still runs;
    what this misses, :meth:`Footprint.undo` kills by PID."""

    def ctr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(components.ctr), f"--address={socket_path}", "--namespace=k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    for task in ctr("tasks", "ls", "-q").stdout.split():
        ctr("tasks", "kill", "--signal=SIGKILL", task)
        ctr("tasks", "delete", "--force", task)
    for container in ctr("containers", "ls", "-q").stdout.split():
        ctr("containers", "delete", container)


def _forget_node(server: KubeAPIServer) -> None:
    """The node and its role binding, removed from the server."""
    server.kubectl("delete", "node", NODE_NAME, "--wait=false", check=False)
    server.kubectl(
        "delete", "clusterrolebinding", f"tether-test-node-{NODE_NAME}", "--wait=false", check=False
    )


def leftovers(directory: Path) -> list[str]:
    """What of a stopped node in ``directory`` is still there: processes naming it, mounts
    under it (each a line; none is expected)."""
    return [f"process {pid}" for pid in processes_naming(f"{directory}/")] + [
        f"mount {point}" for point in mounts_under(directory)
    ]
