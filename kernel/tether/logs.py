"""Logging setup for the daemon: one handler on the root logger, as text or JSON lines.

Text is for a person at a terminal (``2026-11-26T10:00:00Z INFO [tether.auth] message``); JSON is
for log collectors, one object per line so a crash mid-write never corrupts earlier records.
Times are UTC so logs from hosts in different zones (root and leaf clusters) line up.

The configured severity applies to Tether's own loggers (the kernel's ``tether.*`` and the
loaded plugins' packages). Libraries log at INFO what only their own developers need (httpx a
line per request, which was every line an idle cluster wrote; asyncssh seven per SSH session),
so their records pass at WARNING or above unless ``--debug`` asks for everything.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = ["LIBRARY_SEVERITY", "JsonFormatter", "TextFormatter", "setup_logging"]

_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}

#: The least severe record a library's logger (anything not Tether's own) may write.
LIBRARY_SEVERITY = logging.WARNING

# Attributes every LogRecord has; anything else was passed with `extra=` and belongs in JSON.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _utc(record: logging.LogRecord, *, millis: bool) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds" if millis else "seconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``<UTC time> <LEVEL> [<logger>] <message>``, then the traceback if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as one line (plus traceback lines)."""
        line = f"{_utc(record, millis=False)} {record.levelname} [{record.name}] "
        line += record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, ``exception``.

    ``ts`` has milliseconds so a collector can order records written within the same second;
    values given with ``extra=`` are added under their own names (never replacing those keys).
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a single line of JSON."""
        entry: dict[str, Any] = {
            "ts": _utc(record, millis=True),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        # default=str: a stray object in `extra=` must not turn a log call into a crash.
        return json.dumps(entry, default=str, ensure_ascii=False)


class _TetherHandler(logging.StreamHandler[TextIO]):
    """Marks the handler this module installed, so a second setup replaces it."""


class _OwnOrSevere(logging.Filter):
    """Passes Tether's own records at ``level``, everyone else's at ``library_level``."""

    def __init__(self, own: frozenset[str], level: int, library_level: int) -> None:
        super().__init__()
        self._own = own
        self._level = level
        self._library_level = library_level

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is written."""
        package = record.name.partition(".")[0]
        return record.levelno >= (self._level if package in self._own else self._library_level)


def setup_logging(
    severity: str,
    fmt: str = "text",
    *,
    debug: bool = False,
    stream: TextIO | None = None,
    own: Iterable[str] = (),
) -> None:
    """Send Tether's log records at ``severity`` or above to ``stream`` in format ``fmt``, and
    other libraries' at :data:`LIBRARY_SEVERITY` (or ``severity`` if that is higher).

    Calling it again (after a configuration reload, or in tests) replaces the handler it
    installed before instead of adding a second one; handlers installed by others stay.

    :param severity: ``DEBUG``, ``INFO``, ``WARN``/``WARNING`` or ``ERROR``, any case.
    :param fmt: ``text`` or ``json``.
    :param debug: force ``DEBUG`` (``tetherd --debug``) for every logger, libraries' too,
        whatever the configuration says.
    :param stream: where to write; ``sys.stderr`` as it is at call time when omitted (so that
        a replaced ``sys.stderr``, as under pytest, is honoured).
    :param own: top-level packages whose loggers are Tether's own besides ``tether``: the
        loaded plugins' (:func:`tether.plugins.plugin_packages`).
    :raises ValueError: unknown severity or format; the message lists the allowed values.
    """
    level = _LEVELS.get(severity.upper())
    if level is None:
        raise ValueError(f"{severity!r} is not one of {', '.join(_LEVELS)}")
    formatter: logging.Formatter
    if fmt.lower() == "text":
        formatter = TextFormatter()
    elif fmt.lower() == "json":
        formatter = JsonFormatter()
    else:
        raise ValueError(f"{fmt!r} is not one of text, json")
    if debug:
        level = library_level = logging.DEBUG
    else:
        library_level = max(level, LIBRARY_SEVERITY)

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _TetherHandler):
            root.removeHandler(handler)
            handler.close()
    handler = _TetherHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_OwnOrSevere(frozenset({"tether", *own}), level, library_level))
    root.addHandler(handler)
    root.setLevel(level)
