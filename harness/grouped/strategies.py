"""Hypothesis strategies for grouped trials; every one shrinks to one expert and one token.

Split sections are drawn as per-expert token counts (zero-token experts first, in the middle and
last come from counts of 0 at any position; uneven counts; 128-aligned counts on a GPU), turned
into top-k routing by :meth:`GroupedProblem.from_splits`.  ``n`` comes from a list that holds
N % 128 == 64 shapes (TRT-LLM #10331: 64, 192) and N not a multiple of 128, because that is where
the grouped bugs live.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from harness.grouped.problem import GroupedPoison, GroupedProblem, GroupedTrial, ROW_ALIGNS
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


def grouped_trials(backend_name: str, prop: str, sz: GroupedSizes):
    """Trials of ``prop`` for the grouped backend ``backend_name``."""
    if prop == "zero_token_groups":
        return st.builds(lambda p: GroupedTrial(backend_name, prop, p), grouped_problems(sz, need_zero=True))
    if prop == "token_isolation":
        @st.composite
        def iso(draw):
            p = draw(grouped_problems(sz))
            byte = draw(st.sampled_from([POISON_BYTES[k] for k in ("nan", "max", "small", "zero")]))
            poison = GroupedPoison(group_row_pad=draw(st.sampled_from((0, 0x7F, 0x7E))), n_pad=draw(st.sampled_from((0, 0x7F))),
                                   victim=draw(st.integers(0, p.experts - 1)), victim_byte=byte)
            return GroupedTrial(backend_name, prop, p, poison)
        return iso()
    return st.builds(lambda p: GroupedTrial(backend_name, prop, p), grouped_problems(sz))
