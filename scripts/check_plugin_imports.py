"""Check that every Python file of the plugins (plugins/*, contrib/*), their tests included,
imports nothing of Tether but ``tether.api`` and ``tether.testing``.

import-linter (``.importlinter``) checks the plugins' packages; it sees only packages, so a
plugin's tests, which a third-party author writes with nothing but what the kernel gives
them, are checked here, by reading each file's imports (those made only for type checking,
and ``importlib.import_module``/``pytest.importorskip`` of a literal name, included). Each
offending import is one line: ``file:line: imports MODULE: what to use instead``.

Usage: ``python scripts/check_plugin_imports.py [PATH ...]`` (default: plugins/ and contrib/);
exits 1 when any import is refused. ``tox -e lint`` runs it, and so does
``tests/test_import_contracts.py``.
"""

from __future__ import annotations

import ast
import pathlib
import sys
from collections.abc import Iterator, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNEL = ROOT / "kernel" / "tether"
ALLOWED = ("tether.api", "tether.testing")
DYNAMIC_IMPORTS = {"import_module", "importorskip", "__import__"}
RULE = "plugins and their tests import only tether.api and tether.testing"


def _exported(path: pathlib.Path) -> list[str]:
    """The names in the ``__all__`` of the module at ``path`` (read, not imported)."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            return [str(name) for name in value]
    return []


def public_names() -> dict[str, str]:
    """Where a plugin finds each name: ``{"AccessDenied": "tether.api", ...}``, tether.api's
    first, then each tether.testing module's."""
    where = dict.fromkeys(_exported(KERNEL / "api.py"), "tether.api")
    for module in sorted((KERNEL / "testing").glob("*.py")):
        for name in _exported(module):
            where.setdefault(name, f"tether.testing.{module.stem}")
    return where


def _allowed(module: str) -> bool:
    return not (module == "tether" or module.startswith("tether.")) or any(
        module == allowed or module.startswith(f"{allowed}.") for allowed in ALLOWED
    )


def _is_kernel_module(name: str) -> bool:
    path = KERNEL.parent.joinpath(*name.split("."))
    return name.startswith("tether.") and (
        path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    )


def _instead(module: str, names: Sequence[str], where: dict[str, str]) -> str:
    """What to import in place of ``names`` of ``module`` (or of ``module`` itself)."""
    found = [f"{where[name]}.{name}" for name in names if name in where]
    missing = [name for name in names if name not in where]
    advice = [f"use {', '.join(found)}"] if found else []
    if missing or not names:
        what = f"{', '.join(missing)} {'are' if len(missing) > 1 else 'is'}" if missing else "it is"
        advice.append(
            f"{what} not for plugins: use tether.api (docs/api.md) and tether.testing, add "
            "what a plugin needs there, or move a test of the kernel's behaviour to tests/"
        )
    return "; ".join(advice)


def refusals(path: pathlib.Path, where: dict[str, str]) -> Iterator[tuple[int, str, str]]:
    """``(line, module, what to use instead)`` for each import of ``path`` that is refused."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _allowed(alias.name):
                    yield node.lineno, alias.name, _instead(alias.name, (), where)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = []  # from tether.errors import AccessDenied; from tether import pki
            for alias in node.names:
                module = f"{node.module}.{alias.name}"
                if _is_kernel_module(module):
                    if not _allowed(module):
                        yield node.lineno, module, _instead(module, (), where)
                elif not _allowed(node.module):
                    names.append(alias.name)
            if names:
                yield node.lineno, node.module, _instead(node.module, names, where)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                called in DYNAMIC_IMPORTS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not _allowed(first.value)
            ):
                yield node.lineno, first.value, _instead(first.value, (), where)


def python_files(paths: Sequence[pathlib.Path]) -> list[pathlib.Path]:
    found: list[pathlib.Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        else:
            found += [
                p
                for p in sorted(path.rglob("*.py"))
                if not any(part.endswith(".egg-info") or part == "build" for part in p.parts)
            ]
    return found


def check(paths: Sequence[pathlib.Path]) -> list[str]:
    """One line per refused import under ``paths``: ``file:line: imports MODULE: what to
    use instead``."""
    where = public_names()
    lines = []
    for path in python_files(paths):
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for line, module, instead in sorted(refusals(path, where)):
            lines.append(f"{shown}:{line}: imports {module}: {instead}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [pathlib.Path(arg).resolve() for arg in args] or [ROOT / "plugins", ROOT / "contrib"]
    lines = check(paths)
    for line in lines:
        print(line)
    if lines:
        print(f"{len(lines)} imports refused: {RULE}", file=sys.stderr)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
