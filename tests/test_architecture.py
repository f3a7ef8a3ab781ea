"""The import structure stays layered: no import points up the floors of the
library and no modules import each other in a circle.

Every ``import`` / ``from ... import`` in qfair/ counts, wherever it stands (at
module level, inside a function, under ``if TYPE_CHECKING``), and so does
``importlib.import_module("qfair...")`` / ``__import__("qfair...")`` with a
literal name. Not counted: a module importing a package it lives in (Python
imports that package first anyway, so the edge exists whatever the code says),
and the ``"module:function"`` references that registries resolve by name at run
time (``DumpKind.analysis``, ``DumpKind.producer``, ...): that is how a lower
floor calls code a higher floor registered with it, without importing it.

A *unit* is a top-level module (``qfair.lock``) or a subpackage
(``qfair.dump``, with everything under it). :data:`FLOORS` places every unit
on a floor; a unit may import only units on lower floors (two units on the
same floor do not import each other). A new module or subpackage goes on a
floor here, with the reason in its comment.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# floor -> units; each floor imports only from the floors below it
FLOOR_TABLE: tuple[tuple[str, ...], ...] = (
    # 0 - the ground: the C++ core's extension module and the error base; they import nothing of qfair
    ("qfair._core", "qfair.errors"),
    # 1 - file helpers (atomic writes, sha256, path checks, O_DIRECT reads), the plugin loader and qfair's
    #     own quantizers (torch and the error base only)
    ("qfair.fsutil", "qfair.directio", "qfair.plugins", "qfair.compress"),
    # 2 - shared meaning and plumbing used by every layer: threads, .npy rows, locks, provenance,
    #     the loaded extension, the stage timer, the task registry (tasks, prompts, probe split,
    #     calibration texts, fairness probe pairs) and the pruners (on the quantizers' solver)
    ("qfair", "qfair._native", "qfair.threads", "qfair.npyio", "qfair.lock",
     "qfair.provenance", "qfair.stages", "qfair.tasks", "qfair.pruning"),
    # 3 - the numeric core (divergences, statistics, calibration bins), the environment report, and the
    #     models (loading and quantization backends)
    ("qfair.core", "qfair.stats", "qfair.calibration", "qfair.doctor", "qfair.models"),
    # 4 - what is computed from a model or from scores: choice scoring, the example metrics and task kinds,
    #     llama.cpp's file format
    ("qfair.scoring", "qfair.metrics", "qfair.llamacpp"),
    # 5 - the dump: its format, writer, reader and producers
    ("qfair.dump",),
    # 6 - what reads dumps: the analysis, the importers of other tools' results, the sensitivity scan
    ("qfair.analyze", "qfair.importers", "qfair.sensitivity"),
    # 7 - the generation dump kind (its producer and its analysis, built on the analysis) and the report
    ("qfair.generation", "qfair.report"),
    # 8 - orchestration of whole runs: studies, the demo and the debiasing evaluation
    ("qfair.study", "qfair.demo", "qfair.debias_eval"),
    # 9 - the command line: parses and prints
    ("qfair.cli",),
    # 10 - python -m qfair
    ("qfair.__main__",),
)
FLOORS: dict[str, int] = {unit: i for i, units in enumerate(FLOOR_TABLE) for unit in units}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of qfair under ``root``."""
    out: dict[str, Path] = {}
    for p in sorted((root / "qfair").rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    for p in (root / "qfair").glob("_core*"):  # the compiled extension (and its .pyi)
        out.setdefault("qfair._core", p)
    return out


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module an import name lands in: itself, or the nearest enclosing module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of everything ``module`` imports from qfair."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                yield f"{src}.{alias.name}", node.lineno
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value, node.lineno


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """module -> {imported qfair module: first line}, every import counted (see the module doc)."""
    modules = module_files(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        if path.suffix != ".py":
            continue
        edges: dict[str, int] = {}
        for name, line in _imported_names(module, path):
            if name.split(".")[0] != "qfair":
                continue
            target = _known(name, modules)
            if target is None or target == module or module.startswith(target + "."):
                continue  # itself, or a package it lives in
            edges.setdefault(target, line)
        graph[module] = edges
    return graph


def unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """Imports that do not point to a lower floor, and units the table does not place."""
    bad = []
    for module in sorted(graph):
        for target, line in sorted(graph[module].items()):
            a, b = unit(module), unit(target)
            if a == b:
                continue
            if a not in FLOORS or b not in FLOORS:
                bad.append(f"{module}:{line} -> {target}: {a if a not in FLOORS else b} is on no floor "
                           "of FLOOR_TABLE (place it there)")
            elif FLOORS[b] >= FLOORS[a]:
                bad.append(f"{module}:{line} -> {target}: floor {FLOORS[a]} ({a}) imports floor {FLOORS[b]} ({b})")
    return bad


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    group = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.append(w)
                        if w == v:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))
    return found


