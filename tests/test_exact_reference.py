"""The exact int8 reference (harness/exact_reference.py): bit for bit equal to the correctly rounded
sum (math.fsum of the exact products) and to the fp64 GEMM reference within the derived bound, on
many shapes and data kinds; it refuses operands it cannot represent exactly."""

from __future__ import annotations

import math

import pytest
import torch

from harness.data import DISTRIBUTIONS, generate
from harness.exact_reference import diagonal_error, exact_products, integer_rows
from harness.format import global_scale_encode_divisor, reference_dequantize, reference_quantize
from harness.oracle import Precision, error_bound, reference_from_dequantized, reference_gemm, reference_method
from harness.layouts import ScaleLayout
from harness.pipeline import build_gemm_operands
from harness.problem import GemmProblem

U64 = 2.0 ** -53


def _nvfp4(dist: str, rows: int, k: int, seed: int) -> torch.Tensor:
    x = generate(dist, (rows, k), seed, torch.bfloat16, "cpu")
    gs = global_scale_encode_divisor(x.float().abs().amax())
    codes, sf = reference_quantize(x, gs)
    return reference_dequantize(codes, sf, dtype=torch.float32)


def _random_bytes(rows: int, k: int, seed: int) -> torch.Tensor:
    """e2m1 codes and e4m3 scale bytes drawn over their whole ranges (the widest exponent spread)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows, k), generator=g, dtype=torch.uint8)
    sf = torch.randint(0, 0x7F, (rows, k // 16), generator=g, dtype=torch.uint8)
    return reference_dequantize(codes, sf, dtype=torch.float32)


def _fsum_reference(a: torch.Tensor, w: torch.Tensor):
    """Correctly rounded S and P per element: every product is exact in fp64 (<= 12 + 8 bits)."""
    a64, w64 = a.double().tolist(), w.double().tolist()
    s = [[math.fsum(x * y for x, y in zip(ra, rw)) for rw in w64] for ra in a64]
    p = [[math.fsum(abs(x * y) for x, y in zip(ra, rw)) for rw in w64] for ra in a64]
    return torch.tensor(s, dtype=torch.float64), torch.tensor(p, dtype=torch.float64)


SHAPES = [(1, 1, 16), (3, 5, 32), (17, 9, 48), (8, 33, 160), (5, 7, 1024), (2, 3, 4096)]


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_int8_method_is_the_correctly_rounded_sum(m, n, k, dist):
    a = _nvfp4(dist, m, k, seed=m * 7 + k)
    w = _nvfp4(dist, n, k, seed=n * 11 + k + 1)
    got = exact_products(a, w)
    assert got is not None, "NVFP4 operands must qualify for the exact method"
    s, p = got
    s_ref, p_ref = _fsum_reference(a, w)
    _assert_exact_or_within(a, w, s, p, s_ref, p_ref)


def _assert_exact_or_within(a, w, s, p, s_ref, p_ref):
    ra, rw = integer_rows(a, 6), integer_rows(w, 6)
    k = a.shape[1]
    if ra.bits + rw.bits + max(1, math.ceil(math.log2(k))) <= 62:
        assert torch.equal(s, s_ref)  # one rounding of the exact sum
        gamma = 0.0
    else:  # diagonals summed in fp64
        gamma = diagonal_error(len(ra.digits), len(rw.digits))
        assert bool(((s - s_ref).abs() <= gamma * p_ref).all())
    # P is rounded to nearest, then lifted into an upper bound
    assert bool((p >= p_ref).all()) and bool((p <= p_ref * (1 + 2.0 ** -50) * (1 + 3 * gamma)).all())


@pytest.mark.parametrize("m,n,k,seed", [(4, 6, 16, 0), (9, 5, 64, 1), (3, 17, 256, 2), (33, 2, 128, 3),
                                        (2, 3, 2048, 4), (5, 2, 8192, 5)])
def test_int8_method_over_the_whole_e4m3_range(m, n, k, seed):
    a = _random_bytes(m, k, seed)
    w = _random_bytes(n, k, seed + 100)
    got = exact_products(a, w)
    assert got is not None
    _assert_exact_or_within(a, w, *got, *_fsum_reference(a, w))


@pytest.mark.parametrize("m,n,k", [(16, 24, 2048), (7, 40, 4096), (64, 64, 512), (1, 130, 8192)])
def test_int8_method_agrees_with_fp64_gemm_within_the_derived_bound(m, n, k, monkeypatch):
    a = _nvfp4("heavy_tailed", m, k, seed=k)
    w = _nvfp4("normal", n, k, seed=k + 3)
    monkeypatch.setenv("NVFP4_REFERENCE", "int8")
    exact = reference_from_dequantized(a, w, 0.37)
    monkeypatch.setenv("NVFP4_REFERENCE", "fp64")
    fp64 = reference_from_dequantized(a, w, 0.37)
    gamma = k * U64 / (1 - k * U64)
    tol = (gamma + U64) * exact.abs_sum * (1 + 2.0 ** -40)
    assert bool(((exact.value - fp64.value).abs() <= tol).all())
    if k <= 1024:
        # products are multiples of 2^-20 below 2^23: every fp64 partial sum of <= 2^10 of them is
        # exact, so the fp64 GEMM is exact too and the two methods agree bit for bit
        assert torch.equal(exact.value, fp64.value)
    # the fp32 magnitude GEMM is an upper bound of P too, looser by at most gamma_K (fp32)
    assert bool((exact.abs_sum <= fp64.abs_sum * (1 + 2 * k * 2.0 ** -24)).all())


def test_int8_method_detects_a_one_unit_change():
    """The comparison above can fail: changing one product by its quantum changes the sum."""
    a = _nvfp4("normal", 4, 64, seed=5)
    w = _nvfp4("normal", 3, 64, seed=6)
    s0, _ = exact_products(a, w)
    a2 = a.clone()
    i = int(torch.nonzero(a2[0]).reshape(-1)[0])
    a2[0, i] = torch.nextafter(a2[0, i], torch.tensor(float("inf")))  # 24 significant bits now
    assert exact_products(a2, w) is None  # refused, not rounded
    f, e = torch.frexp(a2[0, i])
    a2[0, i] = a[0, i] + torch.ldexp(torch.tensor(1.0), e - 6) * torch.sign(a[0, i])  # still 6 bits
    s1, _ = exact_products(a2, w)
    assert not torch.equal(s0[0], s1[0]) and torch.equal(s0[1:], s1[1:])


def test_operands_outside_the_method_fall_back_to_fp64(monkeypatch):
    a = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))  # fp32: 24 significant bits
    w = _nvfp4("normal", 4, 32, seed=1)
    assert integer_rows(a, 6) is None
    assert integer_rows(torch.tensor([[float("nan"), 1.0]]), 6) is None
    monkeypatch.setenv("NVFP4_REFERENCE", "int8")
    ref = reference_from_dequantized(a, w, 1.0)
    assert torch.equal(ref.value, a.double() @ w.double().T)


def test_bf16_dense_activations_use_eight_bits(monkeypatch):
    p = GemmProblem(m=5, n=24, k=96, distribution="heavy_tailed", seed=2)
    ops = build_gemm_operands(p, a_layout=ScaleLayout.LINEAR, w_layout=ScaleLayout.SWIZZLED_128x4,
                              n_align=8, k_align=32, activation="bf16")
    monkeypatch.setenv("NVFP4_REFERENCE", "int8")
    exact = reference_gemm(ops)
    monkeypatch.setenv("NVFP4_REFERENCE", "fp64")
    fp64 = reference_gemm(ops)
    assert integer_rows(ops.a_dense[:, :p.k].float(), 8) is not None
    assert torch.equal(exact.value, fp64.value)
    b_exact = error_bound(exact, Precision(), ops.out_dtype)
    b_fp64 = error_bound(fp64, Precision(), ops.out_dtype)
    assert bool((b_exact <= b_fp64).all())


def test_method_selection(monkeypatch):
    monkeypatch.delenv("NVFP4_REFERENCE", raising=False)
    assert reference_method(8192, 8192, 8192, torch.device("cpu")) == "fp64"
    assert reference_method(8192, 8192, 8192, torch.device("cuda")) == "int8"
    assert reference_method(16, 16, 16, torch.device("cuda")) == "fp64"
    monkeypatch.setenv("NVFP4_REFERENCE", "int8")
    assert reference_method(16, 16, 16, torch.device("cpu")) == "int8"
    monkeypatch.setenv("NVFP4_REFERENCE", "fp32")
    with pytest.raises(ValueError):
        reference_method(16, 16, 16, torch.device("cpu"))


def test_row_chunks_give_the_same_result(monkeypatch):
    import harness.exact_reference as exact_reference

    a = _nvfp4("heavy_tailed", 37, 96, seed=1)
    w = _nvfp4("tiny", 29, 96, seed=2)
    whole = exact_products(a, w)
    monkeypatch.setattr(exact_reference, "ROW_CHUNK_ELEMENTS", 100)  # 1-row chunks of a and w, 3-row of out
    chunked = exact_products(a, w)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_extreme_exponents_per_row_are_exact():
    """bf16 activations far from 1 (subnormal-adjacent and huge rows) keep their own row exponent."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 64, generator=g)
    a = (base * torch.tensor([2.0 ** -125, 2.0 ** -60, 1.0, 2.0 ** 100])[:, None]).to(torch.bfloat16)
    w = _nvfp4("normal", 5, 64, seed=9)
    got = exact_products(a.float(), w, a_bits=8)
    assert got is not None
    s_ref, p_ref = _fsum_reference(a.float(), w)
    assert torch.equal(got[0], s_ref) and bool((got[1] >= p_ref).all())
    wide = torch.cat([a[:1], a[3:]], dim=1).float()  # one row spanning 2^-125 .. 2^100: refused
    assert integer_rows(wide, 8) is None
