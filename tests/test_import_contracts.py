"""The import contract "plugins import only tether.api and tether.testing" forbids every
other kernel module by name (import-linter has no "all but"): a kernel module added later
must be added to it, or plugins could import it unnoticed. And inside the kernel, no module
imports another's private names."""

from __future__ import annotations

import ast
import configparser
import pathlib
from collections.abc import Iterator

import tether

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALLOWED = {"api", "testing"}


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
