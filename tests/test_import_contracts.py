"""The import contract "plugins import only tether.api and tether.testing" forbids every
other kernel module by name (import-linter has no "all but"): a kernel module added later
must be added to it, or plugins could import it unnoticed. import-linter sees packages only;
``scripts/check_plugin_imports.py`` holds every other file of the plugins, their tests first,
to the same rule. And inside the kernel, no module imports another's private names."""

from __future__ import annotations

import ast
import configparser
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import tether

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALLOWED = {"api", "testing"}
CHECK = ROOT / "scripts" / "check_plugin_imports.py"


def check_imports(*paths: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """``python scripts/check_plugin_imports.py PATH...``, as ``tox -e lint`` runs it."""
    return subprocess.run(
        [sys.executable, str(CHECK), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_plugins_contract_forbids_every_kernel_module_but_the_api_and_testing() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    contract = config["importlinter:contract:plugins-import-only-the-api"]
    forbidden = set(contract["forbidden_modules"].split())
    kernel = pathlib.Path(tether.__file__).parent
    modules = {
        f"tether.{path.stem if path.is_file() else path.name}"
        for path in kernel.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    missing = modules - forbidden - {f"tether.{name}" for name in ALLOWED}
    assert not missing, f".importlinter: add {sorted(missing)} to the plugins' forbidden_modules"
    assert not forbidden & {f"tether.{name}" for name in ALLOWED}


def test_plugins_and_their_tests_import_nothing_of_tether_but_the_api_and_testing() -> None:
    checked = check_imports()
    assert (checked.returncode, checked.stdout) == (0, ""), checked.stdout + checked.stderr


def test_a_plugin_test_importing_the_kernel_is_told_what_to_use_instead(
    tmp_path: pathlib.Path,
) -> None:
    test = tmp_path / "tests" / "test_widget.py"
    test.parent.mkdir()
    test.write_text(
        textwrap.dedent("""\
            from typing import TYPE_CHECKING

            import pytest
            from tether_widget import plugin

            from tether import pki
            from tether.api import AccessDenied
            from tether.errors import NotFound, TetherError
            from tether.testing.cluster import start_cluster

            if TYPE_CHECKING:
                from tether.rbac import RoleSet


            def test_widget() -> None:
                from tether.tunnel._frames import FrameType

                pytest.importorskip("tether.config")
            """)
    )
    checked = check_imports(tmp_path)
    assert checked.returncode == 1
    advice = (
        "is not for plugins: use tether.api (docs/api.md) and tether.testing, add what a "
        "plugin needs there, or move a test of the kernel's behaviour to tests/"
    )
    assert checked.stdout.splitlines() == [
        f"{test}:6: imports tether.pki: it {advice}",
        f"{test}:8: imports tether.errors: use tether.api.NotFound, tether.api.TetherError",
        f"{test}:12: imports tether.rbac: use tether.api.RoleSet",
        f"{test}:16: imports tether.tunnel._frames: FrameType {advice}",
        f"{test}:18: imports tether.config: it {advice}",
    ]
    assert "5 imports refused: plugins and their tests import only tether.api and " in (
        checked.stderr
    )


def _inside(module: str, owner: str) -> bool:
    return module == owner or module.startswith(owner + ".")


def _private_reaches(path: pathlib.Path, module: str) -> Iterator[str]:
    """The imports in ``path`` (module ``module``) of a private name of another module, or of a
    private module from outside the package it belongs to."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported: dict[str, list[str]] = {node.module: [a.name for a in node.names]}
        elif isinstance(node, ast.Import):
            imported = {alias.name: [] for alias in node.names}
        else:
            continue
        where = f"{module} (line {node.lineno})"
        for source, names in imported.items():
            parts = source.split(".")
            if parts[0] != "tether":
                continue
            for i, part in enumerate(parts):
                if part.startswith("_") and not _inside(module, ".".join(parts[:i])):
                    yield f"{where} imports the private module {source}"
            for name in names:
                if name.startswith("_") and not _inside(module, source):
                    yield f"{where} imports {name} of {source}"


def test_no_kernel_module_reaches_into_another_modules_private_names() -> None:
    """A name with a leading underscore is its module's own, and a module with one its
    package's: another module that needs it asks for a public name instead."""
    kernel = pathlib.Path(tether.__file__).parent
    found = []
    for path in sorted(kernel.rglob("*.py")):
        parts = ("tether", *path.relative_to(kernel).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.extend(_private_reaches(path, module))
    assert not found, found
