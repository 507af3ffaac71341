"""The harnesses' own plumbing, at tiny sizes: load generator, sink, echo, report schema.

Benchmarks measure, tests do not (benchmarks/README.md): nothing here asserts a speed. What is
checked is that the bytes sent through each path all arrive (or come back) and yield a
positive MB/s, and that a whole run writes the documented JSON schema, with the reason for
every figure it did not measure rather than failing. The figure through real ``tetherd``
processes runs for real, with ``sshd`` where it is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import sys
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
    assert BENCHMARKS / "kube_access.py" in found
    assert BENCHMARKS / "many_nodes.py" in found
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
        "tetherd_echo",
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


def test_only_open_latency_runs_that_figure_alone_and_reports_its_cpu(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object) -> object:
        raise AssertionError("--only open_latency ran another figure")

    def latency(opens: int) -> dict[str, object]:
        return {"median": 0.25, "p99": 0.5, "cpu_us_per_open": {"root": 100, "leaf": 150}}

    monkeypatch.setattr(tt.openssh, "ensure_openssh", must_not_run)
    for name in (
        "tether_forward",
        "tetherd_echo",
        "tether_idle_stream_bytes",
        "tether_idle_tunnels_cpu_percent",
    ):
        monkeypatch.setattr(tt, name, must_not_run)
    monkeypatch.setattr(tt, "tether_open_latency_ms", latency)
    out = tmp_path / "tt.json"
    argv = ["--only", "open_latency", "--json", str(out), "--results-dir", str(tmp_path / "r")]
    assert tt.main(argv) == 0

    report = json.loads(out.read_text())
    assert report["open_latency_ms"] == {"median": 0.25, "p99": 0.5}
    assert report["open_cpu_us_per_open"] == {"root": 100, "leaf": 150}
    assert report["params"]["only"] == ["open_latency"]
    assert report["mb_s"]["raw_tcp"] == {"1": None, "8": None}
    assert report["missing"]["raw_tcp"] == "not run (--only)"
    assert report["missing"]["idle_stream_bytes"] == "not run (--only)"
    assert report["missing"]["tetherd_echo"] == "not run (--only)"
    assert report["tetherd_echo"]["mb_s"] == {"tetherd": {}, "openssh_aes128": {}}
    assert "100 / 150" in tt.table(report)


def test_every_byte_comes_back_from_the_echo_server_with_a_positive_rate() -> None:
    with loadgen.echo_server() as echo:
        loadgen.wait_greeted(echo.address, timeout=5.0)
        odd = MIB + 12_345
        for streams in (1, 3):
            m = loadgen.measure_echo(echo.address, streams, odd, timeout=20.0)
            assert m.total_bytes == streams * odd
            assert m.seconds > 0 and m.mb_s > 0


def test_only_tetherd_echoes_through_real_clusters_and_openssh_with_cpu_per_role(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tt.openssh.find_sshd() is None:  # a harness run as root would install it: not here

        def not_installed() -> str:
            raise tt.openssh.Unavailable("sshd is not installed")

        monkeypatch.setattr(tt.openssh, "ensure_openssh", not_installed)
    out = tmp_path / "tt.json"
    argv = ["--only", "tetherd", "--size-mb", "4", "--repeat", "1", "--json", str(out)]
    assert tt.main([*argv, "--results-dir", str(tmp_path / "r")]) == 0

    report = json.loads(out.read_text())
    echo = report["tetherd_echo"]
    paths = ["tetherd", "openssh_aes128"] if tt.openssh.find_sshd() else ["tetherd"]
    for name in paths:
        assert echo["mb_s"][name]["1"] > 0 and echo["mb_s"][name]["8"] > 0
        assert len(echo["mb_s_samples"][name]["8"]) == 1
        for key in ("1", "8"):
            cpu = echo["cpu_s_per_gb"][name][key]
            assert set(cpu) == {"client", "root", "leaf", "node", "target", "total"}
            # 10 ms ticks: at these sizes a process may use fewer than one in a round
            assert all(seconds >= 0 for seconds in cpu.values())
    # Tether's own contexts at both ends of every hop pick the profile's first suite
    assert echo["negotiated"]["tetherd"] == "TLSv1.3 TLS_AES_128_GCM_SHA256"
    if "openssh_aes128" in paths:
        assert echo["negotiated"]["openssh_aes128"] == "aes128-gcm@openssh.com"
        assert echo["ratio_vs_openssh_aes128"]["1"] > 0
    else:
        assert "tetherd_echo openssh_aes128" in report["missing"]
    assert report["mb_s"]["tether"] == {"1": None, "8": None}
    assert "through tetherd (echo)" in tt.table(report)


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
    assert "what" in report["negotiated"]


def test_ssh_session_records_what_each_client_says_it_negotiated() -> None:
    said = {
        "openssh_jump": "debug1: kex: algorithm: sntrup761x25519-sha512\n"
        "debug1: kex: client->server cipher: aes128-gcm@openssh.com MAC: <implicit>\n" * 2,
        "tether_tunnel": "DEBUG [tether.client.dial] negotiated with the proxy at "
        "127.0.0.1:3080: TLSv1.3 TLS_AES_256_GCM_SHA384\n"
        "DEBUG [tether_ssh.client] negotiated with node-1: SSH cipher aes256-gcm@openssh.com\n",
    }
    remotes = {
        name: ss.Remote(("true",), dict(os.environ), {}, ("sh", "-c", f"printf %s '{text}' >&2"))
        for name, text in said.items()
    }
    remotes["openssh_direct"] = ss.Remote(("true",), dict(os.environ), {}, ("false",))
    found = ss.negotiated(remotes)
    assert found["openssh_jump"] == {
        "ssh_cipher": ["aes128-gcm@openssh.com"] * 2,
        "ssh_kex": ["sntrup761x25519-sha512"] * 2,
        "tls": [],
    }
    assert found["tether_tunnel"] == {
        "ssh_cipher": ["aes256-gcm@openssh.com"],
        "ssh_kex": [],
        "tls": ["TLSv1.3 TLS_AES_256_GCM_SHA384"],
    }
    assert found["openssh_direct"].startswith("exit 1: false true")


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


ml = load("many_leaves")
leaves = ml.leaves

# A stand-in for a leaves process: the events the real one prints, for ``--count`` leaves
# named from ``--first``, then the count in a file (read by FAKE_TETHERCTL) until stdin closes.
FAKE_LEAVES = """
import json, pathlib, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
first, count = int(args["--first"]), int(args["--count"])
def emit(event, **fields):
    print(json.dumps({"event": event, "at": time.clock_gettime_ns(time.CLOCK_MONOTONIC),
                      **fields}), flush=True)
