"""Starting a test's helper programs (etcd, the Kubernetes components, containerd) with their
output in a log file, which a failure's message quotes.

Apart from :mod:`tether.testing.kube` so that :mod:`tether.testing.etcd`, which the Kubernetes
API server's starter uses, can start its members the same way without importing it.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

__all__ = ["spawn_logged"]


def spawn_logged(
    argv: list[str], log_path: Path, directory: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``directory`` (with environment ``env``, else this one's), its
    output in ``log_path``. From the main thread, the process also gets SIGTERM when this one
    dies (``setpriv --pdeathsig``), so that even a test run that is killed leaves no etcd or
    kubelet behind (the signal comes when the thread that started it ends: a worker thread's
    processes would die with the thread, so those go without)."""
    prefix: list[str] = []
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        prefix = [setpriv, "--pdeathsig", "TERM", "--"]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [*prefix, *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=env,
        )
