"""``tetherd start`` with no configuration file runs auth, proxy and this host as a node, as
``teleport start`` does with none, the node is reachable with ``tether ssh``, and ``tetherctl``
on that host needs no ``-c``, as tctl after ``teleport start``.

Without a file the daemon listens on its fixed default ports (3025, 3080 and 3022) and keeps
its data in the default data directory (``/var/lib/tether`` for root), and tetherctl looks at
``/etc/tether.yaml``: so it and every command of the test run in network and mount namespaces
of their own, where those ports are free and ``/var/lib`` and ``/etc`` are overlays whose
changes land in the test's directory, whatever else runs on this machine (``unshare``,
``nsenter``, ``ip`` and overlayfs, as root).
"""

from __future__ import annotations

import getpass
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import pytest

from tether.testing.cluster import stop_process, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip")),
    reason="runs tetherd in a network namespace of its own (needs root, unshare, nsenter, ip)",
)

PASSWORD = "correct horse battery staple"


def _private_host(directory: pathlib.Path) -> str:
    """A shell line that gives the namespaces it runs in a loopback interface and overlays on
    ``/var/lib`` and ``/etc`` whose changes land in ``directory/var-lib`` and ``directory/etc``
    (the host's own stay untouched)."""
    mounts = []
    for overlay, lower in (("var-lib", "/var/lib"), ("etc", "/etc")):
        upper, work = directory / overlay, directory / f"{overlay}.work"
        upper.mkdir()
        work.mkdir()
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        mounts.append(f"mount -t overlay overlay -o {shlex.quote(options)} {lower}")
    return " && ".join(["ip link set lo up", *mounts])


def _private(directory: pathlib.Path, *argv: str) -> list[str]:
    """``argv`` run in network and mount namespaces of its own (:func:`_private_host`)."""
    # unshare and sh exec in turn, so the program keeps the pid that names the namespaces
    script = f'{_private_host(directory)} && exec "$@"'
    return ["unshare", "--net", "--mount", "sh", "-c", script, argv[0], *argv]


