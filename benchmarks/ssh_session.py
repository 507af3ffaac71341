"""SSH sessions: ``tether ssh`` against OpenSSH through a jump host (``ssh -J``), on loopback.

One run starts, on 127.0.0.1, a Tether cluster (auth, proxy and an SSH node in one ``tetherd``,
plus a node joined in tunnel mode) and two OpenSSH ``sshd`` (a jump host and a target), and
measures every leg in the same run, the legs interleaved round by round:

- ``tether_tunnel``: ``tether ssh root@bench-node`` -> proxy -> the node's reverse tunnel;
- ``tether_auth``: ``tether ssh root@auth-node`` -> proxy -> the node in the auth process;
- ``openssh_jump``: ``ssh -J jump target`` (the baseline: two full handshakes, as Tether's
  client->proxy TLS plus end-to-end SSH); ``openssh_direct``: ``ssh target``, a reference.

Session setup is the wall time of ``CLIENT NODE true`` (a fresh client process each run, as a
user types it, stdin from /dev/null), median and p90 (nearest rank) of ``--runs`` runs after
one discarded warm-up. Start-up references, timed the same way, split Tether's figure:
``python_startup`` (``python -c pass``), ``tether_version`` (the console script with its
plugins loaded, no network) and ``shell_true`` (root's shell running ``true`` as both SSH
servers start it, SSH_CLIENT set, so it reads ~/.bashrc; it is inside every leg's figure).

Bulk is ``head -c N /dev/zero | CLIENT NODE 'cat > /dev/null'``: MB/s (10**6 bytes) = N / the
pipeline's wall time (session setup included), the median of ``--repeat`` runs (at least 5 by
default; the spread, min to max, is stored with it), after one unmeasured run of ``wc -c`` that
checks all N bytes arrived. The legs take turns run by run, in reverse order every other round,
so that drift on a shared machine falls on every leg alike. The CPU each process used during a
run (client side, proxy, node, sshd) is stored with it: the process near 100% of a core is the
limit.

The table, ``--json FILE`` and ``benchmarks/results/ssh_session-<stamp>.json`` / ``.png`` carry
every raw sample, the ratios Tether/``openssh_jump`` and the machine described; a leg that
cannot run here is null in JSON and "n/a" in the table, with the reason under "missing".
``--profile DIR`` adds one py-spy recording per Tether leg (client, proxy, node) of a setup
and a bulk run, and a summary of where the samples fall.

    python benchmarks/ssh_session.py [--quick] [--json FILE] [--runs N] [--size-mb N]
        [--repeat R] [--profile DIR]
"""

# No ``from __future__ import annotations`` here: tests load harnesses without registering
# them in sys.modules, and dataclasses then cannot resolve string annotations.
import argparse
import contextlib
import dataclasses
import math
import os
import pathlib
import pwd
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, from run_all.py, or imported by a test
    sys.path.insert(0, str(HERE))

import machine  # noqa: E402
from _benchlib import daemon_settings, openssh, results, ssh_profile, ssh_sites, tables  # noqa: E402
from _benchlib.procs import children_of, cpu_times, owned_process  # noqa: E402
from _benchlib.ssh_sites import Remote  # noqa: E402

_fmt = tables.fmt

NAME = "ssh_session"
TETHER_LEGS = ("tether_tunnel", "tether_auth")
OPENSSH_LEGS = ("openssh_jump", "openssh_direct")
REMOTE_LEGS = (*TETHER_LEGS, *OPENSSH_LEGS)
REFERENCE_LEGS = ("python_startup", "tether_version", "shell_true")
BASELINE = "openssh_jump"
#: the targets this harness reports against (issue "SSH access"), never tuned towards
SETUP_TARGET = 1.5  # Tether's setup median at most this times the baseline's
BULK_TARGET = 1.0  # Tether's bulk MB/s at least this times the baseline's
SETUP_COMMAND = "true"
BULK_COMMAND = "cat > /dev/null"
VERIFY_COMMAND = "wc -c"
SETUP_TIMEOUT = 60.0
#: a bulk run slower than this floor is treated as hung (seconds = 60 + N / floor)
BULK_FLOOR_BYTES_PER_S = 5_000_000
MAX_FAILURES = 3  # per leg; a leg that keeps failing is dropped, not retried forever
#: bulk runs per leg by default: its figure is their median (runs spread 177-294 MB/s for the
#: same leg on this shared machine, so one run, or the best of a few, says little)
BULK_REPEAT = 5
MIB = 1 << 20
PROFILE_BULK_BYTES = 256 * MIB


