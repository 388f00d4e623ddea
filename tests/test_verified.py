"""The verification record (bench/verified.json): where each backend was last seen to compute."""

from __future__ import annotations

from html import unescape as html_unescape

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli, verified
from harness import results as records
from harness.backends import registry
from harness.grouped import registry as grouped_registry
from harness.env import current
from harness.problem import GemmProblem
from harness.trial import Outcome, Trial

REPO = Path(__file__).resolve().parents[1]
NEVER_COMPUTED_ON_ANY_GPU = ["flashinfer-cutlass", "flashinfer-trtllm", "flashinfer-auto", "torch-scaled-mm",
                             "triton-dot-scaled"]


def test_the_projects_record_loads_and_says_never_run_where_nothing_computed():
    record = verified.load()
    assert record, "bench/verified.json is missing or empty"
    # the record holds dense and grouped (MoE) backends alike: `record-verified` reads both levels' results
    names = {b.name for b in registry.all_backends()} | {b.name for b in grouped_registry.all_backends()}
    assert set(record) <= names, f"entries for unknown backends: {set(record) - names}"
    for name in names:
        text = verified.describe(name, record)
        assert text.startswith("last run: ") == verified.ever_computed(name, record), name
        if not verified.ever_computed(name, record):
            assert text.startswith("never run: the project has not seen it compute"), name
    for name in NEVER_COMPUTED_ON_ANY_GPU:  # as of the record's last update: refused on the H200, never computed
        assert verified.describe(name, record).startswith("never run"), name
    flashinfer_quant = record["quant-flashinfer-128x4"][0]
    assert (flashinfer_quant.arch, flashinfer_quant.result, flashinfer_quant.versions["flashinfer"]) == \
        ("SM90", "fail", "0.7.2.post1")


def test_malformed_record_names_field_and_value(tmp_path):
    p = tmp_path / "v.json"
    p.write_text(json.dumps({"schema": verified.SCHEMA, "backends": {"torch-emu": [
        {"arch": "Hopper", "date": "2026-11-21", "versions": {}, "result": "pass", "source": "x"}]}}))
    with pytest.raises(verified.VerifiedFileError, match=r"backends.torch-emu\[0\].arch='Hopper': expected a GPU"):
        verified.load(p)
    p.write_text(json.dumps({"schema": verified.SCHEMA, "backends": {"torch-emu": [
        {"arch": "SM90", "date": "2026-11-21", "versions": {}, "result": "correct", "source": "x"}]}}))
    with pytest.raises(verified.VerifiedFileError, match=r"result='correct': expected one of"):
        verified.load(p)
    assert verified.load(tmp_path / "absent.json") == {}
    assert verified.describe("torch-emu", {}).startswith("never run")


def _results_dir(root: Path, outcomes: dict[str, list[str]], *, started: str, env: dict,
                 prop: str = "reference_agreement") -> Path:
    """A results directory as a run writes it (session.json + one worker's stream)."""
    records.write_session(root, {"started": started, "environment": env})
    stream = records.ResultStream(root, "gw0")
    for backend, statuses in outcomes.items():
        for st in statuses:
            trial = Trial(backend, prop, GemmProblem(m=1, n=16, k=16))
            stream.write(records.make_record(trial, Outcome(st, "why"), worker="gw0", test="t", level="gemm"))
    stream.close()
    return root


