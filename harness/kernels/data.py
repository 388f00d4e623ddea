"""Triton kernel of the test-data generator: the same bits as :func:`harness.data.generate_reference`
(pure torch), in one launch.  uint32 arithmetic wraps identically on a GPU and under the
interpreter, and the float steps are exactly-rounded IEEE operations in the same order."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DIST_ID = {"normal": 0, "heavy_tailed": 1, "zero_blocks": 2, "tiny": 3, "saturating": 4, "on_grid": 5}


@triton.jit
def _hash32(idx, c):
    """idx: uint32 tensor, c: uint32 stream constant."""
    x = idx * 0x9E3779B1 + c.to(tl.uint32)  # kernel ints >= 2^31 arrive as int64
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _uniform(idx, c):
    return (_hash32(idx, c) >> 8).to(tl.float32) * 5.9604644775390625e-08  # 2^-24


@triton.jit
def _pow2(p):
    """2^p for integer p in [-126, 127], built from its bits (exact on every device)."""
    return ((p + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit(do_not_specialize=["numel", "c0", "c1", "c2", "c3", "c10", "c11", "c20", "c30", "c31",
                               "c40", "c41", "c50", "c51", "c52"])
def _generate_kernel(out_ptr, numel, c0, c1, c2, c3, c10, c11, c20, c30, c31, c40, c41, c50, c51, c52,
                     DIST: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    idx = offs.to(tl.uint32)
    blk = (offs // 16).to(tl.uint32)
    s = _uniform(idx, c0) + _uniform(idx, c1)
    s = s + _uniform(idx, c2) + _uniform(idx, c3)
    x = (s - 2.0) * 1.7320508
    if DIST == 1:
        outlier = _uniform(idx, c10) < 0.01
        power = (_hash32(idx, c11) % 11).to(tl.int32)
        x = tl.where(outlier, x * _pow2(power), x)
    elif DIST == 2:
        x = tl.where(_uniform(blk, c20) < 0.3, 0.0, x)
    elif DIST == 3:
        keep = _uniform(blk, c30) < 0.05
        power = (_hash32(blk, c31) % 9).to(tl.int32) + 12
        x = tl.where(keep, x, x * _pow2(-power))
        x = tl.where(offs == 0, 4.0, x)
    elif DIST == 4:
        pos = _hash32(blk, c40) % 16
        sign = tl.where(_uniform(blk, c41) < 0.5, -8.0, 8.0)
        x = tl.where((offs % 16).to(tl.uint32) == pos, sign, x)
    elif DIST == 5:
        code = (_hash32(idx, c50) % 8).to(tl.int32)
        e = code >> 1
        mag = tl.where(e == 0, (code & 1).to(tl.float32) * 0.5,
                       (2 + (code & 1)).to(tl.float32) * tl.where(e == 1, 0.5, tl.where(e == 2, 1.0, 2.0)))
        sign = tl.where(_uniform(idx, c51) < 0.5, -1.0, 1.0)
        power = (_hash32(blk, c52) % 7).to(tl.int32) - 4
        x = mag * sign * _pow2(power)
    tl.store(out_ptr + offs, x, mask=mask)


def generate_fp32(distribution: str, numel: int, constants: dict[int, int], device) -> torch.Tensor:
    out = torch.empty(numel, dtype=torch.float32, device=device)
    if numel == 0:
        return out
    c = [constants[s] for s in (0, 1, 2, 3, 10, 11, 20, 30, 31, 40, 41, 50, 51, 52)]
    block = 4096 if device.type == "cpu" else 1024
    _generate_kernel[(triton.cdiv(numel, block),)](out, numel, *c, DIST=DIST_ID[distribution], BLOCK=block)
    return out
