"""Fused-MoE emulation with the Triton kernels (runs on any CUDA GPU and on the CPU interpreter),
and the unfused composition of the grouped level's stages it must equal.

``moe-triton-emu`` runs a fused MoE the way a fused kernel is organised: expert by expert, the
section of hidden states is quantized with the expert's FC1 input scale
(:func:`harness.kernels.nvfp4.quantize_into`), multiplied by W13 (the Triton NVFP4 GEMM of
:mod:`harness.kernels.gemm`, fp32 accumulation and output), passed through SwiGLU in fp32
(``silu(gate) * up``), re-quantized with the expert's FC2 input scale and multiplied by W2; no
grouped buffer is built.  The routed combine is :func:`harness.backends.grouped_triton.combine`.

:func:`unfused_moe` is the same layer stage by stage over all experts, as separate kernels run it:
the grouped quantize into one buffer (:func:`harness.grouped.pipeline.grouped_quantize`, the stage
``grouped_bytes`` proves), the grouped FC1 GEMM (:func:`harness.backends.grouped_triton.grouped_gemm`),
the activation, the grouped quantize of the intermediate, and the registered grouped backend
``grouped-triton-emu`` for FC2 with the routing weights.  The two share their arithmetic, so the
``fused_unfused`` property requires them to agree bit for bit.

Precision: ``Precision(24)`` per GEMM, FC1 output and activation in fp32; the activation is
PyTorch's fp32 ``silu`` (``x / (1 + exp(-x))`` with a libm-accurate ``exp``, within 2 ulp) times
``up``: relative error below ``6 * 2^-24`` (declared ``2^-21``).
"""

from __future__ import annotations

import torch

from harness.backends.grouped_triton import REQUIREMENTS, combine, grouped_gemm
from harness.backends.protocol import Unsupported
from harness.grouped import registry
from harness.grouped.moe import MoeOperands, swiglu
from harness.grouped.pipeline import grouped_quantize
from harness.grouped.protocol import MoeBackend
from harness.kernels.gemm import nvfp4_gemm
from harness.kernels.nvfp4 import quantize_into
from harness.layouts import OperandRole, ScaleLayout
from harness.pipeline import GemmOperands, QuantizedTensor

GROUPED_FC2_BACKEND = "grouped-triton-emu"
"""The registered grouped backend the unfused composition runs FC2 (and the routed combine) with."""


def _check(backend_name: str, ops: MoeOperands) -> None:
    if ops.out_dtype not in REQUIREMENTS.out_dtypes:
        raise Unsupported(f"{backend_name}: output dtype {ops.out_dtype} not in {list(REQUIREMENTS.out_dtypes)}")


def quantize_section(x: torch.Tensor, gs: torch.Tensor, k: int) -> QuantizedTensor:
    """One expert's rows ``x`` [rows, k] as an NVFP4 activation (128x4 scales) with global scale
    ``gs`` (fp32 [1])."""
    packed, scales = quantize_into(x, gs, ScaleLayout.SWIZZLED_128x4)
    return QuantizedTensor(packed, scales, ScaleLayout.SWIZZLED_128x4, OperandRole.ACTIVATION, x.shape[0], k, gs)


def unfused_moe(ops: MoeOperands) -> torch.Tensor:
    """The layer as separate grouped stages (module docstring): ``[tokens, hidden_alloc]`` in the
    output dtype."""
    p = ops.problem
    i = p.intermediate
    a1 = grouped_quantize(ops.hidden[ops.order], p.splits, ops.fc1_input_scales, layout=ScaleLayout.SWIZZLED_128x4,
                          row_align=p.row_align, k_alloc=ops.w13.k)
    h = grouped_gemm(a1, ops.fc1_ops())
    act = swiglu(h[:, :i], h[:, i:2 * i]).contiguous()
    a2 = grouped_quantize(act, p.splits, ops.fc2_input_scales, layout=ScaleLayout.SWIZZLED_128x4,
                          row_align=p.row_align, k_alloc=ops.w2.k)
    return registry.get(GROUPED_FC2_BACKEND).run(ops.fc2_ops(a2))


class MoeTritonFused(MoeBackend):
    """Fused MoE, expert by expert (module docstring)."""
    name = "moe-triton-emu"
    description = ("Triton fused-MoE emulation: per expert, quantize the section (FC1 input scale), FC1 GEMM, "
                   "SwiGLU in fp32, NVFP4 requantize (static FC2 input scale), FC2 GEMM; fp32 routed combine")
    requirements = REQUIREMENTS
    bitwise_unfused = True

    # -- the stages a planted bug replaces (harness.grouped.mutants) -------------------------------
    def fc1_result(self, h: torch.Tensor) -> torch.Tensor:
        """FC1's fp32 result [rows, 2I] as the activation reads it."""
        return h

    def activation(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """SwiGLU of FC1's result: the first ``i`` columns are the gate, the next ``i`` the up projection."""
        return swiglu(h[:, :i], h[:, i:2 * i])

    def fc2_input_scale(self, ops: MoeOperands, e: int) -> torch.Tensor:
        """The FC2 input global scale (fp32 [1]) expert ``e``'s intermediate is quantized with."""
        return ops.fc2_input_scales[e:e + 1]

    def run(self, ops: MoeOperands) -> torch.Tensor:
        _check(self.name, ops)
        p = ops.problem
        i = p.intermediate
        y = torch.zeros((sum(p.splits), ops.w2.n_alloc), dtype=torch.float32, device=ops.hidden.device)
        src = 0
        for e, c in enumerate(p.splits):
            if c == 0:
                continue
            x = ops.hidden[ops.order[src:src + c]]
            a = quantize_section(x, ops.fc1_input_scales[e:e + 1], p.hidden)
            h = self.fc1_result(nvfp4_gemm(GemmOperands(a, ops.w13.expert(e), ops.alpha1[e:e + 1], torch.float32)))
            act = self.activation(h, i).contiguous()
            a2 = quantize_section(act, self.fc2_input_scale(ops, e), i)
            y[src:src + c] = nvfp4_gemm(GemmOperands(a2, ops.w2.expert(e), ops.alpha2[e:e + 1], torch.float32))
            src += c
        return combine(y, ops)


def backends() -> list[MoeBackend]:
    return [MoeTritonFused()]
