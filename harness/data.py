"""Deterministic test data: the same (distribution, shape, seed) gives the same bits on every device.

Values are made on the target device from a counter-based integer hash of (seed, element index)
followed only by exactly-rounded float operations (int -> float conversion, +, -, *), so a case
recorded on a GPU replays bit for bit on a CPU and the other way round, and no host-to-device copy
sits in the fuzzing loop.
"""

from __future__ import annotations

import torch

from harness.format import E2M1_MAGNITUDES

DISTRIBUTIONS = ("normal", "heavy_tailed", "zero_blocks", "tiny", "saturating", "on_grid",
                 "all_zero", "zero_rows", "one_outlier")
"""normal: approximately N(0,1) (sum of four uniforms).  heavy_tailed: normal with 1% outliers
scaled by up to 2^10.  zero_blocks: normal with ~30% of 16-blocks all zero.  tiny: most blocks
2^-20..2^-12 of the peak, so their e4m3 block scales fall into the subnormal range.  saturating:
every block holds a value at the tensor's amax (block scale 448).  on_grid: exact e2m1 values times
powers of two (quantization is lossless).  Degenerate inputs: all_zero: every element 0 (amax 0,
global scale 1 by convention); zero_rows: normal with ~25% of the rows (and row 0) all zero inside a
non-zero tensor; one_outlier: normal with one element (index seed mod numel) 2^12 times the peak, so
one value sets the global scale and every other block's scale is tiny."""

DEGENERATE = ("all_zero", "zero_rows", "one_outlier")
"""Distributions made from "normal" by exact torch operations after generation (same on every device)."""

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_MASK32 = 0xFFFFFFFF


def parse_dtype(name: str, field: str = "dtype") -> torch.dtype:
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"{field}={name!r}: expected one of {sorted(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _hash32(idx: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """A 32-bit integer hash of (seed, stream, idx) in int64 (only the low 32 bits of each product
    are kept, so wrap-around in int64 multiplication does not matter)."""
    x = (idx * 0x9E3779B1 + _stream_constant(seed, stream)) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _uniform(idx: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """Uniform in [0, 1) on a 2^-24 grid (exact in fp32)."""
    return (_hash32(idx, seed, stream) >> 8).to(torch.float32) * (2.0 ** -24)


def _normal(idx: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    s = _uniform(idx, seed, stream) + _uniform(idx, seed, stream + 1)
    s = s + _uniform(idx, seed, stream + 2) + _uniform(idx, seed, stream + 3)
    return (s - 2.0) * 1.7320508  # Irwin-Hall(4), unit variance


def _pow2(p: torch.Tensor) -> torch.Tensor:
    """2^p for integer p, built from its bits (exact on every device)."""
    return ((p.to(torch.int32) + 127) << 23).view(torch.float32)


def _stream_constant(seed: int, stream: int) -> int:
    return (seed * 0x85EBCA77 + stream * 0xC2B2AE3D) & _MASK32


def _check(distribution: str, shape) -> int:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r}: expected one of {list(DISTRIBUTIONS)}")
    numel = 1
    for s in shape:
        numel *= int(s)
    if numel >= 2 ** 32:
        raise ValueError(f"shape={tuple(shape)}: at most 2^32 elements can be generated")
    return numel


def generate(distribution: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.bfloat16,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """A tensor of ``shape`` from ``distribution`` (block-wise kinds act on consecutive 16-element
    blocks).  On a GPU one Triton kernel makes it; on the CPU the pure-torch
    :func:`generate_reference` does (faster than the interpreter); tests check both give the same
    bits."""
    from harness.kernels.data import generate_fp32
    from harness.kernels.nvfp4 import kernel_device

    numel = _check(distribution, shape)
    seed = int(seed) & _MASK32
    dev = torch.device(device)
    kdev = kernel_device(torch.empty(0, device=dev))
    if kdev.type == "cpu":
        return generate_reference(distribution, shape, seed, dtype, dev)
    consts = {s: _stream_constant(seed, s) for s in (0, 1, 2, 3, 10, 11, 20, 30, 31, 40, 41, 50, 51, 52)}
    base = "normal" if distribution in DEGENERATE else distribution
    x = generate_fp32(base, numel, consts, kdev)
    if distribution in DEGENERATE:
        x = _degenerate(distribution, x, shape, seed)
    return x.reshape(shape).to(dtype).to(dev)


def _degenerate(distribution: str, x: torch.Tensor, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The degenerate kinds of :data:`DEGENERATE` from flat normal values ``x`` (exact operations only)."""
    numel = x.numel()
    if distribution == "all_zero":
        return torch.zeros_like(x)
    idx = torch.arange(numel, device=x.device, dtype=torch.int64)
    if distribution == "zero_rows":
        row = idx // max(1, int(shape[-1]) if shape else 1)
        zero = (_uniform(row, seed, 60) < 0.25) | (row == 0)
        return torch.where(zero, torch.zeros_like(x), x)
    # one_outlier: 2^12 times the largest normal value (|x| < 3.47), exact in every dtype's range
    return torch.where(idx == seed % max(numel, 1), torch.full_like(x, 4.0 * 2.0 ** 12), x)


def generate_reference(distribution: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.bfloat16,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Pure-torch definition of :func:`generate` (the Triton kernel must match it bit for bit)."""
    numel = _check(distribution, shape)
    seed = int(seed) & _MASK32
    idx = torch.arange(numel, device=device, dtype=torch.int64)
    blk = idx // 16  # block index of each element
    x = _normal(idx, seed, 0)
    if distribution in DEGENERATE:
        return _degenerate(distribution, x, shape, seed).reshape(shape).to(dtype)
    if distribution == "heavy_tailed":
        outlier = _uniform(idx, seed, 10) < 0.01
        power = _hash32(idx, seed, 11) % 11  # 0..10
        x = torch.where(outlier, x * _pow2(power), x)
    elif distribution == "zero_blocks":
        x = torch.where(_uniform(blk, seed, 20) < 0.3, torch.zeros_like(x), x)
    elif distribution == "tiny":
        keep = _uniform(blk, seed, 30) < 0.05
        power = _hash32(blk, seed, 31) % 9 + 12  # 2^-12 .. 2^-20
        x = torch.where(keep, x, x * _pow2(-power))
        x = torch.where(idx == 0, torch.full_like(x, 4.0), x)  # one full-size value sets the global scale
    elif distribution == "saturating":
        pos = _hash32(blk, seed, 40) % 16
        sign = torch.where(_uniform(blk, seed, 41) < 0.5, -8.0, 8.0)
        x = torch.where(idx % 16 == pos, sign, x)
    elif distribution == "on_grid":
        table = torch.tensor(E2M1_MAGNITUDES, device=device)
        mag = table[_hash32(idx, seed, 50) % 8]
        sign = torch.where(_uniform(idx, seed, 51) < 0.5, -1.0, 1.0)
        power = _hash32(blk, seed, 52) % 7 - 4  # 2^-4 .. 2^2
        x = mag * sign * _pow2(power)
    return x.reshape(shape).to(dtype)
