"""The package layering: no import cycles among the project's modules, the CLI at the top.

Imports inside functions count too: a cycle hidden in a function is still a cycle in the
design. A submodule importing its own parent package is not counted."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ("harness", "attacks", "judges")

# The layers of docs/extending.md, lowest first: a module imports its own layer and those below
# (module-name prefixes; the longest match wins); the CLI modules (harness.cli, *.cli) sit on top.
LAYERS = [
    ("core", ("harness", "harness.errors", "harness.core", "harness.names", "harness.registry", "harness.runlog",
              "harness.intervals", "harness.kvcache", "harness.hardware")),
    ("inputs", ("harness.data", "harness.models", "harness.prompts", "harness.turns", "harness.engine",
                "harness.synth", "harness.recipes", "harness.attack_api")),
    ("plug-ins", ("attacks", "judges", "harness.utility", "harness.training")),
    ("run", ("harness.run",)),
    ("results", ("harness.results",)),
    ("analysis", ("harness.analysis",)),
]


def _modules() -> dict[str, ast.Module]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, tree in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[m] |= {n for n in names if n in mods and n != m and not m.startswith(n + ".")}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif not state.get(v):
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m)
    return cycles


def test_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_nothing_imports_the_cli_and_the_core_imports_nothing_of_ours():
    graph = import_graph()
    clis = {m for m in graph if m == "harness.cli" or m.endswith(".cli") or m.endswith("_cli")}
    for m, deps in graph.items():
        if m not in clis:
            assert not deps & clis, f"{m} imports the CLI layer: {sorted(deps & clis)}"
    assert graph["harness.core"] <= {"harness.errors"}, graph["harness.core"]


def layer(module: str) -> int | None:
    if module == "harness.cli" or module.endswith(".cli"):
        return len(LAYERS)
    best: tuple[int, int] | None = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def test_imports_point_down_a_layer():
    graph = import_graph()
    unplaced = sorted(m for m in graph if layer(m) is None)
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"
    up = [f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) > layer(m)]
    assert not up, "imports that point up a layer:\n" + "\n".join(sorted(up))
    assert layer("harness.run.runner") > layer("attacks.gcg") > layer("harness.engine.base") > layer("harness.core")


def test_no_module_takes_another_modules_private_name():
    mods = _modules()
    taken = [f"{m}: {node.module}.{a.name}" for m, tree in mods.items() for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module in mods
             for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not taken, taken


def test_every_module_imports_on_its_own():
    """Each module imported first in a fresh interpreter (import order must not matter)."""
    code = ("import importlib, sys\nfor m in sys.argv[1:]:\n"
            "    importlib.import_module(m)\n    [sys.modules.pop(k) for k in list(sys.modules) "
            "if k.split('.')[0] in ('harness', 'attacks', 'judges')]\n")
    light = [m for m in _modules() if not m.endswith(("vllm_backend", "data_parallel"))]
    out = subprocess.run([sys.executable, "-c", code, *sorted(light)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
