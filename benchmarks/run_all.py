"""Run every benchmark harness in this directory (``tox -e bench``).

A harness is a ``benchmarks/<name>.py`` script with a ``main(argv) -> int`` that compares
Tether with its baseline (OpenSSH, raw loopback, a database reached directly) in the same run
and writes its figures under ``benchmarks/results/`` with the machine described (see README.md
here); ``many_nodes.py``, ``db_access.py`` and ``kube_access.py`` are found like the others.
Arguments after ``tox -e bench --`` are passed to every harness (for example ``--quick``).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

from tether.cli import progress

HERE = pathlib.Path(__file__).resolve().parent
NOT_HARNESSES = {"run_all.py", "machine.py", "__init__.py"}


def harnesses() -> list[pathlib.Path]:
    return sorted(
        p for p in HERE.glob("*.py") if p.name not in NOT_HARNESSES and not p.name.startswith("_")
    )


def main(argv: list[str]) -> int:
    found = harnesses()
    if not found:
        print("no benchmark harnesses in benchmarks/ yet")
        return 0
    status = 0
    # on a terminal, a bar over the harnesses (each prints its own lines above it)
    with progress("Benchmarks", total=len(found), plain=False) as shown:
        for path in found:
            shown.step(f"Benchmark {path.stem}")
            print(f"== {path.stem}", flush=True)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            # registered first, as a normal import would, so dataclasses and typing can find it
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
            status |= int(module.main(argv))
            shown.advance()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
