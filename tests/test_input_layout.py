"""Input memory layouts (harness.input_layout) and empty batches (m = 0) at the quantizer and linear
levels: the views themselves, the layout_invariance and empty_batch properties on correct
backends, the dense-read mutants of vLLM PR #49092, backends that refuse or write where they must
not, strategies, case files and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import find, settings
from hypothesis.errors import NoSuchExample

from harness import checks
from harness.backends import registry
from harness.backends.protocol import QuantizerBackend, Requirements
from harness.cases import Case, CaseFileError, load_case, save_case
from harness.data import generate
from harness.input_layout import INPUT_LAYOUTS, snapshot, storage_changed, strided_view
from harness.kernels.nvfp4 import quantize_into
from harness.layouts import ScaleLayout
from harness.problem import GemmProblem
from harness.runner import execute
from harness.suite import CPU_SIZES, trials
from harness.trial import Trial

REPO = Path(__file__).resolve().parents[1]
QUANT = "quant-triton-128x4"
LINEAR = "linear-vllm[triton-emu-128x4]"
VIEWS = [lay for lay in INPUT_LAYOUTS if lay != "contiguous"]
DENSE_READ_WRONG = ("column_slice", "column_major", "batch_strided")
"""The views a dense read gets wrong (a storage offset is still dense from data_ptr on)."""


# ----------------------------------------------------------------------------------------------
# The views
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 48), (2, 3, 32)])
@pytest.mark.parametrize("layout", INPUT_LAYOUTS)
def test_a_view_holds_the_values_and_nan_around_them(layout, shape) -> None:
    x = generate("normal", shape, 3, torch.bfloat16)
    s = strided_view(x, layout, seed=1)
    assert torch.equal(s.view, x) and s.view.dtype == x.dtype
    assert s.view.is_contiguous() == (layout in ("contiguous", "storage_offset"))
    geometry = s.describe()
    assert geometry["input_layout"] == layout and geometry["strides"] == list(s.view.stride())
    assert (geometry["storage_offset"] > 0) == (layout in ("column_slice", "storage_offset"))
    outside = s.storage.numel() - x.numel()
    assert int(torch.isnan(s.storage.float()).sum()) == outside  # every element not in the view is NaN
    if layout in ("column_slice", "batch_strided", "storage_offset"):
        assert outside > 0
    if layout == "batch_strided":
        assert (s.view.stride(0) - x[0].numel()) % 2 == 1  # an odd gap between batches (rows)


def test_a_write_into_the_input_is_seen() -> None:
    s = strided_view(torch.ones((3, 32), dtype=torch.bfloat16), "column_slice", seed=0)
    before = snapshot(s)
    assert storage_changed(s, before) is None
    gap = s.view.storage_offset() - s.storage.storage_offset() + 32  # first column right of row 0's slice
    s.storage[gap] = 0
    s.view[1, 0] = 2
    assert storage_changed(s, before) == "4 bytes of its input's storage changed (2 inside the view, 2 in the memory around it)"


def test_an_unknown_layout_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^problem\.input_layout='sliced': expected one of \['contiguous', "):
        GemmProblem(m=1, n=16, k=16, input_layout="sliced")
    with pytest.raises(ValueError, match=r"input_layout='x'"):
        strided_view(torch.zeros((1, 16)), "x")


# ----------------------------------------------------------------------------------------------
# layout_invariance on correct backends and on the dense-read mutants
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", VIEWS)
@pytest.mark.parametrize("backend", [QUANT, "quant-triton-8x4", "quant-triton-linear"])
def test_correct_quantizers_give_the_same_bytes_on_every_view(backend, layout) -> None:
    out = execute(Trial(backend, "layout_invariance", GemmProblem(m=5, n=16, k=48, seed=2, input_layout=layout)))
    assert out.status == "pass", out.reason
    assert "refused" not in out.measure and out.measure["input_layout"] == layout  # bytes were compared
    agree = execute(Trial(backend, "quantizer_agreement", GemmProblem(m=5, n=16, k=48, seed=2, input_layout=layout)))
    assert agree.status == "pass" and agree.measure["input_layout"] == layout, agree.reason


@pytest.mark.parametrize("layout", VIEWS)
def test_torchaos_quantizer_on_a_view_computes_the_same_bytes_or_refuses(layout) -> None:
    pytest.importorskip("torchao")
    out = execute(Trial("quant-torchao", "layout_invariance", GemmProblem(m=5, n=16, k=48, seed=2, input_layout=layout)))
    assert out.status == "pass", out.reason  # either way; a refusal is reported in the measure
    agree = execute(Trial("quant-torchao", "quantizer_agreement", GemmProblem(m=5, n=16, k=48, seed=2, input_layout=layout)))
    assert agree.status == ("skip" if "refused" in out.measure else "pass"), agree.reason


@pytest.mark.parametrize("batch", [None, (2, 3)])
@pytest.mark.parametrize("layout", VIEWS)
def test_a_correct_linear_layer_gives_the_same_outputs_on_every_view(layout, batch) -> None:
    p = GemmProblem(m=6, n=40, k=48, seed=1, batch=batch, input_layout=layout)
    out = execute(Trial(LINEAR, "layout_invariance", p))
    assert out.status == "pass" and "refused" not in out.measure, out.reason
    ref = execute(Trial(LINEAR, "reference_agreement", p))
    assert ref.status == "pass" and ref.measure["input_layout"] == layout, ref.reason


@pytest.mark.parametrize("layout", INPUT_LAYOUTS)
def test_the_dense_read_quantizer_gets_row_0_right_and_later_rows_wrong(layout) -> None:
    p = GemmProblem(m=4, n=16, k=32, seed=0, input_layout=layout)
    out = execute(Trial("mutant-quantizer-dense-read", "layout_invariance", p))
    if layout not in DENSE_READ_WRONG:
        assert out.status == "pass", out.reason  # dense from data_ptr() on: right
        return
    assert out.status == "fail" and out.measure["input_layout"] == layout
    rows = out.measure["changed_rows"]
    assert rows and (layout != "column_slice" or rows == [1, 2, 3])  # vLLM #49092: row 0 right, later rows garbage
    assert execute(Trial(QUANT, "layout_invariance", p)).status == "pass"  # the parent, same case
    # the reference sees it too when the view is the problem's layout
    assert execute(Trial("mutant-quantizer-dense-read", "quantizer_agreement", p)).status == "fail"


@pytest.mark.parametrize("batch", [None, (2, 2)])
def test_the_dense_read_linear_layer_is_caught(batch) -> None:
    p = GemmProblem(m=4, n=16, k=32, seed=1, batch=batch, input_layout="batch_strided")
    out = execute(Trial("mutant-linear-dense-read", "layout_invariance", p))
    # the NaN read from the gaps sets the per-tensor amax: every row changes, row 0 included
    assert out.status == "fail" and out.measure["changed_rows"], out.reason
    assert execute(Trial(LINEAR, "layout_invariance", p)).status == "pass"


class _RefusesViews(QuantizerBackend):
    """The parent's kernel behind a wrapper that checks contiguity (as FlashInfer's fp4_quantize does)."""
    name = "test-refuses-views"
    layout = ScaleLayout.LINEAR
    requirements = Requirements(runs_on_cpu=True, a_layouts=(ScaleLayout.LINEAR,), w_layout=ScaleLayout.LINEAR)

    def quantize(self, x, global_scale):
        if not x.is_contiguous():
            raise ValueError("x must be contiguous")
        return quantize_into(x, global_scale.reshape(1).float(), self.layout)


class _WritesIntoItsInput(_RefusesViews):
    """Quantizes right, then (on a view) scribbles over the element after its input's last one."""
    name = "test-writes-into-input"

    def quantize(self, x, global_scale):
        out = quantize_into(x, global_scale.reshape(1).float(), self.layout)
        if x.is_contiguous():  # (on a dense copy the guard bytes after it see the write: test_guard.py)
            return out
        flat = x.as_strided((1,), (1,), x.storage_offset() + x.stride(0) * (x.shape[0] - 1) + x.shape[1])
        flat.fill_(0)
        return out


