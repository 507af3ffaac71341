"""Kubernetes access as the guide's users get it ("Federating access to Kubernetes clusters"),
with real processes: a root user logs in once at the root, runs ``tether kube login
--cluster=leaf east`` and then plain ``kubectl`` (Debian's 1.20, matching the server) against a
real API server served by a Kubernetes service in the leaf cluster: through the root's proxy
(routed by the TLS server name the kubeconfig asks for), the leaf's tunnel, the leaf's proxy
and the service's own tunnel.

Root cluster ``root`` with ``alice`` (trait ``kubernetes_groups=developers``) and ``bob``
(``kubernetes_groups=visitors``, a group Kubernetes gives no rights), both ``access``; leaf
cluster ``leaf`` mapping ``access`` to ``kube-access``, whose ``kubernetes_groups`` come from
the root's traits and whose ``kubernetes_resources`` reach only the namespace ``team``. The
leaf's service joins with a ``kube`` token and serves ``east`` (``env=dev``), ``vault``
(``env=prod``, out of the role's reach) and ``gone`` (``env=dev``, an API server that is not
there). In Kubernetes, group ``developers`` may edit configmaps in ``team`` and nothing else.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import attrs
import pytest
from ruamel.yaml import YAML

from tether.api import route_server_name
from tether.testing.cluster import (
    RunningCluster,
    RunningNode,
    start_cluster,
    start_node,
    wait_for,
)
from tether.testing.kube import KubeAPIServer
from tether.testing.trusted_clusters import (
    connection,
    create_trusted_cluster,
    invite,
    trusted_cluster_yaml,
)

PASSWORD = "correct horse battery staple"

KUBE_ACCESS_ROLE = """\
kind: role
version: v7
metadata:
  name: kube-access
spec:
  allow:
    kubernetes_labels: {env: dev}
    kubernetes_groups: ["{{internal.kubernetes_groups}}"]
    kubernetes_resources:
      - {kind: configmap, namespace: team, name: '*'}
      - {kind: pod, namespace: team, name: '*'}
  deny:
    kubernetes_resources:
      - {kind: configmap, namespace: team, name: locked, verbs: [delete]}
"""

#: Kubernetes' own rules: group developers edits configmaps in team, and may exec there.
DEVELOPERS_RBAC = """\
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: configmap-editor, namespace: team}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [pods, pods/exec, pods/portforward]
  verbs: [get, list, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: developers-edit-configmaps, namespace: team}
subjects:
- {kind: Group, name: developers, apiGroup: rbac.authorization.k8s.io}
roleRef: {kind: Role, name: configmap-editor, apiGroup: rbac.authorization.k8s.io}
"""

#: What the user's kubeconfig held before Tether: it must survive every login and logout.
THEIR_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: minikube
  cluster: {server: "https://192.0.2.10:8443"}
users:
- name: minikube
  user: {token: not-a-real-token}
contexts:
- name: minikube
  context: {cluster: minikube, user: minikube}
current-context: minikube
"""


