"""Real OS accounts for tests of protocol plugins: sessions must run as a real user.

Creating an account needs root (CI runs as root); tests that need one skip otherwise, saying
why. An account that already exists is used as it is and left in place.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator

__all__ = ["can_create_accounts", "os_account"]


def can_create_accounts() -> bool:
    """Whether this process may create OS accounts (root, with ``useradd`` installed)."""
    return os.geteuid() == 0 and shutil.which("useradd") is not None


@contextlib.contextmanager
def os_account(name: str, *, shell: str = "/bin/bash") -> Iterator[pwd.struct_passwd]:
    """The OS account ``name`` with a home directory; created here and removed afterwards
    unless it already existed."""
    try:
        yield pwd.getpwnam(name)
        return
    except KeyError:
        pass
    subprocess.run(["useradd", "--create-home", "--shell", shell, name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
