"""Adapters for FlashInfer's fused NVFP4 MoE kernels: ``cutlass_fused_moe`` and
``trtllm_fp4_block_scale_routed_moe`` (flashinfer-python 0.7.x, ``flashinfer/fused_moe/core.py``).

As with the dense adapters (:mod:`harness.backends.flashinfer_fp4`), each adapter is split in two:
:meth:`prepare` is pure and turns :class:`~harness.grouped.moe.MoeOperands` into the exact keyword
arguments of the library call (it runs on the CPU, so the harness's tests check it against the
installed signature and invert its reorderings); :meth:`run` makes the call on a CUDA device and
turns FlashInfer's own refusal exceptions into :class:`~harness.backends.protocol.Unsupported`.

Neither kernel has ever run for this project: no Blackwell GPU was available.  Their declared
rounding (``fc1_out``, ``act_out``, ``activation_error``: bf16 for both intermediates, the coarser
of what FlashInfer's code and references show) only widens the bound; it is unverified until they
run (``tests/test_moe_adapters_gpu.py``).

``cutlass_fused_moe`` (operand contract from its docstring, FlashInfer's ``test_moe_nvfp4`` and the
checks of ``csrc/fused_moe/cutlass_backend/flashinfer_cutlass_fused_moe_binding.cu``):

* ``input``: the bf16/fp16 hidden states [tokens, hidden] (the kernel quantizes them with
  ``quant_scales[0]``, a scalar or one FC1 input scale per expert);
* ``fc1_expert_weights``: uint8 [E, 2I, hidden/2] viewed as int64 (``isNvfp4Quant()`` keys on the
  int64 weight dtype), halves in FlashInfer's ``[up; gate]`` order (its reference splits
  ``w3_expert, w1_expert = torch.chunk(w31, 2)`` and applies silu to ``w1``), so the adapter swaps
  the harness's ``[gate; up]`` halves, data and scale rows alike (vLLM's ``reorder_w1w3_to_w3w1``);
* ``quant_scales``: ``[fc1 input scales, FC1 128x4 block scales viewed as int32 [E, 2I padded to 128,
  hidden/64], alpha1 [E], FC2 input scales [E], FC2 block scales as int32 [E, hidden padded to 128,
  I/64], alpha2 [E]]`` (the binding's ``isNvfp4Quant`` branch);
* ``use_fused_finalize=False`` (the deterministic finalize) and ``nvfp4_4over6=None`` (the plain
  NVFP4 recipe; omitted, environment variables could change it).

``trtllm_fp4_block_scale_routed_moe`` (routing given as ``(topk_ids, topk_weights)``):

* the hidden states quantized once (one shared FC1 input scale: the call takes them already
  quantized), scales in the linear layout (``hidden_states_scale_layout=layout_linear``, the only one
  it reads);
* weights in ``[up; gate]`` order (its reference applies silu to the second half), each half padded
  from I to a multiple of 128 rows with zero codes and neutral 1.0 scales and ``valid_intermediate_size``
  given, as its docstring prescribes for I % 128 != 0 (1856, 192); ``hidden`` likewise to a multiple
  of 256 with ``valid_hidden_size``;
* rows permuted by FlashInfer's own ``_maybe_get_cached_w3_w1_permute_indices`` (gated-activation
  interleave, then the MMA row shuffle) and ``get_w2_permute_indices_with_cache``, scales likewise
  then laid out in 128x4 (what ``block_scale_interleave`` does, done here with
  :func:`harness.layouts.swizzle` so it runs on the CPU);
* ``output1_scale_scalar = alpha1 * fc2 input scale`` (the epilogue quantizes the activation
  directly), ``output1_scale_gate_scalar = alpha1``, ``output2_scale_scalar = alpha2`` per expert,
  as vLLM's ``FlashInferTrtLlmNvFp4Experts`` passes ``g1_scale_c``, ``g1_alphas``, ``g2_alphas``;
  ``routing_method_type=TopK`` (the given weights, no softmax).
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

import torch

from harness.backends._flashinfer import import_flashinfer, translate_refusal
from harness.backends.protocol import Precision, Requirements, Support, Unsupported
from harness.format import BLOCK_SIZE
from harness.grouped.moe import MoeOperands
from harness.grouped.protocol import MoeBackend
from harness.kernels.nvfp4 import quantize_into
from harness.layouts import ScaleLayout, round_up, swizzle, unswizzle

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment

CUTLASS_MOE_FP4_CCS = frozenset({100, 103, 107, 110, 120, 121})
"""Where ``cutlass_fused_moe`` has NVFP4 kernels: the Blackwell modules of
``get_cutlass_fused_moe_module`` (SM100/103/107/110, SM120/121); its CUTLASS heuristic
(``cutlass_heuristic.cpp`` ``get_candidate_configs``) offers no FP4 tactic without the Blackwell
flag, and FlashInfer's own ``test_moe_nvfp4`` runs only on compute capability major 10, 11, 12.
``tests/test_moe_adapters_gpu.py`` checks the claim on any other GPU by calling the library anyway."""

E4M3_ONE = 0x38
"""The e4m3 byte of 1.0: the neutral scale FlashInfer prescribes for padded weight blocks."""

TRTLLM_EPILOGUE_TILE_M = 128
_EXACT_FP32 = Precision(accumulator_bits=24, operand_bits=None)


def _fused_moe():
    return importlib.import_module("flashinfer.fused_moe")


def _logical_scales(scales: torch.Tensor, rows: int, kblocks: int) -> torch.Tensor:
    """uint8 [E, rows, kblocks]: the real block-scale bytes of stacked 128x4 buffers."""
    return torch.stack([unswizzle(s, ScaleLayout.SWIZZLED_128x4)[:rows, :kblocks] for s in scales])


def _swap_halves(x: torch.Tensor, i: int) -> torch.Tensor:
    """[E, rows, ...] with rows [0, i) and [i, 2i) exchanged ([gate; up] <-> [up; gate]); rows past
    2i (padding) stay where they are, bytes unchanged."""
    return torch.cat([x[:, i:2 * i], x[:, :i], x[:, 2 * i:]], dim=1)


class _FlashInferMoe(MoeBackend):
    fi_function: str = ""

    def _library(self):
        fi, err = import_flashinfer()
        if fi is None:
            return None, f"flashinfer is not importable ({err})"
        return fi, None

    def parameters(self) -> tuple[str, ...]:
        """Parameter names of the installed library function (for tests of :meth:`prepare`)."""
        return tuple(inspect.signature(getattr(_fused_moe(), self.fi_function)).parameters)

    def prepare(self, ops: MoeOperands) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _call(self, kwargs: dict[str, Any]) -> torch.Tensor:
        fn = getattr(_fused_moe(), self.fi_function)
        try:
            return fn(**kwargs)
        except Exception as exc:
            fi, _ = import_flashinfer()
            unsup = translate_refusal(exc, f"{self.name}: flashinfer {getattr(fi, '__version__', '?')} "
                                           f"{self.fi_function} refused")
            if unsup is not None:
                raise unsup from exc
            raise

    def _check_device(self, ops: MoeOperands) -> None:
        if ops.hidden.device.type != "cuda":
            raise Unsupported(f"{self.name}: flashinfer {self.fi_function} runs CUDA kernels; the operands are on "
                              f"{ops.hidden.device}")
        fi, err = self._library()
        if fi is None:
            raise Unsupported(f"{self.name}: {err}")


class FlashInferCutlassMoe(_FlashInferMoe):
    """``flashinfer.fused_moe.cutlass_fused_moe`` with NVFP4 weights and activations."""
    name = "flashinfer-cutlass-moe"
    description = ("flashinfer cutlass_fused_moe, NVFP4 x NVFP4: bf16 hidden states quantized by the kernel with "
                   "per-expert FC1 input scales, SwiGLU, FC2 input quantized with per-expert static scales")
    fi_function = "cutlass_fused_moe"
    requirements = Requirements(compute_capabilities=CUTLASS_MOE_FP4_CCS, packages=("flashinfer",),
                                out_dtypes=(torch.bfloat16, torch.float16), precision=_EXACT_FP32)
    # its activation kernel reads FC1's result from a buffer of the activation dtype (bf16/fp16:
    # bf16, the coarser, is declared; cutlass_fused_moe_kernels.cuh doActivation); the activation's
    # own result is declared bf16 as well, the coarser choice, until a Blackwell run shows otherwise
    fc1_out = torch.bfloat16
    act_out = torch.bfloat16
    activation_error = (2.0 ** -20, 2.0 ** -23)
    fc1_scale_granularities = ("per_expert", "shared")

    def support(self, env: "Environment") -> Support:
        fi, err = self._library()
        if fi is None:
            return Support(False, err)
        need = ", ".join(f"SM{c}" for c in sorted(CUTLASS_MOE_FP4_CCS))
        if env.device != "cuda" or env.compute_capability is None:
            return Support(False, f"flashinfer cutlass_fused_moe (NVFP4) runs CUDA kernels for {need}; this machine "
                                  f"has no CUDA GPU")
        if env.compute_capability not in CUTLASS_MOE_FP4_CCS:
            return Support(False, f"flashinfer {fi.__version__} cutlass_fused_moe has no NVFP4 kernel for "
                                  f"SM{env.compute_capability} ({env.gpu_name}): its CUTLASS heuristic offers FP4 "
                                  f"tactics only on Blackwell ({need})")
        return Support(True, f"flashinfer {fi.__version__} cutlass_fused_moe (NVFP4) on SM{env.compute_capability}")

    def prepare(self, ops: MoeOperands) -> dict[str, Any]:
        """The keyword arguments of ``cutlass_fused_moe`` for ``ops`` (pure; no kernel runs)."""
        p = ops.problem
        i, h = p.intermediate, p.hidden
        if ops.w13.n_alloc != 2 * i or ops.w2.n_alloc != h or ops.w13.k != h or ops.w2.k != i:
            raise ValueError(f"{self.name}: weights must be unpadded in N (W13 {ops.w13.n_alloc} rows, expected {2 * i}; "
                             f"W2 {ops.w2.n_alloc}, expected {h})")
        fm = _fused_moe()
        sf_rows, sf_kb = ops.w13.scales.shape[1:]
        w13_sf = torch.stack([swizzle(_swap_halves(unswizzle(s, ScaleLayout.SWIZZLED_128x4)[None], i)[0],
                                      ScaleLayout.SWIZZLED_128x4).reshape(sf_rows, sf_kb) for s in ops.w13.scales])
        fc1_gs = ops.fc1_input_scales if p.fc1_input_scale == "per_expert" else ops.fc1_input_scales[0].reshape(())
        return {
            "input": ops.hidden,                                                   # bf16/fp16 [tokens, hidden]
            "token_selected_experts": ops.topk_ids.to(torch.int32),
            "token_final_scales": ops.topk_weights.to(torch.float32),
            "fc1_expert_weights": _swap_halves(ops.w13.packed, i).contiguous().view(torch.int64),
            "fc2_expert_weights": ops.w2.packed.contiguous().view(torch.int64),
            "output_dtype": ops.out_dtype,
            "quant_scales": [fc1_gs.to(torch.float32), w13_sf.contiguous().view(torch.int32),
                             ops.alpha1.to(torch.float32), ops.fc2_input_scales.to(torch.float32),
                             ops.w2.scales.contiguous().view(torch.int32), ops.alpha2.to(torch.float32)],
            "input_sf": None,
            "activation_type": fm.ActivationType.Swiglu,
            "use_fused_finalize": False,
            "nvfp4_4over6": None,
        }

    def run(self, ops: MoeOperands) -> torch.Tensor:
        self._check_device(ops)
        return self._call(self.prepare(ops))


class FlashInferTrtllmMoe(_FlashInferMoe):
    """``flashinfer.fused_moe.trtllm_fp4_block_scale_routed_moe`` (TRT-LLM-gen cubins), given routing."""
    name = "flashinfer-trtllm-moe"
    description = ("flashinfer trtllm_fp4_block_scale_routed_moe: hidden states quantized once (shared FC1 input "
                   "scale, linear scales), shuffled [up; gate] weights padded to 128-row tiles, given top-k routing")
    fi_function = "trtllm_fp4_block_scale_routed_moe"
    requirements = Requirements(compute_capabilities=None, packages=("flashinfer",), out_dtypes=(torch.bfloat16,),
                                precision=_EXACT_FP32)
    # FlashInfer's own reference for this kernel rounds the activation to bf16 before quantizing it
    # (tests/moe: run_moe_dequant, activation_output.to(torch.bfloat16)); FC1's result is declared bf16
    # too, the coarser choice, until a Blackwell run shows otherwise
    fc1_out = torch.bfloat16
    act_out = torch.bfloat16
    activation_error = (2.0 ** -20, 2.0 ** -23)
    fc1_scale_granularities = ("shared",)

    def library_supports(self) -> bool:
        """FlashInfer's own check: ``is_trtllm_moe_supported(E2m1, E2m1)`` on the current device."""
        from flashinfer.tllm_enums import DtypeTrtllmGen

        core = importlib.import_module("flashinfer.fused_moe.core")
        return bool(core.is_trtllm_moe_supported(DtypeTrtllmGen.E2m1, DtypeTrtllmGen.E2m1))

    def support(self, env: "Environment") -> Support:
        fi, err = self._library()
        if fi is None:
            return Support(False, err)
        if env.device != "cuda" or env.compute_capability is None:
            return Support(False, "flashinfer trtllm_fp4_block_scale_moe runs TRT-LLM-gen cubins on a CUDA GPU "
                                  "(its is_trtllm_moe_supported check reads the current CUDA device); this machine "
                                  "has none")
        try:
            supported = self.library_supports()
        except Exception as exc:  # noqa: BLE001 - the library's own check is broken here: observed, not assumed
            return Support(False, f"flashinfer {fi.__version__}'s own capability check is_trtllm_moe_supported(E2m1, "
                                  f"E2m1) raised {type(exc).__name__}: {exc} on SM{env.compute_capability} "
                                  f"({env.gpu_name}); the kernel is not called where the library cannot say it "
                                  f"supports it")
        if not supported:
            return Support(False, f"flashinfer {fi.__version__} is_trtllm_moe_supported(E2m1, E2m1) is False on "
                                  f"SM{env.compute_capability} ({env.gpu_name})")
        return Support(True, f"flashinfer {fi.__version__} trtllm FP4 MoE on SM{env.compute_capability}")

    def prepare(self, ops: MoeOperands) -> dict[str, Any]:
        """The keyword arguments of ``trtllm_fp4_block_scale_routed_moe`` for ``ops`` (pure)."""
        p = ops.problem
        if p.fc1_input_scale != "shared":
            raise Unsupported(f"{self.name}: trtllm_fp4_block_scale_moe takes the hidden states already quantized, once "
                              f"for every expert: one shared FC1 input scale, not {p.fc1_input_scale!r}")
        from flashinfer.fused_moe.core import _maybe_get_cached_w3_w1_permute_indices, get_w2_permute_indices_with_cache
        from flashinfer.tllm_enums import RoutingMethodType, SfLayout

        i, h, e_count = p.intermediate, p.hidden, p.experts
        ip, hp = round_up(i, 128), round_up(h, 256) if h % 128 else h
        kb_h, kb_i = h // BLOCK_SIZE, i // BLOCK_SIZE
        # logical (unpadded) weights, [up; gate] halves, each half padded to ip rows, K padded to hp
        w13 = _swap_halves(ops.w13.packed[:, :2 * i, :h // 2], i)
        w13_sf = _swap_halves(_logical_scales(ops.w13.scales, 2 * i, kb_h), i)
        w13 = torch.cat([self._pad(w13[:, :i], ip, hp // 2, 0), self._pad(w13[:, i:], ip, hp // 2, 0)], dim=1)
        w13_sf = torch.cat([self._pad(w13_sf[:, :i], ip, hp // 16, E4M3_ONE),
                            self._pad(w13_sf[:, i:], ip, hp // 16, E4M3_ONE)], dim=1)
        w2 = self._pad(ops.w2.packed[:, :h, :i // 2], hp, ip // 2, 0)
        w2_sf = self._pad(_logical_scales(ops.w2.scales, h, kb_i), hp, ip // 16, E4M3_ONE)
        cache: dict = {}
        g1, g1_sf, g2, g2_sf = [], [], [], []
        for e in range(e_count):
            perm = _maybe_get_cached_w3_w1_permute_indices(cache, w13[e], TRTLLM_EPILOGUE_TILE_M)
            g1.append(w13[e][perm.to(w13.device)])
            perm = _maybe_get_cached_w3_w1_permute_indices(cache, w13_sf[e], TRTLLM_EPILOGUE_TILE_M, num_elts_per_sf=16)
            g1_sf.append(swizzle(w13_sf[e][perm.to(w13.device)], ScaleLayout.SWIZZLED_128x4).reshape(2 * ip, hp // 16))
            perm = get_w2_permute_indices_with_cache(cache, w2[e], TRTLLM_EPILOGUE_TILE_M)
            g2.append(w2[e][perm.to(w2.device)])
            perm = get_w2_permute_indices_with_cache(cache, w2_sf[e], TRTLLM_EPILOGUE_TILE_M, num_elts_per_sf=16)
            g2_sf.append(swizzle(w2_sf[e][perm.to(w2.device)], ScaleLayout.SWIZZLED_128x4).reshape(hp, ip // 16))
        gs1 = ops.fc1_input_scales[:1]
        x_packed, x_sf = quantize_into(ops.hidden, gs1, ScaleLayout.LINEAR)
        x_packed = self._pad(x_packed[None], p.tokens, hp // 2, 0)[0]
        x_sf = self._pad(x_sf[None, :, :kb_h], p.tokens, hp // 16, E4M3_ONE)[0]
        return {
            "topk_ids": (ops.topk_ids.to(torch.int32), ops.topk_weights.to(torch.float32)),
            "routing_bias": None,
            "hidden_states": x_packed.contiguous(),
            "hidden_states_scale": x_sf.contiguous().view(torch.float8_e4m3fn),
            "gemm1_weights": torch.stack(g1).contiguous(),
            "gemm1_weights_scale": torch.stack(g1_sf).contiguous().view(torch.float8_e4m3fn),
            "gemm1_bias": None, "gemm1_alpha": None, "gemm1_beta": None, "gemm1_clamp_limit": None,
            "gemm2_weights": torch.stack(g2).contiguous(),
            "gemm2_weights_scale": torch.stack(g2_sf).contiguous().view(torch.float8_e4m3fn),
            "gemm2_bias": None,
            "output1_scale_scalar": (ops.alpha1 * ops.fc2_input_scales).to(torch.float32),
            "output1_scale_gate_scalar": ops.alpha1.to(torch.float32),
            "output2_scale_scalar": ops.alpha2.to(torch.float32),
            "num_experts": e_count, "top_k": p.top_k, "n_group": None, "topk_group": None,
            "intermediate_size": ip, "local_expert_offset": 0, "local_num_experts": e_count,
            "routed_scaling_factor": None, "routing_method_type": int(RoutingMethodType.TopK),
            "do_finalize": True,
            "valid_hidden_size": h if hp != h else None,
            "valid_intermediate_size": i if ip != i else None,
            "hidden_states_scale_layout": SfLayout.layout_linear,
            "nvfp4_4over6": None,
        }

    @staticmethod
    def _pad(x: torch.Tensor, rows: int, cols: int, fill: int) -> torch.Tensor:
        """[E, r, c] uint8 padded to [E, rows, cols] with ``fill``."""
        out = torch.full((x.shape[0], rows, cols), fill, dtype=torch.uint8, device=x.device)
        out[:, :x.shape[1], :x.shape[2]] = x
        return out

    def run(self, ops: MoeOperands) -> torch.Tensor:
        self._check_device(ops)
        kwargs = self.prepare(ops)
        return self._call(kwargs)[0]


def backends() -> list[MoeBackend]:
    return [FlashInferCutlassMoe(), FlashInferTrtllmMoe()]
