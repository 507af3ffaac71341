"""YAML in and out, keeping the line of every node so errors can point at it.

Configuration files and resource documents are both YAML written by people; when one is wrong
the error must say ``file:line: field: problem``. ruamel.yaml's round-trip loader records where
each mapping key and sequence item starts, so :func:`load_documents` converts the tree to plain
Python values and keeps a side table from *path* (a tuple of keys and indexes) to line number.
"""

from __future__ import annotations

import contextlib
import datetime
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from tether.errors import TetherError

__all__ = ["Document", "Path", "dump_yaml", "load_document", "load_documents"]

Path = tuple[str | int, ...]


@attrs.frozen
class Document:
    """One YAML document as plain Python values plus the line of each node."""

    data: Any
    source: str
    index: int  # 1-based position in the stream
    start_line: int
    lines: Mapping[Path, int] = attrs.field(repr=False)

    def line_of(self, path: Sequence[str | int]) -> int:
        """Return the line of ``path``, or of its nearest ancestor that has one."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.start_line

    def where(self, path: Sequence[str | int] = ()) -> str:
        """``source:line`` for messages."""
        return f"{self.source}:{self.line_of(path)}"


def format_path(path: Iterable[str | int]) -> str:
    """Render ``("spec", "allow", "logins", 0)`` as ``spec.allow.logins[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _plain(node: Any, path: Path, lines: dict[Path, int]) -> Any:
    if isinstance(node, CommentedMap):
        result: dict[Any, Any] = {}
        for key, value in node.items():
            child = (*path, key)
            with contextlib.suppress(KeyError, TypeError, AttributeError):
                lines[child] = node.lc.key(key)[0] + 1
            result[key] = _plain(value, child, lines)
        return result
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            child = (*path, i)
            with contextlib.suppress(KeyError, TypeError, AttributeError):
                lines[child] = node.lc.item(i)[0] + 1
            items.append(_plain(value, child, lines))
        return items
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, datetime.datetime | datetime.date):
        return node
    return node


def load_documents(
    text: str, source: str, *, error: type[TetherError] = TetherError
) -> list[Document]:
    """Parse every document in ``text``; empty documents are skipped.

    :param source: the file name used in messages.
    :param error: the exception class raised for a syntax error (its message names
        ``source:line``).
    """
    yaml = YAML(typ="rt")
    try:
        raw = list(yaml.load_all(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise error(f"{source}:{line}: {problem}", hint="fix the YAML syntax") from None
    except YAMLError as exc:
        raise error(f"{source}: invalid YAML: {exc}") from None
    docs = []
    for index, node in enumerate(raw, start=1):
        if node is None:
            continue
        lines: dict[Path, int] = {}
        start = 1
        if isinstance(node, CommentedMap | CommentedSeq):
            start = node.lc.line + 1
        docs.append(Document(_plain(node, (), lines), source, index, start, lines))
    return docs


def load_document(
    text: str, source: str, *, error: type[TetherError] = TetherError
) -> Document | None:
    """Parse a stream that holds at most one document (a configuration file)."""
    docs = load_documents(text, source, error=error)
    if len(docs) > 1:
        raise error(f"{source}:{docs[1].start_line}: expected one YAML document, found several")
    return docs[0] if docs else None


def dump_yaml(data: Any) -> str:
    """Dump plain data as block-style YAML; a list of documents when ``data`` is a list of
    dicts meant as separate documents is the caller's choice (join with ``---``)."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    # keep the caller's key order (kind, version, metadata, spec), as tctl prints it
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    # no folding of long scalars (CA pins, certificates) onto a second line
    yaml.width = 4096
    stream = io.StringIO()
    yaml.dump(data, stream)
    return stream.getvalue()
