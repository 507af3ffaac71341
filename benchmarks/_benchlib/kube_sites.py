"""The Kubernetes behind the ``kube_access`` legs: one API server, two Tether clusters.

:func:`kube_site` starts, on 127.0.0.1, a real Kubernetes API server 1.20.2
(``tether.testing.kube``, as the plugin's tests start theirs), a root cluster ``root`` and a
leaf cluster ``leaf`` (trusted, role ``kubebench`` mapped to ``kubebench``), and one
Kubernetes service per cluster, both serving that API server with the administrator's
kubeconfig (``root`` serves it as ``home``, ``leaf`` as ``east``). A root user ``bench`` logs
in with ``tether login`` and runs ``tether kube login home`` and ``tether kube login
--cluster=leaf east`` into a kubeconfig of its own, as ``docs/kubernetes.md`` says; every
daemon logs at ``INFO``, as operators run them. Every process is stopped on the way out.

Kubernetes sees the Tether legs' requests as user ``bench`` in group ``tether-bench``, which a
ClusterRole lets read, watch and create configmaps; the ``direct`` leg is the administrator
(``system:masters``) with its client certificate.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import pathlib
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from _benchlib.daemon_settings import LOG
from _benchlib.ssh_sites import tether_program, user_env

if TYPE_CHECKING:
    from tether.testing.cluster import RunningCluster
    from tether.testing.kube import KubeAPIServer

BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password-not-secret"  # a throwaway cluster on loopback
KUBE_NAMES = {"local": ("root", "home"), "leaf": ("leaf", "east")}  # leg: (cluster, kube)
GROUP = "tether-bench"
READY_TIMEOUT = 90.0

ROLE = f"""\
kind: role
version: v7
metadata:
  name: kubebench
spec:
  allow:
    kubernetes_labels: {{"*": "*"}}
    kubernetes_groups: [{GROUP}]
    kubernetes_resources:
      - {{kind: configmap, namespace: "*", name: "*"}}
