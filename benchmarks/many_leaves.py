"""Many leaf clusters: one root with 1,000 leaves, against the same root with one leaf.

One run starts, on 127.0.0.1, a root cluster and one real leaf (``leaf0``: its own ``tetherd``,
a node ``leaf-node`` in tunnel mode, the guide's role mapping; ``_benchlib/trust_site.py``),
measures the root with that one leaf, then joins ``--leaves`` - 1 lightweight leaves (each its
own CAs, the real handshake and a real tunnel, many per process; ``_benchlib/leaves.py``) and
measures the same figures again, in the same run:

- ``tether ssh --cluster=leaf0 visitor@leaf-node true``: wall time, a fresh client each run as
  a user types it, median and p90 of ``--runs`` runs after one discarded warm-up; the ratio
  many/one is reported against the target (within 1.2x);
- ``tether clusters`` (the root user's view) and ``tetherctl get rc --format=json`` (the root
  admin's): wall time, median of ``--list-runs`` runs after one warm-up;
- the root ``tetherd``'s resident memory (VmRSS) and CPU (% of one core, from /proc) while idle
  with every tunnel up (the median of 3 windows of ``--idle-seconds``); its peak memory (VmHWM)
  and CPU while leaves join;
- how long the leaves take to come online: every handshake answered, every tunnel up (the
  leaves' processes say so), and every leaf ``online`` in ``tetherctl get rc`` (polled once
  the tunnels are up); and each handshake's latency in join order.

The table, ``--json FILE`` and ``benchmarks/results/many_leaves-<stamp>.json`` / ``.png`` carry
every raw sample, the ratios and the machine described. A leaf that does not join or come
online within ``--join-timeout`` is reported, and the figures are those of the leaves that did.
``--profile DIR`` records the root ``tetherd`` with py-spy while the leaves join and during one
extra ``ssh``, ``clusters`` and ``get rc`` run with every leaf online (nonblocking sampling: the
join figures are taken under it; the measured runs are not).

    python benchmarks/many_leaves.py [--quick] [--json FILE] [--leaves N] [--runs N]
        [--list-runs N] [--idle-seconds S] [--join-timeout S] [--profile DIR]
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
    leaves,
    results,
    root_watch,
    ssh_profile,
    tables,
    trust_site,
)
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
from _benchlib.trust_site import TrustSite  # noqa: E402

_fmt = tables.fmt

NAME = "many_leaves"
PHASES = ("one_leaf", "many_leaves")
FIGURES = ("ssh", "clusters", "get_rc")
#: the target this harness reports against (issue "Trusted clusters end to end", item 12)
SSH_TARGET = 1.2  # ssh to leaf0's node with every leaf joined, at most this times one leaf's
COMMAND_TIMEOUT = 120.0
RC_POLL_INTERVAL = 2.0  # seconds between `get rc` polls while waiting for every leaf online

FLEET_OPTIONS = root_watch.FleetOptions(
    member="leaf",
    members="leaves",
    real="leaf0",
    lists="`tether clusters` and `get rc`",
    joined="join and come online",
    join="handshakes",
    count=(1000, 50),
    idle_seconds=(60.0, 5.0),
    join_timeout=(480.0, 60.0),
    processes=2,
    concurrency=4,
)


# --- the sites: looked up at call time, so tests can stub them -------------------------------


def open_trust_site() -> AbstractContextManager[TrustSite]:
    """The root, the real leaf ``leaf0`` and its node, and a logged-in root user."""
    return trust_site.trust_site()


def leaf_fleet(**kwargs: Any) -> AbstractContextManager[leaves.LeafFleet]:
    """The lightweight leaves' processes (see ``_benchlib/leaves.py``)."""
    return leaves.fleet(**kwargs)


