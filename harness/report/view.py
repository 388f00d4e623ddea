"""The report's view: a parsed results directory shaped into what the template shows.

:func:`build_context` turns a :class:`harness.results.RunData` into plain values and inline SVG
pictures (:mod:`harness.report.svg`): totals, the backend x property matrix, the isolation matrix
(backend x poisoned region x poison kind), one card per failure with its replay command, error
plots and Hypothesis statistics.  It reads only the results (JSON) and the vocabulary of
:mod:`harness.problem` and :mod:`harness.trial`: no kernel, no backend.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shlex
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from harness.input_layout import INPUT_LAYOUTS
from harness.problem import POISON_KINDS, POISON_REGIONS, REGIONS, SLOT_REGIONS, poison_kind, slot_poison_kind
from harness.report.svg import (OUTCOME_COLORS, GridError, Point, grid_legend_svg, grid_svg, marker_svg,
                                outcome_bar_svg, parse_grid, scatter_svg, series_styles)
from harness.results import RunData, accepted_overflow, is_test_skip, natural_key
from harness.sanitizer.findings import Finding
from harness.trial import ISOLATION_PROPERTIES, OUTCOMES, PROPERTIES, json_number

if TYPE_CHECKING:  # pragma: no cover
    from harness.cases import Case

MAX_GRIDS = 60
"""Output pictures drawn per report (the first failures'); keeps a report of a bad run small."""


def _parse_time(s: Any) -> _dt.datetime | None:
    if not isinstance(s, str):
        return None
    try:
        t = _dt.datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith("Z") else s)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def _fmt_num(v: Any) -> str:
    x = json_number(v)
    if x is None:
        return "–"
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("∞" if x > 0 else "−∞")
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def _short_dtype(name: Any) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(name, str(name))


def _grouped_problem_text(p: Mapping) -> str:
    """A grouped (MoE) problem: tokens, experts, top-k, the split sections and the padding policy."""
    ids = p.get("topk_ids") if isinstance(p.get("topk_ids"), list) else []
    experts = p.get("experts")
    splits = [sum(1 for r in ids if isinstance(r, list) and e in r) for e in range(experts)] \
        if isinstance(experts, int) and 0 < experts <= 4096 else []
    top_k = len(ids[0]) if ids and isinstance(ids[0], list) else "?"
    parts = [f"tokens={p.get('tokens')} experts={experts} top_k={top_k} n={p.get('n')} k={p.get('k')}",
             f"splits {splits}", f"row_align {p.get('row_align')}", f"{p.get('input_scales')} input scales",
             f"{_short_dtype(p.get('in_dtype'))} → {_short_dtype(p.get('out_dtype'))}",
             f"{p.get('distribution')} seed {p.get('seed')}"]
    if p.get("origin"):
        parts.append(str(p["origin"]))
    return " · ".join(parts)


def _problem_text(p: Any) -> str:
    if not isinstance(p, Mapping):
        return "–"
    if "tokens" in p and "experts" in p:
        return _grouped_problem_text(p)
    parts = [f"m={p.get('m')} n={p.get('n')} k={p.get('k')}"]
    if p.get("batch"):
        parts.append(f"x shape {list(p['batch']) + [p.get('k')]}")
    parts.append(f"{_short_dtype(p.get('in_dtype'))} → {_short_dtype(p.get('out_dtype'))}")
    parts.append(f"{p.get('distribution')} seed {p.get('seed')}")
    if p.get("calibration") is not None:
        parts.append(f"static scale, calibration ratio {p['calibration']:g}")
    if p.get("partitions"):
        disk = "fused on disk" if p.get("fused_on_disk") else "split on disk"
        parts.append(f"merged partitions {list(p['partitions'])} ({disk})")
    if p.get("input_layout") not in (None, "contiguous"):
        parts.append(f"x as a {str(p['input_layout']).replace('_', ' ')} view")
    if p.get("m") == 0:
        parts.append("empty batch")
    if p.get("origin"):
        parts.append(str(p["origin"]))
    return " · ".join(parts)


