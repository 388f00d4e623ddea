"""The property suite: every selected backend x every property of its level, fuzzed by Hypothesis.

Run ``pytest -n auto properties/`` (one xdist worker per GPU on a GPU node).  Options:
``--nvfp4-backends``, ``--nvfp4-properties``, ``--nvfp4-profile {ci,fuzz,replay}``,
``--nvfp4-budget SECONDS``, ``--nvfp4-results DIR``, ``--nvfp4-plugin MODULE_OR_FILE``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from harness import campaign, env, suite
from harness.backends import registry
from harness.grouped import registry as grouped_registry
from harness.runner import NOT_APPLICABLE
from harness.trial import properties_for


def _pairs(config: pytest.Config) -> list:
    names = config.getoption("--nvfp4-backends")
    if names == "mutants":
        backends = [b for b in registry.all_backends(include_mutants=True) if b.mutant]
    elif names in ("all", None):
        backends = registry.all_backends()
    else:
        # grouped (MoE) backends are the grouped suite's (properties/test_grouped.py)
        backends = [registry.get(n.strip()) for n in names.split(",")
                    if n.strip() and not grouped_registry.is_grouped(n.strip())]
    props = config.getoption("--nvfp4-properties")
    wanted = None if props in ("all", None) else {p.strip() for p in props.split(",")}
    pairs = [(b.name, p) for b in backends for p in properties_for(b) if wanted is None or p in wanted]
    pairs = campaign.shard_pairs(pairs, campaign.parse_shard(config.getoption("--nvfp4-shard")))
    return [pytest.param(b, p, id=f"{b}::{p}") for b, p in pairs]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if {"backend_name", "property_name"} <= set(metafunc.fixturenames):
        metafunc.parametrize(("backend_name", "property_name"), _pairs(metafunc.config))


@pytest.fixture
def backend(nvfp4_session, backend_name: str, property_name: str, request):
    """The backend under test, or a recorded skip: checked once per test, before Hypothesis starts
    (a skip in the middle of a Hypothesis run would make its data generation inconsistent).  The
    time budget is checked here and again before every example (HarnessSession.run)."""
    b = registry.get(backend_name)
    support = b.support(nvfp4_session.env)
    if not support:
        nvfp4_session.record_skip(b, property_name, support.reason, request.node.nodeid)
        pytest.skip(f"{backend_name}: {support.reason}")
    if nvfp4_session.over_budget():
        nvfp4_session.record_skip(b, property_name, "time budget (--nvfp4-budget) exhausted", request.node.nodeid)
        pytest.skip("time budget (--nvfp4-budget) exhausted")
    return b


@given(data=st.data())
def test_property(nvfp4_session, backend, property_name: str, request, data) -> None:
    trial = data.draw(suite.trials(backend, property_name, suite.sizes_for(env.current().device)), label="trial")
    # in a campaign: end this Hypothesis run once the pair's share of the budget is spent (after
    # the draw, so every example draws the same way; Hypothesis checks that)
    nvfp4_session.campaign_gate()
    outcome = nvfp4_session.run(trial, request.node.nodeid)
    if outcome is not None and outcome.status == "skip" and outcome.reason.startswith(NOT_APPLICABLE):
        pytest.skip(outcome.reason)  # the property cannot be checked on this backend: no other example can
    if outcome is None or outcome.status == "skip":
        # the time budget is spent, or the backend refused this one example: Hypothesis goes on
        # (a refused example ends neither the test nor the run; a test whose every example was
        # refused is reported as a skip with the reason, see properties/conftest.py)
        reject()
    assert outcome.status == "pass", f"{backend.name} {property_name}: {outcome.reason}"
