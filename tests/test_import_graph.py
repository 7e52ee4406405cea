"""The package's import graph has no cycle, and its layers point one way (docs/ARCHITECTURE.md).

Every ``import`` and ``from ... import`` of a ``loadgen`` module, at any depth of a module (function-level
imports count too: a cycle through a lazy import is still a cycle in the design).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "loadgen"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name in modules and name != mod and not mod.startswith(name + "."):
                    edges[mod].add(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_loadgen():
    edges = graph()
    assert len(edges) > 90
    assert cycles(edges) == []


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_point_down():
    """The pure and shared layers never import a front end or a driver; the drivers never import each other."""
    front_and_drivers = {"runner", "locust", "sweep", "search", "run_cli", "report_cli", "cli"}
    below = {"core", "codecs", "scenario", "level", "telemetry", "errors"}
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if layer(mod) in below and layer(dep) in front_and_drivers:
                bad.append(f"{mod} -> {dep}")
            if {layer(mod), layer(dep)} == {"runner", "locust"}:
                bad.append(f"{mod} -> {dep}")
    assert bad == []
