"""``tether.testing.kube``: the real Kubernetes API server the Kubernetes plugin's tests get
(the ``kube_apiserver`` fixture), reached with Debian's kubectl 1.20 and with raw requests,
its node (``kube_node``: pods run, ``kubectl logs`` and ``exec`` reach them), and what a test
gets when the components are not there (one line saying why)."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tether.testing.kube import (
    KUBE_VERSION,
    KubeAPIServer,
    kube_cache_dir,
    kube_components,
    start_kube_apiserver,
)
from tether.testing.kube_machine import socket_peers
from tether.testing.kube_node import (
    BUSYBOX_IMAGE,
    NODE_NAME,
    KubeNode,
    kube_node_components,
)


@pytest.fixture
def namespace(kube_apiserver: KubeAPIServer) -> Iterator[str]:
    """A namespace of the test's own on the shared server, deleted after (without waiting)."""
    name = f"t-{secrets.token_hex(4)}"
    kube_apiserver.kubectl("create", "namespace", name)
    yield name
    kube_apiserver.kubectl("delete", "namespace", name, "--wait=false")


def test_debians_kubectl_reads_the_servers_version(kube_apiserver: KubeAPIServer) -> None:
    client = kube_apiserver.kubectl("version", "--client", "--short")
    assert client.stdout.strip() == f"Client Version: {KUBE_VERSION}"
    version = json.loads(kube_apiserver.kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"] == KUBE_VERSION


def test_the_admin_creates_and_lists_a_configmap(
    kube_apiserver: KubeAPIServer, namespace: str
) -> None:
    kube_apiserver.kubectl(
        "create", "configmap", "settings", "--from-literal=colour=blue", f"--namespace={namespace}"
    )
    listed = kube_apiserver.kubectl("get", "configmaps", f"--namespace={namespace}", "-o", "json")
    found = {
        item["metadata"]["name"]: item.get("data") for item in json.loads(listed.stdout)["items"]
    }
    assert found["settings"] == {"colour": "blue"}


def test_impersonation_headers_act_as_the_user_and_rbac_decides(
    kube_apiserver: KubeAPIServer, namespace: str
) -> None:
    # the group devs may read the namespace's objects; alice is in it only when the headers say
    kube_apiserver.kubectl(
        "create", "rolebinding", "devs-view", "--clusterrole=view", "--group=devs",
        f"--namespace={namespace}",
    )  # fmt: skip
    url = f"{kube_apiserver.url}/api/v1/namespaces/{namespace}/configmaps"
    with httpx.Client(verify=kube_apiserver.client_context(), trust_env=False) as admin:
        as_dev = admin.get(url, headers={"Impersonate-User": "alice", "Impersonate-Group": "devs"})
        assert as_dev.status_code == 200, as_dev.text
        assert as_dev.json()["kind"] == "ConfigMapList"

        alone = admin.get(url, headers={"Impersonate-User": "alice"})
    assert alone.status_code == 403
    assert alone.json()["reason"] == "Forbidden"
    assert alone.json()["message"] == (
        f'configmaps is forbidden: User "alice" cannot list resource "configmaps" in API group'
        f' "" in the namespace "{namespace}"'
    )


def test_a_user_without_rights_gets_kubernetes_own_403(
    kube_apiserver: KubeAPIServer, namespace: str
) -> None:
    mallory = kube_apiserver.issue_client_cert("mallory", ["interns"])
    listed = kube_apiserver.kubectl(
        "get", "configmaps", f"--namespace={namespace}", kubeconfig=mallory.kubeconfig, check=False
    )
    assert listed.returncode == 1
    assert listed.stderr.strip() == (
        'Error from server (Forbidden): configmaps is forbidden: User "mallory" cannot list'
        f' resource "configmaps" in API group "" in the namespace "{namespace}"'
    )
    # and only the administrator may impersonate
    with httpx.Client(verify=kube_apiserver.client_context(mallory), trust_env=False) as client:
        answer = client.get(
            f"{kube_apiserver.url}/api/v1/namespaces/{namespace}/configmaps",
            headers={"Impersonate-User": "alice", "Impersonate-Group": "devs"},
        )
    assert answer.status_code == 403
    assert answer.json()["message"] == (
        'users "alice" is forbidden: User "mallory" cannot impersonate resource "users" in API'
        ' group "" at the cluster scope'
    )


def _processes_naming(directory: pathlib.Path) -> list[str]:
    """The command lines of the running processes that name ``directory``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if any(str(directory).encode() in arg for arg in argv):
            found.append(" ".join(arg.decode(errors="replace") for arg in argv))
    return found


@pytest.mark.kube
def test_the_harness_stops_every_process_even_when_the_test_fails() -> None:
    components = kube_components()
    directory = pathlib.Path(tempfile.mkdtemp(prefix="tether-kube-"))
    try:
        with (
            pytest.raises(ZeroDivisionError),
            start_kube_apiserver(directory, components=components) as server,
        ):
            assert set(server.processes) == {"etcd", "kube-apiserver", "kube-controller-manager"}
            assert all(process.poll() is None for process in server.processes.values())
            assert len(_processes_naming(directory)) == 3
            1 / 0  # noqa: B018  # the test fails inside the block
        assert all(process.poll() is not None for process in server.processes.values())
        assert _processes_naming(directory) == []
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- the node: pods run, and kubectl reaches them --------------------------------------------


@pytest.fixture
def ticker(kube_node: KubeNode, namespace: str) -> str:
    """A pod of the test's namespace on the node that says it started, then the time each
    second."""
    kube_node.run_pod(
        kube_node.pod(
            "ticker",
            ["sh", "-c", "echo started; while true; do date; sleep 1; done"],
            namespace=namespace,
        )
    )
    return "ticker"


def test_the_node_registers_with_its_runtime_and_declared_address(kube_node: KubeNode) -> None:
    node = json.loads(kube_node.server.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == KUBE_VERSION
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses == {"InternalIP": kube_node.address, "Hostname": NODE_NAME}
    images = [name for image in node["status"]["images"] for name in image["names"]]
    assert BUSYBOX_IMAGE in images


def test_a_host_network_busybox_pod_runs_and_logs(
    kube_node: KubeNode, namespace: str, ticker: str
) -> None:
    pod = json.loads(
        kube_node.server.kubectl("get", "pod", ticker, "-n", namespace, "-o", "json").stdout
    )
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"] == kube_node.address  # the host's network
    time.sleep(1.5)
    logs = kube_node.server.kubectl("logs", ticker, "-n", namespace).stdout.splitlines()
    assert logs[0] == "started"
    assert len(logs) >= 2


def test_exec_returns_the_commands_output_and_exit_status(
    kube_node: KubeNode, namespace: str, ticker: str
) -> None:
    ran = kube_node.server.kubectl(
        "exec", ticker, "-n", namespace, "--", "sh", "-c", "id -u; echo to stderr >&2; exit 3",
        check=False,
    )  # fmt: skip
    assert ran.returncode == 3
    assert ran.stdout == "0\n"
    assert ran.stderr == "to stderr\ncommand terminated with exit code 3\n"
    echoed = kube_node.server.kubectl(
        "exec", "-i", ticker, "-n", namespace, "--", "tr", "a-z", "A-Z", input="shout\n"
    )
    assert echoed.stdout == "SHOUT\n"


def test_the_api_server_reaches_the_kubelet_on_loopback_never_at_the_nodes_address(
    kube_node: KubeNode, namespace: str, ticker: str
) -> None:
    seen: set[tuple[str, int]] = set()
    running = threading.Event()
    running.set()

    def watch() -> None:
        while running.is_set():
            seen.update(socket_peers())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        kube_node.server.kubectl("exec", ticker, "-n", namespace, "--", "sleep", "2")
        kube_node.server.kubectl("logs", ticker, "-n", namespace)
    finally:
        running.clear()
        watcher.join()
    assert ("127.0.0.1", kube_node.kubelet_port) in seen
    assert [peer for peer in seen if peer[0] == kube_node.address] == []


# --- without the components: one line says why ------------------------------------------------


@pytest.fixture
def cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("TETHER_KUBE_CACHE", str(tmp_path))
    return tmp_path


def _skip_reason(timeout: float = 0.0) -> str:
    with pytest.raises(pytest.skip.Exception) as skipped:
        kube_components(timeout=timeout)
    reason = str(skipped.value)
    assert "\n" not in reason
    return reason


def test_never_prepared_says_to_run_kube_deps(cache: pathlib.Path) -> None:
    assert _skip_reason() == (
        f"no Kubernetes {KUBE_VERSION} components in {cache}: run scripts/kube-deps.sh "
        "(tox does; as root it installs what it needs)"
    )


def test_a_failed_preparation_gives_its_reason(cache: pathlib.Path) -> None:
    log = cache / f"{KUBE_VERSION}.log"
    (cache / f"{KUBE_VERSION}.status").write_text(
        f"failed: missing golang-go: install them, or run scripts/kube-deps.sh as root"
        f" (see {log})\n"
    )
    assert _skip_reason() == (
        f"no Kubernetes {KUBE_VERSION} components: missing golang-go: install them, or run"
        f" scripts/kube-deps.sh as root (see {log})"
    )


def test_a_preparation_that_died_is_not_waited_for(cache: pathlib.Path) -> None:
    (cache / f"{KUBE_VERSION}.status").write_text("preparing since 2026-01-01T00:00:00Z\n")
    (cache / f"{KUBE_VERSION}.lock").touch()  # and nobody holds it
    assert _skip_reason(timeout=600) == (
        f"no Kubernetes {KUBE_VERSION} components: their preparation stopped before it"
        f" finished (log: {cache / f'{KUBE_VERSION}.log'}); run scripts/kube-deps.sh again"
    )


def test_a_preparation_at_work_is_waited_for_until_the_timeout(cache: pathlib.Path) -> None:
    (cache / f"{KUBE_VERSION}.status").write_text("preparing since 2026-01-01T00:00:00Z\n")
    with open(cache / f"{KUBE_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as kube-deps.sh holds it while it works
        assert _skip_reason(timeout=0.3) == (
            f"no Kubernetes {KUBE_VERSION} components: still being prepared after 0.3 s"
            f" (log: {cache / f'{KUBE_VERSION}.log'})"
        )


def test_the_answer_is_kept_so_later_tests_do_not_wait_again(cache: pathlib.Path) -> None:
    _skip_reason()
    (cache / f"{KUBE_VERSION}.status").write_text("failed: something else\n")
    assert _skip_reason().startswith(f"no Kubernetes {KUBE_VERSION} components in ")


def test_the_nodes_part_says_its_own_reason(cache: pathlib.Path) -> None:
    (cache / f"{KUBE_VERSION}.status").write_text("ok\n")
    (cache / f"{KUBE_VERSION}-node.status").write_text(
        "failed: not root: a node (kubelet, containerd) runs only as root\n"
    )
    with pytest.raises(pytest.skip.Exception) as skipped:
        kube_node_components(timeout=0)
    assert str(skipped.value) == (
        f"no Kubernetes {KUBE_VERSION} node components: not root: a node (kubelet, containerd)"
        " runs only as root"
    )


def test_the_cache_is_per_user_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_KUBE_CACHE", raising=False)
    expected = (
        pathlib.Path("/var/cache/tether/kube")
        if os.geteuid() == 0
        else pathlib.Path.home() / ".cache/tether/kube"
    )
    assert kube_cache_dir() == expected
