"""The ``echo`` resource kind: what a node serving echo publishes, and how routing sees it.

One entry per node (auth lets a host publish only its own entry, named by its host id),
renewed on every heartbeat, so the inventory lists the echo services that are alive. The
example serves only through the node's tunnel, so an entry has no address: the proxy reaches
it through the tunnel of the agent whose host id is the entry's name.

Who sees an entry is decided by auth with the roles' ``node_labels``
(``access_labels``): the service runs on a node, and the labels that let a user reach the
node let them reach its echo service. A protocol whose targets are not nodes would name its
own label condition (``db_labels``, ``kubernetes_labels``).
"""

from __future__ import annotations

import attrs

from tether.api import InvalidField, Resource, ResourceKind, Target, TargetKind

__all__ = ["ECHO", "ECHO_TARGET", "PROTOCOL", "EchoSpec", "describe_echo"]

#: The protocol's name: the mux target proxies open, at a leaf's proxy and at the node.
PROTOCOL = "echo"


@attrs.frozen
class EchoSpec:
    """``spec`` of an ``echo`` entry.

    :param hostname: the node's name, which users type (``tether echo connect web-1``).
    :param version: the plugin's version on that node.
    """

    hostname: str = ""
    version: str = ""


def _validate(resource: Resource) -> None:
    spec: EchoSpec = resource.spec
    if not spec.hostname:
        raise InvalidField(("spec", "hostname"), "must not be empty")


ECHO = ResourceKind(
    name="echo",
    aliases=("echoes",),
    versions=("v1",),
    spec_type=EchoSpec,
    storage_prefix="/echo/",
    validate=_validate,
    published_by="node",
    publisher_role="Node",  # only a host whose token let it be a node
    readable_by=("proxy",),
    access_labels="node_labels",
)


def describe_echo(resource: Resource) -> Target:
    """An entry as routing sees it: reached through the tunnel of the node that published it
    (no address), named by the node's host name, selected by its labels."""
    spec: EchoSpec = resource.spec
    return Target(
        kind=ECHO.name,
        id=resource.metadata.name,
        name=spec.hostname,
        labels=dict(resource.metadata.labels),
    )


#: What ``tether echo connect`` reaches: the kernel finds and dials targets through this.
ECHO_TARGET = TargetKind(ECHO, describe_echo, list_command="tether echo ls")
