"""``ssh_service:`` as an operator writes it: the SSH plugin's section, in Teleport's place and
shape, read by the kernel's loader with the kernel's errors, and ``--roles=node``."""

from __future__ import annotations

import datetime
import re
import textwrap

import pytest
from tether_ssh import plugin
from tether_ssh.config import CommandLabel, SshServiceConfig

from tether.api import Config, ConfigError, HostPort
from tether.testing.config import ConfigReader, default_config

#: the kernel's sections and roles plus the SSH plugin's, whatever else is installed
TETHERD = ConfigReader.with_plugins(ssh=plugin)

GUIDE_EXAMPLE = """\
cluster_name: root
ssh_service:
  enabled: true
  listen_addr: "[::]:3022"
  labels: {env: dev}
  commands: [{name: arch, command: [uname, -p], period: 1h}]
"""


def load(text: str) -> Config:
    return TETHERD.load(textwrap.dedent(text))


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_operator_loads_the_guides_ssh_service() -> None:
    ssh = load(GUIDE_EXAMPLE).section(SshServiceConfig)

    assert ssh.enabled
    assert ssh.listen_addr == HostPort("::", 3022)
    assert ssh.labels == {"env": "dev"}
    assert ssh.commands == (
        CommandLabel(name="arch", command=("uname", "-p"), period=datetime.timedelta(hours=1)),
    )


def test_no_ssh_service_means_its_defaults() -> None:
    ssh = default_config().section(SshServiceConfig)

    assert not ssh.enabled
    assert ssh.listen_addr == HostPort("0.0.0.0", 3022)
    assert load("ssh_service:\n  # enabled: true\n") == default_config()


def test_start_without_a_file_runs_this_host_as_a_node_on_loopback() -> None:
    ssh = TETHERD.embedded().section(SshServiceConfig)

    assert ssh == SshServiceConfig(enabled=True, listen_addr=HostPort("127.0.0.1", 3022))
    assert TETHERD.embedded().auth_service.listen_addr.host == "127.0.0.1"
    # a file keeps its meaning: no ssh_service, no node
    assert not load("cluster_name: main\n").section(SshServiceConfig).enabled
    # nor does a host that joins another cluster become a node unless --roles says so
    assert TETHERD.embedded(joining=True) == default_config()


def test_tetherd_configure_shows_ssh_service_and_loads_back() -> None:
    rendered = TETHERD.render_default()

    assert "\nssh_service:\n" in rendered
    assert "\n  enabled: true\n  listen_addr: 127.0.0.1:3022\n" in rendered
    assert TETHERD.load(rendered) == TETHERD.embedded()


def test_unknown_key_deep_in_a_list_item() -> None:
    message = error_of("""\
        ssh_service:
          commands:
            - name: arch
              command: [uname, -p]
              peroid: 1h
        """)

    assert message == (
        "tether.yaml:5: ssh_service.commands[0].peroid: unknown field (did you mean period?)"
    )


def test_wrong_type_in_ssh_service_points_at_the_line() -> None:
    message = error_of("ssh_service:\n  labels: {env: [dev]}\n")

    assert message == "tether.yaml:2: ssh_service.labels.env: expected a string, got a list"


def test_label_defined_twice_is_refused() -> None:
    message = error_of("""\
        ssh_service:
          labels: {arch: x86}
          commands:
            - {name: arch, command: [uname, -p]}
        """)

    assert message == "tether.yaml:4: ssh_service.commands[0].name: label 'arch' is defined twice"


def test_command_label_needs_a_program() -> None:
    message = error_of("ssh_service:\n  commands:\n    - {name: arch, command: []}\n")

    assert message == (
        "tether.yaml:3: ssh_service.commands[0].command: must name a program, like [uname, -p]"
    )


def test_command_label_without_a_name_says_the_name_is_missing() -> None:
    message = error_of("ssh_service:\n  commands:\n    - {command: [uname, -p]}\n")

    assert message == "tether.yaml:3: ssh_service.commands[0].name: required field missing"


def test_the_kernel_alone_says_which_plugin_to_install() -> None:
    kernel = ConfigReader.with_plugins()

    with pytest.raises(ConfigError) as info:
        kernel.load("cluster_name: a\nssh_service:\n  enabled: true\n", "t.yaml")

    assert info.value.message == (
        "t.yaml:2: ssh_service: this section belongs to the plugin tether-ssh, "
        "which is not installed"
    )
    assert info.value.hint == "install it (pip install tether-ssh) or remove the section"


def test_node_flags_choose_the_services_and_how_to_join() -> None:
    config = TETHERD.apply_start_flags(
        default_config(),
        roles="node",
        token="abc",
        proxy_server="proxy.example:3080",
        ca_pin="sha256:00",
        labels="env=dev, os=linux",
        nodename="web-1",
    )
    assert not config.auth_service.enabled and not config.proxy_service.enabled
    assert config.section(SshServiceConfig).enabled
    assert config.section(SshServiceConfig).labels == {"env": "dev", "os": "linux"}
    assert config.join.token == "abc" and config.join.ca_pin == "sha256:00"
    assert config.join.proxy_server == HostPort("proxy.example", 3080)
    assert config.join.auth_server is None and config.nodename == "web-1"


def test_unknown_role_lists_the_plugins_roles_too() -> None:
    message = "--roles: db is not a role; choose from auth, proxy, node"
    with pytest.raises(ConfigError, match=re.escape(message)):
        TETHERD.apply_start_flags(default_config(), roles="auth,db")
