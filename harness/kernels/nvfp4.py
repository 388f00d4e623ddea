"""Triton kernels of the padded NVFP4 pipeline: quantize into a layout, dequantize, pad.

The same kernels run on a GPU and under ``TRITON_INTERPRET=1`` on the CPU and produce identical
bytes: e4m3 is encoded and decoded with integer bit arithmetic (the interpreter decodes an fp8
bitcast of 0x7F as 480, not NaN), divisions use ``tl.div_rn`` (Triton's ``/`` is approximate on
NVIDIA GPUs), and every step follows :mod:`harness.format`'s reference order.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from harness.layouts import ScaleLayout, ceil_div, padded_shape

LAYOUT_ID = {ScaleLayout.LINEAR: 0, ScaleLayout.SWIZZLED_128x4: 1, ScaleLayout.SWIZZLED_8x4: 2}
LEAVE = -1
"""Fill value meaning: do not write this padding region (keep what the buffer held)."""


def interpreting() -> bool:
    """Whether Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernel_device(t: torch.Tensor) -> torch.device:
    """Where Triton can run on ``t``: the tensor's own device, except that CPU tensors go to the GPU
    when kernels are compiled for it (results come back on the caller's device; the bytes are the
    same on both, which tests/test_pipeline.py checks)."""
    if t.device.type == "cpu" and not interpreting():
        if not torch.cuda.is_available():
            raise RuntimeError("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1; neither is available")
        return torch.device("cuda")
    return t.device


QUANT_TILES_GPU = (8, 32, 4)
"""(rows, k-blocks, warps) per quantizer program on a GPU.  bench/quantizer_bandwidth.py sweeps it:
on an H200 (2026-12-01, 16384 x 16384 bf16) (8, 32, 4) was the fastest or within 1% of the fastest
tile in every layout (128x4 0.286 ms vs 0.323 ms for the former (16, 16, 8); 8x4 0.286 vs 0.303;
linear 0.291 vs 0.296), with bytes equal to the former default's."""

QUANT_OPTIONS = {"evict": False, "scale_words": False, "persistent": 0}
"""Code-generation variants of the quantizer, all producing the same bytes (tests/test_pipeline.py
checks each under the interpreter; bench/quantizer_bandwidth.py sweeps them on a GPU):

* ``evict``: streaming cache hints (loads ``evict_first``, stores ``.cs``): the input is read once;
* ``scale_words``: swizzled layouts, unpadded full tiles: the four k-blocks of a row that are
  adjacent in a 128x4 / 8x4 atom are stored as one int32 word instead of four bytes;
* ``persistent``: programs per SM of a grid-stride loop over the tiles (0: one program per tile).
"""


def _sm_count(dev: torch.device) -> int:
    """Multiprocessors of the device (a small fixed count under the interpreter)."""
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).multi_processor_count
    return 2


def _tiles(rows: int) -> tuple[int, int, int]:
    """(rows, k-blocks, warps) per program; under the interpreter each program costs Python
    overhead, so fewer, larger programs run faster there."""
    if interpreting():
        return min(128, max(8, triton.next_power_of_2(rows))), 16, 4
    return QUANT_TILES_GPU


