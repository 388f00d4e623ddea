"""The grouped (MoE) property suite: every grouped and fused-MoE backend x each of its properties,
fuzzed by Hypothesis with :mod:`harness.grouped.strategies` (small shapes under the CPU
interpreter, larger ones, 128-aligned splits and N up to 2880 on a GPU).

``--nvfp4-backends`` / ``--nvfp4-properties`` select among the grouped pairs as they do for the
other levels (``mutants`` selects none: grouped mutants are hunted by the self-test), and
``--nvfp4-shard i/N`` gives a campaign node its share of them.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from harness import campaign, env
from harness.grouped import registry, strategies
from harness.grouped.checks import execute

EXAMPLES = 25 if env.current().device == "cuda" else 2
"""Examples per (backend, property): a handful on the CPU interpreter (CI), more on a GPU."""


def _pairs(config: pytest.Config) -> list:
    names = config.getoption("--nvfp4-backends", default="all")
    if names in ("all", None):
        backends = [b.name for b in registry.all_backends()]
    elif names == "mutants":
        backends = []
    else:
        backends = [n.strip() for n in names.split(",") if registry.is_grouped(n.strip())]
    props = config.getoption("--nvfp4-properties", default="all")
    wanted = None if props in ("all", None) else {p.strip() for p in props.split(",")}
    pairs = [(b, p) for b in backends for p in registry.get(b).properties if wanted is None or p in wanted]
    pairs = campaign.shard_pairs(pairs, campaign.parse_shard(config.getoption("--nvfp4-shard", default=None)))
    return [pytest.param(b, p, id=f"{b}::{p}") for b, p in pairs]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if {"grouped_backend", "grouped_property"} <= set(metafunc.fixturenames):
        metafunc.parametrize(("grouped_backend", "grouped_property"), _pairs(metafunc.config))


def test_grouped_property(grouped_backend: str, grouped_property: str) -> None:
    backend = registry.get(grouped_backend)
    support = backend.support(env.current())
    if not support:
        pytest.skip(f"{grouped_backend}: {support.reason}")

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(trial=strategies.trials_for(backend, grouped_property, env.current().device))
    def check(trial) -> None:
        out = execute(trial)
        assert out.status in ("pass", "skip"), f"{grouped_backend} {grouped_property}: {out.reason}"

    check()
