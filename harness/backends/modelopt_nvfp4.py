"""NVIDIA ModelOpt's NVFP4 quantized tensor, as a quantizer and a checkpoint convention.

``nvidia-modelopt`` (0.47 checked) is a pure-Python wheel; ``NVFP4QTensor``
(modelopt/torch/quantization/qtensor/nvfp4_tensor.py) quantizes and dequantizes in plain torch,
so it runs on the CPU.  Its convention: ``weight_scale_2 = amax / (6 * 448)``, the *decode
multiplier* (``get_weights_scaling_factor_2``); block scale ``amax_block / (6 * weight_scale_2)``
with an all-zero block's scale set to 1.0 and the result clamped to [2^-9, 448] before the e4m3
cast (``get_weights_scaling_factor``, ``_cast_per_block_scale_to_fp8``); codes
``round_e2m1(x / (block_scale * weight_scale_2))`` (``_cast_fp4``, ties to even); the even element
in the LOW nibble.  The activation's ``input_scale`` is ``amax / (6 * 448)`` as well
(``get_activation_scaling_factor``, a decode multiplier).

* ``quant-modelopt``: ``NVFP4QTensor.quantize`` with ``weights_scaling_factor_2 = 1 / gs``, linear
  scales.
* ``ckpt-modelopt``: a ModelOpt export (``weight``, ``weight_scale``, ``weight_scale_2``,
  ``input_scale``) loaded as vLLM's ``ModelOptNvFp4LinearMethod.process_weights_after_loading``
  does (vllm/model_executor/layers/quantization/modelopt.py): ``alpha = input_scale *
  weight_scale_2``, activations quantized with ``input_scale_inv = 1 / input_scale``, weight
  decoded with ``weight_scale_2``.
"""

from __future__ import annotations

import torch

from harness.backends._library import LibraryBackend, check_rows_input, library
from harness.backends.protocol import CheckpointBackend, LoadedLinear, QuantizerBackend, Requirements
from harness.format import BLOCK_SIZE, E2M1_MAX, E4M3_MAX
from harness.layouts import ScaleLayout

DISTRIBUTION = "nvidia-modelopt"
MODULE = "modelopt.torch.quantization.qtensor"
DESIGN_DIFFERENCES = ("zero_block_scale_one", "min_subnormal_scale_floor")
INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _qtensor():
    return library(MODULE, "nvidia-modelopt").NVFP4QTensor


def quantize(x: torch.Tensor, weight_scale_2: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed uint8 [rows, k/2], block scales float8_e4m3fn [rows, k/16], weight_scale_2 fp32) by
    ``NVFP4QTensor.quantize``; ``weight_scale_2`` defaults to ModelOpt's own amax/2688."""
    q, scale, scale_2 = _qtensor().quantize(x, BLOCK_SIZE, weights_scaling_factor_2=weight_scale_2)
    return q._quantized_data, scale, scale_2


def _check(name: str, x: torch.Tensor) -> None:
    check_rows_input(name, x, INPUT_DTYPES)


class ModelOptQuantizer(LibraryBackend, QuantizerBackend):
    """``NVFP4QTensor.quantize`` with the harness's global scale given as ModelOpt's decode multiplier."""

    distribution = DISTRIBUTION
    module = MODULE
    name = "quant-modelopt"
    layout = ScaleLayout.LINEAR
    known_differences = DESIGN_DIFFERENCES
    description = ("nvidia-modelopt NVFP4QTensor.quantize (weights_scaling_factor_2 = 1/gs, the decode "
                   "multiplier); linear scales; CPU or GPU")
    requirements = Requirements(runs_on_cpu=True, a_layouts=(ScaleLayout.LINEAR,), w_layout=ScaleLayout.LINEAR)

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check(self.name, x)
        decode = (1.0 / global_scale.reshape(()).to(device=x.device, dtype=torch.float32))
        packed, scale, _ = quantize(x, decode)  # x as given: views too (layout_invariance)
        return packed, scale.view(torch.uint8)


class ModelOptCheckpoint(LibraryBackend, CheckpointBackend):
    """A ModelOpt NVFP4 export loaded as vLLM's ModelOpt NVFP4 linear method loads it."""

    distribution = DISTRIBUTION
    module = MODULE
    name = "ckpt-modelopt"
    known_differences = DESIGN_DIFFERENCES
    description = ("nvidia-modelopt NVFP4QTensor export (weight, weight_scale, weight_scale_2 and input_scale = "
                   "decode multipliers amax/2688) loaded as vLLM ModelOptNvFp4LinearMethod does")
    requirements = Requirements(runs_on_cpu=True, a_layouts=(ScaleLayout.LINEAR,), w_layout=ScaleLayout.LINEAR)

    def export(self, weight: torch.Tensor, input_amax: torch.Tensor) -> dict[str, torch.Tensor]:
        _check(self.name, weight)
        packed, scale, scale_2 = quantize(weight.contiguous())
        # get_activation_scaling_factor: amax / (maxbound * 448), maxbound = 6 for e2m1
        input_scale = (input_amax.float() / (E2M1_MAX * E4M3_MAX)).reshape(1).to(weight.device)
        return {"weight": packed, "weight_scale": scale, "weight_scale_2": scale_2.float().reshape(1),
                "input_scale": input_scale}

    def packed_for_kernel(self, packed: torch.Tensor) -> torch.Tensor:
        """ModelOpt packs the even element in the low nibble, the kernels' order: kept as it is."""
        return packed

    def load(self, tensors: dict[str, torch.Tensor]) -> LoadedLinear:
        input_scale = tensors["input_scale"].max().to(torch.float32).reshape(1)
        weight_scale_2 = tensors["weight_scale_2"].max().to(torch.float32).reshape(1)
        return LoadedLinear(packed=self.packed_for_kernel(tensors["weight"].view(torch.uint8)),
                            scales=tensors["weight_scale"].view(torch.uint8),
                            weight_decode=weight_scale_2,
                            input_encode=(1.0 / input_scale).to(torch.float32),
                            alpha=(input_scale * weight_scale_2).to(torch.float32))


def backends() -> list:
    return [ModelOptQuantizer(), ModelOptCheckpoint()]
