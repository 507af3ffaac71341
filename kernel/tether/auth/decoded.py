"""Stored resources decoded once per revision, for listings that read thousands of them.

``tether ls`` on a root with 10,000 tunnel-mode nodes read every ``node`` entry and decoded
each (JSON, then validation into its spec class: about 100 us each) at every listing, although
most had not changed since the last one. A node's entry does change at every heartbeat (its
expiry moves), so entries the auth service itself writes (hosts' heartbeats) are kept as they
were written, under the revision the store gave the write: a listing then decodes only what
another auth server wrote, or what changed since.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from tether.backend import Item
from tether.resources import KindRegistry, Resource, resource_from_bytes

__all__ = ["DecodedResources"]


class DecodedResources:
    """Decoded resources by key, each valid for one revision of its key."""

    def __init__(self, registry: KindRegistry) -> None:
        self._registry = registry
        self._items: dict[str, tuple[int, Resource]] = {}

    def decode(self, item: Item) -> Resource:
        """``item`` decoded (with its revision), from memory when that revision was seen."""
        cached = self._items.get(item.key)
        if cached is not None and cached[0] == item.revision:
            return cached[1]
        resource = resource_from_bytes(item.value, self._registry, revision=item.revision)
        self._items[item.key] = (item.revision, resource)
        return resource

    def decode_range(self, prefix: str, items: Sequence[Item]) -> list[Resource]:
        """Every item of a range read of ``prefix``, decoded; forgets keys under ``prefix``
        that the range no longer holds (deleted or expired)."""
        decoded = [self.decode(item) for item in items]
        if len(self._items) > len(items):
            live = {item.key for item in items}
            for key in [k for k in self._items if k.startswith(prefix) and k not in live]:
                del self._items[key]
        return decoded

    def written(self, key: str, revision: int, resource: Resource) -> None:
        """This process wrote ``resource`` (validated) at ``key`` under ``revision``."""
        metadata = attrs.evolve(resource.metadata, revision=revision)
        self._items[key] = (revision, attrs.evolve(resource, metadata=metadata))
