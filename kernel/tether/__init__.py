"""Tether: an access proxy that reaches servers in leaf clusters over reverse tunnels.

The kernel (tunnel, certificates, identity, RBAC, resources, storage) lives in this package;
protocols, identity connectors, audit sinks and storage backends are plugins that implement the
hooks in :mod:`tether.hookspecs` and register through the ``tether`` entry-point group. A plugin
imports :mod:`tether.api` (and :mod:`tether.testing` in its tests), nothing else of this package.
"""

import sys as _sys
from importlib import metadata as _metadata

from tether.errors import TetherError
from tether.hookspecs import hookimpl, hookspec

# httpx loads its own command line (click, rich, pygments: a tenth of a second) whenever rich
# is installed, which it is for Tether's progress display; Tether never runs httpx's command
# line, and its own commands must start fast, so httpx finds that module missing and skips it.
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

try:
    __version__ = _metadata.version("tether")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["TetherError", "__version__", "hookimpl", "hookspec"]
