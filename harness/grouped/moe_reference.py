r"""The exact reference of a fused-MoE layer and its derived error bound.

Reference.  For expert ``e`` and the rows of its section (its tokens, in token order):

1. ``q1 = Q(x)``: the hidden states quantized by the reference quantizer
   (:func:`harness.format.reference_quantize`) with the expert's FC1 input scale;
2. ``[G | U] = alpha1 * q1 @ W13^T`` in fp64 (every product exact: :mod:`harness.oracle`);
3. ``X = silu(G) * U`` in fp64: the *exact* intermediate;
4. ``q2 = Q(X)`` with the expert's FC2 input scale (the reference quantizer on ``fl32(X)``);
5. ``Y = alpha2 * q2 @ W2^T`` in fp64; token ``t`` gets ``ref[t] = sum_j w_tj * Y_{e_tj}[t]``.

Why a bound and not bit agreement.  A backend computes FC1 with some rounding, evaluates the
activation in fp32 (or rounds it to bf16), and then *re-quantizes* its own intermediate ``x'`` to
NVFP4.  Where ``x'`` and ``X`` fall on different sides of an e2m1 rounding boundary (or their
block amax on different sides of an e4m3 boundary), ``Q(x')`` and ``Q(X)`` differ by a whole e2m1
step: two correct implementations that round the intermediate differently cannot agree bit for
bit.  The bound allows exactly that and nothing more.

Derivation (``u = 2^-23`` covers round-to-nearest and truncating fp32 arithmetic; every magnitude
below is evaluated in fp64 from the exact quantities):

a. FC1 input.  A backend that quantizes the hidden states itself computes its block scales and
   element multipliers in fp32 with relative errors below ``s = 2^-20`` (:data:`SLACK`;
   ``rcp.approx`` is within 2^-22), so its codes can differ from ``q1``'s only where ``x`` lies within
   that relative distance of a rounding boundary: :func:`quantization_deviation` gives
   ``dev1 >= |q1' - q1|`` element by element, and ``D1 = alpha1 |dev1| @ |W13|^T``.
b. FC1.  With ``P1 = alpha1 |q1| @ |W13|^T`` (the oracle's ``abs_sum``), the backend's ``g', u'``
   satisfy ``|g' - G| <= B1`` where ``B1 = error_bound(|G| + D1, P1 + D1, K=hidden, precision,
   fc1_out) + D1`` (:func:`harness.oracle.error_bound`, monotone in both magnitudes).
c. Activation.  ``silu`` is Lipschitz with constant ``L = max|silu'| < 1.1`` (attained near
   ``x = 2.4``: 1.0998), so ``|silu(g')u' - silu(G)U| <= L B1_g (|U| + B1_u) + |silu(G)| B1_u``; its
   evaluation adds a relative ``rho = c0 + c1 (|G| + B1_g)`` (the backend's ``activation_error``) of
   ``(|silu(G)| + L B1_g)(|U| + B1_u)``, and rounding to ``act_out`` adds ``u_act |x'| + eta_act``.
   The sum is ``delta``, with ``|x' - X| <= delta``; ``2^-45 |X|`` more covers the fp64 reference.
d. Requantization.  The backend's block amax lies within ``max(delta)`` of ``X``'s; every e4m3
   block scale byte its fp32 arithmetic can reach from there (one or two values; the set is computed)
   and every e2m1 code ``x'`` can round to under each of them bound ``|q2' - q2| <= dev2``
   (:func:`quantization_deviation`): one e2m1 step where ``x'`` may cross a rounding boundary, zero
   elsewhere, the whole step range where a block scale may change.
e. FC2.  ``|y' - Y| <= B2 = error_bound(|Y| + D2, P2 + D2, K=intermediate, precision, fp32) + D2``
   with ``D2 = alpha2 dev2 @ |W2|^T`` and ``P2 = alpha2 |q2| @ |W2|^T``.
f. Routing.  As :mod:`harness.grouped.reference`: each term ``fl32(w_j y_j)`` and the fp32 sum of
   ``top_k`` terms give ``E = sum_j |w_j| (B2_j (1+u) + u |Y_j|) + gamma_{top_k-1} (1+u) sum_j
   |w_j| (|Y_j| + B2_j)``, and the cast to the output dtype ``u_out (|ref| + E) + eta_out``.

Weight-only backends (``activation_quant = False``, W4A16: Marlin's FP4 MoE).  Nothing is
quantized but the weights: step 1 is ``q1 = x`` (the hidden states as given, ``D1 = 0``), steps 2
and 5 use the weight decode scales ``1 / global scale`` instead of ``alpha1`` / ``alpha2``
(:func:`harness.grouped.moe.weight_decode_scales`), and step 4 is the identity: FC2 reads the
backend's own rounded intermediate ``x'``, so ``dev2 = delta`` of step c, and ``P2`` is taken over
``|X| + delta``.

Routed combine, in general (step f with the backend's ``fc2_out``, ``weight_dtype`` and
``term_out``, unit roundoffs ``u_y``, ``u_w``, ``u_t`` and subnormal spacings ``eta_*``; fp32
values are not re-rounded, fp32 products round with ``u``): ``y' = fl_y(y)`` is within
``B2' = B2 + u_y (|Y| + B2) + eta_y`` of ``Y``; ``w' = fl_w(w)`` within ``u_w |w| + eta_w``; the
term ``fl_t(w' y')`` within ``|w'| B2' + |w' - w| |Y| + u_t |w' y'| + eta_t`` of ``w Y``.  The
fp32 sum of ``top_k`` terms adds ``gamma_{top_k-1}`` times the sum of the terms' magnitudes.  With
every dtype fp32 this is the bound of :mod:`harness.grouped.reference`.

The fp64 evaluation of the reference and of the bound is covered by the final factor
``1 + 2^-30``.  No false alarm: ``tests/test_moe.py`` runs the emulation backend on many drawn
problems (every distribution, dynamic and static scales, 16 <= I <= 192) and requires every
element within the bound, and requires the bound to stay below the output's own bf16 scale on
typical data (it is not vacuous).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.format import e2m1_decode, e2m1_encode, e4m3_decode, e4m3_encode, reference_dequantize, reference_quantize
from harness.grouped.moe import MoeOperands, silu64, weight_decode_scales
from harness.oracle import _OUT, Precision, Reference, error_bound, reference_from_dequantized

U = 2.0 ** -23
SLACK = 2.0 ** -20
"""Relative error allowed for a backend's fp32 block-scale and element-multiplier arithmetic."""
SILU_LIPSCHITZ = 1.1
_FP64_REL = 2.0 ** -45
_SAFETY = 1.0 + 2.0 ** -30


