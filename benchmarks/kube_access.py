"""Kubernetes access: requests, kubectl and watches through ``tether kube`` against the API
server direct.

One run starts, on 127.0.0.1, a real Kubernetes API server 1.20.2, a root and a leaf cluster
and a Kubernetes service in each, both serving that API server (``_benchlib/kube_sites.py``),
and measures every leg in the same run, interleaved round by round (the legs' order rotating):

- ``direct`` (the baseline): straight to the API server with the administrator's client
  certificate;
- ``local``: the root user through the root proxy to the root cluster's Kubernetes service;
- ``leaf``: the root user through the root proxy -> the leaf's tunnel -> the leaf proxy -> the
  leaf's Kubernetes service's tunnel -> the API server.

Per request: a small HTTP/1.1 client (``_benchlib/kube_client.py``) on one TLS connection per
leg and round, with the leg's certificate and server name (the route name through Tether, as
kubectl sends it), times sequential ``GET /version`` and ``GET`` of a namespace's 1,000
configmaps: median, p90 and p99 per leg, and the median a leg adds to ``direct``'s. kubectl:
whole ``kubectl get --raw /version`` and ``kubectl get configmaps -n bench -o name`` runs
(Debian's kubectl 1.20, the kubeconfig ``tether kube login`` wrote, the administrator's for
``direct``), wall time, and ``tether kube credentials`` alone, which kubectl runs once per
invocation on the Tether legs. Watch: a watch of a namespace's configmaps per leg, then
configmaps created there (directly, by the administrator): time from the create's response to
the event's arrival.

Target (issue "Kubernetes access"), reported and never tuned away: the median a request adds
through a leaf < 2 ms.

    python benchmarks/kube_access.py [--quick] [--json FILE] [--rounds N] [--requests N]
        [--list-requests N] [--kubectl-runs N] [--watch-events N]
"""

# No ``from __future__ import annotations`` here: tests load harnesses without registering
# them in sys.modules, and dataclasses then cannot resolve string annotations.
import argparse
import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, from run_all.py, or imported by a test
    sys.path.insert(0, str(HERE))

import machine  # noqa: E402
from _benchlib import daemon_settings, kube_client, kube_sites, results, tables  # noqa: E402
from _benchlib.procs import cpu_seconds  # noqa: E402

NAME = "kube_access"
LEGS = ("direct", "local", "leaf")
TETHER_LEGS = ("local", "leaf")
BASELINE = "direct"
NAMESPACE = "bench"
CONFIGMAPS = 1000
#: the configmaps' data: a few fields, as a small application's settings
CONFIGMAP_DATA = {"owner": "bench", "mode": "read-mostly", "payload": "x" * 64}
REQUESTS = {"version": "/version", "configmaps": f"/api/v1/namespaces/{NAMESPACE}/configmaps"}
KUBECTL = {
    "get_raw_version": ("get", "--raw", "/version"),
    "get_configmaps": ("get", "configmaps", "-n", NAMESPACE, "-o", "name"),
}
#: the configmap the controller manager puts in every namespace (the cluster's CA)
SYSTEM_CONFIGMAP = "kube-root-ca.crt"
WARMUP_REQUESTS = 5  # per connection, after its first request: unmeasured
WATCH_WARMUP = 2  # creates per watch before the measured ones
#: the target this harness reports against (issue "Kubernetes access"), never tuned towards
TARGET_ADDED_MS = 2.0  # median latency a request adds through a leaf, below this
MAX_FAILURES = 3  # per leg and figure; a leg that keeps failing is dropped
STDERR_LINES = 3  # kept of the first kubectl run per leg and command that printed on stderr


