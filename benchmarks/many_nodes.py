"""Many tunnel-mode nodes: one cluster with 10,000 nodes, against the same cluster with one.

One run starts, on 127.0.0.1, a cluster (auth and proxy in one real ``tetherd``) and one real
node ``bench-node`` in tunnel mode that serves SSH (``_benchlib/node_site.py``), measures the
root with that one node, then joins ``--nodes`` - 1 lightweight nodes (each its own join with
a node token, host certificate, and tunnel, which carries its trust and the heartbeats of its
``node`` resource, many per process, never more per process than its open-files limit holds;
``_benchlib/nodes.py``) and measures the same figures again, in the same run:

- ``tether ssh root@bench-node true``: wall time, a fresh client each run as a user types it,
  median and p90 of ``--runs`` runs after one discarded warm-up; the ratio many/one is reported
  against the target (within 1.2x);
- ``tether ls`` (the user's view, against the target under 2 s) and ``tetherctl get nodes
  --format=json`` (the admin's): wall time, median of ``--list-runs`` runs after one warm-up;
- the root ``tetherd``'s resident memory (VmRSS, against the target under 2 GiB) and CPU (% of
  one core, against the target under 25%) while idle with every node heartbeating (the median
  of 3 windows of ``--idle-seconds``); its peak memory and CPU while nodes join;
- how long the nodes take to join: every join answered, every tunnel up, every node
  heartbeating (the nodes' processes say so) and listed by ``tetherctl get nodes`` (polled once
  the tunnels are up), then seen in ``tether ls``; and each join's latency in join order.

The table, ``--json FILE`` and ``benchmarks/results/many_nodes-<stamp>.json`` / ``.png`` carry
every raw sample, the ratios, the targets met or not and the machine described. A node that
does not join or is not listed within ``--join-timeout`` is reported, and the figures are those
of the nodes that did. ``--profile DIR`` records the root with py-spy while it idles with every
node and during one ``tether ls``, ``get nodes`` and ``ssh`` run (after the measurements).

    python benchmarks/many_nodes.py [--quick] [--json FILE] [--nodes N] [--runs N]
        [--list-runs N] [--idle-seconds S] [--join-timeout S] [--node-processes N]
        [--join-concurrency N] [--profile DIR]
"""

# No ``from __future__ import annotations`` here: tests load harnesses without registering
# them in sys.modules, and dataclasses then cannot resolve string annotations.
import argparse
import contextlib
import dataclasses
import os
import pathlib
import sys
import time
from contextlib import AbstractContextManager
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, from run_all.py, or imported by a test
    sys.path.insert(0, str(HERE))

import machine  # noqa: E402
from _benchlib import (  # noqa: E402
    daemon_settings,
    node_site,
    nodes,
    results,
    root_watch,
    ssh_profile,
    tables,
    trust_site,
)
from _benchlib.fleet import lift_open_files, now_ns  # noqa: E402
from _benchlib.node_site import NodeSite  # noqa: E402
from _benchlib.root_watch import (  # noqa: E402
    RunFailed,
    Sampler,
    cpu_seconds,
    measure_commands,
    measure_idle,
    profile_text,
    run,
    spread,
)

_fmt = tables.fmt

NAME = "many_nodes"
PHASES = ("one_node", "many_nodes")
FIGURES = ("ssh", "ls", "get_nodes")
#: the targets this harness reports against (Teleport's test plan: 10,000 tunnel nodes)
SSH_TARGET = 1.2  # ssh to the real node with every node joined, at most this times one node's
LS_TARGET_SECONDS = 2.0  # `tether ls` with every node, median
RSS_TARGET_MIB = 2048.0  # the root's idle VmRSS with every node
IDLE_CPU_TARGET_PERCENT = 25.0  # the root's idle CPU with every node, % of one core
COMMAND_TIMEOUT = 180.0
LIST_POLL_INTERVAL = 5.0  # seconds between `get nodes` polls while waiting for every node
#: sockets the root holds per node: its tunnel (trust and heartbeats ride in it; the HTTPS
#: connection of a node's first trust read and heartbeat closes 25 s after its start): the
#: open-files limit the root needs
ROOT_SOCKETS_PER_NODE = 1


