"""Copy a whole store into another one: moving a cluster from SQLite to PostgreSQL or etcd,
a backup into a SQLite file of its own, and its restore (``tetherd migrate``).

Every live key is copied with its value and the time it has left to live; revisions are the
destination's own (they order writes within one store, and every cache and watch starts
afresh when the auth servers start on the new store). The destination must be empty: copying
into a store that holds a cluster would mix two clusters' users, roles and CAs.
"""

from __future__ import annotations

from collections.abc import Callable

from tether.backend._base import Backend, Op
from tether.errors import TetherError

__all__ = ["BATCH", "copy_store"]

#: Keys written per transaction: a store of 10,000 nodes' entries goes in a few dozen, and
#: under etcd's ``--max-txn-ops`` as ``docs/operating.md`` sets it.
BATCH = 500


async def copy_store(
    source: Backend,
    destination: Backend,
    *,
    now: Callable[[], float],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Copy every live key of ``source`` into ``destination``; return how many.

    :param now: the clock (seconds since the epoch) a key's remaining time to live is
        counted on; a key that expires before its copy is written is left out.
    :param progress: called with the number of keys copied after each batch.
    :raises TetherError: ``destination`` already holds a key.
    """
    if await destination.range("", limit=1):
        raise TetherError(
            "the destination store is not empty; migrate copies into an empty one",
            hint="give a new database (createdb), an unused etcd prefix or a new SQLite file",
        )
    copied = 0
    batch: list[Op] = []
    for item in await source.range(""):
        ttl = None
        if item.expires is not None:
            ttl = item.expires - now()
            if ttl <= 0:
                continue  # expired while we read: it would be gone at once
        batch.append(Op.put(item.key, item.value, ttl=ttl, expected_revision=0))
        if len(batch) == BATCH:
            copied += await _write(destination, batch, progress, copied)
            batch = []
    if batch:
        copied += await _write(destination, batch, progress, copied)
    return copied


async def _write(
    destination: Backend, batch: list[Op], progress: Callable[[int], None] | None, before: int
) -> int:
    await destination.apply(batch)
    if progress is not None:
        progress(before + len(batch))
    return len(batch)
