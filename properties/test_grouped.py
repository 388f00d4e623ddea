"""The grouped (MoE) property suite: every grouped emulation backend x every grouped property,
fuzzed by Hypothesis with :mod:`harness.grouped.strategies` (small shapes under the CPU
interpreter, larger ones, 128-aligned splits and N up to 2880 on a GPU)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from harness import env
from harness.grouped import registry, strategies
from harness.grouped.checks import execute
from harness.grouped.problem import GROUPED_PROPERTIES

EXAMPLES = 25 if env.current().device == "cuda" else 2
"""Examples per (backend, property): a handful on the CPU interpreter (CI), more on a GPU."""

PAIRS = [(b.name, p) for b in registry.all_backends() for p in GROUPED_PROPERTIES]


@pytest.mark.parametrize(("backend_name", "property_name"), PAIRS, ids=[f"{b}::{p}" for b, p in PAIRS])
def test_grouped_property(backend_name: str, property_name: str, request) -> None:
    names = request.config.getoption("--nvfp4-backends", default="all")
    if names not in ("all", None) and backend_name not in {n.strip() for n in names.split(",")}:
        pytest.skip(f"{backend_name}: not selected by --nvfp4-backends")
    props = request.config.getoption("--nvfp4-properties", default="all")
    if props not in ("all", None) and property_name not in {p.strip() for p in props.split(",")}:
        pytest.skip(f"{property_name}: not selected by --nvfp4-properties")
    backend = registry.get(backend_name)
    support = backend.support(env.current())
    if not support:
        pytest.skip(f"{backend_name}: {support.reason}")
    sz = strategies.sizes_for(env.current().device)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(trial=strategies.grouped_trials(backend_name, property_name, sz))
    def check(trial) -> None:
        out = execute(trial)
        assert out.status in ("pass", "skip"), f"{backend_name} {property_name}: {out.reason}"

    check()
