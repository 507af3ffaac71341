"""The stored resources a target query names, found without describing or sending the rest.

A proxy routing ``tether ssh web-1`` needs the one node the user means, not the listing of
every node the user may see: with 4,000 tunnel-mode nodes, asking auth for that listing,
encoding it, decoding it at the proxy and describing every entry as a
:class:`~tether.targets.Target` cost the root 0.23 s of CPU per session (10x what one node
costs; benchmarks/many_nodes.py). Auth answers a resources read that carries the query
instead: it describes each stored entry once per revision (the kind's own ``describe``, the
one routing uses), matches the query against all of them, and only then applies the caller's
roles, to the few that match. What comes back is what routing would have kept of the full
listing, so the proxy resolves it exactly as before (one target, "ambiguous" with those the
user may see, or "not found"), and a user learns nothing of a target their roles hide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from tether.resources import Resource
from tether.targets import Target, TargetKind, TargetQuery, matching_targets

__all__ = ["TargetLookup", "target_kinds"]


def target_kinds(protocol_results: Iterable[Iterable[object]]) -> dict[str, TargetKind]:
    """The target kinds of ``tether_protocols`` results, by resource kind name (several
    protocols may reach one kind). Handlers that reach no targets are skipped; checking the
    handlers is the proxy's job (:func:`tether.protocols.collect_protocols`)."""
    kinds: dict[str, TargetKind] = {}
    for returned in protocol_results:
        for handler in returned:
            kind = getattr(handler, "target_kind", None)
            if isinstance(kind, TargetKind):
                kinds.setdefault(kind.name, kind)
    return kinds


class TargetLookup:
    """Stored resources described as targets once per revision, and the ones a query names.

    :param kinds: the target kinds by resource kind name, asked for at the first query (they
        come from the protocol plugins, which an auth server that is never asked to resolve
        a target need not load).
    """

    def __init__(self, kinds: Callable[[], Mapping[str, TargetKind]]) -> None:
        self._load_kinds = kinds
        self._kinds: Mapping[str, TargetKind] | None = None
        #: kind -> name -> (revision, target)
        self._described: dict[str, dict[str, tuple[int, Target]]] = {}

    def kind(self, name: str) -> TargetKind | None:
        """The target kind of resource kind ``name``, or None: no protocol reaches it."""
        if self._kinds is None:
            self._kinds = dict(self._load_kinds())
        return self._kinds.get(name)

    def matching(
        self, kind: TargetKind, resources: Sequence[Resource], query: TargetQuery
    ) -> list[Resource]:
        """The resources among ``resources`` (every stored one of ``kind``) that ``query``
        names, in their order, as :func:`~tether.targets.matching_targets` selects targets.
        Nothing here knows who asks: the caller applies their roles to what this returns."""
        described = self._described.setdefault(kind.name, {})
        targets = [self._describe(kind, described, res) for res in resources]
        by_target = {id(target): res for target, res in zip(targets, resources, strict=True)}
        found = [by_target[id(target)] for target in matching_targets(targets, query)]
        if len(described) > len(resources):
            # entries the store no longer holds (expired, deleted)
            live = {res.metadata.name for res in resources}
            for name in [name for name in described if name not in live]:
                del described[name]
        return found

    @staticmethod
    def _describe(
        kind: TargetKind, described: dict[str, tuple[int, Target]], res: Resource
    ) -> Target:
        """``res`` as a target, from memory when its revision was described before (a
        resource without a revision, not read from the store, is described every time)."""
        name, revision = res.metadata.name, res.metadata.revision
        cached = described.get(name)
        if cached is not None and revision is not None and cached[0] == revision:
            return cached[1]
        target = kind.describe(res)
        if revision is not None:
            described[name] = (revision, target)
        return target
