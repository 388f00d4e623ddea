"""``torch-scaled-mm``: NVFP4 through ``torch._scaled_mm`` (cuBLASLt block-scaled FP4, SM100+).

Operands, as torch 2.13 checks them (``torch/_meta_registrations.py`` ``_check_scaled_mm_sizes``,
which ``meta_scaled_mm`` runs, and ``aten/src/ATen/native/cuda/ScaledBlas.cpp``
``_scaled_mm_out_cuda`` / ``is_blockwise_1x16_scaling``):

* ``input``: the activation codes viewed as ``torch.float4_e2m1fn_x2`` [m, k/2], row-major;
* ``mat2``: the weight codes [n, k/2] viewed as float4_e2m1fn_x2 and transposed: a column-major
  [k/2, n] view (``mat2 must be col_major``);
* ``scale_a`` / ``scale_b``: the 128x4-swizzled e4m3 block scales viewed as ``torch.float8_e4m3fn``,
  contiguous, with exactly ``round_up(rows, 128) * round_up(ceil(k/16), 4)`` elements each (this
  element count plus the e4m3 dtype is how torch recognises NVFP4's ``BlockWise1x16`` recipe; the
  weight's scales are NOT transposed, unlike ``mat2``);
* ``k/2 % 16 == 0`` (``self.size(1) % 16``) and ``n % 16 == 0`` (``mat2.size(1) % 16``): K % 32, N % 16.

The global scale.  ``_scaled_mm`` has no alpha for block-scaled FP4, and its ``scale_result`` is
used only for a float8 output (``_scaled_gemm`` passes ``isFloat8Type(out) ? scale_result :
nullopt``): with a bf16 output it would be dropped without a word.  torchao
(``nvfp4_tensor._addmm_nvfp4_dispatch``) therefore multiplies the bf16 result by
``per_tensor_scale_a * per_tensor_scale_b`` afterwards, rounding twice.  This adapter asks cuBLASLt
for an fp32 result, multiplies by alpha in fp32 and rounds once to the output dtype, the same
epilogue a fused kernel (``alpha * acc``) has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from harness.backends._refusal import as_unsupported
from harness.backends.protocol import GemmBackend, Precision, Requirements, Support, Unsupported
from harness.layouts import ScaleLayout

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment
    from harness.pipeline import GemmOperands

MIN_CC = 100
"""cuBLASLt's block-scaled FP4 (``CUBLASLT_MATMUL_MATRIX_SCALE_VEC16_UE4M3``) needs Blackwell; on
SM90 the call fails with CUBLAS_STATUS_NOT_SUPPORTED (seen on this project's H200)."""

REFUSAL_STATUS_CODES = ("CUBLAS_STATUS_NOT_SUPPORTED",)
"""cuBLASLt's status for "no block-scaled FP4 kernel on this GPU" (a refusal); support() gates
below SM100 before any call, so anything else torch raises is a failure."""


def float4_available() -> bool:
    return hasattr(torch, "float4_e2m1fn_x2") and hasattr(torch, "float8_e4m3fn")


class TorchScaledMm(GemmBackend):
    name = "torch-scaled-mm"
    description = ("torch._scaled_mm with float4_e2m1fn_x2 operands and 128x4-swizzled float8_e4m3fn block scales "
                   "(cuBLASLt block-scaled FP4); fp32 result times alpha, rounded once to the output dtype")
    requirements = Requirements(
        compute_capabilities=None,  # torch decides by cuBLASLt at call time; support() says SM100+
        a_layouts=(ScaleLayout.SWIZZLED_128x4,), w_layout=ScaleLayout.SWIZZLED_128x4,
        # ScaledBlas.cpp _scaled_mm_out_cuda: mat1.size(1) % 16 (K/2 bytes -> K % 32) and
        # mat2.size(0) % 16, mat2.size(1) % 16 (N % 16).
        n_align=16, k_align=32,
        # cuBLASLt returns fp32; the cast to the output dtype is ours (see the module docstring).
        out_dtypes=(torch.bfloat16, torch.float16, torch.float32),
        precision=Precision(accumulator_bits=24, operand_bits=None),
    )

    def support(self, env: "Environment") -> Support:
        if not float4_available():
            return Support(False, f"torch {torch.__version__} has no torch.float4_e2m1fn_x2 dtype (needs torch >= 2.8)")
        if env.device != "cuda" or env.compute_capability is None:
            return Support(False, "torch._scaled_mm with float4_e2m1fn_x2 operands needs a CUDA GPU with cuBLASLt "
                                  f"block-scaled FP4 (SM{MIN_CC}+); this machine has none")
        cc = env.compute_capability
        if cc < MIN_CC:
            return Support(False, f"torch._scaled_mm NVFP4 uses cuBLASLt block-scaled FP4, which needs SM{MIN_CC}+ "
                                  f"(it raises CUBLAS_STATUS_NOT_SUPPORTED below); this GPU ({env.gpu_name}) is SM{cc}")
        return Support(True, f"runs on {env.gpu_name} (SM{cc}) through cuBLASLt {torch.version.cuda}")

    def _check_operands(self, ops: "GemmOperands", out: torch.Tensor | None) -> None:
        # declared: 128x4-swizzled scales on both sides (cuBLASLt's VEC16_UE4M3 layout)
        self.check_operands(ops, out)

    def prepare(self, ops: "GemmOperands") -> dict[str, Any]:
        """Keyword arguments of ``torch._scaled_mm`` for ``ops`` (views only; nothing is computed)."""
        self._check_operands(ops, None)
        if not float4_available():
            raise Unsupported(f"{self.name}: torch {torch.__version__} has no float4_e2m1fn_x2 dtype")
        f4, e4 = torch.float4_e2m1fn_x2, torch.float8_e4m3fn
        return {
            "input": ops.a.packed.view(f4),          # [m, k/2] row-major
            "mat2": ops.w.packed.view(f4).T,         # [k/2, n_alloc] column-major view
            "scale_a": ops.a.scales.view(e4),        # [round_up(m,128), round_up(k/16,4)], contiguous
            "scale_b": ops.w.scales.view(e4),        # [round_up(n,128), round_up(k/16,4)], contiguous
            "bias": None,
            "scale_result": None,                    # ignored for non-float8 outputs (ScaledBlas.cpp)
            "out_dtype": torch.float32,
            "use_fast_accum": False,                 # refused for float4 operands anyway
        }

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        self._check_operands(ops, out)
        kwargs = self.prepare(ops)
        if kwargs["input"].device.type != "cuda":
            raise Unsupported(f"{self.name}: torch._scaled_mm's float4 path is CUDA-only (cuBLASLt); the operands "
                              f"are on {kwargs['input'].device}")
        try:
            acc = torch._scaled_mm(**kwargs)
        except Exception as exc:
            unsup = as_unsupported(exc, f"{self.name}: torch._scaled_mm refused", status_codes=REFUSAL_STATUS_CODES)
            if unsup is not None:
                raise unsup from exc
            raise
        scaled = acc * ops.alpha.reshape(1, 1).to(device=acc.device, dtype=torch.float32)
        if out is None:
            return scaled.to(ops.out_dtype)
        out.copy_(scaled)
        return out


def backends() -> list[TorchScaledMm]:
    return [TorchScaledMm()]