def test_record_verified_updates_per_architecture(tmp_path, capsys):
    record_file = tmp_path / "verified.json"
    verified.save({"torch-emu": [verified.Entry("cpu", None, "2026-11-21", {"torch": "2.13.0+cpu"}, "pass", "ci")],
                   "triton-emu-128x4": [verified.Entry("SM90", "NVIDIA H200", "2026-11-21", {}, "pass", "old")]},
                  record_file)
    gpu_env = {**current().to_dict(), "device": "cuda", "compute_capability": 90, "gpu_name": "NVIDIA H200",
               "flashinfer": "0.7.4 (no package metadata)"}
    run = _results_dir(tmp_path / "res", {"triton-emu-128x4": ["pass", "pass"], "torch-emu": ["pass", "fail"],
                                          "flashinfer-cutlass": ["skip", "skip"],
                                          "mutant-nibble-swap": ["fail", "pass"]},
                       started="2026-12-01T01:02:03Z", env=gpu_env)
    assert cli.main(["record-verified", str(run), "--file", str(record_file), "--source", "lead's H200 run"]) == 0
    out = capsys.readouterr().out
    assert "recorded 2 backends" in out
    rec = verified.load(record_file)
    emu = rec["triton-emu-128x4"]
    assert len(emu) == 1 and (emu[0].date, emu[0].result, emu[0].cases) == ("2026-12-01", "pass", {"pass": 2})
    assert emu[0].versions["flashinfer"] == "0.7.4" and emu[0].source == "lead's H200 run"
    torch_emu = {e.arch: e for e in rec["torch-emu"]}
    assert torch_emu["SM90"].result == "fail" and torch_emu["cpu"].source == "ci"  # the CPU entry is kept
    assert "flashinfer-cutlass" not in rec  # skipped everywhere: no evidence either way
    assert "mutant-nibble-swap" not in rec  # a planted bug: the self-test's, not a backend's record
    assert verified.describe("flashinfer-cutlass", rec).startswith("never run")


def test_record_verified_bad_directory_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", "record-verified", str(tmp_path / "nope")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"nvfp4-harness: error: RESULTS_DIR {str(tmp_path / 'nope')!r}: no such directory (expected the folder a "
        f"fuzz or test run wrote)"]



def test_record_verified_from_a_directory_without_a_run_changes_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        cli.main(["record-verified", str(tmp_path / "empty"), "--file", str(tmp_path / "v.json")])
    assert info.value.code == 2
    assert "session.json cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "v.json").exists()


def test_backends_listing_shows_where_each_backend_last_ran(capsys):
    assert cli.main(["backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["backends"]}
    assert rows["flashinfer-cutlass"]["ever_computed"] is False
    assert rows["flashinfer-cutlass"]["verified_summary"].startswith("never run")
    assert rows["triton-emu-128x4"]["ever_computed"] is True
    assert {e["arch"] for e in rows["triton-emu-128x4"]["verified"]} >= {"SM90", "cpu"}
    assert cli.main(["backends"]) == 0
    text = capsys.readouterr().out
    assert "never run: the project has not seen it compute" in text and "last run: SM90 (NVIDIA H200)" in text


def test_report_shows_where_each_backend_of_the_run_last_ran(tmp_path):
    from harness.report import render_report

    run = _results_dir(tmp_path / "res", {"triton-emu-128x4": ["pass"], "flashinfer-cutlass": ["skip"]},
                       started="2026-12-01T01:02:03Z", env=current().to_dict())
    html = render_report(run, tmp_path / "r.html").read_text()
    section = html[html.index('id="verified"'):html.index('id="matrix"')]
    assert "flashinfer-cutlass" in section and "never run: the project has not seen it compute" in section
    # the project's own record, whatever it holds today: the report shows its line for the backend
    expected = verified.describe("triton-emu-128x4", verified.load())
    assert expected.startswith("last run: SM90 (NVIDIA H200)") and expected in html_unescape(section)


def test_a_clean_refusal_is_not_evidence_of_computing(tmp_path):
    """clean_rejection passes when a backend refuses out-of-contract shapes (triton-dot-scaled does on
    SM90, where its kernel does not compile): such passes never make a backend "computed"."""
    gpu_env = {**current().to_dict(), "device": "cuda", "compute_capability": 90, "gpu_name": "NVIDIA H200"}
    run = _results_dir(tmp_path / "res", {"triton-dot-scaled": ["pass", "pass"]}, started="2026-12-01T01:02:03Z",
                       env=gpu_env, prop="clean_rejection")
    assert verified.entries_from_results(run) == {}
