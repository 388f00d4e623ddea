r"""The exact reference of a grouped (MoE) GEMM with routing weights, and its sound error bound.

For expert ``e`` with section rows ``A_e`` (the tokens routed to it, quantized by the reference
quantizer :func:`harness.format.reference_quantize` with the expert's input global scale) and
weight ``W_e`` (the real region of the pipeline's buffer, no padding byte read), the per-expert
product ``Y_e = alpha_e * A_e @ W_e^T`` is computed in fp64, where every product
``e2m1 * e4m3 * e2m1 * e4m3`` is exact (:mod:`harness.oracle`).  Token ``t`` gets
``ref[t] = sum_j w_tj * Y_{e_tj}[t]``, also in fp64.

Error bound of a backend that computes each ``Y_e`` with a GEMM of :class:`~harness.oracle.Precision`
``p`` into an intermediate dtype ``mid`` (fp32 or the output dtype), multiplies by the routing
weight and sums the top-k terms in fp32, then casts to the output dtype:

* ``|y_j - Y_j| <= B_j``: :func:`harness.oracle.error_bound` of the per-expert GEMM into ``mid``;
* the weight multiply rounds once: ``p_j = w_j y_j (1 + d)``, ``|d| <= u``;
* the fp32 sum of ``top_k`` terms in any order: ``|s - sum p_j| <= gamma_{top_k - 1} sum |p_j|``
  (Higham eq. 4.4), with ``u = 2^-23`` (covers round-to-nearest and truncating adders);
* hence ``|s - ref| <= E = sum_j |w_j| (B_j (1+u) + u |Y_j|) + gamma (1+u) sum_j |w_j| (|Y_j| + B_j)``;
* the cast to the output dtype adds ``u_out (|ref| + E) + eta_out``.

The bound is evaluated in fp64 and multiplied by ``1 + 2^-30`` for the fp64 rounding of the
reference and of the bound (as :func:`harness.oracle.error_bound` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.format import reference_dequantize, reference_quantize
from harness.grouped.pipeline import GroupedOperands
from harness.oracle import _OUT, Precision, Reference, error_bound, reference_from_dequantized

U = 2.0 ** -23
_SAFETY = 1.0 + 2.0 ** -30


@dataclass
class GroupedReference:
    """value: fp64 [tokens, n], the exact routed sum; per_expert: each expert's fp64 Reference
    over its section rows (None for a zero-token expert)."""
    value: torch.Tensor
    per_expert: list[Reference | None]


def reference_grouped(ops: GroupedOperands) -> GroupedReference:
    """The exact fp64 reference of ``ops`` (reads the hidden activations, the routing and the real
    region of the weight buffers; never a padding byte)."""
    p = ops.problem
    n = p.n
    dev = ops.hidden.device
    value = torch.zeros((p.tokens, n), dtype=torch.float64, device=dev)
    per: list[Reference | None] = []
    for e, sec in enumerate(p.sections()):
        if not sec:
            per.append(None)
            continue
        rows = torch.tensor([t for t, _ in sec], device=dev)
        codes, sf = reference_quantize(ops.hidden[rows], ops.input_scales[e])
        a = reference_dequantize(codes, sf)
        w = ops.w.expert(e).dequantize().double()
        ref = reference_from_dequantized(a, w, ops.alpha[e], k=ops.a.k_alloc)
        per.append(ref)
        wts = torch.tensor([p.topk_weights[t][j] for t, j in sec], dtype=torch.float64, device=dev)
        value.index_add_(0, rows, wts[:, None] * ref.value)
    return GroupedReference(value, per)


def grouped_error_bound(ops: GroupedOperands, ref: GroupedReference, precision: Precision,
                        intermediate: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-element bound [tokens, n] on ``|out - ref.value|`` (derivation in the module docstring)."""
    p = ops.problem
    out_dtype = ops.out_dtype
    u_out, eta, _ = _OUT[out_dtype]
    top_k = p.top_k
    gamma = (top_k - 1) * U / (1 - (top_k - 1) * U)
    dev = ref.value.device
    lin = torch.zeros_like(ref.value)   # sum_j |w_j| (B_j (1+u) + u |Y_j|)
    mag = torch.zeros_like(ref.value)   # sum_j |w_j| (|Y_j| + B_j)
    for e, sec in enumerate(p.sections()):
        r = ref.per_expert[e]
        if r is None:
            continue
        b = error_bound(r, precision, intermediate)
        rows = torch.tensor([t for t, _ in sec], device=dev)
        wts = torch.tensor([abs(p.topk_weights[t][j]) for t, j in sec], dtype=torch.float64, device=dev)[:, None]
        lin.index_add_(0, rows, wts * (b * (1 + U) + U * r.value.abs()))
        mag.index_add_(0, rows, wts * (r.value.abs() + b))
    e_total = lin + gamma * (1 + U) * mag
    return (e_total + u_out * (ref.value.abs() + e_total) + eta) * _SAFETY
