"""Plugins as operators and plugin authors meet them: listed, disabled, called, and isolated.

Every scenario but the last two runs the real programs. The ``tether-hooktest`` distribution
(tests/plugins/tether-hooktest) is installed in the test environment through the ``tether``
entry-point group like any third-party plugin; it implements every hook and, when
``TETHER_HOOKTEST_LOG`` names a file, records each call there as a JSON line.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import ssl
import textwrap
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import tether_hooktest

from tether import audit
from tether.audit import AuditEvent
from tether.client.profile import current_profile, profile_ssl_context
from tether.config import AuditFailure, default_config
from tether.errors import AuditUnavailable
from tether.hookspecs import hookimpl
from tether.plugins import AUTOLOAD_ENV, TetherPluginManager, describe_plugins, get_plugin_manager
from tether.testing.cluster import RunningCluster, run_cli, start_cluster
from tether.yamlio import dump_yaml

BUILTINS = (
    "core-kinds",
    "sqlite",
    "jsonl-audit",
    "local",
    "role-maps",
    "node-agent",
    "core-services",
)
HOOKTEST_HOOKS = (
    "tether_agent_protocols",
    "tether_audit_events",
    "tether_audit_search",
    "tether_backends",
    "tether_cert_authorities",
    "tether_cli_commands",
    "tether_cli_lazy_commands",
    "tether_client_logged_in",
    "tether_config_sections",
    "tether_configure",
    "tether_identity_connectors",
    "tether_map_role",
    "tether_protocols",
    "tether_resource_kinds",
    "tether_role_fields",
    "tether_service_roles",
    "tether_services",
    "tether_token_types",
)


def _plugin_rows(stdout: str) -> dict[str, list[str]]:
    """Parse the ``tetherd plugins`` table: plugin name -> [distribution, version, hooks]."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["Plugin", "Distribution", "Version", "Hooks"], stdout
    assert set(lines[1]) <= {"-", " "}, stdout
    rows = {}
    for line in lines[2:]:
        name, dist, version, hooks = line.split(maxsplit=3)
        rows[name] = [dist, version, hooks]
    return rows


def _write_config(path: pathlib.Path, config: dict[str, Any]) -> pathlib.Path:
    path.write_text(dump_yaml(config))
    return path


# --- listing and disabling -------------------------------------------------------------------


def test_operator_lists_loaded_plugins_with_their_distribution() -> None:
    result = run_cli("tetherd", "plugins")
    rows = _plugin_rows(result.stdout)
    assert list(rows)[: len(BUILTINS)] == list(BUILTINS)
    for name in BUILTINS:
        assert rows[name][0] == "tether"
    assert rows["core-kinds"][2] == "tether_resource_kinds"
    assert rows["sqlite"][2] == "tether_backends"
    assert rows["jsonl-audit"][2] == "tether_audit_events, tether_audit_search, tether_configure"
    assert rows["local"][2] == "tether_identity_connectors"
    assert rows["role-maps"][2] == "tether_map_role"
    assert rows["node-agent"][2] == "tether_services"
    assert rows["core-services"][2] == "tether_service_roles, tether_token_types"
    assert rows["hooktest"] == ["tether-hooktest", "0.0.1", ", ".join(HOOKTEST_HOOKS)]


def test_operator_turns_off_autoload_and_only_builtins_remain() -> None:
    result = run_cli("tetherd", "plugins", env={AUTOLOAD_ENV: "1"})
    assert list(_plugin_rows(result.stdout)) == list(BUILTINS)


def test_operator_disables_a_builtin_plugin_in_config(tmp_path: pathlib.Path) -> None:
    config = _write_config(tmp_path / "tether.yaml", {"plugins": {"disabled": ["jsonl-audit"]}})
    result = run_cli("tetherd", "plugins", "-c", str(config))
    rows = _plugin_rows(result.stdout)
    assert "jsonl-audit" not in rows
    assert {"core-kinds", "sqlite", "local", "hooktest"} <= set(rows)


