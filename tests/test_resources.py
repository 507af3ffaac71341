"""Resources as admins meet them: the guide's YAML, ``get`` output that ``create`` accepts,
and one-line errors that point at the file, line, document and field."""

from __future__ import annotations

import datetime
import json

import attrs
import pytest

import tether.resources as resources
from tether.builtins import core_kinds
from tether.errors import ResourceError
from tether.plugins import DEFAULT_PLUGINS, TetherPluginManager
from tether.resources import (
    CERT_AUTHORITY,
    PROXY,
    ROLE,
    TOKEN,
    USER,
    CAKeys,
    CertAuthoritySpec,
    CreatedBy,
    KindRegistry,
    Metadata,
    Resource,
    ResourceKind,
    RoleConditions,
    RoleOptions,
    RoleSpec,
    Rule,
    TokenSpec,
    UserRef,
    UserSpec,
    UserStatus,
    dump_resources,
    parse_resources,
    preset_roles,
    resource_from_bytes,
    resource_from_dict,
    resource_to_bytes,
    resource_to_dict,
)
from tether.testing.roles import core_registry
from tether.trust import REMOTE_CLUSTER, TRUSTED_CLUSTER

UTC = datetime.UTC

VISITOR_YAML = """\
kind: role
version: v5
metadata:
  name: visitor
spec:
  allow:
    logins:
      - visitor
    node_labels:
      '*': '*'
"""

DEMO_CLUSTER_ACCESS_YAML = """\
kind: role
metadata:
  name: demo-cluster-access
spec:
  allow:
    cluster_labels:
      'env': 'demo'
version: v5
"""


@pytest.fixture
def registry() -> KindRegistry:
    return core_registry()


def parse_one(text: str, registry: KindRegistry, source: str = "x.yaml") -> Resource:
    [resource] = parse_resources(text, source, registry)
    return resource


def error_of(text: str, registry: KindRegistry, source: str = "x.yaml") -> str:
    with pytest.raises(ResourceError) as info:
        parse_resources(text, source, registry)
    message = str(info.value)
    assert "\n" not in message
    return message


def some_user() -> Resource:
    return USER.new(
        "myuser",
        UserSpec(
            roles=("access", "editor"),
            traits={"logins": ("ubuntu", "root")},
            created_by=CreatedBy(
                time=datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC), user=UserRef(name="system")
            ),
        ),
        status=UserStatus(failed_logins=1),
    )


# -- the guide's documents ---------------------------------------------------------------------


def test_guide_visitor_role_yaml_parses_unchanged(registry: KindRegistry) -> None:
    role = parse_one(VISITOR_YAML, registry, "visitor.yaml")
    assert role.kind == "role" and role.version == "v5" and role.name == "visitor"
    assert role.spec.allow.logins == ("visitor",)
    assert role.spec.allow.node_labels == {"*": ("*",)}
    assert role.spec.deny == RoleConditions()
    assert role.spec.options.max_session_ttl == datetime.timedelta(hours=30)


def test_guide_demo_cluster_access_yaml_parses_with_version_last(registry: KindRegistry) -> None:
    role = parse_one(DEMO_CLUSTER_ACCESS_YAML, registry, "demo-cluster-access.yaml")
    assert role.name == "demo-cluster-access"
    assert role.spec.allow.cluster_labels == {"env": ("demo",)}
    assert role.spec.allow.node_labels == {}


def test_get_role_yaml_keeps_the_guide_shape(registry: KindRegistry) -> None:
    text = dump_resources([parse_one(VISITOR_YAML, registry)])
    assert text.startswith("kind: role\nversion: v5\nmetadata:\n  name: visitor\nspec:\n")
    assert "  allow:\n    logins:\n    - visitor\n    node_labels:\n      '*': '*'\n" in text
    assert "deny" not in text  # empty optional fields are left out
    assert "max_session_ttl: 30h" in text


