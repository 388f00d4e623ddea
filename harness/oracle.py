"""The reference product and its sound error bound.

The reference dequantizes the *real* region of the pipeline's operands (it never reads a padding
byte: :meth:`QuantizedTensor.dequantize` gathers real offsets only) and computes
``alpha * A_deq @ W_deq^T`` in fp64.  Each product ``e2m1 * e4m3 * e2m1 * e4m3`` is exact in fp64
(and in fp32), so the reference is exact up to fp64 summation, whose error (< K * 2^-53 relative)
is covered by a safety factor in :func:`error_bound`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from harness.exact_reference import exact_products
from harness.format import gemm_alpha, global_scale_encode_divisor, reference_dequantize, reference_quantize, unpack_e2m1
from harness.torch_modes import tf32_off

if TYPE_CHECKING:  # pragma: no cover
    from harness.pipeline import CheckpointWeight, MergedCheckpoint

U32 = 2.0 ** -24
_OUT = {
    # unit roundoff (round to nearest), half the smallest subnormal spacing, largest finite value
    torch.bfloat16: (2.0 ** -8, 2.0 ** -134, torch.finfo(torch.bfloat16).max),
    torch.float16: (2.0 ** -11, 2.0 ** -25, torch.finfo(torch.float16).max),
    torch.float32: (2.0 ** -24, 2.0 ** -150, torch.finfo(torch.float32).max),
}
_FP64_SAFETY = 1.0 + 2.0 ** -30
_SIGNIFICAND_BITS = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24, torch.float64: 53}


@dataclass(frozen=True)
class Precision:
    """What a backend's arithmetic rounds, for the reference error bound (:func:`error_bound`).

    accumulator_bits: significand bits (implicit bit included) of the accumulator: 24 for IEEE fp32.
    operand_bits: significand bits the dequantized operands are rounded to before the products,
      or None when the products are exact (block-scaled tensor cores, or the emulation kernels,
      which feed exact e2m1*e4m3 values as bf16).
    """
    accumulator_bits: int = 24
    operand_bits: int | None = None


def overflow_threshold(dtype: torch.dtype) -> float:
    """The magnitude ``T`` from which a value rounds to infinity in ``dtype`` under round to nearest.

    For a format with largest finite value ``M`` and spacing ``ulp(M)`` between ``M`` and its
    predecessor, ``T = M + ulp(M)/2`` (IEEE 754-2019, 4.3.1: "an infinitely precise result with
    magnitude at least b^emax (b - 1/2 b^(1-p)) shall round to infinity"; the tie at ``T`` itself goes
    to infinity).  fp16: 65520; bf16: 2^128 - 2^119; fp32: 2^128 - 2^103 (all exact in fp64).
    Raises ValueError for a dtype the oracle does not compare in.
    """
    if dtype not in _OUT:
        raise ValueError(f"overflow_threshold: dtype={dtype} is not one of {list(_OUT)}")
    fi = torch.finfo(dtype)
    _, e = math.frexp(fi.max)             # fi.max = f * 2^e, 1/2 <= f < 1: ulp(M) = 2^(e-1) * eps
    return fi.max + 2.0 ** (e - 1) * fi.eps / 2


def overflow_accepted(out: torch.Tensor, ref_value: torch.Tensor, bound: torch.Tensor, out_dtype: torch.dtype,
                      product: torch.Tensor | None = None) -> torch.Tensor:
    """bool, shape of ``out``: the infinities in ``out`` that a correct backend may produce.

    An infinity of sign ``s`` is accepted where ``s * ref + bound >= T``
    (:func:`overflow_threshold`), whatever the sign of ``ref``; with ``product`` (the reference
    before a bias that the backend adds in the output dtype, after casting the product), also where
    ``s * product + bound >= T``: the cast of the product can overflow before the bias is added.
    NaN is never accepted.  The derivation is in :func:`compare`.
    """
    t = overflow_threshold(out_dtype)
    o = out.double()
    r = ref_value.to(o.device)
    b = bound.to(o.device)
    pos = o == float("inf")
    neg = o == float("-inf")
    reach_pos = r + b >= t
    reach_neg = r - b <= -t
    if product is not None:
        p = product.to(o.device)
        reach_pos = reach_pos | (p + b >= t)
        reach_neg = reach_neg | (p - b <= -t)
    return (pos & reach_pos) | (neg & reach_neg)


@dataclass
class Reference:
    """The exact product over the real region and the magnitudes the bound needs."""
    value: torch.Tensor    # fp64 [m, n]: alpha * sum_k a_k w_k  (+ bias when given)
    abs_sum: torch.Tensor  # fp64 [m, n]: alpha * sum_k |a_k w_k|
    k: int                 # number of products summed (the padded K a backend may read)
    bias: torch.Tensor | None = None


REFERENCE_METHODS = ("auto", "fp64", "int8")
INT8_MIN_MNK_CUDA = 1 << 39
"""On a CUDA device the exact int8 method (:mod:`harness.exact_reference`) is used from this
m*n*k on; below it the fp64 GEMM wins.  Measured on an H200 (``bench/reference_speed.py``,
2026-12-01, bench/RESULTS.md): the fp64 GEMM (fp64 tensor cores) was faster at every shape up to
4096^3 (int8 at 0.11-0.68x of its speed); int8 was faster only from 8192^3 on, and only for data
whose rows need 2 int8 digits (1.20x at 8192^3, 1.32x at 16384x8192x8192; heavy-tailed rows need 4
digits and ran at 0.51-0.54x).  On the CPU the fp64 GEMM is used (measured faster there at every
shape the suite draws)."""


def reference_method(m: int, n: int, k: int, device: torch.device) -> str:
    """Which method :func:`reference_from_dequantized` uses: ``NVFP4_REFERENCE`` (auto, fp64, int8)
    forces one; ``auto`` picks int8 on CUDA from :data:`INT8_MIN_MNK_CUDA` on, else fp64."""
    method = os.environ.get("NVFP4_REFERENCE", "auto")
    if method not in REFERENCE_METHODS:
        raise ValueError(f"NVFP4_REFERENCE={method!r}: expected one of {REFERENCE_METHODS}")
    if method != "auto":
        return method
    return "int8" if device.type == "cuda" and m * n * k >= INT8_MIN_MNK_CUDA else "fp64"


def reference_from_dequantized(a: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor | float,
                               k: int | None = None, bias: torch.Tensor | None = None,
                               a_bits: int = 6, w_bits: int = 6) -> Reference:
    """Reference of ``alpha * a @ w^T (+ bias)`` from already-dequantized real operands.

    a [m, K], w [n, K] (any float dtype; fp32 ``code * sf`` from the pipeline), alpha: fp32 scalar.
    ``a_bits`` / ``w_bits``: significant bits per element (6 for e2m1 * e4m3, 8 for bf16), used by
    the exact int8 method (:mod:`harness.exact_reference`), which :func:`reference_method` selects;
    operands it cannot represent exactly go to the fp64 GEMM.
    """
    # alpha stays on the device (fp32 -> fp64 is exact): a Python float would cost a host sync
    al = torch.as_tensor(alpha, dtype=torch.float32, device=a.device).reshape(-1)[:1].double()
    exact = None
    if reference_method(a.shape[0], w.shape[0], a.shape[1], a.device) == "int8":
        exact = exact_products(a, w, a_bits, w_bits)
    if exact is not None:
        value = exact[0].mul_(al)
        abs_sum = exact[1].mul_(al.abs())
    else:
        a64 = a.double()
        w64 = w.double()
        value = (a64 @ w64.T).mul_(al)
        del a64, w64
        # sum |a_k w_k| only feeds the bound, so an upper bound suffices: the products are exact in
        # fp32 (<= 13 significant bits for NVFP4, <= 14 with bf16 activations) and a fp32 sum of K
        # non-negative terms in any order is at least (1 - gamma_K) times the exact sum, so dividing
        # by (1 - gamma_K) bounds it from above.
        kk = a.shape[1]
        gamma = kk * U32 / (1 - kk * U32)
        with tf32_off():  # TF32 would round the products
            abs32 = a.float().abs() @ w.float().abs().T
        abs_sum = abs32.double().mul_(al.abs()).div_(1 - gamma)
    if bias is not None:
        value = value + bias.double().reshape(1, -1)
    return Reference(value, abs_sum, k if k is not None else a.shape[1], bias)


def reference_gemm(ops) -> Reference:
    """Reference for :class:`harness.pipeline.GemmOperands` (W4A16 uses the dense activations)."""
    if ops.a_dense is not None:
        a = ops.a_dense[:, :ops.k]
        a_bits = _SIGNIFICAND_BITS[a.dtype]
    else:
        a = ops.a.dequantize()
        a_bits = 6
    w = ops.w.dequantize()
    return reference_from_dequantized(a, w, ops.alpha, k=ops.a.k_alloc if ops.a_dense is None else ops.a_dense.shape[1],
                                      a_bits=a_bits, w_bits=6)


def reference_merged_weight(weight: "MergedCheckpoint") -> "CheckpointWeight":
    """The one weight a merged-partition layer must multiply with, from the checkpoint's shards only
    (never from the engine's slot buffers, whose unwritten slots hold stale bytes): global decode
    multiplier ``max`` over the shards' ``weight_scale_2`` (the max over the loaded partitions of vLLM's
    and SGLang's ``process_weights_after_loading``), each partition's block scales re-expressed under
    it, ``e4m3(decode(sf) * (ws2_i / max))`` (fp32 division and multiply, e4m3 round to nearest even,
    saturating), its codes unchanged, and the static ``input_scale`` the max over the shards'.
    Shapes: packed uint8 [n, k/2], scales uint8 [n, k/16], scales fp32 [1]."""
    from harness.format import e4m3_decode, e4m3_encode, ieee_div
    from harness.pipeline import CheckpointWeight

    ws2 = torch.stack([sh.weight_scale_2.reshape(()).float() for sh in weight.shards])
    gmax = ws2.max().reshape(1)
    per_row = []  # the scale ratio of each output row
    if weight.fused_on_disk:
        per_row.append(torch.ones(weight.n, dtype=torch.float32, device=gmax.device))
    else:
        for sh, width in zip(weight.shards, weight.partitions):
            ratio = ieee_div(sh.weight_scale_2.reshape(1).float(), gmax)
            per_row.append(ratio.expand(width))
    ratio = torch.cat(per_row).reshape(-1, 1)
    raw = torch.cat([sh.scales for sh in weight.shards])
    scales = torch.where(ratio == 1, raw, e4m3_encode(e4m3_decode(raw) * ratio))
    ins = [sh.input_scale for sh in weight.shards if sh.input_scale is not None]
    input_scale = torch.stack([i.reshape(()).float() for i in ins]).max().reshape(1) if ins else None
    return CheckpointWeight(torch.cat([sh.packed for sh in weight.shards]), scales, gmax, input_scale)


def reference_linear(x: torch.Tensor, weight: "CheckpointWeight", bias: torch.Tensor | None, k_terms: int,
                     dense_activation: bool = False):
    """fp64 reference of an NVFP4 linear layer: the activation quantized by the reference quantizer
    with a dynamic per-tensor global scale or the checkpoint's static one (``weight.input_scale``;
    saturating where x exceeds the calibration), or kept dense for W4A16, the checkpoint weight
    dequantized, alpha computed in fp32 from the two global scales, bias added."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    w = reference_dequantize(unpack_e2m1(weight.packed), weight.scales)
    gs_w = weight.global_scale.reshape(1)
    if dense_activation:
        a = x2.double()
        a_bits = _SIGNIFICAND_BITS[x.dtype]
        alpha = (1.0 / gs_w).to(torch.float32)
    else:
        a_bits = 6
        gs = weight.input_global_scale
        gs = global_scale_encode_divisor(x2.float().abs().amax()).reshape(1).to(x.device) if gs is None \
            else gs.to(x.device)
        codes, sf = reference_quantize(x2, gs)
        a = reference_dequantize(codes, sf)
        alpha = gemm_alpha(gs, gs_w)
    return reference_from_dequantized(a, w, alpha, k=k_terms, bias=bias, a_bits=a_bits, w_bits=6)