# --- every hook is called in a real daemon ---------------------------------------------------


@pytest.fixture(scope="module")
def hooktest_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningCluster, dict[str, str]]]:
    """One daemon with hooktest active and its storage on hooktest's own backend scheme."""
    directory = tmp_path_factory.mktemp("hooktest")
    env = {"TETHER_HOOKTEST_LOG": str(directory / "hooks.jsonl")}
    cluster = start_cluster(
        directory / "cluster",
        "hooks",
        config={"storage": {"url": f"hooktest://{directory / 'db.sqlite'}"}},
        env=env,
    )
    try:
        yield cluster, env
    finally:
        cluster.stop()


def _recorded(env: dict[str, str]) -> list[dict[str, Any]]:
    text = pathlib.Path(env["TETHER_HOOKTEST_LOG"]).read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_plugin_adds_a_command_to_each_program(
    hooktest_cluster: tuple[RunningCluster, dict[str, str]],
) -> None:
    cluster, env = hooktest_cluster
    assert run_cli("tetherd", "hooktest", env=env).stdout == "hooktest command in tetherd\n"
    assert cluster.tetherctl("hooktest", env=env).stdout == "hooktest command in tetherctl\n"
    assert cluster.tether("bob", "hooktest", env=env).stdout == "hooktest command in tether\n"


def test_plugin_declares_a_command_each_program_imports_when_named(
    hooktest_cluster: tuple[RunningCluster, dict[str, str]],
) -> None:
    cluster, env = hooktest_cluster
    said = "declared hooktest command\n"
    assert run_cli("tetherd", "hooktest-lazy", env=env).stdout == said
    assert cluster.tetherctl("hooktest-lazy", env=env).stdout == said
    assert cluster.tether("bob", "hooktest-lazy", env=env).stdout == said
    assert run_cli("tether", "proxy", "hooktest-lazy", env=env).stdout == said
    listed = run_cli("tether", "--help", env=env).stdout
    assert "hooktest-lazy" in listed.split("Commands:", 1)[1].split(), listed


def test_two_plugins_each_add_a_subcommand_to_the_kernels_proxy_group(
    tmp_path: pathlib.Path,
) -> None:
    env = {"TETHER_HOOKTEST_LOG": str(tmp_path / "hooks.jsonl")}
    listed = run_cli("tether", "proxy", "--help", env=env).stdout
    commands = listed.split("Commands:", 1)[1].split()
    assert {"ssh", "hooktest"} <= set(commands), listed
    proxy_hooktest = run_cli("tether", "proxy", "hooktest", env=env).stdout
    assert proxy_hooktest == "hooktest command in tether proxy\n"


def test_two_plugins_each_add_a_subcommand_to_the_kernels_auth_group(
    tmp_path: pathlib.Path,
) -> None:
    env = {"TETHER_HOOKTEST_LOG": str(tmp_path / "hooks.jsonl")}
    listed = run_cli("tetherctl", "auth", "--help", env=env).stdout
    commands = listed.split("Commands:", 1)[1].split()
    assert {"export", "hooktest", "sibling"} <= set(commands), listed
    hooktest = run_cli("tetherctl", "auth", "hooktest", env=env).stdout
    assert hooktest == "hooktest command in tetherctl auth\n"
    sibling = run_cli("tetherctl", "auth", "sibling", env=env).stdout
    assert sibling == "hooktest-sibling command in tetherctl auth\n"


def test_admin_creates_and_reads_back_a_resource_of_a_plugin_kind(
    hooktest_cluster: tuple[RunningCluster, dict[str, str]], tmp_path: pathlib.Path
) -> None:
    cluster, env = hooktest_cluster
    widget = tmp_path / "widget.yaml"
    widget.write_text(
        textwrap.dedent(
            """\
            kind: hooktest_widget
            version: v1
            metadata:
              name: gizmo
            spec:
              size: 3
              colour: red
            """
        )
    )
    created = cluster.tetherctl("create", str(widget), env=env)
    assert "gizmo" in created.stdout
    got = cluster.tetherctl("get", "widgets/gizmo", "--format=json", env=env)
    (doc,) = json.loads(got.stdout)  # a list, as tctl prints one KIND/NAME
    assert doc["kind"] == "hooktest_widget"
    assert doc["metadata"]["name"] == "gizmo"
    assert doc["spec"] == {"size": 3, "colour": "red"}


