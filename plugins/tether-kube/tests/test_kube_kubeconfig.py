"""``tether kube login`` and ``logout`` edit the user's kubeconfig: their own entries only."""

from __future__ import annotations

import base64
import pathlib

import pytest
from ruamel.yaml import YAML
from tether_kube.kubeconfig import (
    KubeconfigEntry,
    kubeconfig_path,
    refresh_entries,
    remove_entries,
    tether_contexts,
    write_entry,
)

from tether.api import TetherError

THEIRS = """\
# my clusters
apiVersion: v1
kind: Config
clusters:
- name: minikube
  cluster: {server: "https://192.168.49.2:8443"}
users:
- name: minikube
  user: {token: abc}
contexts:
- name: minikube
  context: {cluster: minikube, user: minikube, namespace: web}
current-context: minikube
preferences: {}
"""


def entry(name: str, proxy: str = "proxy.example.com:3080") -> KubeconfigEntry:
    return KubeconfigEntry(
        name=name,
        server=f"https://{proxy}",
        ca_pem="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        server_name="kube-726f6f74-65617374.tether.cluster.local",
        command="/usr/bin/tether",
        args=("kube", "credentials", f"--proxy={proxy}", "--cluster=root", "east"),
    )


def read(path: pathlib.Path) -> dict:
    return YAML(typ="safe").load(path.read_text())


def test_login_adds_a_context_beside_the_users_own(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config"
    path.write_text(THEIRS)

    write_entry(path, entry("root-east"))
    config = read(path)

    assert [c["name"] for c in config["contexts"]] == ["minikube", "root-east"]
    assert config["current-context"] == "root-east"
    assert config["preferences"] == {}
    assert config["contexts"][0]["context"]["namespace"] == "web"
    cluster = config["clusters"][1]["cluster"]
    assert cluster["server"] == "https://proxy.example.com:3080"
    assert cluster["tls-server-name"] == "kube-726f6f74-65617374.tether.cluster.local"
    assert base64.b64decode(cluster["certificate-authority-data"]).startswith(b"-----BEGIN")
    user = config["users"][1]["user"]["exec"]
    assert user["apiVersion"] == "client.authentication.k8s.io/v1beta1"
    assert user["args"][:2] == ["kube", "credentials"]
    assert path.read_text().startswith("# my clusters")  # comments survive
    assert path.stat().st_mode & 0o777 == 0o600


def test_login_again_replaces_its_entry(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config"
    write_entry(path, entry("root-east"))
    write_entry(path, entry("root-east", proxy="proxy2.example.com:443"))

    config = read(path)

    assert len(config["clusters"]) == 1
    assert config["clusters"][0]["cluster"]["server"] == "https://proxy2.example.com:443"


def test_logout_removes_only_tethers_entries_of_that_proxy(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config"
    path.write_text(THEIRS)
    write_entry(path, entry("root-east"))
    write_entry(path, entry("leaf-west"))
    write_entry(path, entry("other-east", proxy="other.example.com:3080"))

    removed = remove_entries(path, "proxy.example.com:3080", ["root-east"])
    assert removed == ["root-east"]
    assert tether_contexts(path, "proxy.example.com:3080") == ["leaf-west"]

    removed = remove_entries(path, "proxy.example.com:3080")
    config = read(path)

    assert removed == ["leaf-west"]
    assert [c["name"] for c in config["contexts"]] == ["minikube", "other-east"]
    assert config["current-context"] == "other-east"


def test_logout_of_the_current_context_unsets_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config"
    path.write_text(THEIRS)
    write_entry(path, entry("root-east"))

    remove_entries(path, "proxy.example.com:3080")

    assert read(path)["current-context"] == ""


def test_a_kubeconfig_that_is_not_yaml_is_left_alone(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config"
    path.write_text("clusters: [unclosed\n")

    with pytest.raises(TetherError, match="is not YAML"):
        write_entry(path, entry("root-east"))

    assert path.read_text() == "clusters: [unclosed\n"


def test_kubeconfig_is_the_first_file_of_KUBECONFIG(tmp_path: pathlib.Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"

    assert kubeconfig_path({"KUBECONFIG": f"{first}:{second}"}) == first
    assert kubeconfig_path({}).name == "config"


def test_a_new_login_gives_tethers_entries_of_that_proxy_its_ca(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config"
    path.write_text(THEIRS)
    write_entry(path, entry("root-east"))
    write_entry(path, entry("other-east", proxy="other.example.com:3080"))
    rotated = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"

    updated = refresh_entries(path, "proxy.example.com:3080", rotated)
    clusters = {c["name"]: c["cluster"] for c in read(path)["clusters"]}

    assert updated == ["root-east"]
    assert base64.b64decode(clusters["root-east"]["certificate-authority-data"]).decode() == rotated
    assert (
        "BBBB"
        not in base64.b64decode(clusters["other-east"]["certificate-authority-data"]).decode()
    )
    assert "certificate-authority-data" not in clusters["minikube"]
    assert refresh_entries(path, "proxy.example.com:3080", rotated) == []
