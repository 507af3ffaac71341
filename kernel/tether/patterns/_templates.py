"""Role templates: ``{{internal.logins}}``, ``{{external.env}}`` and their expansion by traits.

A leaf cluster's role can say "whatever logins the root gave this user" instead of naming them,
which is how trusted clusters share logins, Kubernetes groups and database users. A value holds
at most one ``{{...}}`` expression, with optional literal text around it
(``ssh-{{internal.logins}}``). Supported expressions, as in Teleport:

- ``internal.NAME`` / ``external.NAME`` / ``external["odd-name"]``: the trait's values;
- ``email.local(VAR)``: the part before ``@`` of each value;
- ``regexp.replace(VAR, "^re2$", "repl-$1")``: rewritten values; values that do not match are
  dropped.

Both namespaces read the same trait map: internal traits are the ones Tether itself sets
(logins, kubernetes_groups, db_users...), external ones come from an identity provider.

What a trait supplies is a value, never a pattern (unlike Teleport): users can often edit
their own claims at the identity provider. Label selectors quote it (see
:func:`tether.rbac.expand_label_value`), and logins, Kubernetes groups and database users that a
trait fills in are dropped when they would read as a wildcard (see :class:`tether.rbac.RoleSet`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

import attrs
import re2

from tether.errors import ResourceError
from tether.patterns._regex import compile_re2, re2_error_message

__all__ = ["expand_template", "expand_template_parts", "is_template", "validate_template"]

_NAMESPACES = ("internal", "external")
_FUNCTIONS = ("email.local", "regexp.replace")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<punct>[.()\[\],])
    )""",
    re.VERBOSE,
)


@attrs.frozen
class _Template:
    prefix: str
    suffix: str
    trait: str
    function: str | None = None
    pattern: str = ""
    replacement: str = ""


class _Parser:
    """Recursive descent over one ``{{ ... }}`` body; positions are offsets in the value."""

    def __init__(self, value: str, start: int, end: int) -> None:
        self.value = value
        self.pos = start
        self.end = end

    def fail(self, problem: str, pos: int | None = None) -> ResourceError:
        column = (self.pos if pos is None else pos) + 1
        return ResourceError(f"invalid template {self.value!r}: {problem} at column {column}")

    def next(self) -> tuple[str, str, int]:
        """Return (type, text, position) of the next token."""
        match = _TOKEN.match(self.value, self.pos, self.end)
        if match is None:
            rest = self.value[self.pos : self.end].lstrip()
            if not rest:
                raise self.fail("expression ends too early", self.end)
            pos = self.end - len(rest)
            raise self.fail(f"unexpected {rest[0]!r}", pos)
        self.pos = match.end()
        kind = match.lastgroup or ""
        return kind, match.group(kind), match.start(kind)

    def expect(self, text: str) -> None:
        _, got, pos = self.next()
        if got != text:
            raise self.fail(f"expected {text!r}, found {got!r}", pos)

    def at_end(self) -> bool:
        return not self.value[self.pos : self.end].strip()

    def variable(self) -> str:
        kind, namespace, pos = self.next()
        if kind != "ident" or namespace not in _NAMESPACES:
            raise self.fail(f"unknown namespace {namespace!r} (expected internal or external)", pos)
        kind, punct, pos = self.next()
        if punct == ".":
            kind, name, pos = self.next()
            if kind != "ident":
                raise self.fail(f"expected a trait name, found {name!r}", pos)
            return name
        if punct == "[":
            kind, quoted, pos = self.next()
            if kind != "string" or len(quoted) < 3:
                raise self.fail("expected a quoted trait name", pos)
            self.expect("]")
            return _unquote(quoted)
        raise self.fail(f"expected '.' after {namespace!r}, found {punct!r}", pos)

    def expression(self) -> tuple[str, str | None, str, str]:
        save = self.pos
        kind, first, pos = self.next()
        if first in _NAMESPACES:
            self.pos = save
            return self.variable(), None, "", ""
        if kind != "ident":
            raise self.fail(f"expected internal.NAME or external.NAME, found {first!r}", pos)
        if first not in {f.partition(".")[0] for f in _FUNCTIONS}:
            raise self.fail(f"unknown namespace {first!r} (expected internal or external)", pos)
        self.expect(".")
        _, second, _ = self.next()
        function = f"{first}.{second}"
        if function not in _FUNCTIONS:
            raise self.fail(
                f"unknown function {function!r} (expected email.local() or regexp.replace())", pos
            )
        self.expect("(")
        trait = self.variable()
        pattern = replacement = ""
        if function == "regexp.replace":
            self.expect(",")
            pattern = self.string()
            try:
                compile_re2(pattern)
            except re2.error as exc:
                raise self.fail(
                    f"invalid regular expression {pattern!r}: {re2_error_message(exc)}", pos
                ) from None
            self.expect(",")
            replacement = self.string()
        self.expect(")")
        return trait, function, pattern, replacement

    def string(self) -> str:
        kind, text, pos = self.next()
        if kind != "string":
            raise self.fail(f"expected a quoted string, found {text!r}", pos)
        return _unquote(text)


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted[1:-1])


