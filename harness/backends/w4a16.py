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

from harness.backends.protocol import GemmBackend, Precision, Requirements, Unsupported
from harness.kernels.gemm import w4a16_gemm
from harness.layouts import ScaleLayout

if TYPE_CHECKING:  # pragma: no cover
    from harness.pipeline import GemmOperands


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
        return w4a16_gemm(ops, out)


def backends() -> list[GemmBackend]:
    return [TritonW4A16Gemm()]
