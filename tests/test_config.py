"""tether.yaml as an operator meets it: defaults, errors that point at the line, logging."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import pathlib
import re
import socket
import textwrap
from collections.abc import Iterator

import pytest
import tether_hooktest

from tether.config import (
    CaAlgorithm,
    Config,
    ConfigSchema,
    HostPort,
    LogFormat,
    Severity,
    apply_start_flags,
    config_to_dict,
    default_config,
    embedded_config,
    load_config,
    load_config_text,
    render_default_config,
)
from tether.errors import ConfigError
from tether.logs import setup_logging
from tether.plugins import get_plugin_manager
from tether.testing.cluster import run_cli
from tether.yamlio import dump_yaml

FULL_EXAMPLE = """\
cluster_name: root
nodename: node-1
data_dir: /srv/tether
log: {severity: warn, format: json}
storage: {url: "postgresql://tether@db/tether"}
plugins:
  disabled: [jsonl-audit]
  settings: {github: {client_id: abc}}
auth_service:
  enabled: true
  listen_addr: 127.0.0.1:3025
  session_ttl: 8h
  failed_login_limit: 3
  lockout_duration: 15m
  signup_token_ttl: 2h
  ca_algorithm: ecdsa-p256
proxy_service:
  enabled: true
  listen_addr: 0.0.0.0:3080
  public_addr: proxy.example.com:443
  https_cert_file: /etc/tether/web.crt
  https_key_file: /etc/tether/web.key
