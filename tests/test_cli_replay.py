"""The command line end to end: a planted bug found by a fuzz run becomes a case file that replays
bit for bit with one command, and ``promote`` turns it into a regression test reported as xfail;
bad arguments and malformed case files give clear errors and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def found_case(tmp_path_factory) -> Path:
    """Fuzz the padding-row mutant with the property suite; return the minimized case file."""
    results = tmp_path_factory.mktemp("results")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "properties"), "-q", "-p", "no:cacheprovider",
         "--nvfp4-backends", "mutant-pad-row-scales", "--nvfp4-properties", "row_isolation",
         "--nvfp4-results", str(results)],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert res.returncode == 1, res.stdout[-3000:]  # the mutant fails
    results = results / "latest"  # this session's run directory
    cases = sorted((results / "cases").glob("*.json"))
    assert len(cases) == 1, [c.name for c in cases]
    records = [json.loads(line) for f in results.glob("results-*.jsonl") for line in f.read_text().splitlines()]
    assert any(r["outcome"] == "fail" and r["case_file"] for r in records)
    return cases[0]


def test_the_case_file_replays_bit_for_bit_with_one_command(found_case):
    case = json.loads(found_case.read_text())
    assert case["replay"].startswith("nvfp4-harness replay ")
    assert case["problem"]["m"] == 1 and case["poison"]["m_pad"] and case["digest"]
    res = cli("replay", str(found_case))
    assert res.returncode == 1, res.stdout + res.stderr  # still failing
    assert "rebuilt bit for bit (digest matches)" in res.stdout
    assert "STILL FAILS" in res.stdout and "NaN rows" in res.stdout
    # the correct parent backend passes the same case
    ok = cli("replay", str(found_case), "--backend", "triton-emu-8x4")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASSES on triton-emu-8x4" in ok.stdout and "PASSES now" not in ok.stdout


def test_promote_turns_the_case_into_an_xfail_regression(found_case, tmp_path):
    dest = tmp_path / "corpus"
    res = cli("promote", str(found_case), "--name", "pad-row-mutant", "--tracks", "vLLM #37563",
              "--note", "planted bug", "--dest", str(dest))
    assert res.returncode == 0, res.stderr
    promoted = json.loads((dest / "pad-row-mutant.json").read_text())
    assert promoted["expect"] == "xfail" and promoted["tracks"] == "vLLM #37563"
    assert json.loads(found_case.read_text())["expect"] == "pass"  # the recorded case is untouched
    run = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "regressions"), "-q", "-rx",
                          "-p", "no:cacheprovider", "--nvfp4-results", str(tmp_path / "r")],
                         capture_output=True, text=True, cwd=REPO, timeout=900,
                         env={**os.environ, "NVFP4_REGRESSIONS_DIR": str(dest)})
    assert run.returncode == 0, run.stdout[-3000:]
    assert "1 xfailed" in run.stdout and "vLLM #37563" in run.stdout


def test_help_and_bad_arguments():
    assert cli("--help").returncode == 0
    for args, expected in [(("frobnicate",), "invalid choice: 'frobnicate'"),
                           (("replay",), "the following arguments are required: case"),
                           (("fuzz", "--backends", "nope"), "unknown backend 'nope'; known backends:"),
                           (("fuzz", "--properties", "speed"), "unknown property 'speed'"),
                           (("report", "/nonexistent/results"), "RESULTS_DIR '/nonexistent/results': no such directory"),
                           (("promote", "x.json", "--expect", "maybe"), "invalid choice: 'maybe'")]:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert expected in res.stderr, (args, res.stderr)


def test_malformed_case_files_name_the_field(tmp_path, found_case):
    good = json.loads(found_case.read_text())
    variants = {
        "missing": ({k: v for k, v in good.items() if k != "property"}, "property"),
        "type": ({**good, "problem": {**good["problem"], "m": "seven"}}, "problem.m"),
        "backend": ({**good, "backend": "no-such-backend"}, "unknown backend 'no-such-backend'"),
        "shape": ({**good, "problem": {**good["problem"], "k": 40}}, "problem.k=40"),
    }
    for name, (doc, expected) in variants.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        before = path.read_bytes()
        res = cli("replay", str(path))
        assert res.returncode == 2, (name, res.stdout, res.stderr)
        assert expected in res.stderr, (name, res.stderr)
        assert path.read_bytes() == before  # nothing recorded is touched
