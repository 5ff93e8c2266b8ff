"""The house's floors (issue 13): every import of a project module points to its own layer or a
lower one, no project modules import each other in a cycle, and every project import names a
module that exists. Read from the source with `ast`: every import statement counts, also those
inside functions, because a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("agents", "envs", "analysis", "bench", "train.py")
# Lowest first: a module may import its own layer or a lower one. A module belongs to the layer
# of the longest prefix it matches (agents.runtime.config: runtime, not agents).
LAYERS = (
    ("errors", ("agents.errors",)),
    # analysis.hessian/kfac/features: shims aliasing analysis.spectral's modules; `analysis`
    # itself (its __init__ is a docstring) sits here too: a new module directly in analysis/ is a
    # leaf until LAYERS places it higher
    ("spectral math", ("analysis.spectral", "analysis.hessian", "analysis.kfac",
                       "analysis.features", "analysis")),
    ("envs", ("envs",)),
    ("learners", ("agents",)),
    ("monitor", ("analysis.monitor",)),
    ("runtime", ("agents.runtime",)),
    ("study", ("analysis.study",)),
    ("cli", ("train",)),
    ("bench scripts", ("bench",)),
)


class Import(NamedTuple):
    importer: str  # module names
    imported: str
    path: str  # file:line of the import statement
    # named: the most specific module the statement names; package: a package above it, whose
    # __init__ Python runs first; missing: the statement names a module that does not exist
    # (`imported` is the nearest package above it)
    via: str = "named"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    modules = {}
    for source in SOURCES:
        paths = [root / source] if source.endswith(".py") else sorted((root / source).rglob("*.py"))
        modules.update({module_name(p, root): p for p in paths})
    return modules


def nearest_module(name: str, modules) -> str | None:
    """The most specific existing module `name` or a package above it (None: not the project's)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def resolved_base(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module a `from ... import` reads from; relative imports count up from the importer."""
    if not node.level:
        return node.module
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    package = package[:len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def imports_of(path: Path, importer: str, modules, root: Path) -> list[Import]:
    """Every project import in the file: to the most specific module each statement names
    (`from a.b import c`: a.b.c when it is a module, else a.b), and to each package above it that
    the importer is not inside (so a package re-exporting its submodules is in the graph)."""
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            required = [alias.name for alias in node.names]  # each must be a module
            wanted = required
        elif isinstance(node, ast.ImportFrom):
            base = resolved_base(node, importer, path.name == "__init__.py")
            required = [base]
            wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                      for a in node.names]  # a submodule, or a name defined in `base`
        else:
            continue
        where = f"{path.relative_to(root)}:{node.lineno}"
        for name in required:
            nearest = nearest_module(name, modules)
            if nearest is not None and nearest != name:
                edges.append(Import(importer, nearest, where, "missing"))
        named = {nearest_module(name, modules) for name in wanted} - {None}
        above = {".".join(m.split(".")[:end]) for m in named for end in range(1, m.count(".") + 1)}
        above = {p for p in above - named if not (importer == p or importer.startswith(p + "."))}
        edges += [Import(importer, m, where) for m in sorted(named)]
        edges += [Import(importer, p, where, "package") for p in sorted(above)]
    return edges


def layer_of(module: str) -> int:
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


def upward_imports(edges: list[Import]) -> list[str]:
    problems = []
    for edge in edges:
        low, high = layer_of(edge.importer), layer_of(edge.imported)
        if high > low:
            problems.append(f"{edge.path}: {edge.importer} ({LAYERS[low][0]}, layer {low}) "
                            f"imports {edge.imported} ({LAYERS[high][0]}, layer {high})")
    return problems


def import_cycles(edges: list[Import]) -> list[str]:
    """One cycle per strongly connected group of modules (Tarjan), each edge with its file:line."""
    graph: dict[str, dict[str, str]] = {}
    for edge in edges:
        if edge.importer != edge.imported:
            graph.setdefault(edge.importer, {}).setdefault(edge.imported, edge.path)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while node not in group:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [describe_cycle(graph, group) for group in groups]


def describe_cycle(graph, group: set[str]) -> str:
    """The shortest way from the group's first module back to itself, edge by edge."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for nxt in sorted(graph.get(node, {})):
            if nxt == start:
                steps = paths[node] + [start]
                return " -> ".join(f"{a} ({graph[a][b]})" for a, b in zip(steps, steps[1:])) \
                    + f" -> {start}"
            if nxt in group and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                frontier.append(nxt)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def project_imports(root: Path = ROOT) -> list[Import]:
    modules = project_modules(root)
    return [edge for name, path in modules.items()
            for edge in imports_of(path, name, modules, root)]


@pytest.fixture(scope="module")
def edges():
    return project_imports()


def test_every_import_goes_to_its_own_layer_or_a_lower_one(edges):
    problems = upward_imports([e for e in edges if e.via == "named"])
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_project_modules_import_each_other_in_a_cycle(edges):
    cycles = import_cycles([e for e in edges if e.via != "missing"])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_project_import_names_a_module_that_exists(edges):
    missing = [f"{e.path}: {e.importer} imports a module that does not exist under {e.imported}"
               for e in edges if e.via == "missing"]
    assert not missing, "\n".join(missing)


def reachable(edges: list[Import], start: str) -> set[str]:
    """Every module importing `start` may run, directly or through others."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph.get(module, ())
    return seen


def test_the_strategies_never_load_the_hessian_code(edges):
    """They need ranks.py and units.py only: spectral math without scipy.linalg or Lanczos."""
    heavy = {"analysis.spectral.hessian", "analysis.spectral.kfac", "analysis.spectral.features"}
    loaded = reachable([e for e in edges if e.via != "missing"], "agents.plasticity")
    assert not loaded & heavy


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_catches_an_upward_import_a_cycle_and_a_missing_module(tmp_path):
    write(tmp_path, {
        "train.py": "",
        "agents/__init__.py": "",
        "agents/errors.py": "def late():\n    import agents.runtime.trainer\n",  # upward
        "agents/runtime/__init__.py": "",
        "agents/runtime/trainer.py": "from agents.plasticity import build\n",
        "agents/plasticity/__init__.py": "from agents.plasticity.catalogue import build\n",
        "agents/plasticity/catalogue.py": "from agents.plasticity import family\nbuild = 1\n",
        "agents/plasticity/family.py": "from agents.learner import check\n",
        "agents/learner.py": "from agents.plasticity.base import Stack\n"
                             "from agents.gone import x\n",
        "agents/plasticity/base.py": "Stack = 1\n",
        "analysis/__init__.py": "",
        "envs/__init__.py": "",
        "bench/__init__.py": "",
    })
    found = project_imports(tmp_path)
    assert upward_imports([e for e in found if e.via == "named"]) == [
        "agents/errors.py:2: agents.errors (errors, layer 0) imports agents.runtime.trainer "
        "(runtime, layer 5)"]
    # learner -> plasticity.base runs plasticity/__init__ first, which imports the family
    cycle, = import_cycles([e for e in found if e.via != "missing"])
    assert cycle == (  # each module with the line where it imports the next
        "agents.learner (agents/learner.py:1) -> "
        "agents.plasticity (agents/plasticity/__init__.py:1) -> "
        "agents.plasticity.catalogue (agents/plasticity/catalogue.py:1) -> "
        "agents.plasticity.family (agents/plasticity/family.py:1) -> agents.learner")
    assert [(e.importer, e.imported) for e in found if e.via == "missing"] == [
        ("agents.learner", "agents")]
