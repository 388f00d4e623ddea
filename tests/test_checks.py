"""The properties judge infinities by the overflow rule of the oracle, and their output grids show
what they judged: outside the bound, NaN/Inf judged wrong, infinity accepted as overflow."""

from __future__ import annotations

import torch

from harness import checks
from harness.backends import registry
from harness.checks import ACCEPTED, CHANGED, NONFINITE, OK, PADDING
from harness.layouts import ScaleLayout
from harness.oracle import Reference, error_bound, overflow_threshold, reference_gemm
from harness.pipeline import build_gemm_operands
from harness.problem import GemmProblem

# where the harness's kernels run: compiled on a GPU, under the Triton interpreter on a CPU
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

FP16_T = overflow_threshold(torch.float16)


def _cell_counts(grid: dict) -> dict[int, int]:
    flat = [c for row in grid["cells"] for c in row]
    return {code: flat.count(code) for code in (OK, CHANGED, NONFINITE, PADDING, ACCEPTED)}


def _torch_emu_fp16_overflowing():
    """A torch-emu product whose heavy-tailed fp16 output overflows correctly in a few places."""
    backend = registry.get("torch-emu")
    problem = GemmProblem(m=8, n=64, k=704, out_dtype="float16", in_dtype="bfloat16",
                          distribution="heavy_tailed", seed=0)
    ops = build_gemm_operands(problem, a_layout=ScaleLayout.SWIZZLED_128x4, w_layout=ScaleLayout.SWIZZLED_128x4)
    out = backend.run(ops)[:, :ops.n].clone()
    ref = reference_gemm(ops)
    return out, ref, error_bound(ref, backend.requirements.precision, torch.float16)


def test_correct_overflow_passes_and_is_counted():
    out, ref, bound = _torch_emu_fp16_overflowing()
    n_inf = int(torch.isinf(out).sum())
    assert n_inf > 0  # the case this test is about
    res = checks.reference_agreement(out, ref, bound, torch.float16)
    assert res.ok and res.measure["accepted_overflow"] == n_inf
    assert f"{n_inf} accepted overflow" in res.summary


def test_the_grid_shows_what_reference_agreement_judged():
    out, ref, bound = _torch_emu_fp16_overflowing()
    n_inf = int(torch.isinf(out).sum())
    finite = torch.nonzero(torch.isfinite(out) & (ref.value.abs() < 1000))
    i, j = finite[0].tolist()
    out[i, j] = out[i, j] + 64 * float(bound[i, j])          # one finite output outside the bound
    res = checks.reference_agreement(out, ref, bound, torch.float16)
    assert not res.ok and res.measure["violations"] == 1 and res.measure["nonfinite_violations"] == 0
    assert res.measure["accepted_overflow"] == n_inf
    assert res.summary.startswith("1 of 512 outputs outside the bound (0 of them NaN/Inf)")
    cells = _cell_counts(res.measure["grid"])  # 8 x 64: one cell per output
    assert cells[CHANGED] == 1 and cells[NONFINITE] == 0 and cells[ACCEPTED] == n_inf
    assert res.measure["grid"]["cells"][i][j] == CHANGED

    # a real overflow bug: +inf where reference + bound is far below the threshold
    k, l = finite[1].tolist()
    assert float(ref.value[k, l].abs() + bound[k, l]) < FP16_T / 16
    out[k, l] = float("inf")
    res = checks.reference_agreement(out, ref, bound, torch.float16)
    assert res.measure["violations"] == 2 and res.measure["nonfinite_violations"] == 1
    assert res.measure["nan_rows"] == [k]
    cells = _cell_counts(res.measure["grid"])
    assert cells[CHANGED] == 1 and cells[NONFINITE] == 1 and cells[ACCEPTED] == n_inf
    assert res.measure["grid"]["cells"][k][l] == NONFINITE


