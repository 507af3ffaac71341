"""Database access: ``pgbench`` and ``mysqlslap`` through Tether against the database direct.

One run starts, on 127.0.0.1, a root and a leaf cluster, a database service in each, and for
each service a private PostgreSQL and MariaDB set up as ``docs/databases.md`` says
(``_benchlib/db_sites.py``), and measures every leg in the same run, interleaved round by round:

- ``direct`` (the baseline): the client straight to the leaf's server over TLS, presenting a
  client certificate (``CN=alice``, from a client CA the server also trusts);
- ``local``: through ``tether proxy db --tunnel`` to the root cluster's database service;
- ``leaf``: the root user through ``tether proxy db --tunnel --cluster=leaf`` (root proxy ->
  the leaf's tunnel -> leaf proxy -> the database service's tunnel -> the server).

PostgreSQL: ``pgbench -S`` (select-only) and the default TPC-B-like script, at 1 and 8 clients
(``-c N -j N``), ``-T`` seconds each, ``-r`` for per-statement latencies: TPS (without the
initial connection time), the ratio to ``direct``, the latency per query (the mean of the
script's SQL statements' average latencies) and the latency a leg adds per query (its figure
minus ``direct``'s of the same round), medians over the rounds. MariaDB: ``mysqlslap`` running
``SELECT 1`` ``--number-of-queries`` times at 1 and 8 clients: queries/s and the ratio.

Targets (issue "Database access"), reported and never tuned away: select-only TPS at 8
clients through a leaf >= 0.5x direct; the latency added per query (select-only, 1 client)
< 0.5 ms. ``--profile DIR`` records py-spy on the leaf leg's processes (the local tunnel, the
root and leaf proxies, the leaf's database service) during one select-only 8-client run.

    python benchmarks/db_access.py [--quick] [--json FILE] [--seconds S] [--rounds N]
        [--queries N] [--profile DIR]
"""

# No ``from __future__ import annotations`` here: tests load harnesses without registering
# them in sys.modules, and dataclasses then cannot resolve string annotations.
import argparse
import contextlib
import dataclasses
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, from run_all.py, or imported by a test
    sys.path.insert(0, str(HERE))

import machine  # noqa: E402
from _benchlib import daemon_settings, db_sites, results, ssh_profile, tables  # noqa: E402
from _benchlib.db_sites import Endpoint  # noqa: E402

NAME = "db_access"
LEGS = ("direct", "local", "leaf")
TETHER_LEGS = ("local", "leaf")
BASELINE = "direct"
WORKLOADS = {"select_only": ["-S"], "tpcb_like": []}
CLIENTS = (1, 8)
SLAP_QUERY = "SELECT 1"
#: the targets this harness reports against (issue "Database access"), never tuned towards
TPS_TARGET = 0.5  # select-only TPS at 8 clients through a leaf, at least this times direct
LATENCY_TARGET_MS = 0.5  # latency added per query (select-only, 1 client), below this
MAX_FAILURES = 3  # per leg and figure; a leg that keeps failing is dropped
PROFILE_SECONDS = 10  # the profiled run's -T, also with --quick: enough samples to read


@dataclasses.dataclass(frozen=True)
class Params:
    """What one run measures; stored in the results so figures are read with their sizes."""

    quick: bool
    seconds: int
    rounds: int
    slap_queries: int
    profile_seconds: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Params":
        seconds = args.seconds if args.seconds is not None else (3 if args.quick else 20)
        rounds = args.rounds if args.rounds is not None else (2 if args.quick else 3)
        queries = args.queries if args.queries is not None else (1000 if args.quick else 20000)
        if seconds < 1 or rounds < 1 or queries < 8:
            raise SystemExit("--seconds and --rounds must be at least 1, --queries at least 8")
        return cls(args.quick, seconds, rounds, queries, PROFILE_SECONDS)

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "pgbench": "pgbench -n -T SECONDS -c N -j N -r [-S] CONNINFO, scale "
            f"{db_sites.PGBENCH_SCALE}",
            "pgbench_workloads": {
                k: " ".join(v) or "(default TPC-B-like)" for k, v in WORKLOADS.items()
            },
            "clients": list(CLIENTS),
            "mysqlslap": f"mysqlslap --query={SLAP_QUERY!r} --concurrency=N "
            f"--number-of-queries={self.slap_queries} --iterations=1",
            "aggregate": f"median of {self.rounds} round(s), legs interleaved in each round",
            "latency_per_query": "mean of the script's SQL statements' average latencies (-r)",
            "added_latency": "leg's latency per query minus direct's, same round; median",
            "direct_tls": "sslmode=require with a client certificate (PostgreSQL); --ssl with "
            "a client certificate (MariaDB); the server verifies it, the client does not "
            "verify the server",
            "tether_legs_client_side": "plain TCP to tether proxy db --tunnel on 127.0.0.1",
            "daemons_log_severity": daemon_settings.LOG_DESCRIPTION,
            "targets": {
                "select_only_8_clients_leaf_tps_ratio_at_least": TPS_TARGET,
                "added_latency_ms_per_query_below": LATENCY_TARGET_MS,
            },
        }


# --- running the clients --------------------------------------------------------------------


class RunFailed(Exception):
    """A client exited non-zero or printed no figure; the message says what it printed."""


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_STATEMENT = re.compile(r"^\s+([0-9.]+)\s+\d+\s+(.*)$")
_SLAP = re.compile(r"Average number of seconds to run all queries: ([0-9.]+) seconds")


def run_pgbench(endpoint: Endpoint, workload: str, clients: int, seconds: int) -> dict[str, Any]:
    """One pgbench run: TPS, latency average and per-query latency (ms)."""
    argv = ["pgbench", "-n", "-T", str(seconds), "-c", str(clients), "-j", str(clients), "-r"]
    argv += [*WORKLOADS[workload], endpoint.conninfo(db_sites.PG_DATABASE)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=False)
    tps, latency = _TPS.search(done.stdout), _LATENCY.search(done.stdout)
    if done.returncode != 0 or tps is None or latency is None:
        said = (done.stderr or done.stdout).strip()[-300:]
        raise RunFailed(f"pgbench exit {done.returncode}: {said}")
    statements = [
        float(m.group(1))
        for line in done.stdout.split("statement latencies", 1)[-1].splitlines()
        if (m := _STATEMENT.match(line)) and not m.group(2).startswith("\\")
    ]
    return {
        "tps": float(tps.group(1)),
        "latency_ms": float(latency.group(1)),
        "per_query_ms": round(statistics.fmean(statements), 4) if statements else None,
        "statements": len(statements),
    }


def run_mysqlslap(endpoint: Endpoint, clients: int, queries: int) -> dict[str, Any]:
    """One mysqlslap run: seconds to run every query, and queries per second."""
    argv = ["mysqlslap", "--no-defaults", *endpoint.mysql_args()]
    argv += [
        f"--create-schema={db_sites.MARIA_DATABASE}",
        "--no-drop",
        f"--query={SLAP_QUERY}",
        f"--concurrency={clients}",
        f"--number-of-queries={queries}",
        "--iterations=1",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    found = _SLAP.search(done.stdout)
    if done.returncode != 0 or found is None:
        said = (done.stderr or done.stdout).strip()[-300:]
        raise RunFailed(f"mysqlslap exit {done.returncode}: {said}")
    seconds = float(found.group(1))
    return {"seconds": seconds, "qps": round(queries / seconds, 1) if seconds else None}


@dataclasses.dataclass
class Figures:
    """Every sample of one leg for one figure, and its failures."""

    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)


def _key(workload: str, clients: int) -> str:
    return f"{workload}_c{clients}"


