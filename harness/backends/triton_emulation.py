"""NVFP4 GEMM emulated in one Triton kernel: the backends the harness can check anywhere.

``triton-emu-128x4``, ``triton-emu-8x4`` and ``triton-emu-linear`` run the same kernel, specialised
by constexpr layout ids for the activation (A) and weight (W) scale buffers.  Tile by tile the kernel

* loads packed e2m1 bytes of A [BLOCK_M rows] and W [BLOCK_N rows] for ``KB_STEP`` k-blocks
  (16 K elements, 8 bytes each),
* loads the matching scale bytes at the layout's byte offsets
  (:func:`harness.kernels.nvfp4._scale_offset`), so a swizzled buffer is read as the hardware reads
  it, and decodes them with integer arithmetic (:func:`~harness.kernels.nvfp4._e4m3_decode`;
  0x7F/0xFF give NaN on the GPU and under the interpreter alike),
* forms ``code * sf`` in fp32 and feeds it to ``tl.dot`` as bf16, accumulating in fp32.  Under
  the interpreter the operands stay fp32 (``input_precision="ieee"``): Triton 3.9's interpreter
  multiplies bf16 dot operands as their raw uint16 bit patterns (``InterpreterBuilder.create_dot``
  passes the uint16 storage straight to ``np.matmul``), and fp32 holds the same exact values.

The sum is multiplied by alpha in fp32 and rounded to nearest into the output dtype (bf16 through
integer arithmetic, see ``_bf16_bits_rne``).

bf16 operands are exact: an e2m1 magnitude has at most 2 significant bits and an e4m3 value at most
4, so ``code * sf`` has at most 6 (bf16 keeps 8), and its range (2^-10 .. 2688) is far inside
bf16's.  Products of two such values are exact in fp32, so the only roundings are the fp32
additions, the final ``* alpha`` (fp32) and the cast to the output dtype: ``Precision(24, None)``.
The tensor-core MMA accumulates in fp32 in its own order (and its adders may truncate); the bound
of :mod:`harness.oracle` holds for any order and takes u = 2^-23 for a 24-bit accumulator.

Padding behaviour, which is the point of these backends:

* rows >= m of A and columns >= n_alloc of the output are masked: M-padding scale rows are never
  read, so a poisoned M padding cannot reach a real row;
* W rows in [n, n_alloc) (N padding) are read and only ever feed padding columns, which the harness
  slices off;
* the K loop runs over every k-block of the allocated K (``k_alloc // 16``) and does NOT mask the K
  tail, exactly like a hardware block-scaled GEMM: it needs the pipeline to zero the K-tail scales
  (0 * 0 = 0), and a NaN tail turns the outputs NaN.  Scale k-blocks beyond ``k_alloc`` (the
  layout's own rounding of k-blocks to 4) have no data and are not read.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from harness.backends.protocol import GemmBackend, Precision, Requirements, Unsupported
from harness.format import BLOCK_SIZE
from harness.kernels.nvfp4 import LAYOUT_ID, _e2m1_decode, _e4m3_decode, _scale_offset
from harness.layouts import ScaleLayout

if TYPE_CHECKING:  # pragma: no cover
    from harness.pipeline import GemmOperands, QuantizedTensor


def interpreting() -> bool:
    """Whether Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _nvfp4_tile(packed_ptr, stride_r, scale_ptr, padded_kb, r, row_ok, kb0, kb_alloc,
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
    sf = tl.load(scale_ptr + _scale_offset(r[:, None], kb[None, :], padded_kb, LAYOUT),
                 mask=row_ok[:, None] & (kb < kb_alloc)[None, :], other=0).to(tl.int32)
    s = _e4m3_decode(sf)  # [ROWS, KB_STEP] fp32
    # one scale per 8 bytes: [ROWS, KB_STEP] -> [ROWS, KB_STEP, 8] -> [ROWS, KB_STEP*8]
    s = tl.reshape(tl.broadcast_to(s[:, :, None], (ROWS, KB_STEP, 8)), (ROWS, KB_STEP * 8))
    even = _e2m1_decode(byte & 0xF) * s
    odd = _e2m1_decode(byte >> 4) * s
    if not AS_FP32:
        even = even.to(tl.bfloat16)
        odd = odd.to(tl.bfloat16)
    return even, odd


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr):
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
def _store_out(out_ptr, stride_om, stride_on, rm, rn, mask, acc, OUT_BF16: tl.constexpr):
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
        a_even, a_odd = _nvfp4_tile(a_ptr, stride_am, a_sf_ptr, a_sf_kb, rm, m_ok, kb0, kb_alloc,
                                    A_LAYOUT, BLOCK_M, KB_STEP, DOT_FP32)
        w_even, w_odd = _nvfp4_tile(w_ptr, stride_wn, w_sf_ptr, w_sf_kb, rn, n_ok, kb0, kb_alloc,
                                    W_LAYOUT, BLOCK_N, KB_STEP, DOT_FP32)
        acc = _dot(a_even, tl.trans(w_even), acc, DOT_FP32)
        acc = _dot(a_odd, tl.trans(w_odd), acc, DOT_FP32)
    acc = acc * tl.load(alpha_ptr)
    _store_out(out_ptr, stride_om, stride_on, rm, rn, m_ok[:, None] & n_ok[None, :], acc, OUT_BF16)


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


class TritonEmulationGemm(GemmBackend):
    """The Triton emulation GEMM for one pair of declared scale layouts."""

    def __init__(self, name: str, a_layout: ScaleLayout, w_layout: ScaleLayout, description: str) -> None:
        self.name = name
        self.description = description
        self.requirements = Requirements(
            compute_capabilities=None, runs_on_cpu=True,
            a_layouts=(a_layout,), w_layout=w_layout,
            # N: the smallest tensor-core tile; the kernel masks columns >= n_alloc so any N would
            # do, but padding N gives the harness an N-padding region to poison and slice, as the
            # real backends' (N % 32) does.  K: one k-block; the K loop covers the padded K.
            n_align=16, k_align=16,
            out_dtypes=(torch.bfloat16, torch.float16),
            precision=Precision(accumulator_bits=24, operand_bits=None),
            column_bitwise=True,  # BLOCK_N is fixed on GPUs: a column's arithmetic does not depend on N
        )

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        req = self.requirements
        if ops.a.layout not in req.a_layouts or ops.w.layout is not req.w_layout:
            raise Unsupported(f"{self.name} takes A scales {[x.value for x in req.a_layouts]} and W scales "
                              f"{req.w_layout.value}, got {ops.a.layout.value} and {ops.w.layout.value}")
        if ops.out_dtype not in req.out_dtypes:
            raise Unsupported(f"{self.name}: output dtype {ops.out_dtype} not in {list(req.out_dtypes)}")
        return nvfp4_gemm(ops, out)


def backends() -> list[TritonEmulationGemm]:
    L = ScaleLayout
    return [
        TritonEmulationGemm(
            "triton-emu-128x4", L.SWIZZLED_128x4, L.SWIZZLED_128x4,
            "Triton NVFP4 GEMM emulation (exact bf16 operands, fp32 accumulation); 128x4 scales for A and W; "
            "reads the K tail like hardware"),
        TritonEmulationGemm(
            "triton-emu-8x4", L.SWIZZLED_8x4, L.SWIZZLED_128x4,
            "Triton NVFP4 GEMM emulation; activation scales in TRT-LLM's small-m 8x4 layout, weight scales 128x4"),
        TritonEmulationGemm(
            "triton-emu-linear", L.LINEAR, L.LINEAR,
            "Triton NVFP4 GEMM emulation; linear (row-major) scales for A and W"),
    ]
