"""Target kinds: what a protocol's targets must tell the kernel so that it can route to them.

A protocol plugin serves one kind of target (SSH: ``node``; later ``db``, ``kube_cluster``).
The kernel finds a target among the resources of that kind the user may see, by what the user
typed, and reaches it; for that a kind meets a small contract, :class:`TargetKind`: its
resource kind (which auth already filters by the user's roles), a function that describes
one resource as a :class:`Target` (the names it answers to, its labels, and how it is
reached: through the serving agent's own tunnel, named by its host id, or at an address), and
the command that lists them, which every "not found" names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence

import attrs

from tether.errors import AmbiguousTarget, NotFound, TetherError
from tether.rbac import match_labels
from tether.resources import Resource, ResourceKind

__all__ = [
    "Target",
    "TargetKind",
    "TargetQuery",
    "matching_targets",
    "resolve_target",
]


@attrs.frozen(kw_only=True)
class Target:
    """One target as routing sees it.

    :param kind: its resource kind (``node``).
    :param id: its resource name; for a target reached through a tunnel, the host id of the
        agent serving it (the tunnel's agent).
    :param name: the name people type and messages show (a node's host name).
    :param addr: ``host:port`` where the proxy dials it; ``""`` when it is reached through
        its tunnel.
    :param labels: every label, which ``env=prod`` style queries select by.
    :param aliases: other names it answers to, besides its id, its name and the host of its
        address.
    """

    kind: str
    id: str
    name: str
    addr: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def use_tunnel(self) -> bool:
        """Reached through its own tunnel (it dials out and needs no inbound port)."""
        return not self.addr

    def answers_to(self, name: str) -> bool:
        """``name`` is its id, its name, the host of its address, or one of its aliases."""
        host = self.addr.rpartition(":")[0].strip("[]")
        return name in (self.id, self.name, *self.aliases) or (bool(host) and name == host)


def _one_command(kind: TargetKind, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip() or "\n" in value or "`" in value:
        raise TetherError(
            f"target kind {kind.resource.name!r}: list_command must be the one-line command "
            f"that lists its targets, got {value!r}",
            hint='give the client command, e.g. list_command="tether ls"',
        )


@attrs.frozen
class TargetKind:
    """The contract a protocol's target kind meets.

    :param resource: the resource kind of its targets; auth shows a user only those its roles
        reach (``ResourceKind.access_labels``), and that is what routing sees.
    :param describe: one resource of that kind as a :class:`Target`.
    :param list_command: the client command that lists these targets (``tether ls``), with a
        ``--cluster`` option; hints name it, with ``--cluster=`` for a leaf's targets.
    """

    resource: ResourceKind
    describe: Callable[[Resource], Target]
    list_command: str = attrs.field(kw_only=True, validator=_one_command)

    @property
    def name(self) -> str:
        return self.resource.name

    def listing(self, leaf: str | None = None) -> str:
        """The command that lists these targets: of the user's own cluster, or of ``leaf``."""
        return f"{self.list_command} --cluster={leaf}" if leaf else self.list_command


@attrs.frozen
class TargetQuery:
    """What a user asked for: a name, id or address, or labels (``env=prod``)."""

    name: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def parse(cls, text: str) -> TargetQuery:
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


def matching_targets(targets: Sequence[Target], query: TargetQuery) -> list[Target]:
    """Every target among ``targets`` that ``query`` names, in their order: by name, id or
    address, or by labels, each value matched as a role's ``node_labels`` value would be
    (``*``, globs, ``^...$``). A client that acts on several targets at once (``tether ssh
    env=prod uptime``) selects them exactly as the proxy resolves one."""
    if query.labels:
        selector = {k: [v] for k, v in query.labels.items()}
        return [t for t in targets if match_labels(selector, t.labels)]
    return [t for t in targets if t.answers_to(query.name)]


def resolve_target(
    targets: Sequence[Target],
    query: TargetQuery,
    *,
    kind: TargetKind,
    cluster: str,
    leaf: bool = False,
) -> Target:
    """The one target ``query`` names among ``targets`` (the ones the user may see).

    :param cluster: the cluster they are in, for messages.
    :param leaf: ``cluster`` is a leaf of the user's proxy: hints name it (``--cluster=``).
    :raises NotFound: none matches; the message suggests the closest names and the hint the
        kind's listing command.
    :raises AmbiguousTarget: several match; the message lists them and says how to pick one.
    """
    found = matching_targets(targets, query)
    if len(found) == 1:
        return found[0]
    if found:
        listed = ", ".join(f"{t.name} (id {t.id})" for t in found[:5])
        raise AmbiguousTarget(
            f"{len(found)} {kind.name}s in cluster {cluster!r} match {str(query)!r}: {listed}",
            hint="name one by its id, or narrow the labels",
        )
    names = sorted({t.name for t in targets})
    close = difflib.get_close_matches(query.name, names, n=3, cutoff=0.5) if query.name else []
    suggestion = f"; did you mean {', '.join(close)}?" if close else ""
    raise NotFound(
        f"{kind.name} {str(query)!r} not found in cluster {cluster!r}{suggestion}",
        hint=f"run `{kind.listing(cluster if leaf else None)}` to see the {kind.name}s you "
        "can reach",
    )