def no_figures() -> dict[str, dict[str, Figures]]:
    """Every figure of every leg, no sample yet (what a site that cannot start reports)."""
    keys = [_key(w, c) for w in WORKLOADS for c in CLIENTS]
    keys += [_key("mysqlslap", c) for c in CLIENTS]
    return {key: {leg: Figures() for leg in LEGS} for key in keys}


def measure(site: db_sites.Site, params: Params) -> dict[str, dict[str, Figures]]:
    """Every leg of every figure, round by round, the legs' order rotating each round."""
    figures = no_figures()
    for round_no in range(params.rounds):
        order = LEGS[round_no % len(LEGS) :] + LEGS[: round_no % len(LEGS)]
        print(f"round {round_no + 1}/{params.rounds} (legs {', '.join(order)}):", flush=True)
        for workload in (*WORKLOADS, "mysqlslap"):
            for clients in CLIENTS:
                key = _key(workload, clients)
                shown = []
                for leg in order:
                    leg_figures = figures[key][leg]
                    if len(leg_figures.failures) >= MAX_FAILURES:
                        continue
                    try:
                        if workload == "mysqlslap":
                            sample = run_mysqlslap(site.mariadb[leg], clients, params.slap_queries)
                            shown.append(f"{leg} {sample['qps']:.0f} q/s")
                        else:
                            sample = run_pgbench(
                                site.postgres[leg], workload, clients, params.seconds
                            )
                            shown.append(f"{leg} {sample['tps']:.0f} tps")
                    except (RunFailed, subprocess.TimeoutExpired) as exc:
                        leg_figures.failures.append(str(exc))
                        shown.append(f"{leg} FAILED")
                        continue
                    leg_figures.samples.append({"round": round_no, **sample})
                print(f"  {key}: {'; '.join(shown)}", flush=True)
    return figures


# --- profile --------------------------------------------------------------------------------


def profile_leaf(site: db_sites.Site, out_dir: pathlib.Path, seconds: int) -> dict[str, Any]:
    """py-spy on the leaf leg's processes during one select-only 8-client pgbench run."""
    spy = ssh_profile.py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "leaf-select_only_c8"
    with ssh_profile._attached(spy, site.leaf_pids, prefix):
        time.sleep(0.5)  # py-spy attached before the load starts
        ran = run_pgbench(site.postgres["leaf"], "select_only", 8, seconds)
    roles = {}
    for role in site.leaf_pids:
        file = prefix.with_name(f"{prefix.name}-{ssh_profile._slug(role)}.txt")
        roles[role] = {"file": file.name, **ssh_profile.summarize(file)}
        print(f"  {file.name}: {roles[role]['samples']} samples", flush=True)
    run = {"pgbench": "-S -c 8 -j 8", **ran}
    summary = {"rate_hz": ssh_profile.RATE, "run": run, "roles": roles}
    (out_dir / "summary.txt").write_text(_profile_text(summary), encoding="utf-8")
    return summary


def _profile_text(summary: dict[str, Any]) -> str:
    run = summary["run"]
    lines = [
        f"py-spy at {summary['rate_hz']} Hz during pgbench {run['pgbench']} through the leaf "
        f"({run['tps']:.0f} tps under the profiler)"
    ]
    for role, found in summary["roles"].items():
        lines += ["", f"== {role}: {found['samples']} samples", "  inclusive by package (%):"]
        lines += [f"    {v:5.1f}  {k}" for k, v in found.get("inclusive_by_package", {}).items()]
        lines.append("  where samples end (%):")
        lines += [f"    {v:5.1f}  {k}" for k, v in found.get("exclusive_top_functions", {}).items()]
    return "\n".join(lines) + "\n"


# --- the report -----------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return round(statistics.median(found), 4) if found else None


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