def error_bound(ref: Reference, precision: Precision, out_dtype: torch.dtype,
                bias_in_out_dtype: bool = False) -> torch.Tensor:
    r"""Per-element bound on ``|out - ref|`` for a backend of the given precision.

    Derivation.  Let :math:`p_k = a_k w_k` (exact), :math:`S = \sum_k p_k`, :math:`P = \sum_k |p_k|`
    and :math:`\alpha` the fp32 alpha the backend receives (the reference uses the same value).

    1. Accumulation.  Any summation order of K terms in a floating-point accumulator with unit
       roundoff :math:`u_a` gives :math:`|\hat S - S| \le \gamma_K P`,
       :math:`\gamma_K = K u_a / (1 - K u_a)` (Higham, *Accuracy and Stability of Numerical
       Algorithms*, 2nd ed., eq. 4.4).  Blocked or split-K orders are special cases.  We take
       :math:`u_a = 2^{1-p}` for a ``p``-bit accumulator, which also covers truncating
       (round-toward-zero) accumulators such as tensor-core adders.
    2. Rounded operands (``precision.operand_bits``: e.g. torch emulation rounds
       ``code*sf/gs`` to bf16 and folds the global scales into the operands instead of applying
       alpha).  Each operand picks up a relative error :math:`\le u_o + u_{32}` (the fp32 division
       by gs, then the rounding to ``operand_bits``), a product :math:`\le (1+u_o+u_{32})^2 - 1`, and
       using :math:`1/(gs_a gs_w)` instead of the fp32 alpha adds at most :math:`3u_{32}`:
       :math:`E_o = ((1+u_o+u_{32})^2 - 1 + 3u_{32})\,\alpha P`.
    3. The alpha multiply in fp32 adds :math:`u_{32}|\alpha\hat S|`, and the cast to the output
       dtype :math:`u_{out}|y| + \eta_{out}` (half the smallest subnormal spacing).
    4. A bias added in the output dtype after the cast adds one more :math:`u_{out}|y+b| + \eta_{out}`.

    With :math:`E = \alpha\gamma_K P + E_o`, combining:
    :math:`|out - ref| \le E(1+u_{32})(1+u_{out}) + (u_{32} + u_{out} + u_{32}u_{out})|\alpha S| + \eta_{out}`
    (+ step 4), evaluated in fp64 and multiplied by :math:`1 + 2^{-30}` to cover the fp64 rounding of
    the reference and of the bound themselves.

    5. Overflow.  Steps 1-4 bound a finite result.  The cast of step 3 (and of step 4) rounds to
       infinity from the overflow threshold :math:`T = M + ulp(M)/2` of the output dtype on
       (:func:`overflow_threshold`); since the terms before the cast already bound the value being
       cast, :math:`+\infty` is within the bound exactly where :math:`ref + B \ge T` and
       :math:`-\infty` exactly where :math:`ref - B \le -T`, and nowhere else (:func:`compare`
       gives the derivation).
    """
    if out_dtype not in _OUT:
        raise ValueError(f"error_bound: out_dtype={out_dtype} is not one of {list(_OUT)}")
    u_out, eta, _ = _OUT[out_dtype]
    u_a = 2.0 ** (1 - precision.accumulator_bits)
    k = ref.k
    if k * u_a >= 1:
        raise ValueError(f"error_bound: K={k} is too long for a {precision.accumulator_bits}-bit accumulator")
    gamma = k * u_a / (1 - k * u_a)
    # in-place steps, in the order of the formula: the same values with two [m, n] fp64 buffers
    e = gamma * ref.abs_sum
    if precision.operand_bits is not None:
        u_o = 2.0 ** -precision.operand_bits
        e.add_(((1 + u_o + U32) ** 2 - 1 + 3 * U32) * ref.abs_sum)
    product = ref.value if ref.bias is None else ref.value - ref.bias.double().reshape(1, -1)
    bound = e.mul_(1 + U32).mul_(1 + u_out)
    bound.add_(product.abs().mul_(U32 + u_out + U32 * u_out)).add_(eta)
    if ref.bias is not None and bias_in_out_dtype:
        bound.add_(ref.value.abs().add_(bound).mul_(u_out)).add_(eta)
    return bound.mul_(_FP64_SAFETY)


