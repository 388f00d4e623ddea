"""Prove the oracle: hunt every planted-bug backend with the property suite's own strategies.

For each mutant (harness.mutants) the self-test searches each property of the mutant's level, the
one expected to catch it first, with Hypothesis (generate, then shrink) over
:func:`harness.suite.trials`.  It records which property caught the mutant, how many examples and
seconds it took to the first failure, and the minimized case.  The mutant's correct parent is then
run on that same minimized case and must pass (no false alarm).  A mutant no property catches
within its budget *survives*, and the self-test exits non-zero.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample, Unsatisfiable

from harness import env, suite
from harness.backends import registry
from harness.runner import execute
from harness.trial import GPU_ONLY_PROPERTIES, Trial, properties_for


@dataclass
class Score:
    mutant: str
    planted: str
    expected: str
    caught_by: str | None = None
    examples: int = 0                  # examples until the first failure
    seconds: float = 0.0               # seconds until the first failure
    total_seconds: float = 0.0         # including shrinking
    minimized: dict | None = None
    failure: str = ""
    parent: str | None = None
    parent_outcome: str | None = None  # the parent backend on the minimized case
    notes: list[str] = field(default_factory=list)
    budget_cut: bool = False           # the budget ended the search before every property was searched

    @property
    def ran(self) -> bool:
        """False when the mutant cannot run on this machine (e.g. its library is not installed)."""
        return not any(n.startswith("cannot run here") for n in self.notes)

    @property
    def verdict(self) -> str:
        """The property that caught the mutant; SURVIVED only after a complete search; BUDGET SPENT
        when the time budget cut the search short, NEEDS A GPU when only a GPU-only property
        (:data:`~harness.trial.GPU_ONLY_PROPERTIES`) can catch it and there is no GPU, CANNOT RUN HERE
        when no search was possible for another reason (none is a statement about the oracle)."""
        if not self.ran:
            return "NEEDS A GPU" if any(n.startswith(f"cannot run here: {NEEDS_GPU}") for n in self.notes) \
                else "CANNOT RUN HERE"
        return self.caught_by or ("BUDGET SPENT" if self.budget_cut else "SURVIVED")

    @property
    def ok(self) -> bool:
        return self.caught_by is not None and self.parent_outcome in (None, "pass", "skip")


NEEDS_GPU = "needs a GPU"
"""Note prefix (after "cannot run here: ") of a mutant only a GPU-only property catches, on a machine
without one."""


class _BudgetSpent(Exception):
    """The mutant's time budget ran out before this property found a failure."""


class _Hunt:
    """The predicate :func:`hypothesis.find` searches with: runs each drawn trial through ``execute_trial``
    (the dense engine, :func:`harness.runner.execute`, or the grouped one) and notes the examples and
    seconds to the first failure."""

    def __init__(self, execute_trial: Callable, deadline: float = float("inf")):
        self.execute = execute_trial
        self.deadline = deadline  # perf_counter time; checked before every example until a failure
        self.examples = 0
        self.first_fail_s: float | None = None
        self.first_fail_examples = 0
        self.t0 = time.perf_counter()
        self.last_reason = ""

    def __call__(self, trial) -> bool:
        if self.first_fail_s is None and time.perf_counter() > self.deadline:
            raise _BudgetSpent()
        self.examples += 1
        out = self.execute(trial)
        failed = out.status in ("fail", "crash")
        if failed and self.first_fail_s is None:
            self.first_fail_s = time.perf_counter() - self.t0
            self.first_fail_examples = self.examples
        if failed:
            self.last_reason = out.reason
        return failed


