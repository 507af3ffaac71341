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
there). In Kubernetes, group ``developers`` may edit configmaps in ``team``, and reach its pods
(logs, exec, attach, port-forward), and nothing else.

A node (``kube_node``: containerd and a kubelet) runs the pod ``workbench`` in ``team``: a
container that prints the time each second, one that answers each line on its stdin (for
``kubectl attach``), and busybox's httpd on 127.0.0.1 (the host's network) for ``kubectl
port-forward``. alice reaches them through the root's proxy, the leaf and the service, as with
every other request: the SPDY upgrades of exec, attach and port-forward become byte relays.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import attrs
import httpx
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
from tether.testing.http import free_port
from tether.testing.kube import KubeAPIServer
from tether.testing.kube_node import KubeNode
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

#: Kubernetes' own rules: group developers edits configmaps in team, and reaches its pods.
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
  resources: [pods, pods/log, pods/exec, pods/attach, pods/portforward]
  verbs: [get, list, watch, create]
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
        self, user: str, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Plain kubectl, as ``user``, with what ``tether kube login`` wrote."""
        return self.kube.kubectl(
            *args, kubeconfig=self.user_env(user)["KUBECONFIG"], env=self.user_env(user),
            check=check, input=input,
        )  # fmt: skip

    def kubectl_process(self, user: str, *args: str) -> subprocess.Popen[str]:
        """Plain kubectl as ``user``, left running (a follow, an attach, a port-forward):
        its stdin, stdout and stderr are pipes, line-buffered text."""
        return subprocess.Popen(
            [
                str(self.kube.components.kubectl),
                f"--cache-dir={self.kube.directory / 'kubectl-cache'}",
                *args,
            ],
            env={**os.environ, **self.user_env(user)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1,
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
        # the users have used kubectl through the proxy before: its discovery cache (one for
        # the proxy's address) knows the resource types. Whatever test runs first, a refused
        # request is then shown as Kubernetes' error: with an empty cache, kubectl's own
        # discovery requests are refused the same way first (an impersonation, a hidden
        # cluster) and kubectl prints "the server doesn't have a resource type" instead
        site.tether("alice", "kube", "login", "--cluster=leaf", "east")
        site.kubectl("alice", "get", "configmaps", "-n", "team")
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
    """An exec in a pod that does not exist: the SPDY upgrade request arrives at the API
    server as kubectl sent it, and its refusal comes back as it gave it, word for word."""
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")

    through = site.kubectl("alice", "exec", "-n", "team", "nowhere", "--", "true", check=False)
    direct = site.kube.kubectl("exec", "-n", "team", "nowhere", "--", "true", check=False)

    assert through.returncode != 0
    assert 'pods "nowhere" not found' in direct.stderr
    assert through.stderr == direct.stderr


# --- a pod's streams: exec, attach, logs, port-forward --------------------------------------

#: What the workbench's web server serves: a page, and 512 KiB of random bytes.
PAGE = "hello through port-forward"


@attrs.frozen
class Workbench:
    """The pod ``workbench`` in ``team``, running on the node."""

    name: str
    #: the port its httpd listens on, on 127.0.0.1 (the host's network)
    port: int


@pytest.fixture(scope="module")
def workbench(site: Site, kube_node: KubeNode) -> Iterator[Workbench]:
    port = free_port()
    manifest = kube_node.pod(
        "workbench",
        ["sh", "-c", "echo started; while true; do date; sleep 1; done"],
        namespace="team",
    )
    spec = manifest["spec"]
    assert isinstance(spec, dict)
    ticker = spec["containers"][0]
    spec["containers"] = [
        {**ticker, "name": "ticker"},
        {
            **ticker,
            "name": "repeater",
            "command": ["sh", "-c", 'while read -r line; do echo "got $line"; done'],
            "stdin": True,
        },
        {
            **ticker,
            "name": "web",
            "command": [
                "sh", "-c",
                f"mkdir -p /tmp/www && echo '{PAGE}' > /tmp/www/page.txt && "
                "head -c 524288 /dev/urandom > /tmp/www/blob && "
                f"exec httpd -f -p 127.0.0.1:{port} -h /tmp/www",
            ],
        },
    ]  # fmt: skip
    kube_node.run_pod(manifest)
    yield Workbench("workbench", port)
    site.kube.kubectl("delete", "pod", "workbench", "-n", "team", "--wait=false", check=False)


def _lines(process: subprocess.Popen[str], count: int, timeout: float) -> list[tuple[float, str]]:
    """The next ``count`` lines of ``process``'s stdout, each with when it came."""
    assert process.stdout is not None
    stdout = process.stdout
    got: list[tuple[float, str]] = []

    def read() -> None:
        while len(got) < count:
            line = stdout.readline()
            if not line:
                return
            got.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return got


