"""The ``node`` resource kind, and finding a node in the inventory by what a user typed.

A node publishes its own entry (``tether.resources.ResourceKind.published_by``) on every
heartbeat, with an expiry: an entry that is not renewed disappears, so the inventory lists the
nodes that are alive. ``metadata.name`` is the node's host id (what its certificates name);
``spec.hostname`` is what people type. ``metadata.labels`` holds every label, static and from
commands, because roles select nodes by all of them; ``spec.cmd_labels`` says which ones come
from commands, as Teleport's node does.
"""

from __future__ import annotations

import datetime
import difflib
from collections.abc import Mapping, Sequence

import attrs

from tether.errors import NotFound, TetherError
from tether.rbac import match_labels
from tether.resources import InvalidField, Resource, ResourceKind

__all__ = [
    "NODE",
    "TUNNEL_ADDR",
    "AmbiguousNode",
    "CommandLabelSpec",
    "NodeQuery",
    "NodeSpec",
    "describe_addr",
    "resolve_node",
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
    readable_by=("proxy",),
    access_labels="node_labels",
    dialed_addr=_dialed_addr,
)


def describe_addr(node: Resource) -> str:
    """The address column of ``tether ls``."""
    spec: NodeSpec = node.spec
    return TUNNEL_ADDR if spec.use_tunnel else spec.addr


class AmbiguousNode(TetherError):
    """More than one node answers to what the user typed."""


@attrs.frozen
class NodeQuery:
    """What a user asked for: a host name, host id or address, or labels (``env=prod``)."""

    name: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def parse(cls, text: str) -> NodeQuery:
        """``web-1``, ``3f2c...`` (host id), ``10.0.0.5``, or ``env=prod,os=linux``."""
        if "=" in text:
            labels = {}
            for pair in text.split(","):
                key, _, value = pair.partition("=")
                if not key:
                    raise TetherError(f"{text!r}: {pair!r} is not label=value")
                labels[key] = value
            return cls(labels=labels)
        return cls(name=text)

    def __str__(self) -> str:
        return self.name or ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))


def _answers_to(node: Resource, name: str) -> bool:
    spec: NodeSpec = node.spec
    host = spec.addr.rpartition(":")[0].strip("[]") if spec.addr else ""
    return name in (node.metadata.name, spec.hostname, host)


def resolve_node(nodes: Sequence[Resource], query: NodeQuery, *, cluster: str) -> Resource:
    """The one node ``query`` names among ``nodes`` (the ones the user may see).

    :raises NotFound: none matches; the message suggests the closest host names.
    :raises AmbiguousNode: several match; the message lists them and says how to pick one.
    """
    if query.labels:
        selector = {k: [v] for k, v in query.labels.items()}
        found = [n for n in nodes if match_labels(selector, n.metadata.labels)]
    else:
        found = [n for n in nodes if _answers_to(n, query.name)]
    if len(found) == 1:
        return found[0]
    if found:
        listed = ", ".join(f"{n.spec.hostname} (id {n.metadata.name})" for n in found[:5])
        raise AmbiguousNode(
            f"{len(found)} nodes in cluster {cluster!r} match {str(query)!r}: {listed}",
            hint="name one by its id, or narrow the labels",
        )
    names = sorted({n.spec.hostname for n in nodes})
    close = difflib.get_close_matches(query.name, names, n=3, cutoff=0.5) if query.name else []
    suggestion = f"; did you mean {', '.join(close)}?" if close else ""
    raise NotFound(
        f"node {str(query)!r} not found in cluster {cluster!r}{suggestion}",
        hint="run `tether ls` to see the nodes you can reach",
    )
