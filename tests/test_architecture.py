"""The layout is the architecture: every import points down a layer, no module imports in a
cycle, the maths never sees Ray, and no module grows past what one job needs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedsweep"
ALLOWED = {  # layer -> the layers its modules may import
    "core": {"core"},
    "algorithms": {"core", "algorithms"},
    "task": {"core", "task"},
    "federation": {"core", "algorithms", "task", "federation"},
    "experiment": {"core", "algorithms", "task", "federation", "experiment"},
    "sweep": {"core", "algorithms", "task", "federation", "experiment", "sweep"},
}
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (lazy imports are arrows too)."""
    found, tree = set(), ast.parse(path.read_text())
    typing_only = {  # ``if TYPE_CHECKING:`` imports are annotations, not arrows
        id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_every_import_points_down_a_layer():
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        if (layer := _layer(module)) is not None
        for target in targets
        if _layer(target) is not None and _layer(target) not in ALLOWED[layer]
    ]
    assert not upward, upward


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            # a package and the modules its __init__ re-exports are one name, not a cycle
            if len(component) > 1 and not all(c == min(component) or c.startswith(min(component) + ".") for c in component):
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


@pytest.mark.parametrize("layer", ["core", "algorithms", "task"])
def test_the_maths_never_imports_ray(layer):
    for name, path in _modules().items():
        if _layer(name) == layer:
            assert not any(m == "ray" or m.startswith("ray.") for m in _imports(path)), name


def test_modules_stay_small():
    big = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, big
