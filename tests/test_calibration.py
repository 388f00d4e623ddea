"""Static (calibrated) activation scales and saturation: the reference encoders saturate, the Triton
quantizer saturates the same way (ties included), the calibration dimension reaches quantizers, GEMM
operands and linear layers, and its case files replay bit for bit."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.cases import Case, CaseFileError, load_case, save_case
from harness.format import (
    E4M3_MAX_BYTE,
    calibrated_amax,
    e2m1_decode,
    e2m1_encode,
    e4m3_decode,
    e4m3_encode,
    global_scale_encode_divisor,
    reference_quantize,
    static_global_scale,
)
from harness.kernels.nvfp4 import quantize_into
from harness.layouts import ScaleLayout
from harness.problem import GemmProblem
from harness.experiments.linear import linear_inputs
from harness.runner import execute
from harness.strategies import CALIBRATION_RATIOS
from harness.trial import Trial


# ----------------------------------------------------------------------------------------------
# The reference encoders saturate (cvt.rn.satfinite)
# ----------------------------------------------------------------------------------------------
def test_e4m3_encoder_saturates_at_448_never_nan() -> None:
    # 464 is the rounding midpoint between 448 and 480 (0x7F, NaN in e4m3fn): satfinite gives 448
    x = torch.tensor([448.0, 463.99, 464.0, 464.01, 480.0, 1e6, 3e38, math.inf, -464.0, -math.inf])
    got = e4m3_encode(x)
    assert got.tolist() == [E4M3_MAX_BYTE] * 8 + [0x80 | E4M3_MAX_BYTE] * 2
    assert torch.isfinite(e4m3_decode(got)).all()
    assert e4m3_encode(torch.tensor([math.nan])).item() == 0x7F  # NaN stays NaN


def test_e2m1_encoder_saturates_at_6_and_rounds_ties_to_even() -> None:
    x = torch.tensor([5.0, 5.0001, 6.0, 6.5, 100.0, math.inf, -5.0, -100.0])
    assert e2m1_decode(e2m1_encode(x)).tolist() == [4.0, 6.0, 6.0, 6.0, 6.0, 6.0, -4.0, -6.0]


# ----------------------------------------------------------------------------------------------
# Calibration ratios
# ----------------------------------------------------------------------------------------------
def test_static_global_scale_follows_the_ratio() -> None:
    amax = torch.tensor(3.25)
    dyn = global_scale_encode_divisor(amax)
    assert torch.equal(static_global_scale(amax, None), dyn)
    assert torch.equal(static_global_scale(amax, 1.0), dyn)  # exactly the calibration: the dynamic scale
    assert torch.equal(static_global_scale(amax, 2.0 ** 10), dyn * 2.0 ** 10)  # powers of two are exact
    assert torch.equal(calibrated_amax(amax, 0.5), amax * 2)
    for bad in (0.0, -1.0, math.inf, math.nan, True, "2"):
        with pytest.raises(ValueError, match="calibration"):
            calibrated_amax(amax, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="problem.calibration"):
        GemmProblem(m=1, n=16, k=16, calibration=0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("ratio", CALIBRATION_RATIOS)
@pytest.mark.parametrize("layout", [ScaleLayout.SWIZZLED_128x4, ScaleLayout.LINEAR])
def test_triton_quantizer_saturates_like_the_reference(dtype, ratio, layout) -> None:
    torch.manual_seed(0)
    x = torch.randn(9, 64).to(dtype)
    # blocks whose scale lands exactly on the 464 midpoint and just around it at ratio 1, and a
    # block of e2m1 ties (5.0 in units of the block scale)
    amax = float(x.float().abs().amax())
    x[3, :16] = amax
    x[4, 16:32] = torch.tensor(amax * 464.0 / 448.0).to(dtype)
    x[5, 32:48] = amax * 5.0 / 6.0
    x = x.to(dtype)
    gs = static_global_scale(x.float().abs().amax(), ratio).reshape(1)
    codes, sf = reference_quantize(x, gs)
    packed, scales = quantize_into(x, gs, layout, data_rows=9, data_k=64)
    from harness.format import unpack_e2m1
    from harness.layouts import unswizzle

    lin = scales if layout is ScaleLayout.LINEAR else unswizzle(scales, layout)
    assert torch.equal(lin[:9, :4], sf)
    assert torch.equal(unpack_e2m1(packed[:9, :32]), codes)
    assert not ((sf & 0x7F) == 0x7F).any(), "a NaN block scale"
    if ratio > 1.5:
        assert (sf == E4M3_MAX_BYTE).any() and ((codes & 7) == 7).any(), "the saturating path was not exercised"


# ----------------------------------------------------------------------------------------------
# Through the engine: quantizers, GEMM operands, linear layers
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,prop", [
    ("quant-triton-128x4", "quantizer_agreement"),
    ("triton-emu-128x4", "reference_agreement"),
    ("linear-vllm[triton-emu-128x4]", "reference_agreement"),
])
def test_correct_backends_pass_far_above_the_calibration(backend, prop) -> None:
    trial = Trial(backend, prop, GemmProblem(m=5, n=48, k=64, seed=3, calibration=2.0 ** 10))
    out = execute(trial)
    assert out.status == "pass", out.reason
    if prop == "quantizer_agreement":
        assert out.measure["saturated_scales"] > 0 and out.measure["calibration"] == 2.0 ** 10


def test_linear_layer_uses_the_checkpoint_static_input_scale() -> None:
    p = GemmProblem(m=4, n=32, k=64, seed=1, calibration=2.0)
    x, weight, _ = linear_inputs(p, "cpu")
    assert weight.input_scale is not None
    # ModelOpt's input_scale is calibrated amax / 2688; the engine quantizes with its reciprocal
    assert math.isclose(float(weight.input_scale) * 2688 * 2.0, float(x.float().abs().amax()), rel_tol=1e-6)
    assert linear_inputs(p.with_(calibration=None), "cpu")[1].input_scale is None


def test_calibration_mutants_are_caught_only_with_a_static_scale() -> None:
    p = GemmProblem(m=5, n=48, k=64, seed=3)
    for name, prop in (("mutant-quantizer-no-satfinite", "quantizer_agreement"),
                       ("mutant-input-scale-mismatch", "reference_agreement")):
        assert execute(Trial(name, prop, p)).status == "pass", name  # dynamic scale: the bug is invisible
        assert execute(Trial(name, prop, p.with_(calibration=2.0 ** 10))).status == "fail", name


# ----------------------------------------------------------------------------------------------
# Case files
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,prop,level", [
    ("mutant-quantizer-no-satfinite", "quantizer_agreement", "quantizer"),
    ("mutant-input-scale-mismatch", "reference_agreement", "linear"),
])
def test_a_calibrated_case_replays_bit_for_bit(tmp_path, backend, prop, level) -> None:
    trial = Trial(backend, prop, GemmProblem(m=3, n=32, k=48, seed=2, calibration=1.0 + 2.0 ** -4))
    first = execute(trial, digest=True)
    assert first.status == "fail" and first.digest
    case = Case.from_trial(trial, level=level, observed={"summary": first.reason}, environment={},
                           digest=first.digest)
    path = save_case(case, tmp_path / "c.json")
    assert json.loads(path.read_text())["problem"]["calibration"] == 1.0 + 2.0 ** -4
    again = load_case(path).trial()
    assert again == trial
    second = execute(again, digest=True)
    assert second.digest == first.digest and second.reason == first.reason


def test_a_bad_calibration_in_a_case_file_names_the_field(tmp_path) -> None:
    trial = Trial("quant-triton-128x4", "quantizer_agreement", GemmProblem(m=1, n=16, k=16, calibration=2.0))
    doc = Case.from_trial(trial, level="quantizer", observed={"summary": "x"}, environment={}).to_dict()
    doc["replay"] = "nvfp4-harness replay c.json"
    for bad in ("2", -1.0, 0):
        doc["problem"]["calibration"] = bad
        (tmp_path / "c.json").write_text(json.dumps(doc))
        with pytest.raises(CaseFileError) as err:
            load_case(tmp_path / "c.json")
        assert err.value.field == "problem.calibration"


def test_the_report_names_the_calibration_ratio() -> None:
    from harness.report.view import _problem_text

    p = GemmProblem(m=1, n=16, k=16, calibration=2.0 ** 10).to_dict()
    assert "calibration ratio 1024" in _problem_text(p)
    assert "calibration" not in _problem_text(GemmProblem(m=1, n=16, k=16).to_dict())
