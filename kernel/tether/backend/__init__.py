"""Storage: a key-range store with revisions and a watch stream, used for every resource.

Backends are plugins (hook ``tether_backends``) picked by URL scheme with
:func:`open_backend`; SQLite is the embedded default. Every backend must pass
:class:`tether.testing.backend_conformance.BackendConformance`, and uses the shared argument
checks and :class:`WatchBuffer` so that all of them refuse and report alike.
"""

from tether.backend._base import (
    Backend,
    BackendClosed,
    BackendError,
    BackendType,
    Event,
    Item,
    Op,
    WatchOverflow,
    backend_schemes,
    check_key,
    check_prefix,
    open_backend,
)
from tether.backend._checks import check_batch, check_condition, check_limit, check_swap_revision
from tether.backend._sqlite import SqliteBackend, open_sqlite
from tether.backend._watch_buffer import WatchBuffer

__all__ = [
    "Backend",
    "BackendClosed",
    "BackendError",
    "BackendType",
    "Event",
    "Item",
    "Op",
    "SqliteBackend",
    "WatchBuffer",
    "WatchOverflow",
    "backend_schemes",
    "check_batch",
    "check_condition",
    "check_key",
    "check_limit",
    "check_prefix",
    "check_swap_revision",
    "open_backend",
    "open_sqlite",
]
