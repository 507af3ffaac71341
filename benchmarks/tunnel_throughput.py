"""Tunnel throughput: Tether's reverse tunnel against ``ssh -R`` and raw loopback TCP.

One run measures, on 127.0.0.1, the bulk throughput of one stream and of 8 parallel streams
through each leg, with the same load generator and sink (separate processes, see
``_benchlib/loadgen.py``):

- ``tether``: client -> root forward listener -> tunnel -> leaf -> sink (``tether_forward``);
- ``openssh_aes128`` / ``openssh_chacha20``: client -> our own ``sshd`` -> ``ssh -R`` -> sink,
  restricted to ``aes128-gcm@openssh.com`` / ``chacha20-poly1305@openssh.com``;
- ``raw_tcp``: client -> sink, the ceiling.

The same tunnel is also measured through real ``tetherd`` processes (``tetherd_echo``): a
client's bytes through the root's proxy, the leaf's reverse tunnel, the leaf's proxy and a
node's tunnel to the node's echo service and back, against OpenSSH in the same process layout
(``ssh -L``, ``sshd``, two ``ssh -R``; ``_benchlib/echo_path.py``), with each process's CPU
seconds per GB.

It also reports Tether's stream open latency (until ``dial`` returns a usable stream) and the
CPU each open costs both ends, memory per idle stream and the CPU of a root holding idle leaf
tunnels. Each figure is the median of ``--repeat`` rounds (MB = 10**6 bytes); ``--only`` runs
some figures and reports the others as not run.
The table, ``--json FILE`` and ``benchmarks/results/tunnel_throughput-<stamp>.json`` / ``.png``
carry the figures with the machine described; a figure that cannot be measured yet is null in
JSON and "n/a" in the table, with the reason under "missing".

    python benchmarks/tunnel_throughput.py [--quick] [--json FILE] [--size-mb N] [--repeat R]
        [--only throughput|tetherd|open_latency|idle_streams|idle_tunnels]...
"""

# No ``from __future__ import annotations`` here: run_all.py executes harnesses without
# registering them in sys.modules, and dataclasses then cannot resolve string annotations.
import argparse
import contextlib
import dataclasses
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, from run_all.py, or imported by a test
    sys.path.insert(0, str(HERE))

import machine  # noqa: E402
from _benchlib import echo_path, loadgen, openssh, results, tables, tunnel_figures  # noqa: E402

NAME = "tunnel_throughput"
Address = tuple[str, int]
Forward = Callable[[Address], AbstractContextManager[Address]]

LEGS = ("tether", "openssh_aes128", "openssh_chacha20", "raw_tcp")
BASELINE = "openssh_aes128"
#: What each leg's encryption negotiated, filled in as the legs run (the results say what was
#: compared: OpenSSH is pinned per leg, Tether's TLS 1.3 suite is what its contexts choose).
NEGOTIATED: dict[str, str] = {}
PARALLEL = 8
MIB = 1 << 20
WARMUP_BYTES = 16 * MIB
#: What ``--only`` can pick: the throughput legs, and each secondary figure by its JSON key.
FIGURES = {
    "throughput": "mb_s",
    "tetherd": "tetherd_echo",
    "open_latency": "open_latency_ms",
    "idle_streams": "idle_stream_bytes",
    "idle_tunnels": "idle_tunnels_cpu_percent",
}


# --- Tether: the functions to implement once the tunnel exists ---------------------------------


@contextlib.contextmanager
def tether_forward(sink: Address) -> Iterator[Address]:
    """Tether's leg: a root process serving tunnels with a forward listener, and a leaf
    process whose agent dials it over mutual TLS and delivers each stream to ``sink``."""
    from tether.testing.tunnel_peer import init_cluster, start_agent, start_serve

    sink_addr = f"{sink[0]}:{sink[1]}"
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        base = pathlib.Path(tmp)
        root_ca = init_cluster(base / "root", "root")
        leaf_ca = init_cluster(base / "leaf", "leaf")
        root = start_serve(base / "root", leaf_ca, "--forward", f"leaf={sink_addr}")
        agent = None
        try:
            agent = start_agent(
                base / "leaf", root_ca, root.info()["tunnel_addr"], "--allow", sink_addr
            )
            NEGOTIATED["tether"] = agent.info().get("tls", "unknown")
            host, port = next(iter(root.info()["forwards"].values())).rsplit(":", 1)
            yield host, int(port)
        finally:
            if agent is not None:
                agent.stop()
            root.stop()


