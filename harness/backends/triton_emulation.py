"""NVFP4 GEMM emulated in one Triton kernel: the backends the harness can check anywhere.

``triton-emu-128x4``, ``triton-emu-8x4`` and ``triton-emu-linear`` run the same kernel, specialised
by constexpr layout ids for the activation (A) and weight (W) scale buffers.  Tile by tile the kernel

* loads packed e2m1 bytes of A [BLOCK_M rows] and W [BLOCK_N rows] for ``KB_STEP`` k-blocks
  (16 K elements, 8 bytes each),
* loads the matching scale bytes at the layout's byte offsets
  (:func:`harness.kernels.nvfp4.scale_offset`), so a swizzled buffer is read as the hardware reads
  it, and decodes them with integer arithmetic (:func:`~harness.kernels.nvfp4.e4m3_decode`;
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

from typing import TYPE_CHECKING

import torch

from harness.backends.protocol import GemmBackend, Precision, Requirements, Unsupported
from harness.kernels.gemm import nvfp4_gemm
from harness.layouts import ScaleLayout

if TYPE_CHECKING:  # pragma: no cover
    from harness.pipeline import GemmOperands


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
