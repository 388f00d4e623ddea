"""torchao's NVFP4 tensor subclass (``torchao.prototype.mx_formats.nvfp4_tensor.NVFP4Tensor``).

Convention (torchao 0.18): ``per_tensor_scale`` is the *decode multiplier* amax/2688
(``per_tensor_amax_to_scale``); ``NVFP4Tensor.to_nvfp4`` quantizes with ``nvfp4_quantize``
(block scales floored at 2^-6, E4M3_EPS: declared as ``subnormal_scale_floor``) and, with
``is_swizzled_scales=True``, lays the scales out with its own ``to_blocked`` (the 128x4 layout);
``dequantize`` computes ``e2m1 * (e4m3 scale * per_tensor_scale)`` in fp32 and casts.

* ``quant-torchao-nvfp4tensor-{128x4,linear}``: ``NVFP4Tensor.to_nvfp4`` with swizzled / linear
  scales (the 128x4 bytes come from torchao's ``to_blocked``, not from the harness's layout code).
* ``linear-torchao-weight-only``: ``F.linear(x, NVFP4Tensor)`` with no activation quantization:
  torchao's ``nvfp4_linear`` dequantizes the weight to the activation dtype and calls a dense
  matmul (the W4A16 path; runs on the CPU and any GPU).  On a GPU the harness makes that call with
  torch's reduced-precision reductions off (:func:`fp32_reductions`): by default torch lets
  cuBLAS add split-K partial sums in bf16/fp16 (cuBLASLt reduction schemes ``INPLACE`` and
  ``OUTPUT_TYPE``, allowed unless ``CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION`` is set;
  torch's ``allow_bf16_reduced_precision_reduction`` / ``allow_fp16_reduced_precision_reduction``,
  both True by default).  The number of partial sums is cuBLAS's choice and not observable, so no
  useful bound covers that mode (with up to K/16 partials added in bf16, it exceeds the product
  sum itself from K = 4096 on).  The mode belongs to the dense cuBLAS GEMM, not to torchao's NVFP4
  dequantization, which is what this backend tests.  Why it matters here: in the H200 main job of
  2026-12-01, 8 of 49,237 cases failed, all this backend's with column-major inputs.  Seven were 1.00
  to 1.21 times past the fp32-accumulation bound; one, fp16 ``heavy_tailed`` data at K = 1440, gave a
  non-finite output that the bound's overflow rule does not accept (fp16 partial sums can overflow).  An A/B on the
  H200 changed only this adapter's ``F.linear`` call, with and without the fp32 reductions.  Without
  them, those 8 cases and 2 more from a fuzz run of this backend alone fail on both of two replays,
  each in a fresh process; with them all 10 pass.  Fuzzing this backend alone gave 2 failures in
  6,794 cases without them and 0 in 6,293 with them (``bench/RESULTS.md``, "Verification on the
  H200, fourth session").
* ``linear-torchao-dynamic``: ``F.linear`` with ``act_quant_kwargs`` (dynamic per-tensor activation
  scale): activations quantized by torchao and multiplied by ``torch._scaled_mm`` in FP4, which
  needs cuBLASLt block-scaled FP4 (SM100+); gated with that reason elsewhere.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from harness.backends._library import LibraryBackend, library
from harness.backends.protocol import (
    BackendContractError,
    LinearBackend,
    Precision,
    QuantizerBackend,
    Requirements,
    Support,
    Unsupported,
)
from harness.backends.scaled_mm import MIN_CC
from harness.format import BLOCK_SIZE
from harness.layouts import ScaleLayout, padded_shape
from harness.torch_modes import reduced_precision_reductions_off

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment
    from harness.pipeline import CheckpointWeight

DISTRIBUTION = "torchao"
MODULE = "torchao.prototype.mx_formats.nvfp4_tensor"
INPUT_DTYPES = (torch.bfloat16, torch.float32)  # nvfp4_quantize asserts these


def _nvfp4():
    return library(MODULE, "torchao")


class TorchaoTensorQuantizer(LibraryBackend, QuantizerBackend):
    """``NVFP4Tensor.to_nvfp4(x, per_tensor_scale=1/gs, is_swizzled_scales=...)``."""

    distribution = DISTRIBUTION
    module = MODULE
    known_differences = ("subnormal_scale_floor",)

    def __init__(self, layout: ScaleLayout) -> None:
        if layout not in (ScaleLayout.SWIZZLED_128x4, ScaleLayout.LINEAR):
            raise ValueError(f"layout={layout.value!r}: torchao stores NVFP4 scales linear or 128x4 (to_blocked)")
        self.layout = layout
        self.name = f"quant-torchao-nvfp4tensor-{layout.value}"
        self.description = (f"torchao NVFP4Tensor.to_nvfp4 (per_tensor_scale = 1/gs, is_swizzled_scales="
                            f"{layout is ScaleLayout.SWIZZLED_128x4}: torchao's own to_blocked); CPU or GPU")
        self.requirements = Requirements(runs_on_cpu=True, a_layouts=(layout,), w_layout=layout)

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 2 or x.shape[1] % BLOCK_SIZE:
            raise ValueError(f"{self.name}: x must be [rows, k] with k a multiple of 16, got {tuple(x.shape)}")
        if x.dtype == torch.float16:
            x = x.float()  # nvfp4_quantize asserts bf16/fp32; every fp16 value is exact in fp32
        if x.dtype not in INPUT_DTYPES:
            raise Unsupported(f"{self.name}: torchao nvfp4_quantize takes {[str(d) for d in INPUT_DTYPES]}, "
                              f"got {x.dtype}")
        rows, k = x.shape
        pts = (1.0 / global_scale.reshape(()).to(device=x.device, dtype=torch.float32))
        t = _nvfp4().NVFP4Tensor.to_nvfp4(x, block_size=BLOCK_SIZE, per_tensor_scale=pts,  # x as given: views too
                                          is_swizzled_scales=self.layout is ScaleLayout.SWIZZLED_128x4)
        want = padded_shape(self.layout, rows, k // BLOCK_SIZE)
        scales = t.scale.view(torch.uint8)
        if scales.numel() != want[0] * want[1]:
            raise BackendContractError(f"{self.name}: torchao returned {scales.numel()} scale bytes "
                                       f"{tuple(t.scale.shape)}; layout {self.layout.value} needs {want}")
        return t.qdata.view(torch.uint8), scales.reshape(want)


def fp32_reductions(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """The context a matmul on ``x`` runs in so that split-K partial sums are reduced in fp32, as
    :class:`~harness.oracle.Precision` ``(24)`` assumes: on a CUDA tensor,
    :func:`harness.torch_modes.reduced_precision_reductions_off`; nothing for a CPU tensor.  See the
    module docstring for why."""
    return reduced_precision_reductions_off() if x.is_cuda else contextlib.nullcontext()


class TorchaoWeightOnlyLinear(LibraryBackend, LinearBackend):
    """``F.linear(x, NVFP4Tensor(weight))``: torchao's weight-only NVFP4 linear (dequantize, matmul)."""

    distribution = DISTRIBUTION
    module = MODULE
    name = "linear-torchao-weight-only"
    description = ("torchao nvfp4_linear without act_quant_kwargs: the checkpoint weight as an NVFP4Tensor "
                   "(per_tensor_scale = weight_scale_2), dequantized to the activation dtype, dense matmul "
                   "(on a GPU with split-K reductions in fp32); CPU or any GPU")
    # the weight is dequantized to bf16/fp16 (operands rounded, 8 significant bits for bf16), the
    # dense matmul accumulates, and reduces its split-K partial sums, in fp32 (fp32_reductions)
    requirements = Requirements(runs_on_cpu=True, activation="bf16", a_layouts=(ScaleLayout.LINEAR,),
                                w_layout=ScaleLayout.LINEAR, precision=Precision(24, operand_bits=8))

    def nvfp4_weight(self, weight: "CheckpointWeight", dtype: torch.dtype, act_quant_kwargs=None):
        """The checkpoint weight [n, k] as torchao's NVFP4Tensor with linear scales."""
        mod = _nvfp4()
        return mod.NVFP4Tensor(weight.packed.view(torch.uint8).contiguous(),
                               weight.scales.view(torch.float8_e4m3fn).contiguous(), BLOCK_SIZE, dtype,
                               per_tensor_scale=weight.weight_scale_2.reshape(()).to(torch.float32),
                               act_quant_kwargs=act_quant_kwargs)

    def run(self, x: torch.Tensor, weight: "CheckpointWeight", bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != weight.k:
            raise ValueError(f"{self.name}: x has K={x.shape[-1]} but the weight has K={weight.k}")
        if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise Unsupported(f"{self.name}: activation dtype {x.dtype}")
        w = self.nvfp4_weight(weight, x.dtype)
        with fp32_reductions(x):
            return F.linear(x, w, None if bias is None else bias.to(x.dtype))


class TorchaoDynamicLinear(TorchaoWeightOnlyLinear):
    """``F.linear`` with dynamic per-tensor NVFP4 activation quantization (torchao's W4A4 path)."""

    name = "linear-torchao-dynamic"
    description = ("torchao nvfp4_linear with act_quant_kwargs (use_dynamic_per_tensor_scale=True): activation "
                   "quantized by torchao, torch._scaled_mm in FP4 (cuBLASLt, SM100+)")
    requirements = Requirements(activation="nvfp4", a_layouts=(ScaleLayout.SWIZZLED_128x4,),
                                w_layout=ScaleLayout.LINEAR, precision=Precision(24))

    def support(self, env: "Environment") -> Support:
        cc = env.compute_capability
        if env.device != "cuda" or cc is None or cc < MIN_CC:
            where = f"this GPU ({env.gpu_name}) is SM{cc}" if env.device == "cuda" else "this machine has no CUDA GPU"
            return Support(False, f"torchao's dynamic NVFP4 linear multiplies with torch._scaled_mm in FP4 "
                                  f"(cuBLASLt block-scaled FP4, SM{MIN_CC}+); {where}")
        return super().support(env)

    def run(self, x: torch.Tensor, weight: "CheckpointWeight", bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != weight.k:
            raise ValueError(f"{self.name}: x has K={x.shape[-1]} but the weight has K={weight.k}")
        if x.dtype not in INPUT_DTYPES:
            raise Unsupported(f"{self.name}: torchao quantizes {[str(d) for d in INPUT_DTYPES]} activations, "
                              f"got {x.dtype}")
        kwargs = _nvfp4().QuantizeTensorToNVFP4Kwargs(use_dynamic_per_tensor_scale=True)
        w = self.nvfp4_weight(weight, x.dtype, act_quant_kwargs=kwargs)
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def backends() -> list:
    return [TorchaoTensorQuantizer(ScaleLayout.SWIZZLED_128x4), TorchaoTensorQuantizer(ScaleLayout.LINEAR),
            TorchaoWeightOnlyLinear(), TorchaoDynamicLinear()]