def summarize(figures: dict[str, dict[str, Figures]]) -> dict[str, Any]:
    """Medians per figure and leg, ratios to direct, latency added per query."""
    out: dict[str, Any] = {}
    for key, legs in figures.items():
        metric = "qps" if key.startswith("mysqlslap") else "tps"
        value = {leg: _median([s[metric] for s in f.samples]) for leg, f in legs.items()}
        entry: dict[str, Any] = {
            metric: value,
            f"ratio_vs_{BASELINE}": {leg: _ratio(value[leg], value[BASELINE]) for leg in LEGS},
        }
        if metric == "tps":
            entry["per_query_ms"] = {
                leg: _median([s["per_query_ms"] for s in f.samples]) for leg, f in legs.items()
            }
            base = {s["round"]: s["per_query_ms"] for s in legs[BASELINE].samples}
            entry["added_ms_per_query"] = {
                leg: _median(
                    [
                        s["per_query_ms"] - base[s["round"]]
                        for s in legs[leg].samples
                        if base.get(s["round"]) is not None and s["per_query_ms"] is not None
                    ]
                )
                for leg in TETHER_LEGS
            }
        out[key] = entry
    return out


def _met(value: float | None, ok: bool) -> bool | None:
    return None if value is None else ok


def build_report(
    machine_info: dict[str, Any],
    params: Params,
    figures: dict[str, dict[str, Figures]],
    load: dict[str, Any],
) -> dict[str, Any]:
    """The JSON document: medians, ratios, targets, every raw sample and failure."""
    summary = summarize(figures)
    tps_ratio = summary[_key("select_only", 8)][f"ratio_vs_{BASELINE}"]["leaf"]
    added = summary[_key("select_only", 1)]["added_ms_per_query"]
    return {
        "benchmark": NAME,
        "machine": machine_info,
        "load_average": load,
        "params": params.to_json(),
        "figures": summary,
        "targets_met": {
            "select_only_c8_leaf_tps_ratio": _met(tps_ratio, (tps_ratio or 0) >= TPS_TARGET),
            **{
                f"added_ms_per_query_select_only_c1_{leg}": _met(
                    added[leg], (added[leg] or 0) < LATENCY_TARGET_MS
                )
                for leg in TETHER_LEGS
            },
        },
        "samples": {
            key: {leg: f.samples for leg, f in legs.items()} for key, legs in figures.items()
        },
        "failures": {
            key: {leg: f.failures for leg, f in legs.items() if f.failures}
            for key, legs in figures.items()
            if any(f.failures for f in legs.values())
        },
    }


def _fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return tables.fmt(value, spec, suffix)


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "MISSED"


def table(report: dict[str, Any]) -> str:
    """The printed summary: TPS/queries per second, ratios, latency per query and added."""
    p, figures = report["params"], report["figures"]
    lines = [f"PostgreSQL, pgbench -T {p['seconds']} ({p['aggregate']}):"]
    rows = []
    for key, entry in figures.items():
        if "tps" not in entry:
            continue
        for leg in LEGS:
            rows.append(
                [
                    key,
                    leg,
                    _fmt(entry["tps"][leg]),
                    _fmt(entry[f"ratio_vs_{BASELINE}"][leg], ".3f", "x"),
                    _fmt(entry["per_query_ms"][leg], ".3f"),
                    _fmt(entry["added_ms_per_query"].get(leg), ".3f") if leg != BASELINE else "",
                ]
            )
    lines += tables.grid(
        ["workload", "leg", "TPS", f"/ {BASELINE}", "ms per query", "added ms per query"], rows
    )
    lines += ["", f"MariaDB, mysqlslap {SLAP_QUERY!r} x {p['slap_queries']}:"]
    rows = []
    for key, entry in figures.items():
        if "qps" not in entry:
            continue
        for leg in LEGS:
            rows.append(
                [
                    key,
                    leg,
                    _fmt(entry["qps"][leg]),
                    _fmt(entry[f"ratio_vs_{BASELINE}"][leg], ".3f", "x"),
                ]
            )
    lines += tables.grid(["workload", "leg", "queries/s", f"/ {BASELINE}"], rows)
    met = report["targets_met"]
    lines += [
        "",
        f"targets: select-only 8 clients through the leaf >= {TPS_TARGET}x direct: "
        f"{_verdict(met['select_only_c8_leaf_tps_ratio'])}; added latency per query "
        f"(select-only, 1 client) < {LATENCY_TARGET_MS} ms: "
        + ", ".join(
            f"{leg} {_verdict(met[f'added_ms_per_query_select_only_c1_{leg}'])}"
            for leg in TETHER_LEGS
        ),
    ]
    for key, legs in report["failures"].items():
        for leg, why in legs.items():
            lines.append(f"FAILED {key} {leg}: {why[-1]}")
    if report.get("missing"):
        lines.append(f"n/a every leg: {report['missing']}")
    return "\n".join(lines)