@dataclasses.dataclass(frozen=True)
class Command:
    """A local command line, how it is started."""

    argv: list[str]
    env: Mapping[str, str]
    cwd: str | None = None
    new_session: bool = False


# --- the sites: looked up at call time, so tests can stub them -------------------------------


def tether_site() -> AbstractContextManager[dict[str, Remote]]:
    """The Tether legs (``tether_tunnel``, ``tether_auth``), their cluster up meanwhile."""
    return ssh_sites.tether_site()


def openssh_site(sshd: str) -> AbstractContextManager[dict[str, Remote]]:
    """The OpenSSH legs (``openssh_jump``, ``openssh_direct``), their sshd up meanwhile."""
    return ssh_sites.openssh_site(sshd)


def reference_commands(tether: Sequence[str]) -> dict[str, Command]:
    """The start-up references: the interpreter, the Tether CLI, root's shell as sshd runs it."""
    root = pwd.getpwnam(ssh_sites.LOGIN)
    shell = root.pw_shell or "/bin/sh"
    session_env = {
        "HOME": root.pw_dir,
        "USER": root.pw_name,
        "LOGNAME": root.pw_name,
        "SHELL": shell,
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "SSH_CLIENT": "127.0.0.1 50000 22",  # what makes bash read ~/.bashrc, in both servers
    }
    return {
        "python_startup": Command([sys.executable, "-c", "pass"], ssh_sites.user_env()),
        "tether_version": Command([*tether, "version"], ssh_sites.user_env()),
        "shell_true": Command(
            [shell, "-c", SETUP_COMMAND], session_env, cwd=root.pw_dir, new_session=True
        ),
    }


# --- parameters -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Params:
    """What one run measures; stored in the results so figures are read with their sizes."""

    quick: bool
    setup_runs: int
    bulk_bytes: int
    bulk_repeat: int
    tether_program: str
    warmup_runs: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Params":
        runs = args.runs if args.runs is not None else (5 if args.quick else 50)
        size_mib = args.size_mb if args.size_mb is not None else (64 if args.quick else 1024)
        repeat = args.repeat if args.repeat is not None else (3 if args.quick else BULK_REPEAT)
        if runs < 1 or size_mib < 1 or repeat < 1:
            raise SystemExit("--runs, --size-mb and --repeat must be at least 1")
        return cls(
            quick=args.quick,
            setup_runs=runs,
            bulk_bytes=size_mib * MIB,
            bulk_repeat=repeat,
            tether_program=ssh_sites.tether_program()[1],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "setup_command": SETUP_COMMAND,
            "bulk_command": f"head -c {self.bulk_bytes} /dev/zero | CLIENT NODE '{BULK_COMMAND}'",
            "verify_command": VERIFY_COMMAND,
            "setup_aggregate": f"median and p90 (nearest rank) of {self.setup_runs} runs",
            "bulk_aggregate": f"median of {self.bulk_repeat} run(s), legs interleaved run by "
            "run (reversed every other round); bulk_spread_mb_s has min, max and each run",
            "mb": "10**6 bytes",
            "bulk_throughput": "bytes / wall time of the whole pipeline (session setup included)",
            "openssh_cipher": ssh_sites.OPENSSH_CIPHER,
            "tether_ciphers": "the client's preference: aes256-gcm, aes128-gcm, chacha20-poly1305",
            "daemons_log_severity": daemon_settings.LOG_DESCRIPTION,
            "login": ssh_sites.LOGIN,
            "targets": {
                f"setup_ratio_vs_{BASELINE}_at_most": SETUP_TARGET,
                f"bulk_ratio_vs_{BASELINE}_at_least": BULK_TARGET,
            },
        }


# --- running one command --------------------------------------------------------------------


class RunFailed(Exception):
    """A run exited non-zero, hung, or lost data; the message says how to see it again."""


