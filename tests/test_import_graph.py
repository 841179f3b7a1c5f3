"""The packages' imports form no cycle (DESIGN.md: "The package's imports form no cycle").

Every module of ``sdm`` and ``flows`` is read with ``ast`` (nothing is imported). An edge A -> B is
any ``import`` / ``from ... import`` in A of a module B of these packages:

- at module level AND inside functions, methods and classes (a function-level import is a cycle
  deferred to call time, not a cycle removed); also inside ``try`` / ``if`` blocks;
- except inside ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): those never run (their
  ``else:`` branch does, and counts);
- relative imports are resolved against A's package;
- ``from P import name`` is an edge to the submodule ``P.name`` when that is a module of the
  package, else to ``P`` itself; ``import P.Q.R`` is an edge to ``P.Q.R``.

Packages: a package node is its ``__init__.py``. An edge to a package (``from sdm.config import
Config``) is an edge to its ``__init__``, which has edges to whatever it re-exports. Importing a
submodule ``P.Q`` also runs ``P/__init__.py`` first, but that implied edge is NOT counted: a
re-exporting ``__init__`` would otherwise form a cycle with every submodule that imports a
sibling, while Python resolves those without ever needing the half-initialised package's names.
A cycle is a strongly connected component of more than one module (or a module importing itself).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sdm", "flows")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def package_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under each package folder of ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in or under ``nodes`` that can run (skips ``if TYPE_CHECKING:`` bodies)."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _runtime_imports(node.orelse)
        else:
            yield from _runtime_imports(ast.iter_child_nodes(node))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` if it is one of the modules, else its longest prefix that is (None: not ours)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def module_edges(name: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """The package-internal import edges of one module (see the module docstring for the rules)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    edges = []
    for node in _runtime_imports(ast.parse(path.read_text(), str(path)).body):
        targets: list[str | None] = []
        if isinstance(node, ast.Import):
            targets = [_known(alias.name, modules) for alias in node.names]
        else:
            if node.level:  # level 1 is A's own package, each further dot one package up
                base_parts = here[: len(here) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else _known(base, modules))
        # A package's __init__ naming its own package (``from sdm.x import y`` inside sdm/x/__init__.py,
        # y not a submodule) reads its own names: not an edge.
        edges += [Edge(name, t, node.lineno) for t in targets if t is not None and not (t == name and is_package)]
    return edges


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, list[Edge]]:
    """Module -> its outgoing package-internal edges."""
    modules = package_modules(root, packages)
    return {name: module_edges(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan, iterative), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    succ = {v: sorted({e.target for e in edges}) for v, edges in graph.items()}
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            recurse = False
            for j in range(i, len(succ[v])):
                w = succ[v][j]
                if w not in index:
                    work += [(v, j + 1), (w, 0)]
                    recurse = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if recurse:
                continue
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1 or v in succ[v]:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return sorted(found)


def describe(graph: dict[str, list[Edge]], component: list[str]) -> str:
    """One cycle, with the import lines that tie it."""
    members = set(component)
    ties = sorted({(e.source, e.target, e.line) for v in component for e in graph[v] if e.target in members})
    return " <-> ".join(component) + "\n" + "\n".join(f"    {s} -> {t} (line {line})" for s, t, line in ties)


def test_sdm_and_flows_have_no_import_cycle() -> None:
    graph = import_graph(REPO, PACKAGES)
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100, "the walk found too little: wrong root?"
    found = cycles(graph)
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(describe(graph, c) for c in found)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_cycles_and_ignores_type_checking(tmp_path: Path) -> None:
    """The checker itself, on a package written here: so the real test cannot pass by finding nothing."""
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.sub import thing\n",
        # A cycle through a function-level import, one side via `from pkg import a` (a submodule).
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from pkg.a import x\n    return x\n",
        # A cycle of relative imports, one inside a method; `from . import d` names the submodule.
        "pkg/c.py": "from . import d\n",
        "pkg/d.py": "class K:\n    def m(self):\n        from .c import y\n        return y\n",
        # Only for type checkers: no cycle (but the else branch runs, and counts: e -> g).
        "pkg/e.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.f import F\n"
                     "else:\n    import pkg.g\n"),
        "pkg/f.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg import e\nfrom pkg.g import G\n",
        "pkg/g.py": "G = 1\n",
        # A package __init__ re-exporting its submodule, which imports a sibling: no cycle by the rules.
        "pkg/sub/__init__.py": "from pkg.sub.inner import thing\n",
        "pkg/sub/inner.py": "from pkg.sub.other import value\nthing = value\n",
        "pkg/sub/other.py": "import os\nvalue = os.sep\n",
        # An edge to a package goes to its __init__: other2 -> pkg.sub2 -> inner2 -> other2 is a cycle.
        "pkg/sub2/__init__.py": "from .inner2 import z\n",
        "pkg/sub2/inner2.py": "from ..sub2 import other2\nz = 1\n",
        "pkg/sub2/other2.py": "from pkg.sub2 import z\n",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert {e.target for e in graph["pkg.e"]} == {"pkg.g"}
    assert {e.target for e in graph["pkg.f"]} == {"pkg.g"}
    assert {e.target for e in graph["pkg.a"]} == {"pkg.b"}
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"], ["pkg.sub2", "pkg.sub2.inner2",
                                                                       "pkg.sub2.other2"]]
    assert "pkg.b -> pkg.a (line 2)" in describe(graph, ["pkg.a", "pkg.b"])
