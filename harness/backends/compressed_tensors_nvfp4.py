"""compressed-tensors' NVFP4 (the format llm-compressor writes), as a quantizer and a checkpoint convention.

Convention (compressed-tensors 0.20, ``quantization/utils/helpers.py`` and
``compressors/nvfp4/``): the per-tensor ``*_global_scale`` is the *encode divisor*
``448*6/amax`` (``generate_gparam``); block scales are ``e4m3(global_scale * amax_block / 6)``
(``calculate_qparams``, preset scheme ``"NVFP4"``), a block scale that rounds to 0 is replaced by
0.125 (``_get_dtype_eps``); codes are ``round_e2m1(x / (scale / global_scale))`` (``_quantize``)
packed two per byte with the even element in the LOW nibble (``pack_fp4_to_uint8``).

* ``quant-compressed-tensors``: ``calculate_qparams`` + ``quantize`` + ``pack_fp4_to_uint8``,
  linear scale layout.  Runs wherever torch runs.
* ``ckpt-compressed-tensors``: ``NVFP4PackedCompressor.compress`` writes ``weight_packed``,
  ``weight_scale`` (float8_e4m3fn), ``weight_global_scale`` and the calibrated
  ``input_global_scale`` (both encode divisors); the loader interprets them as vLLM's
  ``CompressedTensorsW4A4Fp4.process_weights_after_loading`` does
  (vllm/model_executor/layers/quantization/compressed_tensors/schemes/compressed_tensors_w4a4_nvfp4.py,
  commit 0094cb9b): activation encode divisor ``input_global_scale``, weight decode
  ``1 / weight_global_scale``, ``alpha = (1 / input_global_scale) * (1 / weight_global_scale)``.
"""

from __future__ import annotations

import torch

from harness.backends._library import LibraryBackend, check_rows_input, library
from harness.backends.protocol import CheckpointBackend, LoadedLinear, QuantizerBackend, Requirements
from harness.format import BLOCK_SIZE
from harness.layouts import ScaleLayout

DISTRIBUTION = "compressed-tensors"
DESIGN_DIFFERENCES = ("zero_scale_eps",)
INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _scheme():
    ct = library("compressed_tensors.quantization", "compressed-tensors")
    return ct.preset_name_to_scheme("NVFP4", ["Linear"])


def global_scale(amax: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' encode-divisor global scale of a tensor with this amax (``generate_gparam``)."""
    helpers = library("compressed_tensors.quantization.utils", "compressed-tensors")
    a = amax.float().reshape(1)
    return helpers.generate_gparam(-a, a)


def block_scales(x: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """Block scales [rows, k/16] (float32 values on the e4m3 grid) by ``calculate_qparams``."""
    helpers = library("compressed_tensors.quantization.utils", "compressed-tensors")
    rows, k = x.shape
    g = x.float().reshape(rows, k // BLOCK_SIZE, BLOCK_SIZE)
    scale, _ = helpers.calculate_qparams(g.amin(-1), g.amax(-1), _scheme().weights, global_scale=gs)
    return scale


def quantize_and_pack(x: torch.Tensor, scale: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """Packed codes [rows, k/2] by compressed-tensors' fake quantizer and ``pack_fp4_to_uint8``."""
    fwd = library("compressed_tensors.quantization.lifecycle.forward", "compressed-tensors")
    nvfp4 = library("compressed_tensors.compressors.nvfp4.helpers", "compressed-tensors")
    q = fwd.quantize(x=x, scale=scale, zero_point=None, args=_scheme().weights, global_scale=gs)
    return nvfp4.pack_fp4_to_uint8(q)


def _check(name: str, x: torch.Tensor) -> None:
    check_rows_input(name, x, INPUT_DTYPES)


class CompressedTensorsQuantizer(LibraryBackend, QuantizerBackend):
    """compressed-tensors' NVFP4 fake quantizer and packer, linear scales."""

    distribution = DISTRIBUTION
    module = "compressed_tensors"
    name = "quant-compressed-tensors"
    layout = ScaleLayout.LINEAR
    known_differences = DESIGN_DIFFERENCES
    description = ("compressed-tensors calculate_qparams (scheme NVFP4, global_scale = encode divisor) + "
                   "quantize + pack_fp4_to_uint8; linear scales; CPU or GPU")
    requirements = Requirements(runs_on_cpu=True, a_layouts=(ScaleLayout.LINEAR,), w_layout=ScaleLayout.LINEAR)

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check(self.name, x)
        gs = global_scale.reshape(1).to(device=x.device, dtype=torch.float32)
        scale = block_scales(x, gs)
        packed = quantize_and_pack(x, scale, gs)
        return packed, scale.to(torch.float8_e4m3fn).view(torch.uint8)


class CompressedTensorsCheckpoint(LibraryBackend, CheckpointBackend):
    """An llm-compressor NVFP4 checkpoint (``NVFP4PackedCompressor``) loaded as vLLM's
    compressed-tensors W4A4 NVFP4 scheme loads it."""

    distribution = DISTRIBUTION
    module = "compressed_tensors"
    name = "ckpt-compressed-tensors"
    known_differences = DESIGN_DIFFERENCES
    description = ("compressed-tensors NVFP4PackedCompressor.compress (weight_packed, weight_scale, "
                   "weight_global_scale and input_global_scale = encode divisors) loaded as vLLM "
                   "CompressedTensorsW4A4Fp4 does")
    requirements = Requirements(runs_on_cpu=True, a_layouts=(ScaleLayout.LINEAR,), w_layout=ScaleLayout.LINEAR)

    def export(self, weight: torch.Tensor, input_amax: torch.Tensor) -> dict[str, torch.Tensor]:
        _check(self.name, weight)
        comp = library("compressed_tensors.compressors.nvfp4", "compressed-tensors")
        gs = global_scale(weight.float().abs().amax()).to(weight.device)
        state = {"weight": weight, "weight_scale": block_scales(weight, gs), "weight_global_scale": gs,
                 "input_global_scale": global_scale(input_amax).to(weight.device)}
        return dict(comp.NVFP4PackedCompressor.compress(state, _scheme()))

    def weight_decode(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """vLLM: ``layer.weight_global_scale = 1 / weight_global_scale.max()`` (a divisor on disk)."""
        return (1.0 / tensors["weight_global_scale"].max().to(torch.float32)).reshape(1)

    def packed_for_kernel(self, packed: torch.Tensor) -> torch.Tensor:
        """The packed bytes in the kernels' nibble order (the checkpoint already uses it)."""
        return packed

    def load(self, tensors: dict[str, torch.Tensor]) -> LoadedLinear:
        input_encode = tensors["input_global_scale"].max().to(torch.float32).reshape(1)
        w_decode = self.weight_decode(tensors)
        alpha = ((1.0 / input_encode) * w_decode).to(torch.float32)
        return LoadedLinear(packed=self.packed_for_kernel(tensors["weight_packed"].view(torch.uint8)),
                            scales=tensors["weight_scale"].view(torch.uint8),
                            weight_decode=w_decode, input_encode=input_encode, alpha=alpha)


def backends() -> list:
    return [CompressedTensorsQuantizer(), CompressedTensorsCheckpoint()]
