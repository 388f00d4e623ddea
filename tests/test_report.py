"""The HTML report: loading a results directory, the rendered content, and a headless-browser check
that the page renders and loads nothing from the network."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from markupsafe import escape

from harness.cases import Case, save_case
from harness.problem import GemmProblem, Poison
from harness.report import render_report
from harness.results import load_results, load_run
from harness.report.svg import GridError, parse_grid

CHROMIUM = Path(os.environ.get("NVFP4_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[1]

ENV_H200 = {"device": "cuda", "gpu_name": "NVIDIA H200", "compute_capability": 90, "gpu_count": 2,
            "driver": "580.65.06", "cuda": "13.0", "torch": "2.11.0+cu130", "triton": "3.6.0",
            "flashinfer": "0.7.2.post1", "hypothesis": "6.140.0", "python": "3.12.3", "interpreter": False}
HOSTILE = '<img src="https://evil.example/x.png" onerror="alert(1)">'
"""A skip reason carrying markup: the report must show it as text."""


# ----------------------------------------------------------------------------------------------
# A small synthetic results directory
# ----------------------------------------------------------------------------------------------

def _record(worker: str, n: int, backend: str, prop: str, outcome: str, *, m: int = 7, n_: int = 48, k: int = 464,
            poison: dict | None = None, measure: dict | None = None, reason: str = "", level: str = "gemm",
            a_layout: str | None = "128x4", case_file: str | None = None) -> dict:
    rec = {
        "schema": "nvfp4-harness/result/1", "time": f"2026-11-21T20:{n // 60:02d}:{n % 60:02d}Z", "worker": worker,
        "test": f"properties/test_gemm.py::test_{prop}[{backend}-{n}]", "backend": backend, "level": level,
        "property": prop, "outcome": outcome, "reason": reason,
        "problem": {"m": m, "n": n_, "k": k, "out_dtype": "bfloat16", "in_dtype": "bfloat16",
                    "distribution": "normal", "seed": n, "origin": None, "batch": None},
        "poison": {"m_pad": 0, "n_pad": 0, "k_tail": 0, "data": 0, "stale_memory": False, **(poison or {})},
        "a_layout": a_layout, "measure": measure or {}, "duration_s": 0.05 + n * 0.001,
    }
    if case_file:
        rec["case_file"] = case_file
    return rec


def _nan_rows_grid() -> dict:
    """m=7 real rows + 1 padding row (8x4 layout), n=48 real columns + 16 padding columns: rows 0-3 NaN."""
    cells = []
    for i in range(8):
        row = []
        for j in range(64):
            row.append(3 if i >= 7 or j >= 48 else 2 if i < 4 else 1 if (i == 5 and j % 7 == 0) else 0)
        cells.append(row)
    return {"rows": 8, "cols": 64, "real_rows": 7, "real_cols": 48, "row_step": 1, "col_step": 1, "cells": cells}


def build_results_dir(root: Path) -> dict:
    """Write a results directory as two xdist workers would (gw1 dies mid-line) and return facts about it."""
    root.mkdir(parents=True, exist_ok=True)
    session = {"schema": "nvfp4-harness/session/1", "started": "2026-11-21T20:00:00Z",
               "finished": "2026-11-21T20:12:34Z", "argv": ["/repo/properties", "-p", "no:cacheprovider"],
               "command": "nvfp4-harness fuzz --profile ci -n 2",
               "profile": "ci", "environment": ENV_H200,
               "workers": {"gw0": {"gpu": 0, "environment": ENV_H200}, "gw1": {"gpu": 1, "environment": ENV_H200}},
               "totals": {"pass": 0, "fail": 0, "skip": 0, "crash": 0}}

    case = Case.create(
        backend="triton-emu-8x4", level="gemm", property="row_isolation",
        problem=GemmProblem(m=7, n=48, k=464, seed=3, origin="Nemotron-3-Nano-30B-A3B moe 1856 / TP4 row"),
        poison=Poison(m_pad=0x7F), a_layout="8x4", environment=ENV_H200,
        observed={"summary": "real rows 0-3 NaN when the m-padding scales are NaN (8x4 layout)",
                  "max_err_units": float("inf"), "nan_rows": [0, 1, 2, 3], "changed_rows": [0, 1, 2, 3, 5],
                  "changed_cols": [], "region": "m_pad"},
        digest="c0" * 32, expect="xfail",
        tracks="vLLM #37563 (https://github.com/vllm-project/vllm/issues/37563)")
    case_path = save_case(case, root / "cases" / f"{case.id}.json")
    case_ref = f"cases/{case_path.name}"

    gw0, gw1 = [], []
    n = 0
    errs = [2e-3, 8e-3, 0.03, 0.11, 0.4, 0.02, 5e-3, 0.07]
    for i, (m, k) in enumerate([(1, 16), (2, 64), (7, 464), (16, 1024), (33, 4096), (128, 256), (1000, 928)]):
        for b, scale in (("triton-emu-128x4", 1.0), ("torch-emu", 0.5)):
            n += 1
            gw0.append(_record("gw0", n, b, "reference_agreement", "pass", m=m, k=k,
                               measure={"max_err_units": errs[i] * scale, "max_err_abs": errs[i] * 1e-2}))
    n += 1
    gw0.append(_record("gw0", n, "triton-emu-8x4", "reference_agreement", "fail", m=5, k=2048, a_layout="8x4",
                       reason="max error 3.2 bound units at (3, 17)",
                       measure={"max_err_units": 3.2, "argmax": [3, 17]}))
    n += 1
    gw0.append(_record("gw0", n, "triton-emu-8x4", "reference_agreement", "fail", m=3, k=64, a_layout="8x4",
                       reason="NaN in real rows", measure={"max_err_units": "Infinity", "nan_rows": [0]}))
    # isolation: the 128x4 backend is clean; the 8x4 one leaks m-padding scales into real rows
    for b in ("triton-emu-128x4", "triton-emu-8x4"):
        for byte, kind in ((0x7F, "nan"), (0x7E, "max"), (0x00, "zero"), (0x38, "finite")):
            n += 1
            leaky = b == "triton-emu-8x4" and kind in ("nan", "max")
            if leaky and kind == "nan":
                gw0.append(_record("gw0", n, b, "row_isolation", "fail", a_layout="8x4", poison={"m_pad": byte},
                                   reason="real rows 0-3 NaN when the m-padding scales are NaN (8x4 layout)",
                                   measure={"region": "m_pad", "poison_kind": kind, "nan_rows": [0, 1, 2, 3],
                                            "changed_rows": [0, 1, 2, 3, 5], "grid": _nan_rows_grid()},
                                   case_file=case_ref))
            else:
                gw0.append(_record("gw0", n, b, "row_isolation", "fail" if leaky else "pass", poison={"m_pad": byte},
                                   reason="rows 0-3 changed by 612 units" if leaky else "",
                                   measure={"region": "m_pad", "poison_kind": kind,
                                            "changed_rows": [0, 1, 2, 3] if leaky else []}))
            n += 1
            gw1.append(_record("gw1", n, b, "column_isolation", "pass", poison={"n_pad": byte},
                               measure={"region": "n_pad", "poison_kind": kind}))
        n += 1
        gw1.append(_record("gw1", n, b, "k_tail", "pass", k=464, poison={"k_tail": 0x7F},
                           measure={"region": "k_tail", "poison_kind": "nan", "classification": "masks_tail"}))
    n += 1
    gw1.append(_record("gw1", n, "vllm-linear", "row_isolation", "pass", level="linear", a_layout=None,
                       poison={"stale_memory": True}, measure={"region": "stale_memory", "poison_kind": "stale"}))
    # skips and a crash
    for prop in ("reference_agreement", "row_isolation", "k_tail"):
        n += 1
        gw1.append(_record("gw1", n, "flashinfer-cutlass", prop, "skip",
                           reason="needs SM100, SM103, SM110, SM120, SM121; this GPU (NVIDIA H200) is SM90"))
    n += 1
    gw1.append(_record("gw1", n, "flashinfer-cutlass", "determinism", "skip", reason=HOSTILE))
    n += 1
    gw1.append(_record("gw1", n, "scaled-mm", "reference_agreement", "crash",
                       reason="RuntimeError: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul"))

    lines0 = "".join(json.dumps(r) + "\n" for r in gw0)
    lines1 = "".join(json.dumps(r) + "\n" for r in gw1)
    (root / "results-gw0.jsonl").write_text(lines0)
    # gw1 died while writing its last record: half a line, no newline
    partial = json.dumps(_record("gw1", n + 1, "scaled-mm", "row_isolation", "fail"))[:90]
    (root / "results-gw1.jsonl").write_text(lines1 + partial)

    records = gw0 + gw1
    totals = {k: sum(r["outcome"] == k for r in records) for k in ("pass", "fail", "skip", "crash")}
    session["totals"] = totals
    (root / "session.json").write_text(json.dumps(session, indent=2))
    (root / "hypothesis.json").write_text(json.dumps({"tests": [
        {"test": "properties/test_gemm.py::test_reference_agreement", "examples": 200, "passing": 187,
         "failing": 2, "invalid": 11, "runtime_s": 41.3, "stop_reason": "max_examples"},
        {"test": "properties/test_gemm.py::test_row_isolation", "examples": 120, "passing": 118, "failing": 2,
         "invalid": 0, "runtime_s": 12.75, "stop_reason": "shrunk failure"},
    ]}))
    return {"records": records, "totals": totals, "case": case, "case_ref": case_ref,
            "truncated_line": len(gw1) + 1}


@pytest.fixture
def results(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "results"
    return root, build_results_dir(root)


@pytest.fixture
def report(results, tmp_path: Path) -> tuple[Path, str, dict]:
    root, facts = results
    out = render_report(root, tmp_path / "out" / "report.html")
    return out, out.read_text(encoding="utf-8"), facts


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def test_load_results_skips_the_truncated_line(results) -> None:
    root, facts = results
    records, warnings = load_results(root)
    assert len(records) == len(facts["records"])
    assert [r["test"] for r in records] == [r["test"] for r in facts["records"]]
    assert records[0]["_source"] == "results-gw0.jsonl:1"
    line = facts["truncated_line"]
    assert any(f"results-gw1.jsonl: line {line} is truncated" in w and "skipped" in w for w in warnings), warnings


def test_load_results_reports_corrupt_middle_lines(tmp_path: Path) -> None:
    good = json.dumps(_record("main", 1, "b", "determinism", "pass"))
    (tmp_path / "results-main.jsonl").write_text(f"{good}\nnot json\n[1, 2]\n{{\"schema\": \"other\"}}\n{good}\n")
    records, warnings = load_results(tmp_path)
    assert len(records) == 2
    assert any("line 2 is not valid JSON" in w for w in warnings)
    assert any("results-main.jsonl:3: not a JSON object" in w for w in warnings)
    assert any("results-main.jsonl:4: schema 'other'" in w for w in warnings)


def test_load_results_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results(tmp_path / "nope")


def test_load_run_joins_cases_and_hypothesis(results) -> None:
    root, facts = results
    run = load_run(root)
    assert set(run.cases) == {facts["case_ref"]}
    assert run.cases[facts["case_ref"]].replay.startswith("nvfp4-harness replay ")
    assert [h["examples"] for h in run.hypothesis] == [200, 120]
    assert run.session["profile"] == "ci"


# ----------------------------------------------------------------------------------------------
# The rendered HTML
# ----------------------------------------------------------------------------------------------

def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}"[^>]*>(.*?)</section>', html, re.S)
    assert m, f"section #{sid} missing"
    return m.group(1)


def test_report_summary_and_environment(report) -> None:
    _, html, facts = report
    summary = _section(html, "summary")
    t = facts["totals"]
    # cases and skipped tests are different units: counted apart (these skips ran no example)
    assert f'<div class="card total"><div class="big">{sum(t.values()) - t["skip"]}</div>cases run</div>' in summary
    for k, label in (("pass", "passed"), ("fail", "failed"), ("crash", "crashed")):
        assert f'<div class="card {k}"><div class="big">{t[k]}</div>{label}</div>' in summary
    assert '<div class="card skip"><div class="big">0</div>refused</div>' in summary
    assert f'<div class="big">{t["skip"]}</div>tests skipped</div>' in summary and t["skip"] == 4
    # the command row shows what the user typed, not pytest's argv
    assert '<td class="mono">nvfp4-harness fuzz --profile ci -n 2</td>' in summary
    assert "no:cacheprovider" not in summary
    assert "2026-11-21 20:00:00 UTC" in summary and "12 min 34 s" in summary
    env = _section(html, "environment")
    for text in ("NVIDIA H200", "SM90 (9.0)", "580.65.06", "2.11.0+cu130", "3.6.0", "0.7.2.post1"):
        assert text in env
    assert re.search(r'<td class="mono">gw1</td><td class="num">1</td><td>NVIDIA H200</td><td>SM90</td>', env)


def test_report_outcome_matrix(report) -> None:
    _, html, _ = report
    matrix = _section(html, "matrix")
    table = re.search(r'<table class="matrix" id="outcome-matrix">(.*?)</table>', matrix, re.S).group(1)
    assert re.search(r'<div class="scroll-x">\s*<table class="matrix" id="outcome-matrix">', matrix)
    rows = {re.search(r'</svg>([^<]+?) <span class="level">', r).group(1): r
            for r in re.findall(r"<tr>\s*<td class=\"backend\">.*?</tr>", table, re.S)}
    assert set(rows) == {"flashinfer-cutlass", "scaled-mm", "torch-emu", "triton-emu-128x4", "triton-emu-8x4",
                         "vllm-linear"}
    headers = re.findall(r'<th class="prop">(.*?)</th>', table)
    assert headers[:4] == ["reference_<wbr>agreement", "row_<wbr>isolation", "column_<wbr>isolation", "k_<wbr>tail"]
    # 8x4 row_isolation: 2 pass, 2 fail, linked to the first failing case
    cells = re.findall(r"<td class=\"cell[^\"]*\"[^>]*>.*?</td>", rows["triton-emu-8x4"], re.S)
    row_iso = cells[headers.index("row_<wbr>isolation")]
    assert 'class="cell fail"' in row_iso and 'href="#f' in row_iso
    assert '<span class="n pass">2</span><span class="n fail">2</span>' in row_iso
    assert 'class="cell crash"' in rows["scaled-mm"]
    assert 'class="cell skip skipped-test"' in rows["flashinfer-cutlass"] and ">skipped</td>" in rows["flashinfer-cutlass"]
    assert '<span class="muted">4 skipped</span>' in rows["flashinfer-cutlass"]
    # skip reasons, deduplicated with a count, and hostile text escaped
    assert "this GPU (NVIDIA H200) is SM90 <span class=\"count\">× 3</span>" in matrix
    assert HOSTILE not in html
    assert "&lt;img src=&#34;https://evil.example/x.png&#34;" in matrix


def test_report_isolation_matrix(report) -> None:
    _, html, _ = report
    iso = _section(html, "isolation")
    table = re.search(r'<table class="isolation" id="iso-triton-emu-8x4">(.*?)</table>', iso, re.S).group(1)
    # only the poison kinds and regions this backend was tested with: no always-empty row or column
    assert [h for h in re.findall(r"<th>(\w+)</th>", table)] == ["nan", "max", "zero", "finite"]
    rows = dict(re.findall(r'<tr><td class="mono">(\w+)</td>(.*?)</tr>', table, re.S))
    assert list(rows) == ["m_pad", "n_pad", "k_tail"]
    m_pad = re.findall(r"<td class=\"cell (\w+)\"", rows["m_pad"])
    assert m_pad == ["fail", "fail", "pass", "pass"]
    assert re.findall(r"<td class=\"cell (\w+)\"", rows["n_pad"]) == ["pass"] * 4
    assert re.findall(r"<td class=\"cell (\w+)\"", rows["k_tail"]) == ["pass", "empty", "empty", "empty"]
    assert 'id="iso-vllm-linear"' in iso  # stale-memory poisoning of the linear-level backend
    stale = re.search(r'id="iso-vllm-linear">(.*?)</table>', iso, re.S).group(1)
    assert re.findall(r"<th>(\w+)</th>", stale) == ["stale"]
    assert re.search(r'stale_memory</td><td class="cell pass"', re.sub(r"\n\s*", "", stale))


def test_report_failures_with_replay_and_grid(report) -> None:
    _, html, facts = report
    failures = _section(html, "failures")
    cards = re.findall(r'<details class="failure (\w+)" id="(f\d+)"', failures)
    # 4 failing records (2 reference, 2 row isolation) and 1 crash; the case file is referenced
    assert sorted(o for o, _ in cards) == ["crash", "fail", "fail", "fail", "fail"]
    card = re.search(r'<details class="failure fail" id="f\d+"[^>]*>((?:(?!</details>).)*?'
                     r'real rows 0-3 NaN(?:(?!</details>).)*)</details>', failures, re.S).group(1)
    replay = facts["case"].replay
    assert replay.startswith("nvfp4-harness replay ") and facts["case_ref"].split("/")[1] in replay
    assert f'<pre class="cmd replay">{replay}</pre>' in card
    assert "known: xfail" in card and "vLLM #37563" in card
    assert "m=7 n=48 k=464" in card and "m_pad=0x7F (nan)" in card
    assert '<svg class="grid"' in card and 'fill="url(#hatch-f' in card  # padding hatched
    assert "stroke-dasharray" in card  # the real/padding separator
    assert "output 7 × 48 real + 1 padding row(s) + 16 padding column(s)" in card
    nan_path = re.search(r'<path d="([^"]*)" fill="#dc2626"/>', card).group(1)
    assert nan_path.count("M") == 4 and "h48v1" in nan_path  # one run of NaN cells per NaN row
    # a failure without a case file offers the test re-run instead
    assert '<pre class="cmd rerun">python -m pytest &#39;properties/test_gemm.py::test_reference_agreement' in failures
    assert "CUBLAS_STATUS_NOT_SUPPORTED" in failures
    assert '<svg class="legend"' in failures


def _overflow_results(root: Path) -> dict:
    """A results directory with one reference-agreement failure whose fp16 output holds three
    correctly overflowed infinities and one finite output outside the bound, judged by
    harness.checks, and one passing result with five accepted overflows."""
    import torch

    from harness.checks import reference_agreement
    from harness.oracle import Reference, overflow_threshold

    t = overflow_threshold(torch.float16)
    value = torch.full((8, 64), 100.0, dtype=torch.float64)
    bound = torch.full((8, 64), 1.0, dtype=torch.float64)
    out = value.to(torch.float16)
    for i, j in ((0, 3), (2, 40), (6, 10)):
        value[i, j], bound[i, j], out[i, j] = t - 0.5, 1.0, float("inf")
    out[5, 20] = 200.0
    res = reference_agreement(out, Reference(value, value.abs(), 16), bound, torch.float16)
    assert not res.ok
    root.mkdir(parents=True)
    recs = [_record("gw0", 1, "torch-emu", "reference_agreement", "fail", m=8, n_=64, reason=res.summary,
                    measure=res.measure),
            _record("gw0", 2, "torch-emu", "reference_agreement", "pass",
                    measure={"max_err_units": 0.5, "violations": 0, "accepted_overflow": 5})]
    (root / "results-gw0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return res.measure


def test_report_error_plots_hold_grouped_and_moe_cases(results, tmp_path: Path) -> None:
    """Grouped GEMM cases are plotted at (tokens, k) and fused MoE cases at (tokens, hidden), each
    point's title naming the shape; a dense case keeps (m, k)."""
    root, _ = results
    grouped = _record("gw0", 90, "grouped-triton-emu", "reference_agreement", "pass", level="grouped",
                      measure={"max_err_units": 0.5})
    grouped["problem"] = {"tokens": 37, "experts": 4, "n": 64, "k": 2880, "seed": 1}
    moe = _record("gw0", 91, "moe-triton-emu", "reference_agreement", "fail", level="moe",
                  measure={"max_err_units": 2.5})
    moe["problem"] = {"tokens": 5, "experts": 3, "hidden": 1856, "intermediate": 192, "seed": 2}
    (root / "results-gw9.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (grouped, moe)))
    html = render_report(root, tmp_path / "grouped.html").read_text(encoding="utf-8")
    plots = re.findall(r'<svg class="plot".*?</svg>', _section(html, "errors"), re.S)
    assert len(plots) == 2
    assert all(svg.count("<circle") == 17 for svg in plots)   # the 15 dense points and these two
    assert "tokens=37 experts=4 n=64 k=2880" in plots[0] and "tokens=37 experts=4 n=64 k=2880" in plots[1]
    assert "tokens=5 experts=3 hidden=1856 intermediate=192" in plots[1]
    assert "tokens for grouped and MoE" in plots[0]


def test_report_grid_shows_what_the_property_judged(tmp_path: Path) -> None:
    """The failure card's grid agrees with its summary: one output outside the bound, the accepted
    overflows drawn as such (not as NaN/Inf), and the legend names every cell kind."""
    from harness.report.svg import ACCEPTED, CHANGED, GRID_COLORS, GRID_LABELS, NONFINITE

    measure = _overflow_results(tmp_path / "results")
    html = render_report(tmp_path / "results", tmp_path / "report.html").read_text(encoding="utf-8")
    failures = _section(html, "failures")
    card = re.search(r'<details class="failure fail".*?</details>', failures, re.S).group(0)
    assert "1 of 512 outputs outside the bound (0 of them NaN/Inf)" in card and "3 accepted overflow" in card
    paths = dict((color, d) for d, color in re.findall(r'<path d="([^"]*)" fill="(#[0-9a-f]{6})"/>', card))
    assert GRID_COLORS[NONFINITE] not in paths                  # nothing judged a wrong NaN/Inf
    assert paths[GRID_COLORS[CHANGED]].count("M") == 1          # the one output outside the bound
    assert paths[GRID_COLORS[ACCEPTED]].count("M") == 3         # the three accepted infinities
    assert measure["violations"] == 1 and measure["accepted_overflow"] == 3
    assert re.search(r"<td>accepted_overflow</td><td[^>]*>3</td>", card)
    legend = re.search(r'<svg class="legend".*?</svg>', failures, re.S).group(0)
    for code, label in GRID_LABELS.items():
        assert str(escape(label)) in legend, label
    row = re.search(r'<tr id="accepted-overflow">(.*?)</tr>', html, re.S).group(1)
    assert "8 output(s) in 2 result(s)" in row


def test_report_error_plots(report) -> None:
    _, html, _ = report
    errors = _section(html, "errors")
    plots = re.findall(r'<svg class="plot".*?</svg>', errors, re.S)
    assert len(plots) == 2
    for svg in plots:
        assert "bound = 1" in svg and 'stroke-dasharray="6 4"' in svg
        assert svg.count("<circle") == 15  # 14 passing points and the failing 3.2
        assert "NaN / Inf" in svg  # the infinite error sits in the band above
    assert "(log2)" in plots[0] and "m (rows;" in plots[0] and ">K (log2)" in plots[1]
    for backend in ("torch-emu", "triton-emu-128x4", "triton-emu-8x4"):
        assert backend in errors
    # the plot says why correct backends sit near the bound (output rounding dominates it)
    note = re.search(r'<p class="legend-line" id="bound-note">(.*?)</p>', errors, re.S).group(1)
    assert "rounding" in note and "error_bound" in note


def test_report_hypothesis_and_warnings(report, results) -> None:
    _, html, facts = report
    hyp = _section(html, "hypothesis")
    assert "properties/test_gemm.py::test_row_isolation" in hyp and "shrunk failure" in hyp and "12.75" in hyp
    warn = _section(html, "warnings")
    assert f"results-gw1.jsonl: line {facts['truncated_line']} is truncated" in warn


def test_case_files_without_a_record_are_shown(results, tmp_path: Path) -> None:
    """A case whose record was lost (e.g. in the truncated line) still gets a card; a broken case
    file becomes a warning."""
    root, facts = results
    lost = Case.create(backend="scaled-mm", level="gemm", property="k_tail", problem=GemmProblem(m=4, n=32, k=464),
                       poison=Poison(k_tail=0x7F), environment=ENV_H200,
                       observed={"summary": "NaN from the K-tail scales of the padded k-block"})
    lost_path = save_case(lost, root / "cases" / f"{lost.id}.json")
    (root / "cases" / "broken.json").write_text('{"schema": "nvfp4-harness/case/1", "id": ')
    html = render_report(root, tmp_path / "r.html").read_text()
    failures = _section(html, "failures")
    card = re.search(r'<details class="failure fail" id="f6"[^>]*>(.*?)</details>', failures, re.S).group(1)
    assert "case file only" in card and "scaled-mm · k_tail" in card
    assert "NaN from the K-tail scales" in card and "k_tail=0x7F (nan)" in card
    assert f'<pre class="cmd replay">{lost.replay}</pre>' in card and lost_path.name in lost.replay
    warnings = _section(html, "warnings")
    assert "broken.json: invalid JSON at line 1" in warnings and "not shown" in warnings


def test_report_without_hypothesis_or_session(tmp_path: Path) -> None:
    (tmp_path / "results-main.jsonl").write_text(json.dumps(_record("main", 1, "b", "determinism", "pass")) + "\n")
    html = render_report(tmp_path, tmp_path / "r.html").read_text()
    assert "hypothesis.json is absent" in html
    assert "session.json is missing" in html
    assert "No failures." in html and "No isolation records" in html


def test_bad_grid_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    rec = _record("main", 1, "b", "row_isolation", "fail", measure={"grid": {"cells": [[0, 9]]}})
    (tmp_path / "results-main.jsonl").write_text(json.dumps(rec) + "\n")
    html = render_report(tmp_path, tmp_path / "r.html").read_text()
    assert "measure.grid not drawn: grid.cells holds a value that is not a cell code" in html
    with pytest.raises(GridError, match="same, non-zero length"):
        parse_grid({"cells": [[0, 0], [0]]})


def test_large_grids_are_pooled_keeping_nan() -> None:
    cells = [[0] * 1024 for _ in range(512)]
    cells[300][700] = 2
    g = parse_grid({"cells": cells, "real_rows": 500, "real_cols": 1000})
    assert g.rows * g.cols <= 60_000
    assert any(2 in row for row in g.cells)
    assert g.real_rows < g.rows and g.real_cols < g.cols  # padding still drawn apart


_REMOTE_REF = re.compile(r"""(?:\b(?:src|href|xlink:href|action|poster|srcset|data|formaction)\s*=\s*["']?\s*"""
                         r"""(?:https?:)?//)|(?:url\(\s*["']?\s*(?:https?:)?//)|@import""", re.I)


def test_report_is_self_contained(report) -> None:
    _, html, _ = report
    assert not _REMOTE_REF.findall(html)
    assert "<script" not in html.lower()
    assert "<link" not in html.lower()
    assert "default-src 'none'" in html  # the CSP forbids any fetch even if something slipped in
    assert _REMOTE_REF.findall('<img src="https://x.org/a.png"><div style="background:url(//x.org/b)">')


# ----------------------------------------------------------------------------------------------
# Headless Chromium
# ----------------------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (the CI script "
                                                                  f"installs it: apt-get install chromium)")