def test_pooled_grid_cells_keep_the_most_severe_judgement():
    n = 2 * checks.GRID_MAX                        # pooled into 2 x 2 bins
    status = torch.full((n, n), OK, dtype=torch.int8)
    status[0, 1] = ACCEPTED                        # bin (0, 0): ok + accepted overflow
    status[0, 2], status[1, 3] = ACCEPTED, CHANGED  # bin (0, 1): accepted + outside the bound
    status[0, 4], status[1, 5] = CHANGED, NONFINITE  # bin (0, 2): outside + wrong NaN/Inf
    status[1, 7] = PADDING                         # bin (0, 3): ok + padding
    g = checks.status_grid(status, n, n)
    assert g["row_step"] == g["col_step"] == 2
    assert g["cells"][0][:5] == [ACCEPTED, CHANGED, NONFINITE, OK, OK]


def _shard(value: float, bound: float, out: float) -> tuple[torch.Tensor, Reference, torch.Tensor]:
    v = torch.tensor([[value, 1.0]], dtype=torch.float64)
    return (torch.tensor([[out, 1.0]], dtype=torch.float16), Reference(v, v.abs(), 16),
            torch.tensor([[bound, 0.01]], dtype=torch.float64))


def _row(*shards):
    outs, refs, bounds = zip(*shards)
    return checks.tp_row_consistency(list(outs), list(refs), list(bounds), torch.float16)


def test_row_parallel_shards_overflowing_within_their_bound_are_left_out_and_counted():
    res = _row(_shard(FP16_T - 100, 100, float("inf")), _shard(-5.0, 0.1, -5.0))
    assert res.ok and res.measure["accepted_overflow"] == 1 and "1 accepted overflow" in res.summary
    # +inf and -inf, each within its own shard's bound: the all-reduce would give NaN, still left out
    res = _row(_shard(FP16_T, 1, float("inf")), _shard(-FP16_T, 1, float("-inf")))
    assert res.ok and res.measure["accepted_overflow"] == 1


def test_row_parallel_shard_infinity_outside_its_bound_fails():
    # the summed reference reaches the threshold, but the shard that overflowed did not
    res = _row(_shard(1000.0, 1, float("inf")), _shard(FP16_T, 20, 65504.0))
    assert not res.ok and res.measure["accepted_overflow"] == 0
    assert res.measure["grid"]["cells"][0][0] == NONFINITE
    # a shard NaN is never accepted, whatever the other shard did
    res = _row(_shard(FP16_T, 1, float("nan")), _shard(FP16_T, 1, float("inf")))
    assert not res.ok and res.measure["violations"] == 1
    # opposite sign
    res = _row(_shard(FP16_T, 1, float("-inf")), _shard(1.0, 1, 1.0))
    assert not res.ok


def test_a_real_overflow_bug_is_still_caught():
    """The planted Marlin fp16-epilogue bug (mutant-w4a16-fp16-epilogue: the accumulator cast to fp16
    before alpha) overflows where the true result is far below fp16's range: every such infinity
    fails, none is accepted, and the parent on the same operands passes."""
    from harness.pipeline import CLEAN
    from harness.runner import Trial, _Gemm

    problem = GemmProblem(m=4, n=32, k=1024, out_dtype="float16", in_dtype="bfloat16", distribution="normal", seed=0)
    results = {}
    for name in ("mutant-w4a16-fp16-epilogue", "triton-w4a16"):
        g = _Gemm(registry.get(name), Trial(name, "reference_agreement", problem), DEVICE)
        ops = g.ops(CLEAN)
        out = g.call(ops)[:, :ops.n]
        ref, bound = g.reference(ops)
        results[name] = (out, ref, bound, checks.reference_agreement(out, ref, bound, torch.float16))
    out, ref, bound, res = results["mutant-w4a16-fp16-epilogue"]
    inf = torch.isinf(out)
    assert inf.any() and bool((ref.value.abs() + bound)[inf].max() < FP16_T / 100)
    assert not res.ok and res.measure["accepted_overflow"] == 0
    assert res.measure["nonfinite_violations"] == int(inf.sum())
    grid = res.measure["grid"]["cells"]
    assert all(grid[i][j] == NONFINITE for i, j in torch.nonzero(inf).tolist())
    assert results["triton-w4a16"][3].ok