def _search(score: Score, props: list[str], trials_of: Callable, execute_trial: Callable,
            parent_trial_of: Callable, *, budget_s: float, examples: int) -> Score:
    """Search ``props`` in order for a failure of the mutant and fill ``score``: the property that
    caught it, the examples and seconds to the first failure, the minimized trial, its failure and
    what the parent backend does on it (``parent_trial_of(minimal)``, None when there is no parent).

    ``trials_of(prop)`` is the strategy of trials for one property and ``execute_trial`` the engine
    that runs them.  The budget (seconds, from the start of this search) is checked before every
    property and every example until the first failure; a search it cuts short is noted and marked
    :attr:`Score.budget_cut` (BUDGET SPENT, never a false SURVIVED).

    Raises ValueError when ``budget_s <= 0`` or ``examples < 1`` (a verdict from no search would be a
    false SURVIVED)."""
    if not budget_s > 0 or examples < 1:
        raise ValueError(f"budget_s={budget_s!r}, examples={examples!r}: expected budget_s > 0 and examples >= 1")
    t_all = time.perf_counter()
    searched = 0
    for prop in props:
        remaining = budget_s - (time.perf_counter() - t_all)
        if remaining <= 0:
            score.notes.append(f"budget of {budget_s:g} s spent after searching {searched} of {len(props)} "
                               f"properties ({', '.join(props[:searched])})")
            score.budget_cut = True
            break
        searched += 1
        h = _Hunt(execute_trial, deadline=t_all + budget_s)
        cfg = settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                       phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
                       report_multiple_bugs=False)
        try:
            minimal = find(trials_of(prop), h, settings=cfg)
        except (NoSuchExample, Unsatisfiable):
            continue
        except _BudgetSpent:
            score.notes.append(f"budget of {budget_s:g} s spent while searching {prop} ({h.examples} examples; "
                               f"{searched} of {len(props)} properties searched)")
            score.budget_cut = True
            break
        score.caught_by = prop
        score.examples = h.first_fail_examples
        score.seconds = round((h.t0 - t_all) + (h.first_fail_s or 0.0), 3)  # from the start of this mutant's hunt
        score.minimized = minimal.to_dict()
        score.failure = execute_trial(minimal).reason
        parent_trial = parent_trial_of(minimal)
        if parent_trial is not None:
            try:
                score.parent_outcome = execute_trial(parent_trial).status
            except Exception as exc:  # noqa: BLE001
                score.parent_outcome = f"error: {exc}"
        break
    score.total_seconds = round(time.perf_counter() - t_all, 3)
    if score.caught_by and score.seconds > budget_s:
        score.notes.append(f"first failure after {score.seconds:.1f} s, over the {budget_s:.0f} s budget")
    return score


def hunt(mutant_name: str, *, budget_s: float = 60.0, examples: int = 200) -> Score:
    from harness.grouped import registry as grouped_registry

    if grouped_registry.is_grouped(mutant_name):  # the grouped level has its own problems and strategies
        return hunt_grouped(mutant_name, budget_s=budget_s, examples=examples)
    m = registry.get(mutant_name)
    sizes = suite.sizes_for(env.current().device)
    expected = getattr(m, "expected_property", None)
    score = Score(mutant_name, getattr(m, "planted", ""), expected or "?", parent=getattr(m, "parent", None))
    sup = m.support(env.current())
    if not sup:
        score.notes.append(f"cannot run here: {sup.reason}")
        return score
    if expected in GPU_ONLY_PROPERTIES and env.current().device == "cpu":
        # its eager properties pass by design: a search of them would report a false survivor
        score.notes.append(f"cannot run here: {NEEDS_GPU}: {expected} captures a CUDA graph; this machine has none")
        return score
    props = list(properties_for(m))
    if expected in props:
        props.remove(expected)
        props.insert(0, expected)

    def parent_trial_of(minimal: Trial) -> Trial | None:
        if not score.parent:
            return None
        return Trial(score.parent, minimal.property, minimal.problem, minimal.poison,
                     minimal.a_layout, minimal.tp, minimal.parallel)

    return _search(score, props,
                   lambda prop: suite.trials(m, prop, sizes), execute, parent_trial_of,
                   budget_s=budget_s, examples=examples)


def hunt_grouped(mutant_name: str, *, budget_s: float = 60.0, examples: int = 200) -> Score:
    """:func:`hunt` for a grouped mutant (:mod:`harness.grouped.mutants`): the grouped strategies,
    engine and properties, the same search, scoring, budget and parent check (:func:`_search`)."""
    from harness.grouped import registry as grouped_registry, strategies
    from harness.grouped.checks import execute as execute_grouped
    from harness.grouped.problem import GroupedTrial

    m = grouped_registry.get(mutant_name)
    device = env.current().device
    score = Score(mutant_name, m.planted, m.expected_property, parent=m.parent)
    sup = m.support(env.current())
    if not sup:
        score.notes.append(f"cannot run here: {sup.reason}")
        return score
    props = [m.expected_property] + [p for p in m.properties if p != m.expected_property]
    return _search(score, props,
                   lambda prop: strategies.trials_for(m, prop, device), execute_grouped,
                   lambda minimal: GroupedTrial(m.parent, minimal.property, minimal.problem, minimal.poison),
                   budget_s=budget_s, examples=examples)


def run(mutants: list[str] | None = None, *, budget_s: float = 60.0, examples: int = 200,
        progress=None) -> list[Score]:
    # mutants whose bug changes no result are the sanitizer's (harness.sanitizer.run.selftest), not the properties'
    from harness.grouped import registry as grouped_registry

    names = mutants or [b.name for b in registry.all_backends(include_mutants=True)
                        if b.mutant and getattr(b, "oracle", "properties") == "properties"] + \
        [b.name for b in grouped_registry.all_backends(include_mutants=True) if b.mutant]
    scores = []
    for name in names:
        s = hunt(name, budget_s=budget_s, examples=examples)
        scores.append(s)
        if progress:
            progress(s)
    return scores


