"""Tether: an access proxy that reaches servers in leaf clusters over reverse tunnels.

The kernel (tunnel, certificates, identity, RBAC, resources, storage) lives in this package;
protocols, identity connectors, audit sinks and storage backends are plugins that implement the
hooks in :mod:`tether.hookspecs` and register through the ``tether`` entry-point group. A plugin
imports :mod:`tether.api` (and :mod:`tether.testing` in its tests), nothing else of this package.

Importing the package imports nothing else: every command-line start goes through here, and
``tether version`` must not pay for pluggy or the package metadata. The version is written
here, and pyproject.toml reads it (setuptools' ``attr:``, without importing this file).
"""

import sys as _sys
import typing as _typing

__version__ = "0.1.0"

# httpx loads its own command line (click, rich, pygments: a tenth of a second) whenever rich
# is installed, which it is for Tether's progress display; Tether never runs httpx's command
# line, and its own commands must start fast, so httpx finds that module missing and skips it.
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

if _typing.TYPE_CHECKING:
    from tether.errors import TetherError
    from tether.hookspecs import hookimpl, hookspec

__all__ = ["TetherError", "__version__", "hookimpl", "hookspec"]


def __getattr__(name: str) -> _typing.Any:
    """``TetherError``, ``hookimpl`` and ``hookspec``, imported on first use (PEP 562)."""
    if name == "TetherError":
        from tether.errors import TetherError

        return TetherError
    if name in ("hookimpl", "hookspec"):
        from tether import hookspecs

        return getattr(hookspecs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
