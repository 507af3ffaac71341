"""The strict cattrs converter that reads ``tether.yaml`` and the flattening of its errors.

No implicit ``str()`` of a list, no string accepted as a list of characters, no ``true`` as 1.
When structuring fails, the exception tree cattrs builds is walked back into a path, which
the loader turns into a line.
"""

from __future__ import annotations

import datetime
import difflib
import enum
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import cattrs
import cattrs.cols
import cattrs.gen
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)

from tether.config._schema import Config
from tether.config._values import ByteSize, FieldError, HostPort
from tether.durations import format_duration, parse_duration
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


def _expect(value: object, kind: type, name: str) -> None:
    if not isinstance(value, kind):
        raise _mismatch(name, value)


def _mismatch(name: str, value: object) -> TypeError:
    return TypeError(f"expected {name}, got {kind_of(value)}")


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise _mismatch("a string", value)
    return value


def _structure_int(value: object, _: type) -> int:
    # bool is an int subclass, but `failed_login_limit: true` is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _mismatch("an integer", value)
    return value


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise _mismatch("true or false", value)
    return value


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


def _guarded(
    factory: Callable[[Any, cattrs.Converter], Callable[[Any, Any], Any]],
    kind: type,
    name: str,
    *,
    null_is_empty: bool = False,
) -> Callable[[Any, cattrs.Converter], Callable[[Any, Any], Any]]:
    """Wrap a cattrs hook factory so the hook refuses input of the wrong YAML type.

    cattrs converts any iterable to a tuple (so ``disabled: abc`` would become
    ``("a", "b", "c")``); checking the type first turns that into an error.
    """

    def make(cl: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
        inner = factory(cl, converter)

        def structure(value: Any, target: Any) -> Any:
            if value is None and null_is_empty:
                # `ssh_service:` with every line below commented out means "all defaults".
                value = kind()
            _expect(value, kind, name)
            return inner(value, target)

        return structure

    return make


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(datetime.timedelta, _structure_duration)
    converter.register_structure_hook(pathlib.Path, _structure_path)
    converter.register_structure_hook(HostPort, _structure_host_port)
    converter.register_structure_hook(ByteSize, _structure_size)
    # Registered by class, not by predicate: a StrEnum is a str, and the str hook would win.
    converter.register_structure_hook(enum.StrEnum, _structure_enum)
    converter.register_structure_hook_factory(
        cattrs.cols.is_sequence,
        _guarded(cattrs.cols.homogenous_tuple_structure_factory, list, "a list"),
    )
    converter.register_structure_hook_factory(
        cattrs.cols.is_mapping,
        _guarded(cattrs.cols.mapping_structure_factory, dict, "a mapping"),
    )
    converter.register_structure_hook_factory(
        lambda cl: attrs.has(cl) and cl is not HostPort and cl is not Config,
        _guarded(
            lambda cl, conv: cattrs.gen.make_dict_structure_fn(cl, conv),
            dict,
            "a mapping",
            null_is_empty=True,
        ),
    )

    converter.register_unstructure_hook(datetime.timedelta, format_duration)
    converter.register_unstructure_hook(pathlib.Path, str)
    converter.register_unstructure_hook(HostPort, str)
    converter.register_unstructure_hook(ByteSize, str)
    converter.register_unstructure_hook(enum.StrEnum, lambda member: member.value)
    # Lists, not tuples, so the result dumps as YAML and JSON alike.
    converter.register_unstructure_hook_factory(
        cattrs.cols.is_sequence,
        lambda cl, conv: lambda seq: [conv.unstructure(item) for item in seq],
    )
    # Built last, once every hook it uses exists. `sections` is not a key of the file:
    # plugins' sections sit beside the kernel's.
    converter.register_structure_hook(
        Config,
        _guarded(
            lambda cl, conv: cattrs.gen.make_dict_structure_fn(
                cl, conv, sections=cattrs.gen.override(omit=True)
            ),
            dict,
            "a mapping",
        )(Config, converter),
    )
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
    """Flatten cattrs' exception tree into ``(path, message, hint)``, one per problem."""
    if isinstance(exc, BaseValidationError):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    sub_path = (*path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = (*path, note.index)
            yield from failures(sub, sub_path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        known = [field.name for field in attrs.fields(exc.cl)]
        for key in sorted(exc.extra_fields, key=str):
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known fields: {', '.join(known)}"
            yield (*path, key), "unknown field", hint
    elif isinstance(exc, FieldError):
        yield (*path, *exc.path), exc.message, None
    else:
        yield path, str(exc) or type(exc).__name__, None