"""


def load(text: str) -> Config:
    return load_config_text(textwrap.dedent(text), "tether.yaml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- loading a good file ----------------------------------------------------------------------


def test_operator_loads_the_documented_example() -> None:
    config = load(FULL_EXAMPLE)

    assert config.cluster_name == "root"
    assert config.nodename == "node-1"
    assert config.data_dir == pathlib.Path("/srv/tether")
    assert config.log.severity is Severity.WARN
    assert config.log.format is LogFormat.JSON
    assert config.storage_url == "postgresql://tether@db/tether"
    assert config.plugins.disabled == ("jsonl-audit",)
    assert config.plugins.settings_for("github") == {"client_id": "abc"}
    assert config.plugins.settings_for("saml") == {}
    auth = config.auth_service
    assert auth.session_ttl == datetime.timedelta(hours=8)
    assert auth.failed_login_limit == 3
    assert auth.lockout_duration == datetime.timedelta(minutes=15)
    assert auth.signup_token_ttl == datetime.timedelta(hours=2)
    assert auth.ca_algorithm is CaAlgorithm.ECDSA_P256
    assert config.proxy_service.public_addr == HostPort("proxy.example.com", 443)
    assert config.proxy_public_addr == HostPort("proxy.example.com", 443)
    assert config.proxy_service.https_key_file == pathlib.Path("/etc/tether/web.key")


def test_empty_file_means_every_default() -> None:
    assert load("") == default_config()
    assert load("# nothing here yet\n") == default_config()


def test_section_left_empty_means_its_defaults() -> None:
    config = load("""\
        log:
          # severity: DEBUG
        """)
    assert config == default_config()


def test_tetherd_configure_output_loads_back_to_what_start_runs_without_a_file() -> None:
    rendered = render_default_config()

    assert rendered.startswith("#")
    assert load_config_text(rendered, "tether.yaml") == embedded_config()


def test_config_to_dict_loads_back_to_the_same_config() -> None:
    config = load(FULL_EXAMPLE)

    as_yaml = dump_yaml(config_to_dict(config))

    assert load_config_text(as_yaml, "out.yaml") == config
    assert json.loads(json.dumps(config_to_dict(config)))["auth_service"]["session_ttl"] == "8h"


def test_defaults_follow_the_host_and_user() -> None:
    config = default_config()

    assert config.nodename == socket.gethostname()
    if os.geteuid() == 0:
        assert config.data_dir == pathlib.Path("/var/lib/tether")
    else:
        assert config.data_dir == pathlib.Path.home() / ".local/share/tether"
    assert config.log.severity is Severity.INFO
    assert config.auth_service.session_ttl == datetime.timedelta(hours=12)


def test_storage_defaults_to_sqlite_in_the_data_dir(tmp_path: pathlib.Path) -> None:
    config = default_config(data_dir=tmp_path)

    assert config.storage_url == f"sqlite://{tmp_path}/backend.sqlite"


def test_paths_expand_the_home_directory() -> None:
    config = load("""\
        data_dir: ~/tether-data
        proxy_service: {https_cert_file: ~/web.crt, https_key_file: ~/web.key}
        """)

    assert config.data_dir == pathlib.Path.home() / "tether-data"
    assert config.proxy_service.https_cert_file == pathlib.Path.home() / "web.crt"


def test_proxy_public_addr_replaces_any_interface_with_the_node_name() -> None:
    assert load("nodename: gw\n").proxy_public_addr == HostPort("gw", 3080)
    local = load("proxy_service: {listen_addr: 127.0.0.1:4080}\n")
    assert local.proxy_public_addr == HostPort("127.0.0.1", 4080)


def test_proxy_running_apart_from_auth_names_its_auth_server() -> None:
    config = load("""\
        auth_service: {enabled: false}
        join: {auth_server: auth.internal:3025}
        """)

    assert config.join.auth_server == HostPort("auth.internal", 3025)


def test_default_config_takes_overrides_and_refuses_impossible_ones() -> None:
    assert default_config(cluster_name="leaf").cluster_name == "leaf"
    with pytest.raises(ConfigError, match=r"cluster_name: 'a b' is not a valid name"):
        default_config(cluster_name="a b")


# --- errors: file, line, field ----------------------------------------------------------------


def test_operator_sees_line_and_field_of_bad_listen_addr() -> None:
    message = error_of("""\
        cluster_name: main
        auth_service:
          enabled: true

        proxy_service:
          enabled: true
          listen_addr: abc
        """)

    assert message == "tether.yaml:7: proxy_service.listen_addr: 'abc' is not host:port"


def test_misspelt_key_suggests_the_real_one() -> None:
    message = error_of("""\
        cluster_name: main
        auth_service:
          listen_adr: 127.0.0.1:3025
        """)

    assert message == (
        "tether.yaml:3: auth_service.listen_adr: unknown field (did you mean listen_addr?)"
    )


def test_unknown_key_without_a_close_match_lists_the_known_fields() -> None:
    message = error_of("log:\n  colour: true\n")

    assert message == "tether.yaml:2: log.colour: unknown field (known fields: severity, format)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cluster_name: main\nnodename: [a, b]\n",
         "tether.yaml:2: nodename: expected a string, got a list"),
        ("auth_service:\n  failed_login_limit: five\n",
         "tether.yaml:2: auth_service.failed_login_limit: expected an integer, got a string"),
        ("auth_service:\n  failed_login_limit: true\n",
         "tether.yaml:2: auth_service.failed_login_limit: expected an integer, got a boolean"),
        ("proxy_service:\n  enabled: 'yes'\n",
         "tether.yaml:2: proxy_service.enabled: expected true or false, got a string"),
        ("plugins:\n  disabled: jsonl-audit\n",
         "tether.yaml:2: plugins.disabled: expected a list, got a string"),
        ("log: [INFO]\n", "tether.yaml:1: log: expected a mapping, got a list"),
        ("proxy_service:\n  listen_addr: 3080\n",
         "tether.yaml:2: proxy_service.listen_addr: expected host:port, got an integer"),
        ("nodename:\n", "tether.yaml:1: nodename: expected a string, got null"),
    ],
)  # fmt: skip
def test_wrong_type_names_what_was_expected_and_what_was_found(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_bad_duration_shows_examples() -> None:
    message = error_of("auth_service:\n  session_ttl: 12 hours\n")

    assert message == (
        "tether.yaml:2: auth_service.session_ttl: '12 hours' is not a duration "
        "(examples: 30s, 5m, 12h, 1h30m)"
    )


def test_duration_written_as_a_number_is_refused() -> None:
    message = error_of("auth_service:\n  lockout_duration: 30\n")

    assert message == (
        "tether.yaml:2: auth_service.lockout_duration: "
        "expected a duration such as 30s, 5m or 12h, got an integer"
    )


def test_zero_duration_is_refused() -> None:
    assert error_of("auth_service: {signup_token_ttl: 0s}\n") == (
        "tether.yaml:1: auth_service.signup_token_ttl: must be greater than zero"
    )


def test_a_rate_limit_that_lets_nothing_through_is_refused() -> None:
    assert error_of("proxy_service:\n  rate_limit:\n    average: 0\n") == (
        "tether.yaml:3: proxy_service.rate_limit.average: must be greater than zero"
    )


def test_bad_severity_lists_the_allowed_values() -> None:
    assert error_of("log:\n  severity: LOUD\n") == (
        "tether.yaml:2: log.severity: 'LOUD' is not one of DEBUG, INFO, WARN, WARNING, ERROR"
    )


def test_bad_log_format_lists_the_allowed_values() -> None:
    assert error_of("log:\n  format: xml\n") == (
        "tether.yaml:2: log.format: 'xml' is not one of text, json"
    )


def test_severity_and_format_ignore_case() -> None:
    config = load("log: {severity: debug, format: JSON}\n")

    assert config.log == type(config.log)(Severity.DEBUG, LogFormat.JSON)


def test_bad_ca_algorithm_lists_the_allowed_values() -> None:
    assert error_of("auth_service: {ca_algorithm: rsa}\n") == (
        "tether.yaml:1: auth_service.ca_algorithm: 'rsa' is not one of ed25519, ecdsa-p256"
    )


def test_garbage_yaml_names_the_line() -> None:
    message = error_of("cluster_name: main\nauth_service:\n  listen_addr: [127.0.0.1\n")

    assert re.fullmatch(r"tether\.yaml:\d+: .+ \(fix the YAML syntax\)", message)


def test_duplicate_key_is_a_syntax_error() -> None:
    message = error_of("nodename: a\nnodename: b\n")

    assert message.startswith("tether.yaml:2: ")
    assert "duplicate key" in message


def test_file_holding_a_list_is_refused() -> None:
    message = error_of("- cluster_name: main\n")

    assert message == (
        "tether.yaml:1: expected a mapping of settings, got a list "
        "(run `tetherd configure` to see an example)"
    )


def test_first_problem_in_the_file_is_reported() -> None:
    message = error_of("""\
        nodename: [x]
        proxy_service:
          listen_addr: abc
        auth_service:
          listn_addr: x
        """)

    assert message.startswith("tether.yaml:1: nodename: ")


def test_certificate_without_its_key_is_refused() -> None:
    message = error_of("""\
        proxy_service:
          https_cert_file: /etc/tether/web.crt
        """)

    assert message == "tether.yaml:2: proxy_service.https_cert_file: needs https_key_file as well"


def test_storage_url_must_be_a_url() -> None:
    assert error_of("storage: {url: /var/db}\n").startswith(
        "tether.yaml:1: storage.url: '/var/db' is not a URL"
    )


def test_bad_cluster_name_is_refused() -> None:
    assert error_of("cluster_name: root/leaf\n").startswith(
        "tether.yaml:1: cluster_name: 'root/leaf' is not a valid name"
    )


# --- the file itself --------------------------------------------------------------------------


def test_missing_file_tells_how_to_create_one(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tether.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert str(info.value) == (
        f"{path}: no such file (run `tetherd configure > {path}` to create one)"
    )


def test_file_is_read_and_errors_carry_its_name(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tether.yaml"
    path.write_text("cluster_name: leaf\nnodename: 7\n")

    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:2: nodename: "):
        load_config(path)
    path.write_text("cluster_name: leaf\n")
    assert load_config(path).cluster_name == "leaf"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_says_permission_denied(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tether.yaml"
    path.write_text("cluster_name: main\n")
    path.chmod(0)

    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: permission denied"):
        load_config(path)


def test_directory_instead_of_file_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r": is a directory"):
        load_config(tmp_path)


def test_binary_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tether.yaml"
    path.write_bytes(b"cluster_name: \xff\xfe\n")

    with pytest.raises(ConfigError, match=r": not UTF-8 text"):
        load_config(path)


# --- HostPort ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:3025", "127.0.0.1", 3025),
        ("proxy.example.com:443", "proxy.example.com", 443),
        ("[::1]:3080", "::1", 3080),
        ("[fe80::1%eth0]:22", "fe80::1%eth0", 22),
        ("localhost:0", "localhost", 0),
        ("h:65535", "h", 65535),
    ],
)
def test_host_port_parses_and_prints_back(text: str, host: str, port: int) -> None:
    address = HostPort.parse(text)

    assert address == HostPort(host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("abc", "is not host:port"),
        (":3080", "is not host:port"),
        ("host:", "the port must be a number"),
        ("host:http", "the port must be a number"),
        ("host:65536", "out of range 0-65535"),
        ("host:-1", "the port must be a number"),
        ("::1:3080", "write IPv6 addresses in brackets"),
        ("[::1]3080", "is not host:port"),
        ("[::1:3080", "is not host:port"),
        ("[not-ipv6]:80", "is not an IPv6 address"),
        ("my host:80", "is not host:port"),
    ],
)
def test_host_port_refuses_what_is_not_an_address(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        HostPort.parse(text)


def test_ipv6_listen_addr_in_the_file() -> None:
    config = load("auth_service:\n  listen_addr: '[::1]:3025'\n")

    assert config.auth_service.listen_addr == HostPort("::1", 3025)
    assert config_to_dict(config)["auth_service"]["listen_addr"] == "[::1]:3025"


# --- logging ----------------------------------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored after the test so logging setup does not leak."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_text_log_line_has_utc_time_level_and_logger(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging("INFO", "text", stream=out)

    logging.getLogger("tether.auth").info("user %s logged in", "alice")
    logging.getLogger("tether.auth").debug("not shown")

    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO \[tether\.auth\] user alice logged in\n",
        out.getvalue(),
    )


def test_json_log_lines_parse_as_json(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging("warn", "json", stream=out)
    log = logging.getLogger("tether.proxy")

    log.warning("tunnel to %s lost", "leaf", extra={"cluster": "leaf"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("handler failed")
    log.info("not shown")

    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "WARNING"
    assert first["logger"] == "tether.proxy"
    assert first["message"] == "tunnel to leaf lost"
    assert first["cluster"] == "leaf"
    assert first["ts"].endswith("Z")
    assert datetime.datetime.fromisoformat(first["ts"]).tzinfo is not None
    assert "exception" not in first
    assert second["level"] == "ERROR"
    assert "RuntimeError: boom" in second["exception"]


def test_setting_up_logging_twice_does_not_duplicate_lines(root_logger: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", stream=first)
    setup_logging("INFO", stream=second)

    logging.getLogger("tether").info("once")

    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_debug_flag_overrides_the_configured_severity(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging("ERROR", debug=True, stream=out)

    logging.getLogger("tether.tunnel").debug("frame sent")

    assert "DEBUG [tether.tunnel] frame sent" in out.getvalue()


def test_logging_setup_refuses_unknown_severity_and_format(root_logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match="'LOUD' is not one of DEBUG, INFO, WARN"):
        setup_logging("LOUD")
    with pytest.raises(ValueError, match="'xml' is not one of text, json"):
        setup_logging("INFO", "xml")


def test_config_log_section_drives_logging_setup(root_logger: logging.Logger) -> None:
    config = load("log: {severity: ERROR, format: json}\n")
    out = io.StringIO()

    setup_logging(config.log.severity, config.log.format, stream=out)
    logging.getLogger("tether").warning("dropped")
    logging.getLogger("tether").error("kept")

    assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == ["kept"]


# --- tetherd start flags -----------------------------------------------------------------------


#: the kernel's roles and no plugin's: these tests hold whatever is installed
KERNEL = ConfigSchema.from_plugins(get_plugin_manager(autoload=False))


def test_join_flags_choose_the_services_and_how_to_join() -> None:
    config = apply_start_flags(
        default_config(),
        roles="proxy",
        token="abc",
        proxy_server="proxy.example:3080",
        ca_pin="sha256:00",
        nodename="web-1",
        schema=KERNEL,
    )
    assert not config.auth_service.enabled and config.proxy_service.enabled
    assert config.join.token == "abc" and config.join.ca_pin == "sha256:00"
    assert config.join.proxy_server == HostPort("proxy.example", 3080)
    assert config.join.auth_server is None and config.nodename == "web-1"


def test_a_server_flag_replaces_the_files_choice_of_server() -> None:
    from_file = load_config_text("join:\n  auth_server: auth.example:3025\n", "tether.yaml")
    config = apply_start_flags(from_file, proxy_server="proxy.example:3080", schema=KERNEL)
    assert config.join.server == HostPort("proxy.example", 3080)
    assert config.join.auth_server is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"roles": "auth,db"}, "--roles: db is not a role; choose from auth, proxy"),
        ({"proxy_server": "nowhere"}, "--proxy: 'nowhere' is not host:port"),
        ({"labels": "env"}, "--labels: 'env' is not key=value"),
    ],
)
def test_bad_start_flags_are_refused_naming_the_flag(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_start_flags(default_config(), **flags, schema=KERNEL)  # type: ignore[arg-type]


def test_a_proxy_of_several_auth_servers_is_given_them_all() -> None:
    text = "join:\n  auth_servers: [a1.example:3025, a2.example:3025]\n"
    config = load_config_text(text, "tether.yaml")
    expected = (HostPort("a1.example", 3025), HostPort("a2.example", 3025))
    assert config.join.auth_addresses == expected
    assert config.join.server == HostPort("a1.example", 3025)
    flagged = apply_start_flags(
        default_config(),
        roles="proxy",
        auth_server=("a1.example:3025", "a2.example:3025"),
        schema=KERNEL,
    )
    assert flagged.join.auth_servers == expected and flagged.join.auth_server is None
    one = apply_start_flags(from_file := config, auth_server=("a3.example:3025",), schema=KERNEL)
    assert one.join.auth_addresses == (HostPort("a3.example", 3025),)
    assert from_file.join.auth_servers == expected  # the file's list is replaced, not edited


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "join:\n  auth_server: a.example:3025\n  auth_servers: [b.example:3025]\n",
            "give auth_server (one auth server) or auth_servers (a list), not both",
        ),
        (
            "join:\n  proxy_server: p.example:3080\n  auth_servers: [b.example:3025]\n",
            "give proxy_server (tunnel mode, no inbound port) or auth_servers",
        ),
    ],
)
def test_join_section_refuses_auth_servers_with_another_server(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config_text(text, "tether.yaml")


def test_join_section_refuses_both_servers() -> None:
    text = "join:\n  proxy_server: p.example:3080\n  auth_server: a.example:3025\n"
    with pytest.raises(ConfigError, match="not both"):
        load_config_text(text, "tether.yaml")


def test_libraries_log_warnings_only_while_tethers_own_info_lines_show(
    root_logger: logging.Logger,
) -> None:
    out = io.StringIO()
    setup_logging("INFO", stream=out, own=["tether_ssh"])

    logging.getLogger("httpx").info("HTTP Request: PUT https://auth/v1/presence")
    logging.getLogger("asyncssh").info("[conn=0] Accepted SSH client connection")
    logging.getLogger("hypercorn.error").warning("worker is slow")
    logging.getLogger("tether.tunnel.server").info("tunnel 1 from cluster leaf connected")
    logging.getLogger("tether_ssh.server").info("ssh: alice logged in")

    assert [line.split(" ", 2)[2] for line in out.getvalue().splitlines()] == [
        "[hypercorn.error] worker is slow",
        "[tether.tunnel.server] tunnel 1 from cluster leaf connected",
        "[tether_ssh.server] ssh: alice logged in",
    ]


def test_debug_flag_lets_libraries_debug_lines_through(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging("INFO", debug=True, stream=out)

    logging.getLogger("asyncssh").debug("[conn=0] Sending channel data")

    assert "DEBUG [asyncssh] [conn=0] Sending channel data" in out.getvalue()


def test_configured_debug_severity_is_tethers_own_lines(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging("DEBUG", stream=out)

    logging.getLogger("tether.tunnel").debug("frame sent")
    logging.getLogger("httpx").debug("connect_tcp.started")
    logging.getLogger("httpx").info("HTTP Request: GET https://auth/v1/trust")

    assert out.getvalue().count("\n") == 1
    assert "[tether.tunnel] frame sent" in out.getvalue()


def test_error_severity_quiets_libraries_warnings_too(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging("ERROR", stream=out)

    logging.getLogger("hypercorn.error").warning("worker is slow")
    logging.getLogger("hypercorn.error").error("worker died")

    assert "worker is slow" not in out.getvalue()
    assert "worker died" in out.getvalue()


def _configure_storage_comment(env: dict[str, str]) -> str:
    out = run_cli("tetherd", "configure", env=env).stdout
    return out.split("\nstorage:\n", 1)[1].split("\n  url:", 1)[0]


def test_tetherd_configure_offers_only_the_storage_backends_installed(
    tmp_path: pathlib.Path,
) -> None:
    plain = _configure_storage_comment({tether_hooktest.LOG_ENV: ""})
    with_plugin = _configure_storage_comment(
        {tether_hooktest.LOG_ENV: str(tmp_path / "hooks.jsonl")}
    )

    # tox installs every in-tree plugin: tether-etcd adds etcd and etcd+https, tether-postgres
    # both spellings libpq accepts
    assert "those installed here: etcd, etcd+https, postgres, postgresql, sqlite." in plain
    assert "dynamodb" not in plain
    assert (
        "those installed here: etcd, etcd+https, hooktest, postgres, postgresql, sqlite."
        in with_plugin
    )


# --- the cluster's keep-alive ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auth_service: {keep_alive_interval: 0s}\n",
         "tether.yaml:1: auth_service.keep_alive_interval: must be greater than zero"),
        ("auth_service: {keep_alive_interval: -30s}\n",
         "tether.yaml:1: auth_service.keep_alive_interval: '-30s' is not a duration "
         "(examples: 30s, 5m, 12h, 1h30m)"),
        ("auth_service: {keep_alive_interval: often}\n",
         "tether.yaml:1: auth_service.keep_alive_interval: 'often' is not a duration "
         "(examples: 30s, 5m, 12h, 1h30m)"),
        ("auth_service: {keep_alive_interval: 60}\n",
         "tether.yaml:1: auth_service.keep_alive_interval: "
         "expected a duration such as 30s, 5m or 12h, got an integer"),
        ("auth_service: {keep_alive_count_max: 0}\n",
         "tether.yaml:1: auth_service.keep_alive_count_max: must be greater than zero"),
        ("auth_service: {keep_alive_count_max: -1}\n",
         "tether.yaml:1: auth_service.keep_alive_count_max: must be greater than zero"),
        ("auth_service: {keep_alive_count_max: three}\n",
         "tether.yaml:1: auth_service.keep_alive_count_max: expected an integer, got a string"),
        ("auth_service: {keep_alive_interval: 20m, keep_alive_count_max: 3}\n",
         "tether.yaml:1: auth_service.keep_alive_interval: 20m x (keep_alive_count_max 3 + 1) "
         "is 1h20m: a tunnel-mode node's entries would live longer than the hour auth allows; "
         "shorten either"),
    ],
)  # fmt: skip
def test_an_unusable_keep_alive_is_refused_naming_the_field(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_the_keep_alive_defaults_to_a_minute_and_three_missed() -> None:
    config = load("auth_service: {keep_alive_interval: 5m}\n")

    assert config.auth_service.keep_alive_interval == datetime.timedelta(minutes=5)
    assert config.auth_service.keep_alive_count_max == 3
    assert default_config().auth_service.keep_alive_interval == datetime.timedelta(minutes=1)


def test_tetherd_start_refuses_an_unusable_keep_alive(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tether.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nauth_service:\n  keep_alive_count_max: 0\n")
    started = run_cli("tetherd", "start", "-c", str(path), check=False)
    assert started.returncode != 0
    assert "auth_service.keep_alive_count_max: must be greater than zero" in started.stderr
