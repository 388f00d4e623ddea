"""Each verdict of harness/checks.py on small hand-built tensors: passing and failing inputs, edges;
then how the properties judge infinities (the oracle's overflow rule) and what their grids show.

CPU only and fast.  The mutants prove the verdicts end to end (tests/test_mutants.py); these pin
each function's own contract, so a broken check that no mutant reaches still fails a test.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness import checks
from harness.backends import registry
from harness.format import (block_scale_and_inverse, global_scale_encode_divisor, pack_e2m1,
                            reference_quantize)
from harness.layouts import Region, ScaleLayout
from harness.oracle import Precision, Reference, error_bound, overflow_threshold, reference_gemm
from harness.pipeline import build_gemm_operands
from harness.problem import GemmProblem
from harness.trial import ACCEPTED, CHANGED, NONFINITE, OK, PADDING, PROPERTIES

BF16 = torch.bfloat16


def _ref(value: torch.Tensor, k: int = 16) -> tuple[Reference, torch.Tensor]:
    v = value.double()
    ref = Reference(v, v.abs(), k)
    return ref, error_bound(ref, Precision(), BF16)


def _out(m: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed)).to(BF16)


def test_every_verdict_names_its_property() -> None:
    z = torch.zeros(2, 2, dtype=BF16)
    ref, bound = _ref(z.double())
    results = [checks.reference_agreement(z, ref, bound, BF16), checks.row_isolation(z, z, 2, 2),
               checks.column_isolation(z, z, 2, 2), checks.k_tail(z, z, 2, 2, "nan", True),
               checks.output_coverage(z, 2, 2, torch.ones(2, 2, dtype=torch.bool)), checks.determinism(z, z),
               checks.clean_rejection(ValueError("no"), None, "m"), checks.tp_column_consistency(z, [z], 2),
               checks.batch_invariance(z, z, 2), checks.input_isolation(z, z, 0, "nan", True),
               checks.graph_replay(z, z, 2, 2),
               checks.layout_invariance({"out": (z, z)}, {"input_layout": "column_slice"}),
               checks.empty_batch({"out": ((0, 2), (0, 2))}, {})]
    one = torch.ones(1)
    results.append(checks.partition_isolation([("weight_scale_2", one, one)], [results[0]], (2,), False, 0, "zero"))
    assert {r.property for r in results} | {"quantizer_agreement", "checkpoint_convention"} == set(PROPERTIES)


# ----------------------------------------------------------------------------------------------
# reference agreement
# ----------------------------------------------------------------------------------------------

def test_reference_agreement_passes_the_rounded_exact_product() -> None:
    exact = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref, bound = _ref(exact)
    res = checks.reference_agreement(exact.to(BF16), ref, bound, BF16)
    assert res.ok and res.measure["violations"] == 0 and res.measure["max_err_units"] <= 1


def test_reference_agreement_fails_one_element_outside_the_bound_and_locates_it() -> None:
    exact = torch.ones(4, 8, dtype=torch.float64)
    ref, bound = _ref(exact)
    out = exact.to(BF16).clone()
    out[2, 5] = 1.5
    res = checks.reference_agreement(out, ref, bound, BF16, padded_shape=(8, 16))
    assert not res.ok
    m = res.measure
    assert m["violations"] == 1 and m["argmax"] == [2, 5] and m["changed_rows"] == [2] and m["changed_cols"] == [5]
    assert m["nan_rows"] == [] and m["max_err_units"] > 1
    grid = m["grid"]
    assert (grid["rows"], grid["cols"], grid["real_rows"], grid["real_cols"]) == (8, 16, 4, 8)
    assert grid["cells"][2][5] == CHANGED and grid["cells"][0][0] == OK and grid["cells"][7][15] == PADDING


def test_reference_agreement_fails_nan_and_reports_its_rows() -> None:
    exact = torch.ones(3, 4, dtype=torch.float64)
    ref, bound = _ref(exact)
    out = exact.to(BF16).clone()
    out[1, 0] = float("nan")
    res = checks.reference_agreement(out, ref, bound, BF16)
    assert not res.ok and res.measure["nan_rows"] == [1] and math.isinf(res.measure["max_err_units"])
    assert res.measure["grid"]["cells"][1][0] == NONFINITE


def test_reference_agreement_accepts_infinity_where_the_exact_value_overflows_the_dtype() -> None:
    big = torch.full((1, 2), 2 * overflow_threshold(BF16), dtype=torch.float64)
    ref, bound = _ref(big)
    assert checks.reference_agreement(torch.full((1, 2), float("inf"), dtype=BF16), ref, bound, BF16).ok
    assert not checks.reference_agreement(torch.full((1, 2), float("-inf"), dtype=BF16), ref, bound, BF16).ok


def test_reference_agreement_reads_only_the_real_region() -> None:
    exact = torch.ones(2, 3, dtype=torch.float64)
    ref, bound = _ref(exact)
    out = torch.full((4, 8), float("nan"), dtype=BF16)  # padding rows and columns hold garbage
    out[:2, :3] = 1
    assert checks.reference_agreement(out, ref, bound, BF16).ok


# ----------------------------------------------------------------------------------------------
# isolation
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, region", [(checks.row_isolation, "m_pad"), (checks.column_isolation, "n_pad")])
def test_isolation_passes_when_only_padding_changes(fn, region) -> None:
    clean = _out(6, 8)
    dirty = clean.clone()
    dirty[4:, :] = float("nan")  # padding rows (m=4)
    dirty[:, 5:] = float("nan")  # padding columns (n=5)
    res = fn(clean, dirty, 4, 5, region, "nan")
    assert res.ok and res.measure["region"] == region and res.measure["changed_elements"] == 0


def test_row_isolation_fails_a_changed_real_row_and_names_it() -> None:
    clean = _out(6, 8)
    dirty = clean.clone()
    dirty[1, 2] = float("nan")
    dirty[3, 0] = dirty[3, 0] * 2
    res = checks.row_isolation(clean, dirty, 4, 5, "m_pad", "nan")
    assert not res.ok
    assert res.measure["changed_rows"] == [1, 3] and res.measure["nan_rows"] == [1]
    assert res.measure["changed_elements"] == 2 and math.isinf(res.measure["max_change"])
    assert res.measure["grid"]["cells"][1][2] == NONFINITE and res.measure["grid"]["cells"][3][0] == CHANGED
    assert "2 real rows changed when m_pad was poisoned (nan)" in res.summary


def test_column_isolation_counts_columns_not_rows() -> None:
    clean = _out(4, 8)
    dirty = clean.clone()
    dirty[:, 1] = dirty[:, 1] + 1
    res = checks.column_isolation(clean, dirty, 4, 5, "n_pad", "max")
    assert not res.ok and res.measure["changed_cols"] == [1] and res.measure["changed_rows"] == [0, 1, 2, 3]
    assert res.summary.startswith("1 real columns changed")


def test_isolation_is_bitwise_a_negative_zero_counts_as_a_change() -> None:
    clean = torch.zeros(2, 2, dtype=BF16)
    dirty = clean.clone()
    dirty[0, 0] = -0.0
    assert not checks.row_isolation(clean, dirty, 2, 2).ok


def test_isolation_accepts_an_infinity_the_clean_run_had_too() -> None:
    clean = torch.tensor([[float("inf"), 1.0]], dtype=torch.float16)
    assert checks.row_isolation(clean, clean.clone(), 1, 2).ok


# ----------------------------------------------------------------------------------------------
# K tail
# ----------------------------------------------------------------------------------------------

def test_k_tail_classifies_and_never_fails() -> None:
    clean = _out(3, 4)
    dirty = clean.clone()
    dirty[2, 1] = float("nan")
    masks = checks.k_tail(clean, clean.clone(), 3, 4, "nan", has_tail=True)
    needs = checks.k_tail(clean, dirty, 3, 4, "nan", has_tail=True)
    none = checks.k_tail(clean, dirty, 3, 4, "nan", has_tail=False)
    assert [r.measure["classification"] for r in (masks, needs, none)] == ["masks_tail", "needs_zeroed_tail", "no_tail"]
    assert all(r.ok for r in (masks, needs, none))
    assert needs.measure["changed_rows"] == [2] and masks.measure["changed_rows"] == []


def test_pipeline_zeroes_k_tail_finds_a_nonzero_tail_byte() -> None:
    regions = torch.full((2, 4), int(Region.REAL), dtype=torch.int8)
    regions[:, 3] = int(Region.K_TAIL)
    regions[1, :] = int(Region.M_PAD)  # padding rows may hold anything
    scales = torch.full((2, 4), 0x38, dtype=torch.uint8)
    scales[0, 3] = 0
    assert checks.pipeline_zeroes_k_tail(scales, regions).ok
    scales[0, 3] = 0x7F
    res = checks.pipeline_zeroes_k_tail(scales, regions)
    assert not res.ok and res.measure["nonzero_tail_bytes"] == 1


# ----------------------------------------------------------------------------------------------
# output coverage, determinism, batch invariance
# ----------------------------------------------------------------------------------------------

def test_output_coverage_fails_unwritten_real_elements_only_where_the_reference_is_finite() -> None:
    out = torch.ones(4, 8, dtype=BF16)
    out[2:, 6:] = float("nan")     # padding rows/columns (m=2, n=6): not the backend's to write
    finite = torch.ones(2, 6, dtype=torch.bool)
    assert checks.output_coverage(out, 2, 6, finite).ok
    out[1, 3] = float("nan")
    res = checks.output_coverage(out, 2, 6, finite)
    assert not res.ok and res.measure["nan_rows"] == [1] and res.measure["grid"]["cells"][1][3] == NONFINITE
    finite[1, 3] = False           # the exact result is NaN there too: NaN is the right answer
    assert checks.output_coverage(out, 2, 6, finite).ok


def test_determinism_compares_bits() -> None:
    a = _out(3, 4)
    a[0, 0] = float("nan")
    assert checks.determinism(a, a.clone()).ok  # the same NaN bits twice are deterministic
    b = a.clone()
    b.view(torch.int16)[2, 3] ^= 1  # one ulp
    res = checks.determinism(a, b)
    assert not res.ok and res.measure == {"changed_rows": [2], "changed_elements": 1}


def test_determinism_handles_three_dimensional_outputs() -> None:
    a = _out(6, 4).reshape(2, 3, 4)
    b = a.clone()
    b[1, 2, 0] += 1
    assert checks.determinism(a, b).measure["changed_rows"] == [5]


def test_batch_invariance_is_reported_not_failed() -> None:
    small = _out(2, 4)
    large = torch.cat([small, _out(3, 4, seed=1)])
    same = checks.batch_invariance(small, large, 2)
    large[1, 0] += 1
    differs = checks.batch_invariance(small, large, 2)
    assert same.ok and same.measure["invariant"] is True
    assert differs.ok and differs.measure == {"invariant": False, "changed_rows": [1]}


# ----------------------------------------------------------------------------------------------
# clean rejection
# ----------------------------------------------------------------------------------------------

def test_clean_rejection_verdicts() -> None:
    good = checks.PropertyResult("reference_agreement", True, "ok", {"max_err_units": 0.1})
    bad = checks.PropertyResult("reference_agreement", False, "3 outputs outside", {"max_err_units": 9.0})
    assert checks.clean_rejection(ValueError("k must be a multiple of 64"), None, "k").ok
    empty = checks.clean_rejection(RuntimeError(""), None, "k")
    assert not empty.ok and "empty message" in empty.summary
    accepted = checks.clean_rejection(None, good, "m=300 > m_max=256")
    assert accepted.ok and accepted.measure["outside"] == "m=300 > m_max=256"
    garbage = checks.clean_rejection(None, bad, "n")
    assert not garbage.ok and garbage.measure["max_err_units"] == 9.0 and "garbage" in garbage.summary


# ----------------------------------------------------------------------------------------------
# TP consistency
# ----------------------------------------------------------------------------------------------

def test_tp_column_consistency_bitwise() -> None:
    full = _out(3, 8)
    shards = [full[:, :4].clone(), full[:, 4:].clone()]
    assert checks.tp_column_consistency(full, shards, 3).ok
    shards[1][2, 1] += 1
    res = checks.tp_column_consistency(full, shards, 3)
    assert not res.ok and res.measure["changed_cols"] == [5] and res.measure["changed_rows"] == [2]


def test_tp_column_consistency_without_bitwise_promise_follows_the_agreement() -> None:
    full = _out(3, 8)
    shards = [full[:, :4].clone(), full[:, 4:].clone()]
    shards[0][0, 0] += 1
    good = checks.PropertyResult("reference_agreement", True, "max error 0.2 x bound", {"max_err_units": 0.2})
    bad = checks.PropertyResult("reference_agreement", False, "1 outside", {"max_err_units": 3.0})
    ok = checks.tp_column_consistency(full, shards, 3, bitwise=False, agreement=good)
    assert ok.ok and ok.measure["bit_differences"] == 1
    assert not checks.tp_column_consistency(full, shards, 3, bitwise=False, agreement=bad).ok


def test_tp_row_consistency_sums_shards_against_summed_references() -> None:
    parts = [torch.full((2, 3), 0.5, dtype=torch.float64), torch.full((2, 3), 0.25, dtype=torch.float64)]
    refs, bounds = zip(*(_ref(p) for p in parts))
    outs = [p.to(BF16) for p in parts]
    assert checks.tp_row_consistency(outs, list(refs), list(bounds), BF16).ok
    outs[1] = outs[1].clone()
    outs[1][1, 2] = 1.0
    res = checks.tp_row_consistency(outs, list(refs), list(bounds), BF16)
    assert not res.ok and res.measure["shards"] == 2


def test_tp_row_consistency_skips_elements_where_a_shard_overflows() -> None:
    huge = torch.full((1, 2), 2 * overflow_threshold(BF16), dtype=torch.float64)
    parts = [huge, -huge]
    refs, bounds = zip(*(_ref(p) for p in parts))
    outs = [torch.full((1, 2), float("inf"), dtype=BF16), torch.full((1, 2), float("-inf"), dtype=BF16)]
    res = checks.tp_row_consistency(outs, list(refs), list(bounds), BF16)  # inf + -inf would be NaN
    assert res.ok and res.measure["accepted_overflow"] == 2


# ----------------------------------------------------------------------------------------------
# quantizer agreement
# ----------------------------------------------------------------------------------------------

def _quantized(x: torch.Tensor):
    m, k = x.shape
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    codes, sf = reference_quantize(x, gs)
    xf = x.float().reshape(m, k // 16, 16)
    _, inv = block_scale_and_inverse(xf.abs().amax(-1), gs)
    scaled = (xf * inv.unsqueeze(-1)).reshape(m, k)
    return codes, sf, scaled, (gs * xf.abs().amax(-1)) / 6.0


def test_quantizer_agreement_passes_the_reference_bytes_and_fails_a_changed_code() -> None:
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    codes, sf, scaled, pre = _quantized(x)
    assert checks.quantizer_agreement(pack_e2m1(codes), sf.clone(), codes, sf, scaled, (), pre).ok
    bad = codes.clone()
    bad[2, 5] = (bad[2, 5] & 8) | ((bad[2, 5] & 7) + 3) % 8  # three steps away: no tie explains it
    res = checks.quantizer_agreement(pack_e2m1(bad), sf.clone(), codes, sf, scaled, (), pre)
    assert not res.ok and res.measure["code_mismatches"] == 1 and res.measure["changed_rows"] == [2]


def test_quantizer_agreement_fails_a_changed_scale_byte() -> None:
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(4))
    codes, sf, scaled, pre = _quantized(x)
    other = sf.clone()
    other[1, 1] = other[1, 1] + 5
    res = checks.quantizer_agreement(pack_e2m1(codes), other, codes, sf, scaled, (), pre)
    assert not res.ok and res.measure["scale_mismatches"] == 1


def test_quantizer_agreement_accepts_the_sign_of_zero() -> None:
    x = torch.randn(1, 16, generator=torch.Generator().manual_seed(5))
    x[0, 3] = 0.0
    codes, sf, scaled, pre = _quantized(x)
    assert codes[0, 3] == 0
    neg = codes.clone()
    neg[0, 3] = 8  # -0
    res = checks.quantizer_agreement(pack_e2m1(neg), sf.clone(), codes, sf, scaled, (), pre)
    assert res.ok and res.measure["negative_zero_differences"] == 1


def test_quantizer_agreement_subnormal_scale_floor_only_when_declared() -> None:
    x = torch.randn(1, 32, generator=torch.Generator().manual_seed(6)) * 100
    x[0, 16:] = 1e-6  # a block whose e4m3 scale is far below 2^-6
    codes, sf, scaled, pre = _quantized(x)
    assert sf[0, 1] < 0x08
    floored = sf.clone()
    floored[0, 1] = 0x08
    undeclared = checks.quantizer_agreement(pack_e2m1(codes), floored, codes, sf, scaled, (), pre)
    declared = checks.quantizer_agreement(pack_e2m1(codes), floored, codes, sf, scaled,
                                          ("subnormal_scale_floor",), pre)
    assert not undeclared.ok
    assert declared.ok and declared.measure["declared_scale_floor"] == 1


# ----------------------------------------------------------------------------------------------
# the output picture
# ----------------------------------------------------------------------------------------------

def test_status_grid_keeps_the_worst_code_of_each_bin() -> None:
    status = torch.full((130, 130), PADDING, dtype=torch.int8)
    status[:100, :100] = OK
    status[5, 7] = CHANGED
    status[5, 6] = NONFINITE
    g = checks.status_grid(status, 100, 100)
    assert (g["row_step"], g["col_step"]) == (3, 3) and len(g["cells"]) == 44 and len(g["cells"][0]) == 44
    assert g["cells"][1][2] == NONFINITE            # rows 3-5, cols 6-8: NaN beats the change next to it
    assert g["cells"][0][0] == OK and g["cells"][43][43] == PADDING
    assert g["cells"][33][33] == OK                 # rows 99-101 mix real and padding: real wins


def test_status_grid_small_outputs_are_not_downsampled() -> None:
    status = torch.tensor([[OK, CHANGED], [PADDING, PADDING]], dtype=torch.int8)
    g = checks.status_grid(status, 1, 2)
    assert g["cells"] == [[OK, CHANGED], [PADDING, PADDING]] and (g["row_step"], g["col_step"]) == (1, 1)


# ----------------------------------------------------------------------------------------------
# overflow: infinities judged by the oracle's rule, and shown in the grids
# ----------------------------------------------------------------------------------------------

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
    from harness.experiments.gemm import GemmExperiment
    from harness.problem import CLEAN
    from harness.trial import Trial

    problem = GemmProblem(m=4, n=32, k=1024, out_dtype="float16", in_dtype="bfloat16", distribution="normal", seed=0)
    results = {}
    for name in ("mutant-w4a16-fp16-epilogue", "triton-w4a16"):
        g = GemmExperiment(registry.get(name), Trial(name, "reference_agreement", problem), DEVICE)
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
