"""What roles allow on a Kubernetes cluster: the requests (``kubernetes_resources``) and the
Kubernetes user and groups the service impersonates, decided as Teleport decides them."""

from __future__ import annotations

import pytest
from tether_kube import plugin
from tether_kube.access import AUTHENTICATED_GROUP, check_request, impersonation
from tether_kube.requests import read_request

from tether.api import AccessDenied, RoleSet
from tether.testing.roles import role_set

LABELS = {"env": "dev"}

DEVELOPER = """\
kind: role
version: v7
metadata: {name: developer}
spec:
  allow:
    kubernetes_labels: {env: dev}
    kubernetes_groups: [developers, "{{internal.kubernetes_groups}}"]
    kubernetes_resources:
      - {kind: configmap, namespace: dev, name: '*', verbs: [get, list, watch, create]}
      - {kind: pod, namespace: '^team-.*$'}
  deny:
    kubernetes_resources:
      - {kind: configmap, namespace: dev, name: secret-*}
"""

VIEWER = """\
kind: role
version: v7
metadata: {name: viewer}
spec:
  allow:
    kubernetes_labels: {'*': '*'}
    kubernetes_users: [viewer]
"""

TWO_USERS = """\
kind: role
version: v7
metadata: {name: two}
spec:
  allow:
    kubernetes_labels: {'*': '*'}
    kubernetes_users: [alice, bob]
"""


def roles(*yaml: str) -> RoleSet:
    return role_set("---\n".join(yaml), plugins=[plugin])


def check(roleset: RoleSet, method: str, target: str) -> None:
    check_request(roleset, read_request(method, target), labels=LABELS, traits={})


def test_developer_lists_and_creates_configmaps_in_their_namespace() -> None:
    developer = roles(DEVELOPER)

    check(developer, "GET", "/api/v1/namespaces/dev/configmaps")
    check(developer, "POST", "/api/v1/namespaces/dev/configmaps")
    check(developer, "GET", "/api/v1/namespaces/team-a/pods/web/log")
    check(developer, "GET", "/version")


@pytest.mark.parametrize(
    ("method", "target", "message"),
    [
        ("GET", "/api/v1/namespaces/prod/configmaps",
         "list configmaps in namespace 'prod' is not allowed by the kubernetes_resources of "
         "roles developer"),
        ("DELETE", "/api/v1/namespaces/dev/configmaps/app",
         "delete configmaps 'app' in namespace 'dev' is not allowed"),
        ("GET", "/api/v1/namespaces/dev/configmaps/secret-db",
         "get configmaps 'secret-db' in namespace 'dev' is denied by role developer"),
        ("GET", "/api/v1/namespaces/dev/secrets", "list secrets in namespace 'dev'"),
        ("GET", "/api/v1/configmaps", "list configmaps is not allowed"),
    ],
)  # fmt: skip
def test_what_the_rules_do_not_allow_is_refused_naming_them(
    method: str, target: str, message: str
) -> None:
    with pytest.raises(AccessDenied) as refused:
        check(roles(DEVELOPER), method, target)

    assert message.replace("role developer", "role 'developer'") in refused.value.message


def test_a_role_without_resource_rules_leaves_objects_to_kubernetes() -> None:
    check(roles(VIEWER), "DELETE", "/api/v1/namespaces/prod/secrets/db")


def test_one_allowed_user_and_the_groups_are_impersonated() -> None:
    chosen = impersonation(
        roles(DEVELOPER, VIEWER),
        username="alice",
        labels=LABELS,
        traits={"kubernetes_groups": ["ops"]},
    )

    assert chosen.user == "viewer"
    assert chosen.groups == ("developers", "ops", AUTHENTICATED_GROUP)


def test_without_kubernetes_users_the_tether_user_name_is_used() -> None:
    chosen = impersonation(roles(DEVELOPER), username="alice", labels=LABELS, traits={})

    assert chosen.user == "alice"


def test_several_allowed_users_need_kubectl_as() -> None:
    with pytest.raises(AccessDenied, match="choose one with kubectl --as"):
        impersonation(roles(TWO_USERS), username="carol", labels=LABELS, traits={})

    chosen = impersonation(
        roles(TWO_USERS), username="carol", labels=LABELS, traits={}, requested_user="bob"
    )
    assert chosen.user == "bob"


def test_impersonating_beyond_the_roles_is_refused() -> None:
    with pytest.raises(AccessDenied, match="Kubernetes user 'admin' is not allowed"):
        impersonation(
            roles(TWO_USERS), username="carol", labels=LABELS, traits={}, requested_user="admin"
        )
    with pytest.raises(AccessDenied, match="Kubernetes group 'system:masters' is not allowed"):
        impersonation(
            roles(DEVELOPER),
            username="carol",
            labels=LABELS,
            traits={},
            requested_groups=["system:masters"],
        )


def test_roles_without_kubernetes_users_or_groups_reach_nothing() -> None:
    bare = roles(
        DEVELOPER.replace('kubernetes_groups: [developers, "{{internal.kubernetes_groups}}"]', "")
    )

    with pytest.raises(AccessDenied, match="allow no kubernetes_users or kubernetes_groups"):
        impersonation(bare, username="alice", labels=LABELS, traits={})
