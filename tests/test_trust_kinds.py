"""The trusted_cluster and remote_cluster resources as the guide writes and prints them.

A leaf administrator's ``trusted_cluster.yaml`` parses unchanged, its token stays hidden unless
asked for, and mistakes are one line naming the field; the root's ``remote_cluster`` reads the
``tctl get rc`` output and keeps its labels and status through storage.
"""

from __future__ import annotations

import datetime

import pytest

from tether.errors import ResourceError
from tether.resources import (
    KindRegistry,
    Resource,
    dump_resources,
    parse_resources,
    resource_from_bytes,
    resource_from_dict,
    resource_to_bytes,
    resource_to_dict,
)
from tether.testing.roles import core_registry
from tether.trust import (
    REMOTE_CLUSTER,
    TRUSTED_CLUSTER,
    RemoteClusterSpec,
    RemoteClusterStatus,
    RoleMapRule,
    TrustedClusterSpec,
)

#: Step 3 of the guide, verbatim.
TRUSTED_CLUSTER_YAML = """\
kind: trusted_cluster
version: v2
metadata:
  name: rootcluster.example.com
spec:
  enabled: true
  token: abcd123-insecure-do-not-use-this
  tunnel_addr: rootcluster.example.com:443
  web_proxy_addr: rootcluster.example.com:443
  role_map:
    - remote: "access"
      local: ["visitor"]
"""

#: Step 5 of the guide: ``tctl get rc`` after ``update rc/... --set-labels=env=demo``.
REMOTE_CLUSTER_YAML = """\
kind: remote_cluster
metadata:
  id: 1651262381521336026
  labels:
    env: demo
  name: leafcluster.example.com
status:
  connection: online
  last_heartbeat: "2022-04-29T19:55:35.053054594Z"
version: v3
"""

TOKEN = "abcd123-insecure-do-not-use-this"
PIN = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture
def registry() -> KindRegistry:
    return core_registry()


def parse_one(text: str, registry: KindRegistry) -> Resource:
    [resource] = parse_resources(text, "trusted_cluster.yaml", registry)
    return resource


def error_of(text: str, registry: KindRegistry) -> str:
    with pytest.raises(ResourceError) as info:
        parse_resources(text, "trusted_cluster.yaml", registry)
    message = str(info.value)
    assert "\n" not in message
    return message


def edited(old: str, new: str) -> str:
    assert old in TRUSTED_CLUSTER_YAML
    return TRUSTED_CLUSTER_YAML.replace(old, new, 1)


# -- trusted_cluster ----------------------------------------------------------------------------


def test_leaf_admin_creates_the_guides_trusted_cluster(registry: KindRegistry) -> None:
    resource = parse_one(TRUSTED_CLUSTER_YAML, registry)
    assert resource.kind == "trusted_cluster"
    assert resource.version == "v2"
    assert resource.name == "rootcluster.example.com"
    assert resource.spec == TrustedClusterSpec(
        enabled=True,
        token=TOKEN,
        tunnel_addr="rootcluster.example.com:443",
        web_proxy_addr="rootcluster.example.com:443",
        role_map=(RoleMapRule(remote="access", local=("visitor",)),),
    )
    assert resource.spec.ca_pin is None


def test_trusted_cluster_is_found_by_its_aliases(registry: KindRegistry) -> None:
    assert registry.get("trusted_cluster") is TRUSTED_CLUSTER
    assert registry.get("trusted_clusters") is TRUSTED_CLUSTER
    assert registry.get("tc") is TRUSTED_CLUSTER


def test_the_guides_role_mapping_examples_fit_in_a_trusted_cluster(
    registry: KindRegistry,
) -> None:
    text = edited(
        '    - remote: "access"\n      local: ["visitor"]\n',
        '    - remote: "*"\n      local: [access]\n'
        "    - remote: 'cluster-*'\n      local: [clusteradmin]\n"
        '    - remote: "^remote-(.*)$"\n      local: [local-$1]\n'
        '    - remote: "root"\n      local: ["admin"]\n',
    )
    rules = parse_one(text, registry).spec.role_map
    assert [r.remote for r in rules] == ["*", "cluster-*", "^remote-(.*)$", "root"]
    assert rules[2].local == ("local-$1",)


def test_tunnel_addr_defaults_to_the_web_proxy_address(registry: KindRegistry) -> None:
    resource = parse_one(edited("  tunnel_addr: rootcluster.example.com:443\n", ""), registry)
    assert resource.spec.tunnel_addr == ""
    assert resource.spec.tunnel_dial_addr == "rootcluster.example.com:443"
    separate = parse_one(
        edited("tunnel_addr: rootcluster.example.com:443", "tunnel_addr: t:3024"), registry
    )
    assert separate.spec.tunnel_dial_addr == "t:3024"


