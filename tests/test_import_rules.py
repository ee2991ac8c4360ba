"""The plugin boundary, both ways, from the import graph of every module in pyllm/ and plugins/.

Each file's syntax tree is walked for every import (at module level, in functions, under
TYPE_CHECKING alike), relative imports are resolved against the file's package, and
``from package import name`` counts as importing the submodule when ``name`` is one. Then:

- core (``pyllm``) imports no plugin package;
- a plugin imports of pyllm only ``pyllm.plugins.PUBLIC_MODULES``, except the internals a
  built-in plugin is allowed below, each with its reason (and a stale allowance fails too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyllm.plugins import PUBLIC_MODULES

ROOT = Path(__file__).resolve().parents[1]

# Built-in plugin -> pyllm modules beyond the public ones it may import, and why.
BUILTIN_INTERNALS: dict[str, dict[str, str]] = {
    "pyllm_samplers": {
        "pyllm.sampler": "the steps share the penalty window and seed key of the fused sampler",
        "pyllm.ops.sampling": "the steps draw from the fused kernel's random stream, bit for bit",
        "pyllm.constraints.kinds": "the plugin registers pyllm's built-in constraint kinds",
    },
    "pyllm_tokenizers": {
        "pyllm.tokenizer": "unrepresentable text is reported once per request by the front door",
    },
    "pyllm_sources": {
        "pyllm.weights.sources": "the plugin registers pyllm's own cache and download sources",
    },
    "pyllm_tasks": {
        "pyllm.chat": "prompts fall back when a chat template refuses a system turn",
        "pyllm.scoring": "classification scores label continuations after one prefill; "
                         "extractive QA scores candidate spans the same way",
        "pyllm.engine.frontend": "batched greedy generation through the engine",
        "pyllm.engine.llm_engine": "one engine per model keeps the task prompts' prefix cache",
    },
}


def module_files() -> Iterator[tuple[str, Path, bool]]:
    """(module name, file, is a package __init__) for pyllm/ and every package in plugins/."""
    roots = [ROOT] + [p.parent for p in ROOT.glob("plugins/**/__init__.py")
                      if not (p.parent.parent / "__init__.py").exists()]
    for base in roots:
        top = [ROOT / "pyllm"] if base == ROOT else [base]
        for package in top:
            for path in sorted(package.rglob("*.py")):
                rel = path.relative_to(package.parent).with_suffix("")
                parts = list(rel.parts)
                is_init = parts[-1] == "__init__"
                if is_init:
                    parts.pop()
                yield ".".join(parts), path, is_init


MODULES = {name: (path, is_init) for name, path, is_init in module_files()}
PLUGIN_PACKAGES = {name.split(".")[0] for name in MODULES if not name.startswith("pyllm.")
                   and name != "pyllm"}


def resolve(module: str, is_init: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_init else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """Every module `module` imports (the deepest known module each import names)."""
    path, is_init = MODULES[module]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, is_init, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return found


def owned(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_graph_sees_both_sides() -> None:
    assert {"pyllm", "pyllm.plugins", "pyllm.cli.main"} <= set(MODULES)
    assert {"pyllm_tasks", "pyllm_samplers", "pyllm_tokenizers", "pyllm_sources",
            "pyllm_example"} <= PLUGIN_PACKAGES
    # relative and from-imports resolve to modules
    assert "pyllm.hookspecs" in imports_of("pyllm.plugins")
    assert "pyllm_tasks.prompts" in imports_of("pyllm_tasks.classify")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if owned(m, "pyllm")))
def test_core_imports_no_plugin(module: str) -> None:
    bad = sorted(i for i in imports_of(module) if i.split(".")[0] in PLUGIN_PACKAGES)
    assert not bad, f"{module} imports the plugin module(s) {bad}; core must not"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not owned(m, "pyllm")))
def test_plugins_import_only_public_pyllm(module: str) -> None:
    allowed = set(PUBLIC_MODULES) | set(BUILTIN_INTERNALS.get(module.split(".")[0], {}))
    bad = sorted(i for i in imports_of(module) if owned(i, "pyllm") and i not in allowed)
    assert not bad, (f"{module} imports {bad}, which are not public "
                     f"(pyllm.plugins.PUBLIC_MODULES: {', '.join(PUBLIC_MODULES)})")


def test_public_modules_exist() -> None:
    assert set(PUBLIC_MODULES) <= set(MODULES)


@pytest.mark.parametrize("plugin", sorted(BUILTIN_INTERNALS))
def test_every_allowed_internal_is_still_used(plugin: str) -> None:
    used = set().union(*(imports_of(m) for m in MODULES if owned(m, plugin)))
    assert set(BUILTIN_INTERNALS[plugin]) <= used, "drop the allowance no module needs"
