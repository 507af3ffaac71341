"""Label selectors, matched as Teleport matches them.

A selector maps label keys to accepted values. Every key of the selector must match the
resource's label of that key; a value matches when any accepted value does. Accepted values are
``*`` (anything), a glob with ``*`` inside, a ``^...$`` regular expression (re2 syntax, matched
against the whole value) or a literal. The key ``*`` with the value ``*`` matches every
resource, labelled or not; beside other keys it adds nothing, so ``{'*': '*', env: prod}``
selects what ``{env: prod}`` selects, whatever the order of the keys (Teleport lets ``'*': '*'``
match everything there). An empty selector matches nothing, so a role grants access only to
what it names.

A value may hold a ``{{internal.x}}``/``{{external.x}}`` template (:func:`expand_label_value`):
what the trait supplies matches as written, never as a wildcard or an expression.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import re2

from tether.errors import ResourceError
from tether.patterns._regex import compile_re2, re2_error_message
from tether.patterns._templates import expand_template_parts

__all__ = [
    "expand_label_value",
    "is_regex",
    "match_label_value",
    "match_labels",
    "reads_as_pattern",
    "validate_label_value",
]

WILDCARD = "*"


def is_regex(value: str) -> bool:
    """Regular expressions are the values that start with ``^`` and end with ``$``."""
    return len(value) >= 2 and value.startswith("^") and value.endswith("$")


def _glob_body(value: str) -> str:
    return ".*".join(re2.escape(part) for part in value.split(WILDCARD))


def _glob_pattern(value: str) -> str:
    return "^" + _glob_body(value) + "$"


def reads_as_pattern(value: str) -> bool:
    """Whether a selector (or a role's login) would read ``value`` as more than itself."""
    return WILDCARD in value or is_regex(value)


def expand_label_value(value: str, traits: Mapping[str, Sequence[str]]) -> list[str]:
    """Expand the template in a selector value so that what a trait supplies matches literally.

    The role's own text keeps its meaning (``*`` globs, ``^...$`` re2) and the trait's value
    is quoted: in ``^dev-{{external.team}}-.*$`` it is re2-escaped, in a glob or a literal the
    result becomes a ``^...$`` expression whose trait part is escaped. So a trait of ``*`` or
    ``^.*$`` selects only a label that is literally ``*`` or ``^.*$``. A literal value expands
    to itself.

    :raises ResourceError: malformed template.
    """
    parts = expand_template_parts(value, traits)
    if parts is None:
        return [value]
    prefix, values, suffix = parts
    expanded: list[str] = []
    for trait_value in values:
        if is_regex(value):
            accepted = prefix + re2.escape(trait_value) + suffix
        else:
            accepted = prefix + trait_value + suffix
            if reads_as_pattern(accepted):
                accepted = f"^{_glob_body(prefix)}{re2.escape(trait_value)}{_glob_body(suffix)}$"
        if accepted not in expanded:
            expanded.append(accepted)
    return expanded


def match_label_value(accepted: str, value: str) -> bool:
    """Whether one accepted selector value matches one label value."""
    if accepted == WILDCARD:
        return True
    if is_regex(accepted):
        pattern = accepted
    elif WILDCARD in accepted:
        pattern = _glob_pattern(accepted)
    else:
        return accepted == value
    try:
        compiled = compile_re2(pattern)
    except re2.error:
        return False  # validation rejects these on create; never grant on a broken pattern
    return compiled.fullmatch(value) is not None


def validate_label_value(value: str) -> None:
    """Check that a ``^...$`` value compiles with re2.

    :raises ResourceError: the expression is invalid, with re2's reason.
    """
    if is_regex(value):
        try:
            compile_re2(value)
        except re2.error as exc:
            raise ResourceError(
                f"invalid regular expression {value!r}: {re2_error_message(exc)}",
                hint="label values starting with ^ and ending with $ use re2 syntax",
            ) from None


def match_labels(selector: Mapping[str, Sequence[str]], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy ``selector`` (see the module docstring for the rules)."""
    if not selector:
        return False
    for key, accepted in selector.items():
        values = (accepted,) if isinstance(accepted, str) else tuple(accepted)
        if key == WILDCARD:
            # '*: *' holds for every resource and leaves the other keys to decide; checking
            # them all, in any order, keeps a deny from hiding less when written another way.
            # '*: something' has no meaning; refuse rather than guess
            if values != (WILDCARD,):
                return False
            continue
        if key not in labels:
            return False
        if not any(match_label_value(v, labels[key]) for v in values):
            return False
    return True
