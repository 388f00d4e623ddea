"""Adapters for FlashInfer's FP4 tensor-core GEMM, ``flashinfer.mm_fp4``, one per backend.

Every adapter is split in two:

* :meth:`FlashInferMmFp4.prepare` is pure: it turns the pipeline's operands into the exact keyword
  arguments of ``flashinfer.mm_fp4`` (tensors with the shapes, dtypes, strides and views the
  library documents), the weight shuffled for TRT-LLM where needed.  It runs on the CPU, so the
  harness's own tests check it down to the library's pure-Python checks;
* :meth:`FlashInferMmFp4.run` calls ``flashinfer.mm_fp4(**prepare(ops, out))`` and turns the
  library's capability refusals into :class:`~harness.backends.protocol.Unsupported`; every other
  exception propagates (a failure, not a skip).

Operand preparation follows the ``mm_fp4`` docstring in ``flashinfer/gemm/gemm_base.py``::

    mm_fp4(a_fp4, b_fp4.T, a_sf, b_sf.T, 1.0/(a_global_sf * b_global_sf), out_dtype, out, backend=...)

* ``a``: packed activation codes, uint8 [m, k/2] row-major (FlashInfer's quantizer returns uint8;
  ``_check_mm_fp4_problem_size`` accepts uint8 or float4_e2m1fn_x2, and the CUTLASS module declares
  ``FLOAT4_E2M1X2 = dl_uint8`` in ``csrc/fp4_gemm_cutlass.cu``);
* ``b``: the weight [n, k/2] transposed, a column-major [k/2, n] view (stride (1, k/2));
* ``a_descale``: activation scales, uint8 [padded_m, padded_kblocks] in 128x4 (or 8x4) byte order;
* ``b_descale``: weight scales [padded_n, padded_kblocks] (128x4) transposed, a [padded_kblocks,
  padded_n] view;
* ``alpha``: fp32 [1], ``1 / (gs_a * gs_w)``.

TRT-LLM (``backend="trtllm"``) swaps A and B inside (``transposeMmaOutput = true`` in
``csrc/trtllm_gemm_runner.cu``), so the weight is the MMA's A operand and must be row-shuffled with
``shuffle_matrix_a(w, epilogue_tile_m=128)`` and its scales with the same row permutation before the
128x4 interleave (``shuffle_matrix_sf_a``), as ``nvfp4_quantize(..., do_shuffle=True)`` does in
``flashinfer/quantization/fp4_quantization.py``.  The activation keeps its 128x4 or 8x4 scales.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from harness.backends._flashinfer import import_flashinfer, translate_refusal
from harness.backends.protocol import GemmBackend, Precision, Requirements, Support, Unsupported
from harness.format import BLOCK_SIZE
from harness.layouts import ScaleLayout, swizzle, unswizzle

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment
    from harness.pipeline import GemmOperands, QuantizedTensor

L = ScaleLayout

# ----------------------------------------------------------------------------------------------
# Compute capabilities, copied from the @supported_compute_capability decorators of the backend
# requirement functions in flashinfer/gemm/gemm_base.py (flashinfer-python 0.7.2.post1).  The tests
# compare them with the installed library's ``_supported_ccs`` so a new FlashInfer shows up.
# ----------------------------------------------------------------------------------------------
CUTLASS_CCS = frozenset({100, 103, 107, 110, 120, 121})  # _cutlass_gemm_fp4_requirement
CUDNN_CCS = frozenset({100, 103, 107, 110, 120, 121})    # _cudnn_gemm_fp4_requirement
TRTLLM_CCS = frozenset({100, 103, 107})                   # _trtllm_gemm_fp4_requirement
CUTE_DSL_CCS = frozenset({100, 103, 107, 120, 121})      # _cute_dsl_gemm_fp4_requirement
CUTEDSL_LL_CCS = frozenset({100, 103, 107})               # _cutedsl_low_latency_gemm_fp4_requirement
B12X_CCS = frozenset({120, 121})                          # _b12x_gemm_fp4_requirement
# backend="auto" picks among these (gemm_base._heuristic_func_mm_fp4: cudnn, cutlass, cute-dsl on
# SM107, cutedsl_low_latency last, b12x first on SM120); trtllm and cake are never auto-selected.
AUTO_CANDIDATES = ("cudnn", "cutlass", "cute-dsl", "cutedsl_low_latency", "b12x")
AUTO_CCS = CUTLASS_CCS | CUDNN_CCS | CUTE_DSL_CCS | CUTEDSL_LL_CCS | B12X_CCS

TRTLLM_EPILOGUE_TILE_M = 128
"""``epilogue_tile_m`` of the TRT-LLM weight shuffle (``nvfp4_quantize(do_shuffle=True)`` uses 128)."""


def _gemm_base() -> ModuleType:
    return importlib.import_module("flashinfer.gemm.gemm_base")


def _cc_list(ccs) -> str:
    names = [f"SM{c}" for c in sorted(ccs)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


# ----------------------------------------------------------------------------------------------
# TRT-LLM weight shuffle
# ----------------------------------------------------------------------------------------------
def trtllm_row_permutation(rows: int, epilogue_tile_m: int = TRTLLM_EPILOGUE_TILE_M) -> torch.Tensor:
    """FlashInfer's shuffle permutation: shuffled row j is original row ``perm[j]``.

    From ``flashinfer.utils.get_shuffle_matrix_sf_a_row_indices`` (which asserts rows % 128 == 0
    and is the permutation ``shuffle_matrix_a`` applies to the data as well).
    """
    from flashinfer.utils import get_shuffle_matrix_sf_a_row_indices

    probe = torch.empty((rows, 1), dtype=torch.uint8)
    return get_shuffle_matrix_sf_a_row_indices(probe, epilogue_tile_m)


def shuffle_weight_for_trtllm(w: "QuantizedTensor",
                              epilogue_tile_m: int = TRTLLM_EPILOGUE_TILE_M) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight as ``backend="trtllm"`` reads it: (shuffled packed [n_alloc, k/2], shuffled 128x4 scales).

    The data go through ``flashinfer.shuffle_matrix_a(w, 128)`` (pure torch, runs on any device).
    The scales get the same row permutation in logical order and are laid out again in 128x4, which
    is what ``shuffle_matrix_sf_a`` (row shuffle of linear scales + ``block_scale_interleave``) does;
    done here with :func:`~harness.layouts.unswizzle` / :func:`~harness.layouts.swizzle` so every
    byte of the buffer, padding and K tail included, is carried over unchanged (the interleave is a
    CUDA kernel and would rewrite the layout's own padding).
    """
    from flashinfer import shuffle_matrix_a

    rows, kb = w.scales.shape
    if w.layout is not L.SWIZZLED_128x4:
        raise ValueError(f"trtllm weight shuffle: weight scales are in layout {w.layout.value!r}; "
                         f"expected '128x4' (shuffle_matrix_sf_a produces 128x4)")
    if w.rows_alloc % 128 or rows != w.rows_alloc:
        raise ValueError(f"trtllm weight shuffle: weight rows_alloc={w.rows_alloc} (scale rows {rows}) must be a "
                         f"multiple of 128 (get_shuffle_matrix_sf_a_row_indices asserts M % 128 == 0); build the "
                         f"operands with n_align=128")
    packed = shuffle_matrix_a(w.packed.view(torch.uint8), epilogue_tile_m).contiguous()
    perm = trtllm_row_permutation(rows, epilogue_tile_m).to(w.scales.device)
    logical = unswizzle(w.scales, L.SWIZZLED_128x4)
    scales = swizzle(logical[perm], L.SWIZZLED_128x4)
    if tuple(scales.shape) != (rows, kb):  # swizzle of an already padded buffer adds nothing
        raise AssertionError(f"re-swizzled scales {tuple(scales.shape)} != {(rows, kb)}")
    return packed, scales


