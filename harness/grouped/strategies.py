"""Hypothesis strategies for grouped trials; every one shrinks to one expert and one token.

Split sections are drawn as per-expert token counts (zero-token experts first, in the middle and
last come from counts of 0 at any position; uneven counts; 128-aligned counts on a GPU), turned
into top-k routing by :meth:`GroupedProblem.from_splits`.  ``n`` comes from a list that holds
N % 128 == 64 shapes (TRT-LLM #10331: 64, 192) and N not a multiple of 128, because that is where
the grouped bugs live.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import assume, strategies as st

from harness.grouped.problem import FC1_INPUT_SCALES, GroupedPoison, GroupedProblem, GroupedTrial, MoeProblem, ROW_ALIGNS
from harness.problem import POISON_BYTES


@dataclass(frozen=True)
class GroupedSizes:
    max_experts: int
    max_split: int
    max_kblocks: int
    n_values: tuple[int, ...]
    aligned_splits: bool


CPU_SIZES = GroupedSizes(max_experts=4, max_split=6, max_kblocks=4, n_values=(16, 40, 64, 48, 192), aligned_splits=False)
GPU_SIZES = GroupedSizes(max_experts=8, max_split=300, max_kblocks=32, n_values=(16, 40, 64, 192, 320, 1856, 2880),
                         aligned_splits=True)


@dataclass(frozen=True)
class MoeSizes:
    """Fused-MoE shapes: ``intermediate`` values hold I % 128 == 64 (TRT-LLM #10331: 64, 192, 1856),
    ``hidden`` values one that is not a multiple of 128 (vLLM #35497: 2880 on a GPU)."""
    max_experts: int
    max_split: int
    hidden: tuple[int, ...]
    intermediate: tuple[int, ...]
    aligned_splits: bool


MOE_CPU_SIZES = MoeSizes(max_experts=3, max_split=4, hidden=(16, 32, 48), intermediate=(64, 16, 32, 48),
                         aligned_splits=False)
MOE_GPU_SIZES = MoeSizes(max_experts=8, max_split=200, hidden=(64, 320, 2880), intermediate=(64, 192, 256, 1856),
                         aligned_splits=True)


def moe_sizes_for(device: str) -> MoeSizes:
    return MOE_GPU_SIZES if device == "cuda" else MOE_CPU_SIZES


def sizes_for(device: str) -> GroupedSizes:
    return GPU_SIZES if device == "cuda" else CPU_SIZES


@st.composite
def grouped_problems(draw, sz: GroupedSizes, *, need_zero: bool = False) -> GroupedProblem:
    aligned = sz.aligned_splits and draw(st.booleans())
    # one list entry per expert, its split size and its row padding together: the expert count is the
    # list's length, so shrinking deletes whole experts (a separately drawn count, or a second list of
    # that length, pins the length and keeps experts the bug does not need)
    count = st.sampled_from((0, 128, 256)) if aligned else st.integers(0, sz.max_split)
    per_expert = draw(st.lists(st.tuples(count, st.sampled_from(ROW_ALIGNS)), min_size=1 + need_zero,
                               max_size=sz.max_experts))
    counts = [c for c, _ in per_expert]
    row_align = tuple(a for _, a in per_expert)
    experts = len(counts)
    top_k = draw(st.integers(1, min(2, experts - need_zero)))
    if need_zero and 0 not in counts:
        counts[draw(st.integers(0, experts - 1))] = 0
    # make the counts a valid top-k assignment: a positive multiple of top_k, no count above tokens
    unit = 128 if aligned else 1
    if sum(counts) == 0:
        counts[-1] = unit  # with need_zero, counts[0] stays 0 (experts >= 2)
    while sum(counts) % top_k:
        i = max(range(experts), key=lambda e: counts[e])
        counts[i] += unit if unit > 1 else 1
    tokens = sum(counts) // top_k
    if max(counts) > tokens:
        top_k = 1
    return GroupedProblem.from_splits(
        counts, top_k, n=draw(st.sampled_from(sz.n_values)), k=16 * draw(st.integers(1, sz.max_kblocks)),
        seed=draw(st.integers(0, 15)), row_align=row_align,
        input_scales=draw(st.sampled_from(("dynamic", "static"))),
        out_dtype=draw(st.sampled_from(("bfloat16", "float16"))))


@st.composite
def moe_problems(draw, sz: MoeSizes) -> MoeProblem:
    """Fused-MoE problems; shrink to one expert, one token and the first sizes."""
    g = draw(grouped_problems(GroupedSizes(sz.max_experts, sz.max_split, 1, (16,), sz.aligned_splits)))
    return MoeProblem(tokens=g.tokens, experts=g.experts, hidden=draw(st.sampled_from(sz.hidden)),
                      intermediate=draw(st.sampled_from(sz.intermediate)), topk_ids=g.topk_ids,
                      topk_weights=g.topk_weights, row_align=g.row_align, input_scales=g.input_scales,
                      fc1_input_scale=draw(st.sampled_from(FC1_INPUT_SCALES)), out_dtype=g.out_dtype,
                      distribution=draw(st.sampled_from(("normal", "heavy_tailed", "zero_blocks", "on_grid"))),
                      seed=g.seed)


def moe_trials(backend_name: str, prop: str, sz: MoeSizes):
    """Trials of ``prop`` for the fused-MoE backend ``backend_name`` (clean padding for
    ``fused_unfused``; poisoned group row and N padding for ``reference_agreement``)."""
    if prop == "reference_agreement":
        @st.composite
        def poisoned(draw):
            poison = GroupedPoison(group_row_pad=draw(st.sampled_from((0, 0x7F))), n_pad=draw(st.sampled_from((0, 0x7F))),
                                   data=draw(st.sampled_from((0, 0x77))))
            return GroupedTrial(backend_name, prop, draw(moe_problems(sz)), poison)
        return poisoned()
    return st.builds(lambda p: GroupedTrial(backend_name, prop, p), moe_problems(sz))


def trials_for(backend, prop: str, device: str):
    """Trials of ``prop`` for a grouped or fused-MoE backend (its ``kind``) on ``device``'s sizes."""
    if getattr(backend, "kind", "grouped") == "moe":
        return moe_trials(backend.name, prop, moe_sizes_for(device))
    return grouped_trials(backend.name, prop, sizes_for(device))


def grouped_trials(backend_name: str, prop: str, sz: GroupedSizes):
    """Trials of ``prop`` for the grouped backend ``backend_name``."""
    if prop == "zero_token_groups":
        return st.builds(lambda p: GroupedTrial(backend_name, prop, p), grouped_problems(sz, need_zero=True))
    if prop == "token_isolation":
        @st.composite
        def iso(draw):
            p = draw(grouped_problems(sz))
            # the victim is an expert some token is not routed to: that token is the one to watch
            # (a problem where every token reaches every expert has nothing to isolate)
            candidates = [e for e in range(p.experts) if any(e not in ids for ids in p.topk_ids)]
            assume(candidates)
            byte = draw(st.sampled_from([POISON_BYTES[k] for k in ("nan", "max", "small", "zero")]))
            poison = GroupedPoison(group_row_pad=draw(st.sampled_from((0, 0x7F, 0x7E))), n_pad=draw(st.sampled_from((0, 0x7F))),
                                   victim=draw(st.sampled_from(candidates)), victim_byte=byte)
            return GroupedTrial(backend_name, prop, p, poison)
        return iso()
    return st.builds(lambda p: GroupedTrial(backend_name, prop, p), grouped_problems(sz))
