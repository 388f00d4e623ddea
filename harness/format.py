"""The NVFP4 number format as data and pure-torch reference arithmetic.

NVFP4 stores a tensor as
  * e2m1 codes, two per byte (the low nibble holds the even element),
  * one float8_e4m3fn block scale per 16 consecutive K elements of a row,
  * one fp32 global scale per tensor.

Everything here runs on CPU and GPU tensors alike and is the ground truth the Triton pipeline
(`harness.kernels`) must match byte for byte.

Global-scale conventions.  Two reciprocal conventions exist in the wild and mixing them is a
classic bug, so both are named here:
  * the *encode divisor* ``gs = 448 * 6 / amax`` (FlashInfer's ``global_sf``, TRT-LLM); quantize
    multiplies by it, dequantize divides by it;
  * the *decode multiplier* ``amax / 2688`` (torchao's ``per_tensor_scale``, ModelOpt's
    ``weight_scale_2``); dequantize multiplies by it.
"""

from __future__ import annotations

import torch

BLOCK_SIZE = 16
"""K elements per block scale."""

E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_NAN_BYTES = (0x7F, 0xFF)
E4M3_MAX_BYTE = 0x7E
FP4_AMAX_PRODUCT = E4M3_MAX * E2M1_MAX  # 2688: the largest magnitude NVFP4 can represent

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
"""Magnitude of codes 0..7; codes 8..15 are the same magnitudes negated (8 is -0)."""

# Round-to-nearest-even decision points between consecutive e2m1 magnitudes.  At an exact tie
# the even code (0, 2, 4, 6) wins, so the comparison is inclusive (<=) when the lower code is
# even and exclusive (<) when it is odd.
_E2M1_THRESHOLDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