def _chromium(tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile, every host name unresolvable, and a net log."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # Chromium's own helper processes share its new session
        proc.communicate()
        pytest.fail(f"chromium did not finish in {timeout} s: {' '.join(cmd)}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def page_requests(netlog: Path) -> list[str]:
    """URLs the page itself asked for, from a Chromium net log (--log-net-log).

    Chromium's own background traffic (update checks, time queries) runs under a null or Google
    network isolation key; requests made on behalf of a file:// page carry the ``file://`` key, so
    those are the page's.  Host resolutions under the page's key count as requests too.
    """
    text = netlog.read_text(encoding="utf-8", errors="replace")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # Chromium killed before closing the array
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    found = []
    for ev in log.get("events", []):
        params = ev.get("params") or {}
        kind = names.get(ev.get("type"))
        key = str(params.get("network_isolation_key", "")) + str(params.get("network_anonymization_key", ""))
        if "file://" not in key:
            continue
        if kind == "URL_REQUEST_START_JOB" and not str(params.get("url", "")).startswith("file:"):
            found.append(str(params.get("url")))
        elif kind == "HOST_RESOLVER_MANAGER_REQUEST":
            found.append(f"dns:{params.get('host')}")
    return found


def _load_in_chromium(tmp: Path, page: Path) -> tuple[str, list[str], list[str]]:
    """Open ``page``: its DOM after loading, the network requests it made, and the browser console
    lines that report a load blocked by the Content-Security-Policy."""
    netlog = tmp / f"{page.stem}.netlog.json"
    proc = _chromium(tmp, f"--log-net-log={netlog}", "--net-log-capture-mode=Everything", "--enable-logging=stderr",
                     "--v=0", "--dump-dom", page.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert netlog.exists(), "chromium wrote no net log"
    blocked = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line and "Content Security Policy" in line]
    return proc.stdout, page_requests(netlog), blocked


REMOTE_PAGE = ('<!DOCTYPE html><html><head>{csp}<link rel="stylesheet" href="https://fonts.example.invalid/a.css">'
               '<style>@font-face{{font-family:x;src:url(http://fonts.example.invalid/x.woff2)}}p{{font-family:x}}'
               '</style></head><body><p>x</p><img src="http://images.example.invalid/a.png"></body></html>')
CSP_META = """<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">"""


@needs_chromium
def test_browser_checks_catch_remote_loads(tmp_path: Path) -> None:
    """Positive controls: the net-log check sees a page's remote loads, and the console check sees the
    loads a Content-Security-Policy blocked."""
    page = tmp_path / "remote.html"
    page.write_text(REMOTE_PAGE.format(csp=""))
    dom, requests, _ = _load_in_chromium(tmp_path, page)
    assert "images.example.invalid" in dom
    assert any("images.example.invalid/a.png" in r for r in requests), requests
    assert any("fonts.example.invalid/a.css" in r for r in requests), requests

    page = tmp_path / "remote-csp.html"
    page.write_text(REMOTE_PAGE.format(csp=CSP_META))
    _, requests, blocked = _load_in_chromium(tmp_path, page)
    assert requests == []
    assert any("images.example.invalid/a.png" in line for line in blocked), blocked


@needs_chromium
def test_report_renders_in_chromium_without_network(report, tmp_path: Path) -> None:
    path, html, facts = report
    dom, requests, blocked = _load_in_chromium(tmp_path, path)
    assert requests == [], f"the report made network requests: {requests}"
    assert blocked == [], f"the report tried loads its Content-Security-Policy blocked: {blocked}"
    # without its CSP the page still asks for nothing: the content itself is self-contained
    bare = tmp_path / "report-without-csp.html"
    bare.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html, count=1))
    assert "Content-Security-Policy" not in bare.read_text()
    _, requests_bare, _ = _load_in_chromium(tmp_path, bare)
    assert requests_bare == [], f"the report without its CSP made network requests: {requests_bare}"

    # the browser parsed the document into the expected elements
    assert 'id="outcome-matrix"' in dom and 'id="iso-triton-emu-8x4"' in dom
    assert dom.count('<svg class="grid"') == html.count('<svg class="grid"') >= 1
    assert dom.count('<svg class="plot"') == 2
    assert facts["case"].replay in dom
    assert f"results-gw1.jsonl: line {facts['truncated_line']} is truncated" in dom
    assert dom.count("<details") == html.count("<details") == 5
    assert 'id="hypothesis-table"' in dom

    shot = tmp_path / "screenshot.png"
    # tall enough for the whole synthetic report (headless screenshots capture the window only)
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,4800", path.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a rendered page, not a blank one
    if os.environ.get("NVFP4_SCREENSHOT"):
        dest = REPO / "reports" / "screenshot.png"
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, dest)