def test_user_logs_in_through_a_plugin_identity_connector(
    hooktest_cluster: tuple[RunningCluster, dict[str, str]],
) -> None:
    cluster, env = hooktest_cluster
    result = cluster.login("bob", "hooktest-bob", "--auth=hooktest", env=env)
    assert "bob" in result.stdout
    refused = cluster.login("mallory", "wrong", "--auth=hooktest", env=env, check=False)
    assert refused.returncode != 0
    assert "invalid user name or password" in refused.stderr


def test_every_hook_is_called_in_a_running_daemon(
    hooktest_cluster: tuple[RunningCluster, dict[str, str]],
) -> None:
    cluster, env = hooktest_cluster
    # the login of its own makes this test independent of the order tests run in
    cluster.login("bob", "hooktest-bob", "--auth=hooktest", env=env)
    searched = cluster.tetherctl("audit", "search", "--type=user.login", "--format=json", env=env)
    # hooktest's search returns None, so the builtin jsonl-audit sink answered
    answered = json.loads(searched.stdout)
    assert any(e["type"] == "user.login" and e["user"] == "bob" for e in answered)

    records = _recorded(env)
    called = {r["hook"] for r in records}
    assert {
        "tether_configure",
        "tether_resource_kinds",
        "tether_backends",
        "tether_backends.open",
        "tether_identity_connectors",
        "tether_identity_connectors.authenticate",
        "tether_protocols",
        "tether_services",
        "service.started",
        "tether_audit_events",
        "tether_audit_search",
        "tether_client_logged_in",
    } <= called
    assert {"hook": "tether_configure", "cluster": "hooks"} in records
    assert {"hook": "tether_services", "cluster": "hooks"} in records
    db_url = next(r["url"] for r in records if r["hook"] == "tether_backends.open")
    assert db_url.startswith("hooktest:///") and db_url.endswith("/db.sqlite")
    assert {"hook": "tether_identity_connectors.authenticate", "user": "bob"} in records
    assert {"hook": "tether_audit_events", "type": "user.login", "user": "bob"} in records
    assert {"hook": "tether_audit_search", "type": "user.login"} in records
    # tether login, in the user's process, once the login's files are written
    assert {
        "hook": "tether_client_logged_in",
        "proxy": cluster.proxy_addr,
        "cluster": "hooks",
    } in records


def _first_answer(cluster: RunningCluster, context: ssl.SSLContext) -> tuple[str | None, str]:
    """Connect to the proxy's port with ``context``: the protocol it chose, and the first
    thing it said ("" when it closed the connection)."""
    host, port = cluster.proxy_addr.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.selected_alpn_protocol(), tls.recv(1024).decode()


def test_plugin_protocol_answers_a_logged_in_user_on_the_proxy_port(
    hooktest_cluster: tuple[RunningCluster, dict[str, str]],
) -> None:
    cluster, env = hooktest_cluster
    cluster.login("carol", "hooktest-carol", "--auth=hooktest", env=env)
    profile = current_profile(cluster.user_home("carol"))
    assert profile is not None
    greeter = tether_hooktest.GREETER_ALPN
    for context, answer in [
        (profile_ssl_context(profile, alpn=[greeter]), "hello carol from hooks\n"),
        (
            profile_ssl_context(profile, client_cert=False, alpn=[greeter]),
            "refused: a client certificate is required\n",
        ),
    ]:
        assert _first_answer(cluster, context) == (greeter, answer)
    assert {"hook": "tether_protocols.serve", "user": "carol", "alpn": greeter} in _recorded(env)


