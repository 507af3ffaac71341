"""A site behind a real firewall: a network namespace that accepts no inbound connection.

The guide's claim that a leaf needs no open inbound port is tested with the leaf in a site of
its own: a network namespace joined to the host by a veth pair, with nftables rules in the
namespace that drop every new connection arriving from the host (``ct state new``) and accept
loopback, replies to connections the site opened (established, related) and anything it sends.
Processes run in the site with ``ip netns exec`` (:attr:`Site.command_prefix`).

Addresses: a /30 of the link-local range 169.254.0.0/16 for each site, the host's end and the
site's end; link-local addresses are never routed off their link, and the link is the veth
pair, so the traffic never leaves this machine. The site has no default route: it reaches the
host's end of its link and nothing else. Sites of parallel test runs get /30s and names of
their own, chosen under a lock file among those no interface of the host uses.

Creating a site needs root (CAP_NET_ADMIN) and the tools ``ip`` (iproute2) and ``nft``
(nftables), which ``scripts/system-deps.sh`` installs; :func:`unavailable` says which is
missing, and the ``firewalled_site`` fixture skips its test with that reason. Everything a
site creates is removed when it closes, on failure too: processes still running in it are
killed first (they would keep the namespace and its link alive). A site whose test run was
killed before it could remove it is removed when the next site is made: each site is recorded,
with the process that made it, until it is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator

import attrs

__all__ = ["Site", "SiteUnavailable", "firewalled_site", "unavailable"]

#: the link-local range the sites' links take their /30s from; not 169.254.0.x and
#: 169.254.255.x (reserved by RFC 3927), nor 169.254.169.x (clouds' metadata services)
_RANGE = ipaddress.IPv4Network("169.254.0.0/16")
_SKIPPED = (ipaddress.IPv4Network("169.254.0.0/24"), ipaddress.IPv4Network("169.254.255.0/24"))
_METADATA = ipaddress.IPv4Network("169.254.169.0/24")

_TABLE = "tether_site"
_DROP_COMMENT = "inbound connection attempts"


class SiteUnavailable(Exception):
    """This machine cannot create a firewalled site; the message says why."""


@attrs.frozen
class Site:
    """A network namespace behind a firewall, and the link between it and the host.

    :ivar name: the namespace's name (``ip netns exec NAME ...``).
    :ivar host_addr: the host's end of the link: where processes in the site reach the host.
    :ivar site_addr: the site's end: where the site's services listen; the firewall drops
        every connection to it that the host tries to open.
    :ivar host_link: the host's interface of the link.
    """

    name: str
    host_addr: str
    site_addr: str
    host_link: str

    @property
    def command_prefix(self) -> tuple[str, ...]:
        """What runs a command in the site: ``[*site.command_prefix, "tetherd", ...]``."""
        return ("ip", "netns", "exec", self.name)

    def dropped_connections(self) -> int:
        """How many connection attempts from the host the firewall has dropped so far (the
        packets its drop rule counted): the proof that a refused connection met the rule."""
        listed = _run(
            "ip", "netns", "exec", self.name, "nft", "-j", "list", "table", "inet", _TABLE
        )
        for item in json.loads(listed.stdout)["nftables"]:
            rule = item.get("rule")
            if rule is None or rule.get("comment") != _DROP_COMMENT:
                continue
            for expression in rule["expr"]:
                if "counter" in expression:
                    return int(expression["counter"]["packets"])
        raise AssertionError(f"the firewall of {self.name} has no drop rule:\n{listed.stdout}")


def unavailable() -> str | None:
    """Why this process cannot create a firewalled site, or None if it can."""
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return (
            f"creates a network namespace behind nftables: needs {' and '.join(missing)} "
            "(scripts/system-deps.sh installs iproute2 and nftables)"
        )
    if os.geteuid() != 0:
        return "creates a network namespace behind nftables: needs root (CAP_NET_ADMIN)"
    return None


@contextlib.contextmanager
def firewalled_site() -> Iterator[Site]:
    """A new site, removed with everything in it when the block ends.

    :raises SiteUnavailable: :func:`unavailable` gives a reason, or the kernel refused the
        namespace or its firewall (no CAP_NET_ADMIN in a container, no nf_tables).
    """
    reason = unavailable()
    if reason is not None:
        raise SiteUnavailable(reason)
    created: list[Site] = []
    try:
        with _lock():
            _remove_abandoned()
            site = _unused_site()
            created.append(site)
            _create(site)
        yield site
    finally:
        for site in created:
            _remove(site)


def _create(site: Site) -> None:
    """The namespace, its link to the host and its firewall: the link's address is taken
    under the lock, so the next site sees it as used. Recorded first, so that a site half
    made by a run that was killed is removed too."""
    _records().mkdir(mode=0o700, exist_ok=True)
    record = {**attrs.asdict(site), "creator": os.getpid(), "started": _start_time(os.getpid())}
    (_records() / f"{site.name}.json").write_text(json.dumps(record))
    added = _run("ip", "netns", "add", site.name, check=False)
    if added.returncode != 0:
        raise SiteUnavailable(f"cannot create a network namespace: {added.stderr.strip()}")
    site_link = site.host_link[:-1] + "s"
    _run(
        "ip", "link", "add", site.host_link, "type", "veth",
        "peer", "name", site_link, "netns", site.name,
    )  # fmt: skip
    _run("ip", "addr", "add", f"{site.host_addr}/30", "dev", site.host_link)
    _run("ip", "link", "set", site.host_link, "up")
    _run("ip", "-n", site.name, "addr", "add", f"{site.site_addr}/30", "dev", site_link)
    _run("ip", "-n", site.name, "link", "set", site_link, "up")
    _run("ip", "-n", site.name, "link", "set", "lo", "up")
    ruleset = f"""