# ----------------------------------------------------------------------------------------------
# A report of many backends: distinct series, collapsed skipped tests, no overflow in a browser
# ----------------------------------------------------------------------------------------------

def build_wide_results_dir(root: Path) -> list[str]:
    """Every registered backend and mutant (40+) x every property of its level, a long failure, and
    tests skipped before any example: the widest report a real run produces."""
    from harness.backends import registry
    from harness.trial import properties_for

    root.mkdir(parents=True, exist_ok=True)
    backends = registry.all_backends(include_mutants=True)
    recs, hyp, n = [], [], 0
    for b in backends:
        for prop in properties_for(b):
            n += 1
            test = f"properties/test_properties.py::test_property[{b.name}::{prop}]"
            if b.name.startswith("flashinfer"):
                r = _record("gw0", n, b.name, prop, "skip", level=b.level, reason="needs SM100+; this GPU is SM90")
                r.update(scope="test", test=test)
                recs.append(r)
                hyp.append({"test": test, "examples": 0, "passing": 0, "failing": 0, "invalid": 0, "runtime_s": 0,
                            "stop_reason": "skipped: needs SM100+"})
                continue
            for i in range(2):
                r = _record("gw0", n * 10 + i, b.name, prop, "pass", level=b.level, m=1 + 37 * i, k=16 << i,
                            measure={"max_err_units": 0.9 - 0.1 * i} if prop == "reference_agreement" else
                            {"region": "m_pad", "poison_kind": "nan"} if prop == "row_isolation" else {},
                            poison={"m_pad": 0x7F} if prop == "row_isolation" else None)
                r.update(scope="case", test=test)
                recs.append(r)
            hyp.append({"test": test, "examples": 2, "passing": 2, "failing": 0, "invalid": 0, "runtime_s": 0.1,
                        "stop_reason": "settings.max_examples=2"})
    long_reason = "max error " + "x".join(str(i) for i in range(200)) + " bound units"
    r = _record("gw0", 99_999, backends[-1].name, "reference_agreement", "fail", reason=long_reason,
                measure={"max_err_units": 3.5})
    r.update(scope="case")
    recs.append(r)
    (root / "results-gw0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    (root / "session.json").write_text(json.dumps({
        "schema": "nvfp4-harness/session/1", "started": "2026-11-21T20:00:00Z", "finished": "2026-11-21T20:01:00Z",
        "command": "nvfp4-harness fuzz --budget 900 " + " ".join(f"--plugin /very/long/path/plugin{i}.py" for i in range(12)),
        "profile": "fuzz", "environment": ENV_H200}))
    (root / "hypothesis.json").write_text(json.dumps(hyp))
    return [b.name for b in backends]


