"""The builtin ``sqlite`` plugin: the embedded storage backend behind ``sqlite:///path`` URLs.

A plugin like any other, so ``plugins.disabled: [sqlite]`` removes it and a third-party
distribution can provide the scheme instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.hookspecs import hookimpl

if TYPE_CHECKING:  # every command-line start registers the builtins: they import when called
    from tether.backend import BackendType

__all__ = ["tether_backends"]


@hookimpl
def tether_backends() -> list[BackendType]:
    """Provide the SQLite backend for the ``sqlite`` URL scheme."""
    from tether.backend import BackendType, open_sqlite

    return [BackendType(scheme="sqlite", open=open_sqlite)]
