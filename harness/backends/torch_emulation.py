"""``torch-emu``: the NVFP4 GEMM as serving engines run it without FP4 hardware.

Both operands are dequantized with their global scales folded in, ``code * sf / gs`` (fp32, then
rounded to bf16), and multiplied in bf16 with fp32 accumulation, then cast to the output dtype.
Unlike the block-scaled kernels, the operands themselves are rounded (to bf16's 8 significant
bits), so the backend declares ``Precision(accumulator_bits=24, operand_bits=8)``.

The bf16 operands are multiplied as fp32 tensors (``torch.matmul`` in fp32): each product of two
bf16 values is exact in fp32, so this is the bf16 x bf16 -> fp32-accumulate GEMM, with a single
rounding to the output dtype (a bf16 ``torch.matmul`` would round its result to bf16 first, which
is the wrong model for an fp16 output).

Only the real region is read (the scales of [rows, K/16] are gathered from their own offsets by
:func:`harness.layouts.real_scales`; compute-sanitizer's initcheck found the former full unswizzle
reading every padding byte), so this backend is immune to every padding poison, the K tail included:
it is the "masks everything" end of the spectrum the Triton emulation kernels are the other end of.
Padding columns [n, n_alloc) of the output are written as zeros.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from harness.backends.protocol import GemmBackend, Precision, Requirements, Unsupported
from harness.format import BLOCK_SIZE, e2m1_decode, e4m3_decode, unpack_e2m1
from harness.layouts import ScaleLayout, real_scales

if TYPE_CHECKING:  # pragma: no cover
    from harness.pipeline import GemmOperands, QuantizedTensor


def dequantize_folded(t: "QuantizedTensor", dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The real region [rows, k] of ``t`` as ``code * sf / gs``: computed in fp32, rounded to ``dtype``.

    ``code * sf`` is exact in fp32; the division by the global scale is one fp32 rounding and the
    cast to ``dtype`` a second one.
    """
    codes = unpack_e2m1(t.packed[:t.rows, :t.k // 2])
    sf = real_scales(t.scales, t.layout, t.rows, t.kblocks)
    v = e2m1_decode(codes).reshape(t.rows, t.kblocks, BLOCK_SIZE) * e4m3_decode(sf).unsqueeze(-1)
    gs = t.global_scale.reshape(1, 1).to(device=v.device, dtype=torch.float32)
    return (v.reshape(t.rows, t.k) / gs).to(dtype)


class TorchEmulationGemm(GemmBackend):
    name = "torch-emu"
    description = ("dequantize both operands to bf16 with the global scales folded in (as engines without FP4 "
                   "hardware do), bf16 GEMM with fp32 accumulation; reads only the real region")
    requirements = Requirements(
        compute_capabilities=None, runs_on_cpu=True,
        a_layouts=(ScaleLayout.SWIZZLED_128x4, ScaleLayout.SWIZZLED_8x4, ScaleLayout.LINEAR),
        w_layout=ScaleLayout.SWIZZLED_128x4,
        n_align=1, k_align=16,
        out_dtypes=(torch.bfloat16, torch.float16),
        precision=Precision(accumulator_bits=24, operand_bits=8),
    )

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        if ops.out_dtype not in self.requirements.out_dtypes:
            raise Unsupported(f"{self.name}: output dtype {ops.out_dtype} not in {list(self.requirements.out_dtypes)}")
        a = dequantize_folded(ops.a)
        w = dequantize_folded(ops.w)
        shape = (ops.m, ops.w.rows_alloc)
        if out is None:
            out = torch.zeros(shape, dtype=ops.out_dtype, device=a.device)
        elif tuple(out.shape) != shape or out.dtype != ops.out_dtype:
            raise ValueError(f"out buffer is {tuple(out.shape)} {out.dtype}; expected {shape} {ops.out_dtype}")
        else:
            out[:, ops.n:] = 0
        out[:, :ops.n] = torch.matmul(a.float(), w.float().T).to(ops.out_dtype)
        return out


def backends() -> list[GemmBackend]:
    return [TorchEmulationGemm()]