# ----------------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    name: str
    fi_backend: str
    requirement_fn: str | None       # name in gemm_base of the backend's requirement function
    ccs: frozenset[int]
    use_8x4_sf_layout: bool = False
    needs: str | None = None         # "cudnn" or "cute-dsl": optional dependency checked in support()


class FlashInferMmFp4(GemmBackend):
    """``flashinfer.mm_fp4`` with one fixed ``backend=`` (and scale layout)."""

    def __init__(self, spec: _Spec, requirements: Requirements, description: str) -> None:
        self.spec = spec
        self.name = spec.name
        self.fi_backend = spec.fi_backend
        self.use_8x4_sf_layout = spec.use_8x4_sf_layout
        self.requirements = requirements
        self.description = description

    # -- support -------------------------------------------------------------------------------
    def library_ccs(self) -> frozenset[int] | None:
        """Compute capabilities the installed FlashInfer declares for this backend (None if unknown)."""
        fi, _ = import_flashinfer()
        if fi is None:
            return None
        gb = _gemm_base()
        names = [self.spec.requirement_fn] if self.spec.requirement_fn else \
            [_REQUIREMENT_FN[b] for b in AUTO_CANDIDATES]
        ccs: set[int] = set()
        for n in names:
            fn = getattr(gb, n, None)
            if fn is None or not hasattr(fn, "_supported_ccs"):
                return None
            ccs |= set(fn._supported_ccs)
        return frozenset(ccs)

    def library_supports(self, cc: int) -> bool:
        """``mm_fp4.is_backend_supported(backend, cc)`` (for "auto": any of its candidates)."""
        fi, _ = import_flashinfer()
        if fi is None:
            return False
        mm = fi.mm_fp4
        if self.fi_backend == "auto":
            return any(mm.is_backend_supported(b, cc) for b in AUTO_CANDIDATES)
        return bool(mm.is_backend_supported(self.fi_backend, cc))

    def support(self, env: "Environment") -> Support:
        fi, err = import_flashinfer()
        b = self.fi_backend
        if fi is None:
            return Support(False, f"flashinfer is not importable ({err})")
        need = _cc_list(self.library_ccs() or self.requirements.compute_capabilities or self.spec.ccs)
        if env.device != "cuda" or env.compute_capability is None:
            return Support(False, f"flashinfer mm_fp4 backend {b!r} needs a CUDA GPU with {need}; "
                                  f"this machine has none")
        cc = env.compute_capability
        if not self.library_supports(cc):
            return Support(False, f"flashinfer mm_fp4 backend {b!r} does not support SM{cc} (needs {need}); "
                                  f"this GPU is {env.gpu_name}")
        declared = self.requirements.compute_capabilities
        if declared is not None and cc not in declared:
            return Support(False, f"flashinfer {getattr(fi, '__version__', '?')} supports backend {b!r} on SM{cc}, "
                                  f"but this adapter declares only {_cc_list(declared)}; update its Requirements")
        why_not = self._optional_dependency_missing()
        if why_not:
            return Support(False, why_not)
        return Support(True, f"flashinfer {getattr(fi, '__version__', '?')} mm_fp4 backend {b!r} supports "
                             f"SM{cc} ({env.gpu_name})")

    def _optional_dependency_missing(self) -> str | None:
        gb = _gemm_base()
        if self.spec.needs == "cudnn":
            if not getattr(gb, "CUDNN_AVAILABLE", False):
                return "flashinfer mm_fp4 backend 'cudnn' needs the cuDNN frontend (`import cudnn` failed)"
            try:
                gb._check_cudnn_fp4_availability()
            except Exception as exc:  # noqa: BLE001 - RuntimeError, or cuDNN's own errors on a broken install
                return f"flashinfer mm_fp4 backend 'cudnn' cannot use cuDNN FP4 here ({type(exc).__name__}: {exc})"
        if self.spec.needs == "cute-dsl":
            try:
                from flashinfer.cute_dsl.availability import is_cute_dsl_available
            except ImportError as exc:
                return f"flashinfer mm_fp4 backend {self.fi_backend!r} needs CuTe-DSL ({exc})"
            if not is_cute_dsl_available():
                return (f"flashinfer mm_fp4 backend {self.fi_backend!r} needs CuTe-DSL "
                        f"(nvidia-cutlass-dsl), which is not available")
        return None

    # -- prepare / run ---------------------------------------------------------------------------
    def _check_operands(self, ops: "GemmOperands", out: torch.Tensor | None) -> None:
        # the output dtype is left to mm_fp4's own requirement checks, whose refusal the harness reports
        self.check_operands(ops, out, check_out_dtype=False)
        a, w = ops.a, ops.w
        if a.packed.dtype != torch.uint8 or w.packed.dtype != torch.uint8:
            raise ValueError(f"{self.name}: packed operands must be uint8, got {a.packed.dtype} and {w.packed.dtype}")
        if out is not None:
            if not out.is_contiguous():
                # gemm_base._cutlass_gemm_fp4_requirement; trtllm's CHECK_INPUT(out) likewise
                raise ValueError(f"{self.name}: out buffer must be contiguous, got strides {tuple(out.stride())}")

    def prepare(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> dict[str, Any]:
        """The keyword arguments of ``flashinfer.mm_fp4`` for ``ops`` (pure; no kernel runs)."""
        self._check_operands(ops, out)
        a, w = ops.a, ops.w
        if self.requirements.shuffled_weight:
            w_packed, w_scales = shuffle_weight_for_trtllm(w)
        else:
            w_packed, w_scales = w.packed, w.scales
        return {
            "a": a.packed,                       # uint8 [m, k/2], row-major
            "b": w_packed.T,                     # uint8 [k/2, n_alloc], column-major view
            "a_descale": a.scales,               # uint8 [padded_m, padded_kb], 128x4 or 8x4 bytes
            "b_descale": w_scales.T,             # uint8 [padded_kb, padded_n] view of the 128x4 buffer
            "alpha": ops.alpha.reshape(1).to(dtype=torch.float32),
            "out_dtype": ops.out_dtype,
            "out": out,
            "block_size": BLOCK_SIZE,
            "use_8x4_sf_layout": self.use_8x4_sf_layout,
            "backend": self.fi_backend,
            "use_nvfp4": True,
        }

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = self.prepare(ops, out)
        if kwargs["a"].device.type != "cuda":
            raise Unsupported(f"{self.name}: flashinfer mm_fp4 runs on CUDA tensors; the operands are on "
                              f"{kwargs['a'].device}")
        fi, err = import_flashinfer()
        if fi is None:
            raise Unsupported(f"{self.name}: flashinfer is not importable ({err})")
        try:
            res = fi.mm_fp4(**kwargs)
        except Exception as exc:
            unsup = translate_refusal(exc, f"{self.name}: flashinfer mm_fp4(backend={self.fi_backend!r}) refused")
            if unsup is not None:
                raise unsup from exc
            raise
        return res


_REQUIREMENT_FN = {
    "cutlass": "_cutlass_gemm_fp4_requirement",
    "cudnn": "_cudnn_gemm_fp4_requirement",
    "trtllm": "_trtllm_gemm_fp4_requirement",
    "cute-dsl": "_cute_dsl_gemm_fp4_requirement",
    "cutedsl_low_latency": "_cutedsl_low_latency_gemm_fp4_requirement",
    "b12x": "_b12x_gemm_fp4_requirement",
}

_BF16_FP16 = (torch.bfloat16, torch.float16)
# Block-scaled tensor cores multiply e2m1 x e4m3 products exactly and accumulate in fp32.
_EXACT_FP32 = Precision(accumulator_bits=24, operand_bits=None)


def _req(ccs: frozenset[int], **kw) -> Requirements:
    return Requirements(compute_capabilities=ccs, packages=("flashinfer",), precision=_EXACT_FP32, **kw)


def backends() -> list[FlashInferMmFp4]:
    l128 = (L.SWIZZLED_128x4,)
    return [
        FlashInferMmFp4(
            _Spec("flashinfer-cutlass", "cutlass", _REQUIREMENT_FN["cutlass"], CUTLASS_CCS),
            # N and K: csrc/fp4_gemm_cutlass.cu fp4_bmm_impl, `constexpr int alignment = 32` checked on
            # k and n (same in fp4_gemm_cutlass_sm103.cu); 8x4 refused by _cutlass_gemm_fp4_requirement;
            # out dtypes: _check_mm_fp4_problem_size (bf16, fp16).
            _req(CUTLASS_CCS, a_layouts=l128, n_align=32, k_align=32, out_dtypes=_BF16_FP16),
            "flashinfer.mm_fp4 backend='cutlass' (CUTLASS block-scaled FP4 GEMM); 128x4 scales for A and W"),
        FlashInferMmFp4(
            _Spec("flashinfer-cudnn", "cudnn", _REQUIREMENT_FN["cudnn"], CUDNN_CCS, needs="cudnn"),
            # FlashInfer's Python has no N/K alignment check for cudnn (the cuDNN graph decides at
            # build time); we use the 32/32 padding SGLang applies to cutlass and cudnn (PR #17300),
            # which also keeps every row 16-byte aligned.  8x4 refused by _cudnn_gemm_fp4_requirement.
            _req(CUDNN_CCS, a_layouts=l128, n_align=32, k_align=32, out_dtypes=_BF16_FP16),
            "flashinfer.mm_fp4 backend='cudnn' (cuDNN FP4 graph); 128x4 scales for A and W"),
        FlashInferMmFp4(
            _Spec("flashinfer-trtllm", "trtllm", _REQUIREMENT_FN["trtllm"], TRTLLM_CCS),
            # bf16 only: _trtllm_gemm_fp4_requirement.  N % 128: the weight shuffle
            # (get_shuffle_matrix_sf_a_row_indices asserts M % 128 == 0).  K % 64 (scale k-blocks % 4):
            # nvfp4_quantize(do_shuffle=True) reshapes the 128x4-interleaved shuffled scales back to
            # the linear [n, k/16] shape, which only fits when k/16 % 4 == 0 (and
            # quantization._pad_scale_factors pads K to 4 blocks = 64); SGLang pads the same way.
            _req(TRTLLM_CCS, a_layouts=l128, n_align=128, k_align=64, out_dtypes=(torch.bfloat16,),
                 shuffled_weight=True),
            "flashinfer.mm_fp4 backend='trtllm' (TRT-LLM-gen cubins); weight row-shuffled "
            "(shuffle_matrix_a / shuffle_matrix_sf_a), activation scales 128x4"),
        FlashInferMmFp4(
            _Spec("flashinfer-trtllm-8x4", "trtllm", _REQUIREMENT_FN["trtllm"], TRTLLM_CCS,
                  use_8x4_sf_layout=True),
            # as flashinfer-trtllm; activation scales in the 8x4 layout (use_8x4_sf_layout=True, the
            # R8c4 sfLayoutB of csrc/trtllm_gemm_runner.cu), the small-m path of vLLM #37563.
            _req(TRTLLM_CCS, a_layouts=(L.SWIZZLED_8x4,), n_align=128, k_align=64, out_dtypes=(torch.bfloat16,),
                 shuffled_weight=True),
            "flashinfer.mm_fp4 backend='trtllm', use_8x4_sf_layout=True: activation scales in the 8x4 layout, "
            "weight row-shuffled with 128x4 scales"),
        FlashInferMmFp4(
            _Spec("flashinfer-cute-dsl", "cute-dsl", _REQUIREMENT_FN["cute-dsl"], CUTE_DSL_CCS, needs="cute-dsl"),
            # SM100: N % 8 (_cute_dsl_gemm_fp4_requirement) and K % 32 (16-byte K-major rows:
            # gemm/kernels/dense_blockscaled_gemm_sm100.py is_valid_tensor_alignment).  SM120/121: the
            # mm_fp4 docstring requires logical N and K % 64 and bf16 output.  We declare the
            # stricter 64/64 so one padding works on both families; fp16 on SM12x is refused by the
            # library (sm12x_cute check_requirement) at call time.
            _req(CUTE_DSL_CCS, a_layouts=l128, n_align=64, k_align=64, out_dtypes=_BF16_FP16),
            "flashinfer.mm_fp4 backend='cute-dsl' (CuTe-DSL block-scaled GEMM); 128x4 scales"),
        FlashInferMmFp4(
            _Spec("flashinfer-cutedsl-low-latency", "cutedsl_low_latency", _REQUIREMENT_FN["cutedsl_low_latency"],
                  CUTEDSL_LL_CCS, needs="cute-dsl"),
            # _cutedsl_low_latency_gemm_fp4_requirement: M <= 8, K % 64 (NVFP4), 128x4 scales,
            # contiguous a and column-major b (stride (1, k/2)); no N alignment (its own tests use
            # n=127 and 129).
            _req(CUTEDSL_LL_CCS, a_layouts=l128, n_align=1, k_align=64, out_dtypes=_BF16_FP16, m_max=8),
            "flashinfer.mm_fp4 backend='cutedsl_low_latency' (CuTe-DSL low-latency GEMM, m <= 8); 128x4 scales"),
        FlashInferMmFp4(
            _Spec("flashinfer-b12x", "b12x", _REQUIREMENT_FN["b12x"], B12X_CCS, needs="cute-dsl"),
            # _b12x_gemm_fp4_requirement: K % 32 (TMA 16-byte alignment; also
            # Sm120B12xBlockScaledDenseGemmKernel.can_implement), 128x4 only, CUDA >= 12.9.
            _req(B12X_CCS, a_layouts=l128, n_align=1, k_align=32, out_dtypes=_BF16_FP16),
            "flashinfer.mm_fp4 backend='b12x' (SM120 warp-level block-scaled GEMM); 128x4 scales"),
        FlashInferMmFp4(
            _Spec("flashinfer-auto", "auto", None, AUTO_CCS),
            # whichever candidate the heuristic picks must accept the operands: cutlass's 32/32 is the
            # strictest of cudnn/cutlass/b12x (cutedsl_low_latency only qualifies when its own checks pass).
            _req(AUTO_CCS, a_layouts=l128, n_align=32, k_align=32, out_dtypes=_BF16_FP16),
            "flashinfer.mm_fp4 backend='auto' (FlashInfer's heuristic: cudnn / cutlass / cute-dsl / b12x); "
            "128x4 scales"),
    ]


def mm_fp4_parameters() -> tuple[str, ...]:
    """Parameter names of the installed ``flashinfer.mm_fp4`` (for tests of :meth:`prepare`)."""
    fi, err = import_flashinfer()
    if fi is None:
        raise ImportError(err)
    return tuple(inspect.signature(fi.mm_fp4).parameters)
