"""The package's import structure: no cycles (function-local imports included), one seam to the publish side.

Read from the source with `ast`, so a function-local import that papers over a cycle counts too;
imports under `if TYPE_CHECKING:` are annotations only and do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parent.parent / "imagegraph"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every relative import outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in skip:
            base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
            for cand in [target, *(f"{target}.{n}" for n in names)]:
                if cand in mods and cand != name:
                    out.append((cand, names))
    return out


def _graph() -> tuple[nx.DiGraph, dict[str, list[tuple[str, list[str]]]]]:
    mods = _modules()
    g = nx.DiGraph()
    edges = {}
    for name, path in mods.items():
        edges[name] = _imports(name, path, mods)
        g.add_node(name)
        g.add_edges_from((name, t) for t, _ in edges[name])
    return g, edges


def test_no_import_cycles() -> None:
    g, _ = _graph()
    assert list(nx.simple_cycles(g)) == []


def test_the_planner_reaches_publish_backends_only_through_the_inventory() -> None:
    _, edges = _graph()
    for core in (
        "imagegraph.plan",
        "imagegraph.key",
        "imagegraph.project",
        "imagegraph.spec",
        "imagegraph.scheduler",
    ):
        assert not [t for t, _ in edges[core] if t.startswith("imagegraph.publish")], core


def test_no_module_imports_another_modules_private_names() -> None:
    _, edges = _graph()
    private = [
        (name, target, n)
        for name, imports in edges.items()
        for target, names in imports
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert private == []


def test_no_module_reads_private_names_through_an_imported_module() -> None:
    """`from .publish import artifacts as a` then `a._File`: the same breach as importing `_File`."""
    mods = _modules()
    found = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        aliases: dict[str, str] = {}  # local name -> imagegraph module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    if f"{target}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{target}.{a.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and aliases[node.value.id] != name
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append((name, aliases[node.value.id], node.attr, node.lineno))
    assert found == []