@dataclasses.dataclass(frozen=True)
class Params:
    """What one run measures; stored in the results so figures are read with their sizes."""

    quick: bool
    rounds: int
    requests: int
    list_requests: int
    kubectl_runs: int
    watch_events: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Params":
        def pick(value: int | None, quick: int, full: int) -> int:
            return value if value is not None else (quick if args.quick else full)

        params = cls(
            args.quick,
            rounds=pick(args.rounds, 2, 5),
            requests=pick(args.requests, 200, 2000),
            list_requests=pick(args.list_requests, 20, 400),
            kubectl_runs=pick(args.kubectl_runs, 3, 20),
            watch_events=pick(args.watch_events, 20, 200),
        )
        counts = (params.requests, params.list_requests, params.kubectl_runs, params.watch_events)
        if params.rounds < 1 or min(counts) < params.rounds:
            raise SystemExit("--rounds must be at least 1, and every count at least --rounds")
        return params

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "requests_per_leg": {"version": self.requests, "configmaps": self.list_requests},
            "request_targets": dict(REQUESTS),
            "configmaps": f"{CONFIGMAPS} in namespace {NAMESPACE}, data {CONFIGMAP_DATA!r} and "
            f"an index, besides the controller manager's {SYSTEM_CONFIGMAP}",
            "client": "HTTP/1.1 (h11) over one TLS connection per leg and round, ALPN http/1.1, "
            "TCP_NODELAY, SNI: the API server's address (direct) or the route name tether kube "
            f"login wrote; {WARMUP_REQUESTS} unmeasured requests after each connection's first; "
            "a request is timed from its first byte sent to its response's last byte received",
            "kubectl": {k: "kubectl " + " ".join(v) for k, v in KUBECTL.items()},
            "kubectl_protocol": "direct: HTTP/2 (the API server offers h2); through Tether: "
            "HTTP/1.1 (the proxy's ALPN); one unmeasured run per leg and command first",
            "watch": "GET ?watch=1&resourceVersion=RV on a connection of the leg, one namespace "
            "per leg, opened each round; configmaps created there by the administrator "
            f"directly ({WATCH_WARMUP} unmeasured first); the time from the create's response "
            "to the event's last byte arriving (negative: the event came first)",
            "rbac": f"Tether legs: user bench in group {kube_sites.GROUP} (impersonated by the "
            "service; a ClusterRole reads, watches and creates configmaps); direct: the "
            "administrator, group system:masters",
            "aggregate": f"samples of {self.rounds} round(s) pooled; legs interleaved in each "
            "round, their order rotating",
            "added": "a leg's median minus direct's",
            "daemon_cpu": "utime + stime from /proc/PID/stat (10 ms ticks) over each leg's "
            "batch of a request kind, divided by its requests; idle work included",
            "daemons_log_severity": daemon_settings.LOG_DESCRIPTION,
            "targets": {"added_median_ms_per_request_through_leaf_below": TARGET_ADDED_MS},
        }


def share(total: int, rounds: int, round_no: int) -> int:
    """Round ``round_no``'s part of ``total`` samples (the first rounds take the remainder)."""
    return total // rounds + (1 if round_no < total % rounds else 0)


@dataclasses.dataclass
class Figures:
    """Every sample of one leg for one figure, and its failures."""

    samples: list[float] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return len(self.failures) >= MAX_FAILURES


FIGURES = (
    *(f"request_{k}" for k in REQUESTS),
    "handshake",
    "first_request",
    *(f"kubectl_{k}" for k in KUBECTL),
    "watch",
    "watch_after_request",
)


def no_figures() -> dict[str, dict[str, Figures]]:
    """Every figure of every leg, no sample yet (what a site that cannot start reports)."""
    figures = {key: {leg: Figures() for leg in LEGS} for key in FIGURES}
    figures["credentials"] = {"tether": Figures()}
    return figures


# --- measuring ------------------------------------------------------------------------------