@dataclasses.dataclass(frozen=True)
class Ran:
    seconds: float
    stdout: bytes
    #: CPU seconds during the run: "client" (every process this harness waited for: the
    #: client, its helpers and ``head``), then each server process and its reaped children
    cpu: dict[str, float]
    stderr: bytes = b""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_snapshot(server_pids: Mapping[str, int]) -> dict[str, float]:
    snapshot = {"client": _children_cpu()}
    for role, pid in server_pids.items():
        own, children = cpu_times(pid)
        snapshot[role] = own
        snapshot[f"{role} children"] = children
    return snapshot


def _wait_reaped(server_pids: Mapping[str, int], grace: float = 2.0) -> None:
    """Let servers reap the session's processes (sshd's per-connection children end just
    after the client), so their CPU shows in the servers' children figures."""
    deadline = time.monotonic() + grace
    while any(children_of(pid) for pid in server_pids.values()) and time.monotonic() < deadline:
        time.sleep(0.02)


def repro(command: Command) -> str:
    """The command as a shell line, with the environment it needs beyond the usual."""
    extra = {k: v for k, v in command.env.items() if k in ("TETHER_HOME", "SSH_CLIENT")}
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items())
    return (prefix + " " if prefix else "") + shlex.join(command.argv)


def run(
    command: Command,
    timeout: float,
    feed_bytes: int | None = None,
    server_pids: Mapping[str, int] | None = None,
) -> Ran:
    """Run ``command`` to its end and time it; with ``feed_bytes``, ``head -c N /dev/zero``
    feeds its stdin (else /dev/null). Raises RunFailed on a non-zero exit or a timeout."""
    pids = server_pids or {}
    shown = repro(command)
    if feed_bytes is not None:
        shown = f"head -c {feed_bytes} /dev/zero | {shown}"
    with contextlib.ExitStack() as stack:
        before = _cpu_snapshot(pids)
        started = time.perf_counter()
        stdin: Any = subprocess.DEVNULL
        head = None
        if feed_bytes is not None:
            head = stack.enter_context(
                owned_process(["head", "-c", str(feed_bytes), "/dev/zero"], stdout=subprocess.PIPE)
            )
            stdin = head.stdout
        proc = stack.enter_context(
            owned_process(
                command.argv,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(command.env),
                cwd=command.cwd,
                start_new_session=command.new_session,
            )
        )
        if head is not None and head.stdout is not None:
            head.stdout.close()  # the client holds the pipe now: head sees EPIPE if it quits
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"no exit after {timeout:.0f}s (hung): {shown}") from None
        if head is not None:
            head.wait(timeout=10)
        seconds = time.perf_counter() - started
        _wait_reaped(pids)
        after = _cpu_snapshot(pids)
    if proc.returncode != 0:
        tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
        raise RunFailed(f"exit {proc.returncode}: {shown}: {tail or 'no message'}")
    if head is not None and head.returncode != 0:
        raise RunFailed(
            f"the client stopped reading its input (head exited {head.returncode}): {shown}"
        )
    cpu = {role: round(after[role] - before[role], 3) for role in before}
    return Ran(seconds, out, cpu, err)


# --- the legs -------------------------------------------------------------------------------


