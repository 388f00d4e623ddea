"""The grouped (MoE) property suite: every grouped and fused-MoE backend x each of its properties,
fuzzed by Hypothesis with :mod:`harness.grouped.strategies` (small shapes under the CPU
interpreter, larger ones, 128-aligned splits and N up to 2880 on a GPU).

``--nvfp4-backends`` / ``--nvfp4-properties`` select among the grouped pairs as they do for the
other levels (``mutants`` selects none: grouped mutants are hunted by the self-test), and
``--nvfp4-shard i/N`` gives a campaign node its share of them.  Every example is recorded in the
run's results like the other levels' (harness/pytest_plugin.py): a minimized failure becomes a
grouped case file with its per-expert view and a replay command, listed in the end-of-run summary.
With the ``ci`` profile each pair runs :data:`EXAMPLES` derandomized examples; the ``fuzz`` and
``replay`` profiles (and ``--nvfp4-examples``) apply here as they do to the other levels.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings

from harness import campaign, env
from harness.grouped import registry, strategies
from harness.pytest_plugin import key_examples

EXAMPLES = 25 if env.current().device == "cuda" else 2
"""Examples per (backend, property) with the ``ci`` profile: a handful on the CPU interpreter (CI),
more on a GPU."""


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


def _settings(config: pytest.Config) -> settings:
    explicit = config.getoption("--nvfp4-examples", default=None)
    ci = (getattr(config, "_nvfp4_profile", None) or "ci") == "ci"
    kw = {"max_examples": explicit or EXAMPLES, "derandomize": True, "database": None} if ci else {}
    return settings(settings.default, deadline=None, suppress_health_check=list(HealthCheck), **kw)


def _campaign_share_end(request: pytest.FixtureRequest, session) -> float:
    """In a campaign (the fuzz profile with a budget), when this pair's even share of the time left
    ends (the time left over this and every later property-suite pair of the session); no end
    otherwise."""
    if session.budget is None or not getattr(request.config, "_nvfp4_campaign", False):
        return float("inf")
    items = request.session.items
    start = items.index(request.node) if request.node in items else 0
    pairs = sum(1 for item in items[start:]
                if {"grouped_backend", "backend_name"} & set(getattr(getattr(item, "callspec", None), "params", {})))
    left = session.start + session.budget - time.time()
    return time.time() + max(0.0, left) / max(1, pairs)


def _final() -> bool:
    """Whether Hypothesis is replaying the minimal failure it found (the run must not stop then)."""
    from hypothesis.control import current_build_context

    try:
        return current_build_context().is_final
    except Exception:  # noqa: BLE001 - outside a build context
        return True


def test_grouped_property(nvfp4_session, grouped_backend: str, grouped_property: str, request) -> None:
    backend = registry.get(grouped_backend)
    test = request.node.nodeid
    support = backend.support(nvfp4_session.env)
    if not support:
        nvfp4_session.record_skip(backend, grouped_property, support.reason, test)
        pytest.skip(f"{grouped_backend}: {support.reason}")
    if nvfp4_session.over_budget():
        nvfp4_session.record_skip(backend, grouped_property, "time budget (--nvfp4-budget) exhausted", test)
        pytest.skip("time budget (--nvfp4-budget) exhausted")
    share_end = _campaign_share_end(request, nvfp4_session)
    found: list = []  # failing examples of this run
    ran: list[str] = []  # outcomes of the examples run

    @_settings(request.config)
    @given(trial=strategies.trials_for(backend, grouped_property, nvfp4_session.env.device))
    def check(trial) -> None:
        # the session's time budget (in a campaign: this pair's share of it), before every example:
        # it ends the Hypothesis run at once, but never once a failure was found (it is shrunk and
        # its minimal example replayed and recorded first)
        spent = nvfp4_session.over_budget() or time.time() > share_end
        if spent and not found and not _final():
            raise campaign.RunStopped()
        out = nvfp4_session.run(trial, test, ignore_budget=True)
        ran.append(out.status)
        if out.status in ("fail", "crash"):
            found.append(trial)
        assert out.status in ("pass", "skip"), f"{grouped_backend} {grouped_property}: {out.reason}"

    # one example-database key per (backend, property) pair, as Hypothesis gives a parametrized test
    key_examples(check, test)
    try:
        check()
    except campaign.RunStopped:  # the time budget (or this pair's share of it) is spent: what ran is recorded
        why = "time budget (--nvfp4-budget) spent" if nvfp4_session.over_budget() else \
            "its share of the campaign budget was spent"
        nvfp4_session.end_test(test, f"{why} after {len(ran)} example(s)")
        if not ran:
            pytest.skip(why)
        return
    except BaseException:
        nvfp4_session.end_test(test, "failure found")
        raise
    nvfp4_session.end_test(test, "finished")
