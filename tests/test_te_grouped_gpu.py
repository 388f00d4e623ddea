"""TransformerEngine's grouped NVFP4 quantize adapters on a GPU (skipped without one, or without TE).

Wherever TE is installed: its installed ``NVFP4Quantizer`` takes the prepared keyword arguments and
gives the scale-buffer shapes the conversions assume.  Where TE's own ``is_nvfp4_available`` holds:
the adapters pass every grouped property on split patterns that take each of ``split_quantize``'s
paths (the fused RHT kernel on 128-aligned splits with K % 128 == 0, the separate grouped kernels on
uneven splits, the split-by-split fallback for K % 128 != 0; zero-token experts first, middle and
last), the grouped call equals TE's own per-split quantize byte for byte, rowwise and columnwise,
through the harness's conversions, and TE's RHT columnwise casts, dequantized and transformed back
with the quantizer's own RHT matrix, are within the harness's derived round-trip bound of the
tokens.  Elsewhere the adapters skip with TE's reason.
"""

from __future__ import annotations

import pytest
import torch

from harness.backends import te_grouped as T
from harness.grouped import registry
from harness.grouped.checks import execute
from harness.grouped.pipeline import build_grouped_operands
from harness.grouped.problem import GROUPED_PROPERTIES, GroupedPoison, GroupedProblem, GroupedTrial

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
te = pytest.importorskip("transformer_engine.pytorch", reason="transformer_engine is not installed")

NAMES = ["grouped-te-split-quantize", "grouped-te-split-quantize-rht"]
CASES = {
    # splits, row_align, K
    "fused: 128-aligned, zero middle": ([128, 0, 256, 128], (128,) * 4, 256),
    "grouped kernels: uneven, zero first": ([0, 40, 30, 50], (16, 64, 16, 128), 128),
    "split by split: K % 128 != 0, zero last": ([33, 7, 38, 0], (16, 16, 64, 16), 80),
}


def _available() -> tuple[bool, str]:
    ok, reason = te.is_nvfp4_available(return_reason=True)
    return bool(ok), reason


def _problem(case: str, **kw) -> GroupedProblem:
    splits, row_align, k = CASES[case]
    return GroupedProblem.from_splits(splits, 2, n=192, k=k, seed=9, row_align=row_align, **kw)


@pytest.mark.parametrize("rows,k", [(0, 64), (17, 80), (128, 256), (300, 512)])
def test_scale_shapes_are_the_installed_quantizers(rows, k):
    q = te.NVFP4Quantizer()
    for columnwise in (False, True):
        assert tuple(q.get_scale_shape((rows, k), columnwise)) == T.te_scale_shape(rows, k, columnwise)


@pytest.mark.parametrize("name", NAMES)
def test_the_installed_quantizer_takes_the_prepared_arguments(name):
    call = registry.get(name).prepare(build_grouped_operands(_problem(list(CASES)[1]), device="cuda"))
    q = te.NVFP4Quantizer(**call.quantizer_kwargs)
    assert q.rowwise_usage and q.with_rht == call.quantizer_kwargs["with_rht"]


@pytest.mark.parametrize("name", NAMES)
def test_below_tes_own_gate_the_adapters_skip_with_its_reason(name):
    ok, reason = _available()
    if ok:
        pytest.skip("TE's is_nvfp4_available() holds on this GPU")
    out = execute(GroupedTrial(name, "grouped_bytes", _problem(list(CASES)[0])), torch.device("cuda"))
    assert out.status == "skip" and reason in out.reason


@pytest.mark.parametrize("prop", GROUPED_PROPERTIES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", NAMES)
def test_the_adapters_pass_every_grouped_property(name, case, prop):
    ok, reason = _available()
    if not ok:
        pytest.skip(f"TE's is_nvfp4_available() is False here: {reason}")
    poison = GroupedPoison(group_row_pad=0x7F, n_pad=0x7F, victim=2 if prop == "token_isolation" else None)
    out = execute(GroupedTrial(name, prop, _problem(case), poison), torch.device("cuda"))
    assert out.status in ("pass", "skip"), out.reason
    if out.status == "skip":  # only a property that does not apply to the case
        assert out.reason.startswith("not applicable"), out.reason


@pytest.mark.parametrize("case", list(CASES))
def test_the_grouped_call_equals_tes_per_split_quantize(case):
    ok, reason = _available()
    if not ok:
        pytest.skip(f"TE's is_nvfp4_available() is False here: {reason}")
    b = registry.get("grouped-te-split-quantize-rht")
    call = b.prepare(build_grouped_operands(_problem(case), device="cuda"))
    grouped = b.call(call)
    single, off = [], 0
    for r in call.split_sections:
        if r == 0:
            single.append(T.TeSplitOutput(0, call.tensor.shape[1]))
            continue
        q = te.NVFP4Quantizer(**call.quantizer_kwargs)
        single.append(T.TeSplitOutput.from_storage(q(call.tensor[off:off + r]), r, call.tensor.shape[1]))
        off += r
    g1, g2 = b.convert(call, grouped), b.convert(call, single)
    assert torch.equal(g1.packed, g2.packed) and torch.equal(g1.scales, g2.scales)
    assert torch.equal(g1.global_scales, g2.global_scales)
    gs1 = T.global_scales_from_amax(grouped, tuple(call.split_sections), columnwise=True)
    gs2 = T.global_scales_from_amax(single, tuple(call.split_sections), columnwise=True)
    for c1, c2 in zip(T.columnwise_to_harness(grouped, gs1), T.columnwise_to_harness(single, gs2)):
        assert (c1 is None) == (c2 is None)
        if c1 is not None:
            assert torch.equal(c1["codes"], c2["codes"]) and torch.equal(c1["scales"], c2["scales"])
            assert c1["global_scale"] == c2["global_scale"]
    print(f"{case}: splits {call.split_sections}, swizzled scales {[o.swizzled for o in grouped]}")


@pytest.mark.parametrize("case", list(CASES))
def test_rht_columnwise_casts_round_trip_within_the_derived_bound(case):
    """The bound: :func:`harness.backends.te_grouped.rht_columnwise_round_trip`."""
    ok, reason = _available()
    if not ok:
        pytest.skip(f"TE's is_nvfp4_available() is False here: {reason}")
    b = registry.get("grouped-te-split-quantize-rht")
    call = b.prepare(build_grouped_operands(_problem(case), device="cuda"))
    outs = b.call(call)
    cols = T.columnwise_to_harness(outs, T.global_scales_from_amax(outs, tuple(call.split_sections), columnwise=True))
    m = te.NVFP4Quantizer(**call.quantizer_kwargs).rht_matrix.double().cpu()  # the quantizer's own, observed
    assert m.shape == (16, 16) and torch.equal(m @ m.T, torch.eye(16, dtype=torch.float64))
    assert bool((m.abs() == 0.25).all())
    off = 0
    for c, r in zip(cols, call.split_sections):
        if r == 0:
            assert c is None
            continue
        err, bound = T.rht_columnwise_round_trip(call.tensor[off:off + r].T, c, m)
        off += r
        assert bool((err <= bound).all()), f"split of {r} rows: max error/bound {float((err / bound).max()):.3g}"
