"""The value types of ``tether.yaml`` (addresses, sizes, enums) and the validators sections
share, the kernel's and plugins' alike, so every section reports the same mistakes the same way.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import pathlib
import re
from typing import Any

import attrs

from tether.errors import ConfigError
from tether.yamlio import Path, format_path

__all__ = [
    "AuditFailure",
    "ByteSize",
    "CaAlgorithm",
    "FieldError",
    "HostPort",
    "LogFormat",
    "Severity",
    "not_blank",
    "positive",
    "secret_or_file",
    "valid_name",
]


class FieldError(ValueError):
    """A value that is well-typed but impossible, raised by a config class's own checks.

    Constructing a section by hand with such a value raises it directly (it is a ValueError);
    the loader turns it into a :class:`ConfigError` with the line. It carries the path of the
    offending field relative to the class that raised it, so the loader can prefix the path of
    that class and find the line; cattrs only knows the path down to the class whose
    constructor failed.
    """

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{format_path(path)}: {message}")
        self.path = path
        self.message = message


def secret_or_file(value: str, what: str) -> str:
    """``value``, or the contents of the file it names when it is an absolute path.

    A token typed on a command line stays in the shell's history; Teleport therefore reads
    ``--token`` and ``auth_token`` from a file when the value is an absolute path, and so does
    Tether (a relative path would be ambiguous: ``abc/def`` could be a token). Surrounding
    whitespace is dropped, as files end with a newline.

    :param what: the value's name for errors, e.g. ``--token``.
    :raises ConfigError: the file is missing, unreadable or empty.
    """
    if not os.path.isabs(value):
        return value
    try:
        contents = pathlib.Path(value).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"{what}: cannot read the file {value}: {reason}",
            hint="an absolute path names a file holding the token; check it, or pass the "
            "token itself",
        ) from None
    if not contents:
        raise ConfigError(
            f"{what}: the file {value} is empty", hint="write the token into it, or pass it"
        )
    return contents


# ---------------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class HostPort:
    """A network address as ``host:port``; IPv6 hosts are written in brackets, ``[::1]:3025``."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Parse ``"host:port"`` or ``"[ipv6]:port"``.

        :raises ValueError: the text is not an address; the message quotes it.
        """
        if text.startswith("["):
            close = text.find("]")
            host, rest = text[1:close], text[close + 1 :]
            if close < 0 or not rest.startswith(":"):
                raise ValueError(f"{text!r} is not host:port (example: [::1]:3025)")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
            port_text = rest[1:]
        else:
            host, sep, port_text = text.rpartition(":")
            if ":" in host:
                raise ValueError(
                    f"{text!r} is not host:port (write IPv6 addresses in brackets: [::1]:3025)"
                )
            if not sep or not host or any(c.isspace() or c in "/[]" for c in host):
                raise ValueError(f"{text!r} is not host:port")
        if not port_text.isascii() or not port_text.isdigit():
            raise ValueError(f"{text!r} is not host:port (the port must be a number)")
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"{text!r}: port {port} is out of range 0-65535")
        return cls(host, port)

    @property
    def is_unspecified(self) -> bool:
        """True for a listen-on-every-interface host (``0.0.0.0``, ``::``)."""
        try:
            return ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            return False

    @property
    def connect_host(self) -> str:
        """Where a local client connects to reach this listen address (loopback for a
        listen-on-every-interface host)."""
        return "127.0.0.1" if self.is_unspecified else self.host

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


class ByteSize(int):
    """A size in bytes, written ``1MiB``, ``512KiB``, ``64KB`` or as a number of bytes."""

    UNITS: dict[str, int] = {
        "B": 1,
        "KB": 1000,
        "MB": 1000**2,
        "GB": 1000**3,
        "KiB": 1024,
        "MiB": 1024**2,
        "GiB": 1024**3,
    }
    _SIZE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")

    @classmethod
    def parse(cls, text: str) -> ByteSize:
        """Parse ``"1MiB"``; a number without a unit counts bytes.

        :raises ValueError: the text is not a size; the message shows examples.
        """
        match = cls._SIZE.fullmatch(text)
        unit = (match.group(2) or "B") if match else ""
        if match is None or unit not in cls.UNITS:
            raise ValueError(f"{text!r} is not a size (examples: 1MiB, 512KiB, 65536)")
        return cls(int(match.group(1)) * cls.UNITS[unit])

    def __str__(self) -> str:
        for unit in ("GiB", "MiB", "KiB"):
            if self and self % self.UNITS[unit] == 0:
                return f"{self // self.UNITS[unit]}{unit}"
        return f"{int(self)}B"


class Severity(enum.StrEnum):
    """Log severities; ``WARN`` is accepted as Teleport users write it."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARN = "WARN"
    WARNING = "WARNING"
    ERROR = "ERROR"


class LogFormat(enum.StrEnum):
    """``text`` for people reading a terminal, ``json`` for log collectors."""

    TEXT = "text"
    JSON = "json"


class AuditFailure(enum.StrEnum):
    """What the auth service does when an audit sink cannot record an event."""

    #: refuse the action the event is about (a login, a certificate, a join, a change)
    REFUSE = "refuse"
    #: log the failure and go on: the action happens unaudited by that sink
    CONTINUE = "continue"


class CaAlgorithm(enum.StrEnum):
    """Key algorithm of newly created certificate authorities."""

    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-p256"


def positive(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """attrs validator: the value (a number, a duration) is greater than zero."""
    if value <= type(value)(0):
        raise FieldError((attribute.name,), "must be greater than zero")


def not_blank(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """attrs validator: the string has more than whitespace."""
    if not value.strip():
        raise FieldError((attribute.name,), "must not be empty")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def valid_name(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """attrs validator: a cluster or host name in a safe alphabet."""
    # Cluster names end up in certificates, storage keys and URLs: keep them to a safe alphabet.
    if not _NAME.fullmatch(value):
        raise FieldError(
            (attribute.name,),
            f"{value!r} is not a valid name (letters, digits, '.', '_' and '-')",
        )