emit("generated", leaves=count, seconds=0.01)
for i in range(first, first + count):
    emit("joined", leaf=f"leaf{i}", trust_s=0.01, validate_s=0.02 + i / 1000)
emit("connected", count=count, pools=count, dial_attempts=count, failing=0, errors=[])
pathlib.Path(args["--state"], f"leaves-{first}").write_text(str(count))
sys.stdin.read()
"""
FAKE_TETHER = """
import sys
if sys.argv[1] == "clusters":
    print("Cluster Name Status Cluster Type Labels Selected")
    print("------------ ------ ------------ ------ --------")
    print("root         online root                *")
    print("leaf0        online leaf")
"""
FAKE_TETHERCTL = """
import json, pathlib, sys
state = pathlib.Path(sys.argv[1])
n = 1 + sum(int(p.read_text()) for p in state.glob("leaves-*"))
docs = [{"metadata": {"name": f"leaf{i}"}, "status": {"connection": "online"}} for i in range(n)]
print(json.dumps(docs))
"""


def test_many_leaves_run_measures_one_leaf_then_every_leaf_and_writes_the_schema(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the clusters and the leaves' processes are stubbed with small scripts (no tetherd, no
    # handshake) to keep the suite fast; the fleet's event reading, the waits, the timing,
    # the /proc figures and the report are the real ones
    state = tmp_path / "state"
    state.mkdir()
    scripts = {}
    for name, text in (("tether", FAKE_TETHER), ("tetherctl", FAKE_TETHERCTL)):
        scripts[name] = tmp_path / f"{name}.py"
        scripts[name].write_text(text)

    @contextlib.contextmanager
    def fake_site() -> Iterator[object]:
        yield ml.TrustSite(
            root_pid=os.getpid(),
            root_proxy="127.0.0.1:1",
            root_ca_pin="sha256:" + "0" * 64,
            token="not-a-token",
            user_env=dict(os.environ),
            tether=(sys.executable, str(scripts["tether"])),
            root_tetherctl=(sys.executable, str(scripts["tetherctl"]), str(state)),
        )

    def fake_argv(self: object, first: int, count: int) -> list[str]:
        argv = [sys.executable, "-c", FAKE_LEAVES, "--first", str(first), "--count", str(count)]
        return [*argv, "--state", str(state)]

    pids: list[int] = []

    @contextlib.contextmanager
    def recorded_fleet(**kwargs: object) -> Iterator[object]:
        with leaves.LeafFleet(**kwargs) as fleet:
            pids.extend(fleet.pids())
            yield fleet

    monkeypatch.setattr(ml, "open_trust_site", fake_site)
    monkeypatch.setattr(ml, "leaf_fleet", recorded_fleet)
    monkeypatch.setattr(leaves.LeafFleet, "_argv", fake_argv)
    out = tmp_path / "ml.json"
    results_dir = tmp_path / "results"
    argv = ["--json", str(out), "--leaves", "7", "--runs", "2", "--list-runs", "2"]
    argv += ["--idle-seconds", "0.2", "--join-timeout", "20", "--results-dir", str(results_dir)]
    assert ml.main(argv) == 0

    report = json.loads(out.read_text())
    assert report["leaves_online"] == {"one_leaf": 1, "many_leaves": 7}
    join = report["join"]
    assert (join["joined"], join["refused"], join["tunnels_up"], join["online"]) == (6, 0, 6, 7)
    assert join["seconds_from_start"]["all_online_in_get_rc"] >= 0
    # the last tenth is by arrival, and the fake leaf processes race: one of their samples
    emitted = {round(0.02 + i / 1000, 3) for i in range(1, 7)}
    assert join["handshake_seconds"]["validate"]["last_tenth_median"] in emitted
    assert report["checks"]["many_leaves"]["get_rc_online"] == 7
    assert report["checks"]["one_leaf"]["tether_clusters_online_rows"] == 2
    for phase in ml.PHASES:
        assert report["root_idle"][phase]["rss_mib"] > 0
        for figure in ml.FIGURES:
            assert len(report["samples"][phase][figure]) == 2
            assert report["seconds"][phase][figure]["median"] > 0
    cpu_ratios = {f"{figure}_root_cpu" for figure in ml.FIGURES}
    assert set(report["ratio_many_vs_one"]) == {
        *ml.FIGURES,
        *cpu_ratios,
        "root_idle_cpu",
        "root_rss",
    }
    assert len(report["root_cpu_seconds_samples"]["many_leaves"]["ssh"]) == 2
    assert report["ratio_many_vs_one"]["ssh"] > 0
    assert report["targets_met"]["ssh"] in (True, False)
    assert not report["failures"] and not report["missing"]
    assert {"cpu_model", "cores", "memory_bytes", "kernel", "python", "date"} <= set(
        report["machine"]
    )
    dated = [p.name for p in results_dir.iterdir() if p.suffix == ".json"]
    assert len(dated) == 1
    assert dated[0] in (results_dir / "README.md").read_text()
    assert "many / one" in ml.table(report)
    assert pids and all(not os.path.exists(f"/proc/{pid}") for pid in pids)


def test_many_leaves_reports_a_site_that_cannot_start(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_site() -> object:
        raise AssertionError("tetherd for root exited 1")

    monkeypatch.setattr(ml, "open_trust_site", broken_site)
    out = tmp_path / "ml.json"
    argv = ["--json", str(out), "--quick", "--results-dir", str(tmp_path / "results")]
    assert ml.main(argv) == 1

    report = json.loads(out.read_text())
    assert "tetherd for root exited 1" in report["missing"]["site"]
    assert report["seconds"]["one_leaf"]["ssh"]["median"] is None
    assert report["join"] is None
    assert "n/a" in ml.table(report)


def test_lightweight_leaves_join_a_real_root_and_hold_tunnels(tmp_path: pathlib.Path) -> None:
    # the real leaves' process against a real root: the handshake is accepted and the root
    # answers each tunnel's hello (so it verified the leaf's proxy certificate)
    from tether.testing.cluster import start_cluster

    root = start_cluster(tmp_path / "root", "root")
    try:
        added = root.tetherctl("tokens", "add", "--type=trusted_cluster", "--format=json")
        token = json.loads(added.stdout)["token"]
        with leaves.LeafFleet(
            proxy=root.proxy_addr, ca_pin=root.ca_pin, token=token, first=1, count=3
        ) as fleet:
            assert fleet.wait_until(lambda s: s.connected_count == 3, timeout=60), (
                fleet.stderr_tail()
            )
            state = fleet.snapshot()
            pids = fleet.pids()
        assert sorted(j["leaf"] for j in state.joined) == ["leaf1", "leaf2", "leaf3"]
        assert not state.failed
        assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
        listed = json.loads(root.tetherctl("get", "rc", "--format=json").stdout)
        assert sorted(doc["metadata"]["name"] for doc in listed) == ["leaf1", "leaf2", "leaf3"]
    finally:
        root.stop()


mn = load("many_nodes")
nodes = mn.nodes

# A stand-in for a nodes process: the events the real one prints, for ``--count`` nodes named
# from ``--first``, then the count in a file (read by FAKE_GET_NODES) until stdin closes.
FAKE_NODES = """
import json, pathlib, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
first, count = int(args["--first"]), int(args["--count"])
def emit(event, **fields):
    print(json.dumps({"event": event, "at": time.clock_gettime_ns(time.CLOCK_MONOTONIC),
                      **fields}), flush=True)