@pytest.fixture
def planted(monkeypatch):
    """The two test-local backends (a planted refusal and a planted input write), registered for one test."""
    registry.all_backends()  # the built-ins first
    for b in (_RefusesViews(), _WritesIntoItsInput()):
        monkeypatch.setitem(registry._REGISTRY, b.name, b)


def test_a_refused_view_passes_and_is_reported(planted) -> None:
    p = GemmProblem(m=3, n=16, k=32, input_layout="column_slice")
    out = execute(Trial("test-refuses-views", "layout_invariance", p))
    assert out.status == "pass" and out.measure["refused"].startswith("ValueError: ")
    # where the view is only the problem's layout, a refusal is nothing to compare: skipped, not failed
    agree = execute(Trial("test-refuses-views", "quantizer_agreement", p))
    assert agree.status == "skip" and "refused the column_slice view" in agree.reason


def test_a_write_into_the_gap_after_a_slice_fails(planted) -> None:
    p = GemmProblem(m=3, n=16, k=32, input_layout="column_slice")
    out = execute(Trial("test-writes-into-input", "layout_invariance", p))
    assert out.status == "fail" and "wrote into its input" in out.reason
    assert "in the memory around it" in out.reason


def test_the_layout_invariance_verdict() -> None:
    a = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    b = a.clone()
    b[2, 1] = 0
    geo = {"input_layout": "column_slice", "strides": [80, 1], "storage_offset": 16}
    same = checks.layout_invariance({"codes": (a, a.clone())}, geo)
    assert same.ok and same.measure["strides"] == [80, 1]
    bad = checks.layout_invariance({"codes": (a, b)}, geo)
    assert not bad.ok and bad.measure["changed_rows"] == [2] and bad.measure["codes_changed_rows_total"] == 1
    # NaN outputs compare by their bits: the same NaN is the same, a different payload is not
    nan = torch.full((2, 2), float("nan"), dtype=torch.bfloat16)
    assert checks.layout_invariance({"out": (nan, nan.clone())}, geo).ok
    other = (nan.view(torch.int16) ^ 1).view(torch.bfloat16)  # another NaN payload
    assert torch.isnan(other).all() and not checks.layout_invariance({"out": (nan, other)}, geo).ok
    assert not checks.layout_invariance({"out": (a, a[:2])}, geo).ok
    assert checks.layout_invariance({}, geo, refused="ValueError: no").ok
    # (linear level) differing bits within the reference's bound pass, reported; outside it they fail
    within = checks.layout_invariance({"codes": (a, b)}, geo, agreement=checks.PropertyResult(
        "reference_agreement", True, "max error 0.2 x bound", {"max_err_units": 0.2}))
    assert within.ok and within.measure["bitwise"] is False and within.measure["max_err_units"] == 0.2
    outside = checks.layout_invariance({"codes": (a, b)}, geo, agreement=checks.PropertyResult(
        "reference_agreement", False, "3 outputs outside the bound", {"max_err_units": 9.0}))
    assert not outside.ok and "outside the bound" in outside.summary


