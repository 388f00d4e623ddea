"""FlashInfer's NVFP4 layout helpers that run without Blackwell, as backends.

FlashInfer's FP4 GEMMs and (from 0.7.4) its quantizer need SM100+, but two of its layout helpers
run on any CUDA machine (seen on this project's H200, NVFP4-NOTES.md):

* ``block_scale_interleave`` (a CUDA kernel) lays linear e4m3 block scales out in the 128x4
  layout.  ``quant-flashinfer-interleave`` quantizes with the harness's reference quantizer and
  lays the scales out with FlashInfer's kernel, so ``quantizer_agreement`` checks FlashInfer's
  interleave byte for byte against the reference layout (any CUDA GPU).
* ``e2m1_and_ufp8sf_scale_to_float`` (host code of FlashInfer's JIT module, so it needs a CUDA
  build of torch and FlashInfer's toolchain) decodes packed e2m1 codes with e4m3 block scales in
  the linear, 128x4 or 8x4 layout.  ``flashinfer-dequant-host`` is a GEMM backend that dequantizes
  both operands with it (global scale 1: code * block scale, exact in fp32) and multiplies in fp32
  on the host, then applies alpha: every GEMM property then checks how FlashInfer's decoder reads
  the scale layouts, padding included.

``shuffle_matrix_a`` / ``shuffle_matrix_sf_a`` (the trtllm weight layout) are exercised by the
``flashinfer-trtllm`` GEMM backends and, on the CPU and a GPU, by tests/test_flashinfer_layout.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from harness.backends.flashinfer_fp4 import import_flashinfer, translate_refusal
from harness.backends.protocol import (
    BackendContractError,
    GemmBackend,
    Precision,
    QuantizerBackend,
    Requirements,
    Support,
    Unsupported,
)
from harness.format import BLOCK_SIZE, pack_e2m1, reference_quantize
from harness.layouts import ScaleLayout, padded_shape

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment
    from harness.pipeline import GemmOperands


def _cuda_support(env: "Environment", what: str) -> Support:
    fi, err = import_flashinfer()
    if fi is None:
        return Support(False, f"flashinfer is not importable ({err})")
    if env.device != "cuda":
        return Support(False, f"flashinfer {what} needs a CUDA GPU (and a CUDA build of torch); this machine has none")
    return Support(True, f"flashinfer {getattr(fi, '__version__', '?')} {what} on {env.gpu_name} "
                         f"(SM{env.compute_capability})")


def _call(name: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        unsup = translate_refusal(exc, f"{name}: flashinfer refused")
        if unsup is not None:
            raise unsup from exc
        raise


class FlashInferInterleaveQuantizer(QuantizerBackend):
    """Reference e2m1 codes and scales, scales laid out by ``flashinfer.block_scale_interleave``."""

    name = "quant-flashinfer-interleave"
    layout = ScaleLayout.SWIZZLED_128x4
    description = ("harness reference quantizer (harness.format) with the linear scales laid out in 128x4 by "
                   "flashinfer.block_scale_interleave (CUDA kernel; runs on SM90)")
    requirements = Requirements(packages=("flashinfer",), a_layouts=(ScaleLayout.SWIZZLED_128x4,),
                                w_layout=ScaleLayout.SWIZZLED_128x4)

    def support(self, env: "Environment") -> Support:
        return _cuda_support(env, "block_scale_interleave")

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 2 or x.shape[1] % BLOCK_SIZE:
            raise ValueError(f"{self.name}: x must be [rows, k] with k a multiple of 16, got {tuple(x.shape)}")
        if x.device.type != "cuda":
            raise Unsupported(f"{self.name}: block_scale_interleave is a CUDA kernel; x is on {x.device}")
        fi, err = import_flashinfer()
        if fi is None:
            raise Unsupported(f"{self.name}: flashinfer is not importable ({err})")
        rows, k = x.shape
        codes, sf = reference_quantize(x, global_scale.reshape(()).to(device=x.device, dtype=torch.float32))
        inter = _call(self.name, fi.block_scale_interleave, sf.contiguous()).view(torch.uint8)
        want = padded_shape(self.layout, rows, k // BLOCK_SIZE)
        if inter.numel() != want[0] * want[1]:
            raise BackendContractError(f"{self.name}: block_scale_interleave returned {inter.numel()} bytes "
                                       f"{tuple(inter.shape)}; the 128x4 layout needs {want}")
        return pack_e2m1(codes), inter.reshape(want)


class FlashInferDequantGemm(GemmBackend):
    """fp32 GEMM over operands decoded by ``flashinfer.e2m1_and_ufp8sf_scale_to_float``."""

    name = "flashinfer-dequant-host"
    description = ("both operands decoded by flashinfer.e2m1_and_ufp8sf_scale_to_float (host code; A scales "
                   "128x4, 8x4 or linear, W 128x4) with global scale 1, fp32 matmul on the host, times alpha")
    requirements = Requirements(
        packages=("flashinfer",),
        a_layouts=(ScaleLayout.SWIZZLED_128x4, ScaleLayout.SWIZZLED_8x4, ScaleLayout.LINEAR),
        w_layout=ScaleLayout.SWIZZLED_128x4,
        out_dtypes=(torch.bfloat16, torch.float16, torch.float32),
        # code * block scale is exact in fp32; the host matmul accumulates in fp32
        precision=Precision(accumulator_bits=24, operand_bits=None),
        # decodes on the host (device-to-host copies): nothing a CUDA graph can capture
        cuda_graphs=False,
    )

    def support(self, env: "Environment") -> Support:
        return _cuda_support(env, "e2m1_and_ufp8sf_scale_to_float (host decoder of its JIT module)")

    def decode(self, packed: torch.Tensor, scales: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
        """code * block scale [rows, k_alloc] in fp32, decoded by FlashInfer on the host."""
        fi, err = import_flashinfer()
        if fi is None:
            raise Unsupported(f"{self.name}: flashinfer is not importable ({err})")
        one = torch.ones(1, dtype=torch.float32)
        return _call(self.name, fi.e2m1_and_ufp8sf_scale_to_float, packed.cpu().contiguous(),
                     scales.cpu().contiguous().reshape(-1), one, sf_vec_size=BLOCK_SIZE, ufp8_type=1,
                     is_sf_swizzled_layout=layout is not ScaleLayout.LINEAR,
                     is_sf_8x4_layout=layout is ScaleLayout.SWIZZLED_8x4)

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        self.check_operands(ops, out)
        a = self.decode(ops.a.packed, ops.a.scales, ops.a.layout)
        w = self.decode(ops.w.packed, ops.w.scales, ops.w.layout)
        acc = (a @ w.T) * ops.alpha.reshape(()).cpu().to(torch.float32)
        res = acc.to(ops.out_dtype).to(ops.a.packed.device)
        if out is None:
            return res
        out.copy_(res)
        return out


def backends() -> list:
    return [FlashInferInterleaveQuantizer(), FlashInferDequantGemm()]