def _upstream_connections(site: Site) -> int:
    """How many TCP connections the leaf's Kubernetes service has open to the API server."""
    port = int(site.kube.url.rsplit(":", 1)[1])
    pid = site.service.process.pid
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed in the meantime
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            established = fields[3] == "01"
            if established and fields[9] in inodes and int(fields[2].split(":")[1], 16) == port:
                count += 1
    return count


def _interrupt(process: subprocess.Popen[str], timeout: float = 10.0) -> int:
    """Ctrl-C, as a user stops kubectl; the exit status (it must stop by itself)."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_exec_runs_a_command_and_returns_its_output_and_exit_status(
    site: Site, workbench: Workbench
) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")

    ran = site.kubectl(
        "alice", "exec", "-n", "team", workbench.name, "-c", "ticker", "--",
        "sh", "-c", "echo out; echo err >&2; exit 7", check=False,
    )  # fmt: skip

    assert ran.returncode == 7
    assert ran.stdout == "out\n"
    assert ran.stderr == "err\ncommand terminated with exit code 7\n"
    ok = site.kubectl("alice", "exec", "-n", "team", workbench.name, "-c", "ticker", "--", "true")
    assert ok.returncode == 0


def test_exec_with_stdin_carries_it_to_the_command(site: Site, workbench: Workbench) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    text = "".join(f"line {i} of a longer input\n" for i in range(2000))  # about 50 KB

    ran = site.kubectl(
        "alice", "exec", "-i", "-n", "team", workbench.name, "-c", "ticker", "--",
        "sh", "-c", "tr a-z A-Z; echo done >&2", input=text,
    )  # fmt: skip

    assert ran.stdout == text.upper()
    assert ran.stderr == "done\n"


def test_an_exec_is_audited_as_a_session_by_the_leaf(site: Site, workbench: Workbench) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    site.kubectl("alice", "exec", "-n", "team", workbench.name, "-c", "ticker", "--",
                 "echo", "audited")  # fmt: skip

    def sessions() -> dict[str, dict[str, object]]:
        found = site.leaf.tetherctl("audit", "search", "--type=kube", "--format=json").stdout
        return {
            str(e["type"]): e for e in json.loads(found)
            if str(e.get("type", "")).startswith("kube.session.")
            and e.get("name") == workbench.name and e.get("subresource") == "exec"
        }  # fmt: skip

    wait_for(lambda: {"kube.session.start", "kube.session.end"} <= set(sessions()),
             "the exec's session events")  # fmt: skip
    start, end = sessions()["kube.session.start"], sessions()["kube.session.end"]
    for event in (start, end):
        assert event["user"] == "alice"
        assert event["kube_cluster"] == "east"
        assert (event["verb"], event["namespace"]) == ("exec", "team")
        assert event["kubernetes_user"] == "alice"


def test_an_interrupted_exec_ends_its_session_and_its_upstream(
    site: Site, workbench: Workbench
) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    before = _upstream_connections(site)
    marker = f"interrupted-{time.monotonic_ns()}"
    running = site.kubectl_process(
        "alice", "exec", "-n", "team", workbench.name, "-c", "ticker", "--",
        "sh", "-c", f"echo {marker}; sleep 60",
    )  # fmt: skip
    try:
        assert [line for _, line in _lines(running, 1, timeout=20)] == [marker]
        # the exec's upgraded connection, and the one kubectl read the pod on
        assert _upstream_connections(site) > before
    finally:
        _interrupt(running)

    # well before the command's 60 s: the relay ended with the client, and said so
    wait_for(lambda: _upstream_connections(site) == before, "the exec's upstream to close")
    wait_for(lambda: _sessions_balanced(site, workbench.name), "the session's end event")


def _sessions_balanced(site: Site, pod: str) -> bool:
    """Whether the leaf audited as many session ends as starts for ``pod`` (one at least)."""
    found = site.leaf.tetherctl("audit", "search", "--type=kube", "--format=json").stdout
    counts = {"kube.session.start": 0, "kube.session.end": 0}
    for event in json.loads(found):
        if event.get("type") in counts and event.get("name") == pod:
            counts[str(event["type"])] += 1
    return counts["kube.session.start"] >= 1 and len(set(counts.values())) == 1


def test_attach_carries_stdin_to_the_running_process_and_its_output_back(
    site: Site, workbench: Workbench
) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    before = _upstream_connections(site)
    attach = site.kubectl_process(
        "alice", "attach", "-i", "-n", "team", workbench.name, "-c", "repeater"
    )
    try:
        assert attach.stdin is not None
        time.sleep(2)  # let the attach start: what is sent before it goes nowhere
        attach.stdin.write("hello over attach\n")
        attach.stdin.flush()
        got = [line for _, line in _lines(attach, 1, timeout=20)]
    finally:
        _interrupt(attach)

    assert got == ["got hello over attach"]
    wait_for(lambda: _upstream_connections(site) == before, "the attach's upstream to close")
    # the process attached to is still there for the next one
    running = site.kube.kubectl(
        "get",
        "pod",
        workbench.name,
        "-n",
        "team",
        "-o",
        "jsonpath={.status.containerStatuses[?(@.name=='repeater')].state}",
    )
    assert "running" in running.stdout  # fmt: skip


def test_logs_follow_streams_lines_as_they_come_and_stops_when_interrupted(
    site: Site, workbench: Workbench
) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    before = _upstream_connections(site)
    follow = site.kubectl_process(
        "alice", "logs", "-f", "--tail=1", "-n", "team", workbench.name, "-c", "ticker"
    )
    try:
        lines = _lines(follow, 4, timeout=30)
        following = _upstream_connections(site)
    finally:
        status = _interrupt(follow)

    assert len(lines) == 4, lines
    # the ticker writes a line a second: they came one by one, not all at the end
    assert lines[-1][0] - lines[1][0] >= 1.5
    assert all(line.endswith(time.strftime("%Y")) for _, line in lines)
    assert status in (0, -signal.SIGINT, 130)
    # the follow held a connection to the API server, which the service closed with kubectl's
    assert following > before
    wait_for(lambda: _upstream_connections(site) == before, "the follow's upstream to close")
    # the service and the API server are still there for the next request
    shown = site.kubectl("alice", "logs", "-n", "team", workbench.name, "-c", "ticker").stdout
    assert shown.splitlines()[0] == "started"


def test_port_forward_carries_bytes_to_the_pods_port(site: Site, workbench: Workbench) -> None:
    site.tether("alice", "kube", "login", "--cluster=leaf", "east")
    local = free_port()
    forward = site.kubectl_process(
        "alice", "port-forward", "--address=127.0.0.1", "-n", "team",
        f"pod/{workbench.name}", f"{local}:{workbench.port}",
    )  # fmt: skip
    try:
        ready = _lines(forward, 1, timeout=30)
        assert ready and ready[0][1].startswith(f"Forwarding from 127.0.0.1:{local}"), ready
        with httpx.Client(base_url=f"http://127.0.0.1:{local}", trust_env=False) as client:
            page = client.get("/page.txt")
            blob = client.get("/blob")
    finally:
        _interrupt(forward)

    assert page.status_code == 200
    assert page.text == PAGE + "\n"
    assert len(blob.content) == 524288
    in_pod = site.kubectl(
        "alice", "exec", "-n", "team", workbench.name, "-c", "web", "--",
        "sha256sum", "/tmp/www/blob",
    ).stdout.split()[0]  # fmt: skip
    assert hashlib.sha256(blob.content).hexdigest() == in_pod


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
