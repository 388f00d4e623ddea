"""Upstream tracking of regression cases: still reproduces / fixed upstream / behaviour changed.

Each state is produced by really running a case on ``tracking-demo-quant`` (tests/plugins), a
plugin backend around a small library whose behaviour depends on its release (1.x garbage, 2.x
fixed for bfloat16 / refuses float16 / garbage for float32, 3.x correct).  Nothing is mocked: the
library is written out at a version, imported, and run through the harness's runner.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import env as env_mod
from harness import tracking
from harness.backends import registry
from harness.cases import Case, load_case, save_case
from harness.problem import CLEAN, GemmProblem
from harness.runner import execute

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "plugins" / "tracking_demo.py"
sys.path.insert(0, str(PLUGIN.parent))
import tracking_demo  # noqa: E402

HERE = env_mod.current().arch()


def make_case(in_dtype: str = "bfloat16", *, arch: str = HERE, version: str = "1.0", expect: str = "xfail") -> Case:
    return Case.create(
        backend="tracking-demo-quant", level="quantizer", property="quantizer_agreement",
        problem=GemmProblem(m=8, n=16, k=64, in_dtype=in_dtype, distribution="normal", seed=1),
        poison=CLEAN, observed={"summary": "zeroed codes and scales, no error"}, expect=expect,
        tracks="nvfp4_tracking_lib #1",
        reproduced=[{"date": "2026-11-01", "arch": arch, "gpu_name": None,
                     "versions": {"nvfp4_tracking_lib": version}}])


@pytest.fixture
def use_library(tmp_path, monkeypatch):
    """Install nvfp4_tracking_lib at a version for this test (fresh import)."""
    registry.load_plugin(str(PLUGIN))

    def install(version: str):
        monkeypatch.syspath_prepend(str(tracking_demo.write_library(tmp_path / f"v{version}", version)))
        sys.modules.pop(tracking_demo.LIBRARY, None)
        importlib.invalidate_caches()
        return registry.get("tracking-demo-quant")

    yield install
    sys.modules.pop(tracking_demo.LIBRARY, None)
    registry._REGISTRY.pop("tracking-demo-quant", None)  # other tests in this worker see the built-ins only


def run_and_classify(case: Case, backend) -> tracking.Transition:
    outcome = execute(case.trial())
    now = tracking.sighting_now(env_mod.current(), backend)
    return tracking.classify(case, "demo.json", now, outcome=outcome.status, reason=outcome.reason)


@pytest.mark.parametrize("version, state, outcome", [("1.0", tracking.STILL, "fail"),
                                                     ("3.0", tracking.FIXED, "pass")])
def test_known_failure_still_reproduces_or_is_fixed_upstream(use_library, version, state, outcome):
    backend = use_library(version)
    t = run_and_classify(make_case(), backend)
    assert (t.state, t.outcome) == (state, outcome), t.reason
    assert t.now.versions["nvfp4_tracking_lib"] == version  # from the module's own __version__
    if state == tracking.FIXED:
        assert "nvfp4_tracking_lib 1.0 -> 3.0" in t.headline and t.headline.startswith("FIXED UPSTREAM: demo.json")
        assert "retire the case, or keep it as a guard" in t.advice
    else:
        assert t.headline.startswith("STILL REPRODUCES") and "->" not in t.headline


def test_a_clean_refusal_where_it_reproduced_is_behaviour_changed(use_library):
    backend = use_library("2.0")
    t = run_and_classify(make_case("float16"), backend)
    assert (t.state, t.outcome) == (tracking.CHANGED, "skip")
    assert "nvfp4_tracking_lib 1.0 -> 2.0" in t.headline and "NotSupportedHere" in t.advice
    # the same refusal on an architecture where the case never reproduced is no news
    t_other = run_and_classify(make_case("float16", arch="SM100" if HERE != "SM100" else "SM90"), backend)
    assert t_other.state == tracking.NOT_HERE


def test_garbage_is_never_a_pass_and_guards_regress(use_library):
    backend = use_library("2.0")
    assert run_and_classify(make_case("bfloat16"), backend).state == tracking.FIXED
    still = run_and_classify(make_case("float32"), backend)
    assert (still.state, still.outcome) == (tracking.STILL, "fail")
    assert run_and_classify(make_case("bfloat16", expect="pass"), backend).state == tracking.GUARD
    assert run_and_classify(make_case("float32", expect="pass"), backend).state == tracking.REGRESSED


def test_a_recorded_failure_records_where_it_reproduced(use_library, tmp_path):
    from harness import results as records

    use_library("1.0")
    case = make_case()
    trial = case.trial()
    outcome = execute(trial)
    assert outcome.status == "fail"
    rel = records.save_failure_case(tmp_path, trial, outcome, "quantizer", env_mod.current().to_dict())
    (seen,) = load_case(tmp_path / rel, check_backend=False).reproduced
    assert seen["arch"] == HERE and seen["versions"]["nvfp4_tracking_lib"] == "1.0"
    assert seen["versions"]["torch"] == env_mod.bare_version(env_mod.current().torch)


def test_sightings_round_trip_and_old_files_read_from_their_environment(tmp_path):
    case = make_case()
    path = save_case(case, tmp_path / "c.json")
    back = load_case(path, check_backend=False)
    assert back.reproduced == case.reproduced
    assert tracking.sightings_of(back)[0].versions == {"nvfp4_tracking_lib": "1.0"}
    # an old file: no "reproduced" key; the environment and created date stand in
    doc = json.loads(path.read_text())
    del doc["reproduced"]
    doc["environment"] = {"device": "cuda", "compute_capability": 100, "gpu_name": "B200", "flashinfer": "0.7.2"}
    old = Case.from_dict(doc, check_backend=False)
    (s,) = tracking.sightings_of(old)
    assert (s.arch, s.gpu_name, s.versions, s.date) == ("SM100", "B200", {"flashinfer": "0.7.2"}, old.created[:10])
    assert "reproduced" not in old.to_dict()  # files without sightings keep their layout
    bad = dict(json.loads(path.read_text()), reproduced=[{"date": "yesterday", "arch": "SM90", "versions": {}}])
    with pytest.raises(ValueError, match=r"reproduced\[0\].date='yesterday': expected a date as YYYY-MM-DD"):
        Case.from_dict(bad, check_backend=False)


def test_every_corpus_file_loads_and_the_sm90_quantizer_case_names_its_versions():
    for path in sorted((REPO / "regressions" / "cases").glob("*.json")):
        load_case(path)
    case = load_case(REPO / "regressions" / "cases" / "flashinfer-fp4-quantize-sm90-garbage.json")
    (seen,) = tracking.sightings_of(case)
    assert (seen.arch, seen.date, seen.versions["flashinfer"]) == ("SM90", "2026-11-21", "0.7.2.post1")
    # what an H200 with a FlashInfer that refuses reports (the refusal is the runner's skip outcome)
    now = tracking.Sighting("2026-12-01", "SM90", "NVIDIA H200", {"flashinfer": "0.7.4", "torch": "2.11.0+cu130"})
    t = tracking.classify(case, "flashinfer-fp4-quantize-sm90-garbage.json", now, outcome="skip",
                          reason="RuntimeError: ...")
    assert t.state == tracking.CHANGED and "flashinfer 0.7.2.post1 -> 0.7.4" in t.headline


def test_regression_run_shows_transitions_in_the_summary_and_the_report(tmp_path):
    """One regression run (pytest, as CI runs it) over three cases with release 2.0 installed."""
    cases = tmp_path / "cases"
    for name, dtype in (("fixed", "bfloat16"), ("changed", "float16"), ("still", "float32")):
        save_case(make_case(dtype), cases / f"demo-{name}.json")
    lib = tracking_demo.write_library(tmp_path / "lib", "2.0")
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVFP4_HARNESS_", "PYTEST_XDIST"))}
    env.update(NVFP4_REGRESSIONS_DIR=str(cases), PYTHONPATH=os.pathsep.join([str(lib), str(REPO), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "regressions" / "test_regressions.py"), "-q",
                           "-p", "no:cacheprovider", "-p", "no:xdist", "-W", "ignore::UserWarning", "--rootdir", str(REPO),
                           "--nvfp4-plugin", str(PLUGIN), "--nvfp4-results", str(results)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "upstream tracking: 1 behaviour changed, 1 fixed upstream, 1 still reproduces" in out, out
    assert "BEHAVIOUR CHANGED: demo-changed.json (tracking-demo-quant)" in out
    assert "FIXED UPSTREAM: demo-fixed.json" in out and "STILL REPRODUCES: demo-still.json" in out
    assert out.count("[nvfp4_tracking_lib 1.0 -> 2.0]") == 3
    # the HTML report of the same results directory shows them, transitions first
    from harness.report import render_report

    html = render_report(results, tmp_path / "report.html").read_text()
    section = html[html.index('id="tracking"'):]
    assert section.index("behaviour changed") < section.index("fixed upstream") < section.index("still reproduces")
    assert "nvfp4_tracking_lib 1.0 -&gt; 2.0" in section and "demo-changed.json" in section


def test_a_case_seen_on_another_architecture_shows_no_version_transition():
    """A case recorded on SM90 and run on a CPU: its library builds differ by nature (cu130 vs cpu),
    which is no upstream change; the headline says the case was never recorded here instead."""
    then = tracking.Sighting("2026-11-30", "SM90", "NVIDIA H200", {"torch": "2.11.0+cu130"})
    now = tracking.Sighting("2026-12-01", "cpu", None, {"torch": "2.13.0+cpu"})
    same_arch = tracking.Sighting("2026-12-01", "SM90", "NVIDIA H200", {"torch": "2.12.0+cu130"})
    t = tracking.Transition("c.json", "b", "pass", tracking.GUARD, then, now, "pass", "")
    assert t.changes == [] and "->" not in t.headline and "never recorded on cpu" in t.headline
    u = tracking.Transition("c.json", "b", "pass", tracking.GUARD, then, same_arch, "pass", "")
    assert u.changes == ["torch 2.11.0+cu130 -> 2.12.0+cu130"] and "2.11.0+cu130 -> 2.12.0+cu130" in u.headline
    assert tracking.Transition.from_dict(t.to_dict()).headline == t.headline
