"""The three command-line programs (``tetherd``, ``tetherctl``, ``tether``), and the helpers
they share that plugin commands use too (re-exported by :mod:`tether.api`).

Every start imports this package first, so its names load on first use (PEP 562): a program
pays only for the modules its command line needs.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from tether.cli._common import (
        cluster_option,
        complete_clusters,
        completer,
        emit_table,
        format_option,
        output,
        run_async,
        run_trio,
        shared_group,
    )
    from tether.cli._progress import Progress, progress

__all__ = [
    "Progress",
    "cluster_option",
    "complete_clusters",
    "completer",
    "emit_table",
    "format_option",
    "output",
    "progress",
    "run_async",
    "run_trio",
    "shared_group",
]


def __getattr__(name: str) -> _typing.Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "tether.cli._progress" if name in ("Progress", "progress") else "tether.cli._common"
    return getattr(_importlib.import_module(module), name)