def _cpu(pids: Mapping[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


class Run:
    """One run's state: the figures, the daemons' CPU per leg and request kind."""

    def __init__(self, site: Any, params: Params) -> None:
        self.site = site
        self.params = params
        self.figures = no_figures()
        #: request kind -> leg -> daemon -> CPU seconds, and the requests they served
        self.cpu: dict[str, dict[str, dict[str, float]]] = {
            kind: {leg: collections.defaultdict(float) for leg in LEGS} for kind in REQUESTS
        }
        self.cpu_requests = {kind: dict.fromkeys(LEGS, 0) for kind in REQUESTS}
        self.creator: kube_client.Connection | None = None
        #: command -> leg -> how many successful runs printed on stderr, and the first's lines
        self.stderr: dict[str, dict[str, dict[str, Any]]] = {
            key: {leg: {"runs": 0, "first": []} for leg in LEGS} for key in KUBECTL
        }

    def failed(self, key: str, leg: str, exc: BaseException) -> None:
        self.figures[key][leg].failures.append(f"{type(exc).__name__}: {exc}"[:400])

    # requests on one connection

    def requests(self, leg: str, round_no: int) -> str:
        endpoint = self.site.endpoints[leg]
        counts = {
            "version": share(self.params.requests, self.params.rounds, round_no),
            "configmaps": share(self.params.list_requests, self.params.rounds, round_no),
        }
        if all(self.figures[f"request_{k}"][leg].dropped for k in REQUESTS):
            return f"{leg} dropped"
        try:
            connection = kube_client.Connection(endpoint)
        except (OSError, ssl.SSLError) as exc:
            for kind in REQUESTS:
                self.failed(f"request_{kind}", leg, exc)
            return f"{leg} FAILED to connect"
        shown = []
        with connection:
            self.figures["handshake"][leg].samples.append(connection.handshake_seconds)
            try:
                first = connection.request("GET", REQUESTS["version"])
                self.figures["first_request"][leg].samples.append(first.seconds)
                for _ in range(WARMUP_REQUESTS):
                    connection.request("GET", REQUESTS["version"])
                connection.request("GET", REQUESTS["configmaps"])
            except (OSError, kube_client.RequestFailed, ValueError) as exc:
                for kind in REQUESTS:
                    self.failed(f"request_{kind}", leg, exc)
                return f"{leg} FAILED"
            for kind, count in counts.items():
                figure = self.figures[f"request_{kind}"][leg]
                if figure.dropped:
                    continue
                before = _cpu(self.site.pids)
                done = 0
                try:
                    for _ in range(count):
                        figure.samples.append(connection.request("GET", REQUESTS[kind]).seconds)
                        done += 1
                except (OSError, kube_client.RequestFailed, ValueError) as exc:
                    self.failed(f"request_{kind}", leg, exc)
                    shown.append(f"{kind} FAILED")
                    break  # the connection may be unusable: the next round opens another
                finally:
                    after = _cpu(self.site.pids)
                    for name in after:
                        self.cpu[kind][leg][name] += after[name] - before[name]
                    self.cpu_requests[kind][leg] += done
                recent = figure.samples[-count:]
                shown.append(f"{kind} {statistics.median(recent) * 1000:.2f} ms")
        return f"{leg} " + ", ".join(shown)

    # whole kubectl runs

    def kubectl(self, key: str, leg: str, runs: int) -> str:
        figure = self.figures[f"kubectl_{key}"][leg]
        runner = self.site.kubectl[leg]
        samples = []
        for _ in range(runs):
            if figure.dropped:
                return f"{leg} dropped"
            try:
                seconds, stderr = timed_run(runner.command(*KUBECTL[key]), runner.env)
            except RunFailed as exc:
                self.failed(f"kubectl_{key}", leg, exc)
                continue
            samples.append(seconds)
            if stderr:
                said = self.stderr[key][leg]
                said["runs"] += 1
                if not said["first"]:
                    said["first"] = stderr.splitlines()[:STDERR_LINES]
        figure.samples += samples
        if not samples:
            return f"{leg} FAILED"
        return f"{leg} {statistics.median(samples):.3f} s"

    def credentials(self, runs: int) -> str:
        figure = self.figures["credentials"]["tether"]
        runner = self.site.credentials
        samples = []
        for _ in range(runs):
            if figure.dropped:
                break
            try:
                samples.append(timed_run(runner.command(), runner.env)[0])
            except RunFailed as exc:
                figure.failures.append(str(exc))
        figure.samples += samples
        return f"{statistics.median(samples):.3f} s" if samples else "FAILED"

    # watch event delivery

    def watch(self, leg: str, round_no: int, events: int) -> str:
        figure = self.figures["watch"][leg]
        if figure.dropped:
            return f"{leg} dropped"
        namespace = f"watch-{leg}"
        path = f"/api/v1/namespaces/{namespace}/configmaps"
        try:
            creator = self._creator()
            listed = json.loads(creator.request("GET", f"{path}?limit=1").body)
            version = listed["metadata"]["resourceVersion"]
            with kube_client.Watch(self.site.endpoints[leg], path, version) as watch:
                deliveries = []
                for i in range(WATCH_WARMUP + events):
                    name = f"r{round_no}-{i}"
                    body = kube_client.configmap(name, CONFIGMAP_DATA)
                    delivery = kube_client.create_and_wait(creator, path, body, watch, name)
                    if i >= WATCH_WARMUP:
                        deliveries.append(delivery)
        except (OSError, ssl.SSLError, kube_client.RequestFailed, ValueError, KeyError) as exc:
            self.failed("watch", leg, exc)
            self._close_creator()
            return f"{leg} FAILED"
        figure.samples += [d.after_response for d in deliveries]
        self.figures["watch_after_request"][leg].samples += [d.after_request for d in deliveries]
        median = statistics.median(d.after_response for d in deliveries)
        return f"{leg} {median * 1000:.2f} ms"

    def _creator(self) -> kube_client.Connection:
        """The administrator's connection that creates the watched configmaps (direct)."""
        if self.creator is None:
            self.creator = kube_client.Connection(self.site.endpoints[BASELINE])
        return self.creator

    def _close_creator(self) -> None:
        if self.creator is not None:
            self.creator.close()
            self.creator = None


class RunFailed(Exception):
    """A client exited non-zero; the message says what it printed."""


def timed_run(argv: list[str], env: Mapping[str, str]) -> tuple[float, str]:
    """Wall time of one run of ``argv``, which must exit 0, and what it printed on stderr."""
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, env=dict(env), capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunFailed(str(exc)) from None
    seconds = time.perf_counter() - started
    stderr = done.stderr.decode(errors="replace").strip()
    if done.returncode != 0:
        said = (stderr or done.stdout.decode(errors="replace").strip())[-300:]
        raise RunFailed(f"{argv[0]} exit {done.returncode}: {said}")
    return seconds, stderr


def prepare(site: Any) -> int:
    """The namespaces (``bench`` with its 1,000 configmaps, one per leg for the watches), once
    the controller manager has put its own configmap (the cluster's CA) in each, so that no
    list changes under the measurements; returns how many configmaps ``bench`` lists."""
    with kube_client.Connection(site.endpoints[BASELINE]) as admin:
        namespaces = (NAMESPACE, *(f"watch-{leg}" for leg in LEGS))
        for namespace in namespaces:
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            admin.request("POST", "/api/v1/namespaces", json.dumps(body).encode(), expect=201)
        deadline = time.monotonic() + 60
        for namespace in namespaces:
            path = f"/api/v1/namespaces/{namespace}/configmaps/{SYSTEM_CONFIGMAP}"
            while admin.request("GET", path, expect=0).status != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no {SYSTEM_CONFIGMAP} in {namespace} after 60 s")
                time.sleep(0.2)
        for i in range(CONFIGMAPS):
            body = kube_client.configmap(f"bench-{i:04d}", {**CONFIGMAP_DATA, "index": str(i)})
            admin.request("POST", REQUESTS["configmaps"], json.dumps(body).encode(), expect=201)
        listed = len(json.loads(admin.request("GET", REQUESTS["configmaps"]).body)["items"])
    if listed != CONFIGMAPS + 1:
        raise RuntimeError(f"{listed} configmaps listed in {NAMESPACE}, not {CONFIGMAPS} + 1")
    return listed


def measure(site: Any, params: Params) -> Run:
    """Every figure of every leg, round by round, the legs' order rotating each round."""
    run = Run(site, params)
    print("warming up kubectl and tether kube credentials (one unmeasured run each)", flush=True)
    for leg in LEGS:
        for key in KUBECTL:
            with contextlib.suppress(RunFailed):
                timed_run(site.kubectl[leg].command(*KUBECTL[key]), site.kubectl[leg].env)
    with contextlib.suppress(RunFailed):
        timed_run(site.credentials.command(), site.credentials.env)
    try:
        for round_no in range(params.rounds):
            order = LEGS[round_no % len(LEGS) :] + LEGS[: round_no % len(LEGS)]
            print(f"round {round_no + 1}/{params.rounds} (legs {', '.join(order)}):", flush=True)
            shown = [run.requests(leg, round_no) for leg in order]
            print(f"  requests: {'; '.join(shown)}", flush=True)
            for key in KUBECTL:
                runs = share(params.kubectl_runs, params.rounds, round_no)
                shown = [run.kubectl(key, leg, runs) for leg in order]
                print(f"  kubectl {key}: {'; '.join(shown)}", flush=True)
            credentials = run.credentials(share(params.kubectl_runs, params.rounds, round_no))
            print(f"  tether kube credentials: {credentials}", flush=True)
            events = share(params.watch_events, params.rounds, round_no)
            shown = [run.watch(leg, round_no, events) for leg in order]
            print(f"  watch: {'; '.join(shown)}", flush=True)
    finally:
        run._close_creator()
    return run


# --- the daemons' logs ----------------------------------------------------------------------

_SEVERITY = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
_KEPT_LINES = 5


def read_logs(logs: Mapping[str, pathlib.Path]) -> dict[str, Any]:
    """Per daemon: its log's lines by severity and the first warnings and errors."""
    found: dict[str, Any] = {}
    for name, path in logs.items():
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError as exc:
            found[name] = {"missing": str(exc)}
            continue
        counts: collections.Counter[str] = collections.Counter()
        worse: list[str] = []
        for line in lines:
            severity = _SEVERITY.search(line)
            level = severity.group(1) if severity else "other"
            counts[level] += 1
            if level in ("WARNING", "ERROR", "CRITICAL") and len(worse) < _KEPT_LINES:
                worse.append(line[:400])
        found[name] = {"lines": len(lines), "by_severity": dict(counts), "first_warnings": worse}
    return found


# --- the report -----------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank: a sample, never an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def _stats(samples: list[float], scale: float = 1000.0, digits: int = 3) -> dict[str, Any]:
    def conv(value: float | None) -> float | None:
        return None if value is None else round(value * scale, digits)

    return {
        "median": conv(statistics.median(samples)) if samples else None,
        "p90": conv(_percentile(samples, 0.90)),
        "p99": conv(_percentile(samples, 0.99)),
        "n": len(samples),
    }


def _diff(value: float | None, base: float | None, digits: int = 3) -> float | None:
    return round(value - base, digits) if value is not None and base is not None else None


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


def summarize(
    figures: dict[str, dict[str, Figures]],
    cpu: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    cpu_requests: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    """Medians and percentiles per figure and leg, what each leg adds to direct's."""
    out: dict[str, Any] = {"requests_ms": {}, "kubectl_s": {}}
    for kind in REQUESTS:
        stats = {leg: _stats(f.samples) for leg, f in figures[f"request_{kind}"].items()}
        out["requests_ms"][kind] = {
            "per_leg": stats,
            "added_median": {
                leg: _diff(stats[leg]["median"], stats[BASELINE]["median"]) for leg in TETHER_LEGS
            },
        }
    out["connection_ms"] = {
        key: {leg: _stats(f.samples)["median"] for leg, f in figures[key].items()}
        for key in ("handshake", "first_request")
    }
    credentials = _stats(figures["credentials"]["tether"].samples, 1.0, 4)
    out["credentials_s"] = credentials
    for key in KUBECTL:
        stats = {leg: _stats(f.samples, 1.0, 4) for leg, f in figures[f"kubectl_{key}"].items()}
        added = {leg: _diff(stats[leg]["median"], stats[BASELINE]["median"], 4) for leg in LEGS}
        out["kubectl_s"][key] = {
            "per_leg": stats,
            f"ratio_vs_{BASELINE}": {
                leg: _ratio(stats[leg]["median"], stats[BASELINE]["median"]) for leg in LEGS
            },
            "added_median": {leg: added[leg] for leg in TETHER_LEGS},
            # how much of what a leg adds is the exec credential plugin's own run
            "credentials_share_of_added": {
                leg: _ratio(credentials["median"], added[leg]) if (added[leg] or 0) > 0 else None
                for leg in TETHER_LEGS
            },
        }
    watch = {leg: _stats(f.samples) for leg, f in figures["watch"].items()}
    out["watch_ms"] = {
        "per_leg": watch,
        "added_median": {
            leg: _diff(watch[leg]["median"], watch[BASELINE]["median"]) for leg in TETHER_LEGS
        },
        "after_request_median": {
            leg: _stats(f.samples)["median"] for leg, f in figures["watch_after_request"].items()
        },
    }
    if cpu is not None and cpu_requests is not None:
        out["daemon_cpu_ms_per_request"] = {
            kind: {
                leg: {
                    name: round(seconds * 1000 / cpu_requests[kind][leg], 3)
                    for name, seconds in cpu[kind][leg].items()
                }
                if cpu_requests[kind][leg]
                else None
                for leg in LEGS
            }
            for kind in REQUESTS
        }
    return out


def _met(value: float | None) -> bool | None:
    return None if value is None else value < TARGET_ADDED_MS


def build_report(
    machine_info: dict[str, Any],
    params: Params,
    figures: dict[str, dict[str, Figures]],
    load: dict[str, Any],
    run: Run | None = None,
) -> dict[str, Any]:
    """The JSON document: figures, the target, every raw sample (ms) and failure."""
    summary = summarize(figures, run.cpu if run else None, run.cpu_requests if run else None)
    requests = summary["requests_ms"]
    return {
        "benchmark": NAME,
        "machine": machine_info,
        "load_average": load,
        "params": params.to_json(),
        "figures": summary,
        "targets_met": {
            f"added_median_ms_{kind}_leaf": _met(requests[kind]["added_median"]["leaf"])
            for kind in REQUESTS
        },
        "samples_ms": {
            key: {leg: [round(s * 1000, 3) for s in f.samples] for leg, f in legs.items()}
            for key, legs in figures.items()
        },
        "failures": {
            key: {leg: f.failures for leg, f in legs.items() if f.failures}
            for key, legs in figures.items()
            if any(f.failures for f in legs.values())
        },
    }


def _fmt(value: float | None, spec: str = ".3f", suffix: str = "") -> str:
    return tables.fmt(value, spec, suffix)


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "MISSED"


def table(report: dict[str, Any]) -> str:
    """The printed summary: per request, kubectl, credentials, watch, CPU, the target."""
    p, f = report["params"], report["figures"]
    lines = [
        f"Per request on one connection ({p['requests']} GET /version and {p['list_requests']} "
        f"GET of {CONFIGMAPS} configmaps per leg, {p['rounds']} rounds):"
    ]
    rows = []
    for kind, entry in f["requests_ms"].items():
        for leg in LEGS:
            stats = entry["per_leg"][leg]
            rows.append(
                [
                    kind,
                    leg,
                    _fmt(stats["median"]),
                    _fmt(stats["p90"]),
                    _fmt(stats["p99"]),
                    _fmt(entry["added_median"].get(leg)) if leg != BASELINE else "",
                ]
            )
    lines += tables.grid(["request", "leg", "median ms", "p90 ms", "p99 ms", "added ms"], rows)
    conn = f["connection_ms"]
    lines += [
        "new connection, median ms (TCP + TLS handshake; its first GET /version): "
        + ", ".join(
            f"{leg} {_fmt(conn['handshake'][leg], '.2f')}/{_fmt(conn['first_request'][leg], '.2f')}"
            for leg in LEGS
        ),
        "",
        f"kubectl, wall time of a fresh process ({p['kubectl_runs']} runs per leg):",
    ]
    rows = []
    for key, entry in f["kubectl_s"].items():
        for leg in LEGS:
            stats = entry["per_leg"][leg]
            share_ = entry["credentials_share_of_added"].get(leg)
            rows.append(
                [
                    "kubectl " + " ".join(KUBECTL[key]),
                    leg,
                    _fmt(stats["median"]),
                    _fmt(stats["p90"]),
                    _fmt(entry[f"ratio_vs_{BASELINE}"][leg], ".2f", "x"),
                    _fmt(entry["added_median"].get(leg)) if leg != BASELINE else "",
                    _fmt(None if share_ is None else share_ * 100, ".0f", "%")
                    if leg != BASELINE
                    else "",
                ]
            )
    lines += tables.grid(
        ["command", "leg", "median s", "p90 s", f"/ {BASELINE}", "added s", "credentials"], rows
    )
    creds = f["credentials_s"]
    lines += [
        f"tether kube credentials alone (kubectl runs it once per invocation on the Tether legs):"
        f" median {_fmt(creds['median'])} s, p90 {_fmt(creds['p90'])} s; 'credentials' is its "
        "median over the leg's added median",
        "",
        f"Watch event delivery (create's response -> event; {p['watch_events']} events per leg):",
    ]
    watch = f["watch_ms"]
    rows = [
        [
            leg,
            _fmt(watch["per_leg"][leg]["median"]),
            _fmt(watch["per_leg"][leg]["p90"]),
            _fmt(watch["per_leg"][leg]["p99"]),
            _fmt(watch["added_median"].get(leg)) if leg != BASELINE else "",
            _fmt(watch["after_request_median"][leg]),
        ]
        for leg in LEGS
    ]
    lines += tables.grid(
        ["leg", "median ms", "p90 ms", "p99 ms", "added ms", "from request ms"], rows
    )
    cpu = f.get("daemon_cpu_ms_per_request")
    if cpu:
        lines += ["", "Daemons' CPU per request (ms; 10 ms ticks over each batch):"]
        names = sorted({n for kind in cpu.values() for leg in kind.values() if leg for n in leg})
        rows = [
            [kind, leg, *(_fmt((cpu[kind][leg] or {}).get(n), ".3f") for n in names)]
            for kind in cpu
            for leg in LEGS
        ]
        lines += tables.grid(["request", "leg", *names], rows)
    met = report["targets_met"]
    lines += [
        "",
        f"target: added median per request through the leaf < {TARGET_ADDED_MS} ms: "
        + ", ".join(
            f"{kind} {_verdict(met[f'added_median_ms_{kind}_leaf'])} "
            f"({_fmt(f['requests_ms'][kind]['added_median']['leaf'])} ms)"
            for kind in REQUESTS
        ),
    ]
    for key, legs in (report.get("kubectl_stderr") or {}).items():
        for leg, said in legs.items():
            if said["runs"]:
                lines.append(
                    f"kubectl {key} on {leg} printed on stderr in {said['runs']} successful "
                    f"run(s), first: {said['first'][0][:200]}"
                )
    for name, found in (report.get("daemon_logs") or {}).items():
        worse = found.get("first_warnings") or []
        if worse:
            lines.append(f"{name} logged {len(worse)}+ warnings or errors, first: {worse[0]}")
    for key, legs in report["failures"].items():
        for leg, why in legs.items():
            lines.append(f"FAILED {key} {leg} ({len(why)}x): {why[-1]}")
    if report.get("missing"):
        lines.append(f"n/a every leg: {report['missing']}")
    return "\n".join(lines)


def chart(report: dict[str, Any], path: pathlib.Path) -> bool:
    """What each Tether leg adds per request and per watch event, and kubectl's wall time
    per leg; False without matplotlib."""
    plt = results.pyplot()
    if plt is None:
        return False
    m, f = report["machine"], report["figures"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    groups = [
        ("GET /version", f["requests_ms"]["version"]["added_median"]),
        (f"GET {CONFIGMAPS} configmaps", f["requests_ms"]["configmaps"]["added_median"]),
        ("watch event", f["watch_ms"]["added_median"]),
    ]
    width = 0.38
    colors = ("tab:blue", "tab:orange")
    for i, leg in enumerate(TETHER_LEGS):
        values = [added[leg] for _, added in groups]
        bars = left.bar(
            [x + (i - 0.5) * width for x in range(len(groups))],
            [v or 0 for v in values],
            width,
            label=leg,
            color=colors[i],
        )
        results.label_bars(left, bars, [tables.fmt(v, ".2f") for v in values], fontsize=7)
    left.axhline(TARGET_ADDED_MS, color="gray", linestyle="--", linewidth=1)
    left.set_xticks(range(len(groups)), [g for g, _ in groups], fontsize=8)
    left.set_ylabel(f"ms added to {BASELINE} (median)")
    left.set_title(
        f"latency added per request / event; dashed: target {TARGET_ADDED_MS} ms (leaf)",
        fontsize=9,
    )
    left.legend(fontsize=8, loc="upper left")
    keys = list(f["kubectl_s"])
    width = 0.27
    for i, leg in enumerate(LEGS):
        values = [f["kubectl_s"][k]["per_leg"][leg]["median"] for k in keys]
        bars = right.bar(
            [x + (i - 1) * width for x in range(len(keys))],
            [v or 0 for v in values],
            width,
            label=leg,
            color=("tab:gray", *colors)[i],
        )
        results.label_bars(right, bars, [tables.fmt(v, ".2f") for v in values], fontsize=7)
    creds = f["credentials_s"]["median"]
    if creds is not None:
        right.axhline(creds, color="tab:red", linestyle=":", linewidth=1)
    right.set_xticks(range(len(keys)), ["kubectl " + " ".join(KUBECTL[k]) for k in keys],
                     fontsize=7)  # fmt: skip
    right.set_ylabel("seconds per run (median)")
    right.set_title("kubectl wall time; dotted: tether kube credentials alone", fontsize=9)
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"Kubernetes access on loopback: Tether vs direct ({m['date']})\n"
        f"{machine.summary(m)}\nKubernetes {m.get('kubernetes')}, {m.get('kubectl') or 'kubectl'}",
        fontsize=9,
    )
    results.save_chart(plt, fig, path)
    return True


def index_line(report: dict[str, Any], json_name: str, png_name: str | None) -> str:
    """One line of ``results/README.md``: headline figures, machine, files."""
    f = report["figures"]
    parts = []
    for kind, entry in f["requests_ms"].items():
        medians = "/".join(_fmt(entry["per_leg"][leg]["median"], ".2f") for leg in LEGS)
        added = "/".join(_fmt(entry["added_median"][leg], ".2f") for leg in TETHER_LEGS)
        parts.append(f"{kind} median ms direct/local/leaf {medians} (added {added})")
    for key, entry in f["kubectl_s"].items():
        medians = "/".join(_fmt(entry["per_leg"][leg]["median"], ".3f") for leg in LEGS)
        parts.append(f"kubectl {key} s {medians}")
    parts.append(f"tether kube credentials {_fmt(f['credentials_s']['median'], '.3f')} s")
    watch = "/".join(_fmt(f["watch_ms"]["per_leg"][leg]["median"], ".2f") for leg in LEGS)
    parts.append(f"watch ms {watch}")
    met = report["targets_met"]
    parts.append(
        f"target added < {TARGET_ADDED_MS} ms through the leaf: "
        + ", ".join(f"{k} {_verdict(met[f'added_median_ms_{k}_leaf'])}" for k in REQUESTS)
    )
    quick = " (--quick)" if report["params"]["quick"] else ""
    files = f"[json]({json_name})" + (f", [chart]({png_name})" if png_name else "")
    return (
        f"- {report['machine']['date']} `{NAME}`{quick}: {'; '.join(parts)}; "
        f"{machine.summary(report['machine'])}; {files}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kube_access.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds; 200 + 20 requests, 3 kubectl runs and 20 watch events per leg",
    )
    parser.add_argument("--rounds", type=int, metavar="N", help="rounds (default 5, --quick 2)")
    parser.add_argument(
        "--requests", type=int, metavar="N", help="GET /version per leg (default 2000, --quick 200)"
    )
    parser.add_argument(
        "--list-requests",
        type=int,
        metavar="N",
        help=f"GET of the {CONFIGMAPS} configmaps per leg (default 400, --quick 20)",
    )
    parser.add_argument(
        "--kubectl-runs",
        type=int,
        metavar="N",
        help="runs of each kubectl command per leg, and of tether kube credentials "
        "(default 20, --quick 3)",
    )
    parser.add_argument(
        "--watch-events",
        type=int,
        metavar="N",
        help="watch events per leg (default 200, --quick 20)",
    )
    results.add_output_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Start the site, measure every leg, print the table, write the JSON, chart and index."""
    args = parse_args(argv)
    params = Params.from_args(args)
    started = time.monotonic()
    load_before = os.getloadavg()
    machine_info = machine.describe()
    machine_info["kubernetes"] = "kube-apiserver v1.20.2 (tether.testing.kube)"
    figures, missing, failed = no_figures(), None, False
    run: Run | None = None
    logs: dict[str, Any] = {}
    listed: int | None = None
    print("starting a Kubernetes API server, a root and a leaf cluster, their services", flush=True)
    with contextlib.ExitStack() as stack:
        try:
            site = stack.enter_context(kube_sites.kube_site())
            machine_info["kubectl"] = site.kubectl_version
            print(f"creating {CONFIGMAPS} configmaps in namespace {NAMESPACE}", flush=True)
            listed = prepare(site)
        except NotImplementedError as exc:  # no Kubernetes components here: every leg n/a
            missing = str(exc)
        except (
            AssertionError,
            OSError,
            RuntimeError,
            subprocess.SubprocessError,
            kube_client.RequestFailed,
        ) as exc:
            missing, failed = f"failed to start: {exc}", True
        if missing is not None:
            print(f"  every leg n/a: {missing}", flush=True)
        else:
            run = measure(site, params)
            figures = run.figures
            logs = read_logs(site.logs)
    load = {
        "what": "1, 5 and 15 minute load averages (other work on the machine skews figures)",
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    report = build_report(machine_info, params, figures, load, run)
    report["configmaps_listed"] = listed
    report["kubectl_stderr"] = run.stderr if run else {}
    report["daemon_logs"] = logs
    if missing is not None:
        report["missing"] = missing
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results.save_report(NAME, report, args, table=table, chart=chart, index_line=index_line)
    return 1 if report["failures"] or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