def test_get_user_yaml_round_trips_after_adding_a_login(registry: KindRegistry) -> None:
    user_yaml = dump_resources([some_user()])  # tctl get user/myuser > user.yaml
    assert "  traits:\n    logins:\n    - ubuntu\n    - root\n" in user_yaml
    edited = user_yaml.replace("    logins:\n", "    logins:\n    - visitor\n")
    user = parse_one(edited, registry, "user.yaml")  # tctl create -f user.yaml
    assert user.spec.traits["logins"] == ("visitor", "ubuntu", "root")
    assert user.spec.roles == ("access", "editor")
    assert user.status == UserStatus(failed_logins=1)
    assert user.spec.created_by.user.name == "system"


def test_guide_style_user_edit_with_indented_diff_parses(registry: KindRegistry) -> None:
    text = """\
kind: user
version: v2
metadata:
  name: myuser
spec:
  roles: [access]
  traits:
    logins:
    - visitor
    - ubuntu
    - root
"""
    user = parse_one(text, registry, "user.yaml")
    assert user.spec.traits == {"logins": ("visitor", "ubuntu", "root")}


def test_pasted_teleport_output_with_metadata_id_is_accepted(registry: KindRegistry) -> None:
    text = VISITOR_YAML.replace("  name: visitor\n", "  id: 1651261581522597792\n  name: visitor\n")
    assert parse_one(text, registry).metadata == Metadata(name="visitor")


# -- round trips ---------------------------------------------------------------------------------


def every_kind_example() -> list[Resource]:
    role = ROLE.new(
        "ops",
        RoleSpec(
            allow=RoleConditions(
                logins=("{{internal.logins}}", "ops"),
                node_labels={"env": ("prod", "staging"), "team": ("^ops-.*$",)},
                cluster_labels={"env": ("demo",)},
                kubernetes_groups=("system:masters",),
                db_users=("{{external.db_user}}",),
                rules=(Rule(resources=("role", "user"), verbs=("list", "read")),),
            ),
            deny=RoleConditions(logins=("root",)),
            options=RoleOptions(
                max_session_ttl=datetime.timedelta(hours=8),
                forward_agent=True,
                client_idle_timeout=datetime.timedelta(minutes=15),
            ),
        ),
        labels={"team": "ops"},
        description="Operations",
        version="v7",
    )
    token = TOKEN.new(
        "abcd123-insecure-do-not-use-this",
        TokenSpec(roles=("TrustedCluster",)),
        expires=datetime.datetime(2022, 4, 28, 19, 19, 12, 5, tzinfo=UTC),
    )
    ca = CERT_AUTHORITY.new(
        "rootcluster.example.com",
        CertAuthoritySpec(
            type="host",
            cluster_name="rootcluster.example.com",
            active_keys=CAKeys(
                ssh=("ssh-ed25519 AAAAC3Nza root",),
                tls=("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",),
            ),
        ),
    )
    return [role, some_user(), token, ca, *preset_roles()]


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_every_core_kind_round_trips_through_get_and_create(
    registry: KindRegistry, fmt: str
) -> None:
    originals = every_kind_example()
    text = dump_resources(originals, fmt)
    assert parse_resources(text, f"all.{fmt}", registry) == originals


def test_one_resource_dumps_as_one_yaml_document_and_one_json_object() -> None:
    user = some_user()
    assert "---" not in dump_resources([user])
    assert json.loads(dump_resources([user], "json"))["kind"] == "user"
    several = json.loads(dump_resources([user, user], "json"))
    assert isinstance(several, list) and len(several) == 2
    assert dump_resources([user, user]).count("---\n") == 1


def test_resource_dict_key_order_is_kind_version_metadata_spec_status() -> None:
    assert list(resource_to_dict(some_user())) == ["kind", "version", "metadata", "spec", "status"]


def test_unknown_output_format_is_an_error() -> None:
    with pytest.raises(ResourceError, match="expected yaml or json"):
        dump_resources([some_user()], "toml")


def test_storage_encoding_round_trips_and_backend_supplies_revision(
    registry: KindRegistry,
) -> None:
    for original in every_kind_example():
        stored = resource_to_bytes(
            attrs.evolve(original, metadata=attrs.evolve(original.metadata, revision=4))
        )
        assert b"revision" not in stored
        loaded = resource_from_bytes(stored, registry, revision=7)
        assert loaded.metadata.revision == 7
        assert (
            attrs.evolve(loaded, metadata=attrs.evolve(loaded.metadata, revision=None)) == original
        )


