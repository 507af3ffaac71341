"""Scenarios: an admin brings the Teleport YAML and habits they already have to ``tetherctl``."""

from __future__ import annotations

import json
import pathlib
import sys

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


def _editor(tmp_path: pathlib.Path, body: str) -> dict[str, str]:
    """EDITOR set to a Python script whose ``body`` edits ``path`` (run N is ``n``)."""
    script = tmp_path / "editor.py"
    script.write_text(
        "import pathlib, sys\n"
        f"count = pathlib.Path({str(tmp_path / 'runs')!r})\n"
        "n = int(count.read_text()) + 1 if count.exists() else 1\n"
        "count.write_text(str(n))\n"
        "path = pathlib.Path(sys.argv[1])\n"
        "text = path.read_text()\n" + body + "\npath.write_text(text)\n"
    )
    return {"EDITOR": f"{sys.executable} {script}", "VISUAL": ""}


def _create_role(cluster: RunningCluster, tmp_path: pathlib.Path, name: str) -> None:
    role = tmp_path / f"{name}.yaml"
    role.write_text(V8_ROLE.replace("ops-v8", name))
    cluster.tetherctl("create", "-f", str(role))


def test_admin_edits_a_role_in_their_editor(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    _create_role(tether_cluster, tmp_path, "edited")
    env = _editor(tmp_path, "text = text.replace('- ops', '- ops\\n    - admin')")

    result = tether_cluster.tetherctl("edit", "role/edited", env=env)

    assert "edited" in result.stdout
    assert "- admin" in tether_cluster.tetherctl("get", "role/edited").stdout


def test_edit_that_does_not_validate_opens_again_with_the_error(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    _create_role(tether_cluster, tmp_path, "retried")
    env = _editor(
        tmp_path,
        "if n == 1:\n"
        "    text = text.replace('max_session_ttl: 8h', 'max_session_ttl: soon')\n"
        "else:\n"
        "    assert text.startswith('# '), text\n"
        "    assert 'spec.options.max_session_ttl' in text, text\n"
        "    text = text.replace('max_session_ttl: soon', 'max_session_ttl: 4h')\n",
    )

    tether_cluster.tetherctl("edit", "role/retried", env=env)

    assert (tmp_path / "runs").read_text() == "2"
    assert "max_session_ttl: 4h" in tether_cluster.tetherctl("get", "role/retried").stdout


def test_edit_saved_unchanged_after_an_error_gives_up_with_it(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    _create_role(tether_cluster, tmp_path, "abandoned")
    env = _editor(tmp_path, "text = text.replace('max_session_ttl: 8h', 'max_session_ttl: soon')")

    result = tether_cluster.tetherctl("edit", "role/abandoned", env=env, check=False)

    assert result.returncode == 1
    assert "ERROR: role/abandoned:" in result.stderr
    assert "spec.options.max_session_ttl" in result.stderr
    assert "max_session_ttl: 8h" in tether_cluster.tetherctl("get", "role/abandoned").stdout


def test_edit_does_not_overwrite_what_someone_else_saved_meanwhile(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    _create_role(tether_cluster, tmp_path, "contested")
    theirs = tmp_path / "theirs.yaml"
    theirs.write_text(V8_ROLE.replace("ops-v8", "contested").replace("[ops]", "[theirs]"))
    # while the admin's editor is open, another admin replaces the role
    replace = [sys.executable, "-m", "tether.cli.tetherctl", "-c", str(tether_cluster.config_path)]
    replace += ["create", "-f", str(theirs)]
    env = _editor(
        tmp_path,
        "import subprocess\n"
        f"subprocess.run({replace!r}, check=True)\n"
        "text = text.replace('- ops', '- mine')",
    )

    result = tether_cluster.tetherctl("edit", "role/contested", env=env, check=False)

    assert result.returncode == 1
    assert "role 'contested' was changed by someone else since you read it" in result.stderr
    assert "your edit was not applied and is kept in " in result.stderr
    kept = pathlib.Path(result.stderr.split("is kept in ")[1].split()[0].rstrip(";"))
    assert "- mine" in kept.read_text()
    assert "- theirs" in tether_cluster.tetherctl("get", "role/contested").stdout
    # the hint runs as printed: their version is replaced by the edit kept aside
    tether_cluster.tetherctl("create", "-f", str(kept))
    assert "- mine" in tether_cluster.tetherctl("get", "role/contested").stdout
    kept.unlink()


def test_update_sets_labels_on_the_latest_version(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    _create_role(tether_cluster, tmp_path, "relabelled")

    tether_cluster.tetherctl("update", "role/relabelled", "--set-labels=team=ops")

    shown = tether_cluster.tetherctl("get", "role/relabelled", "--format=json").stdout
    [role] = json.loads(shown)
    assert role["metadata"]["labels"] == {"team": "ops"}
    assert role["spec"]["allow"]["logins"] == ["ops"]


def test_edit_closed_without_changes_changes_nothing(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    _create_role(tether_cluster, tmp_path, "untouched")

    result = tether_cluster.tetherctl("edit", "role/untouched", env=_editor(tmp_path, ""))

    assert result.stdout.strip() == "Edit cancelled, no changes made."


def test_get_all_shows_every_kind_in_a_file_create_accepts(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    _create_role(tether_cluster, tmp_path, "listed")

    shown = tether_cluster.tetherctl("get", "all").stdout

    assert "kind: role" in shown
    assert "name: listed" in shown
    assert "kind: cert_authority" in shown
    (tmp_path / "all.yaml").write_text(shown)
    tether_cluster.tetherctl("create", "-f", str(tmp_path / "all.yaml"), "--force")
