"""The argument checks every backend runs, and the errors a failed condition raises.

Each backend (SQLite here, PostgreSQL and etcd as plugins) must refuse the same bad arguments
and report a failed condition with the same error and words, or a caller's handling would
depend on the storage configured. Plugins import only :mod:`tether.api`, which exports these,
so there is one copy for all of them. The key and prefix checks live in ``_base`` because
:class:`~tether.backend.Op` runs them when it is built.
"""

from __future__ import annotations

from collections.abc import Iterable

from tether.backend._base import Op
from tether.errors import AlreadyExists, CompareFailed, NotFound

__all__ = ["check_batch", "check_condition", "check_limit", "check_swap_revision"]


def check_batch(ops: Iterable[Op]) -> list[Op]:
    """Refuse what :meth:`Backend.apply` must not accept; return the ops as a list.

    Call it first in ``apply``, before touching the store. Each :class:`Op` validated its own
    fields (key, value, ttl, expected revision) when it was built; what only the batch as a
    whole can get wrong is checked here.

    :raises TypeError: an element is not an :class:`Op`.
    :raises ValueError: a key appears more than once (the message lists the repeated keys):
        the steps of a batch are unordered, so two steps on one key have no meaning.
    """
    batch = list(ops)
    strays = [op for op in batch if not isinstance(op, Op)]
    if strays:
        raise TypeError(
            f"apply() takes a sequence of tether.api.Op, got a {type(strays[0]).__name__}"
        )
    seen: set[str] = set()
    repeated: set[str] = set()
    for op in batch:
        (repeated if op.key in seen else seen).add(op.key)
    if repeated:
        raise ValueError(f"a batch may name each key once; repeated: {sorted(repeated)}")
    return batch


def check_limit(limit: int | None) -> None:
    """Refuse a ``limit`` that :meth:`Backend.range` cannot honour.

    Call it in ``range`` after :func:`~tether.backend.check_prefix`. None means no limit and 0
    an empty answer, which a backend gives without asking its store.

    :raises ValueError: a bool, or below 0.
    """
    if limit is not None and (isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be None or >= 0, got {limit!r}")


def check_swap_revision(expected_revision: int) -> None:
    """Refuse an ``expected_revision`` that :meth:`Backend.compare_and_swap` cannot compare.

    Call it first in ``compare_and_swap``. A swap replaces an existing key, so the revision is
    a real one (1 or more); an :class:`Op` also allows 0 ("must be absent"), which is what
    ``create`` is for.

    :raises ValueError: not an int (a bool neither), or below 1.
    """
    if (
        isinstance(expected_revision, bool)
        or not isinstance(expected_revision, int)
        or expected_revision < 1
    ):
        raise ValueError(
            f"expected_revision must be a revision (>= 1), got {expected_revision!r}; "
            "use create() to write a key that must not exist"
        )


def check_condition(op: Op, revision: int | None) -> None:
    """Raise the error that ``op``'s condition stands for if the key's state breaks it.

    Call it for each step of a batch with the key's current live revision, read in the same
    transaction as the write (or, on a store that checks conditions itself, such as etcd, as
    the store reported it after refusing): the errors, and their one-line messages naming the
    key, are then the same on every backend.

    :param revision: the key's revision now, or None if it is absent (or expired).
    :raises AlreadyExists: the op requires the key absent (``expected_revision=0``) but it exists.
    :raises NotFound: the op expects a revision but the key is absent.
    :raises CompareFailed: the key is at another revision than the op expects.
    """
    expected = op.expected_revision
    if expected is None:
        return
    if expected == 0:
        if revision is not None:
            raise AlreadyExists(f"key {op.key!r} already exists (revision {revision})")
        return
    if revision is None:
        raise NotFound(f"key {op.key!r} does not exist (expected revision {expected})")
    if revision != expected:
        raise CompareFailed(
            f"key {op.key!r} is at revision {revision}, not the expected {expected}",
            hint="it changed since it was read; read it again and retry",
        )
