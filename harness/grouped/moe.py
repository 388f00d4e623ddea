"""Fused-MoE operands: FC1 and FC2 expert weights, their input global scales, the SwiGLU convention.

A fused-MoE backend (:class:`~harness.grouped.protocol.MoeBackend`) receives
:class:`MoeOperands` built by :func:`build_moe_operands` from a
:class:`~harness.grouped.problem.MoeProblem`:

* the hidden states ``[tokens, hidden]`` (a fused kernel quantizes them itself) and the
  pipeline's grouped FC1 input buffer (:func:`harness.grouped.pipeline.grouped_quantize`, for
  backends that take quantized activations);
* ``w13``: every expert's FC1 weight ``[2I, hidden]`` in the harness's gate-then-up order (rows
  ``[0, I)`` gate, ``[I, 2I)`` up), one weight global scale per expert; ``w2``: every expert's FC2
  weight ``[hidden, I]`` with its own global scales (:func:`harness.grouped.pipeline.quantize_experts`);
* ``fc1_input_scales`` / ``fc2_input_scales``: fp32 [E] encode divisors; ``alpha1`` / ``alpha2``
  ``= 1 / (input scale * weight scale)`` per expert.

The FC2 input scales are static, as ModelOpt checkpoints store them: each expert's is
:func:`harness.format.global_scale_encode_divisor` of the amax of the *exact* intermediate of its
tokens (:func:`exact_intermediate`: fp64 FC1 over the reference-quantized hidden states, then
SwiGLU), times :meth:`MoeProblem.fc2_scale_factors` (0.5 .. 1.25: a factor below 1 makes live
values exceed the calibration, so block scales saturate at 448, as a stale calibration does).

SwiGLU: ``act = silu(gate) * up`` with ``silu(x) = x * sigmoid(x)`` (vLLM's ``SiluAndMul`` on the
``[gate | up]`` halves).  FlashInfer's kernels expect the halves the other way round
(``[up | gate]``: its CUTLASS and TRT-LLM-gen references take ``w3`` first and apply silu to the
second half); their adapters reorder, as vLLM's ``reorder_w1w3_to_w3w1`` does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch

from harness.format import gemm_alpha, global_scale_encode_divisor, reference_dequantize, reference_quantize
from harness.grouped.pipeline import (ExpertWeights, GroupedOperands, GroupedTensor, N_ALIGN, grouped_quantize,
                                      input_global_scales, quantize_experts, sort_by_expert)
from harness.grouped.problem import GroupedPoison, MoeProblem
from harness.layouts import ScaleLayout, round_up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` in the dtype of the inputs (the activation of every fused-MoE backend here)."""
    return torch.nn.functional.silu(gate) * up


def silu64(x: torch.Tensor) -> torch.Tensor:
    """fp64 ``x * sigmoid(x)`` (the reference's activation; relative error below 2^-50)."""
    x = x.double()
    return x * torch.sigmoid(x)


@dataclass
class MoeOperands:
    """What a fused-MoE backend receives (see the module docstring).

    hidden: [tokens, hidden] in the problem's in_dtype; order / slot: int64 [sum(splits)], the token
    and top-k slot of each row of the expert-sorted sections; topk_ids int32 / topk_weights fp32
    [tokens, top_k]; a1: the grouped FC1 input buffer (quantized with ``fc1_input_scales``);
    w13 / w2: the experts' weights; fc1_input_scales, fc2_input_scales, alpha1, alpha2: fp32 [E].
    """
    problem: MoeProblem
    poison: GroupedPoison
    hidden: torch.Tensor
    order: torch.Tensor
    slot: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    a1: GroupedTensor
    w13: ExpertWeights
    w2: ExpertWeights
    fc1_input_scales: torch.Tensor
    fc2_input_scales: torch.Tensor
    alpha1: torch.Tensor
    alpha2: torch.Tensor
    out_dtype: torch.dtype

    @property
    def tokens(self) -> int:
        return self.problem.tokens

    @property
    def intermediate(self) -> int:
        return self.problem.intermediate

    def fc1_ops(self) -> GroupedOperands:
        """FC1 as grouped operands (the grouped GEMM of the sorted sections times W13, alpha1)."""
        p = self.problem
        return GroupedOperands(p.fc1(), self.poison, self.hidden, self.a1, self.order, self.slot, self.topk_ids,
                               self.topk_weights, self.fc1_input_scales, self.w13, self.alpha1, self.out_dtype)

    def fc2_ops(self, a2: GroupedTensor) -> GroupedOperands:
        """FC2 as grouped operands over the quantized intermediate ``a2`` (its sections in the same
        expert-sorted row order).  ``hidden`` is a zero placeholder [tokens, I]: a grouped backend
        that takes the grouped buffer never reads it."""
        p = self.problem
        placeholder = torch.zeros((p.tokens, p.intermediate), dtype=self.hidden.dtype, device=self.hidden.device)
        return GroupedOperands(p.fc2(), self.poison, placeholder, a2, self.order, self.slot, self.topk_ids,
                               self.topk_weights, self.fc2_input_scales, self.w2, self.alpha2, self.out_dtype)

    def digest(self) -> str:
        """sha256 of every byte a backend receives (padding included)."""
        h = hashlib.sha256()
        for t in (self.hidden, self.a1.packed, self.a1.scales, self.topk_ids, self.topk_weights, self.w13.packed,
                  self.w13.scales, self.w13.global_scales, self.w2.packed, self.w2.scales, self.w2.global_scales,
                  self.fc1_input_scales, self.fc2_input_scales, self.alpha1, self.alpha2):
            h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def with_(self, **kw) -> "MoeOperands":
        return replace(self, **kw)