def test_corrupt_storage_value_is_a_resource_error(registry: KindRegistry) -> None:
    with pytest.raises(ResourceError, match="<storage>: stored resource is not valid JSON"):
        resource_from_bytes(b"{nope", registry)


def test_revision_is_shown_by_get_and_accepted_back(registry: KindRegistry) -> None:
    user = attrs.evolve(some_user(), metadata=Metadata(name="myuser", revision=12))
    text = dump_resources([user])
    assert "  revision: 12\n" in text
    assert parse_one(text, registry).metadata.revision == 12


def test_times_from_go_with_nanoseconds_and_zero_time_parse(registry: KindRegistry) -> None:
    text = """\
kind: token
version: v2
metadata:
  name: tok
  expires: "2022-04-29T19:55:35.053054594Z"
spec:
  roles: [Node]
---
kind: user
version: v2
metadata:
  name: bob
spec:
  created_by:
    time: "0001-01-01T00:00:00Z"
"""
    token, user = parse_resources(text, "x.yaml", registry)
    assert token.metadata.expires == datetime.datetime(2022, 4, 29, 19, 55, 35, 53054, tzinfo=UTC)
    assert type(token.metadata.expires) is datetime.datetime
    assert user.spec.created_by.time is None
    assert 'expires: "2022-04-29T19:55:35.053054Z"' in dump_resources([token]).replace("'", '"')


def test_label_values_accept_one_value_or_a_list(registry: KindRegistry) -> None:
    text = VISITOR_YAML.replace("'*': '*'", "env: [prod, staging]\n      team: ops")
    role = parse_one(text, registry)
    assert role.spec.allow.node_labels == {"env": ("prod", "staging"), "team": ("ops",)}
    dumped = resource_to_dict(role)["spec"]["allow"]["node_labels"]
    assert dumped == {"env": ["prod", "staging"], "team": "ops"}


def test_empty_deny_and_empty_documents_are_fine(registry: KindRegistry) -> None:
    text = "---\n" + VISITOR_YAML + "  deny:\n---\n"
    assert parse_one(text, registry).spec.deny == RoleConditions()


def test_json_list_from_get_creates_every_resource(registry: KindRegistry) -> None:
    text = dump_resources(preset_roles(), "json")
    assert [r.name for r in parse_resources(text, "roles.json", registry)] == [
        "access",
        "editor",
        "auditor",
    ]


# -- errors --------------------------------------------------------------------------------------


