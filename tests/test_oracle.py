"""The reference and its error bound: exact on what it must be exact on, sound for fp32
accumulation in any order, tight enough to catch one-ulp-scale corruption, blind to padding."""

from __future__ import annotations

import pytest
import torch

from harness.backends.protocol import Precision
from harness.layouts import ScaleLayout
from harness.oracle import (Reference, compare, error_bound, overflow_threshold, reference_from_dequantized,
                           reference_gemm)
from harness.pipeline import build_gemm_operands
from harness.problem import GemmProblem, Poison


def _ops(poison=Poison(), **kw):
    p = GemmProblem(m=9, n=24, k=464, distribution=kw.pop("distribution", "heavy_tailed"), seed=4)
    return build_gemm_operands(p, a_layout=ScaleLayout.SWIZZLED_8x4, w_layout=ScaleLayout.SWIZZLED_128x4,
                               n_align=32, k_align=32, poison=poison, **kw)


def test_reference_never_reads_padding():
    clean = reference_gemm(_ops())
    dirty = reference_gemm(_ops(Poison(m_pad=0x7F, n_pad=0xFF, k_tail=0x7F, data=0xFF)))
    assert torch.equal(clean.value, dirty.value) and torch.isfinite(clean.value).all()


def test_fp32_accumulation_in_any_order_is_within_the_bound():
    ops = _ops()
    a = ops.a.dequantize().double()
    w = ops.w.dequantize().double()
    ref = reference_gemm(ops)
    bound = error_bound(ref, Precision(), torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        perm = torch.randperm(a.shape[1], generator=g)
        prods = (a[:, None, perm] * w[None, :, perm]).float()  # exact products in fp32
        acc = torch.zeros(prods.shape[:2], dtype=torch.float32)
        for j in range(prods.shape[2]):  # sequential fp32 sum, random order
            acc = acc + prods[:, :, j]
        out = (acc * ops.alpha.float()).to(torch.bfloat16)
        agr = compare(out, ref, bound, torch.bfloat16)
        assert agr.ok, agr.max_err_units


def test_the_bound_catches_small_corruption():
    ops = _ops(distribution="normal")
    ref = reference_gemm(ops)
    bound = error_bound(ref, Precision(), torch.bfloat16)
    out = ref.value.to(torch.bfloat16)
    assert compare(out, ref, bound, torch.bfloat16).ok
    bumped = out.clone()
    bumped[3, 5] = bumped[3, 5] * (1 + 2 ** -5)  # 4 bf16 ulps on one element
    agr = compare(bumped, ref, bound, torch.bfloat16)
    assert not agr.ok and agr.argmax == (3, 5) and agr.violations == 1
    nan = out.clone()
    nan[7, :] = float("nan")
    agr = compare(nan, ref, bound, torch.bfloat16)
    assert agr.nan_rows == [7] and agr.max_err_units == float("inf")


def test_overflow_to_infinity_is_accepted_only_where_the_exact_value_overflows():
    a = torch.full((1, 16), 448.0 * 6)
    w = torch.full((2, 16), 448.0 * 6)
    ref = reference_from_dequantized(a, w, 1.0)
    bound = error_bound(ref, Precision(), torch.float16)
    out = torch.tensor([[float("inf"), float("inf")]], dtype=torch.float16)
    agr = compare(out, ref, bound, torch.float16)
    assert agr.ok and agr.accepted_overflow == 2
    assert not compare(-out, ref, bound, torch.float16).ok


# ---- overflow: where reference + bound reaches the overflow threshold T = M + ulp(M)/2 ----------
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _ulp_at_max(dtype: torch.dtype) -> float:
    fmax = torch.tensor(torch.finfo(dtype).max, dtype=dtype)
    return float(fmax.double() - torch.nextafter(fmax, torch.zeros_like(fmax)).double())


@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=str)
def test_overflow_threshold_is_where_a_round_to_nearest_cast_overflows(dtype):
    """T is observed, not assumed: the cast backends use (from fp32; fp32 itself from fp64) gives
    infinity at T and the largest finite value just below it, for both signs."""
    t = overflow_threshold(dtype)
    assert t == torch.finfo(dtype).max + _ulp_at_max(dtype) / 2
    src = torch.float64 if dtype == torch.float32 else torch.float32
    at = torch.tensor([t, -t], dtype=src)
    assert float(at[0]) == t  # T is exact in the source format
    below = torch.nextafter(at, torch.zeros_like(at))
    assert at.to(dtype).tolist() == [float("inf"), float("-inf")]
    assert below.to(dtype).double().tolist() == [torch.finfo(dtype).max, -torch.finfo(dtype).max]


def _one(value: float) -> Reference:
    v = torch.tensor([[value]], dtype=torch.float64)
    return Reference(v, v.abs(), 1)


def _judge(out: float, ref: float, bound: float, dtype: torch.dtype, **kw):
    r = _one(ref)
    return compare(torch.tensor([[out]], dtype=dtype), r, torch.tensor([[bound]], dtype=torch.float64), dtype, **kw)


