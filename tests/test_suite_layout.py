"""The suite's own layout: what pytest's default import mode needs of it."""

from __future__ import annotations

import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_test_module_has_a_name_of_its_own() -> None:
    """Test modules are imported by their base name (no ``__init__.py`` in test folders), so
    two of one name make the second a collection error in whichever run meets both: a
    plugin's ``tests/test_access.py`` next to another plugin's hid that one's tests."""
    found = collections.defaultdict(list)
    for folder in ("tests", "plugins", "contrib"):
        for path in (ROOT / folder).rglob("test_*.py"):
            if ".tox" not in path.parts and ".venv" not in path.parts:
                found[path.name].append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in found.items() if len(paths) > 1} == {}