def test_logins_written_as_a_string_names_file_line_document_and_field(
    registry: KindRegistry,
) -> None:
    text = VISITOR_YAML.replace("    logins:\n      - visitor\n", "    logins: visitor\n")
    assert error_of(text, registry, "visitor.yaml") == (
        "visitor.yaml:7: document 1 (role 'visitor'): spec.allow.logins: "
        "expected a list of strings, got 'visitor'"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("logins:", "login:"),
            "x.yaml:7: document 1 (role 'visitor'): spec.allow.login: "
            "unknown field (did you mean logins?)",
        ),
        (("allow:", "alow:"), "spec.alow: unknown field (did you mean allow?)"),
        (
            ("spec:", "spce:"),
            "x.yaml:5: document 1 (role 'visitor'): spce: unknown field (did you mean spec?)",
        ),
        (
            ("version: v5", "version: v9"),
            "x.yaml:2: document 1 (role 'visitor'): version: "
            "unsupported version 'v9' for kind role; "
            "accepted: v5, v6, v7",
        ),
        (
            ("kind: role", "kind: rol"),
            "x.yaml:1: document 1 (rol 'visitor'): kind: unknown "
            "resource kind 'rol' (did you mean role?); known kinds: "
            "cert_authority, proxy, remote_cluster, role, token, trusted_cluster, user",
        ),
        (("kind: role\n", ""), "document 1 ('visitor'): kind: required field missing"),
        (
            ("  name: visitor\n", "  description: v\n"),
            "x.yaml:3: document 1 (role): metadata.name: required field missing",
        ),
        (
            ("metadata:\n  name: visitor\n", ""),
            "document 1 (role): metadata.name: required field missing",
        ),
        (("name: visitor", "name: a/b"), "metadata.name: invalid name 'a/b'"),
        (
            ("- visitor", "- 22"),
            "x.yaml:8: document 1 (role 'visitor'): spec.allow.logins[0]: "
            "expected a string, got 22 (quote it: '22')",
        ),
        (
            ("- visitor", "- '{{internal.logins'"),
            "spec.allow.logins[0]: invalid template '{{internal.logins': '{{' is not closed "
            "with '}}' at column 1",
        ),
        (
            ("'*': '*'", "env: '^(prod$'"),
            "x.yaml:10: document 1 (role 'visitor'): spec.allow.node_labels.env: invalid "
            "regular expression '^(prod$': missing ): ^(prod$",
        ),
        (
            ("'*': '*'", "env: [a, '^(b$']"),
            "spec.allow.node_labels.env[1]: invalid regular expression",
        ),
        (
            ("'*': '*'", "'*': prod"),
            "spec.allow.node_labels.*: the '*' key only accepts the value '*'",
        ),
        (("'*': '*'", "{1: x}"), "spec.allow.node_labels.1: keys must be strings, got 1"),
    ],
)
def test_mistakes_in_a_role_are_one_line_errors(
    registry: KindRegistry, change: tuple[str, str], expected: str
) -> None:
    assert change[0] in VISITOR_YAML
    message = error_of(VISITOR_YAML.replace(*change), registry)
    assert expected in message


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (
            "  options:\n    max_session_ttl: forever\n",
            "spec.options.max_session_ttl: 'forever' is not a duration",
        ),
        ("  options:\n    max_session_ttl: 0s\n", "spec.options.max_session_ttl: must be positive"),
        (
            "  options:\n    forward_agent: yes\n",
            "spec.options.forward_agent: expected true or false, got 'yes'",
        ),
        (
            "  options:\n    cert_format: standrad\n",
            "spec.options.cert_format: expected one of "
            "'standard', 'oldssh', got 'standrad' "
            "(did you mean standard?)",
        ),
        (
            "  deny:\n    rules:\n    - resources: [role]\n      verbs: [craete]\n",
            "spec.deny.rules[0].verbs[0]: unknown verb 'craete' (did you mean create?)",
        ),
        (
            "  deny:\n    rules:\n    - verbs: [read]\n",
            "spec.deny.rules[0].resources: a rule needs at least one resource kind",
        ),
        ("status:\n  ok: true\n", "status: kind role has no status"),
    ],
)
def test_more_role_mistakes_name_the_field(
    registry: KindRegistry, tail: str, expected: str
) -> None:
    assert expected in error_of(VISITOR_YAML + tail, registry)


def test_of_two_misspelt_keys_the_one_written_first_is_reported(registry: KindRegistry) -> None:
    text = VISITOR_YAML.replace("    logins:", "    nod_labels: {}\n    lgins: [x]\n    logins:")

    assert error_of(text, registry) == (
        "x.yaml:7: document 1 (role 'visitor'): spec.allow.nod_labels: "
        "unknown field (did you mean node_labels?)"
    )


def test_a_document_that_is_not_a_mapping_is_refused(registry: KindRegistry) -> None:
    assert "x.yaml:1: document 1: expected a resource" in error_of("just text\n", registry)


def test_yaml_syntax_errors_name_the_line(registry: KindRegistry) -> None:
    assert error_of("kind: role\nmetadata: {name: x\n", registry).startswith("x.yaml:")


def test_an_error_in_the_third_document_creates_nothing(registry: KindRegistry) -> None:
    bad = VISITOR_YAML.replace("name: visitor", "name: bad").replace("- visitor", "- 1")
    text = "\n---\n".join([VISITOR_YAML, DEMO_CLUSTER_ACCESS_YAML, bad, "kind: nope\n"])
    message = error_of(text, registry)
    assert message.startswith("x.yaml:30: document 3 (role 'bad'): spec.allow.logins[0]")
    assert message.endswith("(1 more problem found after this one)")


