"""The converter that reads ``tether.yaml``, and its errors as ``(path, message, hint)``.

It is :func:`tether.structuring.strict_converter` (no implicit ``str()`` of a list, no string
accepted as a list of characters, no ``true`` as 1) with the configuration's own value types on
top: durations, paths, addresses, sizes and enums. Its mistakes name the YAML type found
(``expected a string, got a list``); the loader turns each path into a line.
"""

from __future__ import annotations

import datetime
import enum
import pathlib
from collections.abc import Iterator
from typing import Any

import cattrs
import cattrs.cols
import cattrs.gen

from tether import structuring
from tether.config._schema import Config
from tether.config._values import ByteSize, FieldError, HostPort
from tether.durations import format_duration, parse_duration
from tether.structuring import MissingField, UnknownField, did_you_mean, strict_converter
from tether.yamlio import Path

__all__ = ["converter", "failures", "kind_of"]


def kind_of(value: object) -> str:
    """Name the YAML type of ``value`` the way a person reading the file would."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return "a date"
    return type(value).__name__


def _mismatch(name: str, value: object) -> TypeError:
    return TypeError(f"expected {name}, got {kind_of(value)}")


def _wrong_kind(cl: Any, value: object) -> TypeError:
    """The error of the strict converter's own hooks: scalars, lists and mappings."""
    names = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}
    if cl in names:
        return _mismatch(names[cl], value)
    return _mismatch("a list" if cattrs.cols.is_sequence(cl) else "a mapping", value)


def _structure_duration(value: object, _: type) -> datetime.timedelta:
    if not isinstance(value, str):
        raise _mismatch("a duration such as 30s, 5m or 12h", value)
    return parse_duration(value)


def _structure_path(value: object, _: type) -> pathlib.Path:
    if not isinstance(value, str):
        raise _mismatch("a path", value)
    if not value.strip():
        raise ValueError("must not be empty")
    return pathlib.Path(value).expanduser()


def _structure_size(value: object, _: type) -> ByteSize:
    if isinstance(value, int) and not isinstance(value, bool):
        return ByteSize(value)
    if not isinstance(value, str):
        raise _mismatch("a size such as 1MiB or 512KiB", value)
    return ByteSize.parse(value)


def _structure_host_port(value: object, _: type) -> HostPort:
    if not isinstance(value, str):
        raise _mismatch("host:port", value)
    return HostPort.parse(value)


def _structure_enum(value: object, cl: type[enum.StrEnum]) -> enum.StrEnum:
    if not isinstance(value, str):
        raise _mismatch("a string", value)
    # Case-insensitive: `severity: info` is unambiguous, so refusing it would only annoy.
    for member in cl:
        if member.value.lower() == value.lower():
            return member
    allowed = ", ".join(member.value for member in cl)
    raise ValueError(f"{value!r} is not one of {allowed}")


def _make_converter() -> cattrs.Converter:
    converter = strict_converter(_wrong_kind)
    converter.register_structure_hook(datetime.timedelta, _structure_duration)
    converter.register_structure_hook(pathlib.Path, _structure_path)
    converter.register_structure_hook(HostPort, _structure_host_port)
    converter.register_structure_hook(ByteSize, _structure_size)
    # Registered by class, not by predicate: a StrEnum is a str, and the str hook would win.
    converter.register_structure_hook(enum.StrEnum, _structure_enum)

    converter.register_unstructure_hook(datetime.timedelta, format_duration)
    converter.register_unstructure_hook(pathlib.Path, str)
    converter.register_unstructure_hook(HostPort, str)
    converter.register_unstructure_hook(ByteSize, str)
    converter.register_unstructure_hook(enum.StrEnum, lambda member: member.value)
    # `sections` is not a key of the file: plugins' sections sit beside the kernel's.
    converter.register_unstructure_hook(
        Config,
        cattrs.gen.make_dict_unstructure_fn(
            Config, converter, sections=cattrs.gen.override(omit=True)
        ),
    )
    return converter


#: the strict converter every section of ``tether.yaml`` is read with, plugins' included
converter = _make_converter()


def failures(exc: BaseException, path: Path) -> Iterator[tuple[Path, str, str | None]]:
    """What the converter raised as ``(path, message, hint)``, one per problem."""
    for failure in structuring.failures(exc, path):
        error = failure.error
        if isinstance(error, UnknownField):
            close = did_you_mean(str(error.key), error.known)
            hint = f"did you mean {close}?" if close else f"known fields: {', '.join(error.known)}"
            yield failure.path, "unknown field", hint
        elif isinstance(error, MissingField):
            yield failure.path, "required field missing", None
        elif isinstance(error, FieldError):
            yield (*failure.path, *error.path), error.message, None
        else:
            yield failure.path, str(error) or type(error).__name__, None
