"""The exact int8 reference on a GPU (cuBLASLt int8 GEMMs through torch._int_mm): equal to the CPU
result of the same method (itself checked against math.fsum in test_exact_reference.py) and to the
fp64 GEMM within the derived bound, at shapes up to the suite's largest (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from harness.data import generate
from harness.exact_reference import exact_products
from harness.format import global_scale_encode_divisor
from harness.kernels.nvfp4 import dequantize_from, quantize_into
from harness.layouts import ScaleLayout
from harness.oracle import reference_from_dequantized

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

U64 = 2.0 ** -53


def _nvfp4(dist: str, rows: int, k: int, seed: int) -> torch.Tensor:
    x = generate(dist, (rows, k), seed, torch.bfloat16, "cuda")
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    p, s = quantize_into(x, gs, ScaleLayout.LINEAR)
    return dequantize_from(p, s, ScaleLayout.LINEAR, rows, k)


@pytest.mark.parametrize("m,n,k", [(1, 16, 16), (7, 24, 48), (17, 40, 1024), (33, 8, 4096)])
@pytest.mark.parametrize("dist", ["normal", "heavy_tailed", "tiny", "zero_blocks"])
def test_gpu_equals_cpu_bit_for_bit(m, n, k, dist):
    a = _nvfp4(dist, m, k, seed=m + k)
    w = _nvfp4(dist, n, k, seed=n + k + 1)
    gpu = exact_products(a, w)
    cpu = exact_products(a.cpu(), w.cpu())
    assert gpu is not None and cpu is not None
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])


@pytest.mark.parametrize("m,n,k", [(256, 4096, 4096), (1100, 1536, 1536), (2048, 2048, 8192)])
def test_gpu_int8_agrees_with_fp64_gemm(m, n, k, monkeypatch):
    a = _nvfp4("normal", m, k, seed=1)
    w = _nvfp4("heavy_tailed", n, k, seed=2)
    monkeypatch.setenv("NVFP4_REFERENCE", "int8")
    exact = reference_from_dequantized(a, w, 0.37)
    monkeypatch.setenv("NVFP4_REFERENCE", "fp64")
    fp64 = reference_from_dequantized(a, w, 0.37)
    gamma = k * U64 / (1 - k * U64)
    assert bool(((exact.value - fp64.value).abs() <= (gamma + U64) * exact.abs_sum * (1 + 2.0 ** -40)).all())
    assert bool((exact.abs_sum <= fp64.abs_sum * (1 + 2 * k * 2.0 ** -24)).all())
