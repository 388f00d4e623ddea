"""The reference quantizer rounds alike on every device.

PyTorch's CUDA division by a Python number multiplies by the reciprocal (ATen
``native/cuda/BinaryDivTrueKernel.cu``), which differs by one ulp from a true division for some
inputs.  In the reference quantizer that flipped block scales and e2m1 codes on the GPU only: a
linear-layer case (``regressions/cases/`` m=75, fp16) failed its bound on an H200 and passed on the
CPU, because the reference re-quantized the activation on the GPU.  The reference now divides with
:func:`harness.format.ieee_div`.  The CPU tests build inputs where the two divisions give different
bytes; the GPU test checks that the reference produces the CPU's bytes there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import format as F

SIXTH = np.float32(1) / np.float32(6)


def _midpoint_amaxes() -> np.ndarray:
    """Block amax values (gs = 1) whose scale ``amax / 6`` lands on or next to an e4m3 rounding
    midpoint, where a reciprocal multiply and a true division round to different e4m3 bytes."""
    grid = F.e4m3_decode(torch.arange(0, 0x7E, dtype=torch.uint8)).double().numpy()
    mids = (grid[:-1] + grid[1:]) / 2
    a = (6 * mids).astype(np.float32)
    cands = np.concatenate([np.nextafter(a, np.float32(0)), a, np.nextafter(a, np.float32(np.inf))])
    cands = cands[(cands > 0) & (cands <= np.float32(2688))]
    true = torch.from_numpy(cands / np.float32(6))
    recip = torch.from_numpy(cands * SIXTH)
    differ = (F.e4m3_encode(true) != F.e4m3_encode(recip)).numpy()
    return cands[differ]


def _blocks(amaxes: np.ndarray) -> torch.Tensor:
    """One 16-element block per amax: the amax itself and fractions of it (every e2m1 step)."""
    fr = torch.tensor([1.0, -0.75, 0.5, -0.25, 0.4166, 0.0834, -0.9, 0.6,
                       0.3, -0.1, 0.7, 0.95, -0.55, 0.15, 0.05, 0.0], dtype=torch.float32)
    return torch.from_numpy(amaxes).float()[:, None] * fr[None, :]


def test_reciprocal_multiply_and_true_division_give_different_scale_bytes_here():
    amaxes = _midpoint_amaxes()
    assert len(amaxes) >= 10, "the test data must contain inputs where the two divisions disagree"


def test_ieee_div_is_a_true_division():
    a = torch.from_numpy(_midpoint_amaxes())
    assert torch.equal(F.ieee_div(a, 6.0), torch.from_numpy(a.numpy() / np.float32(6)))
    assert not torch.equal(F.ieee_div(a, 6.0), a * torch.tensor(float(SIXTH)))
    assert torch.equal(F.ieee_div(1.0, a), torch.from_numpy(np.float32(1) / a.numpy()))
    with pytest.raises(TypeError, match="at least one operand must be a tensor"):
        F.ieee_div(1.0, 6.0)


def test_reference_block_scales_follow_the_true_division():
    amaxes = _midpoint_amaxes()
    _, sf = F.reference_quantize(_blocks(amaxes), torch.tensor(1.0))
    assert torch.equal(sf[:, 0], F.e4m3_encode(torch.from_numpy(amaxes / np.float32(6))))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("distribution", ["normal", "heavy_tailed", "tiny", "saturating"])
def test_reference_quantizer_gives_the_cpu_bytes_on_the_gpu(distribution):
    from harness.data import generate

    blocks = _blocks(_midpoint_amaxes())
    x = blocks[: len(blocks) // 4 * 4].reshape(-1, 64)  # rows of 4 blocks
    dense = generate(distribution, (75, 1472), 2, torch.float16, "cpu").float()
    for data, gs in ((x, torch.tensor(1.0)), (dense, F.global_scale_encode_divisor(dense.abs().amax()))):
        codes_c, sf_c = F.reference_quantize(data, gs)
        codes_g, sf_g = F.reference_quantize(data.cuda(), gs.cuda())
        assert torch.equal(sf_g.cpu(), sf_c)
        assert torch.equal(codes_g.cpu(), codes_c)
