"""One cached, quiet way to compile google-re2 expressions.

re2 (linear time, no backtracking) is used for every user-written pattern so that a role or a
label value cannot make the auth service spin. Compiling is cached because the same few
patterns are matched on every access check.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

__all__ = ["compile_re2", "re2_error_message"]


@functools.lru_cache(maxsize=1024)
def compile_re2(pattern: str) -> Any:
    """Compile ``pattern`` with re2.

    :raises re2.error: the pattern is invalid (see :func:`re2_error_message`).
    """
    options = re2.Options()
    options.log_errors = False  # re2 would otherwise print every bad pattern to stderr
    return re2.compile(pattern, options)


def re2_error_message(exc: BaseException) -> str:
    """re2's message as text (it raises with bytes)."""
    detail = exc.args[0] if exc.args else exc
    return detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
