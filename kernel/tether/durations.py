"""Go-style durations (``5m``, ``12h``, ``1h30m``, ``90s``), as Teleport users write them.

Used by configuration (``max_session_ttl``, heartbeat intervals) and by command-line flags
(``--ttl=5m``), so both accept exactly the same spelling.
"""

from __future__ import annotations

import datetime
import re

__all__ = ["format_duration", "parse_duration"]

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(text: str) -> datetime.timedelta:
    """Parse ``"1h30m"`` into a timedelta.

    :raises ValueError: the text is not a duration; the message shows an example.
    """
    value = text.strip()
    if value == "0":
        return datetime.timedelta(0)
    pos = 0
    total = 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 5m, 12h, 1h30m)")
    return datetime.timedelta(seconds=total)


def format_duration(delta: datetime.timedelta) -> str:
    """Render a timedelta the way :func:`parse_duration` reads it (``12h``, ``4m48s``)."""
    seconds = round(delta.total_seconds())
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return sign + out