def test_a_dense_bf16_layer_may_round_a_view_differently_within_the_bound() -> None:
    pytest.importorskip("torchao")
    p = GemmProblem(m=2, n=16, k=16, batch=(1, 2), input_layout="column_slice")
    out = execute(Trial("linear-torchao-weight-only", "layout_invariance", p))
    assert out.status == "pass", out.reason
    if not out.measure["bitwise"]:  # torchao's F.linear on this strided x rounds differently (observed)
        assert out.measure["max_err_units"] <= 1 and "within the reference's bound" in out.reason + out.result.summary


# ----------------------------------------------------------------------------------------------
# Empty batches
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", [QUANT, "quant-triton-8x4", "quant-triton-linear"])
def test_quantizers_take_an_empty_batch(backend) -> None:
    out = execute(Trial(backend, "empty_batch", GemmProblem(m=0, n=16, k=48)))
    assert out.status == "pass" and "refused" not in out.measure, out.reason
    assert out.measure["shapes"]["packed codes"] == [[0, 24], [0, 24]]


def test_torchaos_quantizer_on_an_empty_batch_returns_or_refuses() -> None:
    pytest.importorskip("torchao")
    out = execute(Trial("quant-torchao", "empty_batch", GemmProblem(m=0, n=16, k=32)))
    assert out.status == "pass", out.reason  # whichever it does, it is reported
    assert ("refused" in out.measure) != ("shapes" in out.measure)


@pytest.mark.parametrize("batch,layout", [(None, "contiguous"), ((0, 3), "contiguous"), (None, "column_slice"),
                                          ((0, 2), "batch_strided")])
@pytest.mark.parametrize("backend", [LINEAR, "linear-sglang-trtllm[triton-emu-128x4+triton-emu-8x4]",
                                     "linear-vllm[triton-w4a16]"])
def test_linear_layers_return_an_empty_output(backend, batch, layout) -> None:
    p = GemmProblem(m=0, n=40, k=48, batch=batch, input_layout=layout)
    out = execute(Trial(backend, "empty_batch", p))
    assert out.status == "pass" and "refused" not in out.measure, out.reason
    got, want = out.measure["shapes"]["output"]
    assert got == want == [*(batch or (0,)), 40]