def quantization_deviation(x: torch.Tensor, delta: torch.Tensor | float, gs: torch.Tensor | float,
                           slack: float = SLACK) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, dev), fp64 [rows, K]: ``q`` = code * fp32(sf) of the reference quantization of ``fl32(x)``
    with encode divisor ``gs``; ``dev`` bounds ``|q' - q|`` for a quantizer fed any ``x'`` with
    ``|x' - x| <= delta`` that computes ``sf = e4m3(gs * amax' / 6)`` and ``t = x' * gs / sf`` in fp32
    with relative errors below ``slack``, then rounds ``t`` to e2m1 (nearest, saturating at 6).

    Both roundings are monotone, so for each block scale the backend can reach (every e4m3 byte
    between those of the lowest and highest possible ``gs * amax' / 6``) the extreme codes come
    from the ends of the interval of ``t``; ``dev`` is the largest distance of those from ``q``.
    """
    x = x.double()
    rows, k = x.shape
    d = torch.as_tensor(delta, dtype=torch.float64, device=x.device).expand_as(x)
    g = float(torch.as_tensor(gs, dtype=torch.float32))
    codes, sf = reference_quantize(x.float(), torch.tensor(g, dtype=torch.float32, device=x.device))
    q = reference_dequantize(codes, sf)
    xb = x.reshape(rows, k // 16, 16)
    db = d.reshape(rows, k // 16, 16)
    amax = xb.abs().amax(-1)
    dmax = db.amax(-1)
    v_lo = (amax - dmax).clamp_min(0) * g / 6 * (1 - slack)
    v_hi = (amax + dmax) * g / 6 * (1 + slack)
    b_lo = e4m3_encode(v_lo.float()).long()
    b_hi = e4m3_encode(v_hi.float()).long()
    span = int((b_hi - b_lo).max()) if b_lo.numel() else 0
    qb = q.reshape(rows, k // 16, 16)
    dev = torch.zeros_like(qb)
    for c in range(span + 1):
        byte = torch.minimum(b_lo + c, b_hi)
        s = e4m3_decode(byte.to(torch.uint8)).double()
        inv = torch.where(s > 0, g / s.clamp_min(1e-300), torch.zeros_like(s)).unsqueeze(-1)
        t_lo = (xb - db) * inv
        t_hi = (xb + db) * inv
        t_lo = t_lo - slack * t_lo.abs()
        t_hi = t_hi + slack * t_hi.abs()
        sv = s.unsqueeze(-1)
        q_lo = e2m1_decode(e2m1_encode(t_lo.float())).double() * sv
        q_hi = e2m1_decode(e2m1_encode(t_hi.float())).double() * sv
        dev = torch.maximum(dev, torch.maximum((q_lo - qb).abs(), (q_hi - qb).abs()))
    return q, dev.reshape(rows, k)


@dataclass
class ExpertReference:
    """The exact quantities of one expert's section (rows in token order)."""
    tokens: torch.Tensor        # int64 [rows]: the token of each row
    slots: list[int]            # the top-k slot of each row
    fc1: Reference              # alpha1 * q1 @ W13^T, fp64 [rows, 2I] (value and abs_sum)
    fc1_dev: torch.Tensor       # D1, fp64 [rows, 2I] (step a)
    x: torch.Tensor             # the exact intermediate, fp64 [rows, I]
    q2: torch.Tensor            # Q(X): code * sf, fp64 [rows, I]
    fc2: Reference              # alpha2 * q2 @ W2^T, fp64 [rows, hidden]


@dataclass
class MoeReference:
    """value: fp64 [tokens, hidden], the exact routed sum; per_expert: None for a zero-token expert."""
    value: torch.Tensor
    per_expert: list[ExpertReference | None]


def reference_moe(ops: MoeOperands, activation_quant: bool = True) -> MoeReference:
    """The exact reference of ``ops`` (hidden states, routing and the real region of both weights;
    never a padding byte).  ``activation_quant=False``: the weight-only (W4A16) layer of the module
    docstring (no activation quantized, weight decode scales instead of alphas)."""
    p = ops.problem
    i = p.intermediate
    dev = ops.hidden.device
    value = torch.zeros((p.tokens, p.hidden), dtype=torch.float64, device=dev)
    per: list[ExpertReference | None] = []
    if activation_quant:
        alpha1, alpha2 = ops.alpha1, ops.alpha2
    else:
        alpha1, alpha2 = weight_decode_scales(ops.w13).to(dev), weight_decode_scales(ops.w2).to(dev)
    for e, sec in enumerate(p.sections()):
        if not sec:
            per.append(None)
            continue
        rows = torch.tensor([t for t, _ in sec], device=dev)
        w13 = ops.w13.expert(e).dequantize()
        w2 = ops.w2.expert(e).dequantize()
        if activation_quant:
            q1, dev1 = quantization_deviation(ops.hidden[rows].double(), 0.0, ops.fc1_input_scales[e])
            fc1 = reference_from_dequantized(q1, w13, alpha1[e], k=p.hidden)
            d1 = (dev1 @ w13.double().abs().T) * float(alpha1[e])
        else:
            bits = {torch.bfloat16: 8, torch.float16: 11}.get(ops.hidden.dtype, 24)
            fc1 = reference_from_dequantized(ops.hidden[rows].float(), w13, alpha1[e], k=p.hidden, a_bits=bits)
            d1 = torch.zeros_like(fc1.value)
        x = silu64(fc1.value[:, :i]) * fc1.value[:, i:2 * i]
        if activation_quant:
            codes, sf = reference_quantize(x.float(), ops.fc2_input_scales[e])
            q2 = reference_dequantize(codes, sf)
        else:
            q2 = x
        fc2 = reference_from_dequantized(q2, w2, alpha2[e], k=p.intermediate)
        wts = torch.tensor([p.topk_weights[t][j] for t, j in sec], dtype=torch.float64, device=dev)
        value.index_add_(0, rows, wts[:, None] * fc2.value)
        per.append(ExpertReference(rows, [j for _, j in sec], fc1, d1, x, q2, fc2))
    return MoeReference(value, per)


def _gemm_bound(value_mag: torch.Tensor, abs_sum: torch.Tensor, dev: torch.Tensor, k: int, precision: Precision,
                out: torch.dtype) -> torch.Tensor:
    """Steps b and e: the oracle's GEMM bound over operands within ``dev`` of the reference's."""
    return error_bound(Reference(value_mag + dev, abs_sum + dev, k), precision, out) + dev


def intermediate_deviation(r: ExpertReference, ops: MoeOperands, backend) -> torch.Tensor:
    """``delta`` of step c: fp64 [rows, I], a bound on ``|x' - X|`` for ``backend``."""
    i = ops.problem.intermediate
    prec = backend.requirements.precision
    b1 = _gemm_bound(r.fc1.value.abs(), r.fc1.abs_sum, r.fc1_dev, r.fc1.k, prec, backend.fc1_out)
    g, u = r.fc1.value[:, :i], r.fc1.value[:, i:2 * i]
    bg, bu = b1[:, :i], b1[:, i:2 * i]
    sg = silu64(g).abs()
    c0, c1 = backend.activation_error
    rho = c0 + c1 * (g.abs() + bg)
    pre = SILU_LIPSCHITZ * bg * (u.abs() + bu) + sg * bu
    pre = pre + rho * (sg + SILU_LIPSCHITZ * bg) * (u.abs() + bu)
    u_act, eta_act, _ = _OUT[backend.act_out]
    return pre + u_act * (r.x.abs() + pre) + eta_act + _FP64_REL * r.x.abs()


def _rounding(dtype: torch.dtype, fp32_u: float) -> tuple[float, float]:
    """(unit roundoff, half the smallest subnormal spacing) of rounding a product or value to ``dtype``;
    for fp32 ``fp32_u`` (0 where the value is already fp32 and is not re-rounded)."""
    if dtype == torch.float32:
        return fp32_u, (_OUT[torch.float32][1] if fp32_u else 0.0)
    u, eta, _ = _OUT[dtype]
    # a product formed in fp32 and then rounded to the narrower dtype: two roundings
    return u + U + u * U, eta


def moe_error_bound(ops: MoeOperands, ref: MoeReference, backend) -> torch.Tensor:
    """Per-element bound [tokens, hidden] on ``|out - ref.value|`` for ``backend`` (a
    :class:`~harness.grouped.protocol.MoeBackend`; derivation in the module docstring)."""
    p = ops.problem
    u_out, eta, _ = _OUT[ops.out_dtype]
    top_k = p.top_k
    gamma = (top_k - 1) * U / (1 - (top_k - 1) * U)
    lin = torch.zeros_like(ref.value)
    mag = torch.zeros_like(ref.value)
    prec = backend.requirements.precision
    w4a4 = getattr(backend, "activation_quant", True)
    alpha2 = ops.alpha2 if w4a4 else weight_decode_scales(ops.w2)
    u_y, eta_y = _rounding(getattr(backend, "fc2_out", torch.float32), 0.0)
    u_w, eta_w = _rounding(getattr(backend, "weight_dtype", torch.float32), 0.0)
    u_t, eta_t = _rounding(getattr(backend, "term_out", torch.float32), U)
    for e, r in enumerate(ref.per_expert):
        if r is None:
            continue
        delta = intermediate_deviation(r, ops, backend)
        if w4a4:
            _, dev2 = quantization_deviation(r.x, delta, ops.fc2_input_scales[e])
            abs_sum = r.fc2.abs_sum
        else:
            dev2 = delta
            abs_sum = None
        w2 = ops.w2.expert(e).dequantize().double().abs()
        d2 = (dev2 @ w2.T) * float(alpha2[e])
        if abs_sum is None:  # sum |x_k w_k| over |X| (fp64; the fp32 one of the oracle rounds |X|)
            abs_sum = (r.x.abs() @ w2.T) * float(alpha2[e])
        b2 = _gemm_bound(r.fc2.value.abs(), abs_sum, d2, r.fc2.k, prec, torch.float32)
        wts = torch.tensor([abs(p.topk_weights[int(t)][j]) for t, j in zip(r.tokens.tolist(), r.slots)],
                           dtype=torch.float64, device=ref.value.device)[:, None]
        y = r.fc2.value.abs()
        b2y = b2 + u_y * (y + b2) + eta_y                 # y' = fl_y(y) against Y
        w_hi = wts * (1 + u_w) + eta_w                    # |w'|
        term = w_hi * (y + b2y)                           # |w' y'|
        lin.index_add_(0, r.tokens, w_hi * b2y + (u_w * wts + eta_w) * y + u_t * term + eta_t)
        mag.index_add_(0, r.tokens, term * (1 + u_t) + eta_t)
    e_total = lin + gamma * (1 + U) * mag
    return (e_total + u_out * (ref.value.abs() + e_total) + eta) * _SAFETY
