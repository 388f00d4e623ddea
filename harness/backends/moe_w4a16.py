"""A weight-only (W4A16) fused-MoE emulation in PyTorch: the arithmetic of Marlin's FP4 MoE.

Serving engines run NVFP4 MoE checkpoints on GPUs without FP4 tensor cores (SM80, SM90) through
Marlin: vLLM's ``fused_marlin_moe`` with ``float4_e2m1f`` weights (and SGLang's port of it).
Only the weights are NVFP4; the hidden states and the intermediate stay bf16.  ``moe-torch-w4a16-emu``
computes that layer the way those kernels order it (vLLM
``vllm/model_executor/layers/fused_moe/experts/marlin_moe.py`` at commit 424afe648c94, read for
this; ``_fused_marlin_moe``), expert by expert:

1. FC1: the bf16 hidden rows of the expert's section times the dequantized W13 (``code * block
   scale``, exact in bf16), fp32 accumulation, times the weight decode scale ``1 / global scale``
   (:func:`harness.grouped.moe.weight_decode_scales`), stored as bf16 (Marlin writes
   ``intermediate_cache1`` in the activation dtype);
2. SwiGLU from the bf16 FC1 result as vLLM's ``silu_and_mul`` kernel evaluates it: ``silu(gate)``
   in fp32 rounded to bf16 (its ``silu_kernel`` returns the input type), times ``up`` in fp32,
   stored as bf16; no FP4 requantization;
3. FC2 likewise, the routing weight multiplied in fp32 in the epilogue (``mul_topk_weights``) and
   each term stored as bf16;
4. the top-k terms of a token summed in fp32 and rounded once to the output dtype (``torch.sum``
   of the bf16 ``[tokens, top_k, hidden]`` terms).

Declared (for :mod:`harness.grouped.moe_reference`): ``activation_quant = False``, FC1 result,
activation and routed terms bf16 (``fc1_out``, ``act_out``, ``term_out``), fp32 GEMMs with exact
products (``Precision(24)``: a bf16 hidden value times an e2m1 * e4m3 weight has at most 14
significant bits).  It runs anywhere (CPU included) and is the parent of the Marlin-class mutants
of :mod:`harness.grouped.mutants`.  Where the intermediate dtypes are bf16 regardless of the input
dtype (fp16 hidden states included), the emulation keeps bf16: it models vLLM's bf16 models.
"""

from __future__ import annotations

import torch

from harness.backends.protocol import Requirements, Unsupported
from harness.grouped.moe import MoeOperands, weight_decode_scales
from harness.grouped.problem import MOE_PROPERTIES
from harness.grouped.protocol import MoeBackend
from harness.oracle import Precision
from harness.torch_modes import tf32_off

W4A16_PROPERTIES: tuple[str, ...] = tuple(p for p in MOE_PROPERTIES if p != "fused_unfused")
"""The fused-MoE properties of a weight-only backend: ``fused_unfused`` compares with the NVFP4 x
NVFP4 grouped stages, which quantize the activations."""

REQUIREMENTS = Requirements(compute_capabilities=None, runs_on_cpu=True, n_align=16, k_align=16,
                            out_dtypes=(torch.bfloat16, torch.float16), activation="bf16",
                            precision=Precision(accumulator_bits=24, operand_bits=None))


def _matmul_fp32(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a @ w^T`` in fp32 with TF32 off (TF32 would round the operands)."""
    with tf32_off():
        return a.float() @ w.float().T


class MoeTorchW4A16(MoeBackend):
    """Marlin-style weight-only fused MoE (module docstring)."""
    name = "moe-torch-w4a16-emu"
    description = ("PyTorch W4A16 fused-MoE emulation in Marlin's order: bf16 hidden states x NVFP4 weights "
                   "(fp32 accumulation, weight decode scale), bf16 FC1 result, fp32 SwiGLU -> bf16, FC2 with the "
                   "routing weight in the fp32 epilogue, bf16 terms, fp32 top-k sum")
    requirements = REQUIREMENTS
    properties = W4A16_PROPERTIES
    activation_quant = False
    fc1_out = torch.bfloat16
    act_out = torch.bfloat16
    term_out = torch.bfloat16
    # silu in fp32 (PyTorch's, within 6 * 2^-24) rounded to bf16 (2^-8), the product with up in fp32
    activation_error = (2.0 ** -8 + 2.0 ** -20, 0.0)

    # -- the stages a planted bug replaces (harness.grouped.mutants) -------------------------------
    def routed_sum(self, terms: torch.Tensor) -> torch.Tensor:
        """fp32 [tokens, hidden]: the sum over the top-k slots of the bf16 terms ``[tokens, top_k, hidden]``."""
        return terms.float().sum(dim=1)

    def run(self, ops: MoeOperands) -> torch.Tensor:
        if ops.out_dtype not in self.requirements.out_dtypes:
            raise Unsupported(f"{self.name}: output dtype {ops.out_dtype} not in {list(self.requirements.out_dtypes)}")
        p = ops.problem
        i, h = p.intermediate, p.hidden
        d1, d2 = weight_decode_scales(ops.w13).to(ops.hidden.device), weight_decode_scales(ops.w2).to(ops.hidden.device)
        terms = torch.zeros((p.tokens, p.top_k, h), dtype=torch.bfloat16, device=ops.hidden.device)
        src = 0
        for e, c in enumerate(p.splits):
            if c == 0:
                continue
            tok, slot = ops.order[src:src + c], ops.slot[src:src + c]
            x = ops.hidden[tok]
            fc1 = (_matmul_fp32(x, ops.w13.expert(e).dequantize()) * d1[e]).to(torch.bfloat16)
            silu = torch.nn.functional.silu(fc1[:, :i].float()).to(torch.bfloat16)
            act = (silu.float() * fc1[:, i:2 * i].float()).to(torch.bfloat16)
            y = _matmul_fp32(act, ops.w2.expert(e).dequantize()) * d2[e]
            w = ops.topk_weights.to(y.device)[tok, slot].float()
            terms[tok, slot] = (w[:, None] * y).to(torch.bfloat16)
            src += c
        return self.routed_sum(terms).to(ops.out_dtype)


def backends() -> list[MoeBackend]:
    return [MoeTorchW4A16()]
