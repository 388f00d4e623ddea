"""``triton-w4a16``: dense bf16/fp16 activations times NVFP4 weights, one Triton kernel (Marlin-like).

Tile by tile the kernel decodes the weight (packed e2m1 bytes and 128x4 scale bytes read at the
layout's offsets, integer e4m3 decode) to ``code * sf``, exact in the activation dtype (at most 6
significant bits, range 2^-10 .. 2688, inside bf16's and fp16's), multiplies it with the dense
activation tile in ``tl.dot`` (fp32 accumulation) and applies ``alpha = 1 / gs_w`` once at the end.
The activations are not quantized, so nothing but the fp32 sums, the alpha multiply and the output
cast round: ``Precision(accumulator_bits=24, operand_bits=None)``.

Like the NVFP4 emulation kernels (:mod:`harness.backends.triton_emulation`) it runs over every
k-block of the allocated K and does not mask the K tail: the activations' K padding is zero, and
``0 * sf`` is 0 only when the tail scale is finite, so a NaN K-tail weight scale turns outputs NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from harness.backends.protocol import GemmBackend, Precision, Requirements, Unsupported
from harness.backends.triton_emulation import (_dot, _nvfp4_tile, _store_out, interpreting, launch_setup,
                                               out_view)
from harness.format import BLOCK_SIZE
from harness.kernels.nvfp4 import LAYOUT_ID
from harness.layouts import ScaleLayout

if TYPE_CHECKING:  # pragma: no cover
    from harness.pipeline import GemmOperands


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
        w_even, w_odd = _nvfp4_tile(w_ptr, stride_wn, w_sf_ptr, w_sf_kb, rn, n_ok, kb0, kb_alloc,
                                    W_LAYOUT, BLOCK_N, KB_STEP, True)
        if DOT_FP32:
            a_even = a_even.to(tl.float32)
            a_odd = a_odd.to(tl.float32)
        else:
            w_even = w_even.to(a_ptr.dtype.element_ty)
            w_odd = w_odd.to(a_ptr.dtype.element_ty)
        acc = _dot(a_even, tl.trans(w_even), acc, DOT_FP32)
        acc = _dot(a_odd, tl.trans(w_odd), acc, DOT_FP32)
    acc = acc * tl.load(alpha_ptr)
    _store_out(out_ptr, stride_om, stride_on, rm, rn, m_ok[:, None] & n_ok[None, :], acc, OUT_BF16)


class TritonW4A16Gemm(GemmBackend):
    name = "triton-w4a16"
    description = ("Triton W4A16 GEMM (Marlin-like): bf16/fp16 activations x NVFP4 weights decoded exactly "
                   "per tile, fp32 accumulation, alpha = 1/gs_w; reads the weight's K tail")
    requirements = Requirements(
        compute_capabilities=None, runs_on_cpu=True,
        a_layouts=(ScaleLayout.SWIZZLED_128x4,),  # the NVFP4 activation is built but not used
        w_layout=ScaleLayout.SWIZZLED_128x4,
        n_align=16, k_align=16,
        out_dtypes=(torch.bfloat16, torch.float16),
        activation="bf16",
        precision=Precision(accumulator_bits=24, operand_bits=None),
        column_bitwise=True,
    )

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        req = self.requirements
        x, w = ops.a_dense, ops.w
        if x is None:
            raise ValueError(f"{self.name}: operands carry no dense activations (build them with activation='bf16')")
        if x.dtype not in (torch.bfloat16, torch.float16):
            raise Unsupported(f"{self.name}: activations must be bf16 or fp16, got {x.dtype}")
        if w.layout is not req.w_layout:
            raise Unsupported(f"{self.name} takes W scales {req.w_layout.value}, got {w.layout.value}")
        if ops.out_dtype not in req.out_dtypes:
            raise Unsupported(f"{self.name}: output dtype {ops.out_dtype} not in {list(req.out_dtypes)}")
        if tuple(x.shape) != (ops.m, w.k_alloc):
            raise ValueError(f"{self.name}: dense activations {tuple(x.shape)}, expected {(ops.m, w.k_alloc)}")
        if w.scales.shape[1] < w.k_alloc // BLOCK_SIZE:
            raise ValueError(f"{self.name}: W scale buffer {tuple(w.scales.shape)} does not cover k_alloc={w.k_alloc}")
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


def backends() -> list[GemmBackend]:
    return [TritonW4A16Gemm()]
