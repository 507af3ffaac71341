"""What a running ``tetherd`` keeps in its data directory, for the tools that read it.

``process.json`` holds the addresses the daemon really listens on (ports may be 0 in the
configuration) and the CA pin; ``admin/`` holds the local admin identity that ``tetherctl -c``
uses on the auth host, reissued at every start.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

__all__ = [
    "ADMIN_DIR",
    "PROCESS_FILE",
    "admin_identity_paths",
    "read_process_info",
]

PROCESS_FILE = "process.json"
ADMIN_DIR = "admin"


def admin_identity_paths(
    data_dir: pathlib.Path,
) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """(cert, key, CA) files of the local admin identity ``tetherctl -c`` uses."""
    base = data_dir / ADMIN_DIR
    return base / "cert.pem", base / "key.pem", base / "ca.pem"


def read_process_info(data_dir: pathlib.Path) -> dict[str, Any]:
    """What the running daemon wrote to ``process.json``; empty when it is not running."""
    try:
        data = json.loads((data_dir / PROCESS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