def test_get_hides_the_token_unless_asked_for_secrets(registry: KindRegistry) -> None:
    resource = parse_one(TRUSTED_CLUSTER_YAML, registry)
    shown = dump_resources([resource])
    assert TOKEN not in shown and "token" not in shown
    assert "web_proxy_addr: rootcluster.example.com:443" in shown
    assert f"token: {TOKEN}" in dump_resources([resource], with_secrets=True)
    assert resource_to_dict(resource, with_secrets=True)["spec"]["token"] == TOKEN
    assert TOKEN.encode() in resource_to_bytes(resource)  # storage keeps it
    assert resource_from_bytes(resource_to_bytes(resource), registry) == resource


def test_leaf_admin_disables_trust_by_editing_what_get_printed(registry: KindRegistry) -> None:
    # the guide's "temporarily disable": get > file, set enabled: false, create --force file
    printed = dump_resources([parse_one(TRUSTED_CLUSTER_YAML, registry)])
    disabled = parse_one(printed.replace("enabled: true", "enabled: false"), registry)
    assert disabled.spec.enabled is False
    assert disabled.spec.token == ""  # not needed once the clusters know each other
    assert disabled.spec.role_map == (RoleMapRule(remote="access", local=("visitor",)),)


def test_a_ca_pin_is_accepted_and_printed(registry: KindRegistry) -> None:
    text = edited("  enabled: true\n", f"  enabled: true\n  ca_pin: {PIN}\n")
    resource = parse_one(text, registry)
    assert resource.spec.ca_pin == PIN
    printed = dump_resources([resource])
    assert PIN in printed
    assert parse_one(printed.replace("enabled", f"token: {TOKEN}\n  enabled"), registry) == resource


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("web_proxy_addr", "rootcluster.example.com", "'rootcluster.example.com' is not host:port"),
        ("web_proxy_addr", "rootcluster.example.com:https", "(the port must be a number)"),
        ("web_proxy_addr", "rootcluster.example.com:70000", "port 70000 is out of range"),
        ("web_proxy_addr", "rootcluster.example.com:0", "port 0 cannot be dialled"),
        ("web_proxy_addr", "0.0.0.0:443", "listen-on-every-interface address, not one to dial"),
        ("web_proxy_addr", "https://rootcluster.example.com:443", "is not host:port"),
        ("tunnel_addr", "::1:3024", "write IPv6 addresses in brackets"),
        ("tunnel_addr", "rootcluster.example.com", "is not host:port"),
    ],
)
def test_a_bad_root_address_is_refused_naming_the_field(
    registry: KindRegistry, field: str, value: str, problem: str
) -> None:
    text = edited(f"{field}: rootcluster.example.com:443", f"{field}: '{value}'")
    message = error_of(text, registry)
    line = 8 if field == "tunnel_addr" else 9
    assert message.startswith(
        f"trusted_cluster.yaml:{line}: document 1 (trusted_cluster 'rootcluster.example.com'): "
        f"spec.{field}: "
    )
    assert problem in message
    assert "e.g. rootcluster.example.com:443" in message


def test_web_proxy_addr_is_required(registry: KindRegistry) -> None:
    message = error_of(edited("  web_proxy_addr: rootcluster.example.com:443\n", ""), registry)
    assert message.endswith("spec.web_proxy_addr: required field missing")


@pytest.mark.parametrize(
    "pin",
    ["abc", "sha256:abc", "md5:" + "0" * 64, f"{PIN}0", "sha256:" + "g" * 64, ""],
)
def test_a_bad_ca_pin_is_refused_naming_the_field(registry: KindRegistry, pin: str) -> None:
    message = error_of(
        edited("  enabled: true\n", f"  enabled: true\n  ca_pin: '{pin}'\n"), registry
    )
    assert f"spec.ca_pin: {pin!r} is not a CA pin: expected sha256: and 64 hex digits" in message


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            '    - remote: "^acc[ess$"\n      local: ["visitor"]\n',
            "trusted_cluster.yaml:11: document 1 (trusted_cluster 'rootcluster.example.com'): "
            "spec.role_map[0].remote: invalid regular expression '^acc[ess$': missing ]: [ess$ "
            "(at character 5)",
        ),
        (
            '    - remote: "access"\n',
            "trusted_cluster.yaml:11: document 1 (trusted_cluster 'rootcluster.example.com'): "
            "spec.role_map[0].local: required field missing",
        ),
        (
            '    - remote: "^access$"\n      local: ["$1"]\n',
            "spec.role_map[0].local[0]: '$1' refers to group 1, but '^access$' has 0 capture "
            "groups",
        ),
        (
            '    - remote: "access"\n      local: ["visitor"]\n'
            '    - remote: "access"\n      local: ["auditor"]\n',
            "trusted_cluster.yaml:13: document 1 (trusted_cluster 'rootcluster.example.com'): "
            "spec.role_map[1].remote: 'access' is already the pattern of rule 0",
        ),
    ],
)
def test_a_bad_role_map_is_refused_naming_the_rule_and_field(
    registry: KindRegistry, rule: str, expected: str
) -> None:
    text = edited('    - remote: "access"\n      local: ["visitor"]\n', rule)
    assert expected in error_of(text, registry)