def tetherd_echo(params: "Params", sshd: str | None, problem: str | None) -> dict[str, Any]:
    """The tunnel through real ``tetherd`` processes and OpenSSH in the same layout, each
    round's bytes echoed back (``_benchlib/echo_path.py``): MB/s, ratio, CPU s/GB by role."""
    rounds = [
        (1, params.single_stream_bytes),
        (params.parallel_streams, params.parallel_stream_bytes),
    ]
    return echo_path.figure(rounds, params.repeat, sshd, problem)


def tether_open_latency_ms(opens: int) -> dict[str, float]:
    """Median and p99 (ms) of ``opens`` stream opens on one established tunnel, each timed
    until ``dial`` returns a stream ready for its first byte, and the CPU (us) per open of the
    root and of the leaf's agent (``cpu_us_per_open``)."""
    return tunnel_figures.open_latency_ms(opens)


def tether_idle_stream_bytes(streams: int) -> int:
    """Resident memory per idle stream (bytes) with ``streams`` streams open on one tunnel."""
    return tunnel_figures.idle_stream_bytes(streams)


def tether_idle_tunnels_cpu_percent(tunnels: int, seconds: float) -> float:
    """CPU (% of one core) of one root holding ``tunnels`` idle leaf tunnels with heartbeats."""
    return tunnel_figures.idle_tunnels_cpu_percent(tunnels, seconds)


# --- parameters and legs ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Params:
    """What one run measures; stored in the results so figures are read with their sizes."""

    quick: bool
    single_stream_bytes: int
    parallel_streams: int
    parallel_stream_bytes: int
    repeat: int
    open_latency_opens: int = 10_000
    idle_streams: int = 10_000
    idle_tunnels: int = 1_000
    idle_cpu_seconds: float = 60.0
    only: tuple[str, ...] = tuple(FIGURES)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Params":
        size_mib = args.size_mb if args.size_mb is not None else (256 if args.quick else 1024)
        repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
        if size_mib < 4 or repeat < 1:
            raise SystemExit("--size-mb must be at least 4 and --repeat at least 1")
        return cls(
            quick=args.quick,
            single_stream_bytes=size_mib * MIB,
            parallel_streams=PARALLEL,
            parallel_stream_bytes=size_mib * MIB // 4,
            repeat=repeat,
            idle_cpu_seconds=10.0 if args.quick else 60.0,
            only=tuple(args.only) if args.only else tuple(FIGURES),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "aggregate": f"median of {self.repeat} repeat(s)",
            "mb": "10**6 bytes",
            "write_size_bytes": loadgen.CHUNK,
            "throughput": "bytes received at the sink / (last byte at the sink - first connect)",
            "tetherd_echo": "through real tetherd processes to an echo and back, the same sizes "
            "and repeats as the throughput legs: MB/s = bytes one way / (last byte back - every "
            "connection greeted); CPU s/GB = each role's processes' CPU (user+system, their "
            "descendants included, /proc) during the round / GB one way; medians; the load "
            "generator is not counted",
            "open_latency": "sequential server.dial() to a TCP echo target until it returns: OPEN "
            "over TLS, the leaf's connect to the target, OPEN_OK back; the stream then takes its "
            "first byte at once (close not timed)",
            "open_cpu": "CPU (user+system) of the root and of the leaf's agent process during "
            "the opens and closes, per open",
        }


@dataclasses.dataclass
class LegResult:
    """MB/s samples per stream count for one leg, or why there are none."""

    name: str
    samples: dict[int, list[float]] = dataclasses.field(default_factory=dict)
    missing: str | None = None
    failed: bool = False

    def figure(self, streams: int) -> float | None:
        got = self.samples.get(streams)
        return round(statistics.median(got), 1) if got and not self.missing else None


def openssh_forward(name: str, cipher: str, sshd: str | None, problem: str | None) -> Forward:
    """An ``ssh -R`` leg for ``cipher``, or one that says why OpenSSH cannot run here."""

    def forward(sink: Address) -> AbstractContextManager[Address]:
        if sshd is None:
            raise openssh.Unavailable(problem or "sshd is not available")
        NEGOTIATED[name] = cipher
        return openssh.reverse_forward(cipher, sink, sshd)

    return forward


