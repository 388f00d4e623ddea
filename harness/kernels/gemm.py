"""The GEMM kernels the harness runs itself: NVFP4 emulation, W4A16 and ``tl.dot_scaled``.

Each reads the pipeline's buffers as a backend receives them (:class:`harness.pipeline.GemmOperands`):
packed e2m1 bytes, scale bytes at their layout's byte offsets (:func:`harness.kernels.nvfp4.scale_offset`,
so a swizzled buffer is read as the hardware reads it) and alpha.  The adapters that declare what
each kernel supports live in :mod:`harness.backends` (``triton_emulation``, ``w4a16``,
``dot_scaled``); their docstrings say what the kernels promise.

NVFP4 emulation (:func:`nvfp4_gemm`).  Tile by tile the kernel

* loads packed e2m1 bytes of A [BLOCK_M rows] and W [BLOCK_N rows] for ``KB_STEP`` k-blocks
  (16 K elements, 8 bytes each),
* loads the matching scale bytes and decodes them with integer arithmetic
  (:func:`~harness.kernels.nvfp4.e4m3_decode`; 0x7F/0xFF give NaN on the GPU and under the
  interpreter alike),
* forms ``code * sf`` in fp32 and feeds it to ``tl.dot`` as bf16, accumulating in fp32.  Under
  the interpreter the operands stay fp32 (``input_precision="ieee"``): Triton 3.9's interpreter
  multiplies bf16 dot operands as their raw uint16 bit patterns (``InterpreterBuilder.create_dot``
  passes the uint16 storage straight to ``np.matmul``), and fp32 holds the same exact values.

The sum is multiplied by alpha in fp32 and rounded to nearest into the output dtype (bf16 through
integer arithmetic, see ``_bf16_bits_rne``).  Rows >= m and columns >= n_alloc are masked; the K
loop runs over every k-block of the allocated K and does not mask the K tail, like a hardware
block-scaled GEMM.

W4A16 (:func:`w4a16_gemm`): dense activation tiles times the weight decoded as above.

``tl.dot_scaled`` (:func:`dot_scaled_gemm`): e2m1 x e2m1 with the scale tiles bitcast to
``tl.float8e4nv`` (NVFP4's group of 16); W loaded as a [BLOCK_K/2, BLOCK_N] tile packed along K.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from harness.format import BLOCK_SIZE
from harness.kernels.nvfp4 import LAYOUT_ID, e2m1_decode, e4m3_decode, interpreting, scale_offset

if TYPE_CHECKING:  # pragma: no cover
    from harness.pipeline import GemmOperands, QuantizedTensor


@triton.jit
def nvfp4_tile(packed_ptr, stride_r, scale_ptr, padded_kb, r, row_ok, kb0, kb_alloc,
                LAYOUT: tl.constexpr, ROWS: tl.constexpr, KB_STEP: tl.constexpr, AS_FP32: tl.constexpr):
    """Dequantize rows ``r`` [ROWS] x k-blocks [kb0, kb0 + KB_STEP) of a packed NVFP4 operand.

    Returns (even, odd): ``code * sf`` of the even and of the odd K elements, each [ROWS, KB_STEP*8]
    in bf16, or in fp32 when AS_FP32 (exact either way).  Column j of both holds the elements of
    byte ``kb0*8 + j`` (K index ``kb0*16 + 2j`` and ``+1``), so even and odd tiles of A and W line
    up for ``tl.dot``.
    Rows with ``row_ok`` False and k-blocks >= ``kb_alloc`` are not read (they give 0).
    """
    j = tl.arange(0, KB_STEP * 8)
    col_ok = (kb0 + j // 8) < kb_alloc
    byte = tl.load(packed_ptr + r[:, None] * stride_r + (kb0 * 8 + j)[None, :],
                   mask=row_ok[:, None] & col_ok[None, :], other=0).to(tl.int32)
    kb = kb0 + tl.arange(0, KB_STEP)
    sf = tl.load(scale_ptr + scale_offset(r[:, None], kb[None, :], padded_kb, LAYOUT),
                 mask=row_ok[:, None] & (kb < kb_alloc)[None, :], other=0).to(tl.int32)
    s = e4m3_decode(sf)  # [ROWS, KB_STEP] fp32
    # one scale per 8 bytes: [ROWS, KB_STEP] -> [ROWS, KB_STEP, 8] -> [ROWS, KB_STEP*8]
    s = tl.reshape(tl.broadcast_to(s[:, :, None], (ROWS, KB_STEP, 8)), (ROWS, KB_STEP * 8))
    even = e2m1_decode(byte & 0xF) * s
    odd = e2m1_decode(byte >> 4) * s
    if not AS_FP32:
        even = even.to(tl.bfloat16)
        odd = odd.to(tl.bfloat16)
    return even, odd


@triton.jit
def tile_dot(a, b, acc, DOT_FP32: tl.constexpr):
    """acc + a @ b with fp32 accumulation; fp32 operands use IEEE fp32 products (no TF32)."""
    if DOT_FP32:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _bf16_bits_rne(x):
    """fp32 -> bf16 bit pattern (int16), round to nearest even; NaN stays a quiet NaN of its sign.

    Integer arithmetic, because Triton 3.9's interpreter truncates fp32 -> bf16 casts
    (``InterpreterBuilder.cast_impl`` converts without a rounding mode) while the GPU rounds to
    nearest; this way both produce the same bits.
    """
    bits = x.to(tl.int32, bitcast=True)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    rounded = tl.where(x != x, ((bits >> 16) & 0x8000) | 0x7FC0, rounded & 0xFFFF)
    return rounded.to(tl.int16)


@triton.jit
def store_out(out_ptr, stride_om, stride_on, rm, rn, mask, acc, OUT_BF16: tl.constexpr):
    """Store fp32 ``acc`` rounded to nearest into the output (an int16 view of it when OUT_BF16)."""
    if OUT_BF16:
        val = _bf16_bits_rne(acc)
    else:
        val = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on, val, mask=mask)


@triton.jit(do_not_specialize=["a_sf_kb", "w_sf_kb", "m", "n_alloc", "kb_alloc"])
def _nvfp4_gemm_kernel(
    a_ptr, stride_am, a_sf_ptr, a_sf_kb,
    w_ptr, stride_wn, w_sf_ptr, w_sf_kb,
    alpha_ptr, out_ptr, stride_om, stride_on,
    m, n_alloc, kb_alloc,
    A_LAYOUT: tl.constexpr, W_LAYOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KB_STEP: tl.constexpr, DOT_FP32: tl.constexpr,
    OUT_BF16: tl.constexpr,
):
    """out[m, n_alloc] = alpha * sum over all k_alloc of deq(A) deq(W)^T (K tail included)."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < m
    n_ok = rn < n_alloc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb0 in range(0, kb_alloc, KB_STEP):
        a_even, a_odd = nvfp4_tile(a_ptr, stride_am, a_sf_ptr, a_sf_kb, rm, m_ok, kb0, kb_alloc,
                                    A_LAYOUT, BLOCK_M, KB_STEP, DOT_FP32)
        w_even, w_odd = nvfp4_tile(w_ptr, stride_wn, w_sf_ptr, w_sf_kb, rn, n_ok, kb0, kb_alloc,
                                    W_LAYOUT, BLOCK_N, KB_STEP, DOT_FP32)
        acc = tile_dot(a_even, tl.trans(w_even), acc, DOT_FP32)
        acc = tile_dot(a_odd, tl.trans(w_odd), acc, DOT_FP32)
    acc = acc * tl.load(alpha_ptr)
    store_out(out_ptr, stride_om, stride_on, rm, rn, m_ok[:, None] & n_ok[None, :], acc, OUT_BF16)


