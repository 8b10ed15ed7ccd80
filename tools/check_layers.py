"""The import contract of ``mlsafety``: which floor may import which, and no import cycles.

Run by ``make lint``; ``python tools/check_layers.py [SRC]`` (default: ``src`` next to this file's folder).
Exit status 0 when the contract holds, 1 with one line per violation::

    src/mlsafety/core/_errors.py:3: imports mlsafety.audit: core imports only core [layer]

Floors, bottom to top (docs/architecture.md draws the same map)::

    core < metrics < zoo < pillars (robustness, monitoring, alignment, systemic) < audit < edges (cli, serve)

Rules:
- a module imports its own floor and the floors below it; the four pillars are side by side and
  import each other never (only through ``core``, ``metrics`` and ``zoo``);
- the edges (``cli``, the future ``serve``) import everything below them, never each other, and
  only through public API (a package's ``__init__``, never a ``_private`` module of another floor);
- the package root ``mlsafety/__init__.py`` is a facade over the library: it imports the library,
  never ``audit`` or an edge, and only ``audit`` and the edges import it;
- no import cycles between modules. Imports inside functions count (a deferred import hides a
  cycle, it does not remove it); imports under ``if TYPE_CHECKING:`` count for the floors but not
  for cycles, since they never run.

An import of a package (``from mlsafety.monitoring import ood``) is an import of the module it
names: the submodule when one exists, else the package's ``__init__``. Parent packages are not
counted as imported (``mlsafety.monitoring.ood.base`` importing ``mlsafety.monitoring.ood.knn``
is not a cycle through ``mlsafety/monitoring/ood/__init__.py``).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "mlsafety"

# Floor of each top-level module of the package. A new top-level module must be placed here.
LIBRARY = ("core", "metrics", "zoo", "robustness", "monitoring", "alignment", "systemic")
PILLARS = ("robustness", "monitoring", "alignment", "systemic")
EDGES = ("cli", "serve")
ROOT = "(root)"  # mlsafety/__init__.py

# What each floor may import (besides itself), and the rule's wording in a violation.
ALLOWED: dict[str, tuple[frozenset[str], str]] = {
    "core": (frozenset(), "core imports only core"),
    "metrics": (frozenset({"core"}), "metrics imports only core and metrics"),
    "zoo": (frozenset({"core", "metrics"}), "zoo imports only core, metrics and zoo (no pillar, nothing above)"),
    **{
        p: (
            frozenset({"core", "metrics", "zoo"}),
            f"pillar {p} imports only core, metrics, zoo and itself (pillars never import each other)",
        )
        for p in PILLARS
    },
    ROOT: (frozenset(LIBRARY), "the mlsafety facade imports only the library (never audit, cli or serve)"),
    "audit": (frozenset({*LIBRARY, ROOT}), "audit imports only the library (never cli or serve)"),
    # the runtime guard (issue 20) sits beside audit, above the pillars: it reads stored runs through audit
    "guard": (frozenset({*LIBRARY, ROOT, "audit"}), "guard imports the library and audit (never cli or serve)"),
    **{
        e: (frozenset({*LIBRARY, ROOT, "audit", "guard"}), f"{e} imports the library and audit, never another edge")
        for e in EDGES
    },
}

# Edges that break the contract and are being removed, each with who removes it and why it must
# wait: (importing module, imported module) -> reason. The violation is then reported as allowed,
# not as a failure; a cycle with an allowed edge is allowed as a whole. An entry that no longer
# matches an import is reported as stale: delete it. Empty since issue 21 (the zoo's in-function
# imports of trojans.population and robustness._denoise went when the training loop moved to core).
ALLOW: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is written and how."""

    importer: str  # dotted module name of the importing file
    target: str  # dotted module name imported
    path: Path
    line: int
    deferred: bool  # inside a function
    type_only: bool  # under `if TYPE_CHECKING:`