def chart(report: dict[str, Any], path: pathlib.Path) -> bool:
    """Ratios to direct per figure and leg, and the latency added per query; False without
    matplotlib."""
    plt = results.pyplot()
    if plt is None:
        return False
    p, m, figures = report["params"], report["machine"], report["figures"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    keys = list(figures)
    width = 0.38
    for i, leg in enumerate(TETHER_LEGS):
        ratios = [figures[k][f"ratio_vs_{BASELINE}"][leg] for k in keys]
        bars = left.bar(
            [x + (i - 0.5) * width for x in range(len(keys))],
            [r or 0 for r in ratios],
            width,
            label=leg,
            color=("tab:blue", "tab:orange")[i],
        )
        results.label_bars(left, bars, [tables.fmt(r, ".2f") for r in ratios], fontsize=7)
    left.axhline(TPS_TARGET, color="gray", linestyle="--", linewidth=1)
    left.set_xticks(range(len(keys)), keys, rotation=25, ha="right", fontsize=8)
    left.set_ylabel(f"TPS or queries/s / {BASELINE}")
    left.set_title(
        f"throughput vs direct (pgbench -T {p['seconds']}, mysqlslap x {p['slap_queries']}); "
        f"dashed: target {TPS_TARGET}x",
        fontsize=9,
    )
    left.legend(fontsize=8, loc="upper left")
    pg_keys = [k for k in keys if "added_ms_per_query" in figures[k]]
    for i, leg in enumerate(TETHER_LEGS):
        added = [figures[k]["added_ms_per_query"][leg] for k in pg_keys]
        bars = right.bar(
            [x + (i - 0.5) * width for x in range(len(pg_keys))],
            [a or 0 for a in added],
            width,
            label=leg,
            color=("tab:blue", "tab:orange")[i],
        )
        results.label_bars(right, bars, [tables.fmt(a, ".2f") for a in added], fontsize=7)
    right.axhline(LATENCY_TARGET_MS, color="gray", linestyle="--", linewidth=1)
    right.set_xticks(range(len(pg_keys)), pg_keys, rotation=25, ha="right", fontsize=8)
    right.set_ylabel("ms added per query (median)")
    right.set_title(f"latency added vs direct; dashed: target {LATENCY_TARGET_MS} ms", fontsize=9)
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"Database access on loopback: Tether vs direct ({m['date']})\n"
        f"{machine.summary(m)}\n{_short_version(m.get('postgresql'), 'PostgreSQL')}, "
        f"{_short_version(m.get('mariadb'), 'MariaDB')}",
        fontsize=9,
    )
    results.save_chart(plt, fig, path)
    return True


def _short_version(found: str | None, name: str) -> str:
    """``pgbench (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)`` -> ``PostgreSQL 15.20``; the
    last version in the line, as mysqlslap's is ``Ver 1.0 Distrib 10.11.19-MariaDB``."""
    versions = re.findall(r"\d+\.\d+(?:\.\d+)?", found or "")
    return f"{name} {versions[-1]}" if versions else f"no {name} client"


