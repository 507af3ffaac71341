"""The plain-text tables every harness prints: one formatting of figures, one layout."""

from __future__ import annotations

__all__ = ["fmt", "grid"]


def fmt(value: float | None, spec: str = ".3f", suffix: str = "") -> str:
    """``value`` formatted with ``spec`` and ``suffix``, or ``n/a`` when it was not measured."""
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def grid(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a table: the first column left-aligned, the others right-aligned, a rule
    under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
