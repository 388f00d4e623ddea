"""The planted-bug backends (harness.mutants) are caught by the properties they name: this runs the
self-test (``nvfp4-harness selftest``, :mod:`harness.selftest`) on every mutant.

Each mutant is hunted the way the property suite hunts a real backend, with the suite's own
strategies, derandomized, by ``hypothesis.find``; its expected property is tried first.  A hunt
must end in a failure of that property within :data:`CATCH_BUDGET_S` seconds on the CPU, and the
mutant's parent must pass the same minimized trial (no false alarm).  Run with ``-s`` to see the
examples, seconds and minimized case per mutant.
"""

from __future__ import annotations

import pytest

from harness import optional, selftest
from harness.backends import registry
from harness.backends.protocol import Backend
from harness.grouped import registry as grouped_registry
from harness.trial import properties_for

CATCH_BUDGET_S = 60.0
"""Seconds a hunt may take to the first failure on the CPU (interpreter) before the test fails."""

MAX_EXAMPLES = 60
"""Examples a hunt may draw per property before it gives up (all are caught well within it)."""

CI_EXAMPLES = 4
"""Examples of the property suite's ci profile (harness.pytest_plugin)."""

CAUGHT_IN_CI = {"mutant-ktail-uninit"}
"""Mutants that must fall within the ci profile's examples (the first, minimal draws)."""


def mutants() -> list[Backend]:
    """The mutants the properties must catch (those only compute-sanitizer catches are
    tests/test_sanitizer_gpu.py's)."""
    return [b for b in registry.all_backends(include_mutants=True)
            if b.mutant and getattr(b, "oracle", "properties") == "properties"]


def sanitizer_mutants() -> list[Backend]:
    return [b for b in registry.all_backends(include_mutants=True)
            if b.mutant and getattr(b, "oracle", "properties") == "sanitizer"]


MUTANT_NAMES = [b.name for b in mutants()]


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


def test_sanitizer_mutants_declare_their_finding() -> None:
    from harness.sanitizer import TOOLS, Finding

    found = sanitizer_mutants()
    assert {b.level for b in found} == {"gemm", "quantizer"} and len(found) >= 3
    fields = {f for f in Finding.__dataclass_fields__}
    for b in found:
        assert b.name.startswith("mutant-") and b.planted and b.parent, b.name  # type: ignore[attr-defined]
        assert b.sanitizer_tool in TOOLS, b.name  # type: ignore[attr-defined]
        assert b.expected_property == f"sanitizer:{b.sanitizer_tool}", b.name  # type: ignore[attr-defined]
        assert {"kernel", "buffer", "region"} <= set(b.expected_finding) <= fields, b.name  # type: ignore[attr-defined]
        assert not b.requirements.runs_on_cpu, f"{b.name} cannot be sanitized under the interpreter"
        parent = registry.get(b.parent)  # type: ignore[attr-defined]
        assert not parent.mutant and parent.level == b.level, b.name
        trial = b.sanitizer_trial()  # type: ignore[attr-defined]
        assert trial.backend == b.name and trial.property in properties_for(b)
    assert not any(s.name in MUTANT_NAMES for s in found), "the property self-test must not hunt them"


@pytest.mark.parametrize("name", MUTANT_NAMES)
def test_mutant_is_caught(name: str, record_property) -> None:
    backend = registry.get(name)
    score = selftest.hunt(name, budget_s=CATCH_BUDGET_S, examples=MAX_EXAMPLES)
    print("\n" + selftest.scoreboard([score]).splitlines()[2])
    record_property("examples_to_failure", score.examples)
    record_property("seconds_to_failure", score.seconds)
    record_property("minimized", score.minimized)

    if not score.ran:  # e.g. its library is not installed: an optional package, skipped with the reason
        reason = "; ".join(score.notes)
        if optional.required() and "not installed" in reason:
            pytest.fail(f"{optional.REQUIRE_ENV}=1 (set by CI) but {reason}", pytrace=False)
        pytest.skip(reason)
    assert score.caught_by == backend.expected_property, (name, score.caught_by, score.notes)  # type: ignore[attr-defined]
    assert score.seconds < CATCH_BUDGET_S, f"{name}: first failure took {score.seconds:.1f} s"
    if name in CAUGHT_IN_CI:
        assert score.examples <= CI_EXAMPLES, f"{name}: needed {score.examples} examples; ci draws {CI_EXAMPLES}"
    assert score.parent_outcome == "pass", f"parent {score.parent} on the minimized trial: {score.parent_outcome}"

    if name == "mutant-pad-row-scales":
        # the bug needs only the smallest M (one real row in an 8-row tile) and one poisoned region
        assert score.minimized["problem"]["m"] == 1
        poisoned = [r for r in ("m_pad", "n_pad", "k_tail", "data") if score.minimized["poison"][r]]
        assert poisoned == ["m_pad"]