def index_line(report: dict[str, Any], json_name: str, png_name: str | None) -> str:
    """One line of ``results/README.md``: headline figures, machine, files."""
    f = report["figures"]
    parts = []
    for key in (_key("select_only", 1), _key("select_only", 8), _key("tpcb_like", 8)):
        tps = f[key]["tps"]
        ratio = f[key][f"ratio_vs_{BASELINE}"]
        parts.append(
            f"{key} TPS direct/local/leaf {'/'.join(_fmt(tps[leg]) for leg in LEGS)} "
            f"({'/'.join(_fmt(ratio[leg], '.2f', 'x') for leg in TETHER_LEGS)})"
        )
    added = f[_key("select_only", 1)]["added_ms_per_query"]
    slap = f[_key("mysqlslap", 8)]
    quick = " (--quick)" if report["params"]["quick"] else ""
    files = f"[json]({json_name})" + (f", [chart]({png_name})" if png_name else "")
    return (
        f"- {report['machine']['date']} `{NAME}`{quick}: {'; '.join(parts)}; added ms/query "
        f"(select-only, 1 client) local {_fmt(added['local'], '.2f')}, leaf "
        f"{_fmt(added['leaf'], '.2f')}; mysqlslap c8 q/s "
        f"{'/'.join(_fmt(slap['qps'][leg]) for leg in LEGS)}; "
        f"{machine.summary(report['machine'])}; {files}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="db_access.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 s pgbench runs, 2 rounds, 1000 mysqlslap queries"
    )
    parser.add_argument(
        "--seconds", type=int, metavar="S", help="pgbench -T per run (default 20, --quick 3)"
    )
    parser.add_argument(
        "--rounds", type=int, metavar="N", help="rounds of every leg (default 3, --quick 2)"
    )
    parser.add_argument(
        "--queries",
        type=int,
        metavar="N",
        help="mysqlslap queries per run (default 20000, --quick 1000)",
    )
    parser.add_argument(
        "--profile",
        type=pathlib.Path,
        metavar="DIR",
        help="also record py-spy profiles of the leaf leg's processes during one run here",
    )
    results.add_output_args(parser)
    return parser.parse_args(argv)


def _version(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    return done.stdout.strip() or None


def main(argv: list[str]) -> int:
    """Start the site, measure every leg, print the table, write the JSON, chart and index."""
    args = parse_args(argv)
    params = Params.from_args(args)
    started = time.monotonic()
    load_before = os.getloadavg()
    machine_info = machine.describe()
    machine_info["postgresql"] = _version(["pgbench", "--version"])
    machine_info["mariadb"] = _version(["mysqlslap", "--version"])
    profile: dict[str, Any] = {}
    figures, missing, failed = no_figures(), None, False
    print("starting a root and a leaf cluster, their database services and servers", flush=True)
    with contextlib.ExitStack() as stack:
        try:
            site = stack.enter_context(db_sites.db_site())
        except NotImplementedError as exc:  # a client is not installed: every leg n/a
            missing = str(exc)
        except (AssertionError, OSError, RuntimeError, subprocess.SubprocessError) as exc:
            missing, failed = f"failed to start: {exc}", True
        if missing is not None:
            print(f"  every leg n/a: {missing}", flush=True)
        else:
            figures = measure(site, params)
        if args.profile and missing is None:
            print(f"profiling the leaf leg with py-spy into {args.profile}:", flush=True)
            try:
                profile = profile_leaf(site, args.profile, params.profile_seconds)
            except (ssh_profile.ProfilerUnavailable, RunFailed, OSError) as exc:
                profile = {"missing": str(exc)}
                print(f"  no profile: {exc}", flush=True)
    load = {
        "what": "1, 5 and 15 minute load averages (other work on the machine skews figures)",
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    report = build_report(machine_info, params, figures, load)
    if missing is not None:
        report["missing"] = missing
    if profile:
        report["profile"] = profile
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results.save_report(NAME, report, args, table=table, chart=chart, index_line=index_line)
    return 1 if report["failures"] or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