def test_series_styles_are_distinct_for_many_backends() -> None:
    from harness.report.svg import series_styles

    for count in (32, 40, 50, 75):
        names = [f"backend-{i}" for i in range(count)]
        styles = series_styles(names)
        assert len(set(styles.values())) == count, count


def test_wide_report_collapses_skipped_tests_and_encodes_backends(tmp_path: Path) -> None:
    names = build_wide_results_dir(tmp_path / "run")
    assert len(names) >= 32
    html = render_report(tmp_path / "run", tmp_path / "r.html").read_text()
    matrix = _section(html, "matrix")
    markers = re.findall(r'<td class="backend">(<svg class="marker".*?</svg>)', matrix, re.S)
    assert len(markers) == len(names) == len(set(markers))  # one distinct colour + marker per backend
    hyp = _section(html, "hypothesis")
    table = re.search(r'<table id="hypothesis-table">(.*?)</table>', hyp, re.S).group(1)
    skipped = [n for n in names if n.startswith("flashinfer")]
    assert skipped and not any(f"[{n}::" in table for n in skipped)  # collapsed, not ~170 rows
    n_skipped = int(re.search(r"<summary>(\d+) tests skipped before any example", hyp).group(1))
    assert n_skipped == len(re.findall(r'"scope": "test"', (tmp_path / "run" / "results-gw0.jsonl").read_text()))
    assert "settings.max_examples=2" in table  # each run test shows its stop reason


