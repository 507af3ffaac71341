"""The part of a host's audit backlog kept on disk: what memory cannot hold, and what a
stopping host could not send.

A host keeps its audit events in memory while auth records them as fast as they come. When
auth is unreachable or refuses them (its audit log is down) for longer than the memory
backlog lasts, or when the host stops with events unsent, they go to this file rather than
being dropped, and the host sends them, oldest first, once auth takes them again (after a
restart too). One JSON line per event (as the host sends it: its id and time kept),
appended; the offset of the first unsent line is kept beside it (``PATH.offset``, replaced
atomically), so a host that crashes sends again at most the one batch it was sending, which
auth records once (the ids). A line a crash tore is skipped, logged.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Sequence

from tether.audit import HostAuditEvent

__all__ = ["AUDIT_SPOOL_FILE", "SPOOL_MAX_BYTES", "AuditSpool"]

log = logging.getLogger(__name__)

#: The spool's name in the host's data directory.
AUDIT_SPOOL_FILE = "audit-backlog.jsonl"

#: The largest spool file; past it, events are dropped (logged) as a full memory backlog
#: used to drop them: a host whose auth is gone for days must not fill its disk.
SPOOL_MAX_BYTES = 256 * 1024**2


class AuditSpool:
    """A file-backed first-in, first-out queue of audit events.

    :param path: the spool file, created 0600 when the first event arrives.
    :param max_bytes: refuse events that would make it larger.
    """

    def __init__(self, path: pathlib.Path, max_bytes: int = SPOOL_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._offset_path = path.with_name(path.name + ".offset")
        self._offset = self._read_offset()
        #: unsent events in the file, counted once at open
        self.pending = self._count_pending()
        self._size = path.stat().st_size if path.exists() else 0
        #: the file ends in the middle of a line (a crash while writing): the first append
        #: ends it first, so that the event after it is whole
        self._torn = self._size > 0 and _last_byte(path) != b"\n"

    def _read_offset(self) -> int:
        try:
            return max(0, int(self._offset_path.read_text().strip() or 0))
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning("node: unreadable audit spool offset %s; sending from the start", self.path)
            return 0

    def _count_pending(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open("rb") as f:
            f.seek(self._offset)
            return sum(1 for line in f if line.strip())

    def append(self, events: Sequence[HostAuditEvent]) -> bool:
        """Add ``events`` after the others; False (nothing added) when they would make the
        file larger than ``max_bytes``."""
        data = b"".join(_line(event) for event in events)
        if self._torn:
            data = b"\n" + data
        if self._size + len(data) > self.max_bytes:
            return False
        self._torn = False
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            while data:
                written = os.write(fd, data)
                self._size += written
                data = data[written:]
        finally:
            os.close(fd)
        self.pending += len(events)
        return True

    def prepend(self, events: Sequence[HostAuditEvent]) -> None:
        """Put ``events`` before every unsent one (what a stopping host could not send is
        older than anything spooled), rewriting the file; written to disk before it returns."""
        rest = b""
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self._offset)
                rest = f.read()
        data = b"".join(_line(event) for event in events) + rest
        torn = bool(data) and not data.endswith(b"\n")
        temporary = self.path.with_name(self.path.name + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        self._offset_path.unlink(missing_ok=True)
        self._offset = 0
        self._size = self.path.stat().st_size
        self._torn = torn
        self.pending += len(events)

    def peek(self, count: int) -> tuple[list[HostAuditEvent], int, int]:
        """The oldest ``count`` unsent events, the offset just past them and how many lines
        that is (a torn line is skipped, logged, and counted), for :meth:`advance` once auth
        recorded them."""
        events: list[HostAuditEvent] = []
        offset, lines = self._offset, 0
        if not self.pending:
            return events, offset, lines
        with self.path.open("rb") as f:
            f.seek(offset)
            while len(events) < count:
                line = f.readline()
                if not line:
                    break
                offset += len(line)
                if not line.strip():
                    continue
                lines += 1
                event = _event(line)
                if event is None:
                    log.warning("node: skipped a torn line in the audit spool %s", self.path)
                    continue
                events.append(event)
        return events, offset, lines

    def advance(self, offset: int, lines: int) -> None:
        """Forget the ``lines`` before ``offset``: auth recorded their events. The file is
        removed once nothing in it is unsent."""
        self.pending = max(0, self.pending - lines)
        if not self.pending:
            self.path.unlink(missing_ok=True)
            self._offset_path.unlink(missing_ok=True)
            self._offset = self._size = 0
            self._torn = False
            return
        self._offset = offset
        temporary = self._offset_path.with_name(self._offset_path.name + ".new")
        temporary.write_text(f"{offset}\n")
        os.replace(temporary, self._offset_path)


def _last_byte(path: pathlib.Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def _line(event: HostAuditEvent) -> bytes:
    return json.dumps(event.to_json()).encode() + b"\n"


def _event(line: bytes) -> HostAuditEvent | None:
    try:
        data = json.loads(line)
        event = HostAuditEvent(
            type=str(data["type"]),
            user=str(data.get("user") or ""),
            fields=dict(data["fields"]),
            success=bool(data["success"]),
            id=str(data["id"]),
            time=float(data["time"]),
        )
    except (ValueError, TypeError, KeyError):
        return None
    return event
