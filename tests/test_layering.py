"""The package's layers, read from the source with `ast` (imports at any depth, inside functions
too, relative ones resolved; nothing is imported to check them): lmtt_widget's modules import
each other without cycles, and the analysis core imports nothing of the widget."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "lmtt_widget"
CORE = ("architectures", "attention", "contributions", "graph", "models", "run", "tracing", "vocab", "remote",
        "errors", "progress", "interventions", "saved", "many", "generation", "aggregate", "effects",
        "faithfulness")
NOT_IN_CORE = ("serialize", "export", "__main__")  # and every widget* module
NOT_IN_CORE_EXTERNAL = ("anywidget", "ipywidgets", "traitlets")


def modules() -> dict[str, Path]:
    """lmtt_widget's modules by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> list[str]:
    """The dotted names a module imports (for `from x import y`: x.y, which may be a module or a name in x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph() -> tuple[nx.DiGraph, dict[str, set[str]]]:
    """(lmtt_widget's modules, an edge where one imports another; each module's external top-level imports)."""
    known = modules()
    graph, external = nx.DiGraph(), {name: set() for name in known}
    graph.add_nodes_from(known)
    for name, path in known.items():
        for imported in imports(name, path):
            parts = imported.split(".")
            # the longest prefix that is one of our modules: from .x import y is x.y if y is a module, else x
            inside = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in known), None)
            if inside is not None and inside != name:
                graph.add_edge(name, inside)
            elif inside is None:
                external[name].add(parts[0])
    return graph, external


def in_core(name: str) -> bool:
    return any(name == f"lmtt_widget.{core}" or name.startswith(f"lmtt_widget.{core}.") for core in CORE)


def widget_side(name: str) -> bool:
    first = name.split(".")[1] if "." in name else ""
    return first.startswith("widget") or first in NOT_IN_CORE


def test_no_import_cycles():
    graph, _ = import_graph()
    assert graph.number_of_nodes() > 10 and graph.has_edge("lmtt_widget.run", "lmtt_widget.graph")  # it reads imports
    cycles = sorted(nx.simple_cycles(graph), key=len)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle + cycle[:1]) for cycle in cycles)


def test_the_analysis_core_imports_nothing_of_the_widget():
    graph, external = import_graph()
    core = [name for name in graph if in_core(name)]
    assert len(core) >= len(CORE)
    problems = []
    for name in core:
        reached = {name} | nx.descendants(graph, name)
        problems += [f"{name} reaches {other}: {' -> '.join(nx.shortest_path(graph, name, other))}"
                     for other in sorted(reached) if widget_side(other)]
        problems += [f"{name} reaches {other}, which imports {package}" for other in sorted(reached)
                     for package in sorted(external[other] & set(NOT_IN_CORE_EXTERNAL))]
    assert not problems, "\n".join(problems)