def module_name(path: Path, src: Path) -> str:
    """``src/mlsafety/core/_model.py`` -> ``mlsafety.core._model``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor(module: str) -> str | None:
    """The floor of a module of the package (``None`` for a module outside it)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return ROOT
    return parts[1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    """Every import of one file, with whether it is deferred (in a function) or type-only."""

    def __init__(self, module: str, is_package: bool, path: Path, modules: set[str]) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.path = path
        self.modules = modules
        self.depth = 0
        self.type_only = 0
        self.found: list[Import] = []

    def _add(self, target: str, node: ast.stmt) -> None:
        self.found.append(Import(self.module, target, self.path, node.lineno, self.depth > 0, self.type_only > 0))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            if node.level > 1:
                base = base[: -(node.level - 1)]
            stem = ".".join([*base, node.module] if node.module else base)
        else:
            stem = node.module or ""
        for alias in node.names:
            sub = f"{stem}.{alias.name}"
            self._add(sub if sub in self.modules else stem, node)


def collect(src: Path) -> tuple[set[str], list[Import]]:
    """The package's modules under ``src`` and every import they write of another module of it."""
    files = sorted((src / PACKAGE).rglob("*.py"))
    names = {module_name(f, src): f for f in files}
    modules = set(names)
    imports: list[Import] = []
    for name, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        collector = _Collector(name, path.name == "__init__.py", path, modules)
        collector.visit(tree)
        imports += [i for i in collector.found if floor(i.target) is not None and i.target != name]
    return modules, imports


def _where(imp: Import, cwd: Path) -> str:
    try:
        shown = imp.path.resolve().relative_to(cwd)
    except ValueError:
        shown = imp.path
    how = " (in a function)" if imp.deferred else " (under TYPE_CHECKING)" if imp.type_only else ""
    return f"{shown}:{imp.line}: imports {imp.target}{how}"


def layer_violations(imports: list[Import]) -> list[tuple[Import, str, str]]:
    """Imports that break a floor rule: (the import, the rule, ``layer`` or ``private``)."""
    bad = []
    for imp in imports:
        src_floor, dst_floor = floor(imp.importer), floor(imp.target)
        assert src_floor is not None and dst_floor is not None
        if src_floor == dst_floor:
            continue
        if src_floor not in ALLOWED:
            bad.append((imp, f"{PACKAGE}.{src_floor} has no floor: place it in tools/check_layers.py", "layer"))
            continue
        allowed, rule = ALLOWED[src_floor]
        if dst_floor not in allowed:
            bad.append((imp, rule, "layer"))
        elif src_floor in EDGES and any(part.startswith("_") for part in imp.target.split(".")[1:]):
            bad.append((imp, f"{src_floor} uses only public API (a package's __init__, no _private module)", "private"))
    return bad


def cycles(imports: list[Import]) -> list[list[Import]]:
    """One shortest cycle per strongly connected component of the import graph (TYPE_CHECKING excluded)."""
    graph: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if not imp.type_only:
            graph.setdefault(imp.importer, {}).setdefault(imp.target, imp)
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        components.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    found = []
    for comp in components:
        members = set(comp)
        start = comp[0]
        # Breadth-first search for the shortest way back to `start` inside the component.
        prev: dict[str, str] = {}
        queue = [start]
        end = None
        while queue and end is None:
            nxt = []
            for node in queue:
                for child in sorted(graph.get(node, {})):
                    if child not in members:
                        continue
                    if child == start:
                        end = node
                        break
                    if child not in prev:
                        prev[child] = node
                        nxt.append(child)
                if end is not None:
                    break
            queue = nxt
        assert end is not None
        path = [end]
        while path[-1] != start:
            path.append(prev[path[-1]])
        path.reverse()
        found.append([graph[a][b] for a, b in zip(path, [*path[1:], start])])
    return found


def check(src: Path, cwd: Path | None = None) -> tuple[list[str], list[str]]:
    """(violations, notes): one line per broken rule, and lines about allowed or stale allow-list entries."""
    cwd = (cwd or Path.cwd()).resolve()
    _, imports = collect(src)
    problems: list[str] = []
    notes: list[str] = []
    used: set[tuple[str, str]] = set()
    for imp, rule, tag in layer_violations(imports):
        line = f"{_where(imp, cwd)}: {rule} [{tag}]"
        if (imp.importer, imp.target) in ALLOW:
            used.add((imp.importer, imp.target))
            notes.append(f"allowed for now ({ALLOW[imp.importer, imp.target]}): {line}")
        else:
            problems.append(line)
    for cycle in cycles(imports):
        loop = " -> ".join([*(i.importer for i in cycle), cycle[0].importer])
        allowed = [(i.importer, i.target) for i in cycle if (i.importer, i.target) in ALLOW]
        used.update(allowed)
        for imp in cycle:
            line = f"{_where(imp, cwd)}: no import cycles ({loop}) [cycle]"
            if allowed:
                notes.append(f"allowed for now ({ALLOW[allowed[0]]}): {line}")
            else:
                problems.append(line)
    for importer, target in sorted(set(ALLOW) - used):
        notes.append(f"stale allow-list entry (no such violation any more; delete it): {importer} -> {target}")
    return problems, notes


def main(argv: list[str]) -> int:
    """Check the package under ``argv[0]`` (default: the repository's ``src``); 1 when a rule is broken."""
    src = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "src"
    if not (src / PACKAGE / "__init__.py").is_file():
        print(f"error: no {PACKAGE} package under {src}; pass the folder that holds it", file=sys.stderr)
        return 2
    problems, notes = check(src)
    for line in notes:
        print(line)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} import(s) break the layering contract (tools/check_layers.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
