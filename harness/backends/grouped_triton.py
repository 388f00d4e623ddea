"""Grouped NVFP4 GEMM with routing weights, emulated with the Triton kernels: runs anywhere.

``grouped-triton-emu`` consumes the pipeline's grouped activation buffer (every expert's section in
one packed and one 128x4 scale buffer, poisoned padding); ``grouped-triton-emu-fused`` takes the
bf16 hidden states and the per-expert input global scales and quantizes them itself with
:func:`harness.grouped.pipeline.grouped_quantize` (as a fused MoE kernel such as FlashInfer's
``cutlass_fused_moe`` does), then runs the same GEMMs.

Per expert with tokens, the section and the expert's weight go through the Triton NVFP4 GEMM of
:mod:`harness.kernels.gemm` (exact operands, fp32 accumulation, alpha of that expert,
fp32 output; rows past the section and columns past n_alloc masked, the K tail read like
hardware).  A zero-token expert launches nothing.  The combine is deterministic: each top-k term
``fl32(w_tj * y)`` is formed, the terms are summed in slot order in fp32, and the sum is rounded
to nearest into the output dtype.  Precision: ``Precision(24)`` per GEMM, fp32 intermediate.
"""

from __future__ import annotations

import torch

from harness.backends.protocol import Requirements, Unsupported
from harness.kernels.gemm import nvfp4_gemm
from harness.grouped.pipeline import GroupedOperands, GroupedTensor, grouped_quantize
from harness.grouped.problem import GROUPED_PROPERTIES
from harness.grouped.protocol import GroupedBackend
from harness.oracle import Precision
from harness.pipeline import GemmOperands

REQUIREMENTS = Requirements(compute_capabilities=None, runs_on_cpu=True, n_align=16, k_align=16,
                            out_dtypes=(torch.bfloat16, torch.float16),
                            precision=Precision(accumulator_bits=24, operand_bits=None))


def grouped_gemm(a: GroupedTensor, ops: GroupedOperands, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Per-expert products [sum(splits), n_alloc] fp32, rows in the sections' (token-sorted) order:
    expert ``e``'s section of ``a`` times its weight, times ``alpha[e]`` (``ops.alpha`` by default)."""
    alpha = ops.alpha if alpha is None else alpha
    dev = a.packed.device
    y = torch.zeros((sum(a.splits), ops.w.n_alloc), dtype=torch.float32, device=dev)
    src = 0
    for e, c in enumerate(a.splits):
        if c == 0:
            continue
        g = GemmOperands(a.group(e), ops.w.expert(e), alpha[e:e + 1], torch.float32)
        y[src:src + c] = nvfp4_gemm(g)
        src += c
    return y


def combine(y: torch.Tensor, ops: GroupedOperands, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Routed output [tokens, n_alloc] in the output dtype from the sorted products ``y``: each term
    ``fl32(w * y)`` at its token's slot, the slots summed in order in fp32, then one rounding."""
    weights = ops.topk_weights if weights is None else weights
    t, top_k = ops.topk_ids.shape
    terms = torch.zeros((t, top_k, y.shape[1]), dtype=torch.float32, device=y.device)
    w_rows = weights.to(y.device)[ops.order, ops.slot]
    terms[ops.order, ops.slot] = w_rows[:, None] * y
    acc = terms[:, 0]
    for j in range(1, top_k):
        acc = acc + terms[:, j]
    return acc.to(ops.out_dtype)


class GroupedTritonGemm(GroupedBackend):
    """Grouped GEMM on the pipeline's grouped activation buffer."""
    name = "grouped-triton-emu"
    description = ("Triton grouped NVFP4 GEMM emulation: one 128x4 grouped activation buffer, per-expert weights "
                   "and global scales, routing weights applied in an fp32 combine")
    requirements = REQUIREMENTS
    # grouped_bytes compares the buffer a backend quantizes; this one takes the pipeline's
    properties = tuple(p for p in GROUPED_PROPERTIES if p != "grouped_bytes")

    def check(self, ops: GroupedOperands) -> None:
        if ops.out_dtype not in self.requirements.out_dtypes:
            raise Unsupported(f"{self.name}: output dtype {ops.out_dtype} not in {list(self.requirements.out_dtypes)}")

    def run(self, ops: GroupedOperands) -> torch.Tensor:
        self.check(ops)
        return combine(grouped_gemm(ops.a, ops), ops)


class GroupedTritonFused(GroupedTritonGemm):
    """Quantizes the hidden states itself (per-expert input scales), then the grouped GEMM."""
    name = "grouped-triton-emu-fused"
    description = ("Triton fused MoE emulation: quantizes the hidden states per expert section with that expert's "
                   "input global scale into one grouped buffer, then the grouped GEMM and the routed combine")
    quantizes = True
    properties = GROUPED_PROPERTIES

    def quantize(self, ops: GroupedOperands) -> GroupedTensor:
        return grouped_quantize(ops.hidden[ops.order], ops.a.splits, ops.input_scales, layout=ops.a.layout,
                                row_align=ops.problem.row_align, k_alloc=ops.a.k_alloc)

    def run(self, ops: GroupedOperands) -> torch.Tensor:
        self.check(ops)
        return combine(grouped_gemm(self.quantize(ops), ops), ops)


def backends() -> list[GroupedBackend]:
    return [GroupedTritonGemm(), GroupedTritonFused()]