def run_leg(name: str, forward: Forward, sink: loadgen.Sink, params: Params) -> LegResult:
    """Measure one leg; a leg that does not exist or cannot run here is reported, not raised."""
    result = LegResult(name, {1: [], params.parallel_streams: []})
    rounds = [
        (1, params.single_stream_bytes),
        (params.parallel_streams, params.parallel_stream_bytes),
    ]
    try:
        with forward(sink.address) as entry:
            loadgen.wait_ready(entry, sink)
            loadgen.measure(entry, sink, 1, WARMUP_BYTES)  # first-connection costs, discarded
            for r in range(params.repeat):
                for streams, nbytes in rounds:
                    m = loadgen.measure(entry, sink, streams, nbytes)
                    result.samples[streams].append(m.mb_s)
                    print(
                        f"  {name}: {streams} x {nbytes // MIB} MiB in {m.seconds:.2f}s = "
                        f"{m.mb_s:.0f} MB/s (repeat {r + 1}/{params.repeat})",
                        flush=True,
                    )
    except (NotImplementedError, openssh.Unavailable) as exc:
        result.missing = str(exc)
        print(f"  {name}: n/a ({exc})", flush=True)
    except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        result.missing = f"failed: {exc}"
        result.failed = True
        print(f"  {name}: FAILED: {exc}", flush=True)
    return result


def secondary_figures(params: Params) -> tuple[dict[str, Any], dict[str, str]]:
    """Open latency, idle-stream memory and idle-tunnel CPU, each null with a reason if missing."""
    figures: dict[str, Any] = {
        "open_latency_ms": {"median": None, "p99": None},
        "open_cpu_us_per_open": {"root": None, "leaf": None},
        "idle_stream_bytes": None,
        "idle_tunnels_cpu_percent": None,
    }
    missing: dict[str, str] = {}
    measures: dict[str, Callable[[], Any]] = {
        "open_latency_ms": lambda: tether_open_latency_ms(params.open_latency_opens),
        "idle_stream_bytes": lambda: tether_idle_stream_bytes(params.idle_streams),
        "idle_tunnels_cpu_percent": lambda: tether_idle_tunnels_cpu_percent(
            params.idle_tunnels, params.idle_cpu_seconds
        ),
    }
    for key, run in measures.items():
        if key not in {FIGURES[name] for name in params.only}:
            missing[key] = "not run (--only)"
            continue
        try:
            figures[key] = run()
        except NotImplementedError as exc:
            missing[key] = str(exc)
    latency = figures["open_latency_ms"]
    if "cpu_us_per_open" in latency:
        figures["open_cpu_us_per_open"] = latency.pop("cpu_us_per_open")
    return figures, missing


# --- the report -------------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value is not None and base else None


def build_report(
    machine_info: dict[str, Any],
    params: Params,
    legs: list[LegResult],
    secondary: dict[str, Any],
    secondary_missing: dict[str, str],
) -> dict[str, Any]:
    """The JSON document: every leg and figure present, null where not measured."""
    by_name = {leg.name: leg for leg in legs}
    for name in LEGS:
        by_name.setdefault(name, LegResult(name, missing="not run"))
    keys = (1, params.parallel_streams)
    mb_s = {name: {str(k): leg.figure(k) for k in keys} for name, leg in by_name.items()}
    base = mb_s.get(BASELINE, {})
    return {
        "benchmark": NAME,
        "machine": machine_info,
        "params": params.to_json(),
        "mb_s": mb_s,
        "negotiated": dict(NEGOTIATED),
        f"ratio_vs_{BASELINE}": {
            name: {k: _ratio(v, base.get(k)) for k, v in figs.items()}
            for name, figs in mb_s.items()
        },
        "mb_s_samples": {
            name: {str(k): [round(x, 1) for x in leg.samples.get(k, [])] for k in keys}
            for name, leg in by_name.items()
        },
        **secondary,
        "missing": {
            **{name: leg.missing for name, leg in by_name.items() if leg.missing},
            **secondary_missing,
        },
    }


def _fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return tables.fmt(value, spec, suffix)