GROUPED_MUTANTS = [b.name for b in grouped_registry.all_backends(include_mutants=True) if b.mutant]

GROUPED_MINIMAL = {
    # (tokens, experts) of the smallest case each bug shows on: the grouped strategies must shrink to it
    "mutant-grouped-routed-scale-twice": (1, 1),   # any routed token
    "mutant-grouped-n64-stripes": (1, 1),          # any expert's last, half-full weight scale tile
    "mutant-grouped-expert-scale-stride": (1, 2),  # expert 0 reads its own scales: a token of expert >= 1
    "mutant-grouped-one-input-scale": (1, 2),      # expert 0's scale is right for expert 0
    "mutant-grouped-empty-expert-row": (1, 2),     # a zero-token expert before a non-empty one
    "mutant-grouped-unpadded-sf-offsets": (2, 2),  # a token not routed to the poisoned expert, in the next section
    "mutant-moe-gate-up-swapped": (1, 1),          # any token of any expert
    "mutant-moe-fc2-one-input-scale": (1, 2),      # expert 0's FC2 scale is right for expert 0
    "mutant-moe-routed-scaling-twice": (1, 1),     # any token with a non-zero output
    # data-dependent: the bf16 rounding must move an intermediate element across an e2m1 boundary, and
    # removing a token changes the data, so the shrinker stops at the first draw whose data does: one
    # expert, and as few tokens as the data allows (1-2 on the CPU's draws; 128 once on the H200's
    # 128-aligned splits)
    "mutant-moe-bf16-epilogue": lambda tokens, experts: experts <= 2 and (tokens <= 2 or experts == 1),
}
"""Where the strategies shrink each grouped mutant's failure: one expert and one token wherever the
bug allows it (a grouped mutant added without an entry here fails the test until it gets one)."""


@pytest.mark.parametrize("name", GROUPED_MUTANTS)
def test_grouped_mutant_is_caught(name: str, record_property) -> None:
    """Grouped mutants (harness.grouped.mutants) through the same self-test engine; each hunt must
    shrink to the smallest case its bug shows on (:data:`GROUPED_MINIMAL`: one expert and one token
    wherever the bug allows it)."""
    backend = grouped_registry.get(name)
    assert backend.planted and backend.parent and not grouped_registry.get(backend.parent).mutant
    score = selftest.hunt(name, budget_s=CATCH_BUDGET_S, examples=MAX_EXAMPLES)
    print("\n" + selftest.scoreboard([score]).splitlines()[2])
    record_property("minimized", score.minimized)
    assert score.caught_by == backend.expected_property, (name, score.caught_by, score.notes)
    assert score.seconds < CATCH_BUDGET_S, f"{name}: first failure took {score.seconds:.1f} s"
    assert score.parent_outcome == "pass", f"parent {score.parent} on the minimized trial: {score.parent_outcome}"
    p = score.minimized["problem"]
    assert name in GROUPED_MINIMAL, f"{name}: declare the smallest case its bug shows on in GROUPED_MINIMAL"
    want = GROUPED_MINIMAL[name]
    if callable(want):
        assert want(p["tokens"], p["experts"]), (name, p)
    else:
        assert (p["tokens"], p["experts"]) == want, (name, p)


def test_a_mutant_that_cannot_run_here_is_no_survivor():
    """A mutant whose library is missing (e.g. a ModelOpt checkpoint loader on a machine without
    nvidia-modelopt) was never searched: the scoreboard says so and calls it no survivor."""
    idle = selftest.Score("mutant-x", "a planted bug", "checkpoint_convention",
                          notes=["cannot run here: package 'nvidia-modelopt' is not installed"])
    caught = selftest.Score("mutant-y", "another", "reference_agreement", caught_by="reference_agreement",
                            parent_outcome="pass")
    assert idle.verdict == "CANNOT RUN HERE" and not idle.ran and caught.ran
    board = selftest.scoreboard([idle, caught])
    assert "SURVIVED" not in board and "1/1 mutants caught (1 cannot run here: mutant-x)" in board
