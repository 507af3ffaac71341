"""A plugin owns a top-level section of ``tether.yaml``, a ``tetherd start --roles`` value and a
``tetherctl tokens add --type`` value: hooktest's ``hooktest_service``, ``hooktest`` role and
``hooktest`` token, with the kernel's errors; each misuse of ``tether_config_sections``,
``tether_service_roles`` and ``tether_token_types`` refused with its plugin named."""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import textwrap
from typing import Any

import attrs
import pytest
import tether_hooktest

from tether.config import (
    Config,
    ConfigSchema,
    ConfigSection,
    ServiceRole,
    apply_start_flags,
    config_to_dict,
    default_config,
    embedded_config,
    load_config_text,
    render_default_config,
)
from tether.errors import ConfigError, PluginError
from tether.hookspecs import hookimpl
from tether.plugins import get_plugin_manager
from tether.testing.cluster import run_cli, start_cluster
from tether.token_types import TokenType, token_types
from tether.yamlio import dump_yaml


@pytest.fixture
def schema(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> ConfigSchema:
    """The kernel's sections and roles plus hooktest's (active), and nothing else."""
    monkeypatch.setenv(tether_hooktest.LOG_ENV, str(tmp_path / "hooks.jsonl"))
    pm = get_plugin_manager(autoload=False)
    pm.register(tether_hooktest, name="hooktest")
    return ConfigSchema.from_plugins(pm)


def load(text: str, schema: ConfigSchema) -> Config:
    return load_config_text(textwrap.dedent(text), "tether.yaml", schema)


def error_of(text: str, schema: ConfigSchema) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text, schema)
    assert "\n" not in str(info.value)
    return info.value


# --- a section -------------------------------------------------------------------------------


def test_plugin_reads_its_section_typed(schema: ConfigSchema) -> None:
    config = load(
        """\
        cluster_name: main
        hooktest_service:
          enabled: true
          greeting: hi
          period: 5m
        """,
        schema,
    )

    section = config.section(tether_hooktest.HooktestSection)
    assert section == tether_hooktest.HooktestSection(
        enabled=True, greeting="hi", period=datetime.timedelta(minutes=5)
    )
    assert load(dump_yaml(config_to_dict(config)), schema) == config


def test_absent_or_default_section_reads_as_its_defaults(schema: ConfigSchema) -> None:
    assert default_config().section(tether_hooktest.HooktestSection).greeting == "hello"
    assert load("hooktest_service:\n  greeting: hello\n", schema) == default_config()
    rendered = render_default_config(schema)
    assert "\nhooktest_service:\n  enabled: false\n" in rendered
    assert load_config_text(rendered, "tether.yaml", schema) == default_config()


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ("hooktest_service:\n  greting: hi\n",
         "tether.yaml:2: hooktest_service.greting: unknown field", "did you mean greeting?"),
        ("hooktest_service:\n  period: 5\n",
         "tether.yaml:2: hooktest_service.period: expected a duration such as 30s, 5m or 12h, "
         "got an integer", None),
        ("log: {}\nhooktest_service:\n  enabled: true\n  greeting: goodbye\n",
         "tether.yaml:4: hooktest_service.greeting: a greeting says hello", None),
        ("hooktest_service:\n  period: 0s\n",
         "tether.yaml:2: hooktest_service.period: must be greater than zero", None),
        ("hooktest_service: [a]\n",
         "tether.yaml:1: hooktest_service: expected a mapping, got a list", None),
        ("cluster_name: main\nhooktest_servce: {}\n",
         "tether.yaml:2: hooktest_servce: unknown field", "did you mean hooktest_service?"),
    ],
)  # fmt: skip
def test_mistakes_in_a_plugins_section_point_at_the_line(
    schema: ConfigSchema, text: str, message: str, hint: str | None
) -> None:
    error = error_of(text, schema)

    assert error.message == message
    assert error.hint == hint


def test_unknown_section_names_the_plugins_sections(schema: ConfigSchema) -> None:
    error = error_of("cluster_name: main\nwidgets: {}\n", schema)

    assert error.message == "tether.yaml:2: widgets: unknown field"
    assert error.hint is not None
    assert error.hint.startswith("known fields: cluster_name, nodename, data_dir, log,")
    assert error.hint.endswith("; from plugins: hooktest_service (hooktest)")


