"""Split a Markdown page of ``docs/`` into named sections: shared by the tests that check a
page documents exactly what the code declares (hooks, the public API)."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def doc_sections(
    page: str, names: Callable[[str], bool], *, level: int | None = None
) -> dict[str, str]:
    """Heading name -> the text of its section (up to the next heading of any level), for the
    headings of ``docs/<page>`` whose name (backticks stripped) ``names`` accepts, and only
    those of ``level`` (3 for ``###``) when given."""
    sections: dict[str, str] = {}
    parts = re.split(r"^(#{1,6} .*)$", (DOCS / page).read_text(), flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        hashes, _, title = heading.partition(" ")
        name = title.strip().strip("`")
        if (level is None or len(hashes) == level) and names(name):
            sections[name] = body
    return sections