emit("generated", count=count, seconds=0.0)
for i in range(first, first + count):
    emit("joined", node=f"node{i}", join_s=0.02 + i / 1000)
emit("connected", count=count, pools=count, dial_attempts=count, failing=0, errors=[])
emit("heartbeats", nodes_published=count, sent=count, refused=0, period_latency_median_s=0.01,
     period_latency_max_s=0.02, period_count=count, errors=[])
pathlib.Path(args["--state"], f"nodes-{first}").write_text(str(count))
sys.stdin.read()
"""
FAKE_NODES_CLI = """
import json, pathlib, sys
state = pathlib.Path(sys.argv[1])
n = 1 + sum(int(p.read_text()) for p in state.glob("nodes-*"))
names = ["bench-node", *(f"node{i}" for i in range(1, n))]
if sys.argv[2] == "ls":
    print("Node Name  Address  Labels")
    print("---------  -------  ------")
    print("\\n".join(f"{name}  ⟵ Tunnel" for name in names))
elif sys.argv[2] == "get":
    print(json.dumps([{"kind": "node", "spec": {"hostname": name}} for name in names]))
"""


def test_many_nodes_run_measures_one_node_then_every_node_and_writes_the_schema(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the cluster and the nodes' processes are stubbed with small scripts (no tetherd, no
    # join) to keep the suite fast; the fleet's event reading, the waits, the timing, the
    # /proc figures and the report are the real ones
    state = tmp_path / "state"
    state.mkdir()
    cli = tmp_path / "cli.py"
    cli.write_text(FAKE_NODES_CLI)

    @contextlib.contextmanager
    def fake_site() -> Iterator[object]:
        yield mn.NodeSite(
            root_pid=os.getpid(),
            proxy="127.0.0.1:1",
            ca_pin="sha256:" + "0" * 64,
            token="not-a-token",
            user_env=dict(os.environ),
            tether=(sys.executable, str(cli), str(state)),
            tetherctl=(sys.executable, str(cli), str(state)),
        )

    def fake_argv(self: object, first: int, count: int) -> list[str]:
        argv = [sys.executable, "-c", FAKE_NODES, "--first", str(first), "--count", str(count)]
        return [*argv, "--state", str(state)]

    pids: list[int] = []

    @contextlib.contextmanager
    def recorded_fleet(**kwargs: object) -> Iterator[object]:
        with nodes.NodeFleet(**kwargs) as fleet:
            pids.extend(fleet.pids())
            yield fleet

    monkeypatch.setattr(mn, "open_node_site", fake_site)
    monkeypatch.setattr(mn, "node_fleet", recorded_fleet)
    monkeypatch.setattr(nodes.NodeFleet, "_argv", fake_argv)
    out = tmp_path / "mn.json"
    results_dir = tmp_path / "results"
    argv = ["--json", str(out), "--nodes", "4", "--runs", "2", "--list-runs", "2"]
    argv += ["--idle-seconds", "0.2", "--join-timeout", "20", "--results-dir", str(results_dir)]
    assert mn.main(argv) == 0

    report = json.loads(out.read_text())
    assert report["nodes_listed"] == {"one_node": 1, "many_nodes": 4}
    join = report["join"]
    counts = ("joined", "refused", "tunnels_up", "heartbeating", "listed", "ls_rows")
    assert tuple(join[k] for k in counts) == (3, 0, 3, 3, 4, 4)
    assert join["seconds_from_start"]["seen_in_tether_ls"] >= 0
    assert join["heartbeats_after"]["sent"] == 3
    assert report["checks"]["many_nodes"] == {"tether_ls_rows": 4, "get_nodes_listed": 4}
    for phase in mn.PHASES:
        assert report["root_idle"][phase]["rss_mib"] > 0
        for figure in mn.FIGURES:
            assert len(report["samples"][phase][figure]) == 2
            assert report["seconds"][phase][figure]["median"] > 0
    assert set(report["targets_met"]) == {"ssh", "ls", "root_rss", "root_idle_cpu"}
    assert all(met in (True, False) for met in report["targets_met"].values())
    assert report["params"]["open_files"]["after"][0] >= report["params"]["open_files"]["needed"]
    assert "proxy_service.rate_limit" in report["params"]["settings_changed"]
    assert not report["failures"] and not report["missing"]
    assert {"cpu_model", "cores", "memory_bytes", "kernel", "python", "date"} <= set(
        report["machine"]
    )
    dated = [p.name for p in results_dir.iterdir() if p.suffix == ".json"]
    assert len(dated) == 1
    assert dated[0] in (results_dir / "README.md").read_text()
    assert "many / one" in mn.table(report)
    assert pids and all(not os.path.exists(f"/proc/{pid}") for pid in pids)


def test_many_nodes_reports_a_site_that_cannot_start(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_site() -> object:
        raise AssertionError("tetherd for root exited 1")

    monkeypatch.setattr(mn, "open_node_site", broken_site)
    out = tmp_path / "mn.json"
    argv = ["--json", str(out), "--quick", "--results-dir", str(tmp_path / "results")]
    assert mn.main(argv) == 1

    report = json.loads(out.read_text())
    assert "tetherd for root exited 1" in report["missing"]["site"]
    assert report["seconds"]["one_node"]["ls"]["median"] is None
    assert report["join"] is None
    assert "n/a" in mn.table(report)


def test_lightweight_nodes_join_heartbeat_and_are_listed(tmp_path: pathlib.Path) -> None:
    # the real nodes' process against a real cluster: each joins with the node token, holds
    # a tunnel and heartbeats its node resource, which the cluster lists
    from tether.testing.cluster import start_cluster

    cluster = start_cluster(tmp_path / "root", "root")
    try:
        added = cluster.tetherctl("tokens", "add", "--type=node", "--format=json")
        token = json.loads(added.stdout)["token"]
        with nodes.NodeFleet(
            proxy=cluster.proxy_addr, ca_pin=cluster.ca_pin, token=token, first=1, count=3
        ) as fleet:
            assert fleet.wait_until(lambda s: s.connected_count == 3, timeout=60), (
                fleet.stderr_tail()
            )
            assert fleet.wait_until(
                lambda s: (
                    sum(r["nodes_published"] for r in s.latest["heartbeats"].values()) == 3
                    if "heartbeats" in s.latest
                    else False
                ),
                timeout=30,
            ), fleet.stderr_tail()
            listed = cluster.tetherctl("get", "nodes", "--format=json").stdout
            state = fleet.snapshot()
            pids = fleet.pids()
        assert sorted(j["node"] for j in state.joined) == ["node1", "node2", "node3"]
        assert not state.failed
        assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
        assert sorted(mn.node_site.listed_nodes(listed)) == ["node1", "node2", "node3"]
    finally:
        cluster.stop()


da = load("db_access")


def test_db_access_reports_a_site_that_cannot_start_instead_of_failing_silently(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_site() -> object:
        raise RuntimeError("timed out waiting for leaf's database service heartbeat")

    monkeypatch.setattr(da.db_sites, "db_site", broken_site)
    out = tmp_path / "da.json"
    results_dir = tmp_path / "results"
    assert da.main(["--quick", "--json", str(out), "--results-dir", str(results_dir)]) == 1

    report = json.loads(out.read_text())
    assert "leaf's database service heartbeat" in report["missing"]
    assert set(report["figures"]) == {
        "select_only_c1", "select_only_c8", "tpcb_like_c1", "tpcb_like_c8",
        "mysqlslap_c1", "mysqlslap_c8",
    }  # fmt: skip
    assert report["figures"]["select_only_c8"]["tps"] == dict.fromkeys(da.LEGS)
    assert report["targets_met"]["select_only_c8_leaf_tps_ratio"] is None
    assert {"postgresql", "mariadb", "cpu_model", "date"} <= set(report["machine"])
    assert "n/a every leg" in da.table(report)
    dated = [p.name for p in results_dir.iterdir() if p.suffix == ".json"]
    assert len(dated) == 1 and dated[0] in (results_dir / "README.md").read_text()


ka = load("kube_access")


def test_kube_access_reports_a_site_that_cannot_start_instead_of_failing_silently(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_site() -> object:
        raise RuntimeError("timed out waiting for the leaf's Kubernetes cluster through the root")

    monkeypatch.setattr(ka.kube_sites, "kube_site", broken_site)
    out = tmp_path / "ka.json"
    results_dir = tmp_path / "results"
    assert ka.main(["--quick", "--json", str(out), "--results-dir", str(results_dir)]) == 1

    report = json.loads(out.read_text())
    assert "through the root" in report["missing"]
    assert set(report["figures"]["requests_ms"]) == {"version", "configmaps"}
    assert report["figures"]["requests_ms"]["version"]["per_leg"]["leaf"]["median"] is None
    assert report["targets_met"] == {
        "added_median_ms_version_leaf": None,
        "added_median_ms_configmaps_leaf": None,
    }
    assert {"kubernetes", "cpu_model", "date"} <= set(report["machine"])
    assert "n/a every leg" in ka.table(report)
    dated = [p.name for p in results_dir.iterdir() if p.suffix == ".json"]
    assert len(dated) == 1 and dated[0] in (results_dir / "README.md").read_text()


def _self_signed(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stub API server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "stub.crt", directory / "stub.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def _stub_api_server(cert: pathlib.Path, key: pathlib.Path) -> Iterator[int]:
    """What the harness asks of an API server, over TLS on 127.0.0.1: /version, namespaces,
    configmaps (created, listed, watched); yields its port."""
    import http.server
    import queue
    import ssl
    import threading

    store: dict[str, list[dict[str, object]]] = {}
    watchers: dict[str, list[queue.Queue[dict[str, object] | None]]] = {}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if "watch=1" in query:
                # watching before the head goes, as the API server: a create after it is seen
                events: queue.Queue[dict[str, object] | None] = queue.Queue()
                with lock:
                    watchers.setdefault(path, []).append(events)
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.close_connection = True
                while (event := events.get()) is not None:
                    line = json.dumps(event).encode() + b"\n"
                    try:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    except OSError:  # the client closed the watch of a past round
                        with lock:
                            watchers[path].remove(events)
                        return
            elif path == "/version":
                self._answer(200, {"major": "1", "minor": "20", "gitVersion": "v1.20.2"})
            elif path in store:
                with lock:
                    items = list(store[path])
                self._answer(200, {"metadata": {"resourceVersion": "1"}, "items": items})
            elif path.rpartition("/")[0] in store:
                self._answer(200, {"kind": "ConfigMap"})
            else:
                self._answer(404, {"kind": "Status", "code": 404})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                if self.path == "/api/v1/namespaces":
                    path = f"/api/v1/namespaces/{body['metadata']['name']}/configmaps"
                    store[path] = [{"metadata": {"name": "kube-root-ca.crt"}}]
                else:
                    store[self.path].append(body)
                    for events in watchers.get(self.path, []):
                        events.put({"type": "ADDED", "object": body})
            self._answer(201, body)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        with lock:
            for events_list in watchers.values():
                for events in events_list:
                    events.put(None)
        server.shutdown()
        server.server_close()


def test_kube_access_run_measures_every_leg_and_writes_the_schema(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every leg reaches one stub API server (no kube-apiserver, no cluster) and kubectl is a
    # Python that does nothing, to keep the suite fast; the HTTP client, the watch timing, the
    # interleaving, the report and the chart are the real ones
    cert, key = _self_signed(tmp_path)
    log = tmp_path / "proxy.log"
    log.write_text("2026-01-01T00:00:00Z WARNING [tether.proxy] something odd\n")
    nothing = ka.kube_sites.Kubectl((sys.executable, "-c", "pass"), dict(os.environ))

    @contextlib.contextmanager
    def stub_site() -> Iterator[object]:
        with _stub_api_server(cert, key) as port:
            endpoint = ka.kube_sites.Endpoint(
                "127.0.0.1", port, "127.0.0.1", cert.read_text(), cert, key
            )
            yield ka.kube_sites.Site(
                api=None,  # type: ignore[arg-type]
                endpoints=dict.fromkeys(ka.LEGS, endpoint),
                kubectl=dict.fromkeys(ka.LEGS, nothing),
                credentials=nothing,
                logs={"root proxy": log},
                pids={"harness": os.getpid()},
                kubectl_version="stub",
            )

    monkeypatch.setattr(ka.kube_sites, "kube_site", stub_site)
    monkeypatch.setattr(ka, "CONFIGMAPS", 12)
    out = tmp_path / "ka.json"
    results_dir = tmp_path / "results"
    argv = ["--json", str(out), "--results-dir", str(results_dir), "--rounds", "2"]
    argv += ["--requests", "9", "--list-requests", "4", "--kubectl-runs", "2"]
    assert ka.main([*argv, "--watch-events", "5"]) == 0

    report = json.loads(out.read_text())
    assert report["configmaps_listed"] == 13
    for kind, count in (("version", 9), ("configmaps", 4)):
        entry = report["figures"]["requests_ms"][kind]
        for leg in ka.LEGS:
            stats = entry["per_leg"][leg]
            assert stats["n"] == count
            assert 0 < stats["median"] <= stats["p90"] <= stats["p99"]
        assert set(entry["added_median"]) == set(ka.TETHER_LEGS)
    for key, entry in report["figures"]["kubectl_s"].items():
        assert key in ka.KUBECTL
        assert all(entry["per_leg"][leg]["n"] == 2 for leg in ka.LEGS)
    assert report["figures"]["credentials_s"]["n"] == 2
    watch = report["figures"]["watch_ms"]
    assert all(watch["per_leg"][leg]["n"] == 5 for leg in ka.LEGS)
    assert all(watch["after_request_median"][leg] > 0 for leg in ka.LEGS)
    assert set(report["figures"]["daemon_cpu_ms_per_request"]["version"]["leaf"]) == {"harness"}
    assert set(report["targets_met"].values()) <= {True, False}
    assert report["daemon_logs"]["root proxy"]["by_severity"] == {"WARNING": 1}
    assert report["kubectl_stderr"]["get_configmaps"]["leaf"] == {"runs": 0, "first": []}
    assert not report["failures"] and "missing" not in report
    assert {"cpu_model", "cores", "kernel", "kubectl", "date"} <= set(report["machine"])
    dated = [p.name for p in results_dir.iterdir() if p.suffix == ".json"]
    assert len(dated) == 1 and dated[0] in (results_dir / "README.md").read_text()
    shown = ka.table(report)
    assert "target: added median per request through the leaf" in shown
    assert "something odd" in shown


def test_kube_access_shares_every_sample_between_the_rounds() -> None:
    for total, rounds in ((20, 5), (3, 2), (7, 3)):
        parts = [ka.share(total, rounds, r) for r in range(rounds)]
        assert sum(parts) == total and max(parts) - min(parts) <= 1