FLEET_OPTIONS = root_watch.FleetOptions(
    member="node",
    members="nodes",
    real="bench-node",
    lists="`tether ls` and `get nodes`",
    joined="join and be listed",
    join="joins",
    count=(10_000, 200),
    idle_seconds=(60.0, 10.0),  # full: a keep-alive interval, every node heartbeats once
    join_timeout=(1800.0, 120.0),
    processes=4,
    concurrency=8,
)


# --- the sites: looked up at call time, so tests can stub them -------------------------------


def open_node_site() -> AbstractContextManager[NodeSite]:
    """The cluster, its real node and a logged-in user."""
    return node_site.node_site()


def node_fleet(**kwargs: Any) -> AbstractContextManager[nodes.NodeFleet]:
    """The lightweight nodes' processes (see ``_benchlib/nodes.py``)."""
    return nodes.fleet(**kwargs)


# --- parameters -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Params:
    """What one run measures; stored in the results so figures are read with their sizes."""

    quick: bool
    nodes: int
    ssh_runs: int
    list_runs: int
    idle_seconds: float
    join_timeout: float
    node_processes: int
    join_concurrency: int
    tether_program: str
    warmup_runs: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Params":
        size = root_watch.sizes(args, FLEET_OPTIONS)
        return cls(
            quick=args.quick,
            nodes=size.count,
            ssh_runs=size.ssh_runs,
            list_runs=size.list_runs,
            idle_seconds=size.idle_seconds,
            join_timeout=size.join_timeout,
            # each process under the hard limit on open files, which it cannot raise
            node_processes=max(args.node_processes, nodes.processes_needed(size.count - 1)),
            join_concurrency=args.join_concurrency,
            tether_program=" ".join(trust_site.console_script("tether")),
        )

    def to_json(self) -> dict[str, Any]:
        from tether.tunnel.transport import KeepAlive

        keep_alive = KeepAlive()  # the root runs with the default auth_service.keep_alive_*
        return {
            **dataclasses.asdict(self),
            "lightweight_nodes": self.nodes - 1,
            "real_node": node_site.NODE,
            "ssh_command": f"tether ssh {node_site.LOGIN}@{node_site.NODE} true",
            "ls_command": "tether ls",
            "get_nodes_command": "tetherctl -c CONFIG get nodes --format=json",
            "ssh_aggregate": f"median and p90 (nearest rank) of {self.ssh_runs} runs",
            "list_aggregate": f"median of {self.list_runs} runs",
            "idle": "root tetherd with every node heartbeating and nothing else: cpu_percent "
            f"is the median of {root_watch.IDLE_WINDOWS} consecutive windows of "
            f"{self.idle_seconds:g} s (cpu_percent_windows has each)",
            "cpu": "% of one core: (utime + stime) / wall time, from /proc/PID/stat; "
            "root_cpu_median: the root's utime + stime during one run (its idle work included)",
            "rss": "VmRSS of the root tetherd, from /proc/PID/status; peak_rss_mib is VmHWM, "
            "the peak since it started, and the join's root_peak_rss_mib the highest VmRSS "
            "sampled every second while nodes join",
            "heartbeat_interval_seconds": keep_alive.interval,
            "keep_alive_count_max": keep_alive.count_max,
            "entry_ttl_seconds": keep_alive.entry_ttl,
            "heartbeats": "one PUT /v1/presence per node at its start (as tether.node.agent "
            "checks its first one), then its entry in its tunnel's heartbeats, which the "
            "proxy relays to auth in one PUT /v1/presence/relayed per flush (5 s)",
            "list_poll_interval_seconds": LIST_POLL_INTERVAL,
            "daemons_log_severity": daemon_settings.LOG_DESCRIPTION,
            "settings_changed": {
                "proxy_service.rate_limit": trust_site.FLEET_RATE_LIMIT["proxy_service"][
                    "rate_limit"
                ],
                "why": "every node joins from 127.0.0.1, as a fleet behind one NAT would; the "
                "default per-address limit would refuse most of their joins",
                "node token ttl": node_site.TOKEN_TTL,
                "why_token_ttl": "one node token for every node of the run (tokens have no "
                "use count); the default 30m may end before 10,000 nodes have joined",
                "open files": "the harness lifts its RLIMIT_NOFILE (the root tetherd and the "
                "nodes' processes inherit it) to what the system allows: see open_files",
            },
            "targets": {
                "ssh_ratio_many_vs_one_at_most": SSH_TARGET,
                "ls_seconds_under": LS_TARGET_SECONDS,
                "root_rss_mib_under": RSS_TARGET_MIB,
                "root_idle_cpu_percent_under": IDLE_CPU_TARGET_PERCENT,
            },
        }


