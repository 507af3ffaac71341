"""The ``db`` resource kind: a database a database service serves, and how routing sees it.

A database service publishes one entry per database it serves, on every heartbeat, with an
expiry, so the inventory lists the databases whose service is alive. ``metadata.name`` is the
database's name, which users type (``tether db connect orders``) and which is unique in a
cluster; ``spec.host_id`` is the service's host, through whose tunnel the proxy reaches it.
Who sees an entry is decided with the roles' ``db_labels`` against the entry's labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from tether.api import InvalidField, Resource, ResourceKind, RoleSet, Target, TargetKind
from tether_db.config import PROTOCOLS

__all__ = ["DB", "DB_TARGET", "HOST_ROLE", "PROTOCOL", "DbSpec", "DbStatus", "describe_db"]

#: The protocol's name: the mux target proxies open to the service.
PROTOCOL = "db"
#: The host role a database service joins with (``tetherctl tokens add --type=db``).
HOST_ROLE = "Db"


@attrs.frozen
class DbSpec:
    """``spec`` of a ``db``.

    :param protocol: ``postgres`` or ``mysql``.
    :param uri: ``host:port`` where the service reaches the database (for people: the proxy
        never dials it).
    :param description: what the configuration says of it.
    :param host_id: the host id of the database service that serves it.
    :param hostname: that service's host name, for people.
    :param version: the plugin's version on that host.
    """

    protocol: str = ""
    uri: str = ""
    description: str = ""
    host_id: str = ""
    hostname: str = ""
    version: str = ""


@attrs.frozen
class DbStatus:
    """``status`` of a ``db`` as a user is shown it (never stored).

    :param allowed_users: the database users the user's roles allow on it, as ``tether db
        ls`` shows them (``*`` when a role allows any).
    """

    allowed_users: tuple[str, ...] = ()


def _user_view(resource: Resource, roles: RoleSet, traits: Mapping[str, Sequence[str]]) -> Resource:
    """What a user sees of a database: with the database users their roles allow there."""
    allowed = roles.allowed_values(
        "db_users", labels_field="db_labels", labels=resource.metadata.labels, traits=traits
    )
    return attrs.evolve(resource, status=DbStatus(allowed_users=tuple(allowed)))


def _validate(resource: Resource) -> None:
    spec: DbSpec = resource.spec
    if spec.protocol not in PROTOCOLS:
        raise InvalidField(("spec", "protocol"), f"must be one of {', '.join(PROTOCOLS)}")
    if not spec.host_id:
        raise InvalidField(("spec", "host_id"), "must not be empty")


def _publisher(resource: Resource) -> str:
    spec: DbSpec = resource.spec
    return spec.host_id


DB = ResourceKind(
    name="db",
    aliases=("dbs", "database", "databases"),
    versions=("v3",),
    spec_type=DbSpec,
    status_type=DbStatus,
    storage_prefix="/databases/",
    validate=_validate,
    published_by="node",
    publisher_role="Db",
    publisher=_publisher,
    readable_by=("proxy",),
    access_labels="db_labels",
    user_view=_user_view,
)


def describe_db(resource: Resource) -> Target:
    """An entry as routing sees it: reached through the tunnel of the service that
    published it (no address), named by the database's name, selected by its labels."""
    spec: DbSpec = resource.spec
    return Target(
        kind=DB.name,
        id=spec.host_id,
        name=resource.metadata.name,
        labels=dict(resource.metadata.labels),
    )


#: What ``tether db connect`` reaches: the kernel finds and dials databases through this.
DB_TARGET = TargetKind(DB, describe_db, list_command="tether db ls")
