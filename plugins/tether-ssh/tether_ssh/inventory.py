"""The ``node`` resource kind, and how routing sees a node (the SSH protocol's target kind).

A node publishes its own entry (``tether.api.ResourceKind.published_by``) on every
heartbeat, with an expiry: an entry that is not renewed disappears, so the inventory lists the
nodes that are alive. ``metadata.name`` is the node's host id (what its certificates name);
``spec.hostname`` is what people type. ``metadata.labels`` holds every label, static and from
commands, because roles select nodes by all of them; ``spec.cmd_labels`` says which ones come
from commands, as Teleport's node does.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import attrs

from tether.api import InvalidField, Resource, ResourceKind, Target, TargetKind

__all__ = [
    "NODE",
    "NODE_TARGET",
    "TUNNEL_ADDR",
    "CommandLabelSpec",
    "NodeSpec",
    "describe_addr",
    "describe_node",
]

#: What ``tether ls`` shows as the address of a node in tunnel mode (as Teleport does).
TUNNEL_ADDR = "⟵ Tunnel"


@attrs.frozen
class CommandLabelSpec:
    """A label whose value is a command's output, rerun every ``period``."""

    command: tuple[str, ...] = ()
    period: datetime.timedelta = datetime.timedelta(hours=1)
    result: str = ""


@attrs.frozen
class NodeSpec:
    """``spec`` of a ``node``.

    :param hostname: the name users type (``tether ssh visitor@hostname``).
    :param addr: ``host:port`` where the proxy reaches the node's SSH server directly; empty
        for a node in tunnel mode, which the proxy reaches through the node's own tunnel.
    :param use_tunnel: the node dials out and needs no inbound port.
    :param cmd_labels: the labels computed from commands, with their last result.
    :param version: the Tether version the node runs.
    """

    hostname: str = ""
    addr: str = ""
    use_tunnel: bool = False
    cmd_labels: Mapping[str, CommandLabelSpec] = attrs.field(factory=dict)
    version: str = ""


def _validate_node(resource: Resource) -> None:
    spec: NodeSpec = resource.spec
    if not spec.hostname:
        raise InvalidField(("spec", "hostname"), "must not be empty")
    if spec.use_tunnel == bool(spec.addr):
        raise InvalidField(
            ("spec", "addr"),
            "is required unless use_tunnel is true, and empty when it is",
        )


def _dialed_addr(resource: Resource) -> str:
    spec: NodeSpec = resource.spec
    return spec.addr


NODE = ResourceKind(
    name="node",
    aliases=("nodes",),
    versions=("v2",),
    spec_type=NodeSpec,
    storage_prefix="/nodes/",
    validate=_validate_node,
    published_by="node",
    publisher_role="Node",  # a host joined with a node token, not a db host's
    readable_by=("proxy",),
    access_labels="node_labels",
    dialed_addr=_dialed_addr,
)


def describe_addr(node: Resource) -> str:
    """The address column of ``tether ls``."""
    spec: NodeSpec = node.spec
    return TUNNEL_ADDR if spec.use_tunnel else spec.addr


def describe_node(node: Resource) -> Target:
    """A node as routing sees it: its host id, host name, labels, and its address (or its
    own tunnel, whose agent is the node's host id)."""
    spec: NodeSpec = node.spec
    return Target(
        kind=NODE.name,
        id=node.metadata.name,
        name=spec.hostname,
        addr="" if spec.use_tunnel else spec.addr,
        labels=dict(node.metadata.labels),
    )


#: What ``tether ssh`` reaches: the kernel finds and dials nodes through this.
NODE_TARGET = TargetKind(NODE, describe_node, list_command="tether ls")
