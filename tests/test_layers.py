"""The house: the package's layers import only downward, with no import circle and no module too long to
read in a sitting. docs/design.md draws the same layers; this table is what holds them.

Every ``import`` counts, module level or inside a function (a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
from pathlib import Path

import jaxmlp

ROOT = Path(jaxmlp.__file__).parent

# From the bottom up. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    ("utilities", ["_version", "_compat", "backend", "fileio", "progress", "events", "divergence", "parallel"]),
    ("core", ["activations", "model", "cnn", "models", "losses", "backprop", "augment", "transfer", "data"]),
    ("optim", ["optim"]),
    ("engine", ["chunks", "checkpoint", "checks", "handlers", "resume", "loop", "engine", "evaluation", "steps"]),
    ("experiments", ["config", "presets", "memory", "spec", "run_state", "runs", "members", "groups",
                     "sweep_checkpoint", "sweep", "notebook",
                     "plots", "bench", "manifest_schema", "manifest", "reproduce"]),
    ("cli", ["cli", "__main__"]),
]
MAX_LINES = 500


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The jaxmlp modules that module ``name`` imports (resolved to the deepest module that exists)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = (package[:len(package) - node.level + 1] if node.level else []) + (node.module or "").split(".")
            target = ".".join(p for p in base if p)
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in MODULES and m != name}


def _layer(name: str) -> int:
    """The index in LAYERS of module ``name`` (its top-level package under jaxmlp decides)."""
    top = name.split(".")[1] if name != "jaxmlp" else ""
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS (and to docs/design.md)")


def test_every_module_has_a_layer_and_imports_only_downward():
    upward = []
    for name in sorted(MODULES):
        if name == "jaxmlp":
            continue  # the front door re-exports the layers below the command line
        for dep in sorted(_imports(name)):
            if dep == "jaxmlp" and _layer(name) != len(LAYERS) - 1:
                upward.append(f"{name} imports the front door jaxmlp (import the module that defines the name)")
            elif dep != "jaxmlp" and _layer(dep) > _layer(name):
                upward.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})")
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = {name: _imports(name) - {"jaxmlp"} for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path + [node, dep]
            if dep not in state and (circle := visit(dep, path + [node])):
                return circle
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            circle = visit(name, [])
            assert circle is None, "import circle: " + " -> ".join(circle[circle.index(circle[-1]):])


def test_no_module_over_500_lines():
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