# ----------------------------------------------------------------------------------------------
# e2m1
# ----------------------------------------------------------------------------------------------
def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Encode float values (already divided by their block scale) to e2m1 codes (uint8, 0..15).

    Round-to-nearest-even, saturating at +-6; the sign bit is kept, so tiny negatives give code 8
    (-0), as the hardware conversion ``cvt.rn.satfinite.e2m1x2.f32`` does.
    """
    x = x.float()
    a = x.abs()
    code = torch.zeros_like(a, dtype=torch.int32)
    for i, t in enumerate(_E2M1_THRESHOLDS):
        lower_code_even = i % 2 == 0
        above = (a > t) if lower_code_even else (a >= t)
        code += above.to(torch.int32)
    sign = torch.signbit(x).to(torch.int32) << 3
    return (code | sign).to(torch.uint8)


_E2M1_TABLES: dict[torch.device, torch.Tensor] = {}


def _e2m1_table(device: torch.device) -> torch.Tensor:
    """The 16 e2m1 values (fp32) on ``device``, built once per device: building it is a host-to-device
    copy, which CUDA graph capture forbids, so a backend that decodes inside a captured call finds it
    already there (made by an eager warm-up call)."""
    table = _E2M1_TABLES.get(device)
    if table is None:
        table = torch.tensor(E2M1_MAGNITUDES + tuple(-v for v in E2M1_MAGNITUDES), dtype=torch.float32,
                             device=device)
        table[8] = -0.0
        _E2M1_TABLES[device] = table
    return table


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """Decode e2m1 codes (uint8 0..15) to float32."""
    return _e2m1_table(codes.device)[codes.long() & 0xF]


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes [..., K] (K even) into bytes [..., K/2]; the low nibble holds the even element."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_e2m1: last dimension must be even, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    return (c[..., 0::2] & 0xF) | ((c[..., 1::2] & 0xF) << 4)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """Unpack bytes [..., K/2] into codes [..., K] (uint8)."""
    p = packed.to(torch.uint8)
    out = torch.stack((p & 0xF, p >> 4), dim=-1)
    return out.reshape(*p.shape[:-1], p.shape[-1] * 2)


# ----------------------------------------------------------------------------------------------
# e4m3fn, in integer bit arithmetic (the Triton kernels use the same steps)
# ----------------------------------------------------------------------------------------------
def e4m3_decode(b: torch.Tensor) -> torch.Tensor:
    """Decode float8_e4m3fn bytes (uint8) to float32; 0x7F and 0xFF decode to NaN."""
    b = b.to(torch.int32) & 0xFF
    sign = b >> 7
    exp = (b >> 3) & 0xF
    man = b & 0x7
    normal_bits = (sign << 31) | ((exp + 120) << 23) | (man << 20)
    normal = normal_bits.view(torch.float32)
    sub = man.float() * 2.0 ** -9
    sub = torch.where(sign.bool(), -sub, sub)
    val = torch.where(exp == 0, sub, normal)
    return torch.where((exp == 15) & (man == 7), torch.full_like(val, float("nan")), val)


def e4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """Encode float32 values to float8_e4m3fn bytes: round-to-nearest-even, saturating at +-448.

    Matches ``cvt.rn.satfinite.e4m3x2.f32``.  NaN inputs give 0x7F.
    """
    x = x.float()
    sign = torch.signbit(x).to(torch.int32) << 7
    a = x.abs().clamp(max=E4M3_MAX)
    # subnormals (below 2^-6): step 2^-9, round half to even on the integer grid
    q = a * 2.0 ** 9
    fl = q.floor()
    frac = q - fl
    fl_i = fl.to(torch.int32)
    up = (frac > 0.5) | ((frac == 0.5) & ((fl_i & 1) == 1))
    sub_code = fl_i + up.to(torch.int32)
    # normals: keep 3 mantissa bits, round half to even, carry may bump the exponent
    bits = a.view(torch.int32)
    exp = (bits >> 23) - 127
    man3 = (bits >> 20) & 0x7
    rem = bits & 0xFFFFF
    up_n = (rem > 0x80000) | ((rem == 0x80000) & ((man3 & 1) == 1))
    norm_code = ((exp + 7) << 3) + man3 + up_n.to(torch.int32)
    code = torch.where(a < 2.0 ** -6, sub_code, norm_code).clamp(max=E4M3_MAX_BYTE)
    code = torch.where(torch.isnan(x), torch.full_like(code, 0x7F), code | sign)
    return code.to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Global scale conventions
# ----------------------------------------------------------------------------------------------
def global_scale_encode_divisor(amax: torch.Tensor | float) -> torch.Tensor:
    """The encode-divisor global scale ``448*6/amax`` (fp32) used by quantizers and FlashInfer.

    An all-zero tensor (amax == 0) gets 1.0 so the quantized tensor is exact zeros, not NaN.
    """
    amax = torch.as_tensor(amax, dtype=torch.float32)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    # full_like fills on the device (no host-to-device copy: safe inside CUDA graph capture)
    gs = torch.full_like(safe, FP4_AMAX_PRODUCT) / safe
    return torch.where(amax > 0, gs, torch.ones_like(gs))


def global_scale_decode_multiplier(amax: torch.Tensor | float) -> torch.Tensor:
    """The decode-multiplier global scale ``amax/2688`` (torchao per_tensor_scale, ModelOpt
    weight_scale_2): the reciprocal of :func:`global_scale_encode_divisor`."""
    return 1.0 / global_scale_encode_divisor(amax)


def decode_multiplier_to_encode_divisor(d: torch.Tensor | float) -> torch.Tensor:
    """Convert a checkpoint's decode multiplier (weight_scale_2) into the encode divisor."""
    return 1.0 / torch.as_tensor(d, dtype=torch.float32)


def calibrated_amax(runtime_amax: torch.Tensor | float, calibration: float) -> torch.Tensor:
    """The amax a static (calibrated) scale was computed from, for a calibration ratio
    ``calibration = runtime amax / calibrated amax`` (fp32; ``runtime_amax / calibration``).

    A ratio above 1 models activations that exceed the calibration data (ModelOpt's ``input_scale``
    is ``calibrated amax / 2688``): the encode divisor is then larger than the tensor's own, block
    scales above 448 saturate (e4m3 satfinite) and codes at +-6.  A ratio of exactly 1 is the
    dynamic scale.  Raises ValueError for a ratio that is not a positive finite number.
    """
    if isinstance(calibration, bool) or not isinstance(calibration, (int, float)) or \
            not (0 < float(calibration) < float("inf")):
        raise ValueError(f"calibration={calibration!r}: expected a positive finite ratio "
                         f"(runtime amax / calibrated amax)")
    amax = torch.as_tensor(runtime_amax, dtype=torch.float32)
    return ieee_div(amax, float(calibration)) if calibration != 1 else amax


def static_global_scale(runtime_amax: torch.Tensor | float, calibration: float | None) -> torch.Tensor:
    """The encode divisor a quantizer uses: the tensor's own (``calibration`` None, dynamic) or a
    static one calibrated on data whose amax was ``runtime_amax / calibration``
    (:func:`calibrated_amax`).  fp32, same shape as ``runtime_amax``."""
    amax = torch.as_tensor(runtime_amax, dtype=torch.float32)
    if calibration is None:
        return global_scale_encode_divisor(amax)
    return global_scale_encode_divisor(calibrated_amax(amax, calibration))