table inet {_TABLE} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        iifname "{site_link}" ct state new counter drop comment "{_DROP_COMMENT}"
    }}
}}
"""
    loaded = _run("ip", "netns", "exec", site.name, "nft", "-f", "-", input=ruleset, check=False)
    if loaded.returncode != 0:
        raise SiteUnavailable(f"cannot load the site's nftables rules: {loaded.stderr.strip()}")


def _remove(site: Site) -> None:
    """Kill what still runs in the site, then delete its link and namespace; each step runs
    whatever the one before did, so that a half-made site is removed too."""
    pids = _run("ip", "netns", "pids", site.name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    # deleting one end of a veth pair deletes the other
    _run("ip", "link", "del", site.host_link, check=False)
    _run("ip", "netns", "del", site.name, check=False)
    (_records() / f"{site.name}.json").unlink(missing_ok=True)


def _remove_abandoned() -> None:
    """Remove the sites whose maker is gone: its test run was killed before removing them."""
    if not _records().is_dir():
        return
    for path in _records().glob("*.json"):
        record = json.loads(path.read_text())
        if _start_time(int(record.pop("creator"))) != record.pop("started"):
            _remove(Site(**record))


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), None if there is none: with its
    PID, it tells a live maker from a new process that reuses a dead maker's PID."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    # the fields after the command's name, which is in parentheses and may hold anything
    return stat.rsplit(")", 1)[1].split()[19]


def _records() -> pathlib.Path:
    return pathlib.Path(tempfile.gettempdir()) / "tether-netns"


def _unused_site() -> Site:
    """The first /30 of the range that no interface of the host has an address in."""
    listed = _run("ip", "-j", "-4", "addr", "show").stdout
    used = [
        ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network
        for link in json.loads(listed)
        for info in link.get("addr_info", [])
    ]
    namespaces = set(_run("ip", "netns", "list").stdout.split())
    for index, subnet in enumerate(_RANGE.subnets(new_prefix=30)):
        if any(subnet.subnet_of(skipped) for skipped in (*_SKIPPED, _METADATA)):
            continue
        if any(subnet.overlaps(network) for network in used):
            continue
        name = f"tether-site-{index}"
        if name in namespaces:  # a site whose link is gone but not its namespace
            continue
        host, site = list(subnet.hosts())
        # interface names have at most 15 characters
        return Site(name=name, host_addr=str(host), site_addr=str(site), host_link=f"tts{index}h")
    raise SiteUnavailable(f"every /30 of {_RANGE} is in use")


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Held while a site is chosen and its link addressed, by every test run on the machine."""
    path = pathlib.Path(tempfile.gettempdir()) / "tether-netns.lock"
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        yield


def _run(
    *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    ran = subprocess.run(args, input=input, capture_output=True, text=True, check=False, timeout=30)
    if check and ran.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {ran.returncode}: {ran.stderr.strip()}")
    return ran
