"""Builtin audit sink: one JSON object per line in ``data_dir/log/events.jsonl``.

The directory comes from ``tether_configure``; the file is appended to from a worker thread so
a slow disk never blocks the event loop, and a batch's lines are written and flushed to disk
(one ``fsync``, however many events a host forwarded) before the call returns, so an
acknowledged event survives a crash; a line a crash tore is skipped when read, and ended
before the next write, so the event after it is whole. An event whose id is among the file's
latest :data:`RECENT_IDS` is not written again: a host that sends a batch again because its
answer was lost has it recorded once. The file is opened for each batch and
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
    """The newest ``query.limit + query.offset`` events of one file that match, in the
    file's order (enough for the page asked for)."""
    from tether.audit import AuditEvent

    if not path.exists():
        return []
    events: collections.deque[AuditEvent] = collections.deque(
        maxlen=(query.limit + query.offset) or None
    )
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
    """The page ``query`` asks for of the matching events of all ``paths``, oldest first."""
    merged = sorted((e for path in paths for e in _read(path, query)), key=lambda e: e.time)
    return query.page(merged)


#: How many of a file's latest event ids the sink remembers: a batch a host sends again
#: (its answer was lost) arrives seconds later, well within them.
RECENT_IDS = 20_000
#: How much of a file's end is read for its latest ids when the sink starts.
_TAIL_BYTES = 8 * 1024**2


class _RecentIds:
    """The latest event ids of one file, oldest forgotten first."""

    def __init__(self, ids: Sequence[str] = ()) -> None:
        self._order: collections.deque[str] = collections.deque()
        self._ids: set[str] = set()
        for event_id in ids:
            self.add(event_id)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        """Remember ``event_id`` (once)."""
        if event_id in self._ids:
            return
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > RECENT_IDS:
            self._ids.discard(self._order.popleft())

    @classmethod
    def from_tail(cls, path: pathlib.Path) -> _RecentIds:
        try:
            with path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _TAIL_BYTES))
                tail = f.read().splitlines()[-RECENT_IDS:]
        except FileNotFoundError:
            return cls()
        ids = []
        for raw in tail:
            try:
                event_id = json.loads(raw).get("id")
            except (ValueError, AttributeError):
                continue  # the first line of the tail is cut, a torn one too
            if isinstance(event_id, str):
                ids.append(event_id)
        return cls(ids)


class JsonlAuditSink:
    """The ``jsonl-audit`` plugin: the events files of the clusters configured through it."""

    def __init__(self) -> None:
        #: cluster name -> its events file
        self._paths: dict[str, pathlib.Path] = {}
        #: files whose end this process has seen whole (a crash may have torn the last line)
        self._checked: set[pathlib.Path] = set()
        #: the ids of each file's latest events: one sent again is not written twice
        self._recent: dict[pathlib.Path, _RecentIds] = {}
        self._lock = threading.Lock()

    @hookimpl
    def tether_configure(self, config: Config) -> None:
        """Point the sink at ``data_dir/log`` (created 0700); until then nothing is recorded."""
        log_dir = pathlib.Path(config.data_dir) / "log"
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._paths[config.cluster_name] = log_dir / FILE_NAME

    def _recent_ids(self, path: pathlib.Path) -> _RecentIds:
        recent = self._recent.get(path)
        if recent is None:  # after a restart: the ids at the end of the file
            recent = self._recent[path] = _RecentIds.from_tail(path)
        return recent

    def _append(self, lines: Mapping[pathlib.Path, list[tuple[str, str]]]) -> None:
        with self._lock:
            for path, entries in lines.items():
                recent = self._recent_ids(path)
                fresh: dict[str, str] = {}  # a batch sent again: its events are in the file
                for event_id, line in entries:
                    if event_id not in recent and event_id not in fresh:
                        fresh[event_id] = line
                if not fresh:
                    continue
                data = "".join(fresh.values()).encode()
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
                for event_id in fresh:  # written: only now is a copy of it one too many
                    recent.add(event_id)

    @hookimpl
    async def tether_audit_events(self, events: Sequence[AuditEvent]) -> None:
        import trio

        lines: dict[pathlib.Path, list[tuple[str, str]]] = {}
        for event in events:
            path = self._paths.get(event.cluster)
            if path is not None:
                line = json.dumps(event.to_json(), sort_keys=False, default=str) + "\n"
                lines.setdefault(path, []).append((event.id, line))
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
