"""One trust decision for every certificate kind: a leaf maps a root user's roles the same way
whether the user came with an X.509 certificate (a proxy, auth, a protocol plugin's agent) or
an SSH certificate (a node's SSH server), and refuses with the same words."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import pytest

from tether import pki
from tether.errors import AccessDenied
from tether.pki import ClusterAuthorities, Identity, UnknownAuthority
from tether.plugins import get_plugin_manager
from tether.resources import Resource, parse_resources
from tether.testing.roles import VISITOR_ROLE, core_registry
from tether.trust import ClusterTrust

NOW = datetime.datetime.now(datetime.UTC)
HOUR = datetime.timedelta(hours=1)


def trusted_cluster(name: str, *, enabled: bool = True, local: str = "visitor") -> Resource:
    (resource,) = parse_resources(
        f"kind: trusted_cluster\nversion: v2\nmetadata: {{name: {name}}}\nspec:\n"
        f"  enabled: {str(enabled).lower()}\n  web_proxy_addr: {name}.example:3080\n"
        f"  role_map: [{{remote: access, local: [{local}]}}]\n",
        "trusted_cluster.yaml",
        core_registry(),
    )
    return resource


def leaf_trust(*roots: ClusterAuthorities, enabled: bool = True, local: str = "visitor") -> Any:
    (visitor,) = parse_resources(VISITOR_ROLE, "visitor.yaml", core_registry())
    leaf = ClusterAuthorities.generate("leaf")
    return ClusterTrust.build(
        "leaf",
        [leaf.tls.certificate],
        {root.cluster: [root.tls.certificate] for root in roots},
        [trusted_cluster(root.cluster, enabled=enabled, local=local) for root in roots],
        user_cas={root.cluster: [root.ssh_user.public_key_line()] for root in roots},
        roles=[visitor],
    )


def alice(cluster: str = "root", **changes: Any) -> Identity:
    fields: dict[str, Any] = {
        "username": "alice",
        "cluster": cluster,
        "roles": ("access",),
        "traits": {},
        "logins": ("visitor",),
        "expires": NOW + HOUR,
        **changes,
    }
    return Identity(**fields)


class Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event_type: str, fields: Mapping[str, Any]) -> None:
        self.events.append((event_type, dict(fields)))


def both_kinds(root: ClusterAuthorities, who: Identity, trust: ClusterTrust) -> list[Identity]:
    """``who`` as a node's SSH server and as a proxy see it, before the decision."""
    key = pki.generate_private_key().public_key()
    ssh = pki.issue_ssh_user_cert(root.ssh_user, key, who, now=NOW)
    x509_cert = pki.issue_x509_cert(root.tls, key, who, now=NOW)
    from_ssh = pki.verify_ssh_user_cert(ssh, trusted_cas=trust.ssh_user_cas, now=NOW)
    from_x509 = pki.verify_x509_cert(x509_cert, trusted_cas=[root.tls.certificate], now=NOW)
    return [from_ssh, from_x509]


def test_a_root_user_gets_the_same_local_roles_from_either_certificate() -> None:
    root = ClusterAuthorities.generate("root")
    trust, pm = leaf_trust(root), get_plugin_manager(autoload=False)
    for verified in both_kinds(root, alice(), trust):
        audit = Audit()
        names = trust.local_roles(verified, pm=pm, audit=audit, where={"node": "web-1"})
        assert names == ("visitor",)
        assert audit.events == [
            (
                "trust.login.mapped",
                {
                    "user": "alice",
                    "root": "root",
                    "node": "web-1",
                    "remote_roles": ["access"],
                    "local_roles": ["visitor"],
                },
            )
        ]
        assert trust.role_set(names, identity=verified).names == ("visitor",)


def test_the_leaf_refuses_either_certificate_with_the_same_words() -> None:
    root = ClusterAuthorities.generate("root")
    pm = get_plugin_manager(autoload=False)
    trust, message = (
        leaf_trust(root),
        "no role of alice@root (auditor) maps to a role of cluster 'leaf'",
    )
    for verified in both_kinds(root, alice(roles=("auditor",)), trust):
        with pytest.raises(AccessDenied, match=message.replace("(", r"\(").replace(")", r"\)")):
            trust.local_roles(verified, pm=pm)


def test_a_disabled_trust_refuses_either_certificate() -> None:
    root = ClusterAuthorities.generate("root")
    pm = get_plugin_manager(autoload=False)
    enabled, disabled = leaf_trust(root), leaf_trust(root, enabled=False)
    for verified in both_kinds(root, alice(), enabled):
        with pytest.raises(AccessDenied, match="the trust in root cluster 'root' is disabled"):
            disabled.local_roles(verified, pm=pm)
    # and the root's SSH user CA is not active while the trust is disabled: a node refuses the
    # SSH certificate before it decides anything (DESIGN.md, trusted clusters, step 6)
    assert "root" not in disabled.ssh_user_cas
    assert "root" in enabled.ssh_user_cas


def test_a_user_of_this_cluster_keeps_its_roles_and_of_an_unknown_one_is_refused() -> None:
    trust, pm = leaf_trust(ClusterAuthorities.generate("root")), get_plugin_manager(autoload=False)
    assert trust.local_roles(alice("leaf", roles=("admin",)), pm=pm) == ("admin",)
    with pytest.raises(AccessDenied, match="cluster 'stranger' is not trusted here"):
        trust.local_roles(alice("stranger"), pm=pm)


def test_a_mapped_role_that_does_not_exist_here_is_skipped_and_audited() -> None:
    root = ClusterAuthorities.generate("root")
    trust, pm = leaf_trust(root, local="ghost"), get_plugin_manager(autoload=False)
    audit = Audit()
    names = trust.local_roles(alice(), pm=pm)
    assert names == ("ghost",)
    roles = trust.role_set(names, identity=alice(), audit=audit, where={"node": "web-1"})
    assert roles.names == ()
    assert audit.events == [
        ("trust.role.missing", {"user": "alice", "node": "web-1", "roles": ["ghost"]})
    ]


def test_a_certificate_of_one_root_claiming_to_be_of_another_is_refused() -> None:
    first, second = ClusterAuthorities.generate("first"), ClusterAuthorities.generate("second")
    trust, pm = leaf_trust(first, second), get_plugin_manager(autoload=False)
    signer = pki.X509CertAuthority("second", first.tls.private_key, first.tls.certificate)
    key = pki.generate_private_key().public_key()
    forged = pki.issue_x509_cert(signer, key, alice("second"), now=NOW)
    # the decision reads the role_map of the cluster the certificate names: never another's
    with pytest.raises(UnknownAuthority, match="not from this cluster or a cluster it trusts"):
        trust.verify_client(forged, pm=pm, now=NOW)