def test_problem_nearest_the_top_is_reported_first(schema: ConfigSchema) -> None:
    error = error_of("hooktest_service:\n  period: 5\nauth_service:\n  enabled: 1\n", schema)

    assert error.message.startswith("tether.yaml:2: hooktest_service.period:")


# --- a role ----------------------------------------------------------------------------------


def test_plugins_role_turns_its_section_on_and_the_others_off(schema: ConfigSchema) -> None:
    config = apply_start_flags(default_config(), roles="hooktest", labels="env=dev", schema=schema)

    assert config.section(tether_hooktest.HooktestSection).enabled
    assert config.section(tether_hooktest.HooktestSection).labels == {"env": "dev"}
    assert not config.auth_service.enabled and not config.proxy_service.enabled


def test_plugin_section_may_differ_when_tetherd_starts_without_a_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tether_hooktest.LOG_ENV, str(tmp_path / "hooks.jsonl"))
    on = tether_hooktest.HooktestSection(enabled=True, greeting="hi")
    template = "hooktest_service:\n  enabled: true\n  greeting: hi\n"
    embedding = ConfigSection("hooktest_service", tether_hooktest.HooktestSection, template, on)
    pm = get_plugin_manager(autoload=False)
    pm.register(_Plugin([embedding], [tether_hooktest.ROLE]), name="embedding")
    schema = ConfigSchema.from_plugins(pm)

    assert embedded_config(schema).section(tether_hooktest.HooktestSection) == on
    assert embedded_config(schema, joining=True) == default_config()
    assert load("cluster_name: main\n", schema) == default_config()
    rendered = render_default_config(schema)
    assert "\n" + template in rendered
    assert load_config_text(rendered, "tether.yaml", schema) == embedded_config(schema)
    # --roles chooses the services over it, as over a file
    flagged = apply_start_flags(embedded_config(schema), roles="auth,proxy", schema=schema)
    assert not flagged.section(tether_hooktest.HooktestSection).enabled


def test_unknown_role_lists_every_registered_role(schema: ConfigSchema) -> None:
    message = "--roles: nodes is not a role; choose from auth, proxy, hooktest"
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_start_flags(default_config(), roles="auth,nodes", schema=schema)


# --- misuse ----------------------------------------------------------------------------------


@attrs.frozen
class Required:
    name: str


@attrs.frozen
class Fine:
    enabled: bool = False


class _Plugin:
    """A plugin declaring the given sections and roles."""

    def __init__(self, sections: list[Any], roles: list[ServiceRole]) -> None:
        self._sections, self._roles = sections, roles

    @hookimpl
    def tether_config_sections(self) -> list[Any]:
        return self._sections

    @hookimpl
    def tether_service_roles(self) -> list[ServiceRole]:
        return self._roles


@pytest.mark.parametrize(
    ("sections", "roles", "message"),
    [
        ([ConfigSection("hooktest_service", Fine)], [],
         "plugin 'bad': config section 'hooktest_service': also declared by plugin 'hooktest'"),
        ([ConfigSection("auth_service", Fine)], [],
         "plugin 'bad': config section 'auth_service': the kernel has a section of that name"),
        ([ConfigSection("Widgets", Fine)], [],
         "plugin 'bad': config section 'Widgets': a section name is lower_case_with_underscores"),
        ([ConfigSection("widgets", dict)], [],
         "plugin 'bad': config section 'widgets': <class 'dict'> is not an attrs class"),
        ([ConfigSection("widgets", Required)], [],
         "plugin 'bad': config section 'widgets': every field needs a default"),
        ([ConfigSection("widgets", Fine, embedded={"enabled": True})], [],
         "plugin 'bad': config section 'widgets': embedded is a dict, not a Fine"),
        ([], [ServiceRole("proxy", "proxy_service", "again")],
         "plugin 'bad': service role 'proxy': also declared by plugin 'core-services'"),
        ([], [ServiceRole("widget", "widgets", "nowhere")],
         "plugin 'bad': service role 'widget': section 'widgets' is not a section with an "
         "'enabled' field"),
        ([], [ServiceRole("logger", "log", "no enabled field")],
         "plugin 'bad': service role 'logger': section 'log' is not a section with an "
         "'enabled' field"),
    ],
)  # fmt: skip
def test_misdeclared_sections_and_roles_are_refused_naming_the_plugin(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    sections: list[Any],
    roles: list[ServiceRole],
    message: str,
) -> None:
    monkeypatch.setenv(tether_hooktest.LOG_ENV, str(tmp_path / "hooks.jsonl"))
    pm = get_plugin_manager(autoload=False)
    pm.register(tether_hooktest, name="hooktest")
    pm.register(_Plugin(sections, roles), name="bad")

    with pytest.raises(PluginError) as info:
        ConfigSchema.from_plugins(pm)

    assert info.value.message.startswith(message)


