"""The planted-bug backends (harness.mutants) are caught by the properties they name.

Each mutant is hunted the way the property suite hunts a real backend: with the suite's own
strategies (``suite.trials(backend, property, suite.CPU_SIZES)``), derandomized, by
``hypothesis.find``.  A hunt must end in a failure of the mutant's ``expected_property`` within
:data:`CATCH_BUDGET_S` seconds, and the mutant's parent must pass the same minimized trial, so the
failure is the planted bug's and not the property's.  Run with ``-s`` to see, per mutant, how many
examples and seconds the first failure took and the minimized case.

The explain phase is left out of the search: on a failing case it re-runs the test about two
hundred times under a tracer (minutes under the Triton interpreter) to annotate the report, which a
minimized case does not need.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, Phase, find, settings

from harness import suite
from harness.backends import registry
from harness.backends.protocol import Backend
from harness.runner import Outcome, Trial, execute, properties_for

CATCH_BUDGET_S = 60.0
"""Seconds a hunt may take to the first failure on the CPU (interpreter) before the test fails."""

MAX_EXAMPLES = 60
"""Examples a hunt may draw before it gives up (the mutants are all caught well within it)."""

CI_EXAMPLES = 4
"""Examples of the property suite's ci profile (harness.pytest_plugin)."""

CAUGHT_IN_CI = {"mutant-ktail-uninit"}
"""Mutants that must fall within the ci profile's examples (the first, minimal draws)."""

HUNT_SETTINGS = settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                         phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
                         suppress_health_check=list(HealthCheck))


def mutants() -> list[Backend]:
    return [b for b in registry.all_backends(include_mutants=True) if b.mutant]


MUTANT_NAMES = [b.name for b in mutants()]


@dataclass
class Hunt:
    trial: Trial             # the minimized failing trial
    outcome: Outcome         # the mutant's outcome on it
    examples: int            # distinct trials executed up to and including the first failure
    first_s: float           # seconds to the first failure
    total_s: float           # seconds including shrinking

    def line(self) -> str:
        p, t = self.trial.problem, self.trial
        shape = f"m={p.m} n={p.n} k={p.k}" + (f" batch={list(p.batch)}" if p.batch else "")
        return (f"{t.backend}: {t.property} failed after {self.examples} example(s), {self.first_s:.1f} s "
                f"(minimized in {self.total_s:.1f} s): {shape} {p.in_dtype}->{p.out_dtype} {p.distribution} "
                f"seed={p.seed} poison={t.poison.regions() or 'clean'} | {self.outcome.reason[:160]}")


def hunt(backend: Backend) -> Hunt:
    """Search the suite's trials of the mutant's expected property for a failure, then minimize it."""
    outcomes: dict[Trial, Outcome] = {}
    first: dict[str, float] = {}
    t0 = time.perf_counter()

    def fails(trial: Trial) -> bool:
        if trial not in outcomes:
            outcomes[trial] = execute(trial)
            if outcomes[trial].status == "fail" and not first:
                first.update(examples=len(outcomes), seconds=time.perf_counter() - t0)
        return outcomes[trial].status == "fail"

    trial = find(suite.trials(backend, backend.expected_property, suite.CPU_SIZES), fails,  # type: ignore[attr-defined]
                 settings=HUNT_SETTINGS)
    return Hunt(trial, outcomes[trial], int(first["examples"]), first["seconds"], time.perf_counter() - t0)


def test_mutants_declare_their_bug() -> None:
    names = set(MUTANT_NAMES)
    assert len(names) == len(MUTANT_NAMES) >= 14
    visible = {b.name for b in registry.all_backends()}
    for b in mutants():
        assert b.name.startswith("mutant-"), b.name
        assert b.name not in visible, f"{b.name} is not hidden from normal runs"
        assert b.planted and b.expected_property and b.parent, b.name  # type: ignore[attr-defined]
        assert b.expected_property in properties_for(b), b.name  # type: ignore[attr-defined]
        parent = registry.get(b.parent)  # type: ignore[attr-defined]
        assert not parent.mutant and parent.level == b.level, b.name
        assert b.describe()["planted"] == b.planted  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", MUTANT_NAMES)
def test_mutant_is_caught(name: str, record_property) -> None:
    backend = registry.get(name)
    h = hunt(backend)
    print("\n" + h.line())
    record_property("examples_to_failure", h.examples)
    record_property("seconds_to_failure", round(h.first_s, 2))
    record_property("minimized", h.trial.to_dict())

    assert h.outcome.status == "fail" and h.trial.property == backend.expected_property  # type: ignore[attr-defined]
    assert h.first_s < CATCH_BUDGET_S, f"{name}: first failure took {h.first_s:.1f} s"
    if name in CAUGHT_IN_CI:
        assert h.examples <= CI_EXAMPLES, f"{name}: needed {h.examples} examples; the ci profile draws {CI_EXAMPLES}"

    parent = execute(replace(h.trial, backend=backend.parent))  # type: ignore[attr-defined]
    assert parent.status == "pass", f"parent {backend.parent} on the minimized trial: {parent.status} {parent.reason}"  # type: ignore[attr-defined]

    if name == "mutant-pad-row-scales":
        # the bug needs only the smallest M (one real row in an 8-row tile) and one poisoned region
        assert h.trial.problem.m == 1
        assert h.trial.poison.regions() == ["m_pad"]
