"""Import hygiene: every module imports in a fresh interpreter, and imports point one way.

Layers, lowest first (see ``LAYERS``; each imports only layers below it, function-level imports included;
``_validate``, ``_quadrature`` and ``_io`` are the base every layer may use): data and activations ->
diffusion -> oracles -> theory -> models -> train -> metrics -> report -> monitor -> experiments -> runs -> cli.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "easyhard"
BASE = ("easyhard._validate", "easyhard._quadrature", "easyhard._io")


def _module_files() -> dict[str, Path]:
    """Dotted name -> file of every module under src/easyhard (a package is named by its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _module_files()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _ancestors(name: str) -> list[str]:
    """Enclosing packages of a dotted name, outermost first: a.b.c -> [a, a.b]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _executed_imports(body: list[ast.stmt]):
    """Import statements that run when the module is imported: module level, in if/try/with/class blocks,
    but not in functions and not under ``if TYPE_CHECKING:``."""
    for stmt in body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            yield stmt
        elif isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _executed_imports(stmt.body)
            yield from _executed_imports(stmt.orelse)
        elif isinstance(stmt, (ast.Try, ast.TryStar)):
            for block in (stmt.body, *(h.body for h in stmt.handlers), stmt.orelse, stmt.finalbody):
                yield from _executed_imports(block)
        elif isinstance(stmt, (ast.With, ast.For, ast.While, ast.ClassDef)):
            yield from _executed_imports(stmt.body)
            yield from _executed_imports(getattr(stmt, "orelse", []))


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    """easyhard modules an import statement of ``module`` names: ``from easyhard.a import b`` is the
    module easyhard.a.b when b is a submodule, else easyhard.a."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == "easyhard"}
    base = node.module or ""
    if node.level:
        parts = module.split(".") if module in PACKAGES else module.split(".")[:-1]
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "easyhard":
        return set()
    return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}


def _edges(module: str, target: str) -> set[str]:
    """Modules whose import ``module`` triggers by importing ``target``: the target and its enclosing packages,
    except the packages enclosing ``module`` itself (they are already initialised or initialising)."""
    own = {*_ancestors(module), module}
    return {target} - {module} | {p for p in _ancestors(target) if p not in own}


def _import_nodes(module: str, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module: those run on import, or (``lazy``) all of them."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    if lazy:
        return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    return list(_executed_imports(tree.body))


@functools.cache
def _graph(lazy: bool) -> dict[str, frozenset[str]]:
    """module -> easyhard modules it imports; ``lazy`` adds the imports inside functions and TYPE_CHECKING blocks."""
    return {module: frozenset(edge for node in _import_nodes(module, lazy) for target in _targets(node, module)
                              for edge in _edges(module, target)) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path a -> ... -> a) per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_through(graph, set(c), c[0]) for c in components]


