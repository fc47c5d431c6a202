"""The project's import graph has no cycle, the command modules never import the CLI, and the lower layers never
import the workflows or the commands.

Static: every module's source is parsed, nothing is imported. Imports anywhere in a module count (top level
and inside functions), except under ``if TYPE_CHECKING:``; only edges between project modules are kept.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import pytest

PACKAGES = ("wsi_mamba", "wsi_mamba_scan")


def project_modules() -> dict[str, tuple[Path, bool]]:
    """Every module of :data:`PACKAGES`: name -> (source file, is a package)."""
    found: dict[str, tuple[Path, bool]] = {}

    def walk(name: str, folder: Path) -> None:
        found[name] = (folder / "__init__.py", True)
        for info in pkgutil.iter_modules([str(folder)]):
            child = f"{name}.{info.name}"
            if info.ispkg:
                walk(child, folder / info.name)
            else:
                found[child] = (folder / f"{info.name}.py", False)

    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, f"{package} is not installed as a package"
        walk(package, Path(next(iter(spec.submodule_search_locations))))
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (never executed)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def imports_of(name: str, source: Path, is_package: bool, modules: set[str]) -> set[str]:
    """Project modules that ``name`` imports: ``from pkg import sub`` edges to ``pkg.sub`` when that is a
    module (to ``pkg``'s ``__init__`` otherwise); relative imports are resolved against ``name``'s package."""
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_nodes(ast.parse(source.read_text(encoding="utf-8"), str(source))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
    return {target for target in targets if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, is_pkg, set(modules)) for name, (path, is_pkg) in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_shortest_cycle(graph, component, min(component)) for component in components]


def _shortest_cycle(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """Breadth-first inside ``component`` from ``start`` back to itself: ``[start, ..., start]``."""
    parents: dict[str, str] = {}
    queue = deque([start])
    while start not in parents:
        node = queue.popleft()
        for nxt in sorted(graph[node] & component):
            if nxt not in parents:
                parents[nxt] = node
                queue.append(nxt)
    path = [start]
    while (prev := parents[path[-1]]) != start:
        path.append(prev)
    return [start, *reversed(path[1:]), start]


def test_find_cycles_reports_a_closed_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from . import b, helper\nfrom ..c import x\ndef f():\n    import p.d\n")
    modules = {"p", "p.q", "p.q.a", "p.q.b", "p.c", "p.d"}
    assert imports_of("p.q.a", source, False, modules) == {"p.q.b", "p.q", "p.c", "p.d"}


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "wsi_mamba.cli" in graph and "wsi_mamba_scan.interface" in graph
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("forbidden", ["wsi_mamba.cli", "wsi_mamba.__main__"])
def test_commands_never_import_the_cli(forbidden: str) -> None:
    graph = import_graph()
    commands = [name for name in graph if name == "wsi_mamba.commands" or name.startswith("wsi_mamba.commands.")]
    assert len(commands) > 1
    offenders = [name for name in commands if forbidden in graph[name]]
    assert not offenders, f"{', '.join(offenders)} import {forbidden}"


def test_slide_reading_never_imports_the_generators() -> None:
    """``wsi_mamba.synth`` writes slides and may use ``wsi_mamba.slide``; the reader never needs the writer."""
    graph = import_graph()
    slide = [name for name in graph if name == "wsi_mamba.slide" or name.startswith("wsi_mamba.slide.")]
    offenders = {name: sorted(t for t in graph[name] if t.startswith("wsi_mamba.synth")) for name in slide}
    assert len(slide) > 1 and not any(offenders.values()), offenders


LOWER_LAYERS = ("slide", "models", "data", "evaluation", "synth", "outputs", "features")
"""Packages of ``wsi_mamba`` below the workflows (with the kernels, ``wsi_mamba_scan``): they never import up."""
UPPER_LAYERS = ("wsi_mamba.workflows", "wsi_mamba.commands", "wsi_mamba.cli", "wsi_mamba.__main__")


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def upward_imports(graph: dict[str, set[str]], lower: Sequence[str], upper: Sequence[str]) -> dict[str, list[str]]:
    """Module of a ``lower`` package -> the modules of ``upper`` packages it imports (only those that do)."""
    found = {}
    for name, targets in graph.items():
        if any(_inside(name, package) for package in lower):
            up = sorted(t for t in targets if any(_inside(t, package) for package in upper))
            if up:
                found[name] = up
    return found


def test_upward_imports_are_found() -> None:
    graph = {"p.low.a": {"p.low.b", "p.top.x"}, "p.low.b": set(), "p.lowish": {"p.top"}, "p.top.x": {"p.low.a"}}
    assert upward_imports(graph, ["p.low"], ["p.top"]) == {"p.low.a": ["p.top.x"]}
    assert upward_imports(graph, ["p.low", "p.lowish"], ["p.top"]) == {"p.low.a": ["p.top.x"], "p.lowish": ["p.top"]}


def test_lower_layers_never_import_workflows_or_commands() -> None:
    """slide, models, data, evaluation, synth, outputs, features and the kernels stand below the workflows and the
    commands: nothing they import (at run time) comes from those."""
    graph = import_graph()
    lower = [f"wsi_mamba.{layer}" for layer in LOWER_LAYERS] + ["wsi_mamba_scan"]
    missing = [package for package in lower if package not in graph]
    assert not missing, f"layers not found (renamed? update LOWER_LAYERS): {missing}"
    offenders = upward_imports(graph, lower, UPPER_LAYERS)
    assert not offenders, "upward imports:\n" + "\n".join(f"{k} -> {', '.join(v)}" for k, v in offenders.items())
