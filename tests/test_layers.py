"""The import graph of the project's own packages: one direction, no loops.

Every import counts, including those inside functions and `importlib.import_module("...")` calls with a literal
name: a lazy import is still a dependency. The layers, top to bottom, are `LAYERS`; a module may import its own
layer and any layer below it, and the graph of modules must have no cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "rewards", "data_builder")
# Top to bottom: the command line drives the orchestration, which evaluates with inference, which loads what the
# training stages save; stages use the rewards, rewards read video through the data builder, and everything
# stands on the core (contracts, config, prompt, sampler, io).
LAYERS = (
    "pipeline.cli",
    "pipeline.orchestration",
    "pipeline.evaluation",
    "pipeline.inference",
    "stages",
    "rewards",
    "data_builder",
    "pipeline.core",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name a file imports, at any depth of its syntax tree."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for name in imported_names(path, module):
            while name and name not in modules:  # `from pkg.mod import func` -> pkg.mod
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):  # a package's own __init__ is fine
                graph[module].add(name)
    return graph


def layer_of(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    return None


def test_every_module_belongs_to_a_layer() -> None:
    outside = [m for m in project_modules() if layer_of(m) is None and m not in PACKAGES]
    assert outside == [], f"modules outside every layer: {outside}"


def test_no_upward_import() -> None:
    upward = [
        f"{src} imports {dst}"
        for src, dsts in sorted(import_graph().items())
        for dst in sorted(dsts)
        if layer_of(src) is not None and layer_of(dst) is not None and layer_of(dst) < layer_of(src)
    ]
    assert upward == [], "imports against the layer order:\n" + "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_loop() -> None:
    assert find_cycles(import_graph()) == []


def test_the_checker_sees_function_level_and_importlib_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import importlib\n"
        "def f():\n"
        "    from pipeline.core import io\n"
        "    importlib.import_module('stages.sft')\n"
    )
    assert {"pipeline.core", "pipeline.core.io", "stages.sft"} <= imported_names(src, "pipeline.core.x")
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
