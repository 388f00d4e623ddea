"""What a user meets from the first command to the report, run as the user runs it: the real
``python -m harness`` / ``python -m pytest`` commands in a subprocess, started from a folder outside
the checkout.

* each run writes its own run directory (ROOT/<run-id>/, ROOT/latest) and the report shows that run;
  paths resolve against the user's working directory; the whole test suite leaves results/ alone;
* quantizer trials draw only declared input dtypes; a refused example does not end its test;
* the time budget stops a test between examples;
* bad input: one clear line, a non-zero exit, no traceback;
* the end-of-run summary lists each new failure with its case file and replay command;
* the ``backends`` table, the ``replay --backend`` wording, interpreter overflow warnings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# a GEMM backend that takes half a second per call: the budget must stop its test between examples
SLOW_PLUGIN = '''
import time
from harness.backends import registry
from harness.backends.protocol import GemmBackend

class SlowGemm(GemmBackend):
    name = "example-slow-gemm"

    def __init__(self):
        self.requirements = registry.get("torch-emu").requirements

    def run(self, ops, out=None):
        time.sleep(0.5)
        return registry.get("torch-emu").run(ops, out)

def backends():
    return [SlowGemm()]
'''

# quantizers that refuse some (odd m) or all examples at call time
REFUSING_PLUGIN = '''
from harness.backends import registry
from harness.backends.protocol import QuantizerBackend, Unsupported

class OddRefuser(QuantizerBackend):
    name = "example-odd-m-refuser"

    def __init__(self):
        self.base = registry.get("quant-triton-128x4")
        self.requirements = self.base.requirements

    def quantize(self, x, global_scale):
        if x.shape[0] % 2:
            raise Unsupported("odd row counts are not supported")
        return self.base.quantize(x, global_scale)

class AllRefuser(OddRefuser):
    name = "example-all-refuser"

    def quantize(self, x, global_scale):
        raise Unsupported("this quantizer refuses everything")

def backends():
    return [OddRefuser(), AllRefuser()]
'''


def _env() -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=timeout)


def pytest_run(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          capture_output=True, text=True, cwd=cwd, env=_env(), timeout=timeout)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(run_dir.glob("results-*.jsonl")) for line in f.read_text().splitlines()]


def _one_clear_error(res: subprocess.CompletedProcess, *needles: str, rc: int = 2) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == rc, (res.returncode, out[-3000:])
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-3000:]
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr[-3000:])


# ----------------------------------------------------------------------------------------------
# One run, one directory; paths from the user's working directory
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_fuzz_runs(tmp_path_factory) -> tuple[Path, list[subprocess.CompletedProcess]]:
    """Two small fuzz runs started from a folder outside the checkout, relative paths only."""
    cwd = tmp_path_factory.mktemp("user")
    runs = []
    for i in range(2):
        runs.append(cli("fuzz", "--backends", "mutant-pad-row-scales", "--properties", "row_isolation",
                        "--profile", "ci", "--examples", "2", "-n", "0", "--results", "res",
                        "--report", f"out/report-{i}.html", cwd=cwd))
    return cwd, runs


def test_each_fuzz_run_writes_its_own_run_directory_under_the_users_cwd(two_fuzz_runs) -> None:
    cwd, runs = two_fuzz_runs
    for res in runs:
        assert res.returncode == 1, (res.stdout + res.stderr)[-3000:]  # the planted bug is found
    run_dirs = sorted(p for p in (cwd / "res").iterdir() if p.is_dir() and not p.is_symlink())
    assert len(run_dirs) == 2
    assert (cwd / "res" / "latest").resolve() == run_dirs[-1].resolve()
    for i, res in enumerate(runs):
        assert f"run directory: {cwd / 'res'}" in res.stdout
        assert f"report: {cwd / 'out' / f'report-{i}.html'}" in res.stdout
        assert (cwd / "out" / f"report-{i}.html").is_file()
        # the closing hint names the real report, not the default path
        assert "reports/index.html" not in res.stdout + res.stderr
    # each report shows its own run only: its case count is that run directory's
    for i, run_dir in enumerate(run_dirs):
        recs = _records(run_dir)
        assert recs and all(r["backend"] == "mutant-pad-row-scales" for r in recs)
        html = (cwd / "out" / f"report-{i}.html").read_text()
        cases = sum(1 for r in recs if r.get("scope") != "test")
        assert re.search(rf'<div class="big">{cases}</div>cases run', html), cases
        assert str(run_dir) in html
        # the command row shows what the user typed
        assert "nvfp4-harness fuzz --backends mutant-pad-row-scales --properties row_isolation" in html


def test_end_of_run_summary_lists_new_failures_with_replay_commands(two_fuzz_runs) -> None:
    cwd, runs = two_fuzz_runs
    out = runs[0].stdout
    assert "reproduce_failure" not in out  # Hypothesis's blob advice is replaced by the case file
    m = re.search(r"new failures \(1\)[^\n]*\n([^\n]*)\n\s+case file: (\S+)\n\s+replay:\s+([^\n]+)\n", out)
    assert m, out[-3000:]
    assert "mutant-pad-row-scales · row_isolation (fail)" in m.group(1)
    case = Path(m.group(2))
    assert case.is_file() and case.parent.parent.parent == cwd / "res"
    assert m.group(3).startswith("nvfp4-harness replay ") and case.name in m.group(3)
    # the replay command works from the user's folder as printed
    replay = cli(*m.group(3).split()[1:], cwd=cwd)
    assert replay.returncode == 1 and "STILL FAILS" in replay.stdout, replay.stdout + replay.stderr


def test_report_of_a_results_root_shows_its_latest_run(two_fuzz_runs, tmp_path: Path) -> None:
    cwd, _ = two_fuzz_runs
    res = cli("report", "res", "-o", str(tmp_path / "r.html"), cwd=cwd)
    assert res.returncode == 0, res.stderr
    assert str((cwd / "res" / "latest").resolve()) in res.stdout


def test_the_whole_test_suite_leaves_the_users_results_alone(tmp_path: Path) -> None:
    """A run that does not name the property suite (README's test command) records into a temporary
    folder, not into results/ of the folder it runs in."""
    before = sorted(p.name for p in (REPO / "results").iterdir()) if (REPO / "results").is_dir() else None
    res = pytest_run("--nvfp4-backends", "torch-emu", "--nvfp4-properties", "determinism", "--nvfp4-examples", "1",
                     "-k", "test_property", cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:]
    m = re.search(r"results in (\S+)", res.stdout)
    assert m, res.stdout[-3000:]
    run_dir = Path(m.group(1))
    assert not run_dir.is_relative_to(REPO) and _records(run_dir)
    after = sorted(p.name for p in (REPO / "results").iterdir()) if (REPO / "results").is_dir() else None
    assert after == before


# ----------------------------------------------------------------------------------------------
# Refusals and the budget inside a test
# ----------------------------------------------------------------------------------------------

def test_quantizer_trials_draw_only_declared_input_dtypes() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from harness import suite
    from harness.backends import registry

    b = registry.get("quant-torchao")
    declared = {str(d).replace("torch.", "") for d in b.requirements.in_dtypes}
    assert declared == {"bfloat16", "float32"}
    seen = set()

    @settings(max_examples=60, database=None, derandomize=True)
    @given(st.data())
    def draw(data):
        seen.add(data.draw(suite.trials(b, "quantizer_agreement", suite.CPU_SIZES)).problem.in_dtype)

    draw()
    assert seen <= declared and len(seen) == 2


def test_a_refused_example_does_not_end_the_test(tmp_path: Path) -> None:
    (tmp_path / "refusers.py").write_text(REFUSING_PLUGIN)
    res = pytest_run(str(REPO / "properties"), "--nvfp4-plugin", "refusers.py",
                     "--nvfp4-backends", "example-odd-m-refuser,example-all-refuser",
                     "--nvfp4-properties", "quantizer_agreement", "--nvfp4-examples", "8", "--nvfp4-results", "res", "-rs", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    assert re.search(r"\b1 passed, \d+ skipped", res.stdout), res.stdout[-2000:]
    assert "every example was refused" in res.stdout and "refuses everything" in res.stdout
    recs = _records(tmp_path / "res" / "latest")
    odd = [r for r in recs if r["backend"] == "example-odd-m-refuser"]
    assert {r["outcome"] for r in odd} == {"pass", "skip"}  # refused examples, and the test went on
    assert all(r["scope"] == "case" for r in odd)
    assert sum(r["outcome"] == "pass" for r in odd) >= 2
    stats = {h["test"].split("[")[1]: h for h in json.loads((tmp_path / "res" / "latest" / "hypothesis.json").read_text())}
    assert "refused by the backend" in stats["example-odd-m-refuser::quantizer_agreement]"]["stop_reason"]


def test_the_budget_stops_a_test_between_examples(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW_PLUGIN)
    res = pytest_run(str(REPO / "properties"), "--nvfp4-plugin", "slow.py", "--nvfp4-backends", "example-slow-gemm",
                     "--nvfp4-properties", "reference_agreement", "--nvfp4-examples", "500",
                     "--nvfp4-budget", "30", "--nvfp4-results", "res", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    recs = _records(tmp_path / "res" / "latest")
    ran = [r for r in recs if r["scope"] == "case"]
    # each example sleeps 0.5 s, so 500 would take 250 s; the 30 s session budget (start-up
    # included) is checked before every example, so the test stops after the one in flight
    assert 1 <= len(ran) < 100, len(ran)
    stats = json.loads((tmp_path / "res" / "latest" / "hypothesis.json").read_text())
    assert "time budget" in stats[0]["stop_reason"], stats


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needles", [
    (("fuzz", "--budget", "-5"), ("--budget", "'-5'", "> 0")),
    (("fuzz", "--budget", "0"), ("--budget", "'0'", "> 0")),
    (("fuzz", "--examples", "0"), ("--examples", "'0'", "positive integer")),
    (("fuzz", "--examples", "-3"), ("--examples", "'-3'", "positive integer")),
    (("selftest", "--examples", "0"), ("--examples", "'0'", "positive integer")),
    (("selftest", "--budget", "-5"), ("--budget", "'-5'", "> 0")),
    (("fuzz", "--properties", "quantizer_agreement", "--backends", "torch-emu"),
     ("--properties 'quantizer_agreement' applies to none of the selected backends (torch-emu)", "reference_agreement")),
    (("backends", "--plugin", "."), ("--plugin '.' is a directory",)),
])
def test_bad_arguments_are_one_clear_line(args, needles, tmp_path: Path) -> None:
    res = cli(*args, cwd=tmp_path)
    _one_clear_error(res, *needles)
    assert "SURVIVED" not in res.stdout and not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_selftest_engine_refuses_a_budget_that_allows_no_search() -> None:
    from harness.selftest import hunt

    for kw in ({"budget_s": -5.0}, {"budget_s": 0.0}, {"examples": 0}):
        with pytest.raises(ValueError, match="expected budget_s > 0 and examples >= 1"):
            hunt("mutant-pad-row-scales", **kw)


def test_a_plugin_module_that_raises_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "raising_plugin.py").write_text("raise RuntimeError('no licence server')\n")
    res = cli("backends", "--plugin", "raising_plugin", cwd=tmp_path)
    _one_clear_error(res, "--plugin 'raising_plugin': importing it raised RuntimeError: no licence server")
    res = cli("fuzz", "--plugin", "raising_plugin.py", cwd=tmp_path)
    _one_clear_error(res, "--plugin 'raising_plugin.py': importing it raised RuntimeError: no licence server")


@pytest.mark.parametrize("args, needles", [
    (("--nvfp4-plugin", "missing.py"), ("--nvfp4-plugin 'missing.py': no such file",)),
    (("--nvfp4-plugin", "raising_plugin.py"), ("--nvfp4-plugin 'raising_plugin.py': importing it raised RuntimeError",)),
    (("--nvfp4-properties", "typo"), ("--nvfp4-properties: unknown property 'typo'", "reference_agreement")),
    (("--nvfp4-backends", "torch-emu", "--nvfp4-properties", "quantizer_agreement"),
     ("applies to none of --nvfp4-backends 'torch-emu'",)),
    (("--nvfp4-examples", "-3"), ("--nvfp4-examples", "positive integer")),
    (("--nvfp4-budget", "-5"), ("--nvfp4-budget", "> 0")),
])
def test_pytest_options_bad_input_is_a_usage_error(args, needles, tmp_path: Path) -> None:
    (tmp_path / "raising_plugin.py").write_text("raise RuntimeError('no licence server')\n")
    res = pytest_run(str(REPO / "properties"), *args, "--nvfp4-results", "res", cwd=tmp_path)
    _one_clear_error(res, *needles, rc=4)
    assert not (tmp_path / "res").exists()  # a refused command leaves no run directory


def test_report_of_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = cli("report", "empty", "-o", "r.html", cwd=tmp_path)
    _one_clear_error(res, "RESULTS_DIR 'empty'", "holds no results")
    assert not (tmp_path / "r.html").exists()


def test_promote_twice_with_the_same_name_is_refused(tmp_path: Path) -> None:
    case = next((REPO / "regressions" / "cases").glob("*.json"))
    first = cli("promote", str(case), "--name", "dup", "--dest", "corpus", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = cli("promote", str(case), "--name", "dup", "--dest", "corpus", "--note", "second", cwd=tmp_path)
    _one_clear_error(again, "--name='dup'", "already exists", "--force")
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == ["dup.json"]
    forced = cli("promote", str(case), "--name", "dup", "--dest", "corpus", "--note", "second", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert json.loads((tmp_path / "corpus" / "dup.json").read_text())["note"] == "second"
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == ["dup.json"]


# ----------------------------------------------------------------------------------------------
# What the user reads
# ----------------------------------------------------------------------------------------------

def test_backends_table_has_a_header_and_aligned_columns(tmp_path: Path) -> None:
    res = cli("backends", "--mutants", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    blocks = re.split(r"\n(\w+)-level backends\n", res.stdout)
    tables = dict(zip(blocks[1::2], blocks[2::2]))
    assert {"gemm", "linear", "quantizer", "grouped"} <= set(tables)
    # the grouped (MoE) level: its backends and planted bugs, whether each quantizes the activations itself
    grouped = {line.split()[0]: line.split()[1:3] for line in tables["grouped"].splitlines()[1:]
               if line.startswith("  ") and not line.startswith("   ")}
    assert grouped["grouped-triton-emu"] == ["yes", "no"] and grouped["grouped-triton-emu-fused"] == ["yes", "yes"]
    assert "mutant-grouped-routed-scale-twice" in grouped
    for level, text in tables.items():
        # table rows start two spaces in; a backend's "last run" note is a continuation line below it
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("   ")]
        head = lines[0]
        assert head.split()[:2] == ["backend", "runs"], head
        col = head.index("runs")
        for line in lines[1:]:
            assert line[col:col + 3] in ("yes", "no "), (level, line)  # every row's column under its header
        if level in ("quantizer", "checkpoint"):
            assert "N%" not in text and "N align" not in head
        else:
            n_col = head.index("N align")
            assert all(line[n_col].isdigit() for line in lines[1:]), level


def test_replay_on_another_backend_does_not_read_as_fixed(tmp_path: Path) -> None:
    from harness.cases import Case, save_case
    from harness.problem import GemmProblem, Poison
    from harness.replay import replay

    case = Case.create(backend="mutant-pad-row-scales", level="gemm", property="row_isolation",
                       problem=GemmProblem(m=1, n=16, k=16), poison=Poison(m_pad=0x7F), a_layout="8x4",
                       environment={}, observed={"summary": "planted"})
    path = save_case(case, tmp_path / "case.json")
    same = replay(path).diagnosis()
    assert "STILL FAILS" in same and re.search(r"\n  NaN rows +\[0\]", same)  # a space before the rows
    other = replay(path, backend="triton-emu-8x4").diagnosis()
    assert "PASSES now" not in other
    assert "PASSES on triton-emu-8x4 (the case failed on mutant-pad-row-scales)" in other


def test_interpreter_overflow_warnings_are_silenced_only_inside_trials() -> None:
    """fp16 TP shards of a real model overflow on purpose; the trial stays quiet, numpy elsewhere not."""
    from harness.problem import CLEAN, GemmProblem
    from harness.runner import execute
    from harness.trial import Trial

    p = GemmProblem(22, 32, 1024, out_dtype="float16", in_dtype="bfloat16", distribution="heavy_tailed", seed=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning raised inside the trial fails it
        out = execute(Trial("triton-emu-8x4", "tp_consistency", p, CLEAN, "8x4", 2, "row"))
    assert out.status == "pass", out.reason
    assert out.measure.get("accepted_overflow", 0) > 0  # the shards did overflow fp16
    with pytest.warns(RuntimeWarning):
        np.array([1e300]).astype(np.float16)  # overflow outside a trial still warns


@pytest.mark.parametrize("mutant", ["mutant-pad-row-scales", "mutant-grouped-routed-scale-twice"])
def test_selftest_budget_stops_the_search_between_examples(mutant: str) -> None:
    """A budget too small to search ends the hunt and says so: BUDGET SPENT, never SURVIVED (a
    verdict about the oracle that no search supports); the dense and the grouped level alike."""
    from harness.selftest import hunt, scoreboard

    score = hunt(mutant, budget_s=1e-9, examples=200)
    assert score.caught_by is None and score.budget_cut
    assert score.verdict == "BUDGET SPENT"
    assert any("budget of 1e-09 s spent" in n for n in score.notes), score.notes
    board = scoreboard([score])
    assert "SURVIVED" not in board and "not caught before the budget ran out" in board


def test_ctrl_c_keeps_the_recorded_cases_and_writes_the_report(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) during a fuzz run: pytest closes its session,
    the report of what was recorded is written, exit status 130, no traceback."""
    import signal
    import time

    (tmp_path / "slow.py").write_text(SLOW_PLUGIN)
    proc = subprocess.Popen([sys.executable, "-m", "harness", "fuzz", "--plugin", "slow.py", "--backends",
                             "example-slow-gemm", "--properties", "reference_agreement", "--examples", "500",
                             "--profile", "ci", "-n", "0", "--results", "res", "--report", "r.html"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        streams = list((tmp_path / "res").glob("*/results-*.jsonl")) if (tmp_path / "res").is_dir() else []
        if streams and streams[0].read_text().count("\n") >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    assert "Traceback" not in err and "interrupted" in err, err[-2000:]
    recs = _records(tmp_path / "res" / "latest")
    assert len(recs) >= 2
    html = (tmp_path / "r.html").read_text()
    assert re.search(rf'<div class="big">{len(recs)}</div>cases run', html)


@pytest.mark.parametrize("shape, needles", [
    ({"m": 10000000}, ("problem.m=10000000 with problem.k=704", "expected at most 2^32 per operand")),
    ({"k": 16000000, "m": 1}, ("problem.n=704 with problem.k=16000000", "expected at most 2^32 per operand")),
    ({"m": 200000, "n": 200000, "k": 16000}, ("problem m=200000 n=200000 k=16000: needs up to", "GiB of")),
])
def test_replay_of_an_impossible_shape_is_one_clear_error(tmp_path: Path, shape, needles) -> None:
    """A case too large for the data generator, or for this machine's memory, is refused before
    anything is built (not blamed on the backend, not killed by the OS)."""
    doc = json.loads((REPO / "regressions" / "cases" / "torch-emu-fp16-overflow-m127.json").read_text())
    doc["problem"].update(shape)
    doc.pop("digest", None)
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(doc))
    _one_clear_error(cli("replay", str(path), cwd=tmp_path, timeout=300), *needles)


@pytest.mark.parametrize("value", ["-3", "two", "1.5"])
def test_fuzz_workers_must_be_auto_or_a_count(tmp_path: Path, value: str) -> None:
    _one_clear_error(cli("fuzz", "-n", value, "--backends", "torch-emu", cwd=tmp_path, timeout=120),
                     f"argument -n/--workers: expected 'auto' or a number of workers >= 0, got {value!r}")
