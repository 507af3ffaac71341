"""What a test Kubernetes node changes on the machine it runs on, and how it is put back.

A kubelet and containerd are not contained by their directories: the kubelet sets kernel
parameters (``vm.overcommit_memory``, ``kernel.panic``... it cannot be told not to), creates
``/var/lib/kubelet`` (its device plugins' socket) and ``/var/log/pods`` whatever its root
directory, bind-mounts that root directory; containerd's shims keep sockets under
``/run/containerd`` and outlive it, each container has a cgroup in every hierarchy and mounts.
:class:`Footprint` notes, before the node starts, what it will find changed after, and
:meth:`Footprint.undo` puts it back: processes that name the node's directory or sit in its
containers' cgroups are killed by PID, mounts under its directories are detached, the
cgroups it made removed, the kernel parameters restored, the paths it created removed.

The footprint is also written to :data:`RECORD` while the node runs: a test run that is
killed (and its node with it) leaves it there, and the next node undoes it first. Only one
node runs on a machine at a time (:func:`machine_lock`): a kubelet has one node name,
``/var/lib/kubelet`` and one set of kernel parameters to share.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import json
import os
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import attrs

__all__ = [
    "CGROUP_NAMES",
    "KUBELET_SYSCTLS",
    "LOCK",
    "RECORD",
    "Footprint",
    "cgroup_roots",
    "machine_lock",
    "mounts_under",
    "processes_naming",
    "socket_peers",
]

#: Held (flock) while a test node runs on this machine.
LOCK = Path("/run/tether-kube-node.lock")
#: The running node's :class:`Footprint`, for the next node to undo if this one was killed.
RECORD = Path("/run/tether-kube-node.json")
#: The kernel parameters the kubelet sets at start (``setupKernelTunables``), under /proc/sys.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
#: Paths a kubelet and containerd create outside the directories they are given.
OUTSIDE_PATHS = (
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/run/containerd",
)
#: The top-level cgroups containerd (``k8s.io/<container>``) and a kubelet make.
CGROUP_NAMES = ("k8s.io", "kubepods", "kubepods.slice")

_MNT_DETACH = 2


@contextlib.contextmanager
def machine_lock(timeout: float) -> Iterator[bool]:
    """Hold :data:`LOCK`, waiting ``timeout`` seconds at most for another node to stop;
    yields whether it is held (False: another test's node still runs)."""
    with open(LOCK, "a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(1.0)
                continue
            break
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _mountinfo() -> list[tuple[str, str]]:
    """``(mount point, file system type)`` of each mount, in the order they were made."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        # the kernel escapes space, tab, newline and backslash as octal
        point = fields[4].encode().decode("unicode_escape")
        mounts.append((point, fields[separator + 1]))
    return mounts


def mounts_under(path: Path) -> list[Path]:
    """The mount points at or under ``path``, deepest (latest) first."""
    prefix = str(path).rstrip("/") + "/"
    found = [Path(p) for p, _ in _mountinfo() if p == str(path) or p.startswith(prefix)]
    return list(reversed(found))


def _unmount_under(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(8):  # a bind mount may be stacked on itself: look again until none is left
        points = mounts_under(path)
        if not points:
            return
        for point in points:
            if libc.umount2(str(point).encode(), _MNT_DETACH) != 0:
                code = ctypes.get_errno()
                if code not in (errno.EINVAL, errno.ENOENT):  # gone in the meantime
                    raise OSError(code, f"umount {point}: {os.strerror(code)}")


def cgroup_roots() -> dict[str, Path]:
    """Each cgroup hierarchy's mount point, by its controllers (``memory``, ``cpu,cpuacct``;
    ``""`` for a cgroup v2 unified hierarchy)."""
    roots: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        kind = fields[separator + 1]
        if kind == "cgroup2":
            roots.setdefault("", Path(fields[4]))
        elif kind == "cgroup":
            options = fields[separator + 3].split(",")
            controllers = [o for o in options if o not in ("rw", "ro") and "=" not in o]
            named = [o for o in options if o.startswith("name=")]
            roots.setdefault(",".join(controllers + named), Path(fields[4]))
    return roots


def _cgroups(roots: Iterable[Path]) -> set[str]:
    """The top-level cgroups of :data:`CGROUP_NAMES` in every hierarchy, as paths."""
    return {str(root / name) for root in roots for name in CGROUP_NAMES if (root / name).is_dir()}


def processes_naming(text: str) -> list[int]:
    """The processes whose command line has ``text`` in an argument (not this one)."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(needle in arg for arg in argv):
            found.append(int(entry.name))
    return found


def socket_peers(pids: Iterable[int] | None = None) -> set[tuple[str, int]]:
    """The remote ``(address, port)`` of the connected TCP and UDP sockets of ``pids`` (of
    every process when None), IPv4 and IPv6: where a node's processes talk to."""
    inodes: set[str] | None = None
    if pids is not None:
        inodes = set()
        for pid in pids:
            with contextlib.suppress(OSError):  # gone in the meantime
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd)
                        if target.startswith("socket:["):
                            inodes.add(target[8:-1])
    peers = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path("/proc/net", table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[2].split(":")
            if int(port, 16) == 0 or (inodes is not None and fields[9] not in inodes):
                continue  # not connected, or another process's
            raw = bytes.fromhex(address)
            # each 32-bit word in the machine's (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            if packed[:12] == b"\0" * 10 + b"\xff\xff":  # an IPv4-mapped IPv6 address
                packed = packed[12:]
            peers.add((str(ipaddress.ip_address(packed)), int(port, 16)))
    return peers


def _processes_in(cgroups: Iterable[str]) -> set[int]:
    pids: set[int] = set()
    for cgroup in cgroups:
        for procs in Path(cgroup).rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in procs.read_text().split())
    return pids