@dataclasses.dataclass
class Leg:
    """Every sample of one leg, or why there are none."""

    name: str
    setup: list[float] = dataclasses.field(default_factory=list)
    setup_cpu: list[dict[str, float]] = dataclasses.field(default_factory=list)
    warmup: list[float] = dataclasses.field(default_factory=list)
    bulk: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    verify: dict[str, Any] | None = None
    missing: str | None = None
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return self.missing is not None or len(self.failures) >= MAX_FAILURES

    def fail(self, exc: RunFailed) -> None:
        self.failures.append(str(exc))
        print(f"  {self.name}: FAILED: {exc}", flush=True)

    def setup_figures(self) -> dict[str, float | None]:
        if not self.setup or self.missing:
            return {"median": None, "p90": None, "min": None, "client_cpu_median": None}
        ordered = sorted(self.setup)
        p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
        return {
            "median": round(statistics.median(ordered), 4),
            "p90": round(p90, 4),
            "min": round(ordered[0], 4),
            "client_cpu_median": round(statistics.median(c["client"] for c in self.setup_cpu), 3),
        }

    def bulk_median(self) -> float | None:
        return round(statistics.median(r["mb_s"] for r in self.bulk), 1) if self.bulk else None

    def bulk_median_run(self) -> dict[str, Any] | None:
        """The run whose MB/s is the median (the lower middle one of an even count): its
        CPU figures are the ones shown."""
        ordered = sorted(self.bulk, key=lambda r: r["mb_s"])
        return ordered[(len(ordered) - 1) // 2] if ordered else None

    def bulk_spread(self) -> dict[str, Any] | None:
        if not self.bulk:
            return None
        values = [r["mb_s"] for r in self.bulk]
        return {"runs": len(values), "min": min(values), "max": max(values), "each": values}


def measure_setup(
    legs: dict[str, Leg],
    commands: dict[str, Command],
    params: Params,
    server_pids: Mapping[str, Mapping[str, int]],
) -> None:
    """Warm-up, then ``setup_runs`` rounds, each running every leg once, in turn."""
    order = [name for name in (*REMOTE_LEGS, *REFERENCE_LEGS) if name in commands]
    for round_ in range(-params.warmup_runs, params.setup_runs):
        for name in order:
            leg = legs[name]
            if leg.dropped:
                continue
            try:
                ran = run(commands[name], SETUP_TIMEOUT, server_pids=server_pids.get(name))
            except RunFailed as exc:
                leg.fail(exc)
                continue
            if round_ < 0:
                leg.warmup.append(round(ran.seconds, 4))
            else:
                leg.setup.append(round(ran.seconds, 4))
                leg.setup_cpu.append(ran.cpu)
        if round_ >= 0 and ((round_ + 1) % 10 == 0 or round_ + 1 == params.setup_runs):
            done = ", ".join(
                f"{name} {statistics.median(legs[name].setup):.3f}s"
                for name in order
                if legs[name].setup
            )
            print(f"  setup {round_ + 1}/{params.setup_runs}: medians {done}", flush=True)


def _bulk_timeout(nbytes: int) -> float:
    return 60.0 + nbytes / BULK_FLOOR_BYTES_PER_S


def measure_bulk(legs: dict[str, Leg], remotes: dict[str, Remote], params: Params) -> None:
    """One ``wc -c`` run per leg checks every byte arrives; then ``bulk_repeat`` rounds, each
    running every leg once, in reverse order every other round."""
    order = [name for name in REMOTE_LEGS if name in remotes]
    n = params.bulk_bytes
    for name in order:
        leg, remote = legs[name], remotes[name]
        if leg.dropped:
            continue
        try:
            ran = run(Command(remote.argv(VERIFY_COMMAND), remote.env), _bulk_timeout(n), n)
        except RunFailed as exc:
            leg.fail(exc)
            continue
        got = ran.stdout.decode(errors="replace").strip()
        leg.verify = {"bytes_sent": n, "bytes_received": got, "seconds": round(ran.seconds, 3)}
        if got != str(n):
            cmd = Command(remote.argv(VERIFY_COMMAND), remote.env)
            leg.fail(RunFailed(f"{got or 'no'} bytes arrived of {n}: head -c {n} | {repro(cmd)}"))
        else:
            print(f"  {name}: {n // MIB} MiB arrived intact ({ran.seconds:.2f}s)", flush=True)
    for r in range(params.bulk_repeat):
        for name in order if r % 2 == 0 else order[::-1]:
            leg, remote = legs[name], remotes[name]
            if leg.dropped:
                continue
            command = Command(remote.argv(BULK_COMMAND), remote.env)
            try:
                ran = run(command, _bulk_timeout(n), n, remote.server_pids)
            except RunFailed as exc:
                leg.fail(exc)
                continue
            mb_s = n / ran.seconds / 1e6
            cores = {role: round(cpu / ran.seconds * 100, 1) for role, cpu in ran.cpu.items()}
            per_mb = {role: round(cpu / (n / 1e6) * 1000, 2) for role, cpu in ran.cpu.items()}
            leg.bulk.append(
                {
                    "seconds": round(ran.seconds, 3),
                    "mb_s": round(mb_s, 1),
                    "cpu_seconds": ran.cpu,
                    "cpu_percent_of_a_core": cores,
                    "cpu_ms_per_mb": per_mb,
                }
            )
            busy = ", ".join(f"{role} {pct:.0f}%" for role, pct in cores.items() if pct >= 1)
            print(
                f"  {name}: {n // MIB} MiB in {ran.seconds:.2f}s = {mb_s:.1f} MB/s "
                f"(repeat {r + 1}/{params.bulk_repeat}; CPU {busy})",
                flush=True,
            )


# --- what each side negotiated ---------------------------------------------------------------

#: What a verbose client says it negotiated, per hop: ``ssh -v`` for each of its connections,
#: ``tether -d ssh`` for its TLS connection to the proxy and its SSH session with the node.
NEGOTIATION = {
    "ssh_cipher": re.compile(r"kex: client->server cipher: (\S+)|SSH cipher (\S+)"),
    "ssh_kex": re.compile(r"kex: algorithm: (\S+)"),
    "tls": re.compile(r"negotiated with the proxy at \S+: (\S+ \S+)"),
}


def negotiated(remotes: Mapping[str, Remote]) -> dict[str, Any]:
    """What each leg's client negotiated (one verbose run of ``true`` each): per kind, one
    entry per hop in order; a leg whose run failed has the reason instead."""
    found: dict[str, Any] = {}
    for name, remote in remotes.items():
        if not remote.verbose_prefix:
            continue
        try:
            said = run(Command([*remote.verbose_prefix, SETUP_COMMAND], remote.env), SETUP_TIMEOUT)
        except RunFailed as exc:
            found[name] = str(exc)
            continue
        stderr = said.stderr.decode(errors="replace")
        found[name] = {
            kind: [group for match in pattern.finditer(stderr) for group in match.groups() if group]
            for kind, pattern in NEGOTIATION.items()
        }
    return found


# --- the report -----------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value is not None and base else None


def _met(ratio: float | None, ok: bool) -> bool | None:
    return None if ratio is None else ok


def breakdown(setup: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Each remote leg's setup median split into start-up references and the rest (s)."""
    python = setup["python_startup"]["median"]
    version = setup["tether_version"]["median"]
    shell = setup["shell_true"]["median"]
    parts: dict[str, dict[str, float | None]] = {}
    for name in REMOTE_LEGS:
        total = setup[name]["median"]
        if total is None:
            continue
        if name in TETHER_LEGS and None not in (python, version, shell):
            assert python is not None and version is not None and shell is not None
            parts[name] = {
                "total": total,
                "python_startup": python,
                "tether_imports_and_plugins": round(version - python, 4),
                "shell_true_on_the_node": shell,
                "session_rest": round(total - version - shell, 4),
            }
        elif shell is not None:
            parts[name] = {
                "total": total,
                "shell_true_on_the_node": shell,
                "session_rest": round(total - shell, 4),
            }
    return parts


def build_report(
    machine_info: dict[str, Any],
    params: Params,
    legs: dict[str, Leg],
    load: dict[str, Any],
    negotiation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document: every leg present, null where not measured, every raw sample."""
    setup = {name: leg.setup_figures() for name, leg in legs.items()}
    bulk = {name: legs[name].bulk_median() for name in REMOTE_LEGS}
    base_setup = setup[BASELINE]["median"]
    setup_ratio = {name: _ratio(setup[name]["median"], base_setup) for name in REMOTE_LEGS}
    bulk_ratio = {name: _ratio(bulk[name], bulk[BASELINE]) for name in REMOTE_LEGS}
    return {
        "benchmark": NAME,
        "machine": machine_info,
        "load_average": load,
        "params": params.to_json(),
        "setup_seconds": setup,
        "bulk_mb_s": bulk,
        "bulk_spread_mb_s": {name: legs[name].bulk_spread() for name in REMOTE_LEGS},
        f"setup_ratio_vs_{BASELINE}": setup_ratio,
        f"bulk_ratio_vs_{BASELINE}": bulk_ratio,
        "targets_met": {
            name: {
                "setup": _met(setup_ratio[name], (setup_ratio[name] or 0) <= SETUP_TARGET),
                "bulk": _met(bulk_ratio[name], (bulk_ratio[name] or 0) >= BULK_TARGET),
            }
            for name in TETHER_LEGS
        },
        "setup_breakdown_seconds": breakdown(setup),
        "negotiated": {
            "what": "what each leg's client negotiated, per hop in order (from ssh -v and "
            "tether -d ssh); the figures are measured with these",
            **(negotiation or {}),
        },
        "setup_samples": {name: leg.setup for name, leg in legs.items()},
        "setup_cpu_seconds_samples": {name: leg.setup_cpu for name, leg in legs.items()},
        "setup_warmup_samples": {name: leg.warmup for name, leg in legs.items()},
        "bulk_samples": {name: legs[name].bulk for name in REMOTE_LEGS},
        "bulk_verify": {name: legs[name].verify for name in REMOTE_LEGS},
        "failures": {name: leg.failures for name, leg in legs.items() if leg.failures},
        "missing": {name: leg.missing for name, leg in legs.items() if leg.missing},
    }


def table(report: dict[str, Any]) -> str:
    """The printed summary: setup, bulk, the ratios to ``ssh -J``, and the setup breakdown."""
    p = report["params"]
    setup, bulk = report["setup_seconds"], report["bulk_mb_s"]
    setup_ratio = report[f"setup_ratio_vs_{BASELINE}"]
    bulk_ratio = report[f"bulk_ratio_vs_{BASELINE}"]
    lines = [f"session setup ({p['setup_command']!r}, {p['setup_aggregate']}):"]
    rows = [
        [
            name if name in REMOTE_LEGS else f"{name} (reference)",
            _fmt(setup[name]["median"]),
            _fmt(setup[name]["p90"]),
            _fmt(setup_ratio.get(name), ".2f", "x") if name in REMOTE_LEGS else "",
            _fmt(setup[name]["client_cpu_median"]),
        ]
        for name in (*REMOTE_LEGS, *REFERENCE_LEGS)
    ]
    lines += tables.grid(["leg", "median s", "p90 s", f"/ {BASELINE}", "client CPU s"], rows)
    lines.append("")
    lines.append(
        f"bulk ({p['bulk_bytes'] // MIB} MiB into {BULK_COMMAND!r}, {p['bulk_aggregate']}):"
    )
    rows = []
    for name in REMOTE_LEGS:
        middle = Leg(name, bulk=report["bulk_samples"][name]).bulk_median_run()
        cpu = middle["cpu_ms_per_mb"] if middle else {}
        spread = report["bulk_spread_mb_s"][name]
        rows.append(
            [
                name,
                _fmt(bulk[name], ".1f"),
                f"{spread['min']:.0f}-{spread['max']:.0f}" if spread else "n/a",
                _fmt(bulk_ratio[name], ".2f", "x"),
                ", ".join(f"{role} {ms:.1f}" for role, ms in cpu.items() if ms >= 0.05),
            ]
        )
    lines += tables.grid(
        ["leg", "MB/s", "min-max", f"/ {BASELINE}", "CPU ms per MB in the median run"], rows
    )
    lines.append(
        "(CPU: client = every local process of the pipeline, start-up included; a server's "
        "children = its reaped session processes)"
    )
    lines.append("")
    lines.append(
        f"targets: setup <= {SETUP_TARGET}x and bulk >= {BULK_TARGET}x {BASELINE}: "
        + "; ".join(
            f"{name} setup {_verdict(met['setup'])}, bulk {_verdict(met['bulk'])}"
            for name, met in report["targets_met"].items()
        )
    )
    if report["setup_breakdown_seconds"]:
        lines.append("")
        lines.append("setup breakdown (medians, s): total = parts")
        for name, parts in report["setup_breakdown_seconds"].items():
            split = " + ".join(f"{k} {v:.3f}" for k, v in parts.items() if k != "total")
            lines.append(f"  {name}: {parts['total']:.3f} = {split}")
    legs_negotiated = {k: v for k, v in report.get("negotiated", {}).items() if k != "what"}
    if legs_negotiated:
        lines.append("")
        lines.append("negotiated (per hop, from a verbose run of each client):")
        for name, kinds in legs_negotiated.items():
            said = (
                "; ".join(f"{kind} {', '.join(values)}" for kind, values in kinds.items() if values)
                if isinstance(kinds, dict)
                else kinds
            )
            lines.append(f"  {name}: {said or 'nothing said'}")
    for key in ("failures", "missing"):
        for name, why in report[key].items():
            lines.append(f"{'FAILED' if key == 'failures' else 'n/a'} {name}: {why}")
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "MISSED"


def chart(report: dict[str, Any], path: pathlib.Path) -> bool:
    """Setup medians (p90 whiskers) and bulk MB/s side by side; False without matplotlib."""
    plt = results.pyplot()
    if plt is None:
        return False
    p, m = report["params"], report["machine"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [7, 4]})
    names = [*REMOTE_LEGS, *REFERENCE_LEGS]
    medians = [report["setup_seconds"][n]["median"] for n in names]
    p90s = [report["setup_seconds"][n]["p90"] for n in names]
    ms = [(v or 0) * 1000 for v in medians]
    whiskers = [
        [0 for _ in names],
        [((q or 0) - (v or 0)) * 1000 for v, q in zip(medians, p90s, strict=True)],
    ]
    colors = ["tab:blue"] * 2 + ["tab:orange"] * 2 + ["tab:gray"] * 3
    bars = left.bar(range(len(names)), ms, yerr=whiskers, color=colors, capsize=3)
    results.label_bars(
        left,
        bars,
        [tables.fmt(v and v * 1000, ".0f") for v in medians],
        tops=[max(v or 0, q or 0) * 1000 for v, q in zip(medians, p90s, strict=True)],
    )
    left.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    left.set_ylabel("ms (median, whisker to p90)")
    left.set_title(f"session setup: `{p['setup_command']}`, {p['setup_runs']} runs", fontsize=9)
    values = [report["bulk_mb_s"][n] for n in REMOTE_LEGS]
    spreads = [report["bulk_spread_mb_s"][n] for n in REMOTE_LEGS]
    whiskers = [
        [(v or 0) - (s["min"] if s else 0) for v, s in zip(values, spreads, strict=True)],
        [(s["max"] if s else 0) - (v or 0) for v, s in zip(values, spreads, strict=True)],
    ]
    bars = right.bar(
        range(len(REMOTE_LEGS)),
        [v or 0 for v in values],
        yerr=whiskers,
        color=colors[:4],
        capsize=3,
    )
    results.label_bars(
        right,
        bars,
        [tables.fmt(v, ".0f") for v in values],
        tops=[max(v or 0, s["max"] if s else 0) for v, s in zip(values, spreads, strict=True)],
    )
    right.set_xticks(range(len(REMOTE_LEGS)), REMOTE_LEGS, rotation=25, ha="right", fontsize=8)
    right.set_ylabel("MB/s (10^6 bytes/s)")
    right.set_title(
        f"bulk: {p['bulk_bytes'] // MIB} MiB into `{BULK_COMMAND}`\n"
        f"median of {p['bulk_repeat']} runs, whiskers min to max",
        fontsize=9,
    )
    fig.suptitle(
        f"SSH sessions on loopback: Tether vs OpenSSH ({m['date']})\n"
        f"{m['cpu_model']}, {m['cores_usable']} cores, {m['memory_gib']} GiB, "
        f"{m['kernel']}, {m['python']}, {m['openssh'] or 'no OpenSSH'}",
        fontsize=9,
    )
    results.save_chart(plt, fig, path)
    return True


def index_line(report: dict[str, Any], json_name: str, png_name: str | None) -> str:
    """One line of ``results/README.md``: headline figures, machine, files."""
    setup = ", ".join(
        f"{name} {_fmt(report['setup_seconds'][name]['median'])}" for name in REMOTE_LEGS
    )
    bulk = ", ".join(f"{name} {_fmt(report['bulk_mb_s'][name], '.0f')}" for name in REMOTE_LEGS)
    ratios = ", ".join(
        f"{name} {_fmt(report[f'setup_ratio_vs_{BASELINE}'][name], '.2f', 'x')}/"
        f"{_fmt(report[f'bulk_ratio_vs_{BASELINE}'][name], '.2f', 'x')}"
        for name in TETHER_LEGS
    )
    quick = " (--quick)" if report["params"]["quick"] else ""
    files = f"[json]({json_name})" + (f", [chart]({png_name})" if png_name else "")
    return (
        f"- {report['machine']['date']} `{NAME}`{quick}: setup median s: {setup}; "
        f"bulk MB/s (median of {report['params']['bulk_repeat']}): {bulk}; "
        f"setup/bulk vs {BASELINE}: {ratios}; "
        f"{machine.summary(report['machine'])}; {files}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ssh_session.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="5 setup runs and three 64 MiB bulk runs per leg (about a minute)",
    )
    parser.add_argument(
        "--runs", type=int, metavar="N", help="setup runs per leg (default 50, --quick 5)"
    )
    parser.add_argument(
        "--size-mb", type=int, metavar="N", help="MiB per bulk run (default 1024, --quick 64)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="R",
        help=f"bulk runs per leg, their median reported (default {BULK_REPEAT}, --quick 3)",
    )
    parser.add_argument(
        "--profile",
        type=pathlib.Path,
        metavar="DIR",
        help="also record py-spy profiles of one setup and one bulk run per Tether leg here",
    )
    results.add_output_args(parser)
    return parser.parse_args(argv)


def _enter_site(
    stack: contextlib.ExitStack,
    names: Sequence[str],
    legs: dict[str, Leg],
    opener: Any,
) -> dict[str, Remote]:
    """Start one site; on failure its legs are marked failed with the reason, not raised."""
    try:
        remotes: dict[str, Remote] = stack.enter_context(opener())
    except (openssh.Unavailable, NotImplementedError) as exc:
        for name in names:
            legs[name].missing = str(exc)
        print(f"  {', '.join(names)}: n/a ({exc})", flush=True)
        return {}
    except (AssertionError, OSError, RuntimeError, subprocess.SubprocessError) as exc:
        for name in names:
            legs[name].missing = f"failed to start: {exc}"
            legs[name].failures.append(f"failed to start: {exc}")
        print(f"  {', '.join(names)}: FAILED to start: {exc}", flush=True)
        return {}
    return remotes


def main(argv: list[str]) -> int:
    """Start both sites, measure every leg, print the table, write the JSON, chart and index."""
    args = parse_args(argv)
    params = Params.from_args(args)
    started = time.monotonic()
    load_before = os.getloadavg()
    sshd: str | None = None
    problem = "sshd is not available"
    try:
        sshd = openssh.ensure_openssh()
    except openssh.Unavailable as exc:
        problem = str(exc)
        print(f"OpenSSH legs skipped: {problem}", flush=True)
    machine_info = machine.describe()  # after a possible install, so it names OpenSSH
    legs = {name: Leg(name) for name in (*REMOTE_LEGS, *REFERENCE_LEGS)}
    program, _ = ssh_sites.tether_program()

    def no_openssh() -> AbstractContextManager[dict[str, Remote]]:
        raise openssh.Unavailable(problem)

    profiles: dict[str, Any] = {}
    negotiation: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        print("starting sshd (jump, target) and a Tether cluster with two nodes", flush=True)
        remotes = {
            **_enter_site(
                stack,
                OPENSSH_LEGS,
                legs,
                (lambda: openssh_site(sshd)) if sshd is not None else no_openssh,
            ),
            **_enter_site(stack, TETHER_LEGS, legs, tether_site),
        }
        commands = {name: Command(r.argv(SETUP_COMMAND), r.env) for name, r in remotes.items()}
        commands.update(reference_commands(program))
        print(f"session setup, {params.setup_runs} runs per leg:", flush=True)
        pids = {name: r.server_pids for name, r in remotes.items()}
        measure_setup(legs, commands, params, pids)
        negotiation = negotiated(remotes)
        print(f"bulk, {params.bulk_bytes // MIB} MiB per run:", flush=True)
        measure_bulk(legs, remotes, params)
        if args.profile:
            print(f"profiling with py-spy into {args.profile}:", flush=True)
            try:
                profiles = ssh_profile.profile_legs(
                    {n: r for n, r in remotes.items() if n in TETHER_LEGS},
                    args.profile,
                    SETUP_COMMAND,
                    BULK_COMMAND,
                    min(params.bulk_bytes, PROFILE_BULK_BYTES),
                )
            except (ssh_profile.ProfilerUnavailable, RuntimeError, OSError) as exc:
                profiles = {"missing": str(exc)}
                print(f"  no profiles: {exc}", flush=True)
    load = {
        "what": "1, 5 and 15 minute load averages (other work on the machine skews figures)",
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    report = build_report(machine_info, params, legs, load, negotiation)
    if profiles:
        report["profiles"] = profiles
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)

    results.save_report(NAME, report, args, table=table, chart=chart, index_line=index_line)
    return 1 if any(leg.failures for leg in legs.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
