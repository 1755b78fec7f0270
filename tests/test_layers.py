"""The package tree is layered: each module imports only from its own layer or below, and no
imports form a cycle, counting imports inside functions (they hide cycles, they do not remove
them). A new upward import or cycle fails here; see the README's "Architecture"."""

from __future__ import annotations

import ast
from pathlib import Path

import inca

ROOT = Path(inca.__file__).parent

# bottom to top; a module belongs to the longest prefix listed
LAYERS = [
    ["inca._version", "inca.errors", "inca.utils"],  # errors, atomic files, devices, processes
    ["inca.backbones"],  # frozen models and their taps
    ["inca.data"],  # datasets, splits, loaders
    ["inca.adapters"],  # what adapters on frozen taps are built from
    ["inca.methods"],  # the registry, one package per method
    ["inca.cache"],  # activation caches
    ["inca.train"],  # the Trainer, what it trains with, selection
    ["inca.tasks", "inca.serve"],  # saved tasks, prediction, serving, evaluation
    ["inca.report"],  # reports of runs and comparisons
    ["inca.recipes"],  # the main job and the comparison
    ["inca.bench"],  # benchmarks
    ["inca.cli", "inca.__main__"],  # the command line (python -m inca)
]

KNOWN_CYCLES: set[frozenset[str]] = set()  # none: keep it so


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The inca modules ``name`` imports anywhere in its file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # "from pkg import sub" needs the submodule; "from pkg import name", pkg itself
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("inca."):
                found.add(target)
    return found


def layer(name: str) -> int:
    best = max(
        ((len(p), i) for i, names in enumerate(LAYERS) for p in names
         if name == p or name.startswith(p + ".")),
        default=(0, -1),
    )  # fmt: skip
    assert best[1] >= 0, f"{name} belongs to no layer: add it to LAYERS"
    return best[1]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {n: imports(n, p, known) for n, p in known.items() if n != "inca"}


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = sorted(
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in graph().items()
        for b in targets
        if b != "inca" and layer(b) > layer(a)
    )
    assert not upward, "\n".join(upward)


def test_no_import_cycles_but_the_known_ones() -> None:
    g = graph()
    cycles = set()
    for a, targets in g.items():
        for b in targets:
            if a in reachable(g, b):
                cycles.add(frozenset({a, b}))
    assert cycles == KNOWN_CYCLES, sorted(sorted(c) for c in cycles ^ KNOWN_CYCLES)


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        for nxt in g.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen
