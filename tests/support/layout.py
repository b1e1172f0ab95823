"""The package's shape, read statically: layers, import edges, cycles, module and function sizes.

Used by ``tests/unit/test_layout.py`` (the layering rule and the size limits) and runnable as a script
(``python tests/support/layout.py [PACKAGE_DIR]``) to print the figures the "One house" note quotes. Reads the
sources with :mod:`ast`; imports nothing of tnedit.
"""

from __future__ import annotations

import ast
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "tnedit"  # a script too: no import of tests.support.paths

# Lowest first. A module may import modules of its own package and of packages on lower layers only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("tnedit.errors", "tnedit.versions", "tnedit.exports"),
    ("tnedit.reporting", "tnedit.settings", "tnedit.formats"),
    ("tnedit.experts",),
    ("tnedit.architectures",),
    ("tnedit.checkpoint", "tnedit.corpus", "tnedit.qa"),
    ("tnedit.model",),
    ("tnedit.edit",),
    ("tnedit.identify",),
    ("tnedit.evaluate", "tnedit.hub", "tnedit.tune"),
    ("tnedit.recipes",),
    ("tnedit.cli",),
    ("tnedit",),  # the package __init__: the curated public API, exported lazily from every layer
)

MAX_MODULE_LINES = 500
MAX_MEDIAN_LINES = 250
MAX_FUNCTION_LINES = 60


@dataclass
class Module:
    name: str  # dotted
    path: Path
    lines: int
    imports: set[str] = field(default_factory=set)  # tnedit modules, dotted
    function_level_imports: int = 0
    long_functions: list[tuple[str, int]] = field(default_factory=list)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(target: str, known: set[str]) -> str:
    """The known module a dotted import names (``tnedit.a.b.name`` → ``tnedit.a.b`` when ``name`` is not a module)."""
    while target not in known and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def _imported_names(node: ast.AST, current: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = current if is_package else current.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            prefix = f"{base}.{node.module}" if node.module else base
        else:
            prefix = node.module or ""
        return [f"{prefix}.{alias.name}" for alias in node.names]  # resolved to ``prefix`` when not a module
    return []


def _long_functions(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append((node.name, length))
    return found


def read_package(root: Path = PACKAGE) -> dict[str, Module]:
    paths = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    modules = {module_name(p, root): Module(module_name(p, root), p, len(p.read_text().splitlines())) for p in paths}
    known = set(modules)
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), str(module.path))
        is_package = module.path.name == "__init__.py"
        function_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                          for n in ast.walk(f)}
        for node in ast.walk(tree):
            names = [n for n in _imported_names(node, module.name, is_package) if n.split(".")[0] == "tnedit"]
            targets = {_resolve(n, known) for n in names} - {module.name}
            if targets and id(node) in function_nodes:
                module.function_level_imports += 1
            module.imports |= targets
        module.long_functions = _long_functions(tree)
    return modules


def layer_of(name: str) -> tuple[int, str]:
    """(layer index, owning package) of a dotted module name."""
    best = (-1, "")
    for index, owners in enumerate(LAYERS):
        for owner in owners:
            if (name == owner or name.startswith(owner + ".")) and len(owner) > len(best[1]):
                best = (index, owner)
    if best[0] < 0:
        raise KeyError(f"{name} belongs to no layer of tests/support/layout.py LAYERS")
    return best


def layering_violations(modules: dict[str, Module]) -> list[str]:
    found = []
    for module in modules.values():
        layer, owner = layer_of(module.name)
        for target in sorted(module.imports):
            target_layer, target_owner = layer_of(target)
            if target_owner == owner and owner != "tnedit":
                # A package's __main__ runs its __init__'s entry point; any other module importing its own
                # package's __init__ risks a cycle through the re-exports.
                if module.name != owner and target == owner and not module.name.endswith(".__main__"):
                    found.append(f"{module.name} imports its own package's __init__ ({target})")
                continue
            if target_layer >= layer:
                kind = "lateral" if target_layer == layer else "upward"
                found.append(f"{module.name} → {target}: {kind} import")
    return found


def import_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(name: str) -> None:
        index[name] = low[name] = counter[0]
        counter[0] += 1
        stack.append(name)
        on_stack.add(name)
        for target in modules[name].imports:
            if target not in modules:
                continue
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == name:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for name in sorted(modules):
        if name not in index:
            visit(name)
    return cycles


def figures(modules: dict[str, Module]) -> dict[str, object]:
    sizes = sorted((m.lines, m.name) for m in modules.values() if m.lines > 0)
    edges = sum(len(m.imports) for m in modules.values())
    return {
        "modules": len(modules),
        "lines": sum(s for s, _ in sizes),
        "largest": sizes[-1],
        "median": statistics.median(s for s, _ in sizes),
        "functions over 60 lines": sorted((length, f"{m.name}.{fn}") for m in modules.values()
                                          for fn, length in m.long_functions),
        "import cycles": import_cycles(modules),
        "import edges": edges,
        "function-level imports of tnedit": sum(m.function_level_imports for m in modules.values()),
        "layering violations": layering_violations(modules),
    }


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else PACKAGE
    for key, value in figures(read_package(root)).items():
        print(f"{key}: {value}")