@triton.jit
def scale_offset(r, kb, padded_kb, LAYOUT: tl.constexpr):
    if LAYOUT == 0:
        off = r * padded_kb + kb
    elif LAYOUT == 1:
        nk = padded_kb // 4
        off = (r // 128) * nk * 512 + (kb // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + kb % 4
    else:
        nk = padded_kb // 4
        off = (r // 8) * nk * 32 + (kb // 4) * 32 + (r % 8) * 4 + kb % 4
    return off


@triton.jit
def _e4m3_encode_nonneg(a):
    """fp32 >= 0 -> e4m3fn byte (int32), RNE, saturating at 448 (0x7E)."""
    a = tl.minimum(a, 448.0)
    q = a * 512.0
    fl = q.to(tl.int32)  # truncation == floor for q >= 0
    frac = q - fl.to(tl.float32)
    up = (frac > 0.5) | ((frac == 0.5) & ((fl & 1) == 1))
    sub_code = fl + up.to(tl.int32)
    bits = a.to(tl.int32, bitcast=True)
    exp = ((bits >> 23) & 0xFF) - 127
    man3 = (bits >> 20) & 0x7
    rem = bits & 0xFFFFF
    up_n = (rem > 0x80000) | ((rem == 0x80000) & ((man3 & 1) == 1))
    norm_code = ((exp + 7) << 3) + man3 + up_n.to(tl.int32)
    code = tl.where(a < 0.015625, sub_code, norm_code)
    return tl.minimum(code, 0x7E)


@triton.jit
def e4m3_decode(b):
    """e4m3fn byte (int32 0..255) -> fp32, NaN for 0x7F / 0xFF."""
    sign = (b >> 7) & 1
    exp = (b >> 3) & 0xF
    man = b & 0x7
    normal = ((sign << 31) | ((exp + 120) << 23) | (man << 20)).to(tl.float32, bitcast=True)
    sub = man.to(tl.float32) * 0.001953125
    sub = tl.where(sign == 1, -sub, sub)
    val = tl.where(exp == 0, sub, normal)
    return tl.where((exp == 15) & (man == 7), float("nan"), val)


@triton.jit
def e2m1_encode(x):
    """fp32 (already scaled) -> e2m1 code (int32 0..15), RNE, saturating at 6, sign kept.

    Bit arithmetic instead of seven threshold comparisons (the reference in harness.format uses
    the thresholds; tests check the two agree, ties included): for |x| >= 1 the fp32 mantissa is
    rounded to one bit, nearest-even, and (exponent, bit) is the code; below 1 the codes 0, 1, 2 are
    0, 0.5, 1.0, i.e. 2|x| rounded to an integer, nearest-even, by adding and removing 2^23.
    """
    a = tl.minimum(tl.abs(x), 6.0)
    bits = a.to(tl.int32, bitcast=True)
    norm = ((bits + 0x1FFFFF + ((bits >> 22) & 1)) >> 22) - 252
    sub = ((a * 2.0 + 8388608.0) - 8388608.0).to(tl.int32)
    code = tl.where(a < 1.0, sub, norm)
    sign = (x.to(tl.int32, bitcast=True) >> 31) & 1
    return code | (sign << 3)


@triton.jit
def e2m1_decode(c):
    """e2m1 code (int32 0..15) -> fp32."""
    mag = c & 7
    e = mag >> 1
    m = mag & 1
    # codes 0,1: 0, 0.5 ; codes >= 2: (1 + m/2) * 2^(e-1)
    v = tl.where(e == 0, m.to(tl.float32) * 0.5,
                 (2 + m).to(tl.float32) * tl.where(e == 1, 0.5, tl.where(e == 2, 1.0, 2.0)))
    return tl.where((c & 8) != 0, -v, v)


@triton.jit
def block_scales(amax, gs):
    """Block-scale byte and element multiplier from the block amax (harness.format's order)."""
    sf_code = _e4m3_encode_nonneg(tl.div_rn(gs * amax, 6.0))
    sf_val = e4m3_decode(sf_code)
    nonzero = sf_val != 0.0
    inv = tl.where(nonzero, tl.div_rn(1.0, tl.div_rn(tl.where(nonzero, sf_val, 1.0), gs)), 0.0)
    return sf_code, inv


@triton.jit
def _store_bytes(packed_ptr, stride_pr, rr, cc, byte, real, data_rows, data_kbytes, data_fill,
                 WRITE_DATA: tl.constexpr, EVEN: tl.constexpr):
    """Store packed bytes at rows ``rr`` x byte columns ``cc`` (broadcastable index tensors); padding
    (not ``real``) inside the allocation gets ``data_fill`` unless WRITE_DATA is off."""
    ptr = packed_ptr + rr.to(tl.int64) * stride_pr + cc
    if EVEN:
        tl.store(ptr, byte.to(tl.uint8))
    else:
        in_data = (rr < data_rows) & (cc < data_kbytes)
        if WRITE_DATA:
            tl.store(ptr, tl.where(real, byte, data_fill).to(tl.uint8), mask=in_data)
        else:
            tl.store(ptr, byte.to(tl.uint8), mask=in_data & real)


@triton.jit
def _store_scales(scale_ptr, r, kb, sf_code, rows, kblocks, sf_rows, sf_kb, row_fill, ktail_fill,
                  WRITE_ROW: tl.constexpr, WRITE_KTAIL: tl.constexpr, LAYOUT: tl.constexpr, EVEN: tl.constexpr):
    """Scales of rows ``r`` x k-blocks ``kb`` at their layout offsets: real, row padding and K tail,
    each padding region with its own fill (or left alone)."""
    r2 = r[:, None]
    kb2 = kb[None, :]
    off = scale_offset(r2.to(tl.int64), kb2, sf_kb, LAYOUT)
    if EVEN:
        tl.store(scale_ptr + off, sf_code.to(tl.uint8))
    else:
        in_sf = (r2 < sf_rows) & (kb2 < sf_kb)
        real2 = (r2 < rows) & (kb2 < kblocks)
        rowpad = r2 >= rows
        ktail = (r2 < rows) & (kb2 >= kblocks)
        sval = tl.where(real2, sf_code, tl.where(rowpad, row_fill, ktail_fill))
        smask = in_sf & real2
        if WRITE_ROW:
            smask = smask | (in_sf & rowpad)
        if WRITE_KTAIL:
            smask = smask | (in_sf & ktail)
        tl.store(scale_ptr + off, sval.to(tl.uint8), mask=smask)


@triton.jit
def _store_scale_words(scale_ptr, r, pid_k, sf_code, sf_kb, LAYOUT: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_KB: tl.constexpr, EVICT: tl.constexpr):
    """Swizzled layouts: k-blocks 4j..4j+3 of a row are adjacent bytes of one atom, so they go out
    as one little-endian int32 word (``scale_ptr`` is the scale buffer viewed as int32)."""
    code4 = tl.reshape(sf_code, (BLOCK_R, BLOCK_KB // 4, 4))
    shift = (tl.arange(0, 4) * 8)[None, None, :]
    word = tl.sum(code4 << shift, axis=2)  # disjoint bits: the sum is the OR
    kb_first = pid_k * BLOCK_KB + tl.arange(0, BLOCK_KB // 4) * 4
    off = scale_offset(r[:, None].to(tl.int64), kb_first[None, :], sf_kb, LAYOUT) // 4
    if EVICT:
        tl.store(scale_ptr + off, word, cache_modifier=".cs")
    else:
        tl.store(scale_ptr + off, word)


@triton.jit
def _quantize_tile(
    pid_r, pid_k, x_ptr, stride_xr, stride_xk, gs, packed_ptr, stride_pr, scale_ptr,
    rows, kblocks, data_rows, data_kbytes, sf_rows, sf_kb, row_fill, ktail_fill, data_fill,
    WRITE_ROW: tl.constexpr, WRITE_KTAIL: tl.constexpr, WRITE_DATA: tl.constexpr,
    LAYOUT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_KB: tl.constexpr, BF16_PAIRS: tl.constexpr,
    EVEN: tl.constexpr, EVICT: tl.constexpr, SCALE_WORDS: tl.constexpr,
):
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    kb = pid_k * BLOCK_KB + tl.arange(0, BLOCK_KB)
    if BF16_PAIRS:
        # bf16 rows read as int32 words (element pairs): one coalesced 2-D load (measured faster on
        # H200 than a 3-D [rows, k-blocks, 8] tile), and the even/odd split is two integer shifts
        # (bf16 -> fp32 is exact: the high half of the fp32 bits); word column == output byte column
        wcol = pid_k * BLOCK_KB * 8 + tl.arange(0, BLOCK_KB * 8)
        real_w = (r[:, None] < rows) & (wcol[None, :] < kblocks * 8)
        wptr = x_ptr + r[:, None].to(tl.int64) * stride_xr + wcol[None, :]
        if EVEN:
            if EVICT:
                word = tl.load(wptr, eviction_policy="evict_first")
            else:
                word = tl.load(wptr)
        else:
            word = tl.load(wptr, mask=real_w, other=0)
        xe = (word << 16).to(tl.float32, bitcast=True)
        xo = (word & -65536).to(tl.float32, bitcast=True)
        amax = tl.max(tl.reshape(tl.maximum(tl.abs(xe), tl.abs(xo)), (BLOCK_R, BLOCK_KB, 8)), axis=2)
        sf_code, inv = block_scales(amax, gs)
        inv_w = tl.reshape(tl.broadcast_to(inv[:, :, None], (BLOCK_R, BLOCK_KB, 8)), (BLOCK_R, BLOCK_KB * 8))
        byte = e2m1_encode(xe * inv_w) | (e2m1_encode(xo * inv_w) << 4)
        if EVEN and EVICT:
            tl.store(packed_ptr + r[:, None].to(tl.int64) * stride_pr + wcol[None, :], byte.to(tl.uint8),
                     cache_modifier=".cs")
        else:
            _store_bytes(packed_ptr, stride_pr, r[:, None], wcol[None, :], byte, real_w, data_rows, data_kbytes,
                         data_fill, WRITE_DATA, EVEN)
    else:
        # one contiguous, coalesced load of the tile [BLOCK_R, BLOCK_KB * 16]
        k = pid_k * BLOCK_KB * 16 + tl.arange(0, BLOCK_KB * 16)
        real_x = (r[:, None] < rows) & (k[None, :] < kblocks * 16)
        x = tl.load(x_ptr + r[:, None].to(tl.int64) * stride_xr + k[None, :] * stride_xk,
                    mask=real_x, other=0.0).to(tl.float32)
        x3 = tl.reshape(x, (BLOCK_R, BLOCK_KB, 16))
        sf_code, inv = block_scales(tl.max(tl.abs(x3), axis=2), gs)
        qe, qo = tl.split(tl.reshape(x3 * inv[:, :, None], (BLOCK_R, BLOCK_KB * 8, 2)))
        byte = e2m1_encode(qe) | (e2m1_encode(qo) << 4)  # [BLOCK_R, BLOCK_KB * 8]
        col = pid_k * BLOCK_KB * 8 + tl.arange(0, BLOCK_KB * 8)
        real_b = (r[:, None] < rows) & (col[None, :] < kblocks * 8)
        _store_bytes(packed_ptr, stride_pr, r[:, None], col[None, :], byte, real_b, data_rows, data_kbytes,
                     data_fill, WRITE_DATA, EVEN)
    if SCALE_WORDS:
        _store_scale_words(scale_ptr, r, pid_k, sf_code, sf_kb, LAYOUT, BLOCK_R, BLOCK_KB, EVICT)
    else:
        _store_scales(scale_ptr, r, kb, sf_code, rows, kblocks, sf_rows, sf_kb, row_fill, ktail_fill,
                      WRITE_ROW, WRITE_KTAIL, LAYOUT, EVEN)


# sizes and fills are not specialized: a fuzz run sees thousands of shapes and must not compile each
@triton.jit(do_not_specialize=["rows", "kblocks", "data_rows", "data_kbytes", "sf_rows", "sf_kb",
                               "row_fill", "ktail_fill", "data_fill", "tiles_k", "n_tiles"])
def _quantize_kernel(
    x_ptr, stride_xr, stride_xk, gs_ptr,
    packed_ptr, stride_pr,
    scale_ptr,
    rows, kblocks,                     # real rows and real k-blocks
    data_rows, data_kbytes,            # allocated packed buffer (rows x bytes)
    sf_rows, sf_kb,                    # padded scale buffer (rows x k-blocks)
    row_fill, ktail_fill, data_fill,   # fill bytes for the padding regions
    tiles_k, n_tiles,                  # tiles along K and in all (PERSISTENT only)
    WRITE_ROW: tl.constexpr, WRITE_KTAIL: tl.constexpr, WRITE_DATA: tl.constexpr,  # False: LEAVE
    LAYOUT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_KB: tl.constexpr, BF16_PAIRS: tl.constexpr,
    EVEN: tl.constexpr,  # no padding anywhere and tiles divide the problem: no masks needed
    EVICT: tl.constexpr, SCALE_WORDS: tl.constexpr, PERSISTENT: tl.constexpr,  # see QUANT_OPTIONS
):
    gs = tl.load(gs_ptr)
    if PERSISTENT:
        for t in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
            _quantize_tile(t // tiles_k, t % tiles_k, x_ptr, stride_xr, stride_xk, gs, packed_ptr, stride_pr,
                           scale_ptr, rows, kblocks, data_rows, data_kbytes, sf_rows, sf_kb, row_fill, ktail_fill,
                           data_fill, WRITE_ROW, WRITE_KTAIL, WRITE_DATA, LAYOUT, BLOCK_R, BLOCK_KB, BF16_PAIRS,
                           EVEN, EVICT, SCALE_WORDS)
    else:
        _quantize_tile(tl.program_id(0), tl.program_id(1), x_ptr, stride_xr, stride_xk, gs, packed_ptr, stride_pr,
                       scale_ptr, rows, kblocks, data_rows, data_kbytes, sf_rows, sf_kb, row_fill, ktail_fill,
                       data_fill, WRITE_ROW, WRITE_KTAIL, WRITE_DATA, LAYOUT, BLOCK_R, BLOCK_KB, BF16_PAIRS,
                       EVEN, EVICT, SCALE_WORDS)


def quantize_into(
    x: torch.Tensor,
    global_scale: torch.Tensor,
    layout: ScaleLayout,
    *,
    data_rows: int | None = None,
    data_k: int | None = None,
    row_fill: int = 0,
    ktail_fill: int = 0,
    data_fill: int = 0,
    packed: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [rows, K] straight into a padded packed buffer and a scale buffer.

    data_rows / data_k: allocated rows and K (elements) of the packed buffer (>= the real ones);
      the scale buffer covers ``padded_shape(layout, data_rows, data_k // 16)``.
    row_fill, ktail_fill: byte for padding-row scales and K-tail scales; data_fill: byte for the
      packed buffer's padding rows and columns.  ``LEAVE`` (-1) leaves that region untouched (the
      buffer's previous contents, e.g. stale memory when ``packed``/``scales`` come from
      ``torch.empty``).
    """
    if x.ndim != 2:
        raise ValueError(f"quantize_into: x must be 2-D [rows, K], got shape {tuple(x.shape)}")
    rows, k = x.shape
    if k % 16:
        raise ValueError(f"quantize_into: K={k} is not a multiple of 16")
    data_rows = rows if data_rows is None else data_rows
    data_k = k if data_k is None else data_k
    if data_rows < rows or data_k < k or data_k % 16:
        raise ValueError(f"quantize_into: allocation {data_rows}x{data_k} must cover {rows}x{k} "
                         f"with a K that is a multiple of 16")
    for name, v in (("row_fill", row_fill), ("ktail_fill", ktail_fill), ("data_fill", data_fill)):
        if not (v == LEAVE or 0 <= v <= 255):
            raise ValueError(f"quantize_into: {name}={v} must be a byte 0..255 or LEAVE (-1)")
    layout = ScaleLayout.parse(layout)
    sf_rows, sf_kb = padded_shape(layout, data_rows, data_k // 16)
    home = x.device
    dev = kernel_device(x)
    if dev != home:
        res_p, res_s = quantize_into(
            x.to(dev), global_scale.to(dev), layout, data_rows=data_rows, data_k=data_k, row_fill=row_fill,
            ktail_fill=ktail_fill, data_fill=data_fill,
            packed=None if packed is None else packed.to(dev), scales=None if scales is None else scales.to(dev))
        if packed is not None:
            packed.copy_(res_p)
        if scales is not None:
            scales.copy_(res_s)
        return (packed if packed is not None else res_p.to(home)), (scales if scales is not None else res_s.to(home))
    if packed is None:
        packed = (torch.empty if data_fill == LEAVE else torch.zeros)(
            (data_rows, data_k // 2), dtype=torch.uint8, device=dev)
    if scales is None:
        scales = torch.empty((sf_rows, sf_kb), dtype=torch.uint8, device=dev)
    if tuple(packed.shape) != (data_rows, data_k // 2) or tuple(scales.shape) != (sf_rows, sf_kb):
        raise ValueError(f"quantize_into: buffers {tuple(packed.shape)}, {tuple(scales.shape)} do not match "
                         f"({data_rows}, {data_k // 2}) and ({sf_rows}, {sf_kb})")
    gs = global_scale.reshape(1).to(device=dev, dtype=torch.float32)
    block_r, block_kb, warps = _tiles(max(sf_rows, data_rows))
    grid = (ceil_div(max(sf_rows, data_rows), block_r), ceil_div(max(sf_kb, data_k // 16), block_kb))
    pairs = x.dtype == torch.bfloat16 and x.stride(1) == 1 and x.stride(0) % 2 == 0 and x.data_ptr() % 4 == 0
    even = (pairs and rows % block_r == 0 and (k // 16) % block_kb == 0 and data_rows == rows and data_k == k
            and (sf_rows, sf_kb) == (rows, k // 16))
    src = x.view(torch.int32) if pairs else x
    opts = QUANT_OPTIONS
    # one int32 word per 4 adjacent k-blocks: swizzled atoms only, full unpadded tiles
    words = bool(opts.get("scale_words")) and even and layout != ScaleLayout.LINEAR and block_kb % 4 == 0
    sc = scales.view(torch.int32) if words else scales
    tiles_k = grid[1]
    n_tiles = grid[0] * grid[1]
    per_sm = int(opts.get("persistent") or 0)
    if per_sm:
        grid = (max(1, min(n_tiles, per_sm * _sm_count(dev))),)
    _quantize_kernel[grid](
        src, src.stride(0), src.stride(1), gs, packed, packed.stride(0), sc,
        rows, k // 16, data_rows, data_k // 2, sf_rows, sf_kb,
        max(row_fill, 0), max(ktail_fill, 0), max(data_fill, 0), tiles_k, n_tiles,
        WRITE_ROW=row_fill != LEAVE, WRITE_KTAIL=ktail_fill != LEAVE, WRITE_DATA=data_fill != LEAVE,
        LAYOUT=LAYOUT_ID[layout], BLOCK_R=block_r, BLOCK_KB=block_kb, BF16_PAIRS=pairs, EVEN=even,
        EVICT=bool(opts.get("evict")), SCALE_WORDS=words, PERSISTENT=bool(per_sm), num_warps=warps,
    )
    return packed, scales


@triton.jit(do_not_specialize=["rows", "kblocks", "sf_kb", "inv_gs"])
def _dequantize_kernel(
    packed_ptr, stride_pr, scale_ptr, out_ptr, stride_or, inv_gs,
    rows, kblocks, sf_kb,
    LAYOUT: tl.constexpr, APPLY_GS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_KB: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    kb = pid_k * BLOCK_KB + tl.arange(0, BLOCK_KB)
    j = tl.arange(0, 8)
    r3 = r[:, None, None]
    kb3 = kb[None, :, None]
    j3 = j[None, None, :]
    real3 = (r3 < rows) & (kb3 < kblocks)
    real2 = (r[:, None] < rows) & (kb[None, :] < kblocks)
    # only real bytes are read: padding never reaches the output
    byte = tl.load(packed_ptr + r3 * stride_pr + kb3 * 8 + j3, mask=real3, other=0).to(tl.int32)
    sf = tl.load(scale_ptr + scale_offset(r[:, None], kb[None, :], sf_kb, LAYOUT), mask=real2, other=0)
    s = e4m3_decode(sf.to(tl.int32))
    ve = e2m1_decode(byte & 0xF) * s[:, :, None]
    vo = e2m1_decode(byte >> 4) * s[:, :, None]
    if APPLY_GS:
        ve = ve * inv_gs
        vo = vo * inv_gs
    k_even = kb3 * 16 + 2 * j3
    tl.store(out_ptr + r3 * stride_or + k_even, ve, mask=real3)
    tl.store(out_ptr + r3 * stride_or + k_even + 1, vo, mask=real3)


def dequantize_from(packed: torch.Tensor, scales: torch.Tensor, layout: ScaleLayout, rows: int, k: int,
                    global_scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """Dequantize the real [rows, k] region of a packed buffer and a scale buffer of ``layout``.

    Returns fp32 ``code * sf`` (times ``1/global_scale`` when given; that last step is one fp32
    multiply by the reciprocal, so it is not exact).  Reads no padding byte.
    """
    layout = ScaleLayout.parse(layout)
    dev = kernel_device(packed)
    if dev != packed.device:
        return dequantize_from(packed.to(dev), scales.to(dev), layout, rows, k,
                               global_scale if global_scale is None or isinstance(global_scale, float)
                               else global_scale.to(dev)).to(packed.device)
    out = torch.empty((rows, k), dtype=torch.float32, device=packed.device)
    inv = 1.0 if global_scale is None else float(1.0 / torch.as_tensor(global_scale, dtype=torch.float32))
    block_r, block_kb, _ = _tiles(rows)
    grid = (ceil_div(rows, block_r), ceil_div(k // 16, block_kb))
    _dequantize_kernel[grid](
        packed, packed.stride(0), scales, out, out.stride(0), inv, rows, k // 16, scales.shape[1],
        LAYOUT=LAYOUT_ID[ScaleLayout.parse(layout)], APPLY_GS=global_scale is not None,
        BLOCK_R=block_r, BLOCK_KB=block_kb,
    )
    return out


@triton.jit(do_not_specialize=["rows", "cols", "drows", "dcols", "fill"])
def _pad_kernel(src_ptr, stride_s, dst_ptr, stride_d, rows, cols, drows, dcols, fill,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    inside = (r < rows) & (c < cols)
    v = tl.load(src_ptr + r * stride_s + c, mask=inside, other=0).to(tl.int32)
    v = tl.where(inside, v, fill)
    tl.store(dst_ptr + r * stride_d + c, v.to(tl.uint8), mask=(r < drows) & (c < dcols))


def pad_bytes(src: torch.Tensor, rows: int, cols: int, fill: int = 0) -> torch.Tensor:
    """Copy a uint8 matrix into a larger [rows, cols] buffer; new bytes are ``fill``."""
    if src.dtype != torch.uint8 or src.ndim != 2:
        raise ValueError(f"pad_bytes: expected a 2-D uint8 tensor, got {src.dtype} {tuple(src.shape)}")
    if rows < src.shape[0] or cols < src.shape[1]:
        raise ValueError(f"pad_bytes: target {rows}x{cols} is smaller than {tuple(src.shape)}")
    if not 0 <= fill <= 255:
        raise ValueError(f"pad_bytes: fill={fill} must be a byte 0..255")
    if kernel_device(src) != src.device:
        return pad_bytes(src.to(kernel_device(src)), rows, cols, fill).to(src.device)
    src = src.contiguous()
    dst = torch.empty((rows, cols), dtype=torch.uint8, device=src.device)
    grid = (ceil_div(rows, 32), ceil_div(cols, 64))
    _pad_kernel[grid](src, src.stride(0), dst, dst.stride(0), src.shape[0], src.shape[1], rows, cols, fill,
                      BLOCK_R=32, BLOCK_C=64)
    return dst
