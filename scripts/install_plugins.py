"""Install every plugin distribution under plugins/ and contrib/, and the test plugin, into
this environment.

tox runs this before the tests so that a plugin added under plugins/ is tested without editing
tox.ini (issue "Kernel foundation": the test env installs the kernel and every plugin).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def distributions() -> list[pathlib.Path]:
    found = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
    # third-party examples are installed the way their users install them, and tested too
    found += sorted(p.parent for p in (ROOT / "contrib").glob("*/pyproject.toml"))
    found += sorted(p.parent for p in (ROOT / "tests" / "plugins").glob("*/pyproject.toml"))
    return found


def main() -> int:
    dists = distributions()
    if not dists:
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--quiet"]
    for dist in dists:
        cmd += ["-e", str(dist)]
    print("installing plugins:", ", ".join(d.name for d in dists), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