def test_a_plugin_protocol_that_fails_ends_only_its_own_connection(
    hooktest_cluster: tuple[RunningCluster, dict[str, str]],
) -> None:
    cluster, env = hooktest_cluster
    cluster.login("carol", "hooktest-carol", "--auth=hooktest", env=env)
    profile = current_profile(cluster.user_home("carol"))
    assert profile is not None
    failing = tether_hooktest.FAILING_ALPN
    closed = (failing, "")
    assert _first_answer(cluster, profile_ssl_context(profile, alpn=[failing])) == closed
    assert cluster.process.poll() is None
    assert "the 'hooktest-failing/1' handler failed on a connection from 127.0.0.1" in (
        cluster.log_text()
    )
    assert "hooktest's failing protocol fails on purpose" in cluster.log_text()
    # the port still serves everyone else
    greeter = tether_hooktest.GREETER_ALPN
    greeted = _first_answer(cluster, profile_ssl_context(profile, alpn=[greeter]))
    assert greeted == (greeter, "hello carol from hooks\n")


# --- broken plugins stop start-up with one line ----------------------------------------------


def _install_plugin(
    site: pathlib.Path, name: str, source: str, *, entry: str | None = None
) -> dict[str, str]:
    """Put distribution ``name`` 0.1 with a ``tether`` entry point on a directory of its own
    (module ``name``, or ``entry`` when given, e.g. ``name:Class``).

    Returns the environment that makes the programs find it (``importlib.metadata`` reads the
    ``.dist-info`` on ``sys.path``).
    """
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{name}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{name}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[tether]\n{name} = {entry or name}\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def _start_fails(tmp_path: pathlib.Path, env: dict[str, str]) -> str:
    """Run ``tetherd start`` with an otherwise good configuration; return its only line."""
    config = _write_config(
        tmp_path / "tether.yaml",
        {
            "cluster_name": "broken",
            "data_dir": str(tmp_path / "data"),
            "auth_service": {"listen_addr": "127.0.0.1:0"},
            "proxy_service": {"listen_addr": "127.0.0.1:0"},
        },
    )
    result = run_cli("tetherd", "start", "-c", str(config), env=env, check=False, timeout=30)
    assert result.returncode != 0, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert not (tmp_path / "data" / "process.json").exists()
    return lines[0]


BROKEN_IMPORT = """\
raise ImportError("brokenplug needs libwidget 2, found 1")
"""


def test_plugin_that_fails_to_import_stops_the_daemon_with_one_line(
    tmp_path: pathlib.Path,
) -> None:
    env = _install_plugin(tmp_path / "site", "brokenplug", BROKEN_IMPORT)
    line = _start_fails(tmp_path, env)
    assert "brokenplug" in line
    assert "distribution 'brokenplug'" in line
    assert "failed to import" in line
    assert "needs libwidget 2" in line
    assert "plugins.disabled: [brokenplug]" in line  # what to do about it


def test_plugin_implementing_an_unknown_hook_stops_the_daemon_with_one_line(
    tmp_path: pathlib.Path,
) -> None:
    env = _install_plugin(
        tmp_path / "site",
        "oldplug",
        """\
        import tether


        @tether.hookimpl
        def tether_no_such_hook():
            return None
        """,
    )
    line = _start_fails(tmp_path, env)
    assert "distribution 'oldplug'" in line
    assert "unknown hook" in line
    assert "tether_no_such_hook" in line
    assert "plugins.disabled: [oldplug]" in line


def test_plugin_with_a_hook_argument_the_hook_lacks_stops_the_daemon_with_one_line(
    tmp_path: pathlib.Path,
) -> None:
    env = _install_plugin(
        tmp_path / "site",
        "typoplug",
        """\
        import tether


        @tether.hookimpl
        def tether_configure(cfg):
            return None
        """,
    )
    line = _start_fails(tmp_path, env)
    assert "distribution 'typoplug'" in line
    assert "tether_configure" in line
    assert "cfg" in line
    assert "plugins.disabled: [typoplug]" in line


