"""Where results go: ``benchmarks/results/<name>-<stamp>.json`` (+ chart) and an index line.

Results are kept from run to run so a regression shows against an older figure from the same
machine; the index (``results/README.md``) is the one place to read them in order.
"""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any

RESULTS_DIR = pathlib.Path(__file__).resolve().parent.parent / "results"
INDEX_HEADER = """\
# Benchmark results

One line per run, newest last: harness, date, headline figures, machine, files. Figures are
only comparable between runs on the same machine (see each JSON file's "machine").

"""


def stamp() -> str:
    """A UTC timestamp for file names: sortable, and two runs on one day do not collide."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M%SZ")


def write_json(path: pathlib.Path, report: dict[str, Any]) -> None:
    """Write ``report`` as indented JSON, creating the parent directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def append_index(results_dir: pathlib.Path, line: str) -> pathlib.Path:
    """Append one line to ``results_dir/README.md``, creating it with a header if needed."""
    index = results_dir / "README.md"
    results_dir.mkdir(parents=True, exist_ok=True)
    if not index.exists():
        index.write_text(INDEX_HEADER, encoding="utf-8")
    with index.open("a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
    return index
