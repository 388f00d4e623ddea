"""Adapters for vLLM's NVFP4 fused-MoE entry points: Marlin's weight-only FP4 MoE (SM80+, the one a
Hopper node runs) and the CUTLASS NVFP4 x NVFP4 MoE (Blackwell).

Written from vLLM's source (github.com/vllm-project/vllm), read at these commits:

* ``vllm/model_executor/layers/fused_moe/experts/marlin_moe.py`` @ 424afe648c94 (``fused_marlin_moe``;
  in older releases ``vllm/model_executor/layers/fused_moe/fused_marlin_moe.py`` @ 00a130a03146, whose
  ``fused_marlin_moe`` also takes a required ``gating_output``);
* ``vllm/model_executor/layers/quantization/utils/marlin_utils_fp4.py`` @ 00d52e933337
  (``prepare_nvfp4_moe_layer_for_marlin``);
* ``vllm/model_executor/layers/fused_moe/experts/cutlass_moe.py`` @ f92403be9c04 (``run_cutlass_moe_fp4``,
  ``CutlassExpertsFp4``).

Each adapter has a pure half, :func:`harness.backends._engine_moe.checkpoint_tensors` (the
harness's operands as the ModelOpt checkpoint tensors vLLM's loader receives; checked on the CPU by
inversion) and a half that needs vLLM:

``vllm-marlin-moe`` (:class:`VllmMarlinMoe`).  vLLM turns the checkpoint tensors into Marlin's
layout at load time with ``prepare_nvfp4_moe_layer_for_marlin(layer, w13, w13_scale, w13_scale_2,
w2, w2_scale, w2_scale_2, is_act_and_mul=True)``: ``gptq_marlin_repack`` of each expert's packed
weight (a CUDA op: this step cannot run on the CPU), ``marlin_permute_scales`` of its block scales,
their conversion from e4m3 to Marlin's unsigned e5m3 exponent trick (``nvfp4_marlin_process_scales``:
scale * 2^7 as a half, shifted; block scales below 2^-6 rescaled by one power of two shared by all
experts) and the matching global scale (``nvfp4_marlin_process_global_scale``, divided by that
power of two).  The adapter calls that function itself (with a stand-in ``layer`` carrying
``num_experts``, ``hidden_size``, ``intermediate_size_per_partition``, ``params_dtype``), so the
layout is vLLM's own, not a re-implementation.  Then ``fused_marlin_moe(hidden_states, w1, w2,
None, None, w1_scale, w2_scale, topk_weights, topk_ids, quant_type_id=float4_e2m1f.id,
global_scale1, global_scale2)`` with the activation left at its default (SiLU-and-mul on
``[gate | up]``, vLLM's order, so no reordering).  Routing weights are applied once, in the
second GEMM's epilogue (``mul_topk_weights = not apply_router_weight_on_input``), then the bf16
terms are summed with ``torch.sum``.  Gated by vLLM's own checks: ``MarlinExperts._supports_current_device()``
(CUDA, capability >= 8.0) where the installed release has it, else ``is_fp4_marlin_supported()``,
and ``check_marlin_supports_shape`` for both GEMMs (16-element groups).

Numerics declared for the bound (:mod:`harness.grouped.moe_reference`, W4A16 form): fp32
accumulation with exact products (bf16 x e2m1*e4m3), FC1 result bf16 (``intermediate_cache1`` has
the activation dtype), ``silu_and_mul`` rounds ``silu(gate)`` to bf16 before the product with up
(vLLM's ``silu_kernel`` returns the input type) and the product to bf16, each routed term bf16.
bf16 hidden states only: vLLM's fp16 models keep fp16 intermediates, whose overflow the bound
does not model.

``vllm-cutlass-moe`` (:class:`VllmCutlassMoe`).  ``run_cutlass_moe_fp4(output, a, a1_gscale,
w1_fp4, w1_blockscale, w1_alphas, a2_gscale, w2_fp4, w2_blockscale, w2_alphas, topk_weights,
topk_ids, [activation,] workspace13, workspace2, m, n, k, e, device)``: per-expert FC1 input encode
divisors ``a1_gscale`` [E] (the kernel quantizes the hidden states expert by expert), 128x4 block
scales (``swizzle_blockscale``'s layout: the harness's), ``w*_alphas = 1 / (input scale * weight
scale)``, static FC2 input scales ``a2_gscale``; the combine multiplies the bf16 FC2 result by
``topk_weights.to(bf16)`` and sums in bf16.  Gated by ``CutlassExpertsFp4._supports_current_device()``
(vLLM's own: capability families 100, 110, 120).

Neither adapter has run for this project (no vLLM on the harness's machines): their declared
rounding is unverified until ``tests/test_engine_moe_adapters_gpu.py`` runs them.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from harness.backends._engine_moe import (call_kwargs, checkpoint_tensors, cutlass_fp4_operands, first_attr,
                                          library_version, require_cuda)
from harness.backends.moe_w4a16 import W4A16_PROPERTIES
from harness.backends.protocol import Requirements, Support, Unsupported
from harness.format import BLOCK_SIZE
from harness.grouped.moe import MoeOperands
from harness.grouped.protocol import MoeBackend
from harness.oracle import Precision

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment

_EXACT_FP32 = Precision(accumulator_bits=24, operand_bits=None)

MARLIN_MOE_MODULES = ("vllm.model_executor.layers.fused_moe.experts.marlin_moe",
                      "vllm.model_executor.layers.fused_moe.fused_marlin_moe")
MARLIN_FP4_UTILS = ("vllm.model_executor.layers.quantization.utils.marlin_utils_fp4",)
MARLIN_UTILS = ("vllm.model_executor.layers.quantization.utils.marlin_utils",)
CUTLASS_MOE_MODULES = ("vllm.model_executor.layers.fused_moe.experts.cutlass_moe",
                       "vllm.model_executor.layers.fused_moe.cutlass_moe")
ACTIVATION_MODULES = ("vllm.model_executor.layers.fused_moe.activation",)

# vLLM's silu_kernel rounds silu(gate) to the activation dtype before the product with up: one bf16
# rounding (2^-8) on top of its fp32 evaluation (expf; 2^-20, with 2^-23 per |gate| should the
# build use the approximate exponential)
_SILU_BF16_FIRST = (2.0 ** -8 + 2.0 ** -20, 2.0 ** -23)


def vllm_context():
    """vLLM's current-config context (``set_current_vllm_config(VllmConfig())``, as vLLM's own kernel
    tests run these functions: its Marlin preparation reads the current config) where the installed
    release has one, else a null context."""
    try:
        from vllm.config import VllmConfig, set_current_vllm_config
        config = VllmConfig()
    except Exception:  # noqa: BLE001 - a release without it (or whose default config cannot be built): none
        return contextlib.nullcontext()
    return set_current_vllm_config(config)


class _VllmMoe(MoeBackend):
    distribution = "vllm"
    entry_modules: tuple[str, ...] = ()
    entry: str = ""

    def _entry(self):
        fn, why = first_attr(self.entry_modules, self.entry)
        if fn is None:
            raise Unsupported(f"{self.name}: vLLM {library_version('vllm')} has no importable {self.entry} ({why})")
        return fn

    def parameters(self) -> tuple[str, ...]:
        """Parameter names of the installed vLLM function (for tests of the call arguments)."""
        import inspect
        return tuple(inspect.signature(self._entry()).parameters)

    def _base_support(self, env: "Environment") -> Support | None:
        """A refusal for a missing vLLM, a missing entry point or no CUDA GPU; None when those are there."""
        version = library_version(self.distribution)
        if version is None:
            return Support(False, f"package 'vllm' is not installed (a serving engine: pip install vllm on a CUDA "
                                  f"node; this adapter calls its {self.entry})")
        fn, why = first_attr(self.entry_modules, self.entry)
        if fn is None:
            return Support(False, f"vllm {version} is installed but {self.entry} cannot be imported ({why})")
        if env.device != "cuda" or env.compute_capability is None:
            return Support(False, f"vllm {version} {self.entry} runs CUDA kernels; this machine has no CUDA GPU")
        return None

    def library_device_check(self) -> tuple[bool, str]:
        """vLLM's own verdict for the current CUDA device and the name of the check that gave it."""
        raise NotImplementedError

    def support(self, env: "Environment") -> Support:
        """vLLM's own device check decides (:meth:`library_device_check`); its refusal, or an exception
        it raises here, is the reason given."""
        base = self._base_support(env)
        if base is not None:
            return base
        version = library_version(self.distribution)
        try:
            ok, check = self.library_device_check()
        except Unsupported as exc:
            return Support(False, str(exc))
        except Exception as exc:  # noqa: BLE001 - the library's own check raised here: observed, not assumed
            return Support(False, f"vllm {version}'s device check for {self.entry} raised {type(exc).__name__}: {exc}")
        if not ok:
            return Support(False, f"vllm {version} {check} is False on SM{env.compute_capability} ({env.gpu_name})")
        return Support(True, f"vllm {version} {self.entry} on SM{env.compute_capability}: {check}")

    def describe(self) -> dict:
        d = super().describe()
        d["library"] = self.distribution
        d["library_version"] = library_version(self.distribution)
        return d