def test_operator_starts_the_daemon_with_a_broken_plugin_disabled(tmp_path: pathlib.Path) -> None:
    env = _install_plugin(tmp_path / "site", "brokenplug", BROKEN_IMPORT)
    cluster = start_cluster(
        tmp_path / "cluster", "spared", config={"plugins": {"disabled": ["brokenplug"]}}, env=env
    )
    try:
        assert cluster.process.poll() is None
        assert "brokenplug" not in cluster.log_text()
    finally:
        assert cluster.stop() == 0


# --- a plugin that keeps state ----------------------------------------------------------------

STATEFUL = """\
import tether


class Remembers:
    def __init__(self):
        self.clusters = []

    @tether.hookimpl
    def tether_configure(self, config):
        self.clusters.append(config.cluster_name)
"""


def test_plugin_author_keeps_state_in_a_class_and_each_daemon_has_its_own(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _install_plugin(site, "remembers", STATEFUL, entry="remembers:Remembers")
    monkeypatch.syspath_prepend(str(site))
    root, leaf = get_plugin_manager(), get_plugin_manager()
    root.hook.tether_configure(config=default_config(data_dir=tmp_path / "r", cluster_name="r"))
    leaf.hook.tether_configure(config=default_config(data_dir=tmp_path / "l", cluster_name="l"))
    assert root.get_plugin("remembers").clusters == ["r"]
    assert leaf.get_plugin("remembers").clusters == ["l"]
    (row,) = [r for r in describe_plugins(root) if r.name == "remembers"]
    assert (row.distribution, row.hooks) == ("remembers", ("tether_configure",))


# --- a failing audit sink does not silence the others ----------------------------------------


class RecordingSink:
    """An async sink, to prove awaitables returned by sinks are awaited."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    @hookimpl
    async def tether_audit_events(self, events: Sequence[AuditEvent]) -> None:
        self.events.extend(events)


class BrokenSink:
    @hookimpl
    def tether_audit_events(self, events: Sequence[AuditEvent]) -> None:
        raise OSError("disk full")


class BrokenAsyncSink:
    @hookimpl
    async def tether_audit_events(self, events: Sequence[AuditEvent]) -> None:
        raise RuntimeError("SIEM unreachable")


@pytest.mark.parametrize("on_failure", list(AuditFailure))
async def test_failing_audit_sink_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture, on_failure: AuditFailure
) -> None:
    pm = TetherPluginManager()
    # registered around the broken ones, so a sink is called both before and after them
    first, last = RecordingSink(), RecordingSink()
    pm.register(first, name="first-sink")
    pm.register(BrokenSink(), name="broken-sink")
    pm.register(BrokenAsyncSink(), name="broken-async-sink")
    pm.register(last, name="last-sink")
    event = AuditEvent(type="user.login", cluster="main", user="alice")

    logger = logging.getLogger("tether.plugins")
    logger.addHandler(caplog.handler)  # the daemon's logging setup may stop propagation
    try:
        with caplog.at_level(logging.ERROR, logger="tether.plugins"):
            if on_failure is AuditFailure.REFUSE:
                # every sink had its turn; then the caller is told not to go on
                with pytest.raises(AuditUnavailable, match="broken-sink: disk full"):
                    await audit.emit(pm, [event], on_failure=on_failure)
            else:
                await audit.emit(pm, [event], on_failure=on_failure)
    finally:
        logger.removeHandler(caplog.handler)

    assert first.events == [event]
    assert last.events == [event]
    errors = {r.getMessage() for r in caplog.records if r.levelno == logging.ERROR}
    assert errors == {
        "plugin 'broken-sink' failed in tether_audit_events: disk full",
        "plugin 'broken-async-sink' failed in tether_audit_events: SIEM unreachable",
    }
