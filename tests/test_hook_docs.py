"""Every hook in pyllm/hookspecs.py is documented in docs/plugins.md and exercised by a test.

The hooks are read from the module itself (whatever carries pluggy's spec marker), so a hook
added later is held to the same rule: a row in the hooks table of docs/plugins.md, and a test
plugin somewhere in tests/ that implements it (``def <hook>(`` in a test file).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from pyllm import hookspecs, plugins

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
MARKER = f"{hookspecs.PROJECT_NAME}_spec"  # the attribute pluggy's HookspecMarker sets

HOOKS = sorted(name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
               if hasattr(obj, MARKER))


def hook_table_rows() -> set[str]:
    """The hook names in the first column of docs/plugins.md's table of hooks."""
    return set(re.findall(r"^\| `(register_\w+)` \|", DOC, flags=re.MULTILINE))


def test_the_hooks_are_found() -> None:
    assert {"register_tokenizers", "register_samplers", "register_tasks",
            "register_commands"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    assert hook in hook_table_rows(), f"add a row for `{hook}` to the hooks table of docs/plugins.md"
    assert inspect.getdoc(getattr(hookspecs, hook)), f"{hook} needs a docstring in hookspecs.py"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook: str) -> None:
    implemented = re.compile(rf"^\s*def {hook}\(", flags=re.MULTILINE)
    users = [p.name for p in ROOT.glob("tests/**/*.py")
             if p.name != Path(__file__).name and implemented.search(p.read_text(encoding="utf-8"))]
    assert users, f"no test implements {hook} (a plugin object with `def {hook}(...)`)"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_fills_a_registry(hook: str) -> None:
    assert hook in plugins.KINDS.values(), f"pyllm.plugins.KINDS has no registry for {hook}"


def test_no_documented_hook_is_gone() -> None:
    assert hook_table_rows() <= set(HOOKS), "docs/plugins.md lists a hook hookspecs.py lacks"