def gemm_tiles(m: int, n_alloc: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, KB_STEP) for a problem.

    GPU: 64 x 64 output tiles (BLOCK_M shrinks to 16/32 for small m), K step of 4 k-blocks (64 K
    elements, two 32-deep dots).  Interpreter: each program costs Python overhead, so tiles cover up
    to 128 x 128 outputs and 8 k-blocks per step.  BLOCK_M and BLOCK_N stay >= 16 (tl.dot's minimum).
    """
    if interpreting():
        return (min(128, max(16, triton.next_power_of_2(m))),
                min(128, max(16, triton.next_power_of_2(n_alloc))), 8)
    return min(64, max(16, triton.next_power_of_2(m))), 64, 4


def check_out(ops: "GemmOperands", out: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The output buffer [m, n_alloc] of ``ops.out_dtype``: ``out`` after checking it, or a new one."""
    shape = (ops.m, ops.w.rows_alloc)
    if out is None:
        return torch.empty(shape, dtype=ops.out_dtype, device=device)
    if tuple(out.shape) != shape or out.dtype != ops.out_dtype or out.device != device:
        raise ValueError(f"out buffer is {tuple(out.shape)} {out.dtype} on {out.device}; "
                         f"expected {shape} {ops.out_dtype} on {device}")
    return out


def out_view(out: torch.Tensor) -> torch.Tensor:
    """The tensor the kernels store into: bf16 outputs as their int16 bits (see ``_bf16_bits_rne``)."""
    return out.view(torch.int16) if out.dtype == torch.bfloat16 else out


def _check_kblocks(t: "QuantizedTensor", name: str) -> None:
    if t.k_alloc % BLOCK_SIZE or t.scales.shape[1] < t.k_alloc // BLOCK_SIZE:
        raise ValueError(f"{name}: scale buffer {tuple(t.scales.shape)} does not cover k_alloc={t.k_alloc}")


def launch_setup(ops: "GemmOperands", out: torch.Tensor | None, device: torch.device):
    """What every emulation GEMM launch needs: the output buffer, alpha as an fp32 device scalar,
    the tiles and the grid over [m, n_alloc]."""
    out = check_out(ops, out, device)
    block_m, block_n, kb_step = gemm_tiles(ops.m, ops.w.rows_alloc)
    alpha = ops.alpha.reshape(1).to(device=device, dtype=torch.float32)
    grid = (triton.cdiv(ops.m, block_m), triton.cdiv(ops.w.rows_alloc, block_n))
    return out, alpha, grid, block_m, block_n, kb_step


def nvfp4_gemm(ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
    """Run the emulation kernel on ``ops`` with whatever scale layouts its operands carry."""
    a, w = ops.a, ops.w
    if a.k_alloc != w.k_alloc:
        raise ValueError(f"A and W are allocated with different K ({a.k_alloc} vs {w.k_alloc})")
    _check_kblocks(a, "A")
    _check_kblocks(w, "W")
    out, alpha, grid, block_m, block_n, kb_step = launch_setup(ops, out, a.packed.device)
    m, n_alloc = ops.m, w.rows_alloc
    _nvfp4_gemm_kernel[grid](
        a.packed, a.packed.stride(0), a.scales, a.scales.shape[1],
        w.packed, w.packed.stride(0), w.scales, w.scales.shape[1],
        alpha, out_view(out), out.stride(0), out.stride(1),
        m, n_alloc, a.k_alloc // BLOCK_SIZE,
        A_LAYOUT=LAYOUT_ID[a.layout], W_LAYOUT=LAYOUT_ID[w.layout],
        BLOCK_M=block_m, BLOCK_N=block_n, KB_STEP=kb_step, DOT_FP32=interpreting(),
        OUT_BF16=out.dtype == torch.bfloat16,
    )
    return out


@triton.jit(do_not_specialize=["w_sf_kb", "m", "n_alloc", "kb_alloc"])
def _w4a16_kernel(
    a_ptr, stride_am, stride_ak,
    w_ptr, stride_wn, w_sf_ptr, w_sf_kb,
    alpha_ptr, out_ptr, stride_om, stride_on,
    m, n_alloc, kb_alloc,
    W_LAYOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KB_STEP: tl.constexpr,
    DOT_FP32: tl.constexpr, OUT_BF16: tl.constexpr,
):
    """out[m, n_alloc] = alpha * a_dense[:, :k_alloc] @ deq(W)^T (K tail included)."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < m
    n_ok = rn < n_alloc
    j = tl.arange(0, KB_STEP * 8)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb0 in range(0, kb_alloc, KB_STEP):
        # activations as even / odd K columns, matching the byte-wise weight tiles
        k_even = kb0 * 16 + 2 * j
        a_mask = m_ok[:, None] & ((kb0 + j // 8) < kb_alloc)[None, :]
        a_base = a_ptr + rm[:, None] * stride_am + k_even[None, :] * stride_ak
        a_even = tl.load(a_base, mask=a_mask, other=0.0)
        a_odd = tl.load(a_base + stride_ak, mask=a_mask, other=0.0)
        w_even, w_odd = nvfp4_tile(w_ptr, stride_wn, w_sf_ptr, w_sf_kb, rn, n_ok, kb0, kb_alloc,
                                    W_LAYOUT, BLOCK_N, KB_STEP, True)
        if DOT_FP32:
            a_even = a_even.to(tl.float32)
            a_odd = a_odd.to(tl.float32)
        else:
            w_even = w_even.to(a_ptr.dtype.element_ty)
            w_odd = w_odd.to(a_ptr.dtype.element_ty)
        acc = tile_dot(a_even, tl.trans(w_even), acc, DOT_FP32)
        acc = tile_dot(a_odd, tl.trans(w_odd), acc, DOT_FP32)
    acc = acc * tl.load(alpha_ptr)
    store_out(out_ptr, stride_om, stride_on, rm, rn, m_ok[:, None] & n_ok[None, :], acc, OUT_BF16)


def w4a16_gemm(ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
    """Run the W4A16 kernel: ``ops.a_dense`` [m, k_alloc] (bf16/fp16) times the NVFP4 weight of ``ops``.

    Raises ValueError when the dense activations or the weight's scale buffer do not match ``ops``.
    """
    x, w = ops.a_dense, ops.w
    name = "w4a16_gemm"
    if tuple(x.shape) != (ops.m, w.k_alloc):
        raise ValueError(f"{name}: dense activations {tuple(x.shape)}, expected {(ops.m, w.k_alloc)}")
    if w.scales.shape[1] < w.k_alloc // BLOCK_SIZE:
        raise ValueError(f"{name}: W scale buffer {tuple(w.scales.shape)} does not cover k_alloc={w.k_alloc}")
    out, alpha, grid, block_m, block_n, kb_step = launch_setup(ops, out, w.packed.device)
    m, n_alloc = ops.m, w.rows_alloc
    _w4a16_kernel[grid](
        x, x.stride(0), x.stride(1),
        w.packed, w.packed.stride(0), w.scales, w.scales.shape[1],
        alpha, out_view(out), out.stride(0), out.stride(1),
        m, n_alloc, w.k_alloc // BLOCK_SIZE,
        W_LAYOUT=LAYOUT_ID[w.layout], BLOCK_M=block_m, BLOCK_N=block_n, KB_STEP=kb_step,
        DOT_FP32=interpreting(), OUT_BF16=out.dtype == torch.bfloat16,
    )
    return out


@triton.jit
def _dot_scaled_kernel(
    a_ptr, stride_am, a_sf_ptr, a_sf_kb,
    w_ptr, stride_wn, w_sf_ptr, w_sf_kb,
    alpha_ptr, out_ptr, stride_om,
    m, n_alloc, kbytes, kblocks,
    A_LAYOUT: tl.constexpr, W_LAYOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[m, n_alloc] = alpha * sum over k_alloc of (code_a * sf_a) (code_w * sf_w)."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < m
    n_ok = rn < n_alloc
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, kbytes * 2, BLOCK_K):
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)           # byte columns
        ks = k0 // 16 + tl.arange(0, BLOCK_K // 16)         # k-blocks
        kb_ok = kb < kbytes
        ks_ok = ks < kblocks
        a = tl.load(a_ptr + rm[:, None] * stride_am + kb[None, :], mask=m_ok[:, None] & kb_ok[None, :], other=0)
        w = tl.load(w_ptr + kb[:, None] + rn[None, :] * stride_wn, mask=kb_ok[:, None] & n_ok[None, :], other=0)
        sa = tl.load(a_sf_ptr + scale_offset(rm[:, None], ks[None, :], a_sf_kb, A_LAYOUT),
                     mask=m_ok[:, None] & ks_ok[None, :], other=0)
        sw = tl.load(w_sf_ptr + scale_offset(rn[:, None], ks[None, :], w_sf_kb, W_LAYOUT),
                     mask=n_ok[:, None] & ks_ok[None, :], other=0)
        acc = tl.dot_scaled(a, sa.to(tl.float8e4nv, bitcast=True), "e2m1",
                            w, sw.to(tl.float8e4nv, bitcast=True), "e2m1", acc)
    acc = acc * tl.load(alpha_ptr)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def dot_scaled_tiles() -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): 128 x 128 output tiles, 128 K elements (8 scale blocks) per step."""
    return 128, 128, 128


def dot_scaled_gemm(ops: "GemmOperands", out: torch.Tensor, *, compile_only: bool = False):
    """Compile (``compile_only``) or run the ``tl.dot_scaled`` kernel on ``ops`` into ``out`` [m, n_alloc]
    (of ``ops.out_dtype``, unit column stride; the caller checks it)."""
    a, w = ops.a, ops.w
    bm, bn, bk = dot_scaled_tiles()
    grid = (triton.cdiv(ops.m, bm), triton.cdiv(w.rows_alloc, bn))
    alpha = ops.alpha.reshape(1).to(device=a.packed.device, dtype=torch.float32)
    args = (a.packed, a.packed.stride(0), a.scales, a.scales.shape[1],
            w.packed, w.packed.stride(0), w.scales, w.scales.shape[1],
            alpha, out, out.stride(0),
            ops.m, w.rows_alloc, a.k_alloc // 2, a.k_alloc // BLOCK_SIZE)
    meta = dict(A_LAYOUT=LAYOUT_ID[a.layout], W_LAYOUT=LAYOUT_ID[w.layout], BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    if compile_only:
        return _dot_scaled_kernel.warmup(*args, grid=grid, **meta)
    return _dot_scaled_kernel[grid](*args, **meta)