# --- the phases -------------------------------------------------------------------------------


@dataclasses.dataclass
class Phase(root_watch.Phase):
    """Every sample of one phase (one node, or every node), or why there are none."""

    figure_names: tuple[str, ...] = FIGURES
    nodes_listed: int = 0
    #: what the last ``tether ls`` and ``get nodes`` showed (a check, not a figure)
    ls_rows: int | None = None
    get_nodes_listed: int | None = None


def measure_phase(phase: Phase, site: NodeSite, params: Params) -> None:
    """Idle root first (nothing else running), then the listings, then the sessions."""
    measure_idle(phase, site.root_pid, params.idle_seconds)
    commands = {
        "get_nodes": (site.get_nodes_argv(), None, params.list_runs),
        "ls": (site.ls_argv(), site.user_env, params.list_runs),
        "ssh": (site.ssh_argv(), site.user_env, params.ssh_runs),
    }

    def seen(figure: str, out: str) -> None:
        if figure == "get_nodes":
            phase.get_nodes_listed = len(node_site.listed_nodes(out))
        elif figure == "ls":
            phase.ls_rows = node_site.ls_rows(out)

    measure_commands(
        phase,
        commands,
        site.root_pid,
        warmup_runs=params.warmup_runs,
        timeout=COMMAND_TIMEOUT,
        seen=seen,
    )


# --- joining the lightweight nodes --------------------------------------------------------------


def join_nodes(site: NodeSite, params: Params, fleet: Any) -> dict[str, Any]:
    """Wait for every lightweight node's join, tunnel and first heartbeat, then for ``get
    nodes`` to list every node and ``tether ls`` to show them; returns the figures of the join
    (what did not happen is null)."""
    lightweight = params.nodes - 1
    deadline = time.monotonic() + params.join_timeout
    root_cpu_before = cpu_seconds(site.root_pid)
    with Sampler(site.root_pid, fleet) as sampler:
        arrival = root_watch.wait_joined_and_connected(
            fleet, lightweight, deadline, "joins", lambda line: print(line, flush=True)
        )
        joined = arrival.joined
        heartbeating = None
        while time.monotonic() < deadline:
            if fleet.heartbeats()["nodes_published"] >= joined:
                heartbeating = fleet.seconds_since_start(now_ns())
                break
            time.sleep(0.5)
        expected = joined + 1  # and the real node
        listed, polls, all_listed = root_watch.poll_listing(
            site.get_nodes_argv(),
            node_site.listed_nodes,
            expected,
            fleet=fleet,
            deadline=deadline,
            interval=LIST_POLL_INTERVAL,
            key="listed",
            label="get nodes",
            timeout=COMMAND_TIMEOUT,
        )
        print(
            f"  get nodes: {len(listed)} of {expected} nodes listed"
            + (f" at {all_listed:.1f}s" if all_listed is not None else " (timed out)"),
            flush=True,
        )
        ls_rows, in_ls = None, None
        try:
            _, out = run(site.ls_argv(), site.user_env, COMMAND_TIMEOUT)
            ls_rows = node_site.ls_rows(out)
            in_ls = fleet.seconds_since_start(now_ns())
        except RunFailed as exc:
            print(f"  tether ls: {exc}", flush=True)
        print(f"  tether ls: {ls_rows} rows at {_fmt(in_ls, '.1f')}s", flush=True)
        state = fleet.snapshot()
    joins = sorted(state.joined, key=lambda j: int(j["at"]))
    return {
        "lightweight_target": lightweight,
        "joined": joined,
        "refused": len(state.failed),
        "refusals": [f"{f['node']}: {f['error']}" for f in state.failed[:5]],
        "tunnels_up": state.connected_count,
        "heartbeating": fleet.heartbeats()["nodes_published"],
        "listed": len(listed),
        "ls_rows": ls_rows,
        "seconds_from_start": {
            "joins_done": arrival.joins_done,
            "tunnels_up": arrival.tunnels_up,
            "all_heartbeating": heartbeating,
            "all_listed_in_get_nodes": all_listed,
            "seen_in_tether_ls": in_ls if ls_rows is not None and ls_rows >= expected else None,
        },
        "join_seconds": spread([float(j["join_s"]) for j in joins]),
        **root_watch.join_costs(site.root_pid, root_cpu_before, sampler, fleet, "node"),
        "list_polls": polls,
        "join_in_join_order": [float(j["join_s"]) for j in joins],
    }


