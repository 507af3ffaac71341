"""The builtin audit sink: a batch is written whole, each cluster's events to its own file, in
order, and searched back from there; a torn line left by a crash does not hide the rest."""

from __future__ import annotations

import json
import pathlib

from tether.audit import AuditEvent, AuditQuery
from tether.builtins.jsonl_audit import FILE_NAME, JsonlAuditSink
from tether.config import load_config_text


def _sink(tmp_path: pathlib.Path, *clusters: str) -> JsonlAuditSink:
    sink = JsonlAuditSink()
    for name in clusters:  # tetherd demo: a root and a leaf in one process, one sink each
        text = f"cluster_name: {name}\ndata_dir: {tmp_path / name}\n"
        sink.tether_configure(load_config_text(text, "tether.yaml"))
    return sink


def _events_file(tmp_path: pathlib.Path, cluster: str) -> list[dict[str, object]]:
    lines = (tmp_path / cluster / "log" / FILE_NAME).read_text().splitlines()
    return [json.loads(line) for line in lines]


async def test_a_hosts_batch_is_written_to_each_clusters_file_in_order(
    tmp_path: pathlib.Path,
) -> None:
    sink = _sink(tmp_path, "root", "leaf")
    batch = [
        AuditEvent(type="db.query", cluster=cluster, user="alice", fields={"seq": seq})
        for seq, cluster in enumerate(["leaf", "root", "leaf", "leaf", "elsewhere", "root"])
    ]
    await sink.tether_audit_events(batch)
    assert [e["seq"] for e in _events_file(tmp_path, "leaf")] == [0, 2, 3]
    assert [e["seq"] for e in _events_file(tmp_path, "root")] == [1, 5]
    found = sink.tether_audit_search(AuditQuery(type="db", cluster="leaf"))
    assert found is not None
    assert [e.fields["seq"] for e in await found] == [0, 2, 3]
    # a cluster the sink does not record is not its to answer
    assert sink.tether_audit_search(AuditQuery(cluster="elsewhere")) is None


async def test_after_a_crash_tore_the_last_line_the_next_event_is_whole(
    tmp_path: pathlib.Path,
) -> None:
    before = _sink(tmp_path, "root")
    await before.tether_audit_events([AuditEvent(type="user.login", cluster="root", user="bob")])
    with (tmp_path / "root" / "log" / FILE_NAME).open("a") as f:
        f.write('{"type": "user.lo')  # the crash
    sink = _sink(tmp_path, "root")  # the daemon starts again
    await sink.tether_audit_events([AuditEvent(type="user.login", cluster="root", user="eve")])
    found = sink.tether_audit_search(AuditQuery(type="user.login", cluster="root"))
    assert found is not None
    assert [e.user for e in await found] == ["bob", "eve"]
