"""Benchmark: property-suite cases per second per GPU, and where the time of a case goes.

A case = build operands clean + poisoned (Triton pipeline), run the backend on both, the fp64
reference and error bound, the agreement and row-isolation checks.  Small shapes (m <= 256,
n, k <= 4096) come from the suite's own strategies; a large shape shows the harness's share of the
time next to the backend's.  Run on a GPU:  python bench/cases_per_second.py
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import torch

import _record


def make_case(backend_name: str, dev: torch.device):
    """(one_case(problem, timing=False), phases): one property-suite case and its per-phase seconds."""
    from harness import checks
    from harness.backends import registry
    from harness.oracle import compare, error_bound, reference_gemm
    try:
        from harness.experiments import sync
        from harness.experiments.gemm import GemmExperiment
    except ImportError:  # trees before harness/experiments/ (bench/side_by_side.py runs older commits)
        from harness.runner import _Gemm as GemmExperiment, _sync as sync

    try:
        from harness.problem import CLEAN, GemmProblem, Poison
        from harness.trial import Trial
    except ImportError:  # trees before harness/problem.py (bench/side_by_side.py runs older commits)
        from harness.pipeline import CLEAN, GemmProblem, Poison
        from harness.runner import Trial

    backend = registry.get(backend_name)
    phases = defaultdict(float)

    def one_case(p: GemmProblem, timing: bool = False) -> None:
        def mark(name, t0):
            if timing:
                sync()
            phases[name] += time.perf_counter() - t0
            return time.perf_counter()

        t = time.perf_counter()
        g = GemmExperiment(backend, Trial(backend.name, "row_isolation", p), dev)
        t = mark("data", t)
        clean = g.ops(CLEAN)
        dirty = g.ops(Poison(m_pad=0x7F))
        t = mark("pipeline", t)
        out_c = backend.run(clean)
        out_d = backend.run(dirty)
        t = mark("backend", t)
        ref = reference_gemm(clean)
        bound = error_bound(ref, backend.requirements.precision, clean.out_dtype)
        t = mark("reference", t)
        agr = compare(out_c[:, :p.n], ref, bound, clean.out_dtype)
        iso = checks.row_isolation(out_c, out_d, p.m, p.n)
        assert agr.ok and iso.ok, (p, agr.max_err_units, iso.summary)
        mark("checks", t)

    return one_case, phases


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="triton-emu-128x4")
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--large", type=int, default=8192)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from hypothesis import HealthCheck, given, settings

    from harness import env, strategies
    from harness.backends import registry
    from harness.oracle import reference_method
    from harness.experiments import sync
    from harness.problem import GemmProblem

    e = env.current()
    dev = e.torch_device
    backend = registry.get(args.backend)
    problems = []

    @settings(max_examples=args.cases, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategies.gemm_problems(max_m=256, max_nk_blocks=256))
    def collect(p):
        problems.append(p)

    collect()
    one_case, phases = make_case(backend.name, dev)

    for p in problems:  # first pass compiles every kernel variant; the timed pass is steady state
        one_case(p)
    sync()
    phases.clear()
    t0 = time.perf_counter()
    for p in problems:
        one_case(p)
    sync()
    wall = time.perf_counter() - t0
    rate = len(problems) / wall

    out = {"note": "steady state: a first pass over the same cases compiled every kernel variant",
           **_record.environment(), "backend": backend.name, "cases": len(problems), "wall_s": wall, "cases_per_s": rate}
    if args.large:  # --large 0 skips the large case (CPU)
        phases.clear()
        big = GemmProblem(args.large, args.large, args.large)
        one_case(big, timing=True)
        phases.clear()
        one_case(big, timing=True)
        total = sum(phases.values())
        out.update({
            "large_shape": args.large, "large_phases_ms": {k: v * 1e3 for k, v in phases.items()},
            "large_reference_method": reference_method(args.large, args.large, args.large, dev),
            "large_backend_share": phases["backend"] / total,
            "large_harness_share": 1 - phases["backend"] / total,
            "large_harness_share_excluding_reference": (total - phases["backend"] - phases["reference"]) / total})
    _record.emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
