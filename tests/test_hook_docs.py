"""docs/hooks.md documents every hook with its exact signature (datasette's
``test_plugin_hooks_are_documented``), and every hookspec carries its own docstring."""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any

import pluggy
import pytest

from doc_sections import doc_sections
from tether.plugins import get_plugin_manager

FIRSTRESULT_SENTENCE = "Stops at first non-None result."


def _hook_callers() -> dict[str, pluggy.HookCaller]:
    pm = get_plugin_manager(autoload=False)
    return {
        name: caller
        for name, caller in vars(pm.hook).items()
        if name.startswith("tether_") and caller.spec is not None
    }


HOOKS = _hook_callers()


def _doc_sections() -> dict[str, str]:
    """Hook name -> the text of its section (heading ``### tether_...`` up to the next heading)."""
    return doc_sections("hooks.md", lambda name: name.startswith("tether_"))


def _documented_signature(name: str, section: str) -> inspect.Signature:
    """Parse the ``name(...) -> ...`` line of the section's first python block."""
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL):
        line = block.strip()
        if line.startswith(f"{name}("):
            break
    else:
        pytest.fail(f"docs/hooks.md section {name} has no ```python block with {name}(...)")
    func = ast.parse(f"def {line}: ...").body[0]
    assert isinstance(func, ast.FunctionDef)
    params = [
        inspect.Parameter(
            a.arg,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=ast.unparse(a.annotation) if a.annotation else inspect.Parameter.empty,
        )
        for a in func.args.args
    ]
    returns = ast.unparse(func.returns) if func.returns else inspect.Signature.empty
    return inspect.Signature(params, return_annotation=returns)


def _normalised(sig: inspect.Signature) -> tuple[Any, ...]:
    # hookspecs.py has `from __future__ import annotations`: its annotations are source strings
    return (
        [(p.name, p.annotation) for p in sig.parameters.values()],
        sig.return_annotation,
    )


def test_there_are_hooks_to_document() -> None:
    assert {"tether_configure", "tether_services", "tether_audit_search"} <= set(HOOKS)


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_plugin_author_finds_each_hook_documented_with_its_exact_signature(name: str) -> None:
    sections = _doc_sections()
    assert name in sections, f"docs/hooks.md has no section for hook {name}"
    spec_function = HOOKS[name].spec.function  # type: ignore[union-attr]
    documented = _documented_signature(name, sections[name])
    assert _normalised(documented) == _normalised(inspect.signature(spec_function)), (
        f"docs/hooks.md documents {name}{documented}, "
        f"hookspecs.py declares {name}{inspect.signature(spec_function)}"
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_plugin_author_is_told_whether_each_hook_is_firstresult(name: str) -> None:
    firstresult = HOOKS[name].spec.opts.get("firstresult", False)  # type: ignore[union-attr]
    match = re.search(r"\*\*firstresult:\*\*\s*(yes|no)", _doc_sections()[name])
    assert match, f"docs/hooks.md section {name} does not say **firstresult:** yes or no"
    assert match.group(1) == ("yes" if firstresult else "no")


def test_docs_describe_no_hook_that_does_not_exist() -> None:
    stale = set(_doc_sections()) - set(HOOKS)
    assert not stale, f"docs/hooks.md documents hooks that hookspecs.py lacks: {sorted(stale)}"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_each_hookspec_documents_itself(name: str) -> None:
    spec = HOOKS[name].spec
    assert spec is not None
    doc = inspect.getdoc(spec.function)
    assert doc, f"hookspec {name} has no docstring"
    for param in inspect.signature(spec.function).parameters:
        assert f":param {param}:" in doc, f"hookspec {name} does not document :param {param}:"
    if spec.opts.get("firstresult"):
        assert FIRSTRESULT_SENTENCE in " ".join(doc.split()), (
            f"firstresult hookspec {name} lacks the sentence {FIRSTRESULT_SENTENCE!r}"
        )