# --- profiling --------------------------------------------------------------------------------

#: functions whose inclusive share of the root's samples says where scale costs (see the report)
WATCHED = (
    "do_handshake",  # TLS: a heartbeat's new connection, a tunnel's
    "publish",  # auth storing a node's heartbeat
    "forward",  # the proxy passing a node's /v1 call on to auth
    "trust_watch",  # the proxy answering a node's trust watch from its copy
    "get_resources",
    "list_targets",
    "record_tunnel_heartbeats",
    "_heartbeat",
)


def profile_many(site: NodeSite, out_dir: pathlib.Path, idle_seconds: float) -> dict[str, Any]:
    """py-spy on the root while it idles with every node, then during one ``tether ls``,
    ``get nodes`` and ``ssh`` run each (not measured)."""
    found: dict[str, Any] = {}
    with root_watch.profiler(out_dir, site.root_pid, "idle"):
        time.sleep(idle_seconds)
    found["idle"] = root_watch.summary(out_dir, "idle", WATCHED)
    for name, argv, env in (
        ("ls", site.ls_argv(), site.user_env),
        ("get_nodes", site.get_nodes_argv(), None),
        ("ssh", site.ssh_argv(), site.user_env),
    ):
        with root_watch.profiler(out_dir, site.root_pid, name), contextlib.suppress(RunFailed):
            run(argv, env, COMMAND_TIMEOUT)
        found[name] = root_watch.summary(out_dir, name, WATCHED)
    return found


# --- the report -------------------------------------------------------------------------------


def build_report(
    machine_info: dict[str, Any],
    params: Params,
    phases: dict[str, Phase],
    join: dict[str, Any] | None,
    load: dict[str, Any],
    missing: dict[str, str],
) -> dict[str, Any]:
    """The JSON document: both phases, the join, the ratios, the targets; null where not
    measured."""
    one, many = phases["one_node"], phases["many_nodes"]
    figures = root_watch.compared(one, many)
    ssh_ratio = figures["ratio_many_vs_one"]["ssh"]
    ls_many = figures["seconds"]["many_nodes"]["ls"]["median"]
    many_idle = many.idle or {}
    rss, cpu = many_idle.get("rss_mib"), many_idle.get("cpu_percent")
    return {
        "benchmark": NAME,
        "machine": machine_info,
        "load_average": load,
        "params": params.to_json(),
        "nodes_listed": {p.name: p.nodes_listed for p in (one, many)},
        **figures,
        "root_rss_bytes_per_added_node": root_watch.rss_per_added(
            one, many, many.nodes_listed - one.nodes_listed
        ),
        "targets_met": {
            "ssh": None if ssh_ratio is None else ssh_ratio <= SSH_TARGET,
            "ls": None if ls_many is None else ls_many < LS_TARGET_SECONDS,
            "root_rss": None if rss is None else rss < RSS_TARGET_MIB,
            "root_idle_cpu": None if cpu is None else cpu < IDLE_CPU_TARGET_PERCENT,
        },
        "join": join,
        "checks": {
            p.name: {"tether_ls_rows": p.ls_rows, "get_nodes_listed": p.get_nodes_listed}
            for p in (one, many)
        },
        **root_watch.raw_samples(one, many),
        "missing": missing,
    }


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "MISSED"


