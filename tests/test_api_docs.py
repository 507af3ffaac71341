"""``docs/api.md`` documents exactly what ``tether.api`` exports, one section each (trio's
``test_exports``; the hooks' twin is ``test_hook_docs.py``), and every export says what it is."""

from __future__ import annotations

import inspect
import types

import pytest

import tether.api
from doc_sections import doc_sections

EXPORTED = frozenset(tether.api.__all__)
#: exports that are values, not classes or functions: their docs/api.md section is their doc
VALUES = frozenset({"HOME_ENV", "PrivateKey", "ROUTE_NAME_SUFFIX", "__version__"})


def _documented() -> dict[str, str]:
    # every ``###`` heading of the page names one export; ``##`` ones group them
    return doc_sections("api.md", lambda name: True, level=3)


def test_plugin_author_finds_every_export_documented() -> None:
    missing = EXPORTED - set(_documented())
    assert not missing, f"docs/api.md has no section for {sorted(missing)}"


def test_docs_describe_no_name_the_api_does_not_export() -> None:
    stale = set(_documented()) - EXPORTED
    assert not stale, f"docs/api.md documents names tether.api does not export: {sorted(stale)}"


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_each_documented_export_says_what_it_is(name: str) -> None:
    assert _documented()[name].strip(), f"docs/api.md section {name} is empty"


def test_the_api_exports_exactly_its_all() -> None:
    public = {
        name
        for name, value in vars(tether.api).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"__version__"} == EXPORTED, (
        "tether.api defines public names outside __all__, or __all__ names what it lacks"
    )
    assert len(tether.api.__all__) == len(EXPORTED), "tether.api.__all__ names something twice"


@pytest.mark.parametrize("name", sorted(EXPORTED - VALUES))
def test_each_export_carries_its_own_docstring(name: str) -> None:
    assert inspect.getdoc(getattr(tether.api, name)), f"tether.api.{name} has no docstring"
