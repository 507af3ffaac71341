"""Read the project's Markdown pages as a reader sees them: named sections, and the code blocks
in each. Shared by the tests that check a page documents exactly what the code declares (hooks,
the public API) and by the tests that run every command the pages show (``tests/test_docs.py``).

Pages are parsed with markdown-it-py (CommonMark), not with regular expressions: a ``# comment``
line inside a shell block is no heading, and a fence indented inside a list item is a fence.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable, Iterator

import attrs
from markdown_it import MarkdownIt

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: the info strings of the code blocks that hold commands to type
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})

_SKIPPED_DIRS = frozenset({"node_modules", "build", "dist"})


def pages() -> list[str]:
    """Every Markdown page of the repository, as paths relative to its root: the README,
    ``docs/`` and the plugins', examples' and benchmarks' own pages."""
    found = []
    for path in ROOT.rglob("*.md"):
        parts = path.relative_to(ROOT).parts
        if any(part.startswith(".") or part in _SKIPPED_DIRS for part in parts[:-1]):
            continue
        found.append(path.relative_to(ROOT).as_posix())
    return sorted(found)


def _page_path(page: str) -> pathlib.Path:
    """``page`` relative to the repository root, or a bare name of ``docs/`` (``hooks.md``)."""
    path = ROOT / page
    return path if path.exists() else DOCS / page


@attrs.frozen
class CodeBlock:
    """A fenced code block: the ``index``-th block of its ``language`` in its section (the shell
    languages, ``sh`` and ``console`` alike, counted together)."""

    page: str
    section: str
    index: int
    language: str
    text: str
    line: int  # 1-based line of the opening fence

    @property
    def ref(self) -> tuple[str, str, int]:
        """How the registry of tested blocks names it: (page, section, index)."""
        return (self.page, self.section, self.index)


@attrs.frozen
class _Section:
    level: int
    name: str
    start: int  # 0-based line of the heading
    end: int  # 0-based line after the section's last line


def _sections(page: str) -> tuple[list[str], list[_Section], list[tuple[str, str, int, int]]]:
    """The page's lines, its sections in order, and its fences (info, content, start, end)."""
    text = _page_path(page).read_text()
    tokens = MarkdownIt("commonmark").parse(text)
    lines = text.splitlines(keepends=True)
    headings: list[tuple[int, str, int]] = []
    fences: list[tuple[str, str, int, int]] = []
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.map is not None:
            title = tokens[i + 1].content.strip()
            headings.append((int(token.tag[1]), title.replace("`", ""), token.map[0]))
        elif token.type == "fence" and token.map is not None:
            fences.append((token.info.strip(), token.content, token.map[0], token.map[1]))
    sections = [
        _Section(level, name, start, headings[n + 1][2] if n + 1 < len(headings) else len(lines))
        for n, (level, name, start) in enumerate(headings)
    ]
    return lines, sections, fences


def doc_sections(
    page: str, names: Callable[[str], bool], *, level: int | None = None
) -> dict[str, str]:
    """Heading name -> the text of its section (up to the next heading of any level), for the
    headings of ``page`` (``hooks.md`` for ``docs/hooks.md``, or a path from the repository
    root) whose name (without its backticks) ``names`` accepts, and only those of ``level`` (3 for
    ``###``) when given."""
    lines, sections, _ = _sections(page)
    return {
        section.name: "".join(lines[section.start + 1 : section.end])
        for section in sections
        if (level is None or section.level == level) and names(section.name)
    }


def code_blocks(page: str) -> Iterator[CodeBlock]:
    """The fenced code blocks of ``page``, in order, each with the section it is in (the page's
    first lines, before any heading, are the section ``""``)."""
    _, sections, fences = _sections(page)
    counts: dict[tuple[str, str], int] = {}
    for info, content, start, _end in fences:
        section = next((s.name for s in reversed(sections) if s.start < start), "")
        language = info.split()[0] if info else ""
        kind = "shell" if language in SHELL_LANGUAGES else language
        index = counts.get((section, kind), 0)
        counts[(section, kind)] = index + 1
        yield CodeBlock(page, section, index, language, content, start + 1)


@attrs.frozen
class Mention:
    """An inline code span (``kind`` "code") or a link's target ("link") in a page's prose."""

    page: str
    section: str
    line: int
    kind: str
    text: str


def mentions(page: str) -> Iterator[Mention]:
    """The inline code spans and link targets of ``page``, in order, with their sections."""
    tokens = MarkdownIt("commonmark").parse(_page_path(page).read_text())
    section = ""
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            section = tokens[i + 1].content.strip().replace("`", "")
        if token.type != "inline" or token.map is None:
            continue
        for child in token.children or []:
            if child.type == "code_inline":
                yield Mention(page, section, token.map[0] + 1, "code", child.content)
            elif child.type == "link_open":
                yield Mention(page, section, token.map[0] + 1, "link", str(child.attrs["href"]))


def anchors(page: str) -> set[str]:
    """The anchors GitHub gives the headings of ``page``: lower case, punctuation dropped,
    spaces made hyphens."""
    _, sections, _ = _sections(page)
    return {re.sub(r"[^\w\- ]", "", s.name.lower()).replace(" ", "-") for s in sections}


def shell_blocks() -> list[CodeBlock]:
    """Every block of commands to type, on every page of the repository."""
    return [
        block
        for page in pages()
        for block in code_blocks(page)
        if block.language in SHELL_LANGUAGES
    ]
