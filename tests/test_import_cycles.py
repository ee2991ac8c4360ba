"""No import cycles in pyllm/: the graph of module-level imports is a DAG.

An edge A -> B means that importing A runs B's import first: an import statement in A's module
body, also inside `if`/`try`/`with` blocks and class bodies, but not inside functions (those run
later, on call) nor under `if TYPE_CHECKING:` (never run). Relative imports are resolved against
the file's package; ``from package import name`` is an edge to the submodule when ``name`` is
one, else to the package. A cycle means some module sees a half-initialized other one, and that
the layers (docs/architecture.md, "Layers") do not stack.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyllm"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package __init__) for every module of pyllm/."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        if is_init:
            parts.pop()
        out[".".join(parts)] = (path, is_init)
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_at_import(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of `body` that run when the module is imported (recursively)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _run_at_import(node.body)
            yield from _run_at_import(node.orelse)
        elif isinstance(node, (ast.Try, ast.TryStar)):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _run_at_import(block)
            for handler in node.handlers:
                yield from _run_at_import(handler.body)
        elif isinstance(node, (ast.With, ast.For, ast.While, ast.ClassDef)):
            yield from _run_at_import(node.body)


def _known(name: str) -> str | None:
    """The deepest module of pyllm/ that `name` names (None outside pyllm)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def module_imports(module: str) -> set[str]:
    """The pyllm modules `module` imports at import time."""
    path, is_init = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str | None] = set()
    for node in _run_at_import(tree.body):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_init else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(_known(f"{source}.{alias.name}") or _known(source))
    found.discard(None)
    found.discard(module)
    return {m for m in found if m is not None}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_pyllm_has_no_import_cycle():
    graph = {module: module_imports(module) for module in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_model_does_not_import_its_runtime():
    """pyllm/model/gpt.py is the model: the runtime layer wraps it, never the other way."""
    assert module_imports("pyllm.model.gpt").isdisjoint(
        {"pyllm.model.runtime", "pyllm.model.fast", "pyllm.model.cuda_graph"}
    )


def test_the_checker_sees_imports_that_run_and_skips_those_that_do_not(tmp_path):
    """The graph builder on a made-up package: which imports make edges, and a cycle found."""
    global MODULES
    pkg = tmp_path / "pyllm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from pyllm import b\n"
        "try:\n    from .sub import c\nexcept ImportError:\n    pass\n"
        "if TYPE_CHECKING:\n    from pyllm.sub.d import X\n"
        "def f():\n    import pyllm.sub.e\n"
    )
    (pkg / "b.py").write_text("import pyllm.sub.c as c\n")
    (pkg / "sub" / "c.py").write_text("class K:\n    from pyllm.a import f\n")
    for name in ("d", "e"):
        (pkg / "sub" / f"{name}.py").write_text("")
    saved = MODULES
    try:
        MODULES = {}
        for path in sorted(pkg.rglob("*.py")):
            parts = list(path.relative_to(tmp_path).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            MODULES[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
        assert module_imports("pyllm.a") == {"pyllm.b", "pyllm.sub.c"}
        graph = {m: module_imports(m) for m in MODULES}
        assert find_cycle(graph) == ["pyllm.a", "pyllm.b", "pyllm.sub.c", "pyllm.a"]
        graph["pyllm.sub.c"] = set()
        assert find_cycle(graph) is None
    finally:
        MODULES = saved


def test_the_model_layers_do_not_import_the_layers_above():
    """pyllm/model, pyllm/ops and pyllm/weights sit below the engine and the doors
    (docs/architecture.md, "Layers"): none of them imports those at import time."""
    above = ("pyllm.engine", "pyllm.server", "pyllm.cli", "pyllm.repl", "pyllm.api")
    below = ("pyllm.model", "pyllm.ops", "pyllm.weights")
    wrong = {
        m: sorted(i for i in module_imports(m) if i.startswith(above))
        for m in MODULES
        if m.startswith(below)
    }
    assert not {m: i for m, i in wrong.items() if i}
