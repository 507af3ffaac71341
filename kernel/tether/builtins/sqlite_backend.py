"""The builtin ``sqlite`` plugin: the embedded storage backend behind ``sqlite:///path`` URLs.

A plugin like any other, so ``plugins.disabled: [sqlite]`` removes it and a third-party
distribution can provide the scheme instead.
"""

from __future__ import annotations

from tether.backend import BackendType, open_sqlite
from tether.hookspecs import hookimpl

__all__ = ["tether_backends"]


@hookimpl
def tether_backends() -> list[BackendType]:
    """Provide the SQLite backend for the ``sqlite`` URL scheme."""
    return [BackendType(scheme="sqlite", open=open_sqlite)]
