"""What the results keep of a grouped trial: the per-expert view of a failure and its case file.

:func:`expert_rows` lays a grouped trial's outcome out expert by expert: the tokens of its split
section, the rows it occupies in the grouped buffer, which padding regions of it held poison, its
largest error over the bound and the tokens of its section that disagree.  Result records of
grouped failures carry it under ``experts`` and their case files under ``observed.experts``; the
HTML report draws its per-expert table from it (without importing torch or the pipeline).
:func:`save_failure_case` writes the case file of a (minimized) grouped failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.format import BLOCK_SIZE
from harness.grouped.cases import GroupedCase, write_case
from harness.grouped.pipeline import N_ALIGN, group_offsets
from harness.grouped.problem import GROUPED_REGIONS, GroupedTrial
from harness.layouts import ScaleLayout, padded_shape, round_up
from harness.trial import Outcome, json_safe

MAX_TOKENS_LISTED = 32
"""Token ids listed per expert (the count is always exact)."""


def _tokens_in(tokens: Any, section: set[int]) -> list[int]:
    return [t for t in (tokens or []) if isinstance(t, int) and t in section]


def expert_rows(trial: GroupedTrial, measure: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per expert of ``trial`` with what ``measure`` says of it.

    Keys: ``expert``; ``tokens`` (count) and ``token_ids`` (the first :data:`MAX_TOKENS_LISTED`
    tokens of its section); ``row_align``, ``rows`` (packed rows its section occupies, group row
    padding included) and ``scale_rows`` (its 128x4 scale rows); ``padding``: the poisoned padding
    regions of this expert as ``{"region", "byte"}`` (group row padding and K tail of its section,
    N padding and K tail of its weight, packed-data padding), a region listed only where the expert
    has bytes in it; ``role``: "victim" (token isolation poisons it), "zero-token" or "";
    ``max_err_units``: its largest ``|out - ref| / bound`` (reference agreement; None otherwise);
    ``bad_tokens``: tokens of its section out of the bound or changed by the poison; ``disagrees``."""
    measure = measure or {}
    p = trial.problem
    sections = p.sections()
    k_blocks = p.k // BLOCK_SIZE
    k_alloc = round_up(p.k, BLOCK_SIZE)
    rows, sf_rows = group_offsets(tuple(p.splits), tuple(p.row_align), ScaleLayout.SWIZZLED_128x4, k_alloc)
    sf_kb = padded_shape(ScaleLayout.SWIZZLED_128x4, 1, k_blocks)[1]
    n_alloc = round_up(p.n, N_ALIGN)
    w_sf_rows = padded_shape(ScaleLayout.SWIZZLED_128x4, n_alloc, k_blocks)[0]
    bad_experts = set(measure.get("bad_experts") or [])  # grouped_bytes: sections whose bytes differ
    per_expert = {v.get("expert"): v for v in measure.get("per_expert") or [] if isinstance(v, dict)}
    changed = measure.get("changed_tokens") or []
    victim = measure.get("victim", trial.poison.victim if trial.property == "token_isolation" else None)
    out = []
    for e, sec in enumerate(sections):
        tokens = sorted({t for t, _ in sec})
        count = len(sec)
        d_rows = rows[e + 1] - rows[e]
        s_rows = sf_rows[e + 1] - sf_rows[e]
        has = {"group_row_pad": s_rows > count or d_rows > count,
               # the token-isolation check poisons no K tail (harness.grouped.checks.run_property)
               "k_tail": (sf_kb > k_blocks or k_alloc > p.k) and trial.property != "token_isolation",
               "n_pad": w_sf_rows > p.n or n_alloc > p.n,
               "data": d_rows > count or k_alloc > p.k or n_alloc > p.n}
        if count == 0:
            has["group_row_pad"] = False  # a zero-token expert occupies no rows of the grouped buffer
        padding = [{"region": r, "byte": getattr(trial.poison, r)} for r in GROUPED_REGIONS
                   if getattr(trial.poison, r, 0) and has.get(r)]
        pe = per_expert.get(e, {})
        err = pe.get("max_err_units")
        bad = pe.get("bad_tokens")
        if bad is None:
            bad = _tokens_in(changed, set(tokens))
        role = "victim" if victim == e else ("zero-token" if count == 0 else "")
        disagrees = bool(bad) or e in bad_experts or (isinstance(err, (int, float)) and not err <= 1.0)
        out.append({"expert": e, "tokens": count, "token_ids": tokens[:MAX_TOKENS_LISTED], "row_align": p.row_align[e],
                    "rows": d_rows, "scale_rows": s_rows, "padding": padding, "role": role,
                    "max_err_units": err, "bad_tokens": list(bad)[:MAX_TOKENS_LISTED], "disagrees": disagrees})
    if trial.property == "zero_token_groups" and changed:
        # the poisoned zero-token experts changed tokens of other sections: name the culprits
        for row in out:
            if row["role"] == "zero-token":
                row["disagrees"] = True
    return json_safe(out)


def experts_or_note(trial: GroupedTrial, measure: dict[str, Any] | None) -> list[dict[str, Any]]:
    """:func:`expert_rows`, or an empty list when the trial cannot be laid out (never raises: a
    record is written whatever its per-expert view)."""
    try:
        return expert_rows(trial, measure)
    except Exception:  # noqa: BLE001 - the record matters more than its view
        return []


def save_failure_case(results_dir: Path | str, trial: GroupedTrial, outcome: Outcome, environment: dict,
                      reproduced: list[dict] | None = None) -> str:
    """Write the case file of a (minimized) grouped failure into ``results_dir/cases/``; returns its
    path relative to ``results_dir``."""
    observed = {"summary": outcome.reason or (outcome.result.summary if outcome.result else ""),
                "status": outcome.status, **json_safe(outcome.measure),
                "experts": experts_or_note(trial, outcome.measure)}
    case = GroupedCase.create(trial, observed=observed, environment=environment, digest=outcome.digest,
                              reproduced=reproduced)
    written = write_case(case, Path(results_dir) / "cases" / f"{case.id}.json")
    return str(Path(written).relative_to(Path(results_dir)))
