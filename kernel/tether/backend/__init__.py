"""Storage: a key-range store with revisions and a watch stream, used for every resource.

Backends are plugins (hook ``tether_backends``) picked by URL scheme with
:func:`open_backend`; SQLite is the embedded default. Every backend must pass
:class:`tether.testing.backend_conformance.BackendConformance`.
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
    open_backend,
)
from tether.backend._sqlite import SqliteBackend, open_sqlite

__all__ = [
    "Backend",
    "BackendClosed",
    "BackendError",
    "BackendType",
    "Event",
    "Item",
    "Op",
    "SqliteBackend",
    "WatchOverflow",
    "backend_schemes",
    "open_backend",
    "open_sqlite",
]
