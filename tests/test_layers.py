"""The import graph of the harness: acyclic, and every import points down the declared layers.

The layers are the data flow of README's "Layout" section, bottom to top.  A module may import
modules of its own layer or of a lower one, never of a higher one, and the whole graph (module
level, function level and type-checking imports alike: each says what a module depends on) has
no cycle.  A new module must be placed in a layer here: the test names it when it is missing.

Run ``python -m pytest tests/test_layers.py -q`` to check; on failure the message names the
import and the two layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS: list[tuple[str, ...]] = [
    # the number format, scale layouts, the machine and torch's matmul settings: no harness imports
    # (the input memory layouts build their views inside guard bytes)
    ("harness", "harness.format", "harness.layouts", "harness.env", "harness.optional", "harness.guard",
     "harness.input_layout", "harness.torch_modes"),
    # Triton kernels of the pipeline (quantize, dequantize, pad) and of the test data
    ("harness.kernels", "harness.kernels.nvfp4", "harness.kernels.data"),
    # deterministic test data (its Triton path is a kernel)
    ("harness.data",),
    # the data model: problems, poison, TP shards of real models; trials, outcomes, vocabulary
    ("harness.problem", "harness.tp_catalog", "harness.grouped", "harness.grouped.problem"),
    ("harness.trial",),
    # compute-sanitizer's output and the operand map (what an address means): parsing, no GPU
    ("harness.sanitizer", "harness.sanitizer.findings", "harness.sanitizer.operands"),
    # operands from problems; Hypothesis strategies over the model
    ("harness.pipeline", "harness.strategies", "harness.grouped.pipeline", "harness.grouped.strategies",
     "harness.grouped.transforms", "harness.grouped.moe"),
    # the GEMM kernels the harness runs itself, on pipeline operands
    ("harness.kernels.gemm",),
    # the reference (fp64 GEMM or exact int8 digit planes) and its error bound
    ("harness.oracle", "harness.exact_reference", "harness.grouped.reference", "harness.grouped.moe_reference"),
    # backends: the protocol, shared adapter helpers, the registry, the adapters, planted bugs
    ("harness.backends", "harness.backends.*", "harness.mutants", "harness.grouped.protocol",
     "harness.grouped.registry", "harness.grouped.mutants"),
    # the verdicts
    ("harness.checks",),
    # putting each property to the test, per level; the engine that runs and classifies them; the
    # memory a case needs; the grouped level's engine (it classifies outcomes as the runner does)
    ("harness.experiments",),
    ("harness.experiments.*",),
    ("harness.runner", "harness.memory", "harness.grouped.checks"),
    # what is kept of a run: case files, the suite's plan
    ("harness.cases", "harness.suite", "harness.tracking", "harness.grouped.cases", "harness.grouped.records"),
    # the results directory (writing and reading)
    ("harness.results", "harness.verified"),
    # the HTML report of a results directory
    ("harness.report", "harness.report.*"),
    # replay and the self-test
    ("harness.replay", "harness.selftest"),
    # compute-sanitizer as an oracle: the child process, running cases under the tool, its self-test
    ("harness.sanitizer.child", "harness.sanitizer.run", "harness.sanitizer.__main__"),
    # time-based fuzz campaigns: schedule, progress, interruption, shards, the shared example database
    ("harness.campaign",),
    # entry points
    ("harness.cli", "harness.__main__", "harness.pytest_plugin"),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted((ROOT / "harness").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _layer_of(name: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        for pattern in layer:
            if name == pattern or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
                return i
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the harness modules it imports (anywhere in the file)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "harness":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "harness")
        graph[name] = {d for d in deps if d != name and d in mods}
    return graph


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in _modules() if _layer_of(m) is None)
    assert not missing, f"modules not placed in tests/test_layers.py LAYERS: {missing}"


def test_no_import_points_up_the_layers() -> None:
    upward = []
    for mod, deps in import_graph().items():
        for dep in sorted(deps):
            lm, ld = _layer_of(mod), _layer_of(dep)
            if lm is not None and ld is not None and ld > lm:
                upward.append(f"{mod} (layer {lm}) imports {dep} (layer {ld})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _imported_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + "\nimport sys\nprint(' '.join(sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_importing_harness_imports_nothing_heavy() -> None:
    mods = _imported_by("import harness")
    assert not {"torch", "triton"} & mods


def test_rendering_a_report_imports_neither_triton_nor_the_kernels(tmp_path: Path) -> None:
    from test_report import build_results_dir  # a results directory with failures, case files and grids

    root = tmp_path / "results"
    build_results_dir(root)
    mods = _imported_by(f"""
        from harness.report import render_report
        render_report({str(root)!r}, {str(tmp_path / "index.html")!r})
        """)
    assert (tmp_path / "index.html").stat().st_size > 0
    assert "triton" not in mods
    assert not [m for m in mods if m.startswith(("harness.kernels", "harness.backends", "harness.pipeline",
                                                  "harness.runner"))]
