"""Stored resources decoded once per revision, for listings that read thousands of them.

``tether ls`` on a root with 10,000 tunnel-mode nodes read every ``node`` entry and decoded
each (JSON, then validation into its spec class: about 100 us each) at every listing, although
most had not changed since the last one. A node's entry does change at every heartbeat (its
expiry moves), so entries the auth service itself writes (hosts' heartbeats) are kept as they
were written, under the revision the store gave the write: a listing then decodes only what
another auth server wrote, or what changed since.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from tether.backend import Item
from tether.resources import KindRegistry, Resource, resource_from_bytes, resource_to_dict

__all__ = ["DecodedResources"]


class DecodedResources:
    """Decoded resources by key, each valid for one revision of its key, and each one's
    document as the API sends it (without secrets), encoded once per revision too: making
    and encoding every entry's document again at each ``tether ls`` cost more than reading
    the entries did."""

    def __init__(self, registry: KindRegistry) -> None:
        self._registry = registry
        self._items: dict[str, _Entry] = {}
        #: id of a cached resource -> its key (the entry holds the resource, so the id
        #: names no other object while it is there)
        self._keys: dict[int, str] = {}

    def decode(self, item: Item) -> Resource:
        """``item`` decoded (with its revision), from memory when that revision was seen."""
        cached = self._items.get(item.key)
        if cached is not None and cached.revision == item.revision:
            return cached.resource
        resource = resource_from_bytes(item.value, self._registry, revision=item.revision)
        self._keep(item.key, item.revision, resource)
        return resource

    def decode_range(self, prefix: str, items: Sequence[Item]) -> list[Resource]:
        """Every item of a range read of ``prefix``, decoded; forgets keys under ``prefix``
        that the range no longer holds (deleted or expired)."""
        decoded = [self.decode(item) for item in items]
        if len(self._items) > len(items):
            live = {item.key for item in items}
            for key in [k for k in self._items if k.startswith(prefix) and k not in live]:
                self._forget(key)
        return decoded

    def written(self, key: str, revision: int, resource: Resource) -> Resource:
        """This process wrote ``resource`` (validated) at ``key`` under ``revision``; returns
        it as kept (with its revision), the object a read of that revision decodes to."""
        metadata = attrs.evolve(resource.metadata, revision=revision)
        kept = attrs.evolve(resource, metadata=metadata)
        self._keep(key, revision, kept)
        return kept

    def encoded(self, resource: Resource) -> bytes:
        """``resource`` as the API sends it without secrets: the JSON of
        :func:`~tether.resources.resource_to_dict`, made once for a resource this cache holds
        (bytes, which the garbage collector never walks), every time for another one (a
        user's view of an entry, say)."""
        key = self._keys.get(id(resource))
        entry = self._items.get(key) if key is not None else None
        if entry is None or entry.resource is not resource:
            return encode_json(resource_to_dict(resource))
        if entry.encoded is None:
            entry.encoded = encode_json(resource_to_dict(resource))
        return entry.encoded

    def _keep(self, key: str, revision: int, resource: Resource) -> None:
        self._forget(key)
        self._items[key] = _Entry(revision, resource)
        self._keys[id(resource)] = key

    def _forget(self, key: str) -> None:
        entry = self._items.pop(key, None)
        if entry is not None:
            self._keys.pop(id(entry.resource), None)


def encode_json(value: Any) -> bytes:
    """``value`` as JSON, as the API's responses encode it (compact, UTF-8)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class _Entry:
    """One key's resource at one revision, and its encoded document once asked for."""

    __slots__ = ("encoded", "resource", "revision")

    def __init__(self, revision: int, resource: Resource) -> None:
        self.revision = revision
        self.resource = resource
        self.encoded: bytes | None = None
