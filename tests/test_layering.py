"""The layering ARCHITECTURE.md states is the code's: read the import graph (ast, every import
counted: inside functions and under ``TYPE_CHECKING`` too) and hold it against the ``layers``
block of ARCHITECTURE.md. Fails on a cycle, on an arrow that runs up a layer, on a module the
diagram does not place, and on a production module importing ``fuse_repro.testing``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "fuse_repro"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.AST, known: set[str]) -> list[str]:
    """The project modules an import statement loads (``from pkg import sub`` is ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                 for a in node.names]
    else:
        return []
    return [n for n in names if n in known]


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source."""
    found = modules()
    known = set(found)
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {m for node in ast.walk(tree) for m in imported(node, known)} - {name}
    return graph


def unit(module: str) -> str:
    """What the diagram places: a subpackage (``config/``) or a top-level module (``app``)."""
    parts = module.split(".")[1:]
    if not parts:
        return "fuse_repro"
    return parts[0] + "/" if (PACKAGE / parts[0]).is_dir() else parts[0]


def stated_layers(text: str) -> dict[str, int]:
    """unit -> layer number (1 = top) from ARCHITECTURE.md's ```layers block."""
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md has no ```layers block"
    layers: dict[str, int] = {}
    for line in block.group(1).splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        number, _, rest = line.partition(" ")
        units = rest.partition(":")[2]
        for name in (u.strip() for u in units.split(",")):
            assert name not in layers, f"{name} is placed twice in the layers block"
            layers[name] = int(number)
    return layers


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def upward_arrows(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return sorted(f"{a} -> {b} (layer {layers[unit(a)]} imports layer {layers[unit(b)]})"
                  for a, targets in graph.items() for b in targets
                  if unit(a) != unit(b) and layers[unit(b)] < layers[unit(a)])


# --------------------------------------------------------------------------------------------


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()) or [])}"


def test_every_arrow_points_down_the_stated_layers():
    layers = stated_layers((REPO / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    graph = import_graph()
    units = {unit(m) for m in graph} - {"fuse_repro"}
    assert units <= set(layers), f"not placed in ARCHITECTURE.md's layers: {sorted(units - set(layers))}"
    assert set(layers) <= units, f"placed but not in the code: {sorted(set(layers) - units)}"
    assert upward_arrows(graph, layers) == []


def test_no_production_module_imports_testing():
    graph = import_graph()
    users = sorted(m for m, targets in graph.items() if unit(m) != "testing/"
                   and any(unit(t) == "testing/" for t in targets))
    assert users == []


# The checks themselves can fail: each is run on a graph with the fault planted.


def test_a_planted_cycle_is_found():
    graph = {"fuse_repro.a": {"fuse_repro.b"}, "fuse_repro.b": {"fuse_repro.c"},
             "fuse_repro.c": {"fuse_repro.a"}, "fuse_repro.d": set()}
    assert find_cycle(graph) == ["fuse_repro.a", "fuse_repro.b", "fuse_repro.c", "fuse_repro.a"]


def test_a_planted_upward_arrow_is_found():
    layers = stated_layers("```layers\n1 top: app\n2 base: records, errors  # low\n```\n")
    graph = {"fuse_repro.records": {"fuse_repro.app"}, "fuse_repro.app": {"fuse_repro.errors"}}
    assert upward_arrows(graph, layers) == [
        "fuse_repro.records -> fuse_repro.app (layer 2 imports layer 1)"]


def test_typing_only_and_lazy_imports_count(tmp_path):
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fuse_repro.app import x\n"
              "def f():\n    from fuse_repro import records\n")
    tree = ast.parse(source)
    known = {"fuse_repro.app", "fuse_repro.records", "fuse_repro"}
    assert sorted(m for node in ast.walk(tree) for m in imported(node, known)) == [
        "fuse_repro.app", "fuse_repro.records"]


@pytest.mark.parametrize("name", ["app", "stages/", "config/", "records", "errors"])
def test_the_diagram_places_the_main_units(name):
    assert name in stated_layers((REPO / "ARCHITECTURE.md").read_text(encoding="utf-8"))