@attrs.frozen
class Solo:
    """A ``tetherd start`` with no file and no flags, in namespaces of its own."""

    process: subprocess.Popen[bytes]
    directory: pathlib.Path

    @property
    def data_dir(self) -> pathlib.Path:
        """``/var/lib/tether`` as the daemon sees it."""
        return self.directory / "var-lib" / "tether"

    def write_etc(self, name: str, text: str) -> None:
        """Write ``/etc/NAME`` as the daemon and the commands see it: through their mount
        namespace, since overlayfs need not see a file put in its upper directory behind its
        back (the daemon looked ``/etc/tether.yaml`` up at start, and overlayfs remembers)."""
        subprocess.run(
            ["nsenter", f"--mount=/proc/{self.process.pid}/ns/mnt", "tee", f"/etc/{name}"],
            input=text,
            stdout=subprocess.DEVNULL,
            text=True,
            timeout=30,
            check=True,
        )

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = json.loads((self.data_dir / "process.json").read_text())
        return info

    def run(
        self, program: str, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``tetherctl`` or ``tether`` inside the daemon's network namespace."""
        env: Mapping[str, str] = {**os.environ, "TETHER_HOME": str(self.directory / "home")}
        done = subprocess.run(
            [
                "nsenter",
                f"--net=/proc/{self.process.pid}/ns/net",
                f"--mount=/proc/{self.process.pid}/ns/mnt",
                sys.executable,
                "-m",
                f"tether.cli.{program}",
                *args,
            ],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"{program} {' '.join(args)}: {done.stderr}"
        return done

    def tetherctl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """As the local admin, with no ``-c``, as root on the daemon's host types it."""
        return self.run("tetherctl", *args, **kwargs)


def _started(solo: Solo) -> bool:
    try:
        return solo.info().get("pid") == solo.process.pid
    except (FileNotFoundError, ValueError):
        return False


@pytest.fixture
def solo(tmp_path: pathlib.Path) -> Iterator[Solo]:
    log = tmp_path / "tetherd.log"
    start = [sys.executable, "-m", "tether.cli.tetherd", "start", "--nodename=solo"]
    with log.open("wb") as out:
        process = subprocess.Popen(_private(tmp_path, *start), stdout=out, stderr=subprocess.STDOUT)
    started = Solo(process, tmp_path)
    try:
        wait_for(lambda: process.poll() is not None or _started(started), "tetherd to start", 60)
        assert process.poll() is None, log.read_text()
        yield started
    finally:
        stop_process(process)


def test_newcomer_starts_tetherd_without_a_config_and_reaches_this_host_over_ssh(
    solo: Solo,
) -> None:
    info = solo.info()
    assert info["auth_addr"] == "127.0.0.1:3025"
    assert info["proxy_addr"].endswith(":3080")

    def nodes() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(
            solo.tetherctl("get", "nodes", "--format=json").stdout
        )
        return found

    wait_for(lambda: nodes() != [], "the node's first heartbeat")
    (node,) = nodes()
    assert node["spec"]["hostname"] == "solo"
    assert node["spec"]["addr"] == "127.0.0.1:3022"

    me = getpass.getuser()
    solo.tetherctl(
        "users", "add", me, "--roles=access", f"--logins={me}", "--password-stdin",
        input=PASSWORD + "\n",
    )  # fmt: skip
    solo.run(
        "tether", "login", "--proxy=127.0.0.1:3080", f"--user={me}", "--password-stdin",
        f"--ca-pin={info['ca_pin']}", input=PASSWORD + "\n",
    )  # fmt: skip
    session = solo.run("tether", "ssh", f"{me}@solo", "echo", "hello from solo")
    assert session.stdout == "hello from solo\n"


def test_tetherctl_reads_etc_tether_yaml_when_it_runs_the_auth_service(solo: Solo) -> None:
    solo.write_etc("tether.yaml", "auth_service: [\n")
    broken = solo.tetherctl("get", "nodes", check=False)
    assert broken.returncode == 1
    assert broken.stderr.startswith("ERROR: /etc/tether.yaml:2: "), broken.stderr

    # a node's configuration gives no admin identity: tetherctl goes on to the defaults
    solo.write_etc(
        "tether.yaml", "auth_service: {enabled: false}\nproxy_service: {enabled: false}\n"
    )
    assert json.loads(solo.tetherctl("get", "cas", "--format=json").stdout)

    solo.write_etc("tether.yaml", f"data_dir: {solo.directory / 'elsewhere'}\n")
    elsewhere = solo.tetherctl("get", "nodes", check=False)
    assert elsewhere.returncode == 1
    assert f"no admin identity in {solo.directory / 'elsewhere'}" in elsewhere.stderr


def test_tetherd_start_reads_etc_tether_yaml_when_there_is_one(tmp_path: pathlib.Path) -> None:
    # as teleport start reads /etc/teleport.yaml: an operator who wrote the file and typed
    # tetherd start gets what the file says, not a fresh cluster on the default ports
    start = _private(tmp_path, sys.executable, "-m", "tether.cli.tetherd", "start")
    etc_file = tmp_path / "etc" / "tether.yaml"  # the overlay's upper dir: /etc inside
    etc_file.write_text("auth_service: [\n")
    broken = subprocess.run(start, capture_output=True, text=True, timeout=60, check=False)
    assert broken.returncode == 1
    assert broken.stderr.startswith("ERROR: /etc/tether.yaml:2: "), broken.stderr

    data_dir = tmp_path / "from-etc"
    etc_file.write_text(f"nodename: from-etc\ndata_dir: {data_dir}\n")
    log = tmp_path / "tetherd.log"
    with log.open("wb") as out:  # new namespaces, over the same overlay directories
        process = subprocess.Popen(start, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: process.poll() is not None or (data_dir / "process.json").exists(),
            "tetherd to start with /etc/tether.yaml",
            60,
        )
        assert process.poll() is None, log.read_text()
    finally:
        stop_process(process)


def test_tetherctl_with_no_login_and_no_configuration_names_where_it_looked(
    tmp_path: pathlib.Path,
) -> None:
    tetherctl = [sys.executable, "-m", "tether.cli.tetherctl", "get", "nodes"]
    refused = subprocess.run(
        _private(tmp_path, *tetherctl),
        env={**os.environ, "TETHER_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr == (
        "ERROR: not logged in, and no configuration given (-c), at /etc/tether.yaml or in "
        "/var/lib/tether (log in with `tether login`, or run tetherctl on the auth host with -c "
        "naming its tether.yaml)\n"
    )