def _describe(group: list[str], graph: dict[str, dict[str, int]]) -> str:
    ties = [f"{a}:{graph[a][b]} -> {b}" for a in group for b in group if b in graph.get(a, {})]
    return " | ".join(ties)


# ---------------------------------------------------------------------------
# the structure of qfair
# ---------------------------------------------------------------------------

def test_no_import_points_up_the_floors():
    bad = upward_imports(import_graph())
    assert not bad, "imports that point up the floors (move the shared definition down, or pass a " \
                    "callable in from the caller):\n" + "\n".join(bad)


def test_no_import_circles():
    graph = import_graph()
    found = circles(graph)
    assert not found, "modules that import each other in a circle:\n" + \
        "\n".join(_describe(g, graph) for g in found)


def test_every_unit_is_on_exactly_one_floor():
    placed = [u for units in FLOOR_TABLE for u in units]
    assert len(placed) == len(set(placed)), "a unit is on two floors"
    units = {unit(m) for m in module_files(ROOT)}
    assert units <= set(FLOORS), f"units on no floor: {sorted(units - set(FLOORS))}"
    assert set(FLOORS) <= units, f"floors name units that do not exist: {sorted(set(FLOORS) - units)}"


# ---------------------------------------------------------------------------
# the checker itself, on small made-up trees
# ---------------------------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_checker_sees_imports_inside_functions_and_by_name(tmp_path):
    root = _tree(tmp_path, {
        "qfair/__init__.py": "",
        "qfair/lock.py": "def f():\n    from qfair.dump.writer import X\n",
        "qfair/tasks/__init__.py": "import importlib\nimportlib.import_module('qfair.report.html')\n",
        "qfair/dump/__init__.py": "from . import writer\n",
        "qfair/dump/writer.py": "from ..lock import f\n",
        "qfair/report/__init__.py": "",
        "qfair/report/html.py": "",
    })
    graph = import_graph(root)
    assert graph["qfair.lock"] == {"qfair.dump.writer": 2}
    assert graph["qfair.tasks"] == {"qfair.report.html": 2}
    assert graph["qfair.dump"] == {"qfair.dump.writer": 1}
    assert graph["qfair.dump.writer"] == {"qfair.lock": 1}
    bad = upward_imports(graph)
    assert any(b.startswith("qfair.lock:2 -> qfair.dump.writer: floor 2") for b in bad), bad
    assert any(b.startswith("qfair.tasks:2 -> qfair.report.html") for b in bad), bad
    assert circles(graph) == [["qfair.dump.writer", "qfair.lock"]]


def test_checker_ignores_the_package_a_module_lives_in(tmp_path):
    root = _tree(tmp_path, {
        "qfair/__init__.py": "",
        "qfair/dump/__init__.py": "def open_dump():\n    from qfair.dump.reader import R\n",
        "qfair/dump/reader.py": "from qfair.dump import DumpError\nfrom qfair import errors\n",
        "qfair/errors.py": "",
    })
    graph = import_graph(root)
    assert graph["qfair.dump.reader"] == {"qfair.errors": 2}
    assert circles(graph) == [] and upward_imports(graph) == []


@pytest.mark.parametrize("lower, higher", [("qfair.tasks", "qfair.dump"), ("qfair.dump", "qfair.analyze"),
                                           ("qfair.models", "qfair.sensitivity")])
def test_checker_refuses_an_upward_import(tmp_path, lower, higher):
    def path(mod: str) -> str:
        return mod.replace(".", "/") + "/__init__.py"

    root = _tree(tmp_path, {"qfair/__init__.py": "", path(higher): "",
                            path(lower): f"def f():\n    import {higher}\n"})
    assert upward_imports(import_graph(root)) == [
        f"{lower}:2 -> {higher}: floor {FLOORS[lower]} ({lower}) imports floor {FLOORS[higher]} ({higher})"]