def test_a_trusted_cluster_without_a_role_map_is_refused(registry: KindRegistry) -> None:
    text = edited('  role_map:\n    - remote: "access"\n      local: ["visitor"]\n', "")
    message = error_of(text, registry)
    assert "spec.role_map: a trusted cluster needs at least one role_map rule" in message


def test_code_cannot_build_a_trusted_cluster_a_document_could_not() -> None:
    spec = TrustedClusterSpec(web_proxy_addr="root:443", role_map=(RoleMapRule("^(x$", ("x",)),))
    with pytest.raises(ResourceError, match=r"^spec\.role_map\[0\]\.remote: invalid regular"):
        TRUSTED_CLUSTER.new("root", spec)


# -- remote_cluster -----------------------------------------------------------------------------


def test_root_admin_reads_the_guides_get_rc_output(registry: KindRegistry) -> None:
    resource = parse_one(REMOTE_CLUSTER_YAML, registry)
    assert resource.kind == "remote_cluster"
    assert resource.version == "v3"
    assert resource.name == "leafcluster.example.com"
    assert resource.metadata.labels == {"env": "demo"}
    assert resource.spec == RemoteClusterSpec()
    assert resource.status == RemoteClusterStatus(
        connection="online",
        last_heartbeat=datetime.datetime(2022, 4, 29, 19, 55, 35, 53054, tzinfo=datetime.UTC),
    )
    assert registry.get("rc") is REMOTE_CLUSTER
    assert registry.get("remote_clusters") is REMOTE_CLUSTER


def test_remote_cluster_prints_like_tctl_get_rc(registry: KindRegistry) -> None:
    printed = dump_resources([parse_one(REMOTE_CLUSTER_YAML, registry)])
    assert printed == (
        "kind: remote_cluster\n"
        "version: v3\n"
        "metadata:\n"
        "  name: leafcluster.example.com\n"
        "  labels:\n"
        "    env: demo\n"
        "status:\n"
        "  connection: online\n"
        "  last_heartbeat: '2022-04-29T19:55:35.053054Z'\n"
    )


def test_remote_cluster_round_trips_with_status_through_storage(registry: KindRegistry) -> None:
    resource = REMOTE_CLUSTER.new(
        "leaf",
        RemoteClusterSpec(),
        labels={"env": "prod"},
        status=RemoteClusterStatus(
            connection="offline",
            last_heartbeat=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        ),
    )
    stored = resource_from_bytes(resource_to_bytes(resource), registry, revision=7)
    assert stored.status == resource.status
    assert stored.metadata.labels == {"env": "prod"}
    assert stored.metadata.revision == 7
    again = resource_from_dict(resource_to_dict(resource), registry)
    assert again == resource


def test_a_new_remote_cluster_is_offline_until_its_first_heartbeat(
    registry: KindRegistry,
) -> None:
    text = REMOTE_CLUSTER_YAML.replace(
        'status:\n  connection: online\n  last_heartbeat: "2022-04-29T19:55:35.053054594Z"\n',
        "status: {}\n",
    )
    assert parse_one(text, registry).status == RemoteClusterStatus(
        connection="offline", last_heartbeat=None
    )


def test_a_remote_cluster_status_outside_online_offline_is_refused(
    registry: KindRegistry,
) -> None:
    message = error_of(REMOTE_CLUSTER_YAML.replace("online", "up"), registry)
    assert message.endswith("status.connection: expected one of 'online', 'offline', got 'up'")


def test_a_field_in_a_remote_clusters_empty_spec_says_the_spec_takes_none(
    registry: KindRegistry,
) -> None:
    text = REMOTE_CLUSTER_YAML.replace("status:", "spec:\n  labels: {env: prod}\nstatus:", 1)
    assert error_of(text, registry).endswith("spec.labels: unknown field; this takes no fields")
