"""Plain data (from YAML or JSON) to typed spec objects and back, driven by attrs field types.

Specs are read with the strict cattrs converter of :mod:`tether.structuring`, as ``tether.yaml``
and the auth API's bodies are, with hooks on top for what specs hold besides strings, numbers,
lists and mappings: times (RFC 3339; Go's zero time, which Teleport prints for "never", is
none), durations (Go-style ``30h``), literals, and label values written as one string or a list
(:data:`ONE_OR_MANY`). cattrs reports every problem at once; a resource error is one line, so
:func:`structure` keeps the first a reader meets and words it as admins read it: the field, what
was expected and the value given (``spec.allow.logins: expected a list of strings, got
'visitor'``), with "did you mean" for a misspelt key or literal and "quote it" for a number
where a string belongs. The dumped form is tidy: empty optional fields are omitted and single
label values are written as scalars, so ``get`` output looks like what people write.
"""

from __future__ import annotations

import collections.abc
import datetime
import itertools
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, Union

import attrs
import cattrs
import cattrs.cols
import cattrs.gen
from cattrs.errors import BaseValidationError

from tether.durations import format_duration, parse_duration
from tether.errors import ResourceError
from tether.structuring import (
    MissingField,
    UnknownField,
    did_you_mean,
    failures,
    strict_converter,
)
from tether.yamlio import Path, format_path

__all__ = [
    "ONE_OR_MANY",
    "InvalidField",
    "LabelValues",
    "Labels",
    "Path",
    "format_time",
    "show",
    "structure",
    "unstructure",
]


class _OneOrMany:
    """Marker: a ``tuple[str, ...]`` that may also be written as a single string."""

    def __repr__(self) -> str:
        return "ONE_OR_MANY"


ONE_OR_MANY = _OneOrMany()

#: The values of one label key in a selector: ``env: prod`` or ``env: [prod, staging]``.
LabelValues = Annotated[tuple[str, ...], ONE_OR_MANY]
#: A label selector (``node_labels``, ``cluster_labels``...): key -> accepted values.
Labels = Mapping[str, LabelValues]


class InvalidField(ResourceError):
    """A field of a resource is wrong; ``path`` locates it so the parser can add ``file:line``.

    Raised by the converter and by a kind's ``validate`` function. The parser turns it into a
    one-line :class:`ResourceError` that names the source, line, document and field.

    :param path: keys and indexes from the resource root, e.g. ``("spec", "allow", "logins")``.
    :param problem: what is wrong with the value at ``path``.
    """

    def __init__(self, path: Sequence[str | int], problem: str, *, hint: str | None = None) -> None:
        self.path: Path = tuple(path)
        self.problem = problem
        super().__init__(
            f"{format_path(self.path)}: {problem}" if self.path else problem, hint=hint
        )


def show(value: Any) -> str:
    """Render a wrong value for an error message without dumping a whole subtree."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_time(value: datetime.datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, the way Teleport writes times."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _is_union(origin: Any) -> bool:
    return origin is Union or origin is types.UnionType


_SEQUENCES = (tuple, list, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)


def _describe(tp: Any) -> str:
    """Say in words what a value of type ``tp`` looks like."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        if ONE_OR_MANY in args[1:]:
            return "a string or a list of strings"
        return _describe(args[0])
    if _is_union(origin):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in _SEQUENCES:
        item = args[0] if args else Any
        return "a list of " + _plural(item)
    if origin in _MAPPINGS or attrs.has(tp):
        return "a mapping"
    simple = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        datetime.datetime: "a timestamp such as 2024-01-02T15:04:05Z",
        datetime.timedelta: "a duration such as 30h",
    }
    return simple.get(tp, "a value")


def _plural(tp: Any) -> str:
    plurals = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
    if tp in plurals:
        return str(plurals[tp])
    origin = typing.get_origin(tp)
    if attrs.has(tp) or origin in _MAPPINGS:
        return "mappings"
    if origin in _SEQUENCES:
        return "lists"
    return "values"


def structure(value: Any, tp: Any, path: Path = ()) -> Any:
    """Turn plain data into a value of type ``tp``.

    :raises InvalidField: the value does not fit; the error names the first wrong field (a
        mapping's unknown keys first, then its fields in declaration order) from ``path``.
    """
    try:
        return _converter.structure(value, tp)
    except (BaseValidationError, InvalidField, ValueError, TypeError) as exc:
        raise _first_problem(exc, path) from None


def _first_problem(exc: Exception, path: Path) -> InvalidField:
    failure = next(failures(exc, path))
    where, error = failure.path, failure.error
    if isinstance(error, InvalidField):
        return InvalidField((*where, *error.path), error.problem, hint=error.hint)
    if isinstance(error, UnknownField):
        where = (*where[:-1], str(error.key))
        guess = did_you_mean(str(error.key), error.known)
        if guess:
            return InvalidField(where, f"unknown field (did you mean {guess}?)")
        if not error.known:
            return InvalidField(where, "unknown field; this takes no fields")
        return InvalidField(where, "unknown field; expected one of: " + ", ".join(error.known))
    if isinstance(error, MissingField):
        return InvalidField(where, "required field missing")
    if isinstance(error, ValueError | TypeError):  # a bad duration; a class refused the value
        return InvalidField(where, str(error))
    raise exc  # a bug in a hook, not in the resource


