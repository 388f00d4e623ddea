"""The self-test of the grouped level: hunt a grouped mutant with the grouped strategies (the
engine of :mod:`harness.selftest`, which dispatches grouped mutants here)."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample, Unsatisfiable

from harness import env
from harness.grouped import registry, strategies
from harness.grouped.checks import execute
from harness.grouped.problem import GROUPED_PROPERTIES, GroupedTrial
from harness.selftest import Score


def hunt(mutant_name: str, *, budget_s: float = 60.0, examples: int = 200) -> Score:
    m = registry.get(mutant_name)
    sz = strategies.sizes_for(env.current().device)
    score = Score(mutant_name, m.planted, m.expected_property, parent=m.parent)
    sup = m.support(env.current())
    if not sup:
        score.notes.append(f"cannot run here: {sup.reason}")
        return score
    props = [m.expected_property] + [p for p in GROUPED_PROPERTIES if p != m.expected_property]
    t_all = time.perf_counter()
    for prop in props:
        if time.perf_counter() - t_all >= budget_s:
            break
        state = {"n": 0, "first": None, "first_n": 0}
        t0 = time.perf_counter()

        def failed(trial: GroupedTrial) -> bool:
            state["n"] += 1
            bad = execute(trial).status in ("fail", "crash")
            if bad and state["first"] is None:
                state["first"], state["first_n"] = time.perf_counter() - t0, state["n"]
            return bad

        cfg = settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                       phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
                       report_multiple_bugs=False)
        try:
            minimal = find(strategies.grouped_trials(mutant_name, prop, sz), failed, settings=cfg)
        except (NoSuchExample, Unsatisfiable):
            continue
        score.caught_by = prop
        score.examples = state["first_n"]
        score.seconds = round((t0 - t_all) + (state["first"] or 0.0), 3)
        score.minimized = minimal.to_dict()
        score.failure = execute(minimal).reason
        parent = GroupedTrial(m.parent, minimal.property, minimal.problem, minimal.poison)
        try:
            score.parent_outcome = execute(parent).status
        except Exception as exc:  # noqa: BLE001
            score.parent_outcome = f"error: {exc}"
        break
    score.total_seconds = round(time.perf_counter() - t_all, 3)
    return score
