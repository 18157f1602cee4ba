"""The import graph of raysearch/ and trainables/ has no circle, counting the imports inside
functions too (issue 30), and the driver (raysearch/) reaches the worker (trainables/) only
through the modules docs/design.md allows.

`from package import module` is an edge to that module (what the statement uses), not to
the package's __init__; `import a.b` and `from a.b import name` are edges to a.b."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("raysearch", "trainables")
# What the driver imports from the worker (docs/design.md, "The driver and the worker"): the
# contract (result keys and names) and the one module of the worker's code it calls
# (trainables/entry.py: trial function, adapter registry, scoring, preflight's probes).
DRIVER_MAY_IMPORT = {"trainables.contract", "trainables.entry"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def import_graph() -> nx.DiGraph:
    known, graph = modules(), nx.DiGraph()
    for name, path in known.items():
        graph.add_node(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                           for alias in node.names]
            else:
                continue
            for target in targets:
                if target in known and target != name:
                    graph.add_edge(name, target, line=node.lineno)
    return graph


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert graph.number_of_nodes() > 50 and graph.number_of_edges() > 100  # the walk found the package
    circles = sorted(nx.simple_cycles(graph), key=len)
    assert not circles, "import circles (each module imports the next): " + "; ".join(
        " -> ".join([*c, c[0]]) for c in circles[:10])


def test_the_driver_reaches_the_worker_only_through_the_allowed_modules():
    graph = import_graph()
    reached = {(a, b) for a, b in graph.edges if a.startswith("raysearch") and b.startswith("trainables")}
    outside = sorted(f"{a} -> {b}" for a, b in reached if b not in DRIVER_MAY_IMPORT)
    assert not outside, outside
    assert ("raysearch.experiment.preflight", "trainables.contract") in reached  # the walk sees function-level imports


def test_a_circle_is_found(tmp_path, monkeypatch):
    """The check itself: a module importing back its importer inside a function is a circle."""
    for name, text in {"a.py": "import b\n", "b.py": "def f():\n    from a import x\n"}.items():
        (tmp_path / "pkg" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text.replace("import b", "import pkg.b").replace("from a", "from pkg.a"))
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGES", ("pkg",))
    assert list(nx.simple_cycles(import_graph())) in ([["pkg.a", "pkg.b"]], [["pkg.b", "pkg.a"]])
