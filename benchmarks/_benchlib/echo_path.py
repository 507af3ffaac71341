"""The tunnel through real ``tetherd`` processes, and OpenSSH in the same process layout.

Both paths carry a client's bytes to an echo service two reverse tunnels away and back, on
127.0.0.1, each hop encrypted:

- :func:`tetherd_path`: a root cluster ``root`` and a leaf ``leaf0`` (each one ``tetherd``
  with auth and proxy), the leaf trusting the root as the guide has it
  (:func:`~_benchlib.trust_site.trust_root`), and a node ``leaf-node`` in tunnel mode (its own
  ``tetherd``) serving the contrib echo protocol (``contrib/echo-protocol``, the plugin
  ``tether-echo``). The root's user ``bench`` runs ``tether echo listen --cluster=leaf0
  leaf-node``; a connection to its port goes: the client -> TLS -> the root's proxy -> the
  leaf's tunnel -> the leaf's proxy -> the node's tunnel -> the node's echo service.
- :func:`openssh_path`: ``ssh -L`` (the client) -> ``sshd`` (the root) -> the entry of an
  ``ssh -R`` the leaf's ``ssh`` holds to it -> ``sshd`` (the leaf) -> the entry of an ``ssh
  -R`` the node's ``ssh`` holds to it -> an echo server (``loadgen.py echo-server``); every
  hop with ``aes128-gcm@openssh.com``.

Each path names its processes by role (client, root, leaf, node, target), so the CPU of each
is read around every round (:func:`measure`): ``/proc`` ticks of the process and its
descendants, per GB carried (one way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from _benchlib import loadgen, openssh
from _benchlib.daemon_settings import LOG, LOG_DESCRIPTION
from _benchlib.procs import (
    LOOPBACK,
    free_port,
    owned_process,
    run_until_ok,
    tree_cpu_seconds,
)
from _benchlib.ssh_sites import user_env
from _benchlib.trust_site import LEAF, NODE, ROOT, USER, console_script, trust_root

#: The processes of each path, by role, in the order of the bytes' way out.
ROLES = ("client", "root", "leaf", "node", "target")
ECHO_ALPN = "tether-echo/1"
#: How long the node may take until an echo through the root answers (its entry published,
#: the root's user CA learned).
READY_TIMEOUT = 120.0
#: Bytes each path carries once before it is measured: first-connection costs, discarded.
WARMUP_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class Path:
    """A running path: where a client connects, and the pids of each role (a role may be
    several processes, or none where another role's process serves it: :data:`LAYOUT`)."""

    entry: tuple[str, int]
    processes: Mapping[str, tuple[int, ...]]
    #: what the path's encryption negotiated, for the report
    negotiated: str


@dataclasses.dataclass(frozen=True)
class Round:
    """One round through a path: its throughput and each role's CPU seconds per GB."""

    mb_s: float
    cpu_s_per_gb: dict[str, float]


def _cpu(path: Path) -> dict[str, float]:
    return {
        role: sum(tree_cpu_seconds(pid) for pid in pids) for role, pids in path.processes.items()
    }


def measure(path: Path, streams: int, bytes_per_stream: int) -> Round:
    """One echo round through ``path``, with the CPU each role spent during it."""
    before = _cpu(path)
    m = loadgen.measure_echo(path.entry, streams, bytes_per_stream)
    after = _cpu(path)
    gb = m.total_bytes / 1e9
    return Round(
        mb_s=m.mb_s,
        cpu_s_per_gb={role: round((after[role] - before[role]) / gb, 3) for role in before},
    )


def medians(rounds: list[Round]) -> dict[str, float]:
    """Each role's median CPU s/GB over ``rounds``, and ``total`` (the median of the sums)."""
    roles = rounds[0].cpu_s_per_gb
    figures = {
        role: round(statistics.median(r.cpu_s_per_gb[role] for r in rounds), 2) for role in roles
    }
    figures["total"] = round(statistics.median(sum(r.cpu_s_per_gb.values()) for r in rounds), 2)
    return figures


# --- Tether ------------------------------------------------------------------------------------


def _negotiated(proxy: str, home: pathlib.Path) -> str:
    """The TLS version and suite the root's proxy agrees with the user's client (the tunnels
    between the daemons are made by the same contexts)."""
    from tether.api import current_profile, profile_ssl_context

    profile = current_profile(home)
    assert profile is not None  # the user logged in
    host, _, port = proxy.rpartition(":")
    context = profile_ssl_context(profile, alpn=[ECHO_ALPN])
    with (
        socket.create_connection((host, int(port)), timeout=30) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        cipher = tls.cipher()
        return f"{tls.version()} {cipher[0] if cipher else 'unknown'}"


@contextlib.contextmanager
def tetherd_path() -> Iterator[Path]:
    """The root, the leaf and its echo node, and the user's ``tether echo listen``."""
    from tether.testing.cluster import RunningCluster, RunningNode, start_cluster, start_node

    with tempfile.TemporaryDirectory(prefix="tether-bench-echo-") as tmpdir:
        base = pathlib.Path(tmpdir)
        started: list[RunningCluster | RunningNode] = []
        try:
            root = start_cluster(base / ROOT, ROOT, config={"log": LOG})
            started.append(root)
            leaf = start_cluster(base / LEAF, LEAF, config={"log": LOG})
            started.append(leaf)
            echo = {"plugins": {"settings": {"echo": {"enabled": True}}}}
            node = start_node(leaf, base / NODE, NODE, config={**echo, "log": LOG})
            started.append(node)
            trust_root(root, leaf, base)
            home = root.user_home(USER)
            env = user_env(TETHER_HOME=str(home))
            tether = console_script("tether")
            target = ["echo", f"--cluster={LEAF}", NODE]
            run_until_ok(
                [*tether, "echo", "connect", *target[1:]], env, time.monotonic() + READY_TIMEOUT
            )
            port = free_port()
            listen = [*tether, "echo", "listen", f"--port={port}", *target[1:]]
            with owned_process(
                listen, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            ) as client:
                loadgen.wait_greeted((LOOPBACK, port), timeout=30.0, proc=client)
                yield Path(
                    entry=(LOOPBACK, port),
                    processes={
                        "client": (client.pid,),
                        "root": (root.process.pid,),
                        "leaf": (leaf.process.pid,),
                        "node": (node.process.pid,),
                        "target": (),
                    },
                    negotiated=_negotiated(root.proxy_addr, home),
                )
        finally:
            for process in reversed(started):
                process.stop()


# --- OpenSSH -----------------------------------------------------------------------------------


@contextlib.contextmanager
def openssh_path(sshd: str, cipher: str = openssh.CIPHERS["openssh_aes128"]) -> Iterator[Path]:
    """Two ``sshd`` (the root's, the leaf's), the leaf's and the node's ``ssh -R`` and the
    client's ``ssh -L``, all with ``cipher``; the echo server behind the node."""
    with loadgen.echo_server() as echo, contextlib.ExitStack() as stack:
        root = stack.enter_context(openssh.server(cipher, sshd))
        leaf = stack.enter_context(openssh.server(cipher, sshd))
        leaf_entry = (LOOPBACK, free_port())
        node_ssh = stack.enter_context(openssh.forward(leaf, "-R", leaf_entry, echo.address))
        root_entry = (LOOPBACK, free_port())
        leaf_ssh = stack.enter_context(openssh.forward(root, "-R", root_entry, leaf_entry))
        client_entry = (LOOPBACK, free_port())
        client = stack.enter_context(openssh.forward(root, "-L", client_entry, root_entry))
        loadgen.wait_greeted(client_entry, timeout=30.0, proc=client)
        yield Path(
            entry=client_entry,
            processes={
                "client": (client.pid,),
                "root": (root.pid,),
                "leaf": (leaf_ssh.pid, leaf.pid),
                "node": (node_ssh.pid,),
                "target": (echo.pid,),
            },
            negotiated=cipher,
        )


# --- the figure --------------------------------------------------------------------------------

#: The two paths of the figure, Tether's first; the ratio is Tether's MB/s over OpenSSH's.
PATHS = ("tetherd", "openssh_aes128")
#: What the figure changes from the defaults, and why (benchmarks/README.md has the same).
SETTINGS = {
    "leaf-node plugins.settings.echo.enabled": "true: the echo service is the target, and a "
    "node serves it only when told to",
}
#: What each role is, per path, for the report.
LAYOUT = {
    "tetherd": {
        "client": "tether echo listen (the root's user)",
        "root": "tetherd: auth + proxy of cluster root",
        "leaf": "tetherd: auth + proxy of cluster leaf0, its tunnel to the root",
        "node": "tetherd: node leaf-node in tunnel mode to the leaf, serving echo",
        "target": "(the echo service is in the node's tetherd)",
    },
    "openssh_aes128": {
        "client": "ssh -L to the root's sshd",
        "root": "sshd (and its per-connection children)",
        "leaf": "ssh -R to the root's sshd, and the leaf's sshd",
        "node": "ssh -R to the leaf's sshd",
        "target": "loadgen.py echo-server",
    },
}


def empty() -> dict[str, Any]:
    """The figure's JSON with nothing measured (every number null)."""
    return {
        "mb_s": {name: {} for name in PATHS},
        "ratio_vs_openssh_aes128": {},
        "cpu_s_per_gb": {name: {} for name in PATHS},
        "mb_s_samples": {name: {} for name in PATHS},
        "negotiated": {},
        "processes": LAYOUT,
        "daemons_log_severity": LOG_DESCRIPTION,
        "settings": SETTINGS,
        "missing": {},
    }


def figure(
    rounds: list[tuple[int, int]],
    repeat: int,
    sshd: str | None,
    problem: str | None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Both paths up at once, each round (``(streams, bytes per stream)``) run on each in
    turn, ``repeat`` times; medians of MB/s and of each role's CPU s/GB. OpenSSH's half is
    null, with the reason, where it cannot run here."""
    result = empty()
    samples: dict[str, dict[int, list[Round]]] = {
        name: {streams: [] for streams, _ in rounds} for name in PATHS
    }
    with contextlib.ExitStack() as stack:
        paths = {"tetherd": stack.enter_context(tetherd_path())}
        if sshd is None:
            result["missing"]["openssh_aes128"] = problem or "sshd is not available"
        else:
            paths["openssh_aes128"] = stack.enter_context(openssh_path(sshd))
        for name, path in paths.items():
            result["negotiated"][name] = path.negotiated
            measure(path, 1, WARMUP_BYTES)  # first-connection costs, discarded
        for r in range(repeat):
            for name, path in paths.items():
                for streams, nbytes in rounds:
                    got = measure(path, streams, nbytes)
                    samples[name][streams].append(got)
                    log(
                        f"  {name}: {streams} x {nbytes >> 20} MiB echoed at {got.mb_s:.0f} MB/s, "
                        f"CPU {sum(got.cpu_s_per_gb.values()):.2f} s/GB "
                        f"(repeat {r + 1}/{repeat})"
                    )
    for name in paths:
        for streams, taken in samples[name].items():
            key = str(streams)
            result["mb_s"][name][key] = round(statistics.median(t.mb_s for t in taken), 1)
            result["mb_s_samples"][name][key] = [round(t.mb_s, 1) for t in taken]
            result["cpu_s_per_gb"][name][key] = medians(taken)
    base = result["mb_s"]["openssh_aes128"]
    result["ratio_vs_openssh_aes128"] = {
        key: round(value / base[key], 2) if base.get(key) else None
        for key, value in result["mb_s"]["tetherd"].items()
    }
    return result