"""

RBAC = f"""\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {GROUP}}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {GROUP}}}
subjects:
- {{kind: Group, name: {GROUP}, apiGroup: rbac.authorization.k8s.io}}
roleRef: {{kind: ClusterRole, name: {GROUP}, apiGroup: rbac.authorization.k8s.io}}
"""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a leg's HTTP client connects and with what: kubectl's view of the context."""

    host: str
    port: int
    #: the TLS server name sent and checked (the route name through Tether)
    server_name: str
    ca_pem: str
    cert: pathlib.Path
    key: pathlib.Path

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the server for ``server_name`` and presents the leg's certificate; offers
        HTTP/1.1 only (Tether's proxy speaks nothing else to kubectl), on every leg alike."""
        context = ssl.create_default_context(cadata=self.ca_pem)
        context.load_cert_chain(self.cert, self.key)
        context.set_alpn_protocols(["http/1.1"])
        return context


@dataclasses.dataclass(frozen=True)
class Kubectl:
    """How a leg runs Debian's kubectl: ``[kubectl, --kubeconfig, --context, ...]`` in ``env``."""

    argv: tuple[str, ...]
    env: Mapping[str, str]

    def command(self, *args: str) -> list[str]:
        return [*self.argv, *args]


@dataclasses.dataclass(frozen=True)
class Site:
    """Each leg's endpoint and kubectl, the credential plugin kubectl runs, the daemons."""

    api: KubeAPIServer
    endpoints: dict[str, Endpoint]
    kubectl: dict[str, Kubectl]
    #: ``tether kube credentials ...`` as the kubeconfig names it, and its environment
    credentials: Kubectl
    #: each daemon's log (name -> path), read after the run for its warnings and errors
    logs: dict[str, pathlib.Path]
    #: each daemon's pid
    pids: dict[str, int]
    kubectl_version: str


def _wait(what: str, ok: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            if ok():
                return
        except (AssertionError, subprocess.SubprocessError, ValueError, RuntimeError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}" + (f": {last}" if last else ""))
        time.sleep(0.5)


def _components() -> Any:
    """``tether.testing.kube``'s components, or NotImplementedError saying why there are none
    (it skips a test with that reason; here every leg is n/a)."""
    import pytest

    from tether.testing.kube import kube_components

    try:
        return kube_components()
    except pytest.skip.Exception as exc:
        raise NotImplementedError(str(exc.msg)) from None


def _serves_one(cluster: RunningCluster) -> bool:
    return len(json.loads(cluster.tetherctl("get", "kube_cluster", "-f", "json").stdout)) == 1


def _answers(kubectl: Kubectl) -> bool:
    """Whether ``kubectl get --raw /version`` succeeds on a leg (its route is up)."""
    done = subprocess.run(
        kubectl.command("get", "--raw", "/version"),
        env=kubectl.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


def _context(kubeconfig: pathlib.Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster and user entries of context ``name`` of a kubeconfig (JSON or YAML)."""
    from ruamel.yaml import YAML

    document = YAML(typ="safe").load(kubeconfig.read_text())
    context = next(c["context"] for c in document["contexts"] if c["name"] == name)
    cluster = next(c["cluster"] for c in document["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in document["users"] if u["name"] == context["user"])
    return cluster, user


def _host_port(server: str) -> tuple[str, int]:
    host, port = server.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def kube_site() -> Iterator[Site]:
    """Start everything (see the module's docstring); yield the legs."""
    from tether.testing.cluster import start_cluster, start_node
    from tether.testing.kube import start_kube_apiserver
    from tether.testing.trusted_clusters import (
        connection,
        create_trusted_cluster,
        invite,
        trusted_cluster_yaml,
    )

    components = _components()
    with contextlib.ExitStack() as stack:
        base = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tether-kb-")))
        api = stack.enter_context(start_kube_apiserver(base / "kube", components=components))
        (base / "rbac.yaml").write_text(RBAC)
        api.kubectl("apply", "-f", str(base / "rbac.yaml"))
        clusters: dict[str, RunningCluster] = {}
        for name in ("root", "leaf"):
            cluster = start_cluster(base / name, name, config={"log": LOG})
            stack.callback(cluster.stop)
            clusters[name] = cluster
            (base / f"{name}-role.yaml").write_text(ROLE)
            cluster.tetherctl("create", str(base / f"{name}-role.yaml"))
        root, leaf = clusters["root"], clusters["leaf"]
        create_trusted_cluster(
            leaf, trusted_cluster_yaml(root, invite(root), role_map={"kubebench": ["kubebench"]})
        )
        root.add_user(BENCH_USER, BENCH_PASSWORD, roles=["kubebench"])
        root.login(BENCH_USER, BENCH_PASSWORD)
        logs = {"root proxy": root.log_path, "leaf proxy": leaf.log_path}
        pids = {"root proxy": root.process.pid, "leaf proxy": leaf.process.pid}
        for cluster_name, kube_name in KUBE_NAMES.values():
            cluster = clusters[cluster_name]
            service = start_node(
                cluster,
                base / f"{cluster_name}-kube-service",
                f"{cluster_name}-kube-service",
                roles="kube",
                ssh_service={"enabled": False},
                config={
                    "log": LOG,
                    "kubernetes_service": {
                        "enabled": True,
                        "clusters": [{"name": kube_name, "kubeconfig_file": str(api.kubeconfig)}],
                    },
                },
            )
            stack.callback(service.stop)
            logs[f"{cluster_name} kube service"] = service.log_path
            pids[f"{cluster_name} kube service"] = service.process.pid
            _wait(
                f"{cluster_name}'s Kubernetes service heartbeat",
                functools.partial(_serves_one, cluster),
            )
        _wait("the leaf's tunnel to the root", lambda: connection(root) == "online")
        home = root.user_home(BENCH_USER)
        kubeconfig = base / "bench-kubeconfig"
        env = {**user_env(), "TETHER_HOME": str(home), "KUBECONFIG": str(kubeconfig)}
        program, _ = tether_program()

        def kube_login(*args: str) -> bool:
            done = subprocess.run(
                [*program, "kube", "login", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip())
            return True

        kube_login(KUBE_NAMES["local"][1])
        # the leaf's clusters are seen through the root once the leaf's heartbeat crossed
        _wait("the leaf's Kubernetes cluster through the root", lambda: kube_login(
            f"--cluster={KUBE_NAMES['leaf'][0]}", KUBE_NAMES["leaf"][1]
        ))  # fmt: skip
        kubectl_path = str(components.kubectl)
        admin_cluster, _ = _context(api.kubeconfig, "admin")
        host, port = _host_port(admin_cluster["server"])
        endpoints = {
            "direct": Endpoint(host, port, host, api.ca_pem.decode(), api.admin_cert, api.admin_key)
        }
        kubectl = {
            "direct": Kubectl(
                (kubectl_path, f"--kubeconfig={api.kubeconfig}", "--context=admin",
                 f"--cache-dir={base / 'admin-kube-cache'}"),
                user_env(),
            )
        }  # fmt: skip
        credentials: Kubectl | None = None
        for leg, (cluster_name, kube_name) in KUBE_NAMES.items():
            name = f"{cluster_name}-{kube_name}"
            entry, user = _context(kubeconfig, name)
            exec_ = user["exec"]
            exec_env = {item["name"]: item["value"] for item in exec_.get("env") or ()}
            credentials = Kubectl((exec_["command"], *exec_.get("args", ())), {**env, **exec_env})
            issued = json.loads(
                subprocess.run(
                    credentials.command(), env=credentials.env, capture_output=True, check=True,
                    timeout=60,
                ).stdout
            )["status"]  # fmt: skip
            files = base / f"{leg}-credentials"
            files.mkdir()
            (files / "tls.crt").write_text(issued["clientCertificateData"])
            (files / "tls.key").touch(mode=0o600)
            (files / "tls.key").write_text(issued["clientKeyData"])
            host, port = _host_port(entry["server"])
            endpoints[leg] = Endpoint(
                host,
                port,
                entry["tls-server-name"],
                base64.b64decode(entry["certificate-authority-data"]).decode(),
                files / "tls.crt",
                files / "tls.key",
            )
            kubectl[leg] = Kubectl(
                (kubectl_path, f"--kubeconfig={kubeconfig}", f"--context={name}",
                 f"--cache-dir={base / 'bench-kube-cache'}"),
                env,
            )  # fmt: skip
        assert credentials is not None
        pids["kube-apiserver"] = api.processes["kube-apiserver"].pid
        for leg, runner in kubectl.items():
            _wait(
                f"kubectl get --raw /version on the {leg} leg", functools.partial(_answers, runner)
            )
        version = subprocess.run(
            [kubectl_path, "version", "--client", "--short"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout.strip()  # fmt: skip
        yield Site(
            api=api,
            endpoints=endpoints,
            kubectl=kubectl,
            credentials=credentials,
            logs=logs,
            pids=pids,
            kubectl_version=version,
        )