def test_api_json_is_validated_like_a_document(registry: KindRegistry) -> None:
    data = {
        "kind": "role",
        "version": "v5",
        "metadata": {"name": "visitor"},
        "spec": {"allow": {"logins": "visitor"}},
    }
    with pytest.raises(ResourceError) as info:
        resource_from_dict(data, registry)
    assert str(info.value) == (
        "<api>: role 'visitor': spec.allow.logins: expected a list of strings, got 'visitor'"
    )
    data["spec"] = {"allow": {"logins": ["visitor"]}}
    assert resource_from_dict(data, registry).spec.allow.logins == ("visitor",)


def test_signup_token_must_name_its_user(registry: KindRegistry) -> None:
    text = "kind: token\nversion: v2\nmetadata: {name: t1}\nspec: {roles: [signup]}\n"
    assert "spec.user: a sign-up token names the user it is for" in error_of(text, registry)
    assert "spec.roles: a token needs at least one role" in error_of(
        "kind: token\nmetadata: {name: t1}\n", registry
    )


CA_YAML = """\
kind: cert_authority
version: v2
metadata:
  name: leaf.example.com
spec:
  type: host
  cluster_name: leaf.example.com
  active_keys:
    ssh:
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI leaf
"""


def test_cert_authority_is_stored_under_its_type_and_cluster(registry: KindRegistry) -> None:
    ca = parse_one(CA_YAML, registry)
    assert CERT_AUTHORITY.ref_of(ca) == "host/leaf.example.com"
    assert CERT_AUTHORITY.key_for(ca) == "/authorities/host/leaf.example.com"
    assert registry.get("cas") is CERT_AUTHORITY
    assert ROLE.key_for(preset_roles()[0]) == "/roles/access"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            # plugins declare CA types of their own (db): any lower-case name is one
            ("type: host", "type: Host"),
            "spec.type: 'Host' is not a CA type (did you mean host?)",
        ),
        (
            ("  cluster_name: leaf.example.com", "  cluster_name: other"),
            "spec.cluster_name: 'other' differs from metadata.name",
        ),
        (
            (
                "- ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI leaf",
                "- '-----BEGIN OPENSSH PRIVATE KEY-----'",
            ),
            "spec.active_keys.ssh[0]: private keys do not belong in resources",
        ),
        (
            ("- ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI leaf", "- hello"),
            "spec.active_keys.ssh[0]: expected an SSH public key line",
        ),
        (("  cluster_name: leaf.example.com\n", ""), "spec.cluster_name: required field missing"),
    ],
)
def test_cert_authority_mistakes(
    registry: KindRegistry, change: tuple[str, str], expected: str
) -> None:
    assert change[0] in CA_YAML
    assert expected in error_of(CA_YAML.replace(*change), registry)


# -- secrets -------------------------------------------------------------------------------------


@attrs.frozen
class KeyPair:
    public_key: str = ""
    private_key: str = ""


@attrs.frozen
class ConnectorSpec:
    client_id: str = ""
    signing_key_pair: KeyPair = KeyPair()
    extra_keys: tuple[KeyPair, ...] = ()


CONNECTOR = ResourceKind(
    name="github",
    versions=("v3",),
    spec_type=ConnectorSpec,
    storage_prefix="/connectors/github/",
    secret_paths=(
        ("spec", "signing_key_pair", "private_key"),
        ("spec", "extra_keys", "*", "private_key"),
    ),
)


def test_secrets_are_hidden_unless_asked_for_and_always_stored() -> None:
    connector = CONNECTOR.new(
        "github",
        ConnectorSpec(
            client_id="abc",
            signing_key_pair=KeyPair("pub", "PRIVATE"),
            extra_keys=(KeyPair("p1", "s1"), KeyPair("p2", "s2")),
        ),
    )
    hidden = dump_resources([connector])
    assert "PRIVATE" not in hidden and "s1" not in hidden and "s2" not in hidden
    assert "public_key: pub" in hidden and "p2" in hidden
    assert "private_key: PRIVATE" in dump_resources([connector], with_secrets=True)
    assert b"PRIVATE" in resource_to_bytes(connector)


# -- kind registry -------------------------------------------------------------------------------