# --- in a real daemon ------------------------------------------------------------------------


def test_daemon_hands_the_plugin_its_section(tmp_path: pathlib.Path) -> None:
    env = {tether_hooktest.LOG_ENV: str(tmp_path / "hooks.jsonl")}
    cluster = start_cluster(
        tmp_path / "cluster",
        "sections",
        config={"hooktest_service": {"greeting": "hi", "labels": {"env": "dev"}}},
        env=env,
    )
    cluster.stop()

    records = [json.loads(line) for line in (tmp_path / "hooks.jsonl").read_text().splitlines()]
    read = [r for r in records if r["hook"] == "tether_config_sections.read"]
    assert read == [
        {
            "hook": "tether_config_sections.read",
            "enabled": False,
            "greeting": "hi",
            "labels": {"env": "dev"},
        }
    ]


def test_tetherd_start_lists_and_checks_the_registered_roles(tmp_path: pathlib.Path) -> None:
    env = {tether_hooktest.LOG_ENV: str(tmp_path / "hooks.jsonl")}

    help_text = " ".join(run_cli("tetherd", "start", "--help", env=env).stdout.split())
    refused = run_cli("tetherd", "start", "--roles=auth,nodes", env=env, check=False)

    assert "hooktest: hooktest's own service" in help_text
    assert "auth: certificate authorities" in help_text
    assert refused.returncode != 0
    assert "--roles: nodes is not a role; choose from auth, proxy" in refused.stderr
    assert "hooktest" in refused.stderr.splitlines()[-1]


# --- a token type ----------------------------------------------------------------------------


def test_admin_adds_a_plugins_token_type_and_is_told_the_registered_ones(
    tmp_path: pathlib.Path,
) -> None:
    env = {tether_hooktest.LOG_ENV: str(tmp_path / "hooks.jsonl")}
    cluster = start_cluster(tmp_path / "cluster", "tokens", env=env)
    try:
        added = json.loads(
            cluster.tetherctl("tokens", "add", "--type=hooktest", "--format=json", env=env).stdout
        )
        listed = cluster.tetherctl("tokens", "ls", env=env).stdout
        refused = cluster.tetherctl("tokens", "add", "--type=gadget", env=env, check=False)
        help_text = " ".join(cluster.tetherctl("tokens", "add", "--help", env=env).stdout.split())
    finally:
        cluster.stop()

    assert added["type"] == "hooktest"
    assert any(line.split()[:2] == [added["token"], "hooktest"] for line in listed.splitlines())
    assert refused.returncode != 0
    # hooktest's type beside the kernel's, and those of the other plugins installed here
    # (tether-db's db), sorted
    names = sorted({"hooktest", *token_types(get_plugin_manager())})
    assert refused.stderr.strip().splitlines()[-1] == (
        f"ERROR: unknown token type 'gadget' (use one of: {', '.join(names)})"
    )
    assert "hooktest: a hooktest gadget joins" in help_text
    assert "node: a node joins the cluster" in help_text


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (TokenType("node", "Gadget", "again"),
         "plugin 'bad': token type 'node': also declared by plugin 'core-services'"),
        (TokenType("gadget", "Node", "joins as a node"),
         "plugin 'bad': token type 'gadget': role 'Node' is also the role of token type 'node'"),
        (TokenType("Gadget", "Gadget", "capital"),
         "plugin 'bad': token type 'Gadget': a token type is lower_case_with_underscores"),
    ],
)  # fmt: skip
def test_misdeclared_token_types_are_refused_naming_the_plugin(
    declared: TokenType, message: str
) -> None:
    class Bad:
        @hookimpl
        def tether_token_types(self) -> list[TokenType]:
            return [declared]

    pm = get_plugin_manager(autoload=False)
    pm.register(Bad(), name="bad")

    with pytest.raises(PluginError) as info:
        token_types(pm)

    assert info.value.message == message
