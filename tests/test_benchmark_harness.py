"""The throughput harness's own plumbing, fast: load generator, sink, report schema.

Benchmarks measure, tests do not (benchmarks/README.md): nothing here asserts a speed, and no
``sshd`` is started. What is checked is that the bytes sent through the raw loopback leg all
arrive and yield a positive MB/s, and that a whole run writes the documented JSON schema with
Tether's figures null (its tunnel does not exist yet) rather than failing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
from collections.abc import Iterator
from types import ModuleType

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
MIB = 1 << 20
LEGS = {"tether", "openssh_aes128", "openssh_chacha20", "raw_tcp"}


def load(name: str) -> ModuleType:
    """Load a harness the way run_all.py does (from its path, not as a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tt = load("tunnel_throughput")
loadgen = tt.loadgen


def test_every_file_run_all_finds_is_a_harness() -> None:
    run_all = load("run_all")
    found = run_all.harnesses()
    assert BENCHMARKS / "tunnel_throughput.py" in found
    for path in found:
        assert "\ndef main(argv: list[str]) -> int:" in path.read_text(), path


def test_bytes_arrive_through_raw_tcp_with_a_positive_rate() -> None:
    with loadgen.Sink() as sink, loadgen.raw_tcp(sink.address) as entry:
        assert entry == sink.address
        loadgen.wait_ready(entry, sink, timeout=5.0)
        one = loadgen.measure(entry, sink, streams=1, bytes_per_stream=4 * MIB, timeout=20.0)
        odd = MIB + 12_345  # not a multiple of the 1 MiB write size
        many = loadgen.measure(entry, sink, streams=3, bytes_per_stream=odd, timeout=20.0)
    assert one.total_bytes == 4 * MIB
    assert many.total_bytes == 3 * odd
    assert len(many.per_stream_seconds) == 3
    for m in (one, many):
        assert m.seconds > 0
        assert m.mb_s > 0


def test_a_run_writes_the_schema_with_missing_legs_as_null(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sshd and the Tether processes are left out to keep the suite fast; the schema must
    # still be complete, with the reason for every missing figure
    def no_openssh() -> str:
        raise tt.openssh.Unavailable("not in the test suite")

    def not_here(*args: object) -> object:
        raise NotImplementedError("not in the test suite")

    monkeypatch.setattr(tt.openssh, "ensure_openssh", no_openssh)
    for name in (
        "tether_forward",
        "tether_open_latency_ms",
        "tether_idle_stream_bytes",
        "tether_idle_tunnels_cpu_percent",
    ):
        monkeypatch.setattr(tt, name, not_here)
    out = tmp_path / "tt.json"
    results_dir = tmp_path / "results"
    argv = [
        "--json",
        str(out),
        "--size-mb",
        "4",
        "--repeat",
        "1",
        "--results-dir",
        str(results_dir),
    ]
    assert tt.main(argv) == 0

    report = json.loads(out.read_text())
    assert set(report["mb_s"]) == LEGS
    for leg in LEGS:
        assert set(report["mb_s"][leg]) == {"1", "8"}
    assert report["mb_s"]["tether"] == {"1": None, "8": None}
    assert report["mb_s"]["openssh_aes128"] == {"1": None, "8": None}
    assert report["mb_s"]["raw_tcp"]["1"] > 0
    assert report["mb_s"]["raw_tcp"]["8"] > 0
    assert report["open_latency_ms"] == {"median": None, "p99": None}
    assert report["idle_stream_bytes"] is None
    assert report["idle_tunnels_cpu_percent"] is None
    assert report["missing"]["tether"] == "not in the test suite"
    assert report["missing"]["openssh_aes128"] == "not in the test suite"
    assert {"cpu_model", "cores", "memory_bytes", "kernel", "distro", "python"} <= set(
        report["machine"]
    )
    assert {"openssh", "openssl", "date"} <= set(report["machine"])
    assert report["params"]["single_stream_bytes"] == 4 * MIB
    assert report["params"]["parallel_stream_bytes"] == MIB

    written = sorted(p.name for p in results_dir.iterdir())
    assert "README.md" in written
    dated = [name for name in written if name.endswith(".json")]
    assert len(dated) == 1
    assert json.loads((results_dir / dated[0]).read_text())["mb_s"] == report["mb_s"]
    assert dated[0] in (results_dir / "README.md").read_text()
    assert "n/a" in tt.table(report)


def test_tether_leg_carries_the_load_generator_through_a_real_tunnel() -> None:
    with loadgen.Sink() as sink, tt.tether_forward(sink.address) as entry:
        loadgen.wait_ready(entry, sink, timeout=20.0)
        result = loadgen.measure(entry, sink, streams=2, bytes_per_stream=4 * MIB, timeout=30.0)
    assert result.total_bytes == 8 * MIB
    assert result.mb_s > 0


ss = load("ssh_session")
SSH_LEGS = {"tether_tunnel", "tether_auth", "openssh_jump", "openssh_direct"}


def test_ssh_session_run_times_every_leg_and_writes_the_schema(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the sites are stubbed with local shells (no sshd, no cluster) to keep the suite fast;
    # the timing, the byte feed, the integrity check and the report are the real ones
    @contextlib.contextmanager
    def local_site(*names: str) -> Iterator[dict[str, object]]:
        yield {name: ss.Remote(("sh", "-c"), dict(os.environ)) for name in names}

    monkeypatch.setattr(ss.openssh, "ensure_openssh", lambda: "/usr/sbin/sshd")
    monkeypatch.setattr(ss, "openssh_site", lambda sshd: local_site(*ss.OPENSSH_LEGS))
    monkeypatch.setattr(ss, "tether_site", lambda: local_site(*ss.TETHER_LEGS))
    out = tmp_path / "ss.json"
    results_dir = tmp_path / "results"
    argv = ["--json", str(out), "--runs", "2", "--size-mb", "1", "--repeat", "2"]
    assert ss.main([*argv, "--results-dir", str(results_dir)]) == 0

    report = json.loads(out.read_text())
    assert set(report["bulk_mb_s"]) == SSH_LEGS
    assert set(report["setup_seconds"]) == SSH_LEGS | set(ss.REFERENCE_LEGS)
    for leg, figures in report["setup_seconds"].items():
        assert len(report["setup_samples"][leg]) == 2
        assert 0 < figures["median"] <= figures["p90"]
    for leg in SSH_LEGS:
        assert report["bulk_verify"][leg]["bytes_received"] == str(MIB)
        assert len(report["bulk_samples"][leg]) == 2
        assert report["bulk_mb_s"][leg] > 0
        assert report["bulk_ratio_vs_openssh_jump"][leg] > 0
    assert report["bulk_ratio_vs_openssh_jump"]["openssh_jump"] == 1.0
    assert set(report["setup_breakdown_seconds"]["tether_tunnel"]) >= {
        "python_startup",
        "tether_imports_and_plugins",
        "session_rest",
    }
    assert not report["failures"] and not report["missing"]
    assert {"cpu_model", "cores", "memory_bytes", "kernel", "openssh", "date"} <= set(
        report["machine"]
    )
    dated = [p.name for p in results_dir.iterdir() if p.suffix == ".json"]
    assert len(dated) == 1
    assert dated[0] in (results_dir / "README.md").read_text()
    assert "tether_tunnel" in ss.table(report)


def test_ssh_session_reports_a_site_that_cannot_start_instead_of_failing_silently(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_openssh() -> str:
        raise ss.openssh.Unavailable("not in the test suite")

    def broken_cluster() -> object:
        raise AssertionError("tetherd for main exited 1")

    monkeypatch.setattr(ss.openssh, "ensure_openssh", no_openssh)
    monkeypatch.setattr(ss, "tether_site", broken_cluster)
    out = tmp_path / "ss.json"
    argv = ["--json", str(out), "--runs", "1", "--size-mb", "1"]
    assert ss.main([*argv, "--results-dir", str(tmp_path / "results")]) == 1

    report = json.loads(out.read_text())
    assert report["bulk_mb_s"] == dict.fromkeys(SSH_LEGS)
    assert report["missing"]["openssh_jump"] == "not in the test suite"
    assert "tetherd for main exited 1" in report["missing"]["tether_tunnel"]
    assert report["setup_seconds"]["python_startup"]["median"] > 0
    assert "n/a" in ss.table(report)