def weight_decode_scales(w: ExpertWeights) -> torch.Tensor:
    """fp32 [E]: each expert's weight decode multiplier ``1 / global scale`` (the checkpoint's
    ``weight_scale_2``, :func:`harness.format.decode_multiplier_to_encode_divisor` inverted): the
    only global scale of a weight-only (W4A16) kernel, which quantizes no activation.  A W4A16
    reference and its backend use this same fp32 value."""
    return (1.0 / w.global_scales.to(torch.float32)).to(torch.float32).reshape(-1)


def fc1_input_global_scales(problem: MoeProblem, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 [E] FC1 input encode divisors: per expert as :func:`input_global_scales` gives them, or
    (``shared``) the smallest of them over the experts with tokens, for every expert: vLLM's
    FlashInfer paths take ``1 / max(w13_input_scale)`` because the hidden states are quantized once
    ("min because inv_scale", ``flashinfer_cutlass_moe.py``)."""
    gs = input_global_scales(problem.fc1(), hidden)
    if problem.fc1_input_scale == "shared":
        live = [e for e, c in enumerate(problem.splits) if c]
        gs = gs[live].min().reshape(1).expand(problem.experts).clone()
    return gs


def exact_intermediate(problem: MoeProblem, hidden: torch.Tensor, fc1_input_scales: torch.Tensor,
                       w13: ExpertWeights, alpha1: torch.Tensor) -> list[torch.Tensor | None]:
    """Per expert, fp64 [section rows, I]: SwiGLU of the exact FC1 of its tokens (hidden states
    quantized by the reference quantizer with the expert's FC1 input scale; the real region of W13);
    None for a zero-token expert.  Exact up to the fp64 sum and activation (relative < 2^-45)."""
    out: list[torch.Tensor | None] = []
    i = problem.intermediate
    for e, sec in enumerate(problem.sections()):
        if not sec:
            out.append(None)
            continue
        rows = torch.tensor([t for t, _ in sec], device=hidden.device)
        codes, sf = reference_quantize(hidden[rows], fc1_input_scales[e])
        a = reference_dequantize(codes, sf)
        h = (a @ w13.expert(e).dequantize().double().T) * alpha1[e].double()
        out.append(silu64(h[:, :i]) * h[:, i:2 * i])
    return out


def build_moe_operands(problem: MoeProblem, poison: GroupedPoison = GroupedPoison(), *,
                       device: torch.device | str = "cpu", unwritten_padding: bool = False) -> MoeOperands:
    """Generate the problem's data and build every operand a fused-MoE backend receives, with the
    poison bytes in the padding regions of the FC1 input buffer (group row padding, K tail, data)
    and of both weights (N padding, K tail, data).  ``unwritten_padding``: the scale padding no
    backend may read is left unwritten, in the FC1 input buffer and both weights
    (:func:`harness.grouped.pipeline.grouped_quantize`, :func:`~harness.grouped.pipeline.quantize_experts`)."""
    hidden = problem.hidden_states(device)
    tokens, slots = sort_by_expert(problem.fc1())
    order = torch.tensor(tokens, dtype=torch.int64, device=device)
    slot = torch.tensor(slots, dtype=torch.int64, device=device)
    fc1_gs = fc1_input_global_scales(problem, hidden).to(device)
    a1 = grouped_quantize(hidden[order], problem.splits, fc1_gs, layout=ScaleLayout.SWIZZLED_128x4,
                          row_align=problem.row_align, k_alloc=problem.hidden, row_fill=poison.group_row_pad,
                          ktail_fill=poison.k_tail, data_fill=poison.data, unwritten_padding=unwritten_padding)
    fill = dict(row_fill=poison.n_pad, ktail_fill=poison.k_tail, data_fill=poison.data,
                unwritten_padding=unwritten_padding)
    w13 = quantize_experts([problem.fc1_weight(e, device) for e in range(problem.experts)], n_align=N_ALIGN,
                           k_alloc=round_up(problem.hidden, 16), **fill)
    w2 = quantize_experts([problem.fc2_weight(e, device) for e in range(problem.experts)], n_align=N_ALIGN,
                          k_alloc=round_up(problem.intermediate, 16), **fill)
    alpha1 = gemm_alpha(fc1_gs, w13.global_scales).to(torch.float32).reshape(-1)
    inter = exact_intermediate(problem, hidden, fc1_gs, w13, alpha1)
    amax = torch.tensor([float(x.abs().max()) if x is not None and x.numel() else 0.0 for x in inter],
                        dtype=torch.float64)
    calibrated = (amax * problem.fc2_scale_factors().double()).to(torch.float32)
    fc2_gs = global_scale_encode_divisor(calibrated).to(torch.float32).reshape(-1).to(device)
    alpha2 = gemm_alpha(fc2_gs, w2.global_scales).to(torch.float32).reshape(-1)
    ids, weights = problem.fc1().routing(device)
    return MoeOperands(problem, poison, hidden, order, slot, ids, weights, a1, w13, w2, fc1_gs, fc2_gs, alpha1,
                       alpha2, problem.torch_out_dtype)
