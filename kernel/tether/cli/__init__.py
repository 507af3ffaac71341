"""The three command-line programs (``tetherd``, ``tetherctl``, ``tether``), and the helpers
they share that plugin commands use too (re-exported by :mod:`tether.api`)."""

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