def gemm_alpha(gs_a: torch.Tensor | float, gs_b: torch.Tensor | float) -> torch.Tensor:
    """alpha = 1 / (gs_a * gs_b) in fp32, the factor a GEMM applies to its block-scaled sum."""
    ga = torch.as_tensor(gs_a, dtype=torch.float32)
    gb = torch.as_tensor(gs_b, dtype=torch.float32)
    return (1.0 / (ga * gb)).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Reference quantizer / dequantizer (linear layout, unpadded)
# ----------------------------------------------------------------------------------------------
def ieee_div(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """``a / b`` correctly rounded (IEEE 754 division) on every device, in the dtype of the tensors.

    PyTorch's CUDA division by a Python number (a CPU scalar) multiplies by its reciprocal instead of
    dividing (``div_true_kernel_cuda`` in ATen's ``native/cuda/BinaryDivTrueKernel.cu``: "may lose
    one bit of precision"), so ``x / 6.0`` on a GPU can differ by one ulp from the same expression
    on the CPU, which flips block scales and e2m1 codes at rounding boundaries.  Both operands are
    made tensors on the same device here, so the GPU divides element by element as the CPU does.
    """
    ref = a if isinstance(a, torch.Tensor) else b
    if not isinstance(ref, torch.Tensor):
        raise TypeError("ieee_div: at least one operand must be a tensor")
    a_t = torch.as_tensor(a, dtype=ref.dtype, device=ref.device)
    b_t = torch.as_tensor(b, dtype=ref.dtype, device=ref.device)
    return torch.div(a_t, b_t)


def block_scale_and_inverse(amax_block: torch.Tensor, gs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The block-scale byte and the per-element multiplier, in the kernels' arithmetic order.

    sf   = e4m3(gs * amax_block / 6)        (fp32, left to right, IEEE division)
    inv  = 1 / (fp32(sf) / gs)              (0 where sf == 0)
    """
    sf_f = ieee_div(gs * amax_block, 6.0)
    sf_byte = e4m3_encode(sf_f)
    sf_dec = e4m3_decode(sf_byte)
    inv = torch.where(sf_dec == 0, torch.zeros_like(sf_dec), ieee_div(1.0, ieee_div(sf_dec, gs)))
    return sf_byte, inv


def reference_quantize(x: torch.Tensor, gs: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize x [rows, K] (K a multiple of 16) with encode-divisor global scale ``gs``.

    Returns (codes [rows, K] uint8, unpacked; scale bytes [rows, K/16] uint8, linear layout).
    """
    if x.ndim != 2:
        raise ValueError(f"reference_quantize: x must be 2-D [rows, K], got shape {tuple(x.shape)}")
    rows, k = x.shape
    if k % BLOCK_SIZE:
        raise ValueError(f"reference_quantize: K={k} is not a multiple of {BLOCK_SIZE}")
    xf = x.float().reshape(rows, k // BLOCK_SIZE, BLOCK_SIZE)
    gs_t = torch.as_tensor(gs, dtype=torch.float32, device=x.device)
    amax = xf.abs().amax(dim=-1)
    sf_byte, inv = block_scale_and_inverse(amax, gs_t)
    codes = e2m1_encode(xf * inv.unsqueeze(-1)).reshape(rows, k)
    return codes, sf_byte


def reference_dequantize(codes: torch.Tensor, scale_bytes: torch.Tensor, gs: torch.Tensor | float | None = None,
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Dequantize codes [rows, K] with linear scale bytes [rows, K/16].

    Without ``gs`` the result is code * fp32(sf), the value a block-scaled GEMM multiplies before
    alpha; with ``gs`` (encode divisor) it is divided by it.  Computed in ``dtype`` (fp64 by
    default: e2m1 * e4m3 products are exact there).
    """
    rows, k = codes.shape
    v = e2m1_decode(codes).to(dtype).reshape(rows, k // BLOCK_SIZE, BLOCK_SIZE)
    s = e4m3_decode(scale_bytes).to(dtype).unsqueeze(-1)
    out = (v * s).reshape(rows, k)
    if gs is not None:
        out = out / torch.as_tensor(gs, dtype=dtype, device=out.device)
    return out