class VllmMarlinMoe(_VllmMoe):
    """vLLM's ``fused_marlin_moe`` with NVFP4 weights (module docstring)."""
    name = "vllm-marlin-moe"
    description = ("vLLM fused_marlin_moe, NVFP4 weights x bf16 activations (W4A16, SM80+): weights repacked by vLLM's "
                   "prepare_nvfp4_moe_layer_for_marlin, routing weights in the second GEMM's epilogue")
    entry_modules = MARLIN_MOE_MODULES
    entry = "fused_marlin_moe"
    requirements = Requirements(compute_capabilities=None, packages=("vllm",), out_dtypes=(torch.bfloat16,),
                                activation="bf16", precision=_EXACT_FP32)
    properties = W4A16_PROPERTIES
    activation_quant = False
    fc1_out = torch.bfloat16
    act_out = torch.bfloat16
    activation_error = _SILU_BF16_FIRST
    term_out = torch.bfloat16

    def library_device_check(self) -> tuple[bool, str]:
        """vLLM's own answer for the current CUDA device: ``MarlinExperts._supports_current_device()``
        where the installed release has it, else ``is_fp4_marlin_supported()``."""
        experts, _ = first_attr(MARLIN_MOE_MODULES, "MarlinExperts")
        if experts is not None and hasattr(experts, "_supports_current_device"):
            return bool(experts._supports_current_device()), "MarlinExperts._supports_current_device()"
        check, why = first_attr(MARLIN_FP4_UTILS, "is_fp4_marlin_supported")
        if check is None:
            raise Unsupported(f"{self.name}: the installed vLLM exposes no Marlin device check ({why})")
        return bool(check()), "is_fp4_marlin_supported()"

    def check_shapes(self, ops: MoeOperands) -> None:
        """vLLM's ``check_marlin_supports_shape`` for FC1 (n = 2I, k = hidden) and FC2 (n = hidden,
        k = I) with 16-element groups; Unsupported with vLLM's reason where it says no."""
        check, why = first_attr(MARLIN_UTILS, "check_marlin_supports_shape")
        if check is None:
            raise Unsupported(f"{self.name}: the installed vLLM has no check_marlin_supports_shape ({why})")
        p = ops.problem
        for gemm, n, k in (("FC1", 2 * p.intermediate, p.hidden), ("FC2", p.hidden, p.intermediate)):
            ok, reason = check(n, k, k, BLOCK_SIZE)
            if not ok:
                raise Unsupported(f"{self.name}: vLLM's check_marlin_supports_shape refuses {gemm} (n={n}, k={k}): "
                                  f"{reason}")

    def prepare(self, ops: MoeOperands) -> dict[str, Any]:
        """The keyword arguments of ``fused_marlin_moe`` for ``ops``: vLLM's own Marlin repacking of the
        checkpoint tensors (a CUDA op: ``ops`` must be on a CUDA device), then the call arguments
        accepted by the installed signature."""
        p = ops.problem
        if ops.hidden.dtype != torch.bfloat16 or ops.out_dtype != torch.bfloat16:
            raise Unsupported(f"{self.name}: declared for bf16 hidden states and output (Marlin returns the hidden "
                              f"states' dtype; fp16 intermediates are not modelled); the problem has "
                              f"{ops.hidden.dtype} -> {ops.out_dtype}")
        require_cuda(self.name, ops, "vLLM's gptq_marlin_repack (inside prepare_nvfp4_moe_layer_for_marlin)")
        self.check_shapes(ops)
        fn = self._entry()
        prep, why = first_attr(MARLIN_FP4_UTILS, "prepare_nvfp4_moe_layer_for_marlin")
        if prep is None:
            raise Unsupported(f"{self.name}: the installed vLLM has no prepare_nvfp4_moe_layer_for_marlin ({why})")
        from vllm.scalar_type import scalar_types

        w13, w2 = checkpoint_tensors(ops)
        layer = SimpleNamespace(num_experts=p.experts, hidden_size=p.hidden, intermediate_size_per_partition=p.intermediate,
                                params_dtype=ops.hidden.dtype)
        m13, s13, g13, m2, s2, g2 = prep(layer=layer, w13=w13.weight, w13_scale=w13.weight_scale.view(torch.float8_e4m3fn),
                                         w13_scale_2=w13.weight_scale_2, w2=w2.weight,
                                         w2_scale=w2.weight_scale.view(torch.float8_e4m3fn),
                                         w2_scale_2=w2.weight_scale_2, is_act_and_mul=True)
        known = {
            "hidden_states": ops.hidden.contiguous(), "w1": m13, "w2": m2, "bias1": None, "bias2": None,
            "w1_scale": s13, "w2_scale": s2, "gating_output": None,
            "topk_weights": ops.topk_weights.to(torch.float32), "topk_ids": ops.topk_ids.to(torch.int32),
            "quant_type_id": scalar_types.float4_e2m1f.id, "global_num_experts": p.experts,
            "global_scale1": g13, "global_scale2": g2, "apply_router_weight_on_input": False,
        }
        return call_kwargs(fn, known, self.name)

    def run(self, ops: MoeOperands) -> torch.Tensor:
        with vllm_context():
            kwargs = self.prepare(ops)
            return self._entry()(**kwargs)