def test_an_empty_batch_with_a_static_scale() -> None:
    out = execute(Trial(LINEAR, "empty_batch", GemmProblem(m=0, n=16, k=32, calibration=2.0)))
    assert out.status == "pass" and "refused" not in out.measure, out.reason


def test_the_empty_batch_verdict() -> None:
    ok = checks.empty_batch({"output": ((0, 8), (0, 8))}, {"output": ("torch.bfloat16", "torch.bfloat16")})
    assert ok.ok
    assert not checks.empty_batch({"output": ((1, 8), (0, 8))}, {}).ok
    assert not checks.empty_batch({"output": ((0, 8), (0, 8))}, {"output": ("torch.float32", "torch.bfloat16")}).ok
    assert checks.empty_batch({}, {}, refused="RuntimeError: empty").ok


def test_m_0_belongs_to_empty_batch_only() -> None:
    assert execute(Trial(LINEAR, "reference_agreement", GemmProblem(m=0, n=16, k=16))).status == "skip"
    assert execute(Trial(QUANT, "quantizer_agreement", GemmProblem(m=0, n=16, k=16))).status == "skip"
    assert execute(Trial(LINEAR, "empty_batch", GemmProblem(m=2, n=16, k=16))).status == "skip"
    assert execute(Trial("triton-emu-128x4", "reference_agreement", GemmProblem(m=0, n=16, k=16))).status == "skip"
    with pytest.raises(ValueError, match=r"^problem\.m=-1: expected an integer >= 0"):
        GemmProblem(m=-1, n=16, k=16)
    with pytest.raises(ValueError, match=r"problem\.batch=\(1, 2\): leading dims multiply to 2, not m=0"):
        GemmProblem(m=0, n=16, k=16, batch=(1, 2))


# ----------------------------------------------------------------------------------------------
# Strategies, case files, replay, report
# ----------------------------------------------------------------------------------------------

def _first(strategy, condition, max_examples: int = 300):
    return find(strategy, condition, settings=settings(max_examples=max_examples, database=None, deadline=None))


def test_the_strategies_draw_views_and_empty_batches() -> None:
    for name in (QUANT, LINEAR):
        b = registry.get(name)
        inv = trials(b, "layout_invariance", CPU_SIZES)
        t = _first(inv, lambda t: True)
        assert t.problem.input_layout == "column_slice" and t.problem.m == 1  # the shrink target
        assert _first(inv, lambda t: t.problem.input_layout == "batch_strided")
        with pytest.raises(NoSuchExample):
            _first(inv, lambda t: t.problem.input_layout == "contiguous", 40)
        empty = trials(b, "empty_batch", CPU_SIZES)
        with pytest.raises(NoSuchExample):
            _first(empty, lambda t: t.problem.m != 0, 40)
        main = trials(b, "quantizer_agreement" if b.level == "quantizer" else "reference_agreement", CPU_SIZES)
        assert _first(main, lambda t: True).problem.input_layout == "contiguous"
        assert _first(main, lambda t: t.problem.input_layout == "column_major")
    assert _first(trials(registry.get(LINEAR), "empty_batch", CPU_SIZES), lambda t: t.problem.batch is not None)


def test_old_problems_and_case_files_load_as_contiguous() -> None:
    d = GemmProblem(m=2, n=16, k=16).to_dict()
    assert d["input_layout"] == "contiguous"
    del d["input_layout"]
    assert GemmProblem(**d).input_layout == "contiguous"
    old = load_case(REPO / "regressions" / "cases" / "linear-slice-bias-3d-vllm.json")
    assert "input_layout" not in json.loads((REPO / "regressions" / "cases" / "linear-slice-bias-3d-vllm.json").read_text())["problem"]
    assert old.problem.input_layout == "contiguous"


def _case_file(tmp_path, trial: Trial, level: str) -> tuple[Path, object]:
    first = execute(trial, digest=True)
    case = Case.from_trial(trial, level=level, observed={"summary": first.reason or "x"}, environment={},
                           digest=first.digest)
    return save_case(case, tmp_path / "c.json"), first