def test_core_kinds_builtin_is_a_default_plugin() -> None:
    assert ("core-kinds", "tether.builtins.core_kinds") in DEFAULT_PLUGINS
    assert core_kinds.tether_resource_kinds() == [
        USER,
        ROLE,
        TOKEN,
        CERT_AUTHORITY,
        PROXY,
        TRUSTED_CLUSTER,
        REMOTE_CLUSTER,
    ]


def test_kinds_are_found_by_name_or_alias(registry: KindRegistry) -> None:
    assert registry.get("roles") is ROLE
    assert registry.get("Role") is ROLE
    assert registry.get("ca") is CERT_AUTHORITY
    assert [k.name for k in registry.kinds()] == [
        "cert_authority",
        "proxy",
        "remote_cluster",
        "role",
        "token",
        "trusted_cluster",
        "user",
    ]
    assert "users" in registry and "nodes" not in registry


def test_unknown_kind_suggests_the_closest(registry: KindRegistry) -> None:
    with pytest.raises(ResourceError) as info:
        registry.get("rol")
    assert str(info.value) == (
        "unknown resource kind 'rol' (did you mean role?); known kinds: "
        "cert_authority, proxy, remote_cluster, role, token, trusted_cluster, user"
    )
    with pytest.raises(ResourceError, match=r"^unknown resource kind 'zzz'; known kinds"):
        registry.get("zzz")


def test_a_kind_alias_declared_by_two_plugins_names_both() -> None:
    from tether.hookspecs import hookimpl

    pm = TetherPluginManager()
    pm.register(core_kinds, name="core-kinds")

    class Plugin:
        @hookimpl
        def tether_resource_kinds(self) -> list[ResourceKind]:
            return [attrs.evolve(ROLE, name="policy", aliases=("roles",))]

    pm.register(Plugin(), name="policies")
    with pytest.raises(ResourceError) as info:
        KindRegistry.from_plugins(pm)
    message = str(info.value)
    assert "'roles'" in message and "'core-kinds'" in message and "'policies'" in message


def test_a_plugin_returning_something_else_is_named() -> None:
    from tether.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def tether_resource_kinds(self) -> list[str]:
            return ["role"]

    pm = TetherPluginManager()
    pm.register(Plugin(), name="broken")
    with pytest.raises(ResourceError, match="plugin 'broken' returned 'role'"):
        KindRegistry.from_plugins(pm)


def test_a_plugin_kind_with_its_own_spec_parses(registry: KindRegistry) -> None:
    registry.register(CONNECTOR, plugin="github")
    text = (
        "kind: github\nversion: v3\nmetadata: {name: gh}\nspec:\n  client_id: x\n"
        "  signing_key_pair: {private_key: s}\n"
    )
    assert parse_one(text, registry).spec.signing_key_pair.private_key == "s"


# -- presets and public surface ------------------------------------------------------------------


def test_preset_roles_are_access_editor_and_auditor() -> None:
    access, editor, auditor = preset_roles()
    assert (access.name, editor.name, auditor.name) == ("access", "editor", "auditor")
    assert access.spec.allow.logins == ("{{internal.logins}}",)
    assert access.spec.allow.node_labels == {"*": ("*",)}
    assert access.spec.allow.kubernetes_groups == ("{{internal.kubernetes_groups}}",)
    assert access.spec.allow.db_names == ("{{internal.db_names}}",)
    assert access.spec.allow.cluster_labels == {}
    assert editor.spec.allow.rules == (Rule(resources=("*",), verbs=("*",)),)
    assert auditor.spec.allow.rules == (
        Rule(resources=("event", "session"), verbs=("list", "read")),
    )


def test_kind_new_runs_the_kinds_validation() -> None:
    with pytest.raises(ResourceError, match="a token needs at least one role"):
        TOKEN.new("t", TokenSpec())


def test_public_api_is_what_all_says() -> None:
    # pytest rewrites the tether distribution (it ships a pytest11 plugin) and adds "@..."
    public = {name for name in dir(resources) if not name.startswith(("_", "@"))}
    assert public == set(resources.__all__)
    for name in resources.__all__:
        assert getattr(resources, name) is not None