@functools.lru_cache(maxsize=4096)
def _parse(value: str) -> _Template | None:
    """None for a literal; raises ResourceError for a malformed template."""
    opening = value.find("{{")
    closing = value.find("}}")
    if opening == -1:
        if closing != -1:
            raise ResourceError(
                f"invalid template {value!r}: '}}}}' without '{{{{' at column {closing + 1}"
            )
        return None
    closing = value.find("}}", opening + 2)
    if closing == -1:
        raise ResourceError(
            f"invalid template {value!r}: '{{{{' is not closed with '}}}}' at column {opening + 1}"
        )
    again = value.find("{{", opening + 2)
    if again != -1:
        raise ResourceError(
            f"invalid template {value!r}: only one {{{{...}}}} expression is "
            f"allowed per value at column {again + 1}"
        )
    if "}}" in value[closing + 2 :]:
        raise ResourceError(
            f"invalid template {value!r}: '}}}}' without '{{{{' at column "
            f"{value.find('}}', closing + 2) + 1}"
        )
    parser = _Parser(value, opening + 2, closing)
    if parser.at_end():
        raise parser.fail("empty expression", opening)
    trait, function, pattern, replacement = parser.expression()
    if not parser.at_end():
        _, extra, pos = parser.next()
        raise parser.fail(f"unexpected {extra!r} after the expression", pos)
    return _Template(
        prefix=value[:opening],
        suffix=value[closing + 2 :],
        trait=trait,
        function=function,
        pattern=pattern,
        replacement=replacement,
    )


def is_template(value: str) -> bool:
    """Whether ``value`` contains a ``{{...}}`` expression (literals are used as written)."""
    return "{{" in value


def validate_template(value: str) -> None:
    """Check the template syntax of ``value``; literals are always valid.

    :raises ResourceError: malformed, naming the problem and its column.
    """
    _parse(value)


def _transform(template: _Template, value: str) -> str | None:
    if template.function == "email.local":
        local, at, _ = value.partition("@")
        return local if at and local else None
    if template.function == "regexp.replace":
        compiled = compile_re2(template.pattern)
        match = compiled.search(value)
        if match is None:
            return None
        # Teleport writes groups as $1; Python's expand wants \1.
        replacement = re.sub(r"\$(\d+)", r"\\\1", template.replacement.replace("\\", "\\\\"))
        return str(compiled.sub(replacement, value))
    return value


def expand_template_parts(
    value: str, traits: Mapping[str, Sequence[str]]
) -> tuple[str, list[str], str] | None:
    """Split ``value`` around its expression and expand the expression with ``traits``.

    :returns: None for a literal; else the literal text before the expression, what the
        expression gave for each trait value (empty results dropped, order kept, duplicates
        removed) and the literal text after it. A caller that must tell the role's own text
        from what a trait supplied (label selectors quote the latter) reads them apart here.
    :raises ResourceError: malformed template.
    """
    template = _parse(value)
    if template is None:
        return None
    results: list[str] = []
    for trait_value in traits.get(template.trait, ()):
        transformed = _transform(template, trait_value)
        if transformed and transformed not in results:
            results.append(transformed)
    return template.prefix, results, template.suffix


def expand_template(value: str, traits: Mapping[str, Sequence[str]]) -> list[str]:
    """Expand ``value`` with the user's ``traits``: one result per trait value.

    A literal expands to itself; a missing trait expands to nothing (so the role grants
    nothing rather than something unintended). Empty results are dropped; order is kept and
    duplicates removed.

    :raises ResourceError: malformed template.
    """
    parts = expand_template_parts(value, traits)
    if parts is None:
        return [value]
    prefix, values, suffix = parts
    return [prefix + v + suffix for v in values]
