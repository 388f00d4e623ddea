"""The results directory: what a worker writes is what the readers (finalize, the report) read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.problem import GemmProblem, Poison
from harness.results import (RESULT_SCHEMA, ResultStream, finalize, load_results, load_run, make_record,
                             save_failure_case)
from harness.trial import Outcome, PropertyResult, Trial, json_number, json_safe

TRIAL = Trial("triton-emu-8x4", "reference_agreement", GemmProblem(m=3, n=32, k=64, seed=5, batch=(3,)),
              Poison(m_pad=0x7F), "8x4", 2, "row")
FAILED = Outcome("fail", "2 of 96 outputs outside the bound",
                 PropertyResult("reference_agreement", False, "2 of 96 outputs outside the bound",
                                {"max_err_units": math.inf, "max_err_abs": math.nan, "nan_rows": [1],
                                 "argmax": (1, 2)}),
                 "ab" * 32, 0.25, "8x4")


def _write(root: Path, *outcomes: Outcome, worker: str = "gw0") -> Path:
    stream = ResultStream(root, worker)
    for i, o in enumerate(outcomes):
        stream.write(make_record(TRIAL, o, worker=worker, test=f"t{i}", level="gemm"))
    stream.close()
    return stream.path


def test_a_record_round_trips_with_its_trial_and_non_finite_measures(tmp_path: Path) -> None:
    _write(tmp_path, FAILED, Outcome("pass", ""))
    records, warnings = load_results(tmp_path)
    assert warnings == []
    assert [r["outcome"] for r in records] == ["fail", "pass"]
    rec = records[0]
    assert rec["schema"] == RESULT_SCHEMA and rec["_source"] == "results-gw0.jsonl:1"
    assert Trial.from_dict(rec) == TRIAL  # the record carries the whole trial
    assert rec["measure"]["max_err_units"] == "Infinity" and rec["measure"]["max_err_abs"] == "NaN"
    assert json_number(rec["measure"]["max_err_units"]) == math.inf
    assert math.isnan(json_number(rec["measure"]["max_err_abs"]))
    assert rec["measure"]["argmax"] == [1, 2] and rec["digest"] == "ab" * 32 and rec["duration_s"] == 0.25


def test_the_file_is_standard_json_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, FAILED)
    line = path.read_text().splitlines()[0]
    json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_a_truncated_last_line_is_skipped_with_a_warning_and_the_rest_kept(tmp_path: Path) -> None:
    path = _write(tmp_path, FAILED, Outcome("pass", ""), Outcome("pass", ""))
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # a worker killed while writing its third line
    records, warnings = load_results(tmp_path)
    assert len(records) == 2
    assert len(warnings) == 1 and "line 3 is truncated" in warnings[0]
    assert finalize(tmp_path)["pass"] == 1  # the totals count what was read
    session = json.loads((tmp_path / "session.json").read_text())
    assert session["totals"] == {"pass": 1, "fail": 1, "crash": 0, "skip": 0}
    assert any("truncated" in w for w in session["warnings"])


@pytest.mark.parametrize("spelling, value", [("NaN", math.nan), ("nan", math.nan), ("Infinity", math.inf),
                                             ("inf", math.inf), ("-Infinity", -math.inf), ("-inf", -math.inf)])
def test_every_nan_spelling_already_written_reads_back(tmp_path: Path, spelling: str, value: float) -> None:
    rec = json.loads(json.dumps(json_safe(make_record(TRIAL, FAILED, worker="gw0", test="t", level="gemm"))))
    rec["measure"]["max_err_units"] = spelling  # result streams before 2026-12 wrote str(float): "nan", "inf"
    (tmp_path / "results-gw0.jsonl").write_text(json.dumps(rec) + "\n")
    records, _ = load_results(tmp_path)
    got = json_number(records[0]["measure"]["max_err_units"])
    assert (math.isnan(got) and math.isnan(value)) or got == value


def test_json_number_reads_nothing_else_as_a_number() -> None:
    assert [json_number(v) for v in (None, True, "1.5", "NAN", [1])] == [None] * 5
    assert json_number(3) == 3.0 and json_number(-0.5) == -0.5


def test_json_safe_writes_one_spelling() -> None:
    assert json_safe({1: (math.nan, math.inf, -math.inf, 2.5, None, "x")}) == \
        {"1": ["NaN", "Infinity", "-Infinity", 2.5, None, "x"]}


def test_a_failure_case_is_written_and_read_back_with_the_run(tmp_path: Path) -> None:
    ref = save_failure_case(tmp_path, TRIAL, FAILED, "gemm", {"device": "cpu"})
    _write(tmp_path, FAILED)
    run = load_run(tmp_path)
    case = run.cases[ref]
    assert case.trial() == TRIAL and case.digest == "ab" * 32
    assert case.observed["max_err_units"] == math.inf
    assert any("session.json is missing" in w for w in run.warnings)
