"""``docs/api.md`` documents exactly what ``tether.api`` exports, one section each (trio's
``test_exports``; the hooks' twin is ``test_hook_docs.py``), and every export says what it is."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import subprocess
import sys
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
    loaded = {
        name
        for name, value in vars(tether.api).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert loaded <= EXPORTED, f"tether.api defines names outside __all__: {loaded - EXPORTED}"
    assert set(tether.api._SOURCES) == EXPORTED, "tether.api loads other names than __all__'s"
    assert len(tether.api.__all__) == len(EXPORTED), "tether.api.__all__ names something twice"


def test_type_checkers_see_each_export_where_it_loads_from() -> None:
    # api.py names each export twice: in the imports type checkers read and in the table
    # that loads it at run time; the two must agree
    tree = ast.parse(pathlib.Path(tether.api.__file__).read_text())
    typed = {
        alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == tether.api._SOURCES


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_each_export_loads(name: str) -> None:
    assert getattr(tether.api, name) is getattr(
        importlib.import_module(tether.api._SOURCES[name]), name
    )


def test_importing_the_api_loads_no_kernel_module_a_plugin_did_not_ask_for() -> None:
    # a plugin's `from tether.api import hookimpl` runs in every CLI start; the facade must
    # not import the kernel behind it
    probe = (
        "import sys, tether.api; from tether.api import hookimpl; "
        "print(sorted(m for m in sys.modules if m.startswith('tether.')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert ast.literal_eval(out.stdout) == ["tether.api", "tether.hookspecs"]


@pytest.mark.parametrize("name", sorted(EXPORTED - VALUES))
def test_each_export_carries_its_own_docstring(name: str) -> None:
    assert inspect.getdoc(getattr(tether.api, name)), f"tether.api.{name} has no docstring"
