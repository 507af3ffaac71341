"""Describe the machine a benchmark ran on, for every result file.

A throughput figure means nothing without the CPU, core count, kernel and crypto library behind
it (AES-GCM vs ChaCha20 speed depends on AES-NI and the OpenSSL build), and results are kept
across runs and machines; so every harness stores ``describe()`` next to its figures.
``python benchmarks/machine.py`` prints it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import ssl
import subprocess
import sys
from typing import Any


def _run(argv: list[str]) -> str | None:
    """First line of a version command's output (stdout or stderr), or None if it is missing."""
    if not shutil.which(argv[0]):
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _distro() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "unknown")
    except OSError:
        return platform.platform()


def describe() -> dict[str, Any]:
    """CPU model, cores, memory, kernel, distro, Python, OpenSSH, OpenSSL and the date (UTC)."""
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    memory = _memory_bytes()
    return {
        "cpu_model": _cpu_model(),
        "architecture": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_bytes": memory,
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "kernel": f"{platform.system()} {platform.release()}",
        "distro": _distro(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "openssh": _run(["ssh", "-V"]),
        "openssl": _run(["openssl", "version"]),
        "python_openssl": ssl.OPENSSL_VERSION,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def summary(machine: dict[str, Any]) -> str:
    """One line for the results index: enough to tell two machines apart."""
    openssh = (machine.get("openssh") or "no OpenSSH").split(",")[0]
    return (
        f"{machine['cpu_model']}, {machine['cores_usable']} cores, {machine['memory_gib']} GiB, "
        f"{machine['kernel']}, {machine['python']}, {openssh}"
    )


if __name__ == "__main__":
    print(json.dumps(describe(), indent=2))
