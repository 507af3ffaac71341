"""The systemd unit ``tetherd install systemd`` prints (as ``teleport install systemd`` does).

``contrib/systemd/`` holds two units rendered by it: ``tetherd.service`` for one daemon and
``tetherd@.service`` for several on one host (``/etc/tether/%i.yaml``). tetherd stops cleanly on
SIGTERM, what ``systemctl stop`` sends, so the unit needs no stop command; it has no reload
command either, because tetherd reads its configuration only when it starts.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

__all__ = [
    "DEFAULT_ENV_FILE",
    "DEFAULT_FD_LIMIT",
    "default_tetherd_path",
    "render_unit",
]

DEFAULT_ENV_FILE = "/etc/default/tetherd"
#: Every tunnel, proxied connection and session holds descriptors; Teleport's unit allows as many.
DEFAULT_FD_LIMIT = 524288

_NEEDS_QUOTES = re.compile(r"[\s\"'\\;]")

_USAGE = "# Start it with: systemctl daemon-reload && systemctl enable --now tetherd\n"
_TEMPLATE_USAGE = """\
# One daemon per configuration: tetherd@NAME reads {config} with NAME for %i.
# Start one with: systemctl daemon-reload && systemctl enable --now tetherd@NAME
"""

_UNIT = """\
# {name}: the Tether daemon, as `tetherd install systemd` writes it.
{usage}[Unit]
Description=Tether daemon ({config})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
EnvironmentFile=-{env_file}
ExecStart={exec_start}
Restart=on-failure
RestartSec=5
LimitNOFILE={fd_limit}

[Install]
WantedBy=multi-user.target
"""


def default_tetherd_path() -> str:
    """The ``tetherd`` this one is: beside the running Python (a virtualenv's ``bin``), else
    the one on ``PATH``, else where ``pip install`` as root puts it."""
    beside = os.path.join(os.path.dirname(sys.executable), "tetherd")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("tetherd") or "/usr/local/bin/tetherd"


def _quote(arg: str) -> str:
    """One ExecStart word: systemd splits on spaces and reads C-style double quotes."""
    if not _NEEDS_QUOTES.search(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(
    *,
    config: str,
    tetherd_path: str,
    env_file: str = DEFAULT_ENV_FILE,
    fd_limit: int = DEFAULT_FD_LIMIT,
) -> str:
    """The text of a unit that runs ``tetherd start --config=CONFIG``.

    :param config: an absolute path; ``%i`` in it is the instance of a template unit.
    :param tetherd_path: the absolute path of the ``tetherd`` executable.
    :param env_file: variables for tetherd (``TETHER_*``); the unit starts without it.
    :param fd_limit: the open-file limit (``LimitNOFILE``).
    """
    template = "%i" in config
    name = "tetherd@.service" if template else "tetherd.service"
    exec_start = " ".join(_quote(a) for a in (tetherd_path, "start", f"--config={config}"))
    return _UNIT.format(
        name=name,
        usage=_TEMPLATE_USAGE.format(config=config) if template else _USAGE,
        config=config,
        env_file=env_file,
        exec_start=exec_start,
        fd_limit=fd_limit,
    )
