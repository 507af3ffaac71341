"""Builtin audit sink: one JSON object per line in ``data_dir/log/events.jsonl``.

The directory comes from ``tether_configure``; the file is appended to from a worker thread so
a slow disk never blocks the event loop, and a batch's lines are written and flushed to disk
(one ``fsync``, however many events a host forwarded) before the call returns, so an
acknowledged event survives a crash; a line a crash tore is skipped when read, and ended
before the next write, so the event after it is whole. The file is opened for each batch and
closed again, so nothing stays open once a daemon stops and a log moved aside is started
afresh.

The sink is a class: each plugin manager registers an instance of its own, so several daemons in
one process (``tetherd demo``: a root and a leaf, each with its manager) share nothing. An
instance configured for several clusters writes each cluster's events to that cluster's data
directory, and answers a search that names no cluster from all of them.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import threading
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING

from tether.errors import TetherError
from tether.hookspecs import hookimpl

if TYPE_CHECKING:  # every command-line start registers the builtins: they import when called
    from tether.audit import AuditEvent, AuditQuery
    from tether.config import Config

__all__ = ["FILE_NAME", "JsonlAuditSink"]

FILE_NAME = "events.jsonl"


def _read(path: pathlib.Path, query: AuditQuery) -> list[AuditEvent]:
    """The newest ``query.limit`` events of one file that match, in the file's order."""
    from tether.audit import AuditEvent

    if not path.exists():
        return []
    events: collections.deque[AuditEvent] = collections.deque(maxlen=query.limit or None)
    try:
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
    except OSError as exc:
        raise TetherError(f"cannot read the audit log {path}: {exc.strerror or exc}") from None
    return list(events)


def _torn(path: pathlib.Path) -> bool:
    """Whether ``path`` ends in the middle of a line (a crash while it was written)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _search(paths: Sequence[pathlib.Path], query: AuditQuery) -> list[AuditEvent]:
    """The newest ``query.limit`` matching events of all ``paths``, oldest first."""
    merged = sorted((e for path in paths for e in _read(path, query)), key=lambda e: e.time)
    return merged[-query.limit :] if query.limit else merged


class JsonlAuditSink:
    """The ``jsonl-audit`` plugin: the events files of the clusters configured through it."""

    def __init__(self) -> None:
        #: cluster name -> its events file
        self._paths: dict[str, pathlib.Path] = {}
        #: files whose end this process has seen whole (a crash may have torn the last line)
        self._checked: set[pathlib.Path] = set()
        self._lock = threading.Lock()

    @hookimpl
    def tether_configure(self, config: Config) -> None:
        """Point the sink at ``data_dir/log`` (created 0700); until then nothing is recorded."""
        log_dir = pathlib.Path(config.data_dir) / "log"
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._paths[config.cluster_name] = log_dir / FILE_NAME

    def _append(self, lines: Mapping[pathlib.Path, list[str]]) -> None:
        with self._lock:
            for path, text in lines.items():
                data = "".join(text).encode()
                if path not in self._checked:
                    if _torn(path):  # end the torn line, so the first new event is whole
                        data = b"\n" + data
                    self._checked.add(path)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    while data:  # a write may be partial on a full disk or a signal
                        data = data[os.write(fd, data) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)

    @hookimpl
    async def tether_audit_events(self, events: Sequence[AuditEvent]) -> None:
        import trio

        lines: dict[pathlib.Path, list[str]] = {}
        for event in events:
            path = self._paths.get(event.cluster)
            if path is not None:
                line = json.dumps(event.to_json(), sort_keys=False, default=str) + "\n"
                lines.setdefault(path, []).append(line)
        if lines:
            await trio.to_thread.run_sync(self._append, lines)

    @hookimpl
    def tether_audit_search(self, query: AuditQuery) -> Awaitable[list[AuditEvent]] | None:
        """Search the file of the cluster ``query`` names, or with none named, every file this
        sink holds (merged in time order); None, directly, when it holds no such file."""
        import trio

        if query.cluster is None:
            paths = list(self._paths.values())
        else:
            paths = [self._paths[query.cluster]] if query.cluster in self._paths else []
        if not paths:
            return None
        return trio.to_thread.run_sync(_search, paths, query)
