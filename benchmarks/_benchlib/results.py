"""Where results go: ``benchmarks/results/<name>-<stamp>.json`` (+ chart) and an index line.

Results are kept from run to run so a regression shows against an older figure from the same
machine; the index (``results/README.md``) is the one place to read them in order.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
from collections.abc import Callable, Sequence
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


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """The options every harness has for where its results go: ``--json``, ``--results-dir``."""
    parser.add_argument("--json", type=pathlib.Path, metavar="FILE", help="also write JSON here")
    parser.add_argument(
        "--results-dir",
        type=pathlib.Path,
        default=RESULTS_DIR,
        metavar="DIR",
        help="where the dated JSON, chart and index go (default benchmarks/results)",
    )


def save_report(
    name: str,
    report: dict[str, Any],
    args: argparse.Namespace,
    *,
    table: Callable[[dict[str, Any]], str],
    chart: Callable[[dict[str, Any], pathlib.Path], bool],
    index_line: Callable[[dict[str, Any], str, str | None], str],
) -> None:
    """Print a harness's table and keep its run: ``<name>-<stamp>.json``, its chart when
    ``chart`` drew one, a line in the index, and a copy at ``--json``; says what it wrote."""
    print()
    print(table(report))
    results_dir: pathlib.Path = args.results_dir
    stem = f"{name}-{stamp()}"
    json_path = results_dir / f"{stem}.json"
    png_path = results_dir / f"{stem}.png"
    write_json(json_path, report)
    drew = chart(report, png_path)
    index = append_index(
        results_dir, index_line(report, json_path.name, png_path.name if drew else None)
    )
    written = [json_path, *([png_path] if drew else []), index]
    if args.json:
        write_json(args.json, report)
        written.insert(0, args.json)
    print(f"\nwrote {', '.join(str(p) for p in written)} in {report['elapsed_seconds']}s")


def pyplot() -> Any | None:
    """matplotlib's pyplot on the Agg backend, or None (saying so) where it is not installed:
    a chart is a bonus, the JSON and the index line are the results."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (tox -e bench installs it): no chart", flush=True)
        return None
    return plt


def save_chart(plt: Any, fig: Any, path: pathlib.Path) -> None:
    """Lay ``fig`` out, write it to ``path`` (its directory made) and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def label_bars(
    ax: Any,
    bars: Any,
    labels: Sequence[str],
    *,
    tops: Sequence[float] | None = None,
    fontsize: int = 8,
) -> None:
    """Write each bar's figure just above it (``tables.fmt`` says ``n/a`` for one not
    measured); ``tops``: where a bar's whisker ends, so the label stands above both."""
    heights = tops if tops is not None else [bar.get_height() for bar in bars]
    for bar, label, top in zip(bars, labels, heights, strict=True):
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, top),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=fontsize,
        )
