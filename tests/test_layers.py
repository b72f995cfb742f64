"""The package's import graph, drawn from the code itself (every `import` statement,
function-level ones included): no cycles, and no import from a lower layer to a higher
one. The layers are the folders of pipeline/ (see pipeline/__init__.py):

    workflow > stages (pipeline/*.py) > analysis > treesearch > strategies, prm > engine, tasks > core

A module may import from its own folder or from a lower layer; two folders of the same
layer never import each other, and neither do two stages."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "pipeline"
RANK = {"core": 0, "tasks": 1, "engine": 1, "prm": 2, "strategies": 2, "treesearch": 3, "analysis": 4,
        "stages": 5, "workflow": 6}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The pipeline modules `path` imports (`from pipeline.a import b` is pipeline.a.b
    when b is a module, else pipeline.a)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "pipeline":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known) - {m} for m, p in known.items()}


def layer(module: str) -> tuple[str, str]:
    """(layer, group): a folder is one group; each stage module is its own group."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package", module
    if len(parts) == 2 and not (PACKAGE / parts[1]).is_dir():
        return "stages", module
    return parts[1], parts[1]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for m in modules():
        name, _ = layer(m)
        assert name == "package" or name in RANK, f"{m}: folder {name!r} is not a layer of tests/test_layers.py"


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_imports_go_down_the_layers():
    wrong = []
    for src, targets in graph().items():
        (src_layer, src_group) = layer(src)
        for dst in targets:
            dst_layer, dst_group = layer(dst)
            if "package" in (src_layer, dst_layer) or src_group == dst_group:
                continue
            if RANK[src_layer] <= RANK[dst_layer]:
                wrong.append(f"{src} ({src_layer}) imports {dst} ({dst_layer})")
    assert wrong == []


def test_the_checks_can_fail():
    """The cycle finder and the layer rule see a planted cycle and an upward import."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("pipeline.core.io") == ("core", "core")
    assert layer("pipeline.score") == ("stages", "pipeline.score")
    assert RANK[layer("pipeline.core.io")[0]] < RANK[layer("pipeline.analysis.stats")[0]]
    g = graph()
    assert "pipeline.analysis.stats" in g["pipeline.aggregate"]  # the graph sees real imports