def _cycle_through(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """Shortest path start -> ... -> start inside one strongly connected component (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle")


def test_module_level_imports_have_no_cycle():
    """A cycle among module-level imports breaks whichever of its modules a fresh interpreter imports first."""
    cycles = _cycles(_graph(lazy=False))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_reports_the_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _edges("easyhard.x.y", "easyhard.z.w") == {"easyhard.z", "easyhard.z.w"}
    assert _edges("easyhard.z.y", "easyhard.z.w") == {"easyhard.z.w"}
    assert _edges("easyhard.z.y", "easyhard.z") == {"easyhard.z"}  # from easyhard.z import name


def test_targets_resolve_submodules_and_relative_imports():
    (node,) = ast.parse("from easyhard.oracles import wiener, WienerDenoiser").body
    assert _targets(node, "easyhard.cli") == {"easyhard.oracles.wiener", "easyhard.oracles"}
    (node,) = ast.parse("from .wiener import WienerDenoiser").body
    assert _targets(node, "easyhard.oracles.bayes_mcm") == {"easyhard.oracles.wiener"}
    assert _targets(node, "easyhard.oracles") == {"easyhard.oracles.wiener"}
    (node,) = ast.parse("from ..data import latents").body
    assert _targets(node, "easyhard.oracles.bayes_mcm") == {"easyhard.data.latents"}


# Units of the package, lowest layer first; a unit may import only units of lower layers (the base modules
# also each other).
LAYERS = [
    BASE,
    ("easyhard.data", "easyhard.activations"),
    ("easyhard.diffusion",),
    ("easyhard.oracles",),
    ("easyhard.theory",),
    ("easyhard.models",),
    ("easyhard.train",),
    ("easyhard.metrics",),
    ("easyhard.report",),
    ("easyhard.monitor",),
    ("easyhard.experiments",),
    ("easyhard.runs",),
    ("easyhard.cli",),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# Wrong-way imports that other refactoring steps remove; strict, so each marker goes once its import is gone.
PENDING: dict[tuple[str, str], str] = {}


def _unit(module: str) -> str:
    """easyhard.a.b.c -> easyhard.a (a top-level subpackage or module of easyhard)."""
    return ".".join(module.split(".")[:2])


def test_layers_cover_every_unit():
    assert {_unit(m) for m in MODULES} - {"easyhard"} == set(RANK)


def _layer_cases():
    for importer, rank in RANK.items():
        for forbidden in sorted(u for u, r in RANK.items() if r >= rank and u != importer and r > 0):
            marks = [pytest.mark.xfail(strict=True, reason=PENDING[importer, forbidden])] \
                if (importer, forbidden) in PENDING else []
            yield pytest.param(importer, forbidden, marks=marks, id=f"{importer[9:]}-imports-{forbidden[9:]}")


@pytest.mark.parametrize(("importer", "forbidden"), list(_layer_cases()))
def test_layer_does_not_import_higher_or_equal_layer(importer, forbidden):
    """Imports point one way, down the layers. A lazy (function-level) import still points the wrong way, so
    these count too."""
    bad = sorted(f"{m} imports {d}" for m, deps in _graph(lazy=True).items() if _unit(m) == importer
                 for d in deps if _unit(d) == forbidden)
    assert not bad, "\n".join(bad)


def test_root_package_imports_only_the_base():
    """``import easyhard`` stays light: no subpackage (and so no torch) is imported eagerly."""
    assert _graph(lazy=False)["easyhard"] <= set(BASE)


def _bound_and_exported(package: str) -> tuple[set[str], set[str], set[str]]:
    """(names a package __init__ imports, names it defines, names in its __all__)."""
    imported, defined, exported = set(), set(), set()
    for node in ast.parse(MODULES[package].read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            imported |= {alias.asname or alias.name for alias in node.names}
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "__all__":
            exported |= set(ast.literal_eval(node.value))
        elif isinstance(target, ast.Name) or isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(target.id if isinstance(target, ast.Name) else node.name)
    return imported, defined, exported


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_package_exports_what_it_imports(package):
    """Each package __init__ re-exports its public API explicitly: __all__ lists every name it imports, and only
    names it binds."""
    imported, defined, exported = _bound_and_exported(package)
    assert exported, f"{package} has no __all__"
    assert imported <= exported, f"{package} imports but does not export {sorted(imported - exported)}"
    assert exported <= imported | defined, f"{package} exports unbound {sorted(exported - imported - defined)}"


def _third_party_imports() -> list[str]:
    """Non-easyhard modules that easyhard modules import at module level (preloaded by the import test)."""
    names = set()
    for module in MODULES:
        for node in _import_nodes(module, lazy=False):
            names |= ({a.name for a in node.names} if isinstance(node, ast.Import)
                      else {node.module} if not node.level and node.module else set())
    return sorted(n for n in names if n.split(".")[0] not in ("easyhard", "__future__"))


# Run by a fresh interpreter: load the third-party modules easyhard imports at module level once, block the
# optional extras, then import each easyhard module in a forked child (easyhard itself is never loaded in the
# parent, so each child starts from a clean easyhard) and print {module: error} as JSON. Forking saves the
# seconds that importing torch, scipy and numba takes in each of ~70 interpreters.
_DRIVER = r"""
import importlib, json, os, sys, traceback
sys.path.insert(0, sys.argv[1])
preload, extras, modules = json.loads(sys.argv[2]), set(json.loads(sys.argv[3])), sys.argv[4:]
for dep in preload:
    importlib.import_module(dep)
assert not any(m.split(".")[0] == "easyhard" for m in sys.modules)
class BlockExtras:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in extras:
            raise ImportError(f"optional extra {name} imported at module level")
sys.meta_path.insert(0, BlockExtras)
errors, running = {}, {}
def reap():
    pid, status = os.wait()
    name, fd = running.pop(pid)
    with os.fdopen(fd) as f:
        message = f.read()
    if status:
        errors[name] = message or f"exit status {status}"
for name in modules:
    if len(running) >= 2:
        reap()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            importlib.import_module(name)
        except BaseException:
            os.write(w, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(w)
    running[pid] = (name, r)
while running:
    reap()
print(json.dumps(errors))
"""
# Import names of the optional extras (pyproject.toml [project.optional-dependencies]); pillow is not among
# them because matplotlib, a core dependency, needs it.
EXTRAS = ["diffusers", "pandas", "pyarrow", "ray", "skimage", "sklearn"]


def test_third_party_module_level_imports_are_core_dependencies():
    assert not [name for name in _third_party_imports() if name.split(".")[0] in EXTRAS]


def test_every_module_imports_in_a_fresh_interpreter():
    """``python -c "import easyhard.X"`` works for every module and package, without the optional extras."""
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(SRC), json.dumps(_third_party_imports()),
                           json.dumps(EXTRAS), *MODULES], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not errors, "\n\n".join(f"import {name} failed:\n{message}" for name, message in errors.items())
