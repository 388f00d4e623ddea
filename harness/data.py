"""Deterministic test data: the same (distribution, shape, seed) gives the same bits everywhere.

Values are drawn on the CPU with a seeded generator and then moved to the target device, so a case
recorded on a GPU replays bit for bit on a CPU and the other way round.
"""

from __future__ import annotations

import torch

from harness.format import E2M1_MAGNITUDES

DISTRIBUTIONS = ("normal", "heavy_tailed", "zero_blocks", "tiny", "saturating", "on_grid")
"""normal: N(0,1).  heavy_tailed: N(0,1) with rare outliers up to 1e3.  zero_blocks: N(0,1) with
whole 16-blocks set to zero.  tiny: blocks far below the tensor's amax, so their scales fall into
e4m3's subnormal range.  saturating: many blocks reach the tensor's amax (block scale 448).
on_grid: exact e2m1 values times powers of two (quantization is lossless)."""

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_dtype(name: str, field: str = "dtype") -> torch.dtype:
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"{field}={name!r}: expected one of {sorted(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def generate(distribution: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.bfloat16,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """A tensor of ``shape`` (last dim a multiple of 16 for the block-wise kinds) from ``distribution``."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r}: expected one of {list(DISTRIBUTIONS)}")
    g = torch.Generator().manual_seed(int(seed))
    numel = 1
    for s in shape:
        numel *= s
    x = torch.randn(numel, generator=g, dtype=torch.float32)
    blocks = x.view(-1, 16) if numel % 16 == 0 and numel else None
    if distribution == "heavy_tailed":
        pick = torch.rand(numel, generator=g) < 0.01
        x = torch.where(pick, x * torch.exp(torch.rand(numel, generator=g) * 7.0), x)
    elif distribution == "zero_blocks" and blocks is not None:
        zero = torch.rand(blocks.shape[0], generator=g) < 0.3
        blocks[zero] = 0.0
    elif distribution == "tiny" and blocks is not None:
        # most blocks 2^-20..2^-12 of the peak: their e4m3 block scales land near/below 2^-6
        factor = torch.exp2(-12.0 - 8.0 * torch.rand(blocks.shape[0], generator=g))
        factor[torch.rand(blocks.shape[0], generator=g) < 0.05] = 1.0
        blocks.mul_(factor.unsqueeze(1))
        x.view(-1)[0] = 4.0  # one full-size value sets the global scale
    elif distribution == "saturating" and blocks is not None:
        idx = torch.randint(0, 16, (blocks.shape[0],), generator=g)
        peak = torch.where(torch.rand(blocks.shape[0], generator=g) < 0.5, 8.0, -8.0)
        blocks[torch.arange(blocks.shape[0]), idx] = peak
    elif distribution == "on_grid":
        mags = torch.tensor(E2M1_MAGNITUDES)[torch.randint(0, 8, (numel,), generator=g)]
        sign = torch.where(torch.rand(numel, generator=g) < 0.5, -1.0, 1.0)
        x = mags * sign
        if blocks is not None:
            x.view(-1, 16).mul_(torch.exp2(torch.randint(-4, 3, (numel // 16, 1), generator=g).float()))
    return x.reshape(shape).to(dtype).to(device)
