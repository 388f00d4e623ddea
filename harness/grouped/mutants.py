"""Planted-bug grouped backends: each public MoE bug class, planted in a copy of a correct grouped
backend (``parent``), the way :mod:`harness.mutants` plants GEMM bugs: the operands are rewritten
the way the buggy kernel reads them, so a mutant runs wherever its parent runs."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch

from harness.backends.moe_triton import MoeTritonFused
from harness.backends.moe_w4a16 import MoeTorchW4A16
from harness.grouped import registry
from harness.grouped.moe import swiglu
from harness.grouped.pipeline import GroupedOperands
from harness.grouped.protocol import GroupedBackend
from harness.layouts import offset_grid
from harness.mutants import PlantedBug

GEMM_PARENT = "grouped-triton-emu"
FUSED_PARENT = "grouped-triton-emu-fused"


class GroupedMutant(PlantedBug, GroupedBackend):
    """A grouped backend that runs its parent on operands the bug changes."""

    @property
    def base(self) -> GroupedBackend:
        return registry.get(self.parent)

    @property
    def requirements(self):  # type: ignore[override]
        return self.base.requirements

    @property
    def quantizes(self) -> bool:  # type: ignore[override]
        return self.base.quantizes

    def support(self, env):
        return self.base.support(env)

    def tamper(self, ops: GroupedOperands) -> GroupedOperands:
        return ops

    def run(self, ops: GroupedOperands) -> torch.Tensor:
        return self.base.run(self.tamper(ops))

    def quantize(self, ops: GroupedOperands):
        return self.base.quantize(self.tamper(ops))


class ExpertScaleStride(GroupedMutant):
    name = "mutant-grouped-expert-scale-stride"
    parent = GEMM_PARENT
    expected_property = "reference_agreement"
    planted = ("vLLM PR #35497: the per-expert weight scale stride is computed from N instead of N rounded up to the "
               "128-row tile of the 128x4 layout, so when N is not a multiple of 128 (gpt-oss N=2880) expert e >= 1 "
               "reads its scales from a shifted window that starts inside expert e-1's tiles.")
    description = "grouped-triton-emu with the per-expert weight scale stride n_alloc*sf_kb instead of sf_rows*sf_kb"

    def tamper(self, ops):
        w = ops.w
        e_count, sf_rows, sf_kb = w.scales.shape
        if w.n_alloc % 128 == 0:
            return ops
        flat = w.scales.reshape(-1)
        wrong = torch.stack([flat[e * w.n_alloc * sf_kb:e * w.n_alloc * sf_kb + sf_rows * sf_kb]
                             for e in range(e_count)]).reshape(w.scales.shape)
        return replace(ops, w=replace(w, scales=wrong))


class StripedLastTile(GroupedMutant):
    name = "mutant-grouped-n64-stripes"
    parent = GEMM_PARENT
    expected_property = "reference_agreement"
    planted = ("TRT-LLM #10331: FC1 with N % 128 == 64 (intermediate 1856 or 192) gives striped errors. Modelled as "
               "the last, half-full 128-row weight scale tile read with a 64-row interleave (row r at "
               "(r%16)*16 + ((r%64)//16)*4 instead of (r%32)*16 + ((r%128)//32)*4): rows 0-15 of the tile read "
               "their own scales, the stripes of 16 columns after them read other rows' scales.")
    description = "grouped-triton-emu reading the last weight scale tile with a 64-row interleave when N % 128 == 64"

    def tamper(self, ops):
        w = ops.w
        if w.n_alloc % 128 != 64:
            return ops
        e_count, sf_rows, sf_kb = w.scales.shape
        grid = offset_grid("128x4", sf_rows, sf_kb)
        first = w.n_alloc - 64
        r = torch.arange(first, first + 64).unsqueeze(1)
        kb = torch.arange(sf_kb).unsqueeze(0)
        wrong_off = (r // 128) * (sf_kb // 4) * 512 + (kb // 4) * 512 + (r % 16) * 16 + ((r % 64) // 16) * 4 + kb % 4
        right_off = grid[first:first + 64]
        scales = w.scales.clone().reshape(e_count, -1)
        src = w.scales.reshape(e_count, -1)
        scales[:, right_off.reshape(-1)] = src[:, wrong_off.reshape(-1)]
        return replace(ops, w=replace(w, scales=scales.reshape(w.scales.shape)))


class RoutedScaleTwice(GroupedMutant):
    name = "mutant-grouped-routed-scale-twice"
    parent = GEMM_PARENT
    expected_property = "reference_agreement"
    planted = ("The routing (top-k) weight applied twice, in the GEMM epilogue (Marlin's mul_topk_weights) and "
               "again in the combine, so every term is scaled by w^2: the grouped-GEMM form of the 'routed scale "
               "applied twice' class of SGLang PR #31762 (whose fused-MoE form is mutant-moe-routed-scaling-twice).")
    description = "grouped-triton-emu applying each routing weight twice"

    def tamper(self, ops):
        return replace(ops, topk_weights=ops.topk_weights * ops.topk_weights)


class OneStaticInputScale(GroupedMutant):
    name = "mutant-grouped-one-input-scale"
    parent = FUSED_PARENT
    expected_property = "reference_agreement"
    planted = ("TRT-LLM PR #11322: expert 0's (static) input scale is used to quantize every expert's activations, "
               "while each expert's alpha still uses its own input scale: every other expert's output is off by the "
               "ratio of the two scales.")
    description = "grouped-triton-emu-fused quantizing every section with expert 0's input global scale"

    def tamper(self, ops):
        return replace(ops, input_scales=ops.input_scales[:1].expand_as(ops.input_scales).clone())


class UnpaddedScaleOffsets(GroupedMutant):
    name = "mutant-grouped-unpadded-sf-offsets"
    parent = GEMM_PARENT
    expected_property = "token_isolation"
    planted = ("A grouped GEMM that locates each expert's activation scales at its data row offset instead of the "
               "128-row-padded scale offset (the bug class of vLLM PR #35497 on the activation side): with unpadded "
               "sections, expert e >= 1 reads the tail of expert e-1's scale tile, its group row padding included, "
               "so another expert's padding reaches real tokens.")
    description = "grouped-triton-emu reading activation scales at the data row offsets"

    def tamper(self, ops):
        a = ops.a
        if a.row_offsets == a.sf_row_offsets:
            return ops
        flat = a.scales.reshape(-1)
        pieces = []
        for e in range(a.experts):
            size = (a.sf_row_offsets[e + 1] - a.sf_row_offsets[e]) * a.scales.shape[1]
            start = a.row_offsets[e] * a.scales.shape[1]
            piece = flat[start:start + size]
            if piece.numel() < size:  # past the end: the next allocation's bytes (here: NaN)
                piece = torch.cat([piece, torch.full((size - piece.numel(),), 0x7F, dtype=torch.uint8,
                                                     device=flat.device)])
            pieces.append(piece)
        scales = torch.cat(pieces).reshape(a.scales.shape) if pieces else a.scales
        return replace(ops, a=replace(a, scales=scales))


class EmptyExpertLaunched(GroupedMutant):
    name = "mutant-grouped-empty-expert-row"
    parent = GEMM_PARENT
    expected_property = "zero_token_groups"
    planted = ("A grouped kernel that launches a zero-token expert with one row (max(split, 1)): it multiplies the "
               "next section's first row by the empty expert's weight and adds it to that row's token.")
    description = "grouped-triton-emu computing one row for every zero-token expert"

    def run(self, ops):
        from harness.backends.grouped_triton import grouped_gemm
        from harness.grouped.pipeline import GroupedTensor

        out = self.base.run(ops).float()
        a = ops.a
        for e, c in enumerate(a.splits):
            nxt = next((f for f in range(e + 1, a.experts) if a.splits[f]), None)
            if c or nxt is None:
                continue
            one = [0] * a.experts
            one[e] = 1
            g = GroupedTensor(a.packed[a.row_offsets[nxt]:a.row_offsets[nxt] + 1],
                              a.scales[a.sf_row_offsets[nxt]:a.sf_row_offsets[nxt + 1]], a.layout, a.k, tuple(one),
                              tuple([0] * (e + 1) + [1] * (a.experts - e)),
                              tuple([0] * (e + 1) + [a.sf_row_offsets[nxt + 1] - a.sf_row_offsets[nxt]]
                                    * (a.experts - e)), a.global_scales)
            y = grouped_gemm(g, ops)
            t = int(ops.order[sum(a.splits[:nxt])])
            out[t] += y[0, :out.shape[1]]
        return out.to(ops.out_dtype)


# ----------------------------------------------------------------------------------------------
# fused MoE: planted in a copy of moe-triton-emu through the stages it exposes
# ----------------------------------------------------------------------------------------------
MOE_PARENT = "moe-triton-emu"


class MoeMutant(PlantedBug, MoeTritonFused):
    """A fused-MoE backend with one stage of its parent replaced by the bug."""
    parent = MOE_PARENT


class GateUpSwapped(MoeMutant):
    name = "mutant-moe-gate-up-swapped"
    expected_property = "reference_agreement"
    planted = ("The two halves of FC1 read in the wrong order: silu(up) * gate instead of silu(gate) * up. "
               "Checkpoints store w13 as [w1 = gate; w3 = up] (vLLM, ModelOpt) while FlashInfer's CUTLASS and "
               "TRT-LLM-gen MoE kernels expect [w3; w1] (vLLM's reorder_w1w3_to_w3w1): a missing or doubled swap "
               "is this bug.")
    description = "moe-triton-emu applying silu to the up half and multiplying by the gate half"

    def activation(self, h, i):
        return swiglu(h[:, i:2 * i], h[:, :i])


class Fc2OneInputScale(MoeMutant):
    name = "mutant-moe-fc2-one-input-scale"
    expected_property = "reference_agreement"
    planted = ("TRT-LLM PR #11322 at FC2: expert 0's static FC2 input scale quantizes every expert's intermediate, "
               "while each expert's FC2 alpha still uses its own input scale: every other expert's output is off "
               "by the ratio of the two scales (and its block scales saturate where expert 0's scale is larger).")
    description = "moe-triton-emu quantizing every intermediate with expert 0's FC2 input global scale"

    def fc2_input_scale(self, ops, e):
        return ops.fc2_input_scales[0:1]


class Fc1Bf16Undeclared(MoeMutant):
    name = "mutant-moe-bf16-epilogue"
    expected_property = "fused_unfused"
    planted = ("A fused kernel whose FC1 epilogue stores the fp32 accumulator as bf16 and evaluates SwiGLU in bf16 "
               "(as an unfused bf16 silu_and_mul kernel would) while it declares, and its unfused path keeps, fp32: "
               "the two paths round the intermediate differently, and where that moves an element across an e2m1 "
               "rounding boundary the re-quantized intermediate differs by a whole step; the fused path must equal "
               "its unfused grouped stages bit for bit.")
    description = "moe-triton-emu with FC1's result and SwiGLU in bf16 (declared fp32)"

    def fc1_result(self, h):
        return h.to(torch.bfloat16)

    def activation(self, h, i):
        return swiglu(h[:, :i], h[:, i:2 * i]).float()


# ----------------------------------------------------------------------------------------------
# weight-only (W4A16) fused MoE: planted in a copy of moe-torch-w4a16-emu (Marlin's arithmetic)
# ----------------------------------------------------------------------------------------------
W4A16_PARENT = "moe-torch-w4a16-emu"

ROUTED_SCALING_FACTOR = 2.5
"""The ``routed_scaling_factor`` of DeepSeek-V3 and GLM-4.5/5 MoE layers (their ``config.json``)."""


class RoutedScalingTwice(PlantedBug, MoeTorchW4A16):
    name = "mutant-moe-routed-scaling-twice"
    parent = W4A16_PARENT
    expected_property = "reference_agreement"
    planted = ("SGLang PR #31762 (Marlin NVFP4 MoE, seen on H800 with GLM-5.2-NVFP4): the model's "
               "routed_scaling_factor is fused into the top-k weights by the router and applied again by "
               "moe_sum_reduce after the Marlin GEMMs, so the routed output is scaled by it twice. The harness's "
               "routing weights are the router's (scaling included); the planted sum multiplies them by "
               f"{ROUTED_SCALING_FACTOR} (DeepSeek-V3's and GLM's factor) once more.")
    description = "moe-torch-w4a16-emu multiplying the routed sum by the routed scaling factor 2.5 again"

    def routed_sum(self, terms):
        return terms.float().sum(dim=1) * ROUTED_SCALING_FACTOR


def backends() -> list[GroupedBackend]:
    return [ExpertScaleStride(), StripedLastTile(), RoutedScaleTwice(), OneStaticInputScale(),
            UnpaddedScaleOffsets(), EmptyExpertLaunched(), GateUpSwapped(), Fc2OneInputScale(), Fc1Bf16Undeclared(),
            RoutedScalingTwice()]