class VllmCutlassMoe(_VllmMoe):
    """vLLM's ``run_cutlass_moe_fp4`` (NVFP4 x NVFP4, Blackwell; module docstring)."""
    name = "vllm-cutlass-moe"
    description = ("vLLM run_cutlass_moe_fp4, NVFP4 x NVFP4 (Blackwell): hidden states quantized per expert with the "
                   "FC1 input scales, fused SiLU-and-mul + NVFP4 quantize with static FC2 scales, bf16 routed combine")
    entry_modules = CUTLASS_MOE_MODULES
    entry = "run_cutlass_moe_fp4"
    requirements = Requirements(compute_capabilities=None, packages=("vllm",),
                                out_dtypes=(torch.bfloat16, torch.float16), precision=_EXACT_FP32)
    fc1_out = torch.bfloat16
    act_out = torch.bfloat16
    activation_error = _SILU_BF16_FIRST
    fc2_out = torch.bfloat16
    weight_dtype = torch.bfloat16
    term_out = torch.bfloat16

    def library_device_check(self) -> tuple[bool, str]:
        """vLLM's own ``CutlassExpertsFp4._supports_current_device()``."""
        cls, why = first_attr(CUTLASS_MOE_MODULES, "CutlassExpertsFp4")
        if cls is None or not hasattr(cls, "_supports_current_device"):
            raise Unsupported(f"{self.name}: the installed vLLM exposes no CutlassExpertsFp4._supports_current_device "
                              f"({why or 'no such method'})")
        return bool(cls._supports_current_device()), "CutlassExpertsFp4._supports_current_device()"

    def known_arguments(self, ops: MoeOperands) -> dict[str, Any]:
        """Every argument of ``run_cutlass_moe_fp4`` the adapter can fill (pure but for the
        ``activation`` enum, taken from the installed vLLM where its signature has one)."""
        p = ops.problem
        i, h, e_count = p.intermediate, p.hidden, p.experts
        dev, dt = ops.hidden.device, ops.hidden.dtype
        rows = p.tokens * p.top_k
        known: dict[str, Any] = {
            "output": torch.empty((p.tokens, h), dtype=dt, device=dev),
            **cutlass_fp4_operands(ops, self.name),
            "workspace13": torch.empty(rows * max(2 * i, h), dtype=dt, device=dev),
            "workspace2": torch.empty(rows * max(i, h), dtype=dt, device=dev),
            "m": p.tokens, "n": i, "k": h, "e": e_count, "device": dev,
        }
        act, _ = first_attr(ACTIVATION_MODULES, "MoEActivation")
        if act is not None:
            known["activation"] = act.SILU
        return known

    def prepare(self, ops: MoeOperands) -> dict[str, Any]:
        """The keyword arguments of the installed ``run_cutlass_moe_fp4`` for ``ops``."""
        return call_kwargs(self._entry(), self.known_arguments(ops), self.name)

    def run(self, ops: MoeOperands) -> torch.Tensor:
        require_cuda(self.name, ops, "vLLM's run_cutlass_moe_fp4")
        with vllm_context():
            kwargs = self.prepare(ops)
            self._entry()(**kwargs)
        return kwargs["output"]


def backends() -> list[MoeBackend]:
    return [VllmMarlinMoe(), VllmCutlassMoe()]
