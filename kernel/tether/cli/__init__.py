"""The three command-line programs (``tetherd``, ``tetherctl``, ``tether``), and the helpers
they share that plugin commands use too (re-exported by :mod:`tether.api`)."""

from tether.cli._common import (
    complete_clusters,
    completer,
    emit_table,
    format_option,
    output,
    run_async,
    run_trio,
    shared_group,
)

__all__ = [
    "complete_clusters",
    "completer",
    "emit_table",
    "format_option",
    "output",
    "run_async",
    "run_trio",
    "shared_group",
]