def test_a_bad_input_layout_in_a_case_file_is_one_clear_line(tmp_path) -> None:
    trial = Trial(QUANT, "layout_invariance", GemmProblem(m=1, n=16, k=16, input_layout="column_major"))
    doc = Case.from_trial(trial, level="quantizer", observed={"summary": "x"}, environment={}).to_dict()
    doc["replay"] = "nvfp4-harness replay c.json"
    for bad in (3, ["column_slice"], "sliced"):
        doc["problem"]["input_layout"] = bad
        (tmp_path / "c.json").write_text(json.dumps(doc))
        with pytest.raises(CaseFileError) as err:
            load_case(tmp_path / "c.json")
        assert err.value.field == "problem.input_layout" and err.value.value == bad
    res = subprocess.run([sys.executable, "-m", "harness", "replay", str(tmp_path / "c.json")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "problem.input_layout='sliced': expected one of ['contiguous'" in res.stderr
    doc["problem"]["input_layout"] = None  # an optional key written as null reads as its default
    (tmp_path / "c.json").write_text(json.dumps(doc))
    assert load_case(tmp_path / "c.json").problem.input_layout == "contiguous"


@pytest.mark.parametrize("trial,level", [
    (Trial("mutant-quantizer-dense-read", "layout_invariance", GemmProblem(m=2, n=16, k=16, input_layout="column_slice")),
     "quantizer"),
    (Trial("mutant-linear-dense-read", "layout_invariance",
           GemmProblem(m=4, n=16, k=32, seed=3, batch=(2, 2), input_layout="column_major")), "linear"),
    (Trial(LINEAR, "empty_batch", GemmProblem(m=0, n=24, k=32, batch=(0, 3), input_layout="column_slice")), "linear"),
    (Trial(QUANT, "empty_batch", GemmProblem(m=0, n=16, k=48)), "quantizer"),
])
def test_each_class_replays_bit_for_bit(tmp_path, trial, level) -> None:
    path, first = _case_file(tmp_path, trial, level)
    doc = json.loads(path.read_text())
    assert doc["problem"]["input_layout"] == trial.problem.input_layout and doc["problem"]["m"] == trial.problem.m
    again = load_case(path).trial()
    assert again == trial
    second = execute(again, digest=True)
    assert first.status == second.status == ("fail" if "mutant" in trial.backend else "pass")
    assert second.digest == first.digest and second.measure == first.measure


def test_the_replay_command_replays_a_dense_read_case(tmp_path) -> None:
    trial = Trial("mutant-quantizer-dense-read", "layout_invariance",
                  GemmProblem(m=2, n=16, k=16, input_layout="column_slice"))
    path, _ = _case_file(tmp_path, trial, "quantizer")
    res = subprocess.run([sys.executable, "-m", "harness", "replay", str(path)], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert res.returncode == 1 and "rebuilt bit for bit (digest matches)" in res.stdout, res.stdout + res.stderr
    assert "input_layout=column_slice" in res.stdout
    ok = subprocess.run([sys.executable, "-m", "harness", "replay", str(path), "--backend", QUANT],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_the_report_names_the_layout_and_the_empty_batch() -> None:
    from harness.report.view import _problem_text

    assert "x as a column slice view" in _problem_text(GemmProblem(m=2, n=16, k=16, input_layout="column_slice").to_dict())
    assert "view" not in _problem_text(GemmProblem(m=2, n=16, k=16).to_dict())
    assert "empty batch" in _problem_text(GemmProblem(m=0, n=16, k=16).to_dict())


def test_the_report_tables_views_and_empty_batches_per_backend() -> None:
    from harness.report.view import EMPTY_BATCH, input_layout_rows

    def rec(backend, outcome, **problem_and_measure):
        measure = problem_and_measure.pop("measure", {})
        problem = GemmProblem(n=16, k=16, **{"m": 2, **problem_and_measure}).to_dict()
        return {"backend": backend, "outcome": outcome, "problem": problem, "measure": measure}

    old = rec("q", "pass")
    del old["problem"]["input_layout"]  # a record written before input_layout: contiguous, not tabled
    records = [old, rec("q", "pass", input_layout="column_slice"),
               rec("q", "pass", input_layout="column_slice", measure={"refused": "ValueError: no"}),
               rec("q", "fail", input_layout="batch_strided"),
               rec("l", "pass", input_layout="column_major", measure={"bitwise": False}),
               rec("l", "pass", m=0), rec("q", "pass", m=0, measure={"refused": "RuntimeError: empty"})]
    cols, rows = input_layout_rows(records)
    assert cols == ["column_slice", "column_major", "batch_strided", "storage_offset", EMPTY_BATCH]
    table = {r["backend"]: [(c["text"], c["cls"]) for c in r["cells"]] for r in rows}
    assert table["q"] == [("2 pass (1 raised, allowed)", "pass"), ("–", "empty"), ("1 fail", "fail"), ("–", "empty"),
                          ("1 pass (1 raised, allowed)", "pass")]
    assert table["l"][1] == ("1 pass (1 within bound)", "pass") and table["l"][4] == ("1 pass", "pass")
