"""The small languages roles and role maps are written in: ``{{internal.x}}`` /
``{{external.x}}`` templates, label values (literals, ``*`` globs, ``^...$`` re2 expressions)
and label selectors.

A neutral package: resources validate role specs with it and :mod:`tether.rbac` evaluates
roles with it, so neither of those two imports the other to reach it.
"""

from tether.patterns._labels import (
    WILDCARD,
    expand_label_value,
    match_label_value,
    match_labels,
    reads_as_pattern,
    validate_label_value,
)
from tether.patterns._regex import compile_re2, re2_error_message
from tether.patterns._templates import expand_template, is_template, validate_template

__all__ = [
    "WILDCARD",
    "compile_re2",
    "expand_label_value",
    "expand_template",
    "is_template",
    "match_label_value",
    "match_labels",
    "re2_error_message",
    "reads_as_pattern",
    "validate_label_value",
    "validate_template",
]