@dataclass
class Agreement:
    ok: bool
    max_err_units: float            # max |out-ref|/bound over real finite elements (inf for a rejected NaN/Inf)
    max_err_abs: float
    argmax: tuple[int, int] | None
    violations: int                 # real elements outside the bound (rejected NaN/Inf included)
    nan_rows: list[int] = field(default_factory=list)  # rows with a rejected NaN/Inf
    bad: torch.Tensor | None = None  # bool [m, n]: outside the bound (a rejected NaN/Inf included)
    accepted_overflow: int = 0      # infinities accepted by the overflow rule (counted, never hidden)
    accepted: torch.Tensor | None = None  # bool [m, n]: those infinities (set when there are any)


def compare(out: torch.Tensor, ref: Reference, bound: torch.Tensor, out_dtype: torch.dtype,
            bias_in_out_dtype: bool = False) -> Agreement:
    r"""Compare a backend's real-region output [m, n] with the reference under ``bound``.

    A finite element agrees when :math:`|out - ref| \le B`.  A NaN never agrees.  An infinity agrees
    only where a correct backend can round to it (:func:`overflow_accepted`), and is counted in
    ``accepted_overflow``.  Derivation (it extends :func:`error_bound`'s): let :math:`\hat y` be the
    value the backend rounds to ``out_dtype``.  Every term of :math:`B` except the cast's own
    :math:`u_{out}|y| + \eta_{out}` bounds :math:`|\hat y - ref|`, so :math:`|\hat y - ref| \le B`.
    Round to nearest gives :math:`+\infty` exactly when :math:`\hat y \ge T` and :math:`-\infty`
    exactly when :math:`\hat y \le -T`, with :math:`T = M + ulp(M)/2` (:func:`overflow_threshold`).
    So :math:`+\infty` is possible only where :math:`ref + B \ge T`, :math:`-\infty` only where
    :math:`ref - B \le -T`; anywhere else an infinity is an error like any other.  With a bias added
    in the output dtype after the cast (``bias_in_out_dtype``, step 4 of :func:`error_bound`), the
    product :math:`\hat y_p` with :math:`|\hat y_p - (ref - bias)| \le B` is cast first and
    :math:`\pm\infty + bias = \pm\infty`: the same test applies to :math:`ref - bias`.  An infinity
    of the sign opposite to :math:`ref` needs an error of at least :math:`T + |ref|`; it is accepted
    only where the bound reaches that far (:math:`B \ge T + |ref|`), as a finite result of the
    opposite sign would be: where a correct backend may re-round an intermediate by a whole step
    (the fused-MoE bound of :mod:`harness.grouped.moe_reference`, step d), an fp16 output row whose
    reference reaches 10^8 can move its small elements past :math:`\mp T`.  Casts that saturate or round toward zero never produce an infinity, so the rule only admits what
    a round-to-nearest cast does.  ``max_err_units`` is taken over the finite elements.
    """
    o = out.double()
    r = ref.value.to(o.device)
    b = bound.to(o.device)
    if o.numel():
        # the common, passing path: two reductions and one host sync (NaN/Inf make it fall through)
        d = (o - r).abs_().div_(b.clamp_min(torch.finfo(torch.float64).tiny))  # in place: fewer [m, n] buffers
        quick = torch.nan_to_num(d, nan=float("inf"), out=d).max().item()
        del d
        if quick <= 1.0:
            return Agreement(ok=True, max_err_units=quick, max_err_abs=float("nan"), argmax=None,
                             violations=0, nan_rows=[], bad=None)
    product = None
    if bias_in_out_dtype and ref.bias is not None:
        product = r - ref.bias.double().reshape(1, -1).to(o.device)
    accepted = overflow_accepted(o, r, b, out_dtype, product)
    err = (o - r).abs()
    finite = torch.isfinite(o)
    within = finite & (err <= b)
    bad = ~(within | accepted)
    units = torch.where(finite, err / b.clamp_min(torch.finfo(torch.float64).tiny),
                        torch.full_like(err, float("inf")))
    units = torch.where(accepted, torch.zeros_like(units), units)
    if units.numel():
        # one host sync on the common, passing path; details only for a failure
        max_units, n_bad, n_acc = torch.stack([units.max(), bad.sum().double(), accepted.sum().double()]).tolist()
        n_acc = int(n_acc)
        if n_bad == 0:
            return Agreement(ok=True, max_err_units=max_units, max_err_abs=float("nan"), argmax=None,
                             violations=0, nan_rows=[], bad=None, accepted_overflow=n_acc,
                             accepted=accepted if n_acc else None)
        flat = int(torch.argmax(torch.nan_to_num(units, nan=float("inf"), posinf=float("inf"))))
        argmax = (flat // units.shape[1], flat % units.shape[1])
        max_units = float(units.reshape(-1)[flat])
        max_abs = float(torch.nan_to_num(err, nan=float("inf")).reshape(-1)[flat])
    else:
        argmax, max_units, max_abs, n_acc = None, 0.0, 0.0, 0
    nan_rows = torch.nonzero((~finite & ~accepted).any(dim=1)).reshape(-1).tolist()
    return Agreement(ok=not bool(bad.any()), max_err_units=max_units, max_err_abs=max_abs, argmax=argmax,
                     violations=int(bad.sum()), nan_rows=nan_rows, bad=bad, accepted_overflow=n_acc,
                     accepted=accepted if n_acc else None)
