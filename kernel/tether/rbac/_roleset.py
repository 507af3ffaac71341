"""Evaluate a user's roles: logins, node access, cluster visibility, resource rules, TTL.

The same evaluation runs on the root (what may this user see and do) and on a leaf after role
mapping (may this root user log in here as ``visitor``). Deny always wins over allow, and a
denial says which check failed and which role caused it, because "access denied" alone is the
hardest message in the guide's troubleshooting section.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from tether.errors import AccessDenied
from tether.patterns import (
    WILDCARD,
    expand_label_value,
    expand_template,
    is_template,
    match_labels,
    reads_as_pattern,
)
from tether.resources import (
    LABEL_FIELDS,
    ROLE_FIELD_KIND,
    VERBS,
    Resource,
    RoleConditions,
    RoleSpec,
)

__all__ = ["RoleSet"]

Traits = Mapping[str, Sequence[str]]
_LIST_FIELDS = ("logins", "kubernetes_groups", "kubernetes_users", "db_users", "db_names")
#: the list fields a deny of each label condition may name: a deny whose labels match and
#: that names none of them denies the resource outright (``deny: db_labels: {env: prod}``)
_PAIRED = {
    "node_labels": ("logins",),
    "db_labels": ("db_users", "db_names"),
    "kubernetes_labels": ("kubernetes_groups", "kubernetes_users"),
}


def _expand_all(values: Iterable[str], traits: Traits) -> list[str]:
    """Expand the templates of a list field (logins, Kubernetes groups, database users...).

    A name a trait fills in that would read as a wildcard or an expression (``*``,
    ``^.*$``) is dropped: it names no real login, and whoever reads the list (a deny, a
    protocol plugin) could not tell it from the role's own ``*``.
    """
    out: list[str] = []
    for value in values:
        expanded = expand_template(value, traits)
        if is_template(value):
            expanded = [v for v in expanded if not reads_as_pattern(v)]
        out.extend(v for v in expanded if v not in out)
    return out


def _expand_selector(selector: Mapping[str, Sequence[str]], traits: Traits) -> dict[str, list[str]]:
    """Expand templates in selector values, what traits supply quoted; a key whose values
    expand to nothing never matches (an unknown trait must not widen access)."""
    expanded: dict[str, list[str]] = {}
    for key, values in selector.items():
        out = expanded[key] = []
        for value in values:
            out.extend(v for v in expand_label_value(value, traits) if v not in out)
    return expanded


def _format_labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


def _names(names: Iterable[str]) -> str:
    return ", ".join(names) or "(none)"


class RoleSet:
    """The roles of one identity, evaluated together.

    :param roles: role resources (``kind: role``), e.g. the user's roles or the local roles a
        leaf mapped a root user's roles to.
    """

    def __init__(self, roles: Sequence[Resource]) -> None:
        for role in roles:
            if not isinstance(role.spec, RoleSpec):
                raise TypeError(f"{role.kind} {role.name!r} is not a role")
        self._roles: tuple[Resource, ...] = tuple(roles)
        self.names: tuple[str, ...] = tuple(role.name for role in roles)

    def __repr__(self) -> str:
        return f"RoleSet({list(self.names)!r})"

    def _sides(self, side: str) -> list[tuple[str, RoleConditions]]:
        return [(role.name, getattr(role.spec, side)) for role in self._roles]

    def _is_plugin_field(self, field: str, kind: str) -> bool:
        """Whether ``field`` is a plugin's role field of ``kind`` (``tether_role_fields``):
        the roles of a process with that plugin are read with it, so an empty set is the only
        one that cannot tell, and it has nothing to give anyway."""
        if field in attrs.fields_dict(RoleConditions):
            return False
        return not self._roles or any(
            (found := attrs.fields_dict(type(role.spec.allow)).get(field)) is not None
            and found.metadata.get(ROLE_FIELD_KIND) == kind
            for role in self._roles
        )

    def traits_values(self, field: str, traits: Traits) -> list[str]:
        """Allowed values of a list field (``logins``, ``kubernetes_groups``, ``db_users``,
        ..., or one a plugin added with ``tether_role_fields``) with templates expanded, minus
        denied ones; sorted, without duplicates.

        :raises ValueError: ``field`` is not a list field of role conditions.
        """
        if field not in _LIST_FIELDS and not self._is_plugin_field(field, "strings"):
            raise ValueError(
                f"unknown role field {field!r}; expected one of " + ", ".join(_LIST_FIELDS)
            )
        allowed: set[str] = set()
        denied: set[str] = set()
        for _, conditions in self._sides("allow"):
            allowed.update(_expand_all(getattr(conditions, field, ()), traits))
        for _, conditions in self._sides("deny"):
            denied.update(_expand_all(getattr(conditions, field, ()), traits))
        if WILDCARD in denied:
            return []
        return sorted(allowed - denied)

    def logins(self, traits: Traits) -> list[str]:
        """The logins these roles allow anywhere (the principals of a user certificate)."""
        return self.traits_values("logins", traits)

    def check_login(self, login: str, *, node_labels: Mapping[str, str], traits: Traits) -> None:
        """Check that ``login`` may be used on a node with ``node_labels``.

        A deny applies where its ``node_labels`` match (or everywhere when it has none) and
        either lists the login (``*`` for all) or lists no logins at all, so ``deny:
        node_labels: {env: prod}`` alone keeps the role's holders off production nodes. An
        allow needs one role that both allows the login and matches the node's labels.

        :raises AccessDenied: naming the deny role, or why no role allows the login here.
        """
        for name, deny in self._sides("deny"):
            selector = _expand_selector(deny.node_labels, traits)
            if selector and not match_labels(selector, node_labels):
                continue
            logins = _expand_all(deny.logins, traits)
            if login in logins or WILDCARD in logins or (not deny.logins and selector):
                raise AccessDenied(f"login {login!r} on this node is denied by role {name!r}")
        allowing = []
        for name, allow in self._sides("allow"):
            if login not in _expand_all(allow.logins, traits):
                continue
            if match_labels(_expand_selector(allow.node_labels, traits), node_labels):
                return
            allowing.append(name)
        if not allowing:
            raise AccessDenied(
                f"login {login!r} is not allowed by roles {_names(self.names)}",
                hint="add the login to the user's traits or to a role",
            )
        raise AccessDenied(
            f"node labels {_format_labels(node_labels)} do not match the node_labels of roles "
            f"{_names(allowing)}, which allow login {login!r}"
        )

    def allowed_values(
        self, field: str, *, labels_field: str, labels: Mapping[str, str], traits: Traits
    ) -> list[str]:
        """The values of a list field (``db_users``) these roles allow on a resource with
        ``labels`` under ``labels_field`` (``db_labels``): those of the allowing roles whose
        selector matches, templates expanded, minus those a matching deny names (all of them
        when it names ``*``, or when its labels match and it names none of the fields that go
        with ``labels_field``: a ``deny: db_labels: {env: prod}`` alone). Sorted; what
        ``tether db ls`` shows as a database's allowed users.

        :raises ValueError: an unknown list field or label condition.
        """
        if field not in _LIST_FIELDS and not self._is_plugin_field(field, "strings"):
            raise ValueError(f"unknown role field {field!r}; expected one of {_LIST_FIELDS}")
        if labels_field not in LABEL_FIELDS and not self._is_plugin_field(labels_field, "labels"):
            raise ValueError(f"unknown label condition {labels_field!r}")
        allowed: set[str] = set()
        for _, allow in self._sides("allow"):
            if match_labels(_expand_selector(getattr(allow, labels_field, {}), traits), labels):
                allowed.update(_expand_all(getattr(allow, field, ()), traits))
        for _, deny in self._sides("deny"):
            selector = _expand_selector(getattr(deny, labels_field, {}), traits)
            if selector and not match_labels(selector, labels):
                continue
            denied = _expand_all(getattr(deny, field, ()), traits)
            lists_nothing = not any(getattr(deny, f, ()) for f in _PAIRED.get(labels_field, ()))
            if WILDCARD in denied or (selector and lists_nothing):
                return []  # denied outright, as check_login and check_db_access decide
            allowed.difference_update(denied)
        return sorted(allowed)

    def check_db_access(
        self, db_user: str, db_name: str, *, db_labels: Mapping[str, str], traits: Traits
    ) -> None:
        """Check that a database with ``db_labels`` may be used as ``db_user`` on ``db_name``.

        As :meth:`check_login` for nodes: a deny applies where its ``db_labels`` match (or
        everywhere when it has none) and lists the user or the database name (``*`` for all),
        or lists neither, so ``deny: db_labels: {env: prod}`` alone keeps the role's holders
        off production databases. An allow needs one role whose ``db_labels`` match and which
        allows both the user (``db_users``) and the database name (``db_names``).

        :raises AccessDenied: naming the deny role, or why no role allows it.
        """
        for name, deny in self._sides("deny"):
            selector = _expand_selector(deny.db_labels, traits)
            if selector and not match_labels(selector, db_labels):
                continue
            users = _expand_all(deny.db_users, traits)
            names = _expand_all(deny.db_names, traits)
            if db_user in users or WILDCARD in users:
                raise AccessDenied(f"database user {db_user!r} is denied by role {name!r}")
            if db_name in names or WILDCARD in names:
                raise AccessDenied(f"database name {db_name!r} is denied by role {name!r}")
            if not deny.db_users and not deny.db_names and selector:
                raise AccessDenied(f"this database is denied by role {name!r}")
        reaching = []
        for name, allow in self._sides("allow"):
            if match_labels(_expand_selector(allow.db_labels, traits), db_labels):
                reaching.append((name, allow))
        if not reaching:
            raise AccessDenied(
                f"database labels {_format_labels(db_labels)} match the db_labels of none of "
                f"roles {_names(self.names)}"
            )
        user_ok = []
        for name, allow in reaching:
            users = _expand_all(allow.db_users, traits)
            if db_user not in users and WILDCARD not in users:
                continue
            user_ok.append(name)
            names = _expand_all(allow.db_names, traits)
            if db_name in names or WILDCARD in names:
                return
        if not user_ok:
            raise AccessDenied(
                f"database user {db_user!r} is not allowed by roles "
                f"{_names([n for n, _ in reaching])} (their db_users)",
                hint="add the user to the user's db_users trait or to a role",
            )
        raise AccessDenied(
            f"database name {db_name!r} is not allowed by roles {_names(user_ok)}, which allow "
            f"database user {db_user!r} (their db_names)",
            hint="add the database to the user's db_names trait or to a role",
        )

    def conditions_matching(
        self,
        field: str,
        *,
        side: str,
        labels_field: str,
        labels: Mapping[str, str],
        traits: Traits,
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """``(role name, value of field)`` for each role whose ``side`` (``allow`` or
        ``deny``) applies to a resource with ``labels``: an allow whose ``labels_field``
        selector matches them; a deny whose selector matches them or that has none (a deny
        applies everywhere unless it narrows itself). In the roles' order.

        For a plugin's ``records`` field (``kubernetes_resources``), whose meaning only the
        plugin knows: it decides, per role, what the records allow or deny.

        :raises ValueError: ``side``, ``field`` or ``labels_field`` is unknown.
        """
        if side not in ("allow", "deny"):
            raise ValueError(f"side must be allow or deny, not {side!r}")
        known = field in attrs.fields_dict(RoleConditions) or any(
            self._is_plugin_field(field, kind) for kind in ("strings", "labels", "records")
        )
        if not known:
            raise ValueError(f"unknown role field {field!r}")
        if labels_field not in LABEL_FIELDS and not self._is_plugin_field(labels_field, "labels"):
            raise ValueError(f"unknown label condition {labels_field!r}")
        found: list[tuple[str, tuple[Any, ...]]] = []
        for name, conditions in self._sides(side):
            selector = _expand_selector(getattr(conditions, labels_field, {}), traits)
            applies = (
                match_labels(selector, labels)
                if side == "allow"
                else not selector or match_labels(selector, labels)
            )
            if applies:
                found.append((name, tuple(getattr(conditions, field, ()))))
        return found

    def can_access(self, field: str, labels: Mapping[str, str], traits: Traits) -> bool:
        """Whether a resource with ``labels`` is within reach of these roles' ``field``.

        ``field`` is a label condition (``node_labels``, ``db_labels``, ...). Reach is what
        listing shows (``tether ls``): some allow selects the labels and no deny selects them.
        A login-only deny does not hide a resource; it is refused at login with its reason.
        """
        if field not in LABEL_FIELDS and not self._is_plugin_field(field, "labels"):
            raise ValueError(f"unknown label condition {field!r}; expected one of {LABEL_FIELDS}")
        if field == "cluster_labels":  # an unlabelled cluster is visible to everyone
            return self.can_see_cluster(labels, traits)
        for _, deny in self._sides("deny"):
            selector = _expand_selector(getattr(deny, field, {}), traits)
            if selector and match_labels(selector, labels):
                return False
        return any(
            match_labels(_expand_selector(getattr(allow, field, {}), traits), labels)
            for _, allow in self._sides("allow")
        )

    def can_see_cluster(self, cluster_labels: Mapping[str, str], traits: Traits) -> bool:
        """Whether a (leaf) cluster with ``cluster_labels`` is visible to these roles.

        A deny whose ``cluster_labels`` match hides it (``'*': '*'`` hides even unlabelled
        clusters). Otherwise an unlabelled cluster is visible to everyone, and a labelled one
        only when some role's ``allow.cluster_labels`` match.
        """
        for _, deny in self._sides("deny"):
            selector = _expand_selector(deny.cluster_labels, traits)
            if match_labels(selector, cluster_labels):
                return False
        if not cluster_labels:
            return True
        return any(
            match_labels(_expand_selector(allow.cluster_labels, traits), cluster_labels)
            for _, allow in self._sides("allow")
        )

    def check_rule(self, kind: str, verb: str) -> None:
        """Check that these roles may ``verb`` resources of ``kind`` (``tetherctl`` and API).

        :raises AccessDenied: a deny rule matches (naming the role) or no allow rule does.
        :raises ValueError: ``verb`` is not one of list, read, create, update, delete.
        """
        if verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r}; expected one of {', '.join(VERBS)}")

        def matches(conditions: RoleConditions) -> bool:
            return any(
                (kind in rule.resources or WILDCARD in rule.resources)
                and (verb in rule.verbs or WILDCARD in rule.verbs)
                for rule in conditions.rules
            )

        for name, deny in self._sides("deny"):
            if matches(deny):
                raise AccessDenied(f"role {name!r} denies {verb} on {kind}")
        if not any(matches(allow) for _, allow in self._sides("allow")):
            raise AccessDenied(
                f"role rules do not allow {verb} on {kind}",
                hint=f"roles held: {_names(self.names)}",
            )

    def db_load_data_local(self) -> bool:
        """Whether MySQL's ``LOAD DATA LOCAL INFILE`` may run through the database service:
        when any role's ``db_load_data_local`` option allows it (a permission, as
        ``port_forwarding``)."""
        return any(role.spec.options.db_load_data_local for role in self._roles)

    def port_forwarding(self) -> bool:
        """Whether SSH port forwarding is allowed: by any role's option (Teleport's rule)."""
        return any(role.spec.options.port_forwarding for role in self._roles)

    def forward_agent(self) -> bool:
        """Whether SSH agent forwarding is allowed: by any role's option."""
        return any(role.spec.options.forward_agent for role in self._roles)

    def max_session_ttl(self) -> datetime.timedelta:
        """The shortest ``max_session_ttl`` of the roles; zero when there are none."""
        if not self._roles:
            return datetime.timedelta(0)
        specs: list[RoleSpec] = [role.spec for role in self._roles]
        return min(spec.options.max_session_ttl for spec in specs)

    def client_idle_timeout(self) -> datetime.timedelta | None:
        """The shortest ``client_idle_timeout`` of the roles (the strictest wins, as in
        Teleport): a session with nothing from the client for that long is ended. None when
        no role sets one."""
        set_ = [role.spec.options.client_idle_timeout for role in self._roles]
        timeouts = [timeout for timeout in set_ if timeout is not None]
        return min(timeouts) if timeouts else None

    def disconnect_expired_cert(self) -> bool:
        """Whether a session ends when the user's certificate expires: any role asking for
        it is enough (the strictest wins)."""
        return any(role.spec.options.disconnect_expired_cert for role in self._roles)
