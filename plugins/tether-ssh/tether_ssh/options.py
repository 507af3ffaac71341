"""``tether ssh -o Option=value``: the OpenSSH client options ``tether ssh`` honours.

Read as ``ssh`` reads them (``ssh_config(5)``): the keyword is case-insensitive and separated
from its arguments by ``=`` or blanks, arguments may be quoted, and for an option that takes
one value the first one given counts; forwards and ``SendEnv`` patterns add up. An option
``tether ssh`` cannot honour is refused by name rather than ignored, so that nobody believes
a setting is in force when it is not.
"""

from __future__ import annotations

import fnmatch
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from tether_ssh.forwards import (
    DynamicForward,
    LocalForward,
    RemoteForward,
    parse_dynamic_forward,
    parse_local_forward,
    parse_remote_forward,
)

__all__ = ["DEFAULT_SEND_ENV", "SUPPORTED", "OptionError", "SSHOptions", "parse_options"]

#: What ``tether ssh`` sends without ``SendEnv``: the locale, as Debian's ``ssh_config``.
DEFAULT_SEND_ENV = ("LANG", "LC_*")

_YES_NO = {"yes": True, "true": True, "no": False, "false": False}
_REQUEST_TTY = ("auto", "yes", "no", "force")
#: StrictHostKeyChecking: the cluster's host CA decides whatever the value (see docs/ssh.md).
_HOST_KEY_CHECKING = ("yes", "no", "ask", "accept-new", "off")


class OptionError(ValueError):
    """A ``-o`` option that is unknown, not supported, or has a bad value (a usage error)."""


@attrs.frozen(kw_only=True)
class SSHOptions:
    """What the ``-o`` options said; None (or empty) where they said nothing.

    :param request_tty: ``auto``, ``yes``, ``no`` or ``force`` (``RequestTTY``).
    :param send_env: ``SendEnv`` patterns in order; ``-PATTERN`` removes what matched before.
    """

    user: str | None = None
    port: int | None = None
    server_alive_interval: float | None = None
    server_alive_count_max: int | None = None
    strict_host_key_checking: str | None = None
    forward_agent: bool | None = None
    request_tty: str | None = None
    local_forwards: tuple[LocalForward, ...] = ()
    remote_forwards: tuple[RemoteForward, ...] = ()
    dynamic_forwards: tuple[DynamicForward, ...] = ()
    send_env: tuple[str, ...] = ()

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The variables of *environ* to send: :data:`DEFAULT_SEND_ENV`, then ``SendEnv``."""
        patterns: list[str] = list(DEFAULT_SEND_ENV)
        for pattern in self.send_env:
            if pattern.startswith("-"):
                patterns = [p for p in patterns if not fnmatch.fnmatchcase(p, pattern[1:])]
            else:
                patterns.append(pattern)
        return {
            name: value
            for name, value in environ.items()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
        }


def _one(args: Sequence[str], keyword: str) -> str:
    if len(args) != 1:
        raise OptionError(f"option {keyword} takes one value, not {len(args)}")
    return args[0]


def _yes_no(args: Sequence[str], keyword: str) -> bool:
    value = _one(args, keyword)
    if value.lower() not in _YES_NO:
        raise OptionError(f"option {keyword}: {value!r} is not yes or no")
    return _YES_NO[value.lower()]


def _choice(choices: Sequence[str]) -> Callable[[Sequence[str], str], str]:
    def parse(args: Sequence[str], keyword: str) -> str:
        value = _one(args, keyword).lower()
        if value not in choices:
            raise OptionError(f"option {keyword}: {value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def _number(low: int, high: int, what: str) -> Callable[[Sequence[str], str], int]:
    def parse(args: Sequence[str], keyword: str) -> int:
        value = _one(args, keyword)
        if not value.isdigit() or not low <= int(value) <= high:
            raise OptionError(f"option {keyword}: {value!r} is not {what}")
        return int(value)

    return parse


def _forward(
    parse: Callable[[str], Any], *, pair: bool
) -> Callable[[Sequence[str], str], tuple[Any, ...]]:
    """``LocalForward 8080 db:5432`` (two arguments, as ssh_config writes them) or one
    argument in the command-line form (``8080:db:5432``)."""

    def read(args: Sequence[str], keyword: str) -> tuple[Any, ...]:
        if not args or len(args) > (2 if pair else 1):
            shape = "[BIND:]PORT HOST:HOSTPORT" if pair else "[BIND:]PORT"
            raise OptionError(f"option {keyword}: expected {shape}")
        try:
            return (parse(":".join(args)),)
        except ValueError as exc:
            raise OptionError(f"option {keyword}: {exc}") from None

    return read


def _patterns(args: Sequence[str], keyword: str) -> tuple[str, ...]:
    if not args:
        raise OptionError(f"option {keyword} needs at least one variable name")
    return tuple(args)


#: keyword as ssh_config spells it -> (SSHOptions field, parser, whether values add up)
_OPTIONS: dict[str, tuple[str, Callable[[Sequence[str], str], Any], bool]] = {
    "User": ("user", _one, False),
    "Port": ("port", _number(1, 65535, "a port number"), False),
    "ServerAliveInterval": (
        "server_alive_interval",
        _number(0, 2**31 - 1, "a number of seconds"),
        False,
    ),
    "ServerAliveCountMax": ("server_alive_count_max", _number(1, 2**31 - 1, "a count"), False),
    "StrictHostKeyChecking": ("strict_host_key_checking", _choice(_HOST_KEY_CHECKING), False),
    "ForwardAgent": ("forward_agent", _yes_no, False),
    "RequestTTY": ("request_tty", _choice(_REQUEST_TTY), False),
    "LocalForward": ("local_forwards", _forward(parse_local_forward, pair=True), True),
    "RemoteForward": ("remote_forwards", _forward(parse_remote_forward, pair=True), True),
    "DynamicForward": ("dynamic_forwards", _forward(parse_dynamic_forward, pair=False), True),
    "SendEnv": ("send_env", _patterns, True),
}
#: The options ``tether ssh -o`` takes, as ``ssh_config(5)`` spells them.
SUPPORTED = tuple(_OPTIONS)
_BY_LOWER = {keyword.lower(): keyword for keyword in _OPTIONS}


def _split(text: str) -> tuple[str, list[str]]:
    """``Key=value``, ``Key value`` or ``Key = value``, as ssh reads a configuration line."""
    stripped = text.strip()
    keyword = stripped.split("=", 1)[0].split(None, 1)[0] if stripped else ""
    rest = stripped[len(keyword) :].lstrip()
    rest = rest.removeprefix("=").lstrip()
    try:
        args = shlex.split(rest)
    except ValueError as exc:
        raise OptionError(f"option {keyword}: {exc}") from None
    return keyword, args


def parse_options(texts: Iterable[str]) -> SSHOptions:
    """The ``-o`` arguments, in the order given.

    :raises OptionError: an option that is not supported (named, with the supported ones),
        or a value that is wrong for its option.
    """
    values: dict[str, Any] = {}
    for text in texts:
        keyword, args = _split(text)
        if not keyword:
            raise OptionError("-o needs Option=value")
        known = _BY_LOWER.get(keyword.lower())
        if known is None:
            raise OptionError(
                f"ssh option {keyword!r} is not supported by tether ssh "
                f"(it takes {', '.join(SUPPORTED)})"
            )
        field, parse, adds_up = _OPTIONS[known]
        value = parse(args, known)
        if adds_up:
            values[field] = (*values.get(field, ()), *value)
        else:
            values.setdefault(field, value)  # the first value counts, as in ssh
    return SSHOptions(**values)
