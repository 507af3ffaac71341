"""Scenarios: an admin brings the Teleport YAML and habits they already have to ``tetherctl``."""

from __future__ import annotations

import pathlib

from tether.testing.cluster import RunningCluster

V8_ROLE = """\
kind: role
version: v8
metadata:
  name: ops-v8
spec:
  allow:
    logins: [ops]
    node_labels:
      env: prod
  options:
    max_session_ttl: 8h
"""


def test_admin_creates_a_v8_role_and_gets_it_back(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    role = tmp_path / "ops-v8.yaml"
    role.write_text(V8_ROLE)

    tether_cluster.tetherctl("create", "-f", str(role))

    shown = tether_cluster.tetherctl("get", "role/ops-v8").stdout
    assert "version: v8" in shown
    assert "- ops" in shown


def test_v8_role_with_kubernetes_resources_is_refused_with_what_to_write(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    role = tmp_path / "kube-v8.yaml"
    role.write_text(
        V8_ROLE.replace("ops-v8", "kube-v8")
        + "  deny:\n    kubernetes_resources:\n      - kind: pods\n        api_group: ''\n"
    )

    result = tether_cluster.tetherctl("create", "-f", str(role), check=False)

    assert result.returncode != 0
    assert "kube-v8.yaml:13: document 1 (role 'kube-v8'): spec.deny.kubernetes_resources:" in (
        result.stderr
    )
    assert "version: v7" in result.stderr


def test_teleport_fields_tether_lacks_are_all_named_not_supported(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    role = tmp_path / "teleport-role.yaml"
    role.write_text(
        V8_ROLE.replace("version: v8", "version: v7")
        .replace("    node_labels:", "    app_labels:\n      '*': '*'\n    node_labels:")
        .replace("  options:\n", "  options:\n    require_session_mfa: true\n")
        + "    record_session:\n      desktop: false\n"
    )

    result = tether_cluster.tetherctl("create", "-f", str(role), check=False)

    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if "not supported" in line]
    assert line.startswith("ERROR: teleport-role.yaml:8: document 1 (role 'ops-v8'): ")
    assert (
        "spec.allow.app_labels: not supported by Tether; nor are "
        "spec.options.require_session_mfa, spec.options.record_session"
    ) in line
    assert "unknown field" not in result.stderr


def test_misspelt_field_still_gets_did_you_mean(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    role = tmp_path / "typo.yaml"
    role.write_text(V8_ROLE.replace("logins:", "login:").replace("ops-v8", "typo"))

    result = tether_cluster.tetherctl("create", "-f", str(role), check=False)

    assert "spec.allow.login: unknown field (did you mean logins?)" in result.stderr
