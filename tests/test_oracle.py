"""The reference and its error bound: exact on what it must be exact on, sound for fp32
accumulation in any order, tight enough to catch one-ulp-scale corruption, blind to padding."""

from __future__ import annotations

import torch

from harness.backends.protocol import Precision
from harness.layouts import ScaleLayout
from harness.oracle import compare, error_bound, reference_from_dequantized, reference_gemm
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
    assert compare(out, ref, bound, torch.float16).ok
    assert not compare(-out, ref, bound, torch.float16).ok


def test_rounded_operand_backends_get_a_wider_but_derived_bound():
    ops = _ops()
    ref = reference_gemm(ops)
    exact = error_bound(ref, Precision(), torch.bfloat16)
    rounded = error_bound(ref, Precision(operand_bits=8), torch.bfloat16)
    assert (rounded > exact).all()
