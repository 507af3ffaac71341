"""Builtin audit sink: one JSON object per line in ``data_dir/log/events.jsonl``.

The directory comes from ``tether_configure``; the file is appended to from a worker thread so
a slow disk never blocks the event loop, and each line is flushed before the call returns so an
acknowledged event survives a crash. Several daemons in one process (``tetherd demo``: a root
and a leaf) share this module: each cluster's events go to its own data directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading

import trio

from tether.audit import AuditEvent, AuditQuery
from tether.config import Config
from tether.hookspecs import hookimpl

#: cluster name -> its events file
_paths: dict[str, pathlib.Path] = {}
_lock = threading.Lock()

FILE_NAME = "events.jsonl"


@hookimpl
def tether_configure(config: Config) -> None:
    """Point the sink at ``data_dir/log`` (created 0700); until then nothing is recorded."""
    log_dir = pathlib.Path(config.data_dir) / "log"
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _paths[config.cluster_name] = log_dir / FILE_NAME


def _append(path: pathlib.Path, line: str) -> None:
    with _lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _read(path: pathlib.Path, query: AuditQuery) -> list[AuditEvent]:
    if not path.exists():
        return []
    events = []
    with path.open(encoding="utf-8") as f:
        for raw in f:
            raw = raw.strip()
            if not raw:
                continue
            try:
                event = AuditEvent.from_json(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash is skipped, not fatal
            if query.matches(event):
                events.append(event)
    return events[-query.limit :] if query.limit else events


@hookimpl
async def tether_audit_event(event: AuditEvent) -> None:
    path = _paths.get(event.cluster)
    if path is None:
        return
    line = json.dumps(event.to_json(), sort_keys=False, default=str) + "\n"
    await trio.to_thread.run_sync(_append, path, line)


def _only_path() -> pathlib.Path | None:
    """The file of the one configured cluster, for a search that names none."""
    return next(iter(_paths.values())) if len(_paths) == 1 else None


@hookimpl
async def tether_audit_search(query: AuditQuery) -> list[AuditEvent] | None:
    path = _paths.get(query.cluster) if query.cluster else _only_path()
    if path is None:
        return None
    return await trio.to_thread.run_sync(_read, path, query)
