"""A complete backend plugin for nvfp4-harness: a GEMM backend that dequantizes with torch and
multiplies in fp32.

Load it without installing anything:
    nvfp4-harness backends --plugin examples/torch_reference_plugin.py
    pytest properties/ --nvfp4-plugin examples/torch_reference_plugin.py --nvfp4-backends example-torch-fp32
or declare it in your package's pyproject.toml:
    [project.entry-points."nvfp4_harness.backends"]
    example = "torch_reference_plugin:backends"
"""

from __future__ import annotations

import torch

from harness.backends.protocol import GemmBackend, Precision, Requirements
from harness.layouts import ScaleLayout


class TorchFp32Gemm(GemmBackend):
    name = "example-torch-fp32"
    description = "example plugin: dequantize the real region with torch, fp32 matmul"
    requirements = Requirements(
        runs_on_cpu=True,                                   # also any CUDA GPU
        a_layouts=(ScaleLayout.SWIZZLED_128x4, ScaleLayout.SWIZZLED_8x4),
        w_layout=ScaleLayout.SWIZZLED_128x4,
        n_align=1, k_align=16,
        precision=Precision(accumulator_bits=24),           # fp32 sums of exact products
    )

    def run(self, ops, out=None):
        a = ops.a.dequantize()                              # code * scale, real region only
        w = ops.w.dequantize()
        acc = (a @ w.T) * ops.alpha                         # [m, n]
        result = torch.zeros((ops.m, ops.w.rows_alloc), dtype=ops.out_dtype, device=a.device)
        result[:, :ops.n] = acc.to(ops.out_dtype)
        if out is not None:
            out.copy_(result)
            return out
        return result


def backends():
    return [TorchFp32Gemm()]
