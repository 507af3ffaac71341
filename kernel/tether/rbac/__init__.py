"""Role-based access control: templates, label selectors and role-set evaluation.

Used by the auth service (which logins go into a certificate, which leaf clusters a user sees,
which resources ``tetherctl`` may touch) and by a leaf after role mapping (may this root user
log in to this node as this login). Deny always wins; denials name the check that failed.
The template and label languages roles are written in are :mod:`tether.patterns`, re-exported
here.
"""

from tether.patterns import (
    compile_re2,
    expand_label_value,
    expand_template,
    is_template,
    match_label_value,
    match_labels,
    re2_error_message,
    validate_label_value,
    validate_template,
)
from tether.rbac._roleset import RoleSet

__all__ = [
    "RoleSet",
    "compile_re2",
    "expand_label_value",
    "expand_template",
    "is_template",
    "match_label_value",
    "match_labels",
    "re2_error_message",
    "validate_label_value",
    "validate_template",
]