# --- parameters -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Params:
    """What one run measures; stored in the results so figures are read with their sizes."""

    quick: bool
    leaves: int
    ssh_runs: int
    list_runs: int
    idle_seconds: float
    join_timeout: float
    leaf_processes: int
    join_concurrency: int
    tether_program: str
    warmup_runs: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Params":
        size = root_watch.sizes(args, FLEET_OPTIONS)
        return cls(
            quick=args.quick,
            leaves=size.count,
            ssh_runs=size.ssh_runs,
            list_runs=size.list_runs,
            idle_seconds=size.idle_seconds,
            join_timeout=size.join_timeout,
            leaf_processes=args.leaf_processes,
            join_concurrency=args.join_concurrency,
            tether_program=" ".join(trust_site.console_script("tether")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "lightweight_leaves": self.leaves - 1,
            "real_leaf": trust_site.LEAF,
            "ssh_command": f"tether ssh --cluster={trust_site.LEAF} "
            f"{trust_site.LOGIN}@{trust_site.NODE} true",
            "clusters_command": "tether clusters",
            "get_rc_command": "tetherctl -c ROOT_CONFIG get rc --format=json",
            "ssh_aggregate": f"median and p90 (nearest rank) of {self.ssh_runs} runs",
            "list_aggregate": f"median of {self.list_runs} runs",
            "idle": f"root tetherd with nothing but tunnels: cpu_percent is the median of "
            f"{root_watch.IDLE_WINDOWS} consecutive windows of {self.idle_seconds:g} s "
            "(cpu_percent_windows has each)",
            "cpu": "% of one core: (utime + stime) / wall time, from /proc/PID/stat; "
            "root_cpu_median: the root's utime + stime during one run (its idle work included)",
            "rss": "VmRSS of the root tetherd, from /proc/PID/status; peak_rss_mib is VmHWM, "
            "the peak since it started (a login's password hashing included), and the join's "
            "root_peak_rss_mib the highest VmRSS sampled every second while leaves join",
            "online": "status.connection == 'online' in tetherctl get rc (a tunnel heartbeats)",
            "rc_poll_interval_seconds": RC_POLL_INTERVAL,
            "daemons_log_severity": daemon_settings.LOG_DESCRIPTION,
            "settings_changed": {
                "root proxy_service.rate_limit": trust_site.FLEET_RATE_LIMIT["proxy_service"][
                    "rate_limit"
                ],
                "why": "every leaf joins from 127.0.0.1, as a fleet behind one NAT would; the "
                "default per-address limit would refuse most of them",
            },
            "targets": {"ssh_ratio_many_vs_one_at_most": SSH_TARGET},
        }


@dataclasses.dataclass
class Phase(root_watch.Phase):
    """Every sample of one phase (one leaf, or every leaf), or why there are none."""

    figure_names: tuple[str, ...] = FIGURES
    leaves_online: int = 0
    #: what the last ``tether clusters`` and ``get rc`` showed online (a check, not a figure)
    clusters_online_rows: int | None = None
    get_rc_online: int | None = None


def measure_phase(phase: Phase, site: TrustSite, params: Params) -> None:
    """Idle root first (nothing else running), then the listings, then the sessions."""
    measure_idle(phase, site.root_pid, params.idle_seconds)
    commands = {
        "get_rc": (site.get_rc_argv(), None, params.list_runs),
        "clusters": (site.clusters_argv(), site.user_env, params.list_runs),
        "ssh": (site.ssh_argv(), site.user_env, params.ssh_runs),
    }

    def seen(figure: str, out: str) -> None:
        if figure == "get_rc":
            phase.get_rc_online = len(trust_site.online_leaves(out))
        elif figure == "clusters":
            phase.clusters_online_rows = sum(
                1 for line in out.splitlines()[2:] if " online " in f" {line} "
            )

    measure_commands(
        phase,
        commands,
        site.root_pid,
        warmup_runs=params.warmup_runs,
        timeout=COMMAND_TIMEOUT,
        seen=seen,
    )


# --- joining the lightweight leaves -------------------------------------------------------------


def join_leaves(site: TrustSite, params: Params, fleet: Any) -> dict[str, Any]:
    """Wait for every lightweight leaf's handshake and tunnel, then for ``get rc`` to show
    every leaf online; returns the figures of the join (what did not happen is null)."""
    lightweight = params.leaves - 1
    deadline = time.monotonic() + params.join_timeout
    root_cpu_before = cpu_seconds(site.root_pid)
    with Sampler(site.root_pid, fleet) as sampler:
        arrival = root_watch.wait_joined_and_connected(
            fleet, lightweight, deadline, "handshakes", lambda line: print(line, flush=True)
        )
        expected = arrival.joined + 1  # and leaf0
        online, polls, all_online = root_watch.poll_listing(
            site.get_rc_argv(),
            trust_site.online_leaves,
            expected,
            fleet=fleet,
            deadline=deadline,
            interval=RC_POLL_INTERVAL,
            key="online",
            label="get rc",
            timeout=COMMAND_TIMEOUT,
        )
        print(
            f"  get rc: {len(online)} of {expected} leaves online"
            + (f" at {all_online:.1f}s" if all_online is not None else " (timed out)"),
            flush=True,
        )
        state = fleet.snapshot()
    joins = sorted(state.joined, key=lambda j: int(j["at"]))
    return {
        "lightweight_target": lightweight,
        "joined": len(state.joined),
        "refused": len(state.failed),
        "refusals": [f"{f['leaf']}: {f['error']}" for f in state.failed[:5]],
        "tunnels_up": state.connected_count,
        "online": len(online),
        "seconds_from_start": {
            "handshakes_done": arrival.joins_done,
            "tunnels_up": arrival.tunnels_up,
            "all_online_in_get_rc": all_online,
        },
        "handshake_seconds": {
            "pin_check": spread([float(j["trust_s"]) for j in joins]),
            "validate": spread([float(j["validate_s"]) for j in joins]),
        },
        **root_watch.join_costs(site.root_pid, root_cpu_before, sampler, fleet, "leaf"),
        "rc_polls": polls,
        "validate_in_join_order": [float(j["validate_s"]) for j in joins],
    }


# --- profiling --------------------------------------------------------------------------------


#: functions whose inclusive share of the root's samples says where scale costs (see the report)
WATCHED = (
    "reload_trust",  # the proxy reloading every leaf's CA into its TLS context, per join
    "other_tls_cas",  # every other cluster's CA read and parsed from storage
    "_rebuild",  # auth's trust snapshot rebuilt from the store's items, per batch of changes
    "validate_leaf",
    "identity_from_peer",  # a tunnel's certificate checked against every trusted CA
    "_key_id",
    "_with_connection",  # a remote_cluster's status: one storage range per leaf
    "get_resources",
    "_host_cas",  # the SSH front door: every cert_authority, for one cluster's host CAs
    "do_handshake",
)


def profile_many(site: TrustSite, out_dir: pathlib.Path) -> dict[str, Any]:
    """One ssh, clusters and get rc run each with py-spy on the root (not measured)."""
    with root_watch.profiler(out_dir, site.root_pid, "commands"):
        for argv, env in (
            (site.ssh_argv(), site.user_env),
            (site.clusters_argv(), site.user_env),
            (site.get_rc_argv(), None),
        ):
            with contextlib.suppress(RunFailed):
                run(argv, env, COMMAND_TIMEOUT)
    return root_watch.summary(out_dir, "commands", WATCHED)


# --- the report -------------------------------------------------------------------------------


def build_report(
    machine_info: dict[str, Any],
    params: Params,
    phases: dict[str, Phase],
    join: dict[str, Any] | None,
    load: dict[str, Any],
    missing: dict[str, str],
) -> dict[str, Any]:
    """The JSON document: both phases, the join, the ratios; null where not measured."""
    one, many = phases["one_leaf"], phases["many_leaves"]
    figures = root_watch.compared(one, many)
    ssh_ratio = figures["ratio_many_vs_one"]["ssh"]
    return {
        "benchmark": NAME,
        "machine": machine_info,
        "load_average": load,
        "params": params.to_json(),
        "leaves_online": {p.name: p.leaves_online for p in (one, many)},
        **figures,
        "root_rss_bytes_per_added_leaf": root_watch.rss_per_added(
            one, many, many.leaves_online - one.leaves_online
        ),
        "targets_met": {
            "ssh": None if ssh_ratio is None else ssh_ratio <= SSH_TARGET,
        },
        "join": join,
        "checks": {
            p.name: {
                "tether_clusters_online_rows": p.clusters_online_rows,
                "get_rc_online": p.get_rc_online,
            }
            for p in (one, many)
        },
        **root_watch.raw_samples(one, many),
        "missing": missing,
    }


def table(report: dict[str, Any]) -> str:
    """The printed summary: both phases side by side with ratios, then the join."""
    online = report["leaves_online"]
    header = [
        "figure",
        f"{online['one_leaf']} leaf",
        f"{online['many_leaves']} leaves",
        "many / one",
    ]
    labels = {
        "ssh": f"`{report['params']['ssh_command']}` s",
        "clusters": "`tether clusters` s",
        "get_rc": "`tetherctl get rc` s",
    }
    rows = root_watch.figure_rows(report, PHASES, labels)
    lines = tables.grid(header, rows)
    per_leaf = report["root_rss_bytes_per_added_leaf"]
    lines.append(f"root memory per added leaf: {_fmt(per_leaf and per_leaf / 1024, '.1f')} KiB")
    met = report["targets_met"]["ssh"]
    verdict = "n/a" if met is None else "met" if met else "MISSED"
    lines.append(f"target: ssh with every leaf within {SSH_TARGET}x of one leaf: {verdict}")
    join = report["join"]
    if join:
        at = join["seconds_from_start"]
        hs = join["handshake_seconds"]
        lines += [
            "",
            f"join of {join['lightweight_target']} lightweight leaves: {join['joined']} joined, "
            f"{join['refused']} refused, {join['tunnels_up']} tunnels up, {join['online']} "
            "leaves online in get rc (leaf0 included)",
            f"  seconds from start: handshakes done {_fmt(at['handshakes_done'], '.1f')}, "
            f"tunnels up {_fmt(at['tunnels_up'], '.1f')}, all online in get rc "
            f"{_fmt(at['all_online_in_get_rc'], '.1f')}",
            "  handshake s (median of the first / last tenth in join order, max): "
            f"validate {_fmt(hs['validate']['first_tenth_median'])} / "
            f"{_fmt(hs['validate']['last_tenth_median'])}, max {_fmt(hs['validate']['max'])}; "
            f"pin check {_fmt(hs['pin_check']['first_tenth_median'])} / "
            f"{_fmt(hs['pin_check']['last_tenth_median'])}",
            f"  root while joining: {join['root_cpu_seconds']} CPU s, RSS up to "
            f"{join['root_peak_rss_mib']} MiB; the leaves' processes: "
            f"{join['leaf_processes_cpu_seconds']} CPU s",
        ]
        for refusal in join["refusals"]:
            lines.append(f"  refused: {refusal}")
    lines += root_watch.failure_lines(report)
    return "\n".join(lines)


WORDS = root_watch.Words(
    benchmark="Many leaf clusters on loopback: one root",
    member="leaf",
    members="leaves",
    counted="leaves_online",
    counted_as="leaves online",
    joined_label="handshakes answered",
    polls=("rc_polls", "online"),
    polled_label="online in get rc",
    complete=("all_online_in_get_rc", "all online"),
    latency=("validate_in_join_order", "handshake: POST /webapi/trustedclusters/validate"),
    site="root",
    targets=f"ssh target <= {SSH_TARGET}x",
)


def chart(report: dict[str, Any], path: pathlib.Path) -> bool:
    """The join over time, handshake latency in join order, and the medians one vs many."""
    return root_watch.chart(report, path, WORDS)


def index_line(report: dict[str, Any], json_name: str, png_name: str | None) -> str:
    """One line of ``results/README.md``: headline figures, machine, files."""
    summary = machine.summary(report["machine"])
    return root_watch.index_line(report, json_name, png_name, WORDS, summary)


def parse_args(argv: list[str]) -> argparse.Namespace:
    return root_watch.parse_args(
        argv,
        prog="many_leaves.py",
        doc=__doc__,
        quick="50 leaves, 5 ssh runs, 3 listing runs, 3 x 5 s idle (about two minutes)",
        options=FLEET_OPTIONS,
        profile="also record the root tetherd with py-spy while leaves join and during one "
        "command of each kind with every leaf online",
    )


def main(argv: list[str]) -> int:
    """Start the site, measure one leaf, join the others, measure again; write the results."""
    args = parse_args(argv)
    params = Params.from_args(args)
    started = time.monotonic()
    load_before = os.getloadavg()
    machine_info = machine.describe()
    phases = {name: Phase(name) for name in PHASES}
    join: dict[str, Any] | None = None
    missing: dict[str, str] = {}
    profiles: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        print(
            f"starting a root, the real leaf {trust_site.LEAF} and its node {trust_site.NODE}",
            flush=True,
        )
        site: TrustSite | None = root_watch.start_site(stack, open_trust_site, missing)
        if site is not None:
            phases["one_leaf"].leaves_online = 1
            measure_phase(phases["one_leaf"], site, params)
            lightweight = params.leaves - 1
            print(
                f"joining {lightweight} lightweight leaves ({params.leaf_processes} processes, "
                f"{params.join_concurrency} handshakes at a time)",
                flush=True,
            )
            profiler: AbstractContextManager[None] = contextlib.nullcontext()
            if args.profile:
                try:
                    profiler = root_watch.profiler(args.profile, site.root_pid, "join")
                except ssh_profile.ProfilerUnavailable as exc:
                    profiles["missing"] = str(exc)
            fleet = stack.enter_context(
                leaf_fleet(
                    proxy=site.root_proxy,
                    ca_pin=site.root_ca_pin,
                    token=site.token,
                    first=1,
                    count=lightweight,
                    processes=params.leaf_processes,
                    concurrency=params.join_concurrency,
                )
            )
            with profiler:
                join = join_leaves(site, params, fleet)
            if args.profile and "missing" not in profiles:
                profiles["join"] = root_watch.summary(args.profile, "join", WATCHED)
            if fleet.stderr_tail():
                join["leaf_processes_stderr_tail"] = fleet.stderr_tail()
            phases["many_leaves"].leaves_online = join["online"]
            if join["online"] < params.leaves:
                missing["leaves"] = (
                    f"{join['online']} of {params.leaves} leaves online after "
                    f"{params.join_timeout:g}s: the figures are for {join['online']} leaves"
                )
            measure_phase(phases["many_leaves"], site, params)
            if args.profile and "missing" not in profiles:
                print(f"profiling the root with py-spy into {args.profile}", flush=True)
                profiles["commands"] = profile_many(site, args.profile)
                (args.profile / "summary.txt").write_text(profile_text(profiles), encoding="utf-8")
        print("stopping every process", flush=True)
    load = root_watch.load_average(load_before)
    report = build_report(machine_info, params, phases, join, load, missing)
    if profiles:
        report["profiles"] = profiles
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)

    results.save_report(NAME, report, args, table=table, chart=chart, index_line=index_line)
    failed = any(p.failures for p in phases.values()) or "site" in missing
    return 1 if failed or (join is not None and join["refused"]) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