@needs_chromium
@pytest.mark.parametrize("wide", [True, False], ids=["42-backends", "small-run"])
def test_report_has_no_horizontal_overflow_at_1280_and_1920_px(tmp_path: Path, wide: bool) -> None:
    from harness.report.browser import check_overflow

    if wide:
        build_wide_results_dir(tmp_path / "run")
    else:
        build_results_dir(tmp_path / "run")
    page = render_report(tmp_path / "run", tmp_path / "r.html")
    shots = Path(os.environ["NVFP4_REPORT_SCREENSHOTS"]) if os.environ.get("NVFP4_REPORT_SCREENSHOTS") else None
    for check in check_overflow(page, (1280, 1920), screenshots=shots):
        assert check.overflow == [], (check.width, check.overflow)


@needs_chromium
def test_overflow_check_catches_an_overflowing_table(tmp_path: Path) -> None:
    """Positive control: the same report, its matrix without the scroll container and wider than
    the window (as many large counts make it), is caught overflowing its card."""
    from harness.report.browser import check_overflow

    build_wide_results_dir(tmp_path / "run")
    page = render_report(tmp_path / "run", tmp_path / "r.html")
    html = page.read_text()
    assert ".scroll-x { overflow-x:auto; max-width:100%; }" in html
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace(".scroll-x { overflow-x:auto; max-width:100%; }", "")
                      .replace("table.matrix td.cell {", "table.matrix { min-width:1800px; } table.matrix td.cell {"))
    check = check_overflow(broken, (1280,))[0]
    assert any(line.startswith("#matrix") for line in check.overflow), check.overflow
    assert check_overflow(page, (1280,))[0].overflow == []  # and the real page, with them, does not


