"""Quantizer backends: a high-precision matrix in, packed e2m1 codes and a scale buffer out.

Each returns ``(packed uint8 [rows, k/2], scales uint8 [padded_rows, padded_kblocks])`` with the
scale bytes in ``self.layout``'s byte order (see :mod:`harness.layouts`), for the encode-divisor
global scale ``gs = 448*6/amax`` (FlashInfer's ``global_sf``).

* ``quant-triton-{128x4,8x4,linear}``: the harness's own Triton pipeline kernel
  (:func:`harness.kernels.nvfp4.quantize_into`) with no extra data padding and zero-filled layout
  padding.  Runs on GPUs and under the CPU interpreter.
* ``quant-flashinfer-{128x4,8x4,linear}``: ``flashinfer.fp4_quantize`` with
  ``is_sf_swizzled_layout`` / ``is_sf_8x4_layout`` chosen for the layout (the same flags
  ``nvfp4_quantize(sfLayout=...)`` derives).  CUDA only.  Its support deliberately includes SM90,
  where FlashInfer builds an ``fp4_quantization_90`` module (``get_fp4_quantization_module``): what
  the library does there depends on its version (0.7.2.post1 returned unquantized memory without
  an error on this project's H200; later versions check the device first).  The harness runs it and
  lets the observed behaviour decide: bytes it returns are checked (silent garbage is a failure,
  never hidden), and a refusal that the library's own device check confirms
  (``flashinfer.utils._check_block_scale_quantization_support``, where the installed version has
  it) is reported as unsupported with the library's message.
* Every adapter hands the library ``x`` as it was handed (a non-contiguous view stays one, as a
  serving engine passes it): the ``layout_invariance`` property judges what the library does with
  it, computes the same bytes or refuses.
* ``quant-torchao``: ``torchao.prototype.mx_formats.nvfp4_tensor.nvfp4_quantize`` with
  ``per_tensor_scale = 1/gs`` (torchao's convention is the decode multiplier, amax/2688:
  ``per_tensor_amax_to_scale``), returning linear scales that are laid out in 128x4 with
  :func:`harness.layouts.swizzle`.  Runs on the CPU.  Its arithmetic differs from the CUDA kernels'
  on purpose (see :class:`TorchaoQuantizer`).
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING

import torch

from harness.backends._flashinfer import import_flashinfer, refusal_types
from harness.backends._refusal import as_unsupported
from harness.backends.protocol import BackendContractError, QuantizerBackend, Requirements, Support, Unsupported
from harness.format import BLOCK_SIZE
from harness.kernels.nvfp4 import quantize_into
from harness.layouts import ScaleLayout, padded_shape, swizzle

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment

L = ScaleLayout

# flashinfer/quantization/fp4_quantization.py get_fp4_quantization_module: the architectures it
# builds a module for ("120"/"121" become "120f" with CUDA >= 12.9).
FLASHINFER_QUANT_CCS = frozenset({90, 100, 103, 107, 110, 120, 121})


def _check_input(name: str, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[int, int]:
    if x.ndim != 2:
        raise ValueError(f"{name}: x must be 2-D [rows, k], got shape {tuple(x.shape)}")
    rows, k = x.shape
    if k % BLOCK_SIZE:
        raise ValueError(f"{name}: k={k} must be a multiple of {BLOCK_SIZE}")
    if global_scale.numel() != 1:
        raise ValueError(f"{name}: global_scale must hold one value, got shape {tuple(global_scale.shape)}")
    return rows, k


def _check_output(name: str, layout: ScaleLayout, rows: int, k: int, packed: torch.Tensor,
                  scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 views of the library's outputs, checked against the protocol's shapes."""
    packed = packed.view(torch.uint8)
    if tuple(packed.shape) != (rows, k // 2):
        raise BackendContractError(f"{name}: packed codes have shape {tuple(packed.shape)}, expected {(rows, k // 2)}")
    want = padded_shape(layout, rows, k // BLOCK_SIZE)
    scales = scales.view(torch.uint8)
    if scales.numel() != want[0] * want[1]:
        raise BackendContractError(f"{name}: scale buffer has {scales.numel()} bytes (shape {tuple(scales.shape)}); "
                                   f"layout {layout.value!r} for {rows} x {k // BLOCK_SIZE} scales needs {want}")
    return packed, scales.reshape(want)


class TritonQuantizer(QuantizerBackend):
    """The pipeline's own Triton quantize kernel for one layout."""

    def __init__(self, layout: ScaleLayout) -> None:
        self.layout = layout
        self.name = f"quant-triton-{layout.value}"
        self.description = (f"harness.kernels.nvfp4.quantize_into (Triton; GPU or CPU interpreter), "
                            f"{layout.value} scales, zero-filled layout padding")
        self.requirements = Requirements(runs_on_cpu=True, packages=("triton",), a_layouts=(layout,), w_layout=layout)

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, k = _check_input(self.name, x, global_scale)
        packed, scales = quantize_into(x, global_scale.reshape(1).to(device=x.device, dtype=torch.float32),
                                       self.layout, data_rows=rows, data_k=k, row_fill=0, ktail_fill=0, data_fill=0)
        return _check_output(self.name, self.layout, rows, k, packed, scales)


class FlashInferQuantizer(QuantizerBackend):
    """``flashinfer.fp4_quantize`` (the CUDA kernel ``fp4_quantize_sm100`` of its JIT module)."""

    #: fp4_quantize's input dtypes for NVFP4 (fp16 / bf16; fp8 is a different recipe)
    INPUT_DTYPES = (torch.float16, torch.bfloat16)

    def __init__(self, layout: ScaleLayout) -> None:
        self.layout = layout
        self.name = f"quant-flashinfer-{layout.value}"
        self.description = (f"flashinfer.fp4_quantize, {layout.value} scales (is_sf_swizzled_layout="
                            f"{layout is not L.LINEAR}, is_sf_8x4_layout={layout is L.SWIZZLED_8x4}); CUDA only")
        self.requirements = Requirements(compute_capabilities=FLASHINFER_QUANT_CCS, packages=("flashinfer",),
                                         a_layouts=(layout,), w_layout=layout, in_dtypes=self.INPUT_DTYPES)

    def support(self, env: "Environment") -> Support:
        fi, err = import_flashinfer()
        if fi is None:
            return Support(False, f"flashinfer is not importable ({err})")
        if env.device != "cuda" or env.compute_capability is None:
            return Support(False, "flashinfer fp4_quantize is a CUDA kernel (JIT-built per architecture); "
                                  "this machine has no CUDA GPU")
        cc = env.compute_capability
        if cc not in FLASHINFER_QUANT_CCS:
            need = ", ".join(f"SM{c}" for c in sorted(FLASHINFER_QUANT_CCS))
            return Support(False, f"flashinfer fp4_quantize builds modules for {need} only "
                                  f"(get_fp4_quantization_module); this GPU ({env.gpu_name}) is SM{cc}")
        ver = getattr(fi, "__version__", "?")
        note = ""
        if cc < 100:
            note = (f" (below SM100 flashinfer {ver} checks the device itself: a refusal is reported as unsupported, "
                    f"any bytes it returns are checked)" if library_device_check() is not None else
                    f" (below SM100 flashinfer {ver} has no device check for it: the harness checks its bytes)")
        return Support(True, f"flashinfer {ver} fp4_quantize on {env.gpu_name} (SM{cc}){note}")

    def call_kwargs(self, x: torch.Tensor, global_scale: torch.Tensor) -> dict:
        """Keyword arguments of ``flashinfer.fp4_quantize`` (pure)."""
        kw = dict(input=x, global_scale=global_scale.reshape(1).to(device=x.device, dtype=torch.float32),
                  sf_vec_size=BLOCK_SIZE, sf_use_ue8m0=False,
                  is_sf_swizzled_layout=self.layout is not L.LINEAR,
                  is_sf_8x4_layout=self.layout is L.SWIZZLED_8x4,
                  is_global_scale_inversed=False)
        fi, _ = import_flashinfer()
        if fi is not None and "nvfp4_4over6" in inspect.signature(fi.fp4_quantize).parameters:
            # None pins the plain NVFP4 recipe; omitted, FLASHINFER_NVFP4_4OVER6* variables could change it
            kw["nvfp4_4over6"] = None
        return kw

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, k = _check_input(self.name, x, global_scale)
        if x.dtype not in self.INPUT_DTYPES:
            raise Unsupported(f"{self.name}: flashinfer fp4_quantize takes {[str(d) for d in self.INPUT_DTYPES]} "
                              f"input for NVFP4, got {x.dtype}")
        if x.device.type != "cuda":
            raise Unsupported(f"{self.name}: flashinfer fp4_quantize is CUDA-only; x is on {x.device}")
        fi, err = import_flashinfer()
        if fi is None:
            raise Unsupported(f"{self.name}: flashinfer is not importable ({err})")
        try:
            packed, scales = fi.fp4_quantize(**self.call_kwargs(x, global_scale))  # x as given: views too
        except Exception as exc:
            prefix = f"{self.name}: flashinfer {getattr(fi, '__version__', '?')} fp4_quantize refused"
            unsup = as_unsupported(exc, prefix, types=refusal_types())
            if unsup is None and library_refuses_device(x.device) is not None:
                # the library raised, and its own device check refuses this GPU: a refusal, shown
                # with the library's message (never matched against a wording)
                unsup = Unsupported(f"{prefix}: {type(exc).__name__}: {exc}")
            if unsup is not None:
                raise unsup from exc
            raise
        return _check_output(self.name, self.layout, rows, k, packed, scales)


def library_device_check():
    """FlashInfer's own device check for its block-scale quantization kernels,
    ``flashinfer.utils._check_block_scale_quantization_support(device, op_name)`` (raises for a
    device they cannot run on), or None where the installed FlashInfer has none (or is absent)."""
    fi, _ = import_flashinfer()
    if fi is None:
        return None
    utils = importlib.import_module("flashinfer.utils")
    check = getattr(utils, "_check_block_scale_quantization_support", None)
    return check if callable(check) else None


def library_refuses_device(device: torch.device) -> str | None:
    """``"<ExceptionClass>: <message>"`` when the installed FlashInfer's own device check refuses
    ``device`` (a CUDA device) for ``fp4_quantize``; None when it accepts it or has no such check."""
    check = library_device_check()
    if check is None:
        return None
    try:
        check(device, "fp4_quantize")
    except Exception as exc:  # noqa: BLE001 - the check exists to refuse: whatever it raises is its refusal
        return f"{type(exc).__name__}: {exc}"
    return None


class TorchaoQuantizer(QuantizerBackend):
    """torchao's NVFP4 quantizer with a per-tensor scale, scales laid out in ``layout``.

    torchao's arithmetic, ``torchao/prototype/mx_formats/nvfp4_tensor.py`` ``nvfp4_quantize``:

    * block scale ``e4m3(clamp((amax_block / 6) / per_tensor_scale, min=2**-6, max=448))``: the
      clamp's minimum is e4m3's smallest *normal* value (``E4M3_EPS = finfo(float8_e4m3fn).tiny``),
      so a zero block gets scale byte 0x08 instead of 0x00, and a block whose reference scale is
      subnormal gets 0x08 and coarser codes;
    * element scale ``(1 / per_tensor_scale) / fp32(sf)``, not ``1 / (fp32(sf) / gs)``: a different
      rounding order, so a scaled value can land one ulp on the other side of an e2m1 tie.

    Both are torchao's choices, which the harness reports as differences from the reference.
    """

    INPUT_DTYPES = (torch.bfloat16, torch.float32)  # nvfp4_quantize asserts these
    #: the E4M3_EPS clamp is documented torchao behaviour: quantizer_agreement counts it, does not fail it
    known_differences = ("subnormal_scale_floor",)

    def __init__(self, layout: ScaleLayout = L.SWIZZLED_128x4, name: str = "quant-torchao") -> None:
        self.layout = layout
        self.name = name
        self.description = ("torchao.prototype.mx_formats nvfp4_quantize (per_tensor_scale = 1/gs, the decode "
                            f"multiplier), linear scales swizzled to {layout.value}; CPU or GPU")
        self.requirements = Requirements(runs_on_cpu=True, packages=("torchao",), a_layouts=(layout,), w_layout=layout,
                                         in_dtypes=self.INPUT_DTYPES)

    @staticmethod
    def per_tensor_scale(global_scale: torch.Tensor) -> torch.Tensor:
        """torchao's ``per_tensor_scale`` (decode multiplier) for our encode divisor: ``1 / gs`` in fp32."""
        return (1.0 / global_scale.reshape(()).to(torch.float32)).to(torch.float32)

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, k = _check_input(self.name, x, global_scale)
        if x.dtype not in self.INPUT_DTYPES:
            raise Unsupported(f"{self.name}: torchao nvfp4_quantize takes {[str(d) for d in self.INPUT_DTYPES]}, "
                              f"got {x.dtype}")
        try:
            mod = importlib.import_module("torchao.prototype.mx_formats.nvfp4_tensor")
        except Exception as exc:  # noqa: BLE001 - any import failure makes the backend unavailable
            raise Unsupported(f"{self.name}: torchao cannot be imported ({type(exc).__name__}: {exc})") from exc
        pts = self.per_tensor_scale(global_scale.to(x.device))
        scales_e4m3, packed = mod.nvfp4_quantize(x, BLOCK_SIZE, pts)  # x as given: views too
        linear = scales_e4m3.view(torch.uint8).reshape(rows, k // BLOCK_SIZE)
        laid_out = linear if self.layout is L.LINEAR else swizzle(linear, self.layout, fill=0)
        return _check_output(self.name, self.layout, rows, k, packed, laid_out)


def backends() -> list[QuantizerBackend]:
    out: list[QuantizerBackend] = []
    for lay in (L.SWIZZLED_128x4, L.SWIZZLED_8x4, L.LINEAR):
        out.append(TritonQuantizer(lay))
    for lay in (L.SWIZZLED_128x4, L.SWIZZLED_8x4, L.LINEAR):
        out.append(FlashInferQuantizer(lay))
    out.append(TorchaoQuantizer())
    return out