def _poison_text(p: Any) -> str:
    if not isinstance(p, Mapping):
        return "–"
    if "group_row_pad" in p:  # a grouped (MoE) poison: padding bytes, and the expert token isolation poisons
        parts = [f"{k}=0x{int(v):02X} ({poison_kind(int(v))})" for k, v in p.items()
                 if k not in ("victim", "victim_byte") and isinstance(v, int) and not isinstance(v, bool) and v]
        if isinstance(p.get("victim"), int):
            parts.append(f"victim expert {p['victim']} (weight scale byte 0x{int(p.get('victim_byte') or 0):02X})")
        return ", ".join(parts) if parts else "clean (no poison)"
    parts = [f"{k}=0x{int(p[k]):02X} ({poison_kind(int(p[k]))})" for k in POISON_REGIONS
             if isinstance(p.get(k), int) and p.get(k)]
    if isinstance(p.get("partition_slots"), int) and p.get("partition_slots"):
        parts.append(f"partition_slots=0x{int(p['partition_slots']):02X} "
                     f"({slot_poison_kind(int(p['partition_slots']))} fp32 slots)")
    if p.get("stale_memory"):
        parts.append("stale_memory")
    return ", ".join(parts) if parts else "clean (no poison)"


def _isolation_key(rec: Mapping) -> tuple[str, str] | None:
    """(region, poison kind) of an isolation record: from ``measure``, else from its poison."""
    measure = rec.get("measure") if isinstance(rec.get("measure"), Mapping) else {}
    region, kind = measure.get("region"), measure.get("poison_kind")
    poison = rec.get("poison") if isinstance(rec.get("poison"), Mapping) else {}
    if region is None:
        touched = [k for k in POISON_REGIONS + SLOT_REGIONS if poison.get(k)]
        touched += ["stale_memory"] if poison.get("stale_memory") else []
        region = touched[0] if len(touched) == 1 else None
    if kind is None and region is not None:
        if region == "stale_memory":
            kind = "stale"
        elif region in SLOT_REGIONS and isinstance(poison.get(region), int):
            kind = slot_poison_kind(poison[region])
        elif isinstance(poison.get(region), int):
            kind = poison_kind(poison[region])
    if region is None or kind is None:
        return None
    return str(region), str(kind)


def _counts(recs: Iterable[Mapping]) -> dict[str, int]:
    c = Counter(r.get("outcome") for r in recs)
    return {k: c.get(k, 0) for k in OUTCOMES}


def _cell_class(counts: Mapping[str, int]) -> str:
    if counts.get("crash"):
        return "crash"
    if counts.get("fail"):
        return "fail"
    if counts.get("pass"):
        return "pass"
    if counts.get("skip"):
        return "skip"
    return "empty"


def _property_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [p for p in PROPERTIES if p in names] + sorted(names - set(PROPERTIES))


