"""The property suite's strategies: they reach the boundaries, respect their caps, and shrink to
readable minimal cases (checked with ``hypothesis.find``, which returns the shrunk example)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from harness.data import DISTRIBUTIONS
from harness.problem import CLEAN, GemmProblem, Poison
from harness.strategies import (NAMED_POISON_BYTES, SMALL_M, TILE_BOUNDARY_M, catalog_block_counts,
                                distributions, divisors, gemm_cases, gemm_problems, kn_values,
                                linear_problems, m_values, poisons, tp_entries, tp_problems)

FIND = settings(database=None, derandomize=True, max_examples=2000, deadline=None,
                phases=[Phase.generate, Phase.shrink])
"""Deterministic search for ``find``: the same minimal example on every run."""


def draw_many(strategy: SearchStrategy[Any], n: int = 400) -> list[Any]:
    """Up to ``n`` examples of ``strategy`` from a derandomized (reproducible) generation run."""
    out: list[Any] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(strategy)
    def collect(x: Any) -> None:
        out.append(x)

    collect()
    assert out, "the strategy produced no example"
    return out


def minimal(strategy: SearchStrategy[Any], predicate: Callable[[Any], bool] = lambda _: True) -> Any:
    return find(strategy, predicate, settings=FIND)


# ---------------------------------------------------------------------------------------------- m


def test_m_values_reach_layout_boundaries():
    ms = draw_many(m_values(), 300)
    assert all(1 <= m <= 4096 for m in ms)
    assert {1, 8, 9, 16, 32, 33, 64, 65, 127, 128, 129, 256, 1024, 1025} <= set(ms)
    assert any(m not in SMALL_M and m not in TILE_BOUNDARY_M for m in ms), "no m off the boundaries"


def test_m_values_respect_the_cap():
    ms = draw_many(m_values(max_m=40), 150)
    assert all(1 <= m <= 40 for m in ms)
    assert {1, 32, 33} <= set(ms)
    with pytest.raises(ValueError, match="max_m"):
        m_values(max_m=0)


def test_m_values_shrink_to_one_and_to_the_nearest_boundary():
    assert minimal(m_values()) == 1
    assert minimal(m_values(), lambda m: m > 64) == 65
    assert minimal(m_values(), lambda m: m > 128) == 129


# ---------------------------------------------------------------------------------------------- n, k


def test_kn_values_are_block_multiples_with_awkward_block_counts():
    values = draw_many(kn_values(12), 150)
    assert all(v % 16 == 0 and 16 <= v <= 16 * 12 for v in values)
    blocks = {v // 16 for v in values}
    assert blocks & {1, 3, 5, 7, 9, 11}, "no odd block count"
    assert blocks & {2, 6, 10}, "no block count = 2 mod 4"
    assert blocks & {4, 12}, "no block count = 4 mod 8"
    assert 8 in blocks, "no aligned block count"


def test_kn_values_include_real_tp_block_counts():
    # 96/16 = 6 (Qwen3 TP8), 176/16 = 11 (GLM MoE TP8), 336/16 = 21 (Super TP8), 464/16 = 29 (Nano TP4),
    # 720/16 = 45 (gpt-oss TP4)
    assert {6, 11, 21, 29, 45} <= set(catalog_block_counts(64))
    assert 464 in draw_many(kn_values(64), 300)


def test_kn_values_shrink_to_one_block():
    assert minimal(kn_values(12)) == 16
    assert minimal(kn_values(12), lambda v: v % 64 != 0 and v > 16) == 48


# ---------------------------------------------------------------------------------------------- poison


def test_poison_shrinks_to_one_region_holding_nan():
    assert minimal(poisons()) == Poison(m_pad=0x7F)
    assert minimal(poisons(), lambda p: p.m_pad != 0) == Poison(m_pad=0x7F)
    assert minimal(poisons(), lambda p: p.data != 0) == Poison(data=0x7F)
    assert minimal(poisons(), lambda p: p.n_pad != 0 and p.k_tail != 0) == Poison(n_pad=0x7F, k_tail=0x7F)


def test_poison_shrinks_to_the_simplest_byte_the_failure_needs():
    finite = minimal(poisons(), lambda p: p.k_tail not in (0x00, 0x7F, 0xFF))
    assert finite == Poison(k_tail=0x7E)  # 448, the next named byte after the NaNs


def test_poisons_draw_nan_max_small_random_and_zero():
    drawn = draw_many(poisons(), 250)
    assert all(1 <= len(p.regions()) for p in drawn)
    assert any(len(p.regions()) == 1 for p in drawn) and any(len(p.regions()) >= 3 for p in drawn)
    values = [getattr(p, r) for p in drawn for r in ("m_pad", "n_pad", "k_tail", "data")]
    assert {0x00, 0x7F, 0xFF, 0x7E} <= set(values)
    assert set(values) & {0x38, 0x08, 0x01}, "no small finite byte"
    assert set(values) - set(NAMED_POISON_BYTES) - {0}, "no random byte"
    for region in ("m_pad", "n_pad", "k_tail", "data"):
        assert any(getattr(p, region) for p in drawn), f"{region} never poisoned"
    assert not any(p.stale_memory for p in drawn)


def test_poisons_can_be_forced_or_restricted():
    assert all(p.regions() == ["k_tail"] for p in draw_many(poisons(regions={"k_tail"}), 30))
    assert all(p.regions() == ["m_pad", "data"] for p in draw_many(poisons(regions=["data", "m_pad"]), 30))
    assert all(p.regions() == ["n_pad"] for p in draw_many(poisons(allowed=("n_pad",)), 30))
    assert all(set(p.regions()) <= {"m_pad", "n_pad"} and len(p.regions()) == 1
               for p in draw_many(poisons(allowed=("m_pad", "n_pad"), max_regions=1), 30))
    assert all(p.m_pad == 0x7E for p in draw_many(poisons(regions={"m_pad"}, fill=st.just(0x7E)), 20))
    with pytest.raises(ValueError, match="unknown regions"):
        poisons(regions={"q_pad"})
    with pytest.raises(ValueError, match="unknown regions"):
        poisons(allowed=("m_pad", "bias"))


def test_poisons_clean_and_stale_memory_options():
    assert minimal(poisons(min_regions=0)) == CLEAN
    assert any(p.clean for p in draw_many(poisons(min_regions=0), 100))
    stale = draw_many(poisons(stale_memory=None), 60)
    assert {p.stale_memory for p in stale} == {True, False}
    assert minimal(poisons(stale_memory=None), lambda p: p.stale_memory) == Poison(m_pad=0x7F, stale_memory=True)


# ---------------------------------------------------------------------------------------------- data kinds


def test_distributions_cover_all_and_shrink_to_normal():
    assert set(draw_many(distributions(), 100)) == set(DISTRIBUTIONS)
    assert minimal(distributions()) == "normal"
    assert minimal(distributions(["tiny", "normal"])) == "normal"
    with pytest.raises(ValueError):
        distributions(["gaussian"])


# ---------------------------------------------------------------------------------------------- problems


def test_gemm_problem_shrinks_to_the_smallest_problem():
    assert minimal(gemm_problems(), lambda p: p.m >= 1) == GemmProblem(m=1, n=16, k=16)
    assert minimal(gemm_problems(max_m=40, max_nk_blocks=12), lambda p: p.k > 16 and p.n > 16) == \
        GemmProblem(m=1, n=48, k=48)  # 3 blocks: the first awkward (odd) count past one block


def test_gemm_problems_respect_caps_and_options():
    drawn = draw_many(gemm_problems(max_m=40, max_nk_blocks=12, out_dtypes=("float16",), max_seed=3), 150)
    assert all(p.m <= 40 and p.n <= 192 and p.k <= 192 and p.n % 16 == 0 for p in drawn)
    assert all(p.out_dtype == "float16" and p.origin is None and p.batch is None and 0 <= p.seed <= 3
               for p in drawn)
    assert {p.out_dtype for p in draw_many(gemm_problems(max_m=40, max_nk_blocks=12), 40)} == \
        {"bfloat16", "float16"}
    ragged = draw_many(gemm_problems(max_m=40, max_nk_blocks=12, ragged_n=True), 100)
    assert any(p.n % 16 for p in ragged) and all(p.k % 16 == 0 for p in ragged)


def test_tp_problems_carry_real_per_rank_shapes_and_origins():
    entries = tp_entries(max_unsplit_dim=512)
    shapes = {origin: (n, k) for _, _, n, k, origin in entries}
    drawn = draw_many(tp_problems(max_m=40, max_unsplit_dim=512), 100)
    for p in drawn:
        assert (p.n, p.k) == shapes[p.origin] and p.m <= 40
        assert " / TP" in p.origin and ("(row)" in p.origin or "(column)" in p.origin)
    # shards that raise ShardError (per-rank K not a multiple of 16) are never drawn
    assert not any(o.startswith("Nemotron-3-Nano-30B-A3B moe down 1856 / TP8") for o in shapes)
    nano_tp4 = minimal(tp_problems(max_unsplit_dim=512), lambda p: p.k == 464)
    assert nano_tp4 == GemmProblem(m=1, n=512, k=464,
                                   origin="Nemotron-3-Nano-30B-A3B moe down 1856 / TP4 (row) [n 2688 cut to 512]")


def test_tp_entries_keep_exact_shapes_without_caps():
    exact = {(origin, n, k) for _, _, n, k, origin in tp_entries()}
    assert ("Nemotron-3-Nano-30B-A3B moe down 1856 / TP4 (row)", 2688, 464) in exact
    assert ("Nemotron-3-Nano-30B-A3B moe up 1856 / TP8 (column)", 232, 2688) in exact
    small = tp_entries(max_unsplit_dim=256, max_weight_elements=256 * 512)
    assert small and all(n * k <= 256 * 512 for _, _, n, k, _ in small)
    assert [n * k for _, _, n, k, _ in small] == sorted(n * k for _, _, n, k, _ in small)
    with pytest.raises(ValueError, match="no catalog shard fits"):
        tp_problems(max_weight_elements=1)


def test_linear_problems_sometimes_have_batch_and_sequence_dims():
    drawn = draw_many(linear_problems(max_m=40, max_nk_blocks=12), 150)
    assert any(p.batch is None for p in drawn)
    three_d = [p for p in drawn if p.batch is not None]
    assert three_d and all(len(p.batch) == 2 and p.batch[0] * p.batch[1] == p.m for p in three_d)
    assert any(p.batch[0] > 1 and p.batch[1] > 1 for p in three_d)
    assert minimal(linear_problems(), lambda p: p.batch is not None) == GemmProblem(m=1, n=16, k=16, batch=(1, 1))
    assert minimal(linear_problems(), lambda p: p.batch is not None and p.batch[0] > 1) == \
        GemmProblem(m=2, n=16, k=16, batch=(2, 1))
    from_catalog = draw_many(linear_problems(from_catalog=True, max_m=64, max_unsplit_dim=256), 30)
    assert all(p.origin for p in from_catalog)


def test_gemm_cases_shrink_to_clean_then_to_one_poisoned_region():
    assert minimal(gemm_cases()) == (GemmProblem(m=1, n=16, k=16), CLEAN)
    assert minimal(gemm_cases(max_m=40, max_nk_blocks=12), lambda c: c[1].n_pad != 0) == \
        (GemmProblem(m=1, n=16, k=16), Poison(n_pad=0x7F))
    cases = draw_many(gemm_cases(tp_problems(max_m=40, max_unsplit_dim=256), poisons()), 30)
    assert all(isinstance(p, GemmProblem) and p.origin and not z.clean for p, z in cases)
    with pytest.raises(ValueError, match="either"):
        gemm_cases(gemm_problems(), max_m=4)


def test_divisors():
    assert divisors(1) == [1]
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(97) == [1, 97]
