"""Degenerate inputs: all-zero tensors, all-zero rows, one outlier setting the global scale, and a
NaN/Inf in one real input row (isolated under a static scale; spread by a dynamic one, reported)."""

from __future__ import annotations

import json

import pytest
import torch

from harness import checks
from harness.cases import Case, load_case, save_case
from harness.data import DEGENERATE, DISTRIBUTIONS, generate, generate_reference
from harness.format import global_scale_encode_divisor, reference_quantize
from harness.problem import GemmProblem
from harness.experiments.linear import linear_inputs
from harness.runner import execute
from harness.trial import Trial

LINEAR = "linear-vllm[triton-emu-128x4]"


def test_the_degenerate_distributions() -> None:
    assert set(DEGENERATE) <= set(DISTRIBUTIONS)
    zero = generate("all_zero", (4, 32), 1)
    assert not zero.any()
    rows = generate("zero_rows", (12, 32), 5, torch.float32)
    empty = rows.abs().amax(dim=1) == 0
    assert empty[0] and 1 <= int(empty.sum()) < 12
    out = generate("one_outlier", (4, 32), 9, torch.float32)
    assert (out == 4.0 * 2 ** 12).sum() == 1 and out.reshape(-1)[9 % 128] == 4.0 * 2 ** 12
    for d in DEGENERATE:
        assert torch.equal(generate(d, (3, 48), 2), generate_reference(d, (3, 48), 2))


def test_an_all_zero_tensor_quantizes_to_zeros_with_global_scale_one() -> None:
    x = generate("all_zero", (3, 32), 0)
    gs = global_scale_encode_divisor(x.float().abs().amax())
    assert float(gs) == 1.0
    codes, sf = reference_quantize(x, gs)
    assert not sf.any() and not (codes & 7).any()
    p = GemmProblem(m=3, n=16, k=32, distribution="all_zero")
    for backend, prop in ((LINEAR, "reference_agreement"), ("quant-triton-8x4", "quantizer_agreement"),
                          ("triton-emu-8x4", "reference_agreement")):
        assert execute(Trial(backend, prop, p)).status == "pass", backend


def test_input_isolation_check() -> None:
    clean = torch.ones(4, 8, dtype=torch.bfloat16)
    same = clean.clone()
    same[2] = float("nan")
    assert checks.input_isolation(clean, same, 2, "nan", True).measure["classification"] == "isolated"
    spread = torch.full_like(clean, float("nan"))
    bad = checks.input_isolation(clean, spread, 2, "nan", True)
    assert not bad.ok and bad.measure["changed_rows"] == [0, 1, 3] and bad.measure["nan_rows"] == [0, 1, 3]
    design = checks.input_isolation(clean, spread, 2, "inf", False)
    assert design.ok and design.measure["classification"] == "per_tensor_spread"
    assert "design" in design.summary


@pytest.mark.parametrize("seed", [3, 8])
def test_a_bad_row_stays_in_its_row_under_a_static_scale(seed) -> None:
    p = GemmProblem(m=5, n=40, k=48, seed=seed)
    static = execute(Trial(LINEAR, "input_isolation", p.with_(calibration=2.0)))
    assert static.status == "pass" and static.measure["classification"] == "isolated"
    assert static.measure["scale"] == "static"
    dynamic = execute(Trial(LINEAR, "input_isolation", p))
    assert dynamic.status == "pass" and dynamic.measure["classification"] == "per_tensor_spread"
    ignored = execute(Trial("mutant-static-scale-ignored", "input_isolation", p.with_(calibration=2.0)))
    assert ignored.status == "fail" and ignored.measure["rows_affected"] == 4
    assert execute(Trial(LINEAR, "input_isolation", p.with_(m=1))).status == "skip"  # no other row


def test_a_bad_row_case_replays_bit_for_bit(tmp_path) -> None:
    trial = Trial("mutant-static-scale-ignored", "input_isolation",
                  GemmProblem(m=3, n=16, k=16, seed=1, calibration=0.5, distribution="zero_rows"))
    first = execute(trial, digest=True)
    case = Case.from_trial(trial, level="linear", observed={"summary": first.reason}, environment={},
                           digest=first.digest)
    path = save_case(case, tmp_path / "c.json")
    assert json.loads(path.read_text())["property"] == "input_isolation"
    again = load_case(path).trial()
    second = execute(again, digest=True)
    assert again == trial and first.status == second.status == "fail"
    assert second.digest == first.digest and second.measure == first.measure


def test_one_outlier_sets_the_global_scale() -> None:
    p = GemmProblem(m=4, n=16, k=32, seed=6, distribution="one_outlier")
    x, _, _ = linear_inputs(p, "cpu")
    assert float(x.float().abs().amax()) == 4.0 * 2 ** 12
    assert execute(Trial(LINEAR, "reference_agreement", p)).status == "pass"


def test_the_property_suite_puts_every_linear_layer_to_input_isolation(tmp_path) -> None:
    """A one-row draw would leave no other row to isolate; the suite draws at least two rows, so the
    property runs (its test used to end as a skip, "one row", on the first such draw: no linear
    layer was ever put to it by `fuzz` or README's test command)."""
    import subprocess
    import sys
    from pathlib import Path

    from hypothesis import given, settings

    from harness import suite
    from harness.backends import registry

    @settings(max_examples=25, deadline=None, database=None)
    @given(suite.trials(registry.get(LINEAR), "input_isolation", suite.CPU_SIZES))
    def draws(trial):
        assert trial.problem.m >= 2, trial.problem

    draws()
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "properties/test_properties.py", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", "--nvfp4-backends", "linear-vllm[torch-emu]", "--nvfp4-properties",
                           "input_isolation", "--nvfp4-profile", "ci", "--nvfp4-results", str(tmp_path / "res")],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
