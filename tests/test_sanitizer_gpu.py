"""compute-sanitizer on the GPU: the sanitizer-only mutants are caught with the right kernel, operand
and region; the harness's own kernels (the grouped and fused-MoE emulations too) run clean with
padding left unwritten; the mutants' results are correct, so no poison property could have caught them.

Skipped without a CUDA GPU, and where compute-sanitizer is not installed (with the reason
:func:`harness.sanitizer.check_available` gives).  Each sanitized run is a child process under the
tool (seconds each); the full sweep over backends and the corpus is bench/sanitizer_run.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.sanitizer import run as sz
from harness.backends import registry
from harness.problem import GemmProblem
from harness.trial import Trial


def _unavailable() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    try:
        sz.check_available()
    except sz.SanitizerUnavailable as exc:
        return str(exc)
    return None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")

SANITIZER_MUTANTS = [b.name for b in registry.all_backends(include_mutants=True)
                     if getattr(b, "oracle", "properties") == "sanitizer"]


@pytest.mark.parametrize("name", SANITIZER_MUTANTS)
def test_sanitizer_mutant_is_caught_and_parent_is_clean(name: str) -> None:
    (score,) = sz.selftest([name])
    print("\n" + sz.scoreboard([score]))
    assert score.caught, (name, score.status, score.reason)
    assert score.parent_status == "pass", f"parent {score.parent} under {score.tool}: {score.parent_status}"


# The write-past-output mutant is left out here: its stray row lands in whatever allocation follows
# the output, so in one process a property can see the corruption or not depending on the allocator
# (on the H200 on 2026-12-01 row_isolation saw 5 real rows change under an M-padding poison, which
# the parent does not; the mechanism was not traced further). Its detection is proven by the sanitizer test above and, without a GPU, by the guard bytes
# (tests/test_guard.py, its twin mutant-writes-past-output).
RESULT_PRESERVING = [n for n in SANITIZER_MUTANTS if n != "mutant-writes-row-past-output"]


@pytest.mark.parametrize("name", RESULT_PRESERVING)
def test_sanitizer_mutant_results_are_correct(name: str) -> None:
    """The bug changes no result: the mutant passes its property on its own case (in a child
    process, so that nothing from another case shares its memory)."""
    m = registry.get(name)
    trial = m.sanitizer_trial()  # type: ignore[attr-defined]
    props = ["reference_agreement", "row_isolation"] if m.level == "gemm" else ["quantizer_agreement"]
    code = ("import json, sys; from harness.runner import execute; from harness.trial import Trial; "
            "from harness.problem import GemmProblem, Poison; t = json.loads(sys.argv[1]); p = GemmProblem(**t['problem']); "
            "outs = [execute(Trial(t['backend'], q, p, Poison(m_pad=0x7F) if q == 'row_isolation' "
            "else Poison())) for q in sys.argv[2:]]; print(json.dumps([[o.status, o.reason] for o in outs]))")
    p = subprocess.run([sys.executable, "-c", code, json.dumps(trial.to_dict()), *props], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    for prop, (status, reason) in zip(props, got):
        assert status == "pass", (prop, status, reason)


@pytest.mark.parametrize("tool", ["memcheck", "initcheck"])
@pytest.mark.parametrize("backend", ["triton-emu-128x4", "triton-emu-8x4", "triton-emu-linear", "quant-triton-8x4"])
def test_harness_kernels_are_clean_with_unwritten_padding(backend: str, tool: str) -> None:
    b = registry.get(backend)
    prop = "quantizer_agreement" if b.level == "quantizer" else "reference_agreement"
    res = sz.sanitize_trial(Trial(backend, prop, GemmProblem(m=37, n=72, k=208, seed=4)), tool)
    assert res.status == "pass", sz.describe(res) + "\n" + res.output_tail[-2000:]
    assert res.error_count == 0


# grouped and fused-MoE: a zero-token expert, group row padding (37 tokens padded to 64 rows), N padding
GROUPED_TRIALS = {
    "grouped-triton-emu": ("reference_agreement", dict(n=72, k=208)),
    "grouped-triton-emu-fused": ("grouped_bytes", dict(n=72, k=208)),
    "moe-triton-emu": ("reference_agreement", dict(hidden=320, intermediate=192)),
}


@pytest.mark.parametrize("tool", ["memcheck", "initcheck"])
@pytest.mark.parametrize("backend", sorted(GROUPED_TRIALS))
def test_harness_grouped_kernels_are_clean_with_unwritten_padding(backend: str, tool: str) -> None:
    from harness.grouped.problem import GroupedPoison, GroupedProblem, GroupedTrial, MoeProblem

    prop, dims = GROUPED_TRIALS[backend]
    cls = MoeProblem if "hidden" in dims else GroupedProblem
    problem = cls.from_splits([37, 0, 5], 1, seed=4, row_align=(64, 1, 8), **dims)
    res = sz.sanitize_trial(GroupedTrial(backend, prop, problem, GroupedPoison(group_row_pad=0x7F, n_pad=0x7F)), tool)
    assert res.status == "pass", sz.describe(res) + "\n" + res.output_tail[-2000:]
    assert res.error_count == 0
