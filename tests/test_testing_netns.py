"""``tether.testing.netns``: a firewalled site drops every connection the host opens to it,
lets the site reach the host, and is removed with everything in it however its test ends;
sites made at the same time each get a namespace, link and addresses of their own."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import pytest

from tether.testing.cluster import wait_for
from tether.testing.netns import Site, firewalled_site, unavailable


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def _link_exists(name: str) -> bool:
    shown = subprocess.run(["ip", "link", "show", name], capture_output=True, check=False)
    return shown.returncode == 0


def _listen_in_site(site: Site) -> tuple[subprocess.Popen[str], int]:
    """A process in the site listening on its address; returns it and its port."""
    server = (
        "import socket, sys, time\n"
        f"s = socket.create_server(({site.site_addr!r}, 0))\n"
        "print(s.getsockname()[1], flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [*site.command_prefix, sys.executable, "-c", server], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def test_host_cannot_connect_into_the_site_and_the_site_reaches_the_host(
    firewalled_site: Site,
) -> None:
    site = firewalled_site
    listener, port = _listen_in_site(site)
    try:
        dropped = site.dropped_connections()
        with pytest.raises(TimeoutError):
            socket.create_connection((site.site_addr, port), timeout=1)
        assert site.dropped_connections() > dropped
        # the same port answers in the site: the rule, not an absent listener, stopped it
        inside = f"import socket; socket.create_connection(({site.site_addr!r}, {port}), 10)"
        subprocess.run([*site.command_prefix, sys.executable, "-c", inside], check=True)
    finally:
        listener.kill()
        listener.wait()
    with socket.create_server((site.host_addr, 0)) as host_server:
        host_port = host_server.getsockname()[1]
        outward = f"import socket; socket.create_connection(({site.host_addr!r}, {host_port}), 10)"
        subprocess.run([*site.command_prefix, sys.executable, "-c", outward], check=True)
        accepted, _ = host_server.accept()
        accepted.close()


def test_a_failing_test_leaves_no_namespace_link_or_process_behind() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="the test failed"), firewalled_site() as site:
        listener, _ = _listen_in_site(site)
        raise RuntimeError("the test failed")
    assert listener.wait(timeout=10) != 0
    assert site.name not in _namespaces()
    assert not _link_exists(site.host_link)


def test_sites_made_together_each_get_names_and_addresses_of_their_own() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with firewalled_site() as first, firewalled_site() as second:
        assert first.name != second.name and first.host_link != second.host_link
        assert len({first.host_addr, first.site_addr, second.host_addr, second.site_addr}) == 4
        assert {first.name, second.name} <= _namespaces()


def _namespace_id(name: str) -> int | None:
    """The inode of namespace ``name``: a new namespace of the same name has another."""
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except FileNotFoundError:
        return None


def _running(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_site_left_by_a_killed_test_run_is_removed_when_the_next_is_made() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    # a process left running in the site, then os._exit, which ends the run as SIGKILL
    # would: no finally, no cleanup
    killed_run = (
        "import os, subprocess\n"
        "from tether.testing.netns import firewalled_site\n"
        "with firewalled_site() as site:\n"
        "    sleep = [*site.command_prefix, 'sleep', '600']\n"
        "    quiet = subprocess.DEVNULL  # not the pipes the test reads until they close\n"
        "    left = subprocess.Popen(sleep, stdout=quiet, stderr=quiet)\n"
        "    print(site.name, site.host_link, left.pid, flush=True)\n"
        "    os._exit(0)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", killed_run], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    name, link, pid = ran.stdout.split()
    abandoned = _namespace_id(name)
    assert abandoned is not None and _link_exists(link) and _running(int(pid))
    with firewalled_site() as site:
        assert _namespace_id(name) != abandoned
        assert site.host_link == link or not _link_exists(link)
        wait_for(lambda: not _running(int(pid)), "the process left in the site to be killed")


def test_without_the_tools_the_reason_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = unavailable()
    assert reason is not None
    assert "needs ip and nft" in reason and "scripts/system-deps.sh" in reason