def table(report: dict[str, Any]) -> str:
    """The printed summary: both phases side by side with ratios, the targets, then the join."""
    listed = report["nodes_listed"]
    header = ["figure", f"{listed['one_node']} node", f"{listed['many_nodes']} nodes", "many / one"]
    labels = {
        "ssh": f"`{report['params']['ssh_command']}` s",
        "ls": "`tether ls` s",
        "get_nodes": "`tetherctl get nodes` s",
    }
    rows = root_watch.figure_rows(report, PHASES, labels)
    lines = tables.grid(header, rows)
    per_node = report["root_rss_bytes_per_added_node"]
    lines.append(f"root memory per added node: {_fmt(per_node and per_node / 1024, '.1f')} KiB")
    met = report["targets_met"]
    lines += [
        f"target: ssh with every node within {SSH_TARGET}x of one node: {_verdict(met['ssh'])}",
        f"target: `tether ls` with every node under {LS_TARGET_SECONDS:g} s: {_verdict(met['ls'])}",
        f"target: root RSS with every node under {RSS_TARGET_MIB:.0f} MiB: "
        f"{_verdict(met['root_rss'])}",
        f"target: root idle CPU with every node under {IDLE_CPU_TARGET_PERCENT:g}% of a core: "
        f"{_verdict(met['root_idle_cpu'])}",
    ]
    join = report["join"]
    if join:
        at, js = join["seconds_from_start"], join["join_seconds"]
        beats = join.get("heartbeats_after") or {}
        lines += [
            "",
            f"join of {join['lightweight_target']} lightweight nodes: {join['joined']} joined, "
            f"{join['refused']} refused, {join['tunnels_up']} tunnels up, "
            f"{join['heartbeating']} heartbeating, {join['listed']} listed in get nodes and "
            f"{join['ls_rows']} rows in tether ls (bench-node included)",
            f"  seconds from start: joins done {_fmt(at['joins_done'], '.1f')}, tunnels up "
            f"{_fmt(at['tunnels_up'], '.1f')}, all heartbeating "
            f"{_fmt(at['all_heartbeating'], '.1f')}, all listed in get nodes "
            f"{_fmt(at['all_listed_in_get_nodes'], '.1f')}, seen in tether ls "
            f"{_fmt(at['seen_in_tether_ls'], '.1f')}",
            "  join s (median of the first / last tenth in join order, max): "
            f"{_fmt(js['first_tenth_median'])} / {_fmt(js['last_tenth_median'])}, "
            f"max {_fmt(js['max'])}",
            f"  root while joining: {join['root_cpu_seconds']} CPU s, RSS up to "
            f"{join['root_peak_rss_mib']} MiB; the nodes' processes: "
            f"{join['node_processes_cpu_seconds']} CPU s",
        ]
        if beats:
            lines.append(
                f"  heartbeats by the end: {beats['sent']} sent, {beats['refused']} failed; "
                f"latency of the last period: median up to "
                f"{_fmt(beats['period_latency_median_s_worst'])} s, max "
                f"{_fmt(beats['period_latency_max_s'])} s"
            )
            lines += [f"  heartbeat error: {e}" for e in beats["errors"]]
        lines += [f"  refused: {refusal}" for refusal in join["refusals"]]
    lines += root_watch.failure_lines(report)
    return "\n".join(lines)


