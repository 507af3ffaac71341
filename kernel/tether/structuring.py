"""Plain data (YAML, JSON) into attrs classes with a strict cattrs converter, and its errors
back into paths.

Three things are read from plain data: ``tether.yaml`` (:mod:`tether.config`), resources
(:mod:`tether.resources`) and the JSON bodies of the auth API (:mod:`tether.auth.request_bodies`).
Each builds its converter with :func:`strict_converter` and adds its own hooks on top
(addresses and sizes in the configuration; times, durations, literals and label values in
resources; the shapes of a body's fields), and each words a :class:`Failure` its own way:
the configuration names the YAML type it got, a resource quotes the value, a body says what the
field must be.

Strict means: a value is taken only when it is written as the type says. No ``str()`` of a
number, no string read as a list of characters, no ``true`` as 1, no key the class has no field
for. cattrs reports every problem at once, as a tree of exception groups whose notes name the
fields and indexes; :func:`failures` flattens that tree into one :class:`Failure` per problem,
with its path, in the order a reader meets them: a mapping's unknown keys in the order they are
written (cattrs' own check keeps them in a set), then its fields in declaration order.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
import cattrs
import cattrs.cols
import cattrs.gen
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ClassValidationError,
    IterableValidationNote,
)

from tether.yamlio import Path

__all__ = [
    "Failure",
    "Mismatch",
    "MissingField",
    "UnknownField",
    "did_you_mean",
    "failures",
    "strict_converter",
]

#: Builds the error for a value of the wrong kind: ``mismatch(expected_type, value)``. Each user
#: of :func:`strict_converter` words it its own way.
Mismatch = Callable[[Any, Any], Exception]

StructureHook = Callable[[Any, Any], Any]


class UnknownField(Exception):
    """A key of a mapping that the class it is read into has no field for.

    :ivar key: the key as written.
    :ivar known: the class's fields, in declaration order.
    """

    def __init__(self, key: Any, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown field {key!r}")
        self.key = key
        self.known = known


class MissingField(Exception):
    """A field without a default that the data leaves out.

    :ivar type: the field's type, for a user that words a missing field as a null one.
    """

    def __init__(self, name: str, field_type: Any) -> None:
        super().__init__(f"required field {name!r} missing")
        self.type = field_type


@attrs.frozen
class Failure:
    """One problem found while structuring.

    :ivar path: keys and indexes from the value structured down to the wrong one.
    :ivar error: what is wrong: the exception a hook raised (the ``mismatch`` of
        :func:`strict_converter`, a user's own), :class:`UnknownField` or :class:`MissingField`.
    """

    path: Path
    error: BaseException


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to a misspelt ``word``, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def failures(exc: BaseException, path: Path = ()) -> Iterator[Failure]:
    """Flatten what a converter of :func:`strict_converter` raised into one :class:`Failure`
    per problem, depth first, in the order a reader meets them.

    :param path: where the structured value sits, prefixed to every failure's path.
    """
    if isinstance(exc, UnknownField):
        yield Failure((*path, exc.key), exc)
    elif isinstance(exc, BaseValidationError):
        for sub in exc.exceptions:
            sub_path, note = path, None
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    sub_path = (*path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = (*path, note.index)
            if isinstance(sub, KeyError) and isinstance(note, AttributeValidationNote):
                # the generated structure function looked the field up and did not find it
                yield Failure(sub_path, MissingField(note.name, note.type))
            else:
                yield from failures(sub, sub_path)
    else:
        yield Failure(path, exc)


def strict_converter(
    mismatch: Mismatch, *, forbid_extra_keys: bool = True, null_is_empty: bool = False
) -> cattrs.Converter:
    """A cattrs converter that takes only values written as their type says.

    Strings, integers (not booleans), booleans and numbers (integers too) are taken as they
    are; a list is a list or a tuple, a mapping a mapping, a class's data a mapping; anything
    else is refused with ``mismatch(type, value)``. Unstructured sequences are lists, so the
    result dumps as YAML and JSON alike.

    :param mismatch: builds the error for a value of the wrong kind.
    :param forbid_extra_keys: a key a class has no field for is an :class:`UnknownField`;
        otherwise it is ignored.
    :param null_is_empty: null is an empty list or mapping. Null is always an empty mapping for
        a class (a section with every line below it commented out means "all defaults").
    """
    converter = cattrs.Converter(detailed_validation=True)
    converter.register_structure_hook(str, _scalar(mismatch, str))
    converter.register_structure_hook(bool, _scalar(mismatch, bool))
    converter.register_structure_hook(int, _integer(mismatch))
    converter.register_structure_hook(float, _number(mismatch))
    converter.register_structure_hook_factory(
        cattrs.cols.is_sequence,
        _guarded(_sequence, (list, tuple), () if null_is_empty else None, mismatch),
    )
    converter.register_structure_hook_factory(
        cattrs.cols.is_mapping,
        _guarded(
            cattrs.cols.mapping_structure_factory, Mapping, {} if null_is_empty else None, mismatch
        ),
    )
    converter.register_structure_hook_factory(attrs.has, _classes(mismatch, forbid_extra_keys))
    converter.register_unstructure_hook_factory(
        cattrs.cols.is_sequence,
        lambda cl, conv: lambda seq: [conv.unstructure(item) for item in seq],
    )
    return converter


def _scalar(mismatch: Mismatch, kind: type) -> StructureHook:
    def structure(value: Any, cl: Any) -> Any:
        if not isinstance(value, kind):
            raise mismatch(cl, value)
        return value

    return structure


def _integer(mismatch: Mismatch) -> StructureHook:
    def structure(value: Any, cl: Any) -> int:
        # bool is an int subclass, but `failed_login_limit: true` is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise mismatch(cl, value)
        return value

    return structure


def _number(mismatch: Mismatch) -> StructureHook:
    def structure(value: Any, cl: Any) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise mismatch(cl, value)
        return float(value)

    return structure


def _guarded(
    make: Callable[[Any, cattrs.Converter], StructureHook],
    kinds: type | tuple[type, ...],
    empty: object,
    mismatch: Mismatch,
) -> Callable[[Any, cattrs.Converter], StructureHook]:
    """Wrap a cattrs hook factory so the hook refuses data of the wrong kind (cattrs would
    take any iterable as a list, so ``disabled: abc`` would be ``("a", "b", "c")``) and reads
    null as ``empty`` unless that is None."""

    def factory(cl: Any, converter: cattrs.Converter) -> StructureHook:
        inner = make(cl, converter)

        def structure(value: Any, target: Any) -> Any:
            if value is None and empty is not None:
                value = empty
            if not isinstance(value, kinds):
                raise mismatch(target, value)
            return inner(value, target)

        return structure

    return factory


def _sequence(cl: Any, converter: cattrs.Converter) -> StructureHook:
    if cattrs.cols.is_mutable_sequence(cl):
        return cattrs.cols.list_structure_factory(cl, converter)
    return cattrs.cols.homogenous_tuple_structure_factory(cl, converter)


def _classes(
    mismatch: Mismatch, forbid_extra_keys: bool
) -> Callable[[Any, cattrs.Converter], StructureHook]:
    def factory(cl: Any, converter: cattrs.Converter) -> StructureHook:
        inner = cattrs.gen.make_dict_structure_fn(cl, converter, _cattrs_forbid_extra_keys=False)
        known = tuple(field.name for field in attrs.fields(cl))
        allowed = frozenset(known) if forbid_extra_keys else None

        def structure(value: Any, target: Any) -> Any:
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise mismatch(target, value)
            if allowed is None or allowed.issuperset(value):
                return inner(value, target)
            errors: list[Exception] = [
                UnknownField(key, known) for key in value if key not in allowed
            ]
            try:
                inner(value, target)
            except ClassValidationError as exc:
                errors.extend(exc.exceptions)
            raise ClassValidationError(f"While structuring {cl.__qualname__}", errors, cl)

        return structure

    return factory