def _minimized_text(s: Score) -> str:
    if not s.minimized:
        return "-"
    p = s.minimized["problem"]
    if "tokens" in p:  # grouped level (a fused-MoE problem has hidden and intermediate instead of n and k)
        dims = f"hidden={p['hidden']} I={p['intermediate']}" if "intermediate" in p else f"n={p['n']} k={p['k']}"
        return (f"tokens={p['tokens']} experts={p['experts']} splits={[sum(e == x for r in p['topk_ids'] for x in r) for e in range(p['experts'])]} "
                f"top_k={len(p['topk_ids'][0])} {dims} {p['out_dtype']}")
    poison = {k: v for k, v in s.minimized["poison"].items() if v}
    extra = (f" batch={p['batch']}" if p.get("batch") else "") + \
        (f" calibration={p['calibration']:g}" if p.get("calibration") is not None else "") + \
        (f" partitions={p['partitions']}{' fused' if p.get('fused_on_disk') else ''}" if p.get("partitions") else "") + \
        (f" input_layout={p['input_layout']}" if p.get("input_layout") not in (None, "contiguous") else "")
    pz = ",".join(f"{k}=0x{v:02X}" if isinstance(v, int) and not isinstance(v, bool) else k
                  for k, v in poison.items()) or "clean"
    return f"m={p['m']} n={p['n']} k={p['k']}{extra} {p['out_dtype']} {pz}"


def scoreboard(scores: list[Score]) -> str:
    head = f"{'mutant':<34} {'caught by':<20} {'examples':>8} {'seconds':>8}  {'parent':<6}  minimized case"
    lines = [head, "-" * len(head)]
    for s in scores:
        caught = s.verdict
        parent = (s.parent_outcome or "-")[:6]
        lines.append(f"{s.mutant:<34} {caught:<20} {s.examples:>8} {s.seconds:>8.2f}  {parent:<6}  {_minimized_text(s)}")
        for n in s.notes:
            lines.append(f"{'':<34} note: {n}")
    idle = [s.mutant for s in scores if not s.ran]
    survived = [s.mutant for s in scores if s.ran and not s.caught_by and not s.budget_cut]
    cut = [s.mutant for s in scores if s.ran and not s.caught_by and s.budget_cut]
    alarms = [s.mutant for s in scores if s.caught_by and not s.ok]
    lines.append("")
    gpu = [s.mutant for s in scores if s.verdict == "NEEDS A GPU"]
    other = [m for m in idle if m not in gpu]
    lines.append(f"{len(scores) - len(survived) - len(cut) - len(idle)}/{len(scores) - len(idle)} mutants caught"
                 + (f" ({len(other)} cannot run here: {', '.join(other)})" if other else "")
                 + (f" ({len(gpu)} need a GPU, not searched: {', '.join(gpu)})" if gpu else "")
                 + (f"; SURVIVED: {', '.join(survived)}" if survived else "")
                 + (f"; not caught before the budget ran out (raise --budget): {', '.join(cut)}" if cut else "")
                 + (f"; parent backend failed the minimized case (false alarm): {', '.join(alarms)}" if alarms else ""))
    return "\n".join(lines)


def main(budget_s: float = 60.0, examples: int = 200, mutants: list[str] | None = None,
         json_out: Path | None = None) -> int:
    e = env.current()
    print(f"self-test on {e.summary()}; budget {budget_s:.0f} s per mutant", flush=True)
    if mutants:
        from harness.grouped import registry as grouped_registry

        every = registry.all_backends(include_mutants=True) + grouped_registry.all_backends(include_mutants=True)
        planted = sorted(b.name for b in every if b.mutant)
        for name in mutants:
            if name not in {b.name for b in every}:
                print(f"nvfp4-harness: error: --mutant {name!r}: unknown; expected a planted-bug backend: "
                      f"{', '.join(planted)}", file=sys.stderr)
                return 2
            if grouped_registry.is_grouped(name):
                if not grouped_registry.get(name).mutant:
                    print(f"nvfp4-harness: error: --mutant {name!r} is not a planted-bug backend", file=sys.stderr)
                    return 2
                continue
            if not registry.get(name).mutant:
                print(f"nvfp4-harness: error: --mutant {name!r} is not a planted-bug backend", file=sys.stderr)
                return 2
            if getattr(registry.get(name), "oracle", "properties") != "properties":
                print(f"nvfp4-harness: error: --mutant {name!r} changes no result; only compute-sanitizer catches "
                      f"it: run `nvfp4-harness sanitize --selftest`", file=sys.stderr)
                return 2
    scores = run(mutants, budget_s=budget_s, examples=examples,
                 progress=lambda s: print(f"  {s.mutant}: {s.verdict} "
                                          f"({s.examples} examples, {s.seconds:.2f} s)", flush=True))
    print()
    print(scoreboard(scores))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"environment": e.to_dict(), "budget_s": budget_s,
                                        "scores": [asdict(s) for s in scores]}, indent=2))
    runnable = [s for s in scores if s.ran]
    bad = [s for s in runnable if not s.ok or s.seconds > budget_s]
    return 1 if bad or not runnable else 0