def kill_processes(pids: Iterable[int], timeout: float = 10.0) -> None:
    """SIGKILL each of ``pids`` and wait until it is gone (reaped by its parent)."""
    pids = set(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {pid for pid in pids if _alive(pid)}
        if not alive:
            return
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _remove_cgroups(cgroups: Iterable[str]) -> None:
    """Remove each cgroup and those under it, deepest first; one that still has processes
    stays (rmdir refuses it)."""
    for cgroup in cgroups:
        tree = sorted((p for p in Path(cgroup).rglob("*") if p.is_dir()), reverse=True)
        for directory in [*tree, Path(cgroup)]:
            with contextlib.suppress(FileNotFoundError, OSError):
                directory.rmdir()


def _remove(path: Path) -> None:
    """Remove ``path``, never through a mount (there must be none left under it)."""
    if mounts_under(path):
        raise OSError(errno.EBUSY, f"{path} still has mounts under it: left in place")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if child.is_dir() and not child.is_symlink():
                child.rmdir()
            else:
                child.unlink()
        path.rmdir()


@attrs.define
class Footprint:
    """What a node running in ``directory`` will have changed, noted before it starts.

    :ivar sysctls: the kernel parameters' values before (relative to /proc/sys).
    :ivar absent: the paths of :data:`OUTSIDE_PATHS` that did not exist: removed after.
    :ivar cgroups: the cgroups of :data:`CGROUP_NAMES` that existed: left alone.
    """

    directory: str
    sysctls: dict[str, str]
    absent: list[str]
    cgroups: list[str]

    @classmethod
    def take(cls, directory: Path) -> Footprint:
        return cls(
            directory=str(directory),
            sysctls={name: Path("/proc/sys", name).read_text().strip() for name in KUBELET_SYSCTLS},
            absent=[path for path in OUTSIDE_PATHS if not os.path.lexists(path)],
            cgroups=sorted(_cgroups(cgroup_roots().values())),
        )

    def save(self) -> None:
        RECORD.write_text(json.dumps(attrs.asdict(self), indent=2) + "\n")

    @classmethod
    def saved(cls) -> Footprint | None:
        """The footprint a killed node left in :data:`RECORD`, if any."""
        try:
            return cls(**json.loads(RECORD.read_text()))
        except FileNotFoundError:
            return None

    def undo(self) -> list[str]:
        """Put the machine back as :meth:`take` found it; returns what could not be (each a
        line), after trying everything."""
        problems: list[str] = []
        directory = Path(self.directory)
        outside = [Path(path) for path in self.absent]
        new_cgroups = _cgroups(cgroup_roots().values()) - set(self.cgroups)
        # containers, their shims, and whatever else still runs from the node's files
        for _ in range(3):
            pids = set(processes_naming(f"{self.directory}/")) | _processes_in(new_cgroups)
            if not pids:
                break
            kill_processes(pids)
        for path in [directory, *outside]:
            try:
                _unmount_under(path)
            except OSError as exc:
                problems.append(str(exc))
        _remove_cgroups(new_cgroups)
        problems += [f"cgroup {c} is still there" for c in new_cgroups if os.path.isdir(c)]
        for name, value in self.sysctls.items():
            path = Path("/proc/sys", name)
            try:
                if path.read_text().strip() != value:
                    path.write_text(value)
            except OSError as exc:
                problems.append(f"sysctl {name}: could not set it back to {value}: {exc}")
        for path in outside:
            try:
                _remove(path)
            except OSError as exc:
                problems.append(f"{path}: {exc}")
        RECORD.unlink(missing_ok=True)
        return problems


def required_cgroup_controllers(
    wanted: Sequence[str] = ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer"),
) -> str | None:
    """Why the kubelet and runc cannot make containers' cgroups here, or None."""
    roots = cgroup_roots()
    if "" in roots and len(roots) == 1:
        controllers = (roots[""] / "cgroup.controllers").read_text().split()
        missing = [
            c for c in wanted if c in ("cpu", "cpuset", "memory", "pids") and c not in controllers
        ]
        probe_roots = [roots[""]]
    else:
        mounted = {c for key in roots for c in key.split(",")}
        missing = [c for c in wanted if c not in mounted]
        probe_roots = [root for key, root in roots.items() if set(key.split(",")) & set(wanted)]
    if missing:
        return f"cgroup controllers not mounted: {', '.join(missing)}"
    for root in probe_roots:
        probe = root / f"tether-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            return f"cannot make a cgroup in {root}: {exc.strerror}"
    return None
