"""Real TP-shard K values and large M: drawn rarely in GPU profiles, never under the CPU interpreter."""

from __future__ import annotations

from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from harness import strategies as hs
from harness import suite
from harness.backends import registry
from harness.format import BLOCK_SIZE

EMU = "triton-emu-128x4"


def test_real_shard_k_values_are_whole_blocks_and_large_m_reaches_16384() -> None:
    assert all(k % BLOCK_SIZE == 0 for k in hs.REAL_SHARD_K) and 3696 in hs.REAL_SHARD_K
    assert 232 in hs.REAL_SHARD_N and max(hs.LARGE_M) == 16384


@settings(max_examples=300, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_cpu_profile_never_draws_a_large_problem(data) -> None:
    b = registry.get(EMU)
    for prop in ("reference_agreement", "row_isolation", "column_isolation", "output_coverage"):
        t = data.draw(suite.trials(b, prop, suite.CPU_SIZES))
        assert t.problem.m <= suite.CPU_SIZES.max_m
        assert t.problem.k != 3696 and t.problem.n * t.problem.k <= suite.CPU_SIZES.tp_max_weight


def _find(strategy, pred):
    cfg = settings(max_examples=2000, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    return find(strategy, pred, settings=cfg)


def test_the_gpu_profile_draws_large_m_and_real_shard_k() -> None:
    big = _find(suite.trials(registry.get(EMU), "reference_agreement", suite.GPU_SIZES),
                lambda t: t.problem.m > 4096)
    assert big.problem.m in hs.LARGE_M and big.problem.k in hs.REAL_SHARD_K
    assert _find(hs.large_problems(), lambda p: p.m == 16384 and p.k == 3696)
    assert _find(hs.large_problems(ragged_n=True), lambda p: p.n == 232)
    assert _find(hs.large_problems(max_m=8192), lambda p: p.m > 0).m <= 8192


def test_large_problems_are_rare_in_the_gpu_profile() -> None:
    seen, large = 0, 0

    @settings(max_examples=400, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(suite.trials(registry.get(EMU), "reference_agreement", suite.GPU_SIZES))
    def count(t) -> None:
        nonlocal seen, large
        seen += 1
        large += t.problem.m > suite.GPU_SIZES.max_m

    count()
    assert 0 < large < seen * 0.2, (large, seen)


def test_rarely_rejects_a_bad_share() -> None:
    import pytest

    with pytest.raises(ValueError, match="share"):
        hs.rarely(st.just(1), st.just(2), 0.0)


def test_a_large_case_round_trips_through_a_case_file(tmp_path) -> None:
    from harness.cases import Case, load_case, save_case
    from harness.problem import GemmProblem
    from harness.trial import Trial

    trial = Trial(EMU, "reference_agreement", GemmProblem(m=16384, n=232, k=3696, seed=4), a_layout="128x4")
    case = Case.from_trial(trial, level="gemm", observed={"summary": "x"}, environment={})
    assert load_case(save_case(case, tmp_path / "c.json")).trial() == trial
