"""Real OS accounts for tests of protocol plugins: sessions must run as a real user.

Creating an account needs root (CI runs as root); tests that need one skip otherwise, saying
why. An account that already existed is used as it is and left in place. Test runs that
overlap on one machine share an account they created: a reference count kept under a lock
file removes it when the last of them is done, not while another still logs in as it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = ["can_create_accounts", "os_account"]


def can_create_accounts() -> bool:
    """Whether this process may create OS accounts (root, with ``useradd`` installed)."""
    return os.geteuid() == 0 and shutil.which("useradd") is not None


@contextlib.contextmanager
def _shared_state(name: str) -> Iterator[dict[str, Any]]:
    """The account's reference count and whether a test created it, under an exclusive lock."""
    directory = pathlib.Path(tempfile.gettempdir()) / "tether-test-accounts"
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{name}.json"
    with open(path, "a+", encoding="utf-8") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        text = file.read()
        state: dict[str, Any] = json.loads(text) if text.strip() else {"refs": 0}
        yield state
        file.seek(0)
        file.truncate()
        file.write(json.dumps(state))


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def os_account(name: str, *, shell: str = "/bin/bash") -> Iterator[pwd.struct_passwd]:
    """The OS account ``name`` with a home directory, created here if missing and removed
    when the last test run using it is done (unless it existed before any test made it)."""
    with _shared_state(name) as state:
        if not _exists(name):
            subprocess.run(["useradd", "--create-home", "--shell", shell, name], check=True)
            state["created"] = True
            state["refs"] = 0
        state["refs"] = int(state.get("refs", 0)) + 1
    try:
        yield pwd.getpwnam(name)
    finally:
        with _shared_state(name) as state:
            state["refs"] = max(0, int(state.get("refs", 1)) - 1)
            if state["refs"] == 0 and state.get("created"):
                subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
                state["created"] = False
