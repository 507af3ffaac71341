"""Build the two container images a test Kubernetes node runs, from Debian's busybox-static,
as OCI image archives that ``ctr images import`` loads: nothing is pulled from a registry.

Usage: ``python3 scripts/kube-node-images.py BUSYBOX OUT_DIR [ARCH]`` (``scripts/kube-deps.sh``
runs it; BUSYBOX is the static binary unpacked from the ``busybox-static`` package, ARCH the
OCI architecture, by default the machine's). It writes ``OUT_DIR/busybox.tar``
(``tether.local/busybox:1``: busybox and a link for each of its applets, as in a busybox
image, for the tests' pods) and ``OUT_DIR/pause.tar`` (``tether.local/pause:1``: the same
layer running a shell that sleeps until it is stopped, for the pods' sandboxes; Debian has no
``pause`` binary). Both share one layer, and each archive is the same bytes for the same
busybox: entries sorted, times zero, owner root.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import subprocess
import sys
import tarfile
from pathlib import Path

BUSYBOX_IMAGE = "tether.local/busybox:1"
PAUSE_IMAGE = "tether.local/pause:1"
#: What the sandbox container runs: it holds the pod's namespaces and stops at once on TERM
#: (as PID 1 of its namespace, a signal without a handler would be ignored).
PAUSE_COMMAND = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"]
_MACHINES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
_GROUP = b"root:x:0:\nnogroup:x:65534:\n"


def _entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def _layer(busybox: Path) -> bytes:
    """The root file system: busybox in /bin, every applet a link to it, a root user."""
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    binary = busybox.read_bytes()
    files = {"etc/passwd": _PASSWD, "etc/group": _GROUP}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "dev", "etc", "proc", "root", "sys", "tmp", "var"):
            mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(_entry(directory, tarfile.DIRTYPE, mode))
        tar.addfile(_entry("bin/busybox", tarfile.REGTYPE, 0o755, len(binary)), io.BytesIO(binary))
        for applet in sorted(set(applets) - {"busybox"}):
            tar.addfile(_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
        for name, content in sorted(files.items()):
            tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_image(out: Path, name: str, command: list[str], layer: bytes, arch: str) -> None:
    """An OCI image layout in a tar: ``ctr images import`` names it after its annotation."""
    compressed = gzip.compress(layer, mtime=0)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": command, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(compressed),
                    "size": len(compressed),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()
    entries = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": index,
        **{f"blobs/sha256/{_digest(b)[7:]}": b for b in (compressed, config, manifest)},
    }
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(_entry(directory, tarfile.DIRTYPE, 0o755))
        for path, content in sorted(entries.items()):
            tar.addfile(_entry(path, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
    partial.rename(out)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    busybox, out = Path(argv[0]), Path(argv[1])
    arch = argv[2] if len(argv) == 3 else _MACHINES.get(platform.machine(), platform.machine())
    out.mkdir(parents=True, exist_ok=True)
    layer = _layer(busybox)
    write_image(out / "busybox.tar", BUSYBOX_IMAGE, ["/bin/sh"], layer, arch)
    write_image(out / "pause.tar", PAUSE_IMAGE, PAUSE_COMMAND, layer, arch)
    print(f"images {BUSYBOX_IMAGE} and {PAUSE_IMAGE} ({arch}) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