def test_deployment_dimensions_count_cases_per_bucket() -> None:
    """Static-scale cases land in their calibration-ratio bucket, merged layers and graph-replay cases in
    theirs (a case in several), skipped examples nowhere."""
    from harness.report.view import DIMENSION_COLS, dimension_rows

    def rec(backend, prop, outcome="pass", **problem):
        return {"backend": backend, "property": prop, "outcome": outcome, "problem": {"m": 4, "n": 16, "k": 16, **problem}}

    rows = dimension_rows([
        rec("a", "reference_agreement", calibration=0.5), rec("a", "reference_agreement", calibration=1.0),
        rec("a", "reference_agreement", calibration=1.25), rec("a", "reference_agreement", "fail", calibration=1024.0),
        rec("a", "graph_replay", calibration=2.0, partitions=[8, 8]), rec("a", "reference_agreement"),
        rec("a", "graph_replay", "skip"), rec("b", "reference_agreement")])
    assert [r["backend"] for r in rows] == ["a"]  # b has no case in any dimension
    cells = dict(zip(DIMENSION_COLS, (c["text"] for c in rows[0]["cells"])))
    assert cells == {"static scale, ratio < 1": "1 pass", "ratio = 1": "1 pass", "ratio in (1, 2]": "2 pass",
                     "ratio > 2": "1 fail", "merged partitions": "1 pass", "CUDA graph replay": "1 pass"}