@attrs.frozen
class Site:
    root: RunningCluster
    leaf: RunningCluster
    service: RunningNode
    kube: KubeAPIServer
    directory: pathlib.Path

    def user_env(self, user: str) -> dict[str, str]:
        """The environment ``user`` runs kubectl in: their own login and kubeconfig."""
        home = self.directory / "homes" / user
        home.mkdir(parents=True, exist_ok=True)
        return {
            "TETHER_HOME": str(self.root.user_home(user)),
            "KUBECONFIG": str(home / "kubeconfig"),
            "HOME": str(home),
        }

    def tether(self, user: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        env = {**self.user_env(user), **kwargs.pop("env", {})}  # type: ignore[dict-item]
        return self.root.tether(user, *args, env=env, **kwargs)  # type: ignore[arg-type]

    def kubectl(
        self, user: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Plain kubectl, as ``user``, with what ``tether kube login`` wrote."""
        return self.kube.kubectl(
            *args, kubeconfig=self.user_env(user)["KUBECONFIG"], env=self.user_env(user),
            check=check,
        )  # fmt: skip


def _gone_kubeconfig(kube: KubeAPIServer, path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig like the admin's whose API server is not there (a closed port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = pathlib.Path(kube.kubeconfig).read_text().replace(kube.url, f"https://127.0.0.1:{port}")
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def site(kube_apiserver: KubeAPIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("kube-through-leaf")
    (directory / "rbac.yaml").write_text(DEVELOPERS_RBAC)
    kube_apiserver.kubectl("apply", "-f", str(directory / "rbac.yaml"))
    root = start_cluster(directory / "root", "root")
    leaf = start_cluster(directory / "leaf", "leaf")
    service: RunningNode | None = None
    try:
        (directory / "kube-access.yaml").write_text(KUBE_ACCESS_ROLE)
        leaf.tetherctl("create", str(directory / "kube-access.yaml"))
        create_trusted_cluster(
            leaf, trusted_cluster_yaml(root, invite(root), role_map={"access": ["kube-access"]})
        )
        wait_for(lambda: connection(root) == "online", "the leaf's tunnel")
        for user, groups in (("alice", "developers"), ("bob", "visitors")):
            root.tetherctl(
                "users", "add", user, "--roles=access", f"--logins={user}",
                f"--traits=kubernetes_groups={groups}", "--password-stdin",
                input=PASSWORD + "\n",
            )  # fmt: skip
        admin = str(kube_apiserver.kubeconfig)
        gone = str(_gone_kubeconfig(kube_apiserver, directory / "gone.kubeconfig"))
        clusters = [
            {"name": "east", "kubeconfig_file": admin, "labels": {"env": "dev"}},
            {"name": "vault", "kubeconfig_file": admin, "labels": {"env": "prod"}},
            {"name": "gone", "kubeconfig_file": gone, "labels": {"env": "dev"}},
        ]
        service = start_node(
            leaf,
            directory / "kube-service",
            "kube-service",
            roles="kube",
            ssh_service={"enabled": False},
            config={"kubernetes_service": {"enabled": True, "clusters": clusters}},
        )
        wait_for(
            lambda: (
                len(json.loads(leaf.tetherctl("get", "kube_cluster", "-f", "json").stdout)) == 3
            ),
            "the Kubernetes service's first heartbeat",
        )
        site = Site(root, leaf, service, kube_apiserver, directory)
        for user in ("alice", "bob"):
            pathlib.Path(site.user_env(user)["KUBECONFIG"]).write_text(THEIR_KUBECONFIG)
            site.tether(
                user, "login", f"--proxy={root.proxy_addr}", f"--user={user}",
                "--password-stdin", f"--ca-pin={root.ca_pin}", input=PASSWORD + "\n",
            )  # fmt: skip
        yield site
    finally:
        if service is not None:
            service.stop()
        leaf.stop()
        root.stop()


def _contexts(site: Site, user: str) -> list[str]:
    config = YAML(typ="safe").load(pathlib.Path(site.user_env(user)["KUBECONFIG"]).read_text())
    return [c["name"] for c in config["contexts"]]


# --- the guide's flow -----------------------------------------------------------------------


def test_root_user_lists_the_leafs_kubernetes_clusters(site: Site) -> None:
    table = site.tether("alice", "kube", "ls", "--cluster=leaf").stdout
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}

    assert set(rows) == {"east", "gone"}  # vault's labels are out of the role's reach
    assert "env=dev" in rows["east"] and "developers" in rows["east"]


def test_root_user_creates_and_lists_configmaps_in_the_leafs_cluster(site: Site) -> None:
    login = site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    assert "leaf-east" in login.stdout

    site.kubectl("alice", "create", "configmap", "guide", "-n", "team", "--from-literal=step=5")
    listed = site.kubectl("alice", "get", "configmaps", "-n", "team", "-o", "name").stdout
    shown = json.loads(site.kubectl("alice", "get", "configmap", "guide", "-n", "team",
                                    "-o", "json").stdout)  # fmt: skip

    assert "configmap/guide" in listed.split()
    assert shown["data"] == {"step": "5"}
    # the API server saw the object made by alice (the Tether user name) of group developers
    direct = json.loads(site.kube.kubectl("get", "configmap", "guide", "-n", "team",
                                          "-o", "json").stdout)  # fmt: skip
    assert direct["metadata"]["uid"] == shown["metadata"]["uid"]


def test_kube_login_keeps_the_users_other_contexts(site: Site) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")

    assert _contexts(site, "alice")[:1] == ["minikube"]
    assert "leaf-east" in _contexts(site, "alice")


def test_user_of_a_group_without_rights_gets_kubernetes_own_refusal(site: Site) -> None:
    site.tether("bob", "kube", "login", "--cluster=leaf", "east")

    refused = site.kubectl("bob", "get", "configmaps", "-n", "team", check=False)

    assert refused.returncode != 0
    assert 'User "bob" cannot list resource "configmaps"' in refused.stderr
    assert "Error from server (Forbidden)" in refused.stderr


def test_a_namespace_the_tether_role_forbids_is_refused_by_tether(site: Site) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")

    refused = site.kubectl("alice", "get", "configmaps", "-n", "kube-system", check=False)

    assert refused.returncode != 0
    assert (
        "Error from server (Forbidden): Tether: list configmaps in namespace 'kube-system' "
        "is not allowed by the kubernetes_resources of roles kube-access" in refused.stderr
    )


def test_a_deny_rule_refuses_naming_the_role(site: Site) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    site.kubectl("alice", "create", "configmap", "locked", "-n", "team", check=False)

    refused = site.kubectl("alice", "delete", "configmap", "locked", "-n", "team", check=False)

    assert "delete configmaps 'locked' in namespace 'team' is denied by role 'kube-access'" in (
        refused.stderr
    )


def test_impersonating_a_group_the_roles_do_not_allow_is_refused(site: Site) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")

    refused = site.kubectl(
        "alice", "get", "configmaps", "-n", "team", "--as=alice", "--as-group=system:masters",
        check=False,
    )  # fmt: skip

    assert "impersonating Kubernetes group 'system:masters' is not allowed" in refused.stderr


def test_a_hidden_cluster_is_not_found(site: Site) -> None:
    login = site.tether("alice", "kube", "login", "--cluster=leaf", "vault", check=False)
    assert login.returncode != 0
    assert "Kubernetes cluster 'vault' not found in cluster 'leaf'" in login.stderr

    # a kubeconfig written by hand for it gets the same answer from the proxy
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    path = pathlib.Path(site.user_env("alice")["KUBECONFIG"])
    config = YAML(typ="safe").load(path.read_text())
    cluster = next(c for c in config["clusters"] if c["name"] == "leaf-east")["cluster"]
    refused = site.kubectl(
        "alice", "get", "configmaps", "-n", "team", "--tls-server-name",
        route_server_name("kube", "leaf", "vault"), check=False,
    )  # fmt: skip

    assert cluster["tls-server-name"] == route_server_name("kube", "leaf", "east")
    assert "Error from server (NotFound)" in refused.stderr
    assert "'vault' not found in cluster 'leaf'" in refused.stderr


def test_an_unreachable_api_server_is_a_clear_error(site: Site) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "gone")

    refused = site.kubectl("alice", "get", "configmaps", "-n", "team", check=False)

    assert "Error from server (ServiceUnavailable)" in refused.stderr
    assert "Kubernetes cluster 'gone' is unreachable from its Tether service" in refused.stderr
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    site.kubectl("alice", "get", "configmaps", "-n", "team")


# --- streaming ------------------------------------------------------------------------------


def test_watch_delivers_events_as_they_happen_and_survives_the_client_leaving(site: Site) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    env = {**os.environ, **site.user_env("alice")}
    watch = subprocess.Popen(
        [str(site.kube.components.kubectl), "get", "configmaps", "-n", "team", "-w",
         "--output-watch-events", "-o", "name"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2)  # let the watch start before the event it must see
        site.kubectl("alice", "create", "configmap", "watched", "-n", "team")
        assert watch.stdout is not None
        deadline = time.monotonic() + 30
        seen = ""
        while "configmap/watched" not in seen and time.monotonic() < deadline:
            seen += watch.stdout.readline()
        assert "configmap/watched" in seen
    finally:
        watch.send_signal(signal.SIGINT)  # the client leaves in the middle of the watch
        watch.wait(timeout=10)
    # the service is still there for the next request
    assert "configmap/watched" in site.kubectl("alice", "get", "configmaps", "-n", "team",
                                               "-o", "name").stdout  # fmt: skip


def test_exec_upgrade_reaches_the_api_server_intact(site: Site) -> None:
    """No kubelet runs here, so no container can be reached: the SPDY upgrade request must
    arrive at the API server as kubectl sent it, and its answer come back as it gave it."""
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")

    through = site.kubectl("alice", "exec", "-n", "team", "nowhere", "--", "true", check=False)
    direct = site.kube.kubectl("exec", "-n", "team", "nowhere", "--", "true", check=False)

    assert through.returncode != 0
    assert 'pods "nowhere" not found' in direct.stderr
    assert through.stderr == direct.stderr


# --- bad input ------------------------------------------------------------------------------


def _raw_request(site: Site, user: str, payload: bytes) -> bytes:
    """Send ``payload`` over TLS to the root's proxy as kubectl's route for leaf/east."""
    home = site.root.user_home(user)
    context = ssl.create_default_context(cafile=str(next(home.glob("keys/*/cas.pem"))))
    key_dir = next(home.glob("keys/*/tls.crt")).parent
    context.load_cert_chain(key_dir / "tls.crt", key_dir / "tls.key")
    host, port = site.root.proxy_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=15) as raw:
        name = route_server_name("kube", "leaf", "east")
        with context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(payload)
            received = b""
            while chunk := tls.recv(65536):
                received += chunk
            return received


def test_a_malformed_request_gets_a_400_and_the_service_carries_on(site: Site) -> None:
    answer = _raw_request(site, "alice", b"GET /api/v1 HTTP/1.1\r\nHost\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"kind":"Status"' in answer.replace(b" ", b"")
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    site.kubectl("alice", "get", "--raw", "/version")


def test_kube_logout_removes_only_tethers_contexts(site: Site) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")

    site.tether("alice", "kube", "logout")

    assert _contexts(site, "alice") == ["minikube"]


def test_the_leaf_audits_each_request_with_whom_kubernetes_saw(site: Site) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    site.kubectl("alice", "get", "configmap", "guide-audit", "-n", "team", check=False)

    def audited() -> list[dict[str, object]]:
        found = site.leaf.tetherctl("audit", "search", "--type=kube", "--format=json").stdout
        return [
            e for e in json.loads(found)
            if e.get("type") == "kube.request" and e.get("name") == "guide-audit"
        ]  # fmt: skip

    wait_for(lambda: bool(audited()), "the request's audit event")
    event = audited()[0]
    assert event["user"] == "alice"
    assert event["user_cluster"] == "root"
    assert event["kube_cluster"] == "east"
    assert (event["verb"], event["resource"], event["namespace"]) == ("get", "configmaps", "team")
    assert event["code"] == 404
    assert event["kubernetes_user"] == "alice"
    assert event["kubernetes_groups"] == ["developers", "system:authenticated"]
    assert event["roles"] == ["kube-access"]


def test_tether_login_gives_the_kubectl_contexts_the_logins_ca(site: Site) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    path = pathlib.Path(site.user_env("alice")["KUBECONFIG"])
    path.write_text(
        path.read_text().replace("certificate-authority-data: ", "certificate-authority-data: AAAA")
    )
    assert site.kubectl("alice", "get", "--raw", "/version", check=False).returncode != 0

    site.tether(
        "alice", "login", f"--proxy={site.root.proxy_addr}", "--user=alice", "--password-stdin",
        input=PASSWORD + "\n",
    )  # fmt: skip

    assert '"gitVersion": "v1.20.2"' in site.kubectl("alice", "get", "--raw", "/version").stdout
    assert _contexts(site, "alice")[:1] == ["minikube"]