def table(report: dict[str, Any]) -> str:
    """The printed table: MB/s per leg and the ratio to ``ssh -R`` with AES-128-GCM."""
    n = str(report["params"]["parallel_streams"])
    ratios = report[f"ratio_vs_{BASELINE}"]
    header = ["leg", "1 stream MB/s", f"{n} streams MB/s", "ratio 1", f"ratio {n}"]
    rows = [
        [
            name,
            _fmt(figs["1"]),
            _fmt(figs[n]),
            _fmt(ratios[name]["1"], ".2f", "x"),
            _fmt(ratios[name][n], ".2f", "x"),
        ]
        for name, figs in report["mb_s"].items()
    ]
    lat = report["open_latency_ms"]
    cpu = report.get("open_cpu_us_per_open") or {"root": None, "leaf": None}
    extra = [
        [
            "stream open latency ms (median / p99)",
            f"{_fmt(lat['median'], '.3f')} / {_fmt(lat['p99'], '.3f')}",
        ],
        ["CPU us per stream open (root / leaf)", f"{_fmt(cpu['root'])} / {_fmt(cpu['leaf'])}"],
        ["memory per idle stream (bytes)", _fmt(report["idle_stream_bytes"])],
        ["root CPU % with idle tunnels", _fmt(report["idle_tunnels_cpu_percent"], ".1f")],
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    label_width = max(len(label) for label, _ in extra)
    lines.append(f"(ratio = the leg's MB/s / {BASELINE}'s, {report['params']['aggregate']})")
    lines.append("")
    lines.extend(f"{label.ljust(label_width)}  {value}" for label, value in extra)
    lines.append("")
    lines.extend(echo_table(report["tetherd_echo"], n))
    if report["missing"]:
        lines.append("")
        lines.extend(f"n/a {key}: {why}" for key, why in report["missing"].items())
    return "\n".join(lines)


def echo_table(echo: dict[str, Any], n: str) -> list[str]:
    """The lines of the figure through real ``tetherd`` processes: MB/s and CPU s/GB (all
    processes but the load generator) per path, the ratio, and each role's CPU."""
    header = [
        "through tetherd (echo)",
        "1 stream MB/s",
        f"{n} streams MB/s",
        "CPU s/GB 1",
        f"CPU s/GB {n}",
    ]
    rows = []
    for name in echo_path.PATHS:
        cpu = echo["cpu_s_per_gb"][name]
        rows.append(
            [
                name,
                _fmt(echo["mb_s"][name].get("1")),
                _fmt(echo["mb_s"][name].get(n)),
                _fmt(cpu.get("1", {}).get("total"), ".2f"),
                _fmt(cpu.get(n, {}).get("total"), ".2f"),
            ]
        )
    ratio = echo["ratio_vs_openssh_aes128"]
    rows.append(["ratio", _fmt(ratio.get("1"), ".2f", "x"), _fmt(ratio.get(n), ".2f", "x"), "", ""])
    lines = tables.grid(header, rows)
    for name in echo_path.PATHS:
        for key in ("1", n):
            by_role = echo["cpu_s_per_gb"][name].get(key)
            if by_role:
                roles = ", ".join(f"{r} {by_role[r]:.2f}" for r in echo_path.ROLES)
                lines.append(f"  {name} CPU s/GB, {key} stream(s): {roles}")
    for name, what in echo["negotiated"].items():
        lines.append(f"  {name} negotiated {what}")
    return lines


def chart(report: dict[str, Any], path: pathlib.Path) -> bool:
    """A grouped bar chart (1 and N streams per leg); False, with a note, without matplotlib."""
    plt = results.pyplot()
    if plt is None:
        return False
    n = str(report["params"]["parallel_streams"])
    names = list(report["mb_s"])
    fig, (ax, echo_ax) = plt.subplots(
        1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [len(report["mb_s"]), 2]}
    )
    _bars(ax, names, n, lambda name, key: (report["mb_s"][name][key], ""))
    ax.set_ylabel("MB/s (10^6 bytes/s)")
    m = report["machine"]
    ax.set_title(
        f"Tunnel throughput on loopback, {report['params']['aggregate']}\n"
        f"{m['cpu_model']}, {m['cores_usable']} cores, {m['memory_gib']} GiB, {m['date']}\n"
        f"{m['kernel']}, {m['python']}, {m['openssh'] or 'no OpenSSH'}",
        fontsize=9,
    )
    ax.legend()
    echo_chart(echo_ax, report["tetherd_echo"], n)
    results.save_chart(plt, fig, path)
    return True


def _bars(
    ax: Any, names: list[str], n: str, value: Callable[[str, str], tuple[float | None, str]]
) -> None:
    """Grouped bars, 1 and ``n`` streams per name, each labelled with its MB/s and the note
    ``value`` gives with it."""
    width = 0.38
    for offset, key, label in ((-width / 2, "1", "1 stream"), (width / 2, n, f"{n} streams")):
        xs = [i + offset for i in range(len(names))]
        values = [value(name, key) for name in names]
        bars = ax.bar(xs, [v or 0 for v, _ in values], width, label=label)
        results.label_bars(ax, bars, [tables.fmt(mb_s, ".0f", note) for mb_s, note in values])
    ax.set_xticks(range(len(names)), names)


