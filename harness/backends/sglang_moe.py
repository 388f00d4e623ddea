"""Adapter for SGLang's NVFP4 fused-MoE kernel entry point: ``cutlass_moe_fp4`` (NVFP4 x NVFP4,
Blackwell).

SGLang's other NVFP4 MoE paths call FlashInfer (``cutlass_fused_moe``, ``trtllm_fp4_block_scale_moe``:
the ``flashinfer-*-moe`` adapters of :mod:`harness.backends.flashinfer_moe` run those kernels) or
its Marlin port for GPUs without FP4 tensor cores (the arithmetic of ``moe-torch-w4a16-emu``; its
"routed scaling factor applied twice" bug, SGLang PR #31762, is ``mutant-moe-routed-scaling-twice``).

Written from SGLang's source (github.com/sgl-project/sglang), read at these commits:
``python/sglang/srt/layers/moe/cutlass_moe.py`` @ eef3abb880d3 (``cutlass_moe_fp4``) and
``python/sglang/srt/layers/moe/cutlass_moe_params.py`` @ d4c464c6ca0c (``CutlassMoEParams``; later
releases take ``quant_type: CutlassMoEQuantType`` instead of ``cutlass_moe_type``).

``cutlass_moe_fp4(a, a1_gscale, w1_fp4, w1_blockscale, w1_alphas, a2_gscale, w2_fp4,
w2_blockscale, w2_alphas, topk_weights, topk_ids, params, apply_router_weight_on_input=False)``:

* ``a``: bf16/fp16 hidden states [tokens, hidden], quantized expert by expert with
  ``a1_gscale`` [E] (FC1 input encode divisors: per expert, or one value repeated);
* ``w1_fp4`` uint8 [E, 2I, hidden/2] in ``[gate; up]`` order (SGLang's ``silu_and_mul`` applies
  silu to the first half, as vLLM's does), ``w1_blockscale`` its e4m3 block scales in the 128x4
  layout (SGLang's ``swizzle_blockscale``: the harness's layout), ``w1_alphas = 1 / (input scale *
  weight scale)`` [E]; likewise ``w2_*`` with the static FC2 input scales ``a2_gscale``;
* ``params``: ``CutlassMoEParams(BlockscaledFP4, device, num_experts, intermediate_size_per_partition,
  hidden_size)``, built by :meth:`SglangCutlassMoe.params` from the installed constructor's
  signature (it allocates CUDA buffers);
* the combine: FC2's result in the output dtype times ``topk_weights.to(out_dtype)``, summed over the
  top-k slots (``c2.sum(dim=1)``; later releases fuse it as ``apply_shuffle_mul_sum``): declared
  ``fc2_out = weight_dtype = term_out = bf16``.

Capability: SGLang's own ``is_sm100_supported()`` (the predicate its ModelOpt FP4 MoE method uses
to pick CUTLASS kernels), read from the installed package.  Never run for this project (no SGLang,
no Blackwell GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from harness.backends._engine_moe import (call_kwargs, cutlass_fp4_operands, first_attr, library_version,
                                          require_cuda)
from harness.backends.protocol import Requirements, Support, Unsupported
from harness.grouped.moe import MoeOperands
from harness.grouped.protocol import MoeBackend
from harness.oracle import Precision

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment

CUTLASS_MOE_MODULES = ("sglang.srt.layers.moe.cutlass_moe",)
PARAMS_MODULES = ("sglang.srt.layers.moe.cutlass_moe_params",)
ARCH_MODULES = ("sglang.srt.utils", "sglang.srt.utils.common", "sglang.srt.utils.arch")


class SglangCutlassMoe(MoeBackend):
    """SGLang's ``cutlass_moe_fp4`` (module docstring)."""
    name = "sglang-cutlass-moe"
    description = ("SGLang cutlass_moe_fp4, NVFP4 x NVFP4 (Blackwell): per-expert FC1 input scales, SiLU-and-mul, "
                   "NVFP4 requantize with static FC2 scales, bf16 routed combine")
    distribution = "sglang"
    requirements = Requirements(compute_capabilities=None, packages=("sglang",),
                                out_dtypes=(torch.bfloat16, torch.float16),
                                precision=Precision(accumulator_bits=24, operand_bits=None))
    fc1_out = torch.bfloat16
    act_out = torch.bfloat16
    activation_error = (2.0 ** -8 + 2.0 ** -20, 2.0 ** -23)  # the coarser of SGLang's activation kernels
    fc2_out = torch.bfloat16
    weight_dtype = torch.bfloat16
    term_out = torch.bfloat16

    def _entry(self):
        fn, why = first_attr(CUTLASS_MOE_MODULES, "cutlass_moe_fp4")
        if fn is None:
            raise Unsupported(f"{self.name}: SGLang {library_version('sglang')} has no importable cutlass_moe_fp4 "
                              f"({why})")
        return fn

    def parameters(self) -> tuple[str, ...]:
        import inspect
        return tuple(inspect.signature(self._entry()).parameters)

    def support(self, env: "Environment") -> Support:
        version = library_version(self.distribution)
        if version is None:
            return Support(False, "package 'sglang' is not installed (a serving engine: pip install sglang on a CUDA "
                                  "node; this adapter calls its cutlass_moe_fp4)")
        fn, why = first_attr(CUTLASS_MOE_MODULES, "cutlass_moe_fp4")
        if fn is None:
            return Support(False, f"sglang {version} is installed but cutlass_moe_fp4 cannot be imported ({why})")
        if env.device != "cuda" or env.compute_capability is None:
            return Support(False, f"sglang {version} cutlass_moe_fp4 runs CUDA kernels; this machine has no CUDA GPU")
        check, why = first_attr(ARCH_MODULES, "is_sm100_supported")
        if check is None:
            return Support(False, f"sglang {version} exposes no is_sm100_supported check ({why})")
        try:
            ok = bool(check())
        except Exception as exc:  # noqa: BLE001 - observed, not assumed
            return Support(False, f"sglang {version} is_sm100_supported() raised {type(exc).__name__}: {exc}")
        if not ok:
            return Support(False, f"sglang {version} is_sm100_supported() is False on SM{env.compute_capability} "
                                  f"({env.gpu_name}): its CUTLASS NVFP4 grouped GEMMs are Blackwell kernels")
        return Support(True, f"sglang {version} cutlass_moe_fp4 on SM{env.compute_capability}")

    def params(self, ops: MoeOperands):
        """SGLang's ``CutlassMoEParams`` for ``ops`` (allocates on ``ops``' device), from the installed
        constructor's signature."""
        cls, why = first_attr(PARAMS_MODULES, "CutlassMoEParams")
        if cls is None:
            raise Unsupported(f"{self.name}: the installed SGLang has no CutlassMoEParams ({why})")
        p = ops.problem
        known: dict[str, Any] = {"device": ops.hidden.device, "num_experts": p.experts,
                                 "intermediate_size_per_partition": p.intermediate, "hidden_size": p.hidden}
        for field, enum_name in (("cutlass_moe_type", "CutlassMoEType"), ("quant_type", "CutlassMoEQuantType")):
            enum, _ = first_attr(PARAMS_MODULES, enum_name)
            if enum is not None and hasattr(enum, "BlockscaledFP4"):
                known[field] = enum.BlockscaledFP4
        return cls(**call_kwargs(cls, known, self.name))

    def known_arguments(self, ops: MoeOperands) -> dict[str, Any]:
        """Every argument of ``cutlass_moe_fp4`` but ``params`` (pure)."""
        return cutlass_fp4_operands(ops, self.name)

    def prepare(self, ops: MoeOperands) -> dict[str, Any]:
        """The keyword arguments of the installed ``cutlass_moe_fp4`` for ``ops`` (``params`` included)."""
        known = self.known_arguments(ops)
        known["params"] = self.params(ops)
        return call_kwargs(self._entry(), known, self.name)

    def run(self, ops: MoeOperands) -> torch.Tensor:
        require_cuda(self.name, ops, "SGLang's cutlass_moe_fp4")
        return self._entry()(**self.prepare(ops))

    def describe(self) -> dict:
        d = super().describe()
        d["library"] = self.distribution
        d["library_version"] = library_version(self.distribution)
        return d


def backends() -> list[MoeBackend]:
    return [SglangCutlassMoe()]