def unstructure(value: Any) -> Any:
    """Turn a typed value back into plain data that :func:`structure` reads unchanged.

    Fields that have a default and hold an empty value (None, "", [], {}) are omitted.
    """
    return _converter.unstructure(value)


def _mismatch(tp: Any, value: Any) -> InvalidField:
    problem = f"expected {_describe(tp)}, got {show(value)}"
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return InvalidField((), problem, hint=f"quote it: '{value}'")
    return InvalidField((), problem)


# Go prints nanoseconds; Python keeps microseconds.
_FRACTION = re.compile(r"(\.\d{6})\d+")


def _structure_time(value: Any, _: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        # ruamel returns its own datetime subclass; store a plain one.
        result = datetime.datetime.combine(value.date(), value.timetz())
    elif isinstance(value, str):
        try:
            result = datetime.datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()))
        except ValueError:
            raise _mismatch(datetime.datetime, value) from None
    else:
        raise _mismatch(datetime.datetime, value)
    if result.tzinfo is None:
        result = result.replace(tzinfo=datetime.UTC)
    return result


def _structure_optional_time(value: Any, _: Any) -> datetime.datetime | None:
    if value is None:
        return None
    result = _structure_time(value, datetime.datetime)
    return None if result.year == 1 else result  # Go's zero time, which Teleport prints for "never"


def _structure_duration(value: Any, _: Any) -> datetime.timedelta:
    if isinstance(value, datetime.timedelta):
        return value
    if not isinstance(value, str):
        raise _mismatch(datetime.timedelta, value)
    return parse_duration(value)


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _literals(cl: Any, _: cattrs.Converter) -> Callable[[Any, Any], Any]:
    choices = typing.get_args(cl)

    def structure(value: Any, _: Any) -> Any:
        if value in choices and isinstance(value, str | int):
            return value
        guess = did_you_mean(value, map(str, choices)) if isinstance(value, str) else None
        raise InvalidField(
            (),
            f"expected {_describe(cl)}, got {show(value)}",
            hint=f"did you mean {guess}?" if guess else None,
        )

    return structure


def _is_one_or_many(tp: Any) -> bool:
    return typing.get_origin(tp) is Annotated and ONE_OR_MANY in typing.get_args(tp)[1:]


def _one_or_many(cl: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    base = typing.get_args(cl)[0]
    inner = converter.get_structure_hook(base)

    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        elif value is not None and not isinstance(value, list | tuple):
            raise _mismatch(cl, value)
        return inner(value, base)

    return structure


def _one_or_many_dump(cl: Any, converter: cattrs.Converter) -> Callable[[Any], Any]:
    inner = converter.get_unstructure_hook(typing.get_args(cl)[0])

    def unstructure(value: Any) -> Any:
        if isinstance(value, tuple | list) and len(value) == 1:
            return value[0]
        return inner(value)

    return unstructure


def _mappings(cl: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """A mapping as the strict converter reads one, but a key that is not a string (YAML reads
    ``1:`` as a number) is refused in its own words, before its value is read."""
    inner = cattrs.cols.mapping_structure_factory(cl, converter)
    string_keys = typing.get_args(cl)[:1] in ((), (str,))

    def structure(value: Any, target: Any) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise _mismatch(target, value)
        for i, key in enumerate(value):
            if string_keys and not isinstance(key, str):
                # a wrong value above it is met first
                inner(dict(itertools.islice(value.items(), i)), target)
                raise InvalidField(
                    (str(key),), f"keys must be strings, got {show(key)}", hint=f"quote it: '{key}'"
                )
        return inner(value, target)

    return structure


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _class_dump(cl: Any, converter: cattrs.Converter) -> Callable[[Any], dict[str, Any]]:
    inner = cattrs.gen.make_dict_unstructure_fn(cl, converter)
    optional = [field.name for field in attrs.fields(cl) if field.default is not attrs.NOTHING]

    def unstructure(value: Any) -> dict[str, Any]:
        plain: dict[str, Any] = inner(value)
        for name in optional:
            if _is_empty(plain[name]):
                del plain[name]
        return plain

    return unstructure


def _make_converter() -> cattrs.Converter:
    converter = strict_converter(_mismatch, null_is_empty=True)
    converter.register_structure_hook(datetime.datetime, _structure_time)
    converter.register_structure_hook_func(
        lambda tp: tp == datetime.datetime | None, _structure_optional_time
    )
    converter.register_structure_hook(datetime.timedelta, _structure_duration)
    converter.register_structure_hook_factory(cattrs.cols.is_mapping, _mappings)
    converter.register_structure_hook_factory(_is_literal, _literals)
    converter.register_structure_hook_factory(_is_one_or_many, _one_or_many)

    converter.register_unstructure_hook(datetime.datetime, format_time)
    converter.register_unstructure_hook(datetime.timedelta, format_duration)
    converter.register_unstructure_hook_factory(_is_one_or_many, _one_or_many_dump)
    converter.register_unstructure_hook_factory(attrs.has, _class_dump)
    return converter


_converter = _make_converter()