def echo_chart(ax: Any, echo: dict[str, Any], n: str) -> None:
    """The figure through real ``tetherd`` processes: MB/s per path, CPU s/GB on each bar."""

    def bar(name: str, key: str) -> tuple[float | None, str]:
        spent = echo["cpu_s_per_gb"][name].get(key, {}).get("total")
        return echo["mb_s"][name].get(key), f"\n{tables.fmt(spent, '.1f')} s/GB"

    _bars(ax, list(echo_path.PATHS), n, bar)
    ax.margins(y=0.15)
    ax.set_ylabel("MB/s echoed (one way); CPU s/GB of every process")
    ratio = echo["ratio_vs_openssh_aes128"]
    ax.set_title(
        "Through real tetherd: root proxy -> leaf tunnel -> leaf\n-> node tunnel -> echo, "
        f"and back; ratio {tables.fmt(ratio.get('1'), '.2f', 'x')} / "
        f"{tables.fmt(ratio.get(n), '.2f', 'x')}",
        fontsize=9,
    )
    ax.legend()


def index_line(report: dict[str, Any], json_name: str, png_name: str | None) -> str:
    """One line of ``results/README.md``: headline figures, machine, files."""
    n = str(report["params"]["parallel_streams"])
    figures = ", ".join(f"{name} {_fmt(f['1'])}/{_fmt(f[n])}" for name, f in report["mb_s"].items())
    lat = report["open_latency_ms"]["median"]
    echo = report["tetherd_echo"]["mb_s"]["tetherd"]
    ratio = report["tetherd_echo"]["ratio_vs_openssh_aes128"]
    quick = " (--quick)" if report["params"]["quick"] else ""
    files = f"[json]({json_name})" + (f", [chart]({png_name})" if png_name else "")
    return (
        f"- {report['machine']['date']} `{NAME}`{quick}: MB/s 1/{n} streams: {figures}; "
        f"through tetherd {_fmt(echo.get('1'))}/{_fmt(echo.get(n))} MB/s "
        f"({_fmt(ratio.get('1'), '.2f', 'x')}/{_fmt(ratio.get(n), '.2f', 'x')} of OpenSSH); "
        f"open latency median {_fmt(lat, '.3f')} ms; {machine.summary(report['machine'])}; "
        f"{files}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tunnel_throughput.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="256 MiB and 8 x 64 MiB, one repeat (< 2 minutes)"
    )
    parser.add_argument(
        "--size-mb",
        type=int,
        metavar="N",
        help="MiB on the single stream; each of the 8 parallel streams carries N/4 "
        "(default 1024, --quick 256)",
    )
    parser.add_argument(
        "--repeat", type=int, metavar="R", help="rounds per leg, median kept (default 3, --quick 1)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(FIGURES),
        metavar="FIGURE",
        help=f"measure only this figure, repeatable ({', '.join(FIGURES)}; default all)",
    )
    results.add_output_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Measure every leg, print the table, write the JSON, chart and index line."""
    args = parse_args(argv)
    params = Params.from_args(args)
    started = time.monotonic()
    sshd: str | None = None
    problem: str | None = None
    throughput = "throughput" in params.only
    try:
        if throughput or "tetherd" in params.only:
            sshd = openssh.ensure_openssh()
    except openssh.Unavailable as exc:
        problem = str(exc)
        print(f"OpenSSH legs skipped: {problem}", flush=True)
    machine_info = machine.describe()  # after a possible install, so it names OpenSSH
    forwards: dict[str, Forward] = {
        "tether": lambda sink: tether_forward(sink),  # looked up at call time (tests stub it)
        **{
            name: openssh_forward(name, cipher, sshd, problem)
            for name, cipher in openssh.CIPHERS.items()
        },
        "raw_tcp": loadgen.raw_tcp,
    }
    legs = [LegResult(name, missing="not run (--only)") for name in LEGS]
    if throughput:
        legs = []
        with loadgen.Sink() as sink:
            for name in LEGS:
                print(f"{name}:", flush=True)
                legs.append(run_leg(name, forwards[name], sink, params))
    secondary, secondary_missing = secondary_figures(params)
    failed = any(leg.failed for leg in legs)
    secondary["tetherd_echo"] = echo_path.empty()
    if "tetherd" not in params.only:
        secondary_missing["tetherd_echo"] = "not run (--only)"
    else:
        print("tetherd_echo:", flush=True)
        try:
            secondary["tetherd_echo"] = tetherd_echo(params, sshd, problem)
            for name, why in secondary["tetherd_echo"]["missing"].items():
                secondary_missing[f"tetherd_echo {name}"] = why
        except NotImplementedError as exc:
            secondary_missing["tetherd_echo"] = str(exc)
        except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
            secondary_missing["tetherd_echo"] = f"failed: {exc}"
            failed = True
            print(f"  tetherd_echo: FAILED: {exc}", flush=True)
    report = build_report(machine_info, params, legs, secondary, secondary_missing)
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)

    results.save_report(NAME, report, args, table=table, chart=chart, index_line=index_line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