@pytest.mark.parametrize("sign", (1.0, -1.0), ids=("positive", "negative"))
@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=str)
def test_an_infinity_is_within_the_bound_exactly_where_reference_plus_bound_reaches_the_threshold(dtype, sign):
    t = overflow_threshold(dtype)
    b = t * 2.0 ** -6                       # wider than one ulp of every dtype (exact in fp64)
    at = t - b                              # |ref| + bound == T exactly
    at64 = torch.tensor(at, dtype=torch.float64)
    below64 = float(torch.nextafter(at64, torch.tensor(0.0, dtype=torch.float64)))
    above64 = float(torch.nextafter(at64, torch.tensor(float("inf"), dtype=torch.float64)))
    ulp_out = _ulp_at_max(dtype)
    inf = sign * float("inf")
    cases = {                                               # |ref| -> accepted?
        "at the boundary": (at, True),
        "one fp64 ulp above": (above64, True),
        "one fp64 ulp below": (below64, False),
        f"one {dtype} ulp above": (at + ulp_out, True),
        f"one {dtype} ulp below": (at - ulp_out, False),
        "far below (a real overflow bug)": (t / 1024, False),
    }
    for name, (mag, accepted) in cases.items():
        agr = _judge(inf, sign * mag, b, dtype)
        assert agr.ok is accepted, name
        assert agr.accepted_overflow == int(accepted) and agr.violations == int(not accepted), name
        if not accepted:
            assert agr.nan_rows == [0] and agr.max_err_units == float("inf") and bool(agr.bad[0, 0]), name
    # the opposite sign only where the bound spans the whole way to -T (|ref| + T <= bound), as a
    # finite result of the opposite sign would be within it; NaN never
    assert not _judge(-inf, sign * at, b, dtype).ok
    assert not _judge(-inf, sign * t / 4, t, dtype).ok                   # T/4 - T > -T: out of reach
    assert _judge(-inf, sign * t / 4, 1.25 * t, dtype).ok                # T/4 - 1.25 T == -T: reachable
    assert _judge(-sign * torch.finfo(dtype).max, sign * t / 4, 1.25 * t, dtype).ok   # as the finite value
    assert _judge(-inf, sign * 1.0, 4 * t, dtype).ok
    assert _judge(inf, sign * 1.0, 4 * t, dtype).ok
    assert not _judge(float("nan"), sign * at, b, dtype).ok
    assert not _judge(float("nan"), 0.0, 4 * t, dtype).ok
    assert _judge(inf, 0.0, 4 * t, dtype).ok and _judge(-inf, 0.0, 4 * t, dtype).ok
    assert not _judge(inf, 0.0, t / 2, dtype).ok
    # a finite result next to the threshold is compared as any other value
    fmax = sign * torch.finfo(dtype).max
    assert _judge(fmax, sign * at, b, dtype).ok and _judge(fmax, sign * at, b, dtype).accepted_overflow == 0


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_a_bias_added_after_the_cast_can_follow_an_overflowed_product(dtype):
    """linear layers add the bias in the output dtype after the cast: the product's cast overflows
    first (inf + bias = inf) although reference + bias + bound stays below T."""
    t = overflow_threshold(dtype)
    product = torch.tensor([[t]], dtype=torch.float32)
    bias = torch.tensor([-4 * _ulp_at_max(dtype)], dtype=dtype)
    out = product.to(dtype) + bias.reshape(1, 1)            # what the backend computes
    assert torch.isinf(out).all()
    value = product.double() + bias.double()
    ref = Reference(value, product.double().abs(), 1, bias)
    bound = torch.tensor([[_ulp_at_max(dtype)]], dtype=torch.float64)
    assert not compare(out, ref, bound, dtype).ok
    agr = compare(out, ref, bound, dtype, bias_in_out_dtype=True)
    assert agr.ok and agr.accepted_overflow == 1


def test_rounded_operand_backends_get_a_wider_but_derived_bound():
    ops = _ops()
    ref = reference_gemm(ops)
    exact = error_bound(ref, Precision(), torch.bfloat16)
    rounded = error_bound(ref, Precision(operand_bits=8), torch.bfloat16)
    assert (rounded > exact).all()


def test_tf32_off_restores_torchs_setting_even_when_the_block_raises():
    """The exact reference's |a||w| sum and the W4A16 emulation multiply in fp32 with TF32 off; the
    process-wide flag is given back as it was (a CPU build of torch has it too)."""
    from harness.torch_modes import tf32_off

    mm = torch.backends.cuda.matmul
    original = mm.allow_tf32
    try:
        for start in (True, False):
            mm.allow_tf32 = start
            with tf32_off():
                assert mm.allow_tf32 is False
            assert mm.allow_tf32 is start
            with pytest.raises(ValueError, match="inside"):
                with tf32_off():
                    raise ValueError("raised inside the block")
            assert mm.allow_tf32 is start
    finally:
        mm.allow_tf32 = original