WORDS = root_watch.Words(
    benchmark="Many tunnel-mode nodes on loopback: one cluster",
    member="node",
    members="nodes",
    counted="nodes_listed",
    counted_as="nodes listed",
    joined_label="joined",
    polls=("list_polls", "listed"),
    polled_label="listed in get nodes",
    complete=("all_listed_in_get_nodes", "all listed"),
    latency=("join_in_join_order", "join (pin check + POST /webapi/join)"),
    site="cluster",
    targets=f"ssh <= {SSH_TARGET}x, ls < {LS_TARGET_SECONDS:g} s",
)


def chart(report: dict[str, Any], path: pathlib.Path) -> bool:
    """The join over time, join latency in join order, the root meanwhile, and the medians
    one vs many."""
    return root_watch.chart(report, path, WORDS)


def index_line(report: dict[str, Any], json_name: str, png_name: str | None) -> str:
    """One line of ``results/README.md``: headline figures, machine, files."""
    summary = machine.summary(report["machine"])
    return root_watch.index_line(report, json_name, png_name, WORDS, summary)


def parse_args(argv: list[str]) -> argparse.Namespace:
    return root_watch.parse_args(
        argv,
        prog="many_nodes.py",
        doc=__doc__,
        quick="200 nodes, 5 ssh runs, 3 listing runs, 3 x 10 s idle (a few minutes)",
        options=FLEET_OPTIONS,
        profile="also record the root tetherd with py-spy while it idles with every node and "
        "during one command of each kind",
    )


def main(argv: list[str]) -> int:
    """Start the site, measure one node, join the others, measure again; write the results."""
    args = parse_args(argv)
    params = Params.from_args(args)
    started = time.monotonic()
    load_before = os.getloadavg()
    machine_info = machine.describe()
    # before the root starts: it inherits the limit
    open_files = lift_open_files(params.nodes * ROOT_SOCKETS_PER_NODE + 1000)
    phases = {name: Phase(name) for name in PHASES}
    join: dict[str, Any] | None = None
    missing: dict[str, str] = {}
    profiles: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        print(f"starting a cluster and its node {node_site.NODE}", flush=True)
        site: NodeSite | None = root_watch.start_site(stack, open_node_site, missing)
        if site is not None:
            phases["one_node"].nodes_listed = 1
            measure_phase(phases["one_node"], site, params)
            lightweight = params.nodes - 1
            print(
                f"joining {lightweight} lightweight nodes ({params.node_processes} processes, "
                f"{params.join_concurrency} joins at a time)",
                flush=True,
            )
            fleet = stack.enter_context(
                node_fleet(
                    proxy=site.proxy,
                    ca_pin=site.ca_pin,
                    token=site.token,
                    first=1,
                    count=lightweight,
                    processes=params.node_processes,
                    concurrency=params.join_concurrency,
                )
            )
            join = join_nodes(site, params, fleet)
            if fleet.stderr_tail():
                join["node_processes_stderr_tail"] = fleet.stderr_tail()
            phases["many_nodes"].nodes_listed = join["listed"]
            if join["listed"] < params.nodes:
                missing["nodes"] = (
                    f"{join['listed']} of {params.nodes} nodes listed after "
                    f"{params.join_timeout:g}s: the figures are for {join['listed']} nodes"
                )
            measure_phase(phases["many_nodes"], site, params)
            join["heartbeats_after"] = fleet.heartbeats()
            if args.profile:
                print(f"profiling the root with py-spy into {args.profile}", flush=True)
                try:
                    profiles = profile_many(site, args.profile, params.idle_seconds)
                except ssh_profile.ProfilerUnavailable as exc:
                    profiles = {"missing": str(exc)}
                args.profile.mkdir(parents=True, exist_ok=True)
                (args.profile / "summary.txt").write_text(profile_text(profiles), encoding="utf-8")
        print("stopping every process", flush=True)
    load = root_watch.load_average(load_before)
    report = build_report(machine_info, params, phases, join, load, missing)
    report["params"]["open_files"] = open_files
    if profiles:
        report["profiles"] = profiles
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)

    results.save_report(NAME, report, args, table=table, chart=chart, index_line=index_line)
    failed = any(p.failures for p in phases.values()) or "site" in missing
    return 1 if failed or (join is not None and join["refused"]) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
