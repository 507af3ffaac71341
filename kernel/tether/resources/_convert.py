"""Plain data (from YAML or JSON) to typed spec objects and back, driven by attrs field types.

cattrs could structure these classes, but its errors are exception groups that a person cannot
read, and resource errors must be one line naming the field, what was expected and what was
given, with a "did you mean" for a misspelt key. The type language specs need is small (strings,
numbers, booleans, times, durations, literals, lists, string-keyed maps, attrs classes and the
label "one value or many" form), so a direct walk over the type hints is shorter than teaching
cattrs to speak that way, and it keeps the dumped form tidy: empty optional fields are omitted
and single label values are written as scalars, so ``get`` output looks like what people write.
"""

from __future__ import annotations

import collections.abc
import datetime
import difflib
import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Union

import attrs

from tether.durations import format_duration, parse_duration
from tether.errors import ResourceError
from tether.yamlio import format_path

__all__ = [
    "ONE_OR_MANY",
    "InvalidField",
    "LabelValues",
    "Labels",
    "Path",
    "did_you_mean",
    "format_time",
    "show",
    "structure",
    "unstructure",
]

Path = tuple[str | int, ...]


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


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to a misspelt ``word``, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


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


# Go prints nanoseconds; Python keeps microseconds.
_FRACTION = re.compile(r"(\.\d{6})\d+")


def _parse_time(value: Any, path: Path) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        # ruamel returns its own datetime subclass; store a plain one.
        result = datetime.datetime.combine(value.date(), value.timetz())
    elif isinstance(value, str):
        try:
            result = datetime.datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()))
        except ValueError:
            raise InvalidField(
                path, f"expected {_describe(datetime.datetime)}, got {show(value)}"
            ) from None
    else:
        raise InvalidField(path, f"expected {_describe(datetime.datetime)}, got {show(value)}")
    if result.tzinfo is None:
        result = result.replace(tzinfo=datetime.UTC)
    return result


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


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


def _expected(tp: Any, value: Any, path: Path) -> InvalidField:
    problem = f"expected {_describe(tp)}, got {show(value)}"
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return InvalidField(path, problem, hint=f"quote it: '{value}'")
    return InvalidField(path, problem)


def structure(value: Any, tp: Any, path: Path = ()) -> Any:
    """Turn plain data into a value of type ``tp``.

    :raises InvalidField: the value does not fit; the error names ``path``.
    """
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        base, extras = args[0], args[1:]
        if ONE_OR_MANY in extras:
            if isinstance(value, str):
                value = [value]
            elif value is not None and not isinstance(value, list | tuple):
                raise _expected(tp, value, path)
        return structure(value, base, path)
    if _is_union(origin):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if len(options) != 1:
            raise TypeError(f"unsupported union {tp!r}: only 'X | None' is supported")
        result = structure(value, options[0], path)
        if isinstance(result, datetime.datetime) and result.year == 1:
            return None  # Go's zero time, which Teleport prints for "never"
        return result
    if origin is Literal:
        if value in args and isinstance(value, str | int):
            return value
        choices = [str(a) for a in args]
        guess = did_you_mean(str(value), choices) if isinstance(value, str) else None
        return _raise(
            path,
            f"expected {_describe(tp)}, got {show(value)}",
            f"did you mean {guess}?" if guess else None,
        )
    if origin in _SEQUENCES:
        if value is None:
            value = []
        if not isinstance(value, list | tuple):
            raise _expected(tp, value, path)
        item_tp = args[0] if args else Any
        items = [structure(v, item_tp, (*path, i)) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin in _MAPPINGS:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise _expected(tp, value, path)
        key_tp, value_tp = args if args else (str, Any)
        mapped: dict[Any, Any] = {}
        for key, item in value.items():
            if key_tp is str and not isinstance(key, str):
                raise InvalidField(
                    (*path, str(key)),
                    f"keys must be strings, got {show(key)}",
                    hint=f"quote it: '{key}'",
                )
            mapped[key] = structure(item, value_tp, (*path, key))
        return mapped
    if attrs.has(tp):
        return _structure_attrs(value, tp, path)
    return _structure_scalar(value, tp, path)


def _raise(path: Path, problem: str, hint: str | None = None) -> typing.NoReturn:
    raise InvalidField(path, problem, hint=hint)


def _structure_scalar(value: Any, tp: Any, path: Path) -> Any:
    if tp is str:
        if not isinstance(value, str):
            raise _expected(tp, value, path)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _expected(tp, value, path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected(tp, value, path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _expected(tp, value, path)
        return float(value)
    if tp is datetime.datetime:
        return _parse_time(value, path)
    if tp is datetime.timedelta:
        if isinstance(value, datetime.timedelta):
            return value
        if not isinstance(value, str):
            raise _expected(tp, value, path)
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise InvalidField(path, str(exc)) from None
    raise TypeError(f"unsupported field type {tp!r} at {format_path(path)}")


def _structure_attrs(value: Any, cls: type, path: Path) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise _expected(cls, value, path)
    fields = attrs.fields_dict(cls)
    hints = _hints(cls)
    for key in value:
        if key not in fields:
            name = str(key)
            guess = did_you_mean(name, fields)
            if guess:
                _raise((*path, name), f"unknown field (did you mean {guess}?)")
            if not fields:
                _raise((*path, name), "unknown field; this takes no fields")
            _raise((*path, name), "unknown field; expected one of: " + ", ".join(fields))
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name in value:
            kwargs[field.alias or name] = structure(value[name], hints[name], (*path, name))
        elif field.default is attrs.NOTHING:
            _raise((*path, name), "required field missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a validator on the class refused the value
        raise InvalidField(path, str(exc)) from None


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def unstructure(value: Any, tp: Any = Any) -> Any:
    """Turn a typed value back into plain data that :func:`structure` reads unchanged.

    Fields that have a default and hold an empty value (None, "", [], {}) are omitted.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        if ONE_OR_MANY in args[1:] and isinstance(value, tuple | list) and len(value) == 1:
            return value[0]
        return unstructure(value, args[0])
    if value is None:
        return None
    if _is_union(origin):
        options = [a for a in args if a is not type(None)]
        return unstructure(value, options[0] if len(options) == 1 else Any)
    if attrs.has(type(value)):
        return _unstructure_attrs(value)
    if isinstance(value, datetime.datetime):
        return format_time(value)
    if isinstance(value, datetime.timedelta):
        return format_duration(value)
    if isinstance(value, Mapping):
        value_tp = args[1] if origin in _MAPPINGS and len(args) == 2 else Any
        return {k: unstructure(v, value_tp) for k, v in value.items()}
    if isinstance(value, list | tuple):
        item_tp = args[0] if origin in _SEQUENCES and args else Any
        return [unstructure(v, item_tp) for v in value]
    return value


def _unstructure_attrs(value: Any) -> dict[str, Any]:
    cls: type = type(value)
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for field in attrs.fields(cls):
        plain = unstructure(getattr(value, field.name), hints[field.name])
        if field.default is not attrs.NOTHING and _is_empty(plain):
            continue
        out[field.name] = plain
    return out