def _env_rows(env: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not isinstance(env, Mapping):
        return []
    labels = [("gpu_name", "GPU"), ("compute_capability", "SM"), ("gpu_count", "GPUs"), ("driver", "driver"),
              ("cuda", "CUDA"), ("torch", "torch"), ("triton", "triton"), ("flashinfer", "flashinfer"),
              ("hypothesis", "hypothesis"), ("python", "python"), ("device", "device"),
              ("interpreter", "Triton interpreter")]
    rows = []
    for key, label in labels:
        if key in env:
            v = env[key]
            if key == "compute_capability" and isinstance(v, int):
                v = f"SM{v} ({v // 10}.{v % 10})"
            rows.append((label, "–" if v is None else str(v)))
    rows += [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in env.items()
             if k not in dict(labels)]
    return rows


def _worker_rows(session: Mapping | None, records: list[dict]) -> list[dict[str, Any]]:
    workers: dict[str, Any] = dict(session.get("workers") or {}) if isinstance(session, Mapping) else {}
    by_worker: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_worker[str(r.get("worker", "?"))].append(r)
    rows = []
    for name in sorted(set(workers) | set(by_worker), key=lambda w: natural_key(Path(w))):
        info = workers.get(name) if isinstance(workers.get(name), Mapping) else {}
        env = info.get("environment") if isinstance(info.get("environment"), Mapping) else {}
        cc = env.get("compute_capability")
        gpu = info.get("gpu")
        rows.append({"name": name, "gpu": "–" if gpu is None else gpu, "gpu_name": env.get("gpu_name") or env.get("device")
                     or "–", "sm": f"SM{cc}" if cc else "–", "counts": _counts(by_worker.get(name, []))})
    return rows


def _failure_view(idx: int, rec: Mapping | None, case: "Case | None", case_ref: str | None,
                  warnings: list[str]) -> dict[str, Any]:
    """What the template shows of one failure (a record, its case file, or both)."""
    rec = rec or {}
    measure = rec.get("measure") if isinstance(rec.get("measure"), Mapping) else {}
    observed = case.observed if case is not None else {}
    problem = rec.get("problem") or (case.problem.to_dict() if case is not None else None)
    poison = rec.get("poison") or (case.poison.to_dict() if case is not None else None)
    details = []
    for key in ("max_err_units", "max_err_abs"):
        v = measure.get(key, observed.get(key))
        if v is not None:
            details.append((key, _fmt_num(v)))
    for key in ("violations", "nonfinite_violations", "accepted_overflow"):
        v = measure.get(key, observed.get(key))
        if isinstance(v, int) and not isinstance(v, bool) and (v or key == "violations"):
            details.append((key, str(v)))
    for key in ("nan_rows", "changed_rows", "changed_cols"):
        v = measure.get(key, observed.get(key))
        if v:
            shown = ", ".join(str(x) for x in list(v)[:24]) + (f" … ({len(v)} in all)" if len(v) > 24 else "")
            details.append((key, shown))
    for key in ("argmax", "region", "poison_kind", "classification"):
        v = measure.get(key, observed.get(key))
        if v is not None:
            details.append((key, str(v)))
    findings = measure.get("findings") or (observed.get("sanitizer") or {}).get("findings") or []
    if isinstance(findings, list) and findings:  # compute-sanitizer findings (harness.sanitizer)
        for f in findings[:8]:
            try:
                details.append(("finding", Finding.from_dict(f).line()))
            except (TypeError, ValueError, AttributeError, KeyError):
                warnings.append(f"{rec.get('_source', case_ref)}: an unreadable sanitizer finding was left out")
        if len(findings) > 8:
            details.append(("finding", f"… {len(findings) - 8} more"))
    grid_html: Markup | None = None
    grid_note = ""
    if "grid" in measure and idx > MAX_GRIDS:
        grid_note = f"output picture left out: only the first {MAX_GRIDS} failures get one"
    elif "grid" in measure:
        try:
            g = parse_grid(measure["grid"])
            grid_html = grid_svg(g, f"f{idx}", max_width=520)
            steps = "" if g.row_step == g.col_step == 1 else \
                f"; one cell = {g.row_step} row(s) × {g.col_step} column(s)"
            grid_note = (f"output {g.m} × {g.n} real"
                         f"{f' + {g.rows - g.real_rows} padding row(s)' if g.rows > g.real_rows else ''}"
                         f"{f' + {g.cols - g.real_cols} padding column(s)' if g.cols > g.real_cols else ''}{steps}")
        except GridError as exc:
            warnings.append(f"{rec.get('_source', case_ref)}: measure.grid not drawn: {exc}")
    experts = _expert_view(rec.get("experts") if rec.get("experts") is not None else observed.get("experts"))
    replay = case.replay if case is not None else None
    rerun = None
    if replay is None and rec.get("test"):
        rerun = f"python -m pytest {shlex.quote(str(rec['test']))}"
    summary = rec.get("reason") or (observed.get("summary") if observed else "") or "(no summary recorded)"
    return {
        "idx": idx, "anchor": f"f{idx}",
        "outcome": rec.get("outcome", "fail"),
        "backend": rec.get("backend") or (case.backend if case is not None else "?"),
        "property": rec.get("property") or (case.property if case is not None else "?"),
        "level": rec.get("level") or (case.level if case is not None else ""),
        "test": rec.get("test"), "source": rec.get("_source"), "time": rec.get("time"),
        "summary": summary, "problem": _problem_text(problem), "poison": _poison_text(poison),
        "a_layout": rec.get("a_layout") or (case.a_layout.value if case is not None and case.a_layout else None),
        "details": details, "grid": grid_html, "grid_note": grid_note,
        "case_ref": case_ref, "case_id": case.id if case is not None else None,
        "expect": case.expect if case is not None else None,
        "tracks": case.tracks if case is not None else None,
        "note": case.note if case is not None else None,
        "replay": replay, "rerun": rerun, "from_record": bool(rec), "experts": experts,
    }


def _expert_view(rows: Any) -> list[dict[str, Any]] | None:
    """The per-expert table of a grouped failure (``experts`` of its record or case file, written by
    :func:`harness.grouped.records.expert_rows`), as display strings; None when there is none."""
    if not isinstance(rows, list) or not rows:
        return None
    out = []
    for r in rows:
        if not isinstance(r, Mapping):
            continue
        ids = [t for t in r.get("token_ids") or [] if isinstance(t, int)]
        n = r.get("tokens") if isinstance(r.get("tokens"), int) else len(ids)
        bad = [t for t in r.get("bad_tokens") or [] if isinstance(t, int)]
        padding = [f"{x.get('region')}=0x{int(x.get('byte') or 0):02X} ({poison_kind(int(x.get('byte') or 0))})"
                   for x in r.get("padding") or [] if isinstance(x, Mapping)]
        err = r.get("max_err_units")
        out.append({
            "expert": r.get("expert", "?"), "role": r.get("role") or "",
            "tokens": n, "token_ids": ", ".join(map(str, ids)) + (" …" if n > len(ids) else ""),
            "rows": f"{r.get('rows', '–')} / {r.get('scale_rows', '–')}", "row_align": r.get("row_align", "–"),
            "max_err": "–" if err is None else _fmt_num(err),
            "over": json_number(err) is not None and not json_number(err) <= 1.0,
            "bad_tokens": ", ".join(map(str, bad)) or "–",
            "padding": ", ".join(padding) or "none",
            "disagrees": bool(r.get("disagrees")),
        })
    return out or None


_TIE_COUNTS = (("tie_differences", "codes one step apart at e2m1 ties"),
               ("scale_tie_differences", "block scales one step apart at e4m3 ties"),
               ("negative_zero_differences", "sign of a zero code"))


def _count(v: Any) -> int:
    x = json_number(v)
    return int(x) if x is not None and math.isfinite(x) else 0


def _plot_axes(problem: Mapping[str, Any]) -> tuple[int | None, int | None, str]:
    """The error plots' axes for one record's problem: (rows, K, shape text).  Dense problems give
    ``m`` and ``k``; grouped (MoE) GEMMs ``tokens`` and ``k``; fused MoE layers ``tokens`` and
    ``hidden`` (the K of FC1, the first of their two GEMMs; FC2's is ``intermediate``)."""
    def whole(key: str) -> int | None:
        v = problem.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    if whole("m") is not None:
        return whole("m"), whole("k"), f"m={problem.get('m')} n={problem.get('n')} k={problem.get('k')}"
    if whole("hidden") is not None:
        return (whole("tokens"), whole("hidden"),
                f"tokens={problem.get('tokens')} experts={problem.get('experts')} hidden={problem.get('hidden')} "
                f"intermediate={problem.get('intermediate')}")
    return (whole("tokens"), whole("k"),
            f"tokens={problem.get('tokens')} experts={problem.get('experts')} n={problem.get('n')} k={problem.get('k')}")


def difference_rows(records: list[dict]) -> list[dict]:
    """Per backend: the counted (not failed) differences from the reference bytes, by name, over the
    quantizer_agreement / checkpoint_convention records that passed or failed."""
    rows: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        measure = r.get("measure") if isinstance(r.get("measure"), Mapping) else {}
        if r.get("outcome") not in ("pass", "fail") or "tie_differences" not in measure:
            continue
        b = str(r.get("backend", "?"))
        rows[b]["records"] += 1
        for key, _ in _TIE_COUNTS:
            rows[b][key] += _count(measure.get(key))
        declared = measure.get("declared_differences")
        if isinstance(declared, Mapping):
            for name, n in declared.items():
                rows[b][f"declared:{name}"] += _count(n)
        elif _count(measure.get("declared_scale_floor")):
            rows[b]["declared:subnormal_scale_floor"] += _count(measure.get("declared_scale_floor"))
    out = []
    for b in sorted(rows):
        c = rows[b]
        items = [(label, c[key]) for key, label in _TIE_COUNTS]
        items += [(f"declared: {k.split(':', 1)[1]}", v) for k, v in sorted(c.items()) if k.startswith("declared:")]
        out.append({"backend": b, "records": c["records"], "items": items})
    return out


def _outcome_cell(c: Counter, extras: tuple[str, ...] = ()) -> dict[str, str]:
    """A table cell of case counts by outcome (``"3 pass, 1 fail"``, "–" when empty), coloured by the
    worst outcome, with the counts of ``extras`` (keys of ``c`` besides the outcomes) in brackets."""
    counts = {k: c.get(k, 0) for k in OUTCOMES}
    text = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    extra = ", ".join(f"{c[k]} {k}" for k in extras if c.get(k))
    return {"cls": _cell_class(counts), "text": text + (f" ({extra})" if extra else "") or "–"}


EMPTY_BATCH = "empty batch (m=0)"
"""The input-layout table's column of empty batches."""


DIMENSION_COLS = ("static scale, ratio < 1", "ratio = 1", "ratio in (1, 2]", "ratio > 2", "merged partitions",
                  "CUDA graph replay")
"""Columns of the deployment-dimension table: the calibration ratio of a static activation scale
(runtime amax / calibrated amax, ``problem.calibration``; above 1 the quantizer must saturate),
merged-partition layers (``problem.partitions``) and cases run under CUDA graph capture and replay."""


def dimension_rows(records: list[dict]) -> list[dict]:
    """Rows of the deployment-dimension table: per backend, the executed cases (by outcome) in each
    of :data:`DIMENSION_COLS`; a case counts in every column it belongs to."""
    cells: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for r in records:
        if r.get("outcome") not in OUTCOMES or r.get("outcome") == "skip":
            continue
        p = r.get("problem") if isinstance(r.get("problem"), Mapping) else {}
        cols = []
        c = p.get("calibration")
        if isinstance(c, (int, float)) and not isinstance(c, bool):
            cols.append(DIMENSION_COLS[0] if c < 1 else DIMENSION_COLS[1] if c == 1 else
                        DIMENSION_COLS[2] if c <= 2 else DIMENSION_COLS[3])
        if p.get("partitions"):
            cols.append(DIMENSION_COLS[4])
        if r.get("property") == "graph_replay":
            cols.append(DIMENSION_COLS[5])
        for col in cols:
            cells[str(r.get("backend", "?"))][col][str(r.get("outcome"))] += 1
    return [{"backend": b, "cells": [_outcome_cell(cells[b][col]) for col in DIMENSION_COLS]} for b in sorted(cells)]


def input_layout_rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    """(columns, rows) of the input memory layout table: per backend and non-contiguous
    ``problem.input_layout`` (and empty batches), the executed cases by outcome, how many of those
    passed because the backend raised on the view, which is allowed (``measure.refused``; not the
    summary's "refused", an example declined before it ran), and how many passed with bits that differ within the reference's
    bound (``measure.bitwise`` false).  Records without ``input_layout`` are contiguous."""
    cols = [lay for lay in INPUT_LAYOUTS if lay != "contiguous"] + [EMPTY_BATCH]
    cells: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for r in records:
        p = r.get("problem") if isinstance(r.get("problem"), Mapping) else {}
        layout = p.get("input_layout") or "contiguous"
        col = EMPTY_BATCH if p.get("m") == 0 else (None if layout == "contiguous" else str(layout))
        if col is None:
            continue
        measure = r.get("measure") if isinstance(r.get("measure"), Mapping) else {}
        c = cells[str(r.get("backend", "?"))][col]
        c[str(r.get("outcome"))] += 1
        c["raised, allowed"] += "refused" in measure
        c["within bound"] += measure.get("bitwise") is False and r.get("outcome") == "pass"
    rows = [{"backend": b, "cells": [_outcome_cell(cells[b].get(col, Counter()), ("raised, allowed", "within bound"))
                                     for col in cols + sorted(set(cells[b]) - set(cols))]}
            for b in sorted(cells)]
    return cols, rows


def build_context(run: RunData) -> dict[str, Any]:
    """The template's variables for one parsed results directory (see ``report.html.j2``).

    Problems found on the way (totals that disagree with session.json, missing case files, records
    that name no poisoned region, grids that cannot be drawn) go into ``warnings``, never raise."""
    all_records = run.records
    warnings = list(run.warnings)
    session = run.session or {}
    test_skips = [r for r in all_records if is_test_skip(r)]
    records = [r for r in all_records if not is_test_skip(r)]  # executed cases only
    totals = _counts(records)  # cases (a "skip" here is an example the backend refused)

    # the run's time
    started, finished = _parse_time(session.get("started")), _parse_time(session.get("finished"))
    rec_times = sorted(t for t in (_parse_time(r.get("time")) for r in all_records) if t is not None)
    if started is None and rec_times:
        started = rec_times[0]
    duration = _duration((finished - started).total_seconds()) if started and finished else None
    session_totals = session.get("totals") if isinstance(session.get("totals"), Mapping) else None
    if session_totals:
        read = _counts(all_records)
        differs = {k: (session_totals.get(k, 0), read[k]) for k in OUTCOMES if session_totals.get(k, 0) != read[k]}
        if differs:
            warnings.append("session.json totals differ from the records read: " + ", ".join(
                f"{k} {a} vs {b}" for k, (a, b) in differs.items()) + " (records lost to a crash or a truncated line?)")

    # backends x properties
    backends = sorted({str(r.get("backend", "?")) for r in all_records})
    styles = series_styles(backends)  # a distinct (colour, marker) per backend, however many
    markers = {b: marker_svg(st) for b, st in styles.items()}
    props = _property_order(str(r.get("property", "?")) for r in all_records)
    by_cell: dict[tuple[str, str], list[dict]] = defaultdict(list)
    skipped_cell: dict[tuple[str, str], list[dict]] = defaultdict(list)
    levels: dict[str, str] = {}
    for r in all_records:
        key = (str(r.get("backend", "?")), str(r.get("property", "?")))
        (skipped_cell if is_test_skip(r) else by_cell)[key].append(r)
        levels.setdefault(str(r.get("backend", "?")), str(r.get("level", "")))

    # failures: records with outcome fail/crash, joined with their case files; unreferenced case files too
    failures = []
    referenced: set[str] = set()
    first_failure: dict[tuple[str, str], str] = {}
    failing = [r for r in records if r.get("outcome") in ("fail", "crash")]
    failing.sort(key=lambda r: (r.get("outcome") == "crash", str(r.get("backend")),
                                props.index(str(r.get("property", "?"))), str(r.get("time"))))
    for r in failing:
        ref = r.get("case_file")
        case = run.cases.get(ref) if isinstance(ref, str) else None
        if isinstance(ref, str):
            referenced.add(ref)
            if case is None:
                warnings.append(f"{r.get('_source')}: case file {ref} is missing or invalid; no replay command")
        view = _failure_view(len(failures) + 1, r, case, ref, warnings)
        failures.append(view)
        first_failure.setdefault((view["backend"], view["property"]), view["anchor"])
    orphans = [(ref, c) for ref, c in run.cases.items() if ref not in referenced]
    for ref, case in orphans:
        failures.append(_failure_view(len(failures) + 1, None, case, ref, warnings))

    # the grouped (MoE) level: per-expert views of its failures, and how many grouped cases ran
    grouped = {"failures": [f for f in failures if f["experts"]],
               "cases": sum(1 for r in records if r.get("level") == "grouped"),
               "backends": sorted({str(r.get("backend")) for r in records if r.get("level") == "grouped"})}

    matrix = []
    for b in backends:
        cells = []
        for p in props:
            c = _counts(by_cell.get((b, p), []))
            skipped = skipped_cell.get((b, p), [])
            cls = _cell_class(c)
            title = f"{b} · {p}: " + ", ".join(f"{v} {'refused' if k == 'skip' else k}" for k, v in c.items() if v)
            if skipped and cls == "empty":
                cls = "skip"
                title = f"{b} · {p}: test skipped: {skipped[0].get('reason') or '(no reason given)'}"
            cells.append({"counts": c, "cls": cls, "link": first_failure.get((b, p)), "title": title,
                          "test_skipped": bool(skipped) and not any(c.values())})
        skips = Counter(str(r.get("reason") or "(no reason given)") for p in props
                        for r in skipped_cell.get((b, p), []) + [x for x in by_cell.get((b, p), [])
                                                                 if x.get("outcome") == "skip"])
        matrix.append({"backend": b, "level": levels.get(b, ""), "marker": markers[b], "cells": cells,
                       "totals": _counts(r for p in props for r in by_cell.get((b, p), [])),
                       "tests_skipped": sum(len(skipped_cell.get((b, p), [])) for p in props),
                       "skip_reasons": skips.most_common()})

    # isolation: backend x region x poison kind
    iso: dict[str, dict[tuple[str, str], list[dict]]] = defaultdict(lambda: defaultdict(list))
    unplaced = 0
    for r in records:
        if r.get("property") in ISOLATION_PROPERTIES:
            key = _isolation_key(r)
            if key is None:
                unplaced += r.get("outcome") != "skip"  # a skip before poisoning names no region
                continue
            iso[str(r.get("backend", "?"))][key].append(r)
    if unplaced:
        warnings.append(f"{unplaced} isolation record(s) name no single poisoned region / poison kind "
                        f"(measure.region, measure.poison_kind); left out of the isolation matrix")
    isolation = []
    for b in sorted(iso):
        regions = list(REGIONS) + sorted({k[0] for k in iso[b]} - set(REGIONS))
        kinds = list(POISON_KINDS) + sorted({k[1] for k in iso[b]} - set(POISON_KINDS))
        rows = []
        for region in regions:
            cells = []
            for kind in kinds:
                recs = iso[b].get((region, kind), [])
                c = _counts(recs)
                props_seen = sorted({str(r.get("property")) for r in recs})
                cells.append({"counts": c, "cls": _cell_class(c),
                              "title": f"{b} · {region} · {kind}: " + (", ".join(
                                  f"{v} {k}" for k, v in c.items() if v) or "not tested")
                              + (f" ({', '.join(props_seen)})" if props_seen else "")})
            rows.append({"region": region, "cells": cells})
        # rows and columns that are empty for every cell carry no information: left out
        keep_cols = [j for j in range(len(kinds)) if any(row["cells"][j]["cls"] != "empty" for row in rows)]
        rows = [{"region": row["region"], "cells": [row["cells"][j] for j in keep_cols]}
                for row in rows if any(row["cells"][j]["cls"] != "empty" for j in keep_cols)]
        isolation.append({"backend": b, "marker": markers.get(b, ""), "kinds": [kinds[j] for j in keep_cols],
                          "rows": rows})

    # differences from the reference quantizer that pass: legitimate rounding choices and the design
    # differences a backend declares (harness.checks.DESIGN_DIFFERENCES), summed per backend
    differences = difference_rows(records)
    layout_cols, layout_rows = input_layout_rows(records)

    # error versus m and K (reference agreement)
    pts_m, pts_k = [], []
    nonfinite = 0
    for r in records:
        if r.get("property") != "reference_agreement" or r.get("outcome") not in ("pass", "fail"):
            continue
        measure = r.get("measure") if isinstance(r.get("measure"), Mapping) else {}
        p = r.get("problem") if isinstance(r.get("problem"), Mapping) else {}
        err = json_number(measure.get("max_err_units"))
        if "max_err_units" not in measure or measure.get("max_err_units") is None:
            continue
        if err is not None and not math.isfinite(err):
            nonfinite += 1
            err = None
        b = str(r.get("backend", "?"))
        rows, k, shape = _plot_axes(p)
        label = f"{b}: {shape} err={_fmt_num(measure.get('max_err_units'))}"
        failed = r.get("outcome") == "fail"
        if rows is not None:
            pts_m.append(Point(rows, err, b, failed, label))
        if k is not None:
            pts_k.append(Point(k, err, b, failed, label))
    plot_backends = sorted({pt.series for pt in pts_m + pts_k})
    plots = None
    if pts_m or pts_k:
        plots = {
            "m": scatter_svg(pts_m, styles, x_label="m (rows; tokens for grouped and MoE)", y_label="max error / bound"),
            "k": scatter_svg(pts_k, styles, x_label="K", y_label="max error / bound"),
            "n_points": len(pts_m), "nonfinite": nonfinite,
            "legend": [(b, markers[b]) for b in plot_backends],
        }

    # Hypothesis
    hyp_cols = ["test", "examples", "passing", "failing", "invalid", "runtime_s", "stop_reason"]
    hypothesis = None
    hypothesis_skipped: list[tuple[str, int]] = []
    if run.hypothesis is not None:
        # a test whose only record is its skip ran no example: counted by reason, not listed
        skipped_tests = {str(r.get("test")): str(r.get("reason") or "(no reason given)") for r in test_skips}
        ran = {str(r.get("test")) for r in records}
        hypothesis, reasons = [], Counter()
        for row in run.hypothesis:
            test = str(row.get("test"))
            if test in skipped_tests and test not in ran:
                reasons[skipped_tests[test]] += 1
                continue
            hypothesis.append([_fmt_cell(row.get(c), c) for c in hyp_cols])
        hypothesis_skipped = reasons.most_common()

    env = session.get("environment") if isinstance(session.get("environment"), Mapping) else None
    total_time = sum(json_number(r.get("duration_s")) or 0.0 for r in records)
    command = session.get("command") if isinstance(session.get("command"), str) else None
    if command is None and session.get("argv"):
        command = shlex.join(["python", "-m", "pytest", *(str(a) for a in session.get("argv") or [])])
    return {
        "title": "NVFP4 harness report",
        "results_dir": str(run.results_dir),
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC") if started else None,
        "finished": finished.strftime("%Y-%m-%d %H:%M:%S UTC") if finished else None,
        "duration": duration, "profile": session.get("profile"),
        "argv": command,
        "totals": totals, "n_records": len(records), "n_test_skips": len(test_skips),
        "test_time": _duration(total_time),
        "outcome_bar": outcome_bar_svg(totals), "outcome_colors": OUTCOME_COLORS,
        "environment": _env_rows(env), "workers": _worker_rows(run.session, records),
        "properties": props, "matrix": matrix,
        "isolation": isolation, "regions": REGIONS, "outcomes": OUTCOMES,
        "failures": failures, "grid_legend": grid_legend_svg("legend"),
        "differences": differences, "grouped": grouped,
        "input_layout_cols": layout_cols, "input_layouts": layout_rows,
        "dimension_cols": DIMENSION_COLS, "dimensions": dimension_rows(records),
        "accepted_overflow": accepted_overflow(records),
        "plots": plots,
        "hypothesis": hypothesis, "hypothesis_cols": hyp_cols, "hypothesis_skipped": hypothesis_skipped,
        "n_cases": len(run.cases),
        "tracking": _tracking_view(run.tracking),
        "verified": _verified_view(all_records, warnings),
        "warnings": warnings,
    }


def _tracking_view(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The regression cases' upstream-tracking verdicts, transitions first (None: no regression run)."""
    from harness import tracking

    if not rows:
        return None
    counts = [(s, sum(1 for r in rows if r.get("state") == s)) for s in tracking.STATES]
    return {"counts": [(s, n) for s, n in counts if n],
            "transitions": [r for r in rows if r.get("state") in tracking.TRANSITIONS],
            "rows": rows, "loud": tracking.TRANSITIONS}


def _verified_view(records: list[dict], warnings: list[str]) -> list[dict[str, Any]]:
    """For each backend of the run: where the project last saw it compute (bench/verified.json)."""
    from harness import verified

    try:
        record = verified.load()
    except verified.VerifiedFileError as exc:
        warnings.append(f"verification record: {exc}")
        record = {}
    names = sorted({str(r.get("backend")) for r in records if r.get("backend")})
    return [{"backend": n, "computed": verified.ever_computed(n, record), "text": verified.describe(n, record)}
            for n in names]


def _fmt_cell(v: Any, col: str) -> str:
    if v is None:
        return "–"
    if col == "runtime_s" and json_number(v) is not None:
        return f"{json_number(v):.2f}"
    return str(v)
