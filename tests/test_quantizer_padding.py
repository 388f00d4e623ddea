"""The quantizer padding contract: padding bytes of a quantizer's output are counted per region and
must be zero, unless the backend declares it leaves them (then the consumers it is unsafe for are named)."""

from __future__ import annotations

import pytest
import torch

from harness import checks
from harness.backends.protocol import QuantizerBackend, Requirements
from harness.kernels.nvfp4 import quantize_into
from harness.layouts import OperandRole, Region, ScaleLayout, padding_map
from harness.problem import GemmProblem
from harness.runner import execute
from harness.trial import Trial

L = ScaleLayout


def _quantized(rows: int, k: int, row_fill: int = 0, ktail_fill: int = 0, layout=L.SWIZZLED_128x4):
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    gs = torch.tensor([100.0])
    packed, scales = quantize_into(x, gs, layout, data_rows=rows, data_k=k, row_fill=row_fill,
                                   ktail_fill=ktail_fill)
    return packed, scales, padding_map(layout, OperandRole.ACTIVATION, rows, k // 16)


def test_zero_padding_passes_and_is_counted_per_region() -> None:
    packed, scales, pm = _quantized(5, 48)
    res = checks.quantizer_padding(scales, pm.regions, packed, 5, 48)
    assert res.ok
    assert res.measure["padding_bytes"] == {"m_pad": pm.count(Region.M_PAD), "k_tail": pm.count(Region.K_TAIL),
                                            "data": 0}
    assert res.measure["padding_nonzero"] == {"m_pad": 0, "k_tail": 0, "data": 0}


def test_nan_in_padding_rows_fails_naming_the_region_and_its_consumers() -> None:
    packed, scales, pm = _quantized(5, 48, row_fill=0x7F)
    res = checks.quantizer_padding(scales, pm.regions, packed, 5, 48)
    assert not res.ok
    assert res.measure["padding_nonzero"]["m_pad"] == pm.count(Region.M_PAD) > 0
    assert res.measure["padding_nonzero"]["k_tail"] == 0
    assert "8x4" in res.summary


def test_a_declared_region_passes_and_names_the_unsafe_consumers() -> None:
    packed, scales, pm = _quantized(5, 48, row_fill=0x7F, ktail_fill=0x7F)
    only_rows = checks.quantizer_padding(scales, pm.regions, packed, 5, 48, declared=("m_pad",))
    assert not only_rows.ok  # the K tail is not declared
    both = checks.quantizer_padding(scales, pm.regions, packed, 5, 48, declared=("m_pad", "k_tail"))
    assert both.ok and both.measure["padding_unsafe_for"] == \
        list(checks.PADDING_CONSUMERS["m_pad"] + checks.PADDING_CONSUMERS["k_tail"])


def test_packed_data_padding_is_counted() -> None:
    packed, scales, pm = _quantized(5, 48)
    wider = torch.zeros((8, 32), dtype=torch.uint8)
    wider[:5, :24] = packed
    assert checks.quantizer_padding(scales, pm.regions, wider, 5, 48).ok
    wider[6, 30] = 0x11
    res = checks.quantizer_padding(scales, pm.regions, wider, 5, 48)
    assert not res.ok and res.measure["padding_nonzero"]["data"] == 1
    assert res.measure["padding_bytes"]["data"] == 8 * 32 - 5 * 24


class _LeavesRows(QuantizerBackend):
    """A quantizer that declares it leaves its padding rows (as a plugin would)."""
    name = "test-quantizer-leaves-rows"
    description = "registered only while this test runs"
    layout = L.SWIZZLED_8x4
    leaves_padding = ("m_pad",)
    requirements = Requirements(runs_on_cpu=True, a_layouts=(L.SWIZZLED_8x4,), w_layout=L.SWIZZLED_8x4)

    def quantize(self, x, global_scale):
        rows, k = x.shape
        return quantize_into(x, global_scale.reshape(1).float(), self.layout, data_rows=rows, data_k=k,
                             row_fill=0x7F, ktail_fill=0)


@pytest.fixture
def leaves_rows(register_backend) -> str:
    return register_backend(_LeavesRows())


def test_the_engine_reports_a_declared_region_and_fails_an_undeclared_one(leaves_rows) -> None:
    p = GemmProblem(m=3, n=16, k=32, seed=1)
    declared = execute(Trial(leaves_rows, "quantizer_agreement", p))
    assert declared.status == "pass", declared.reason
    assert declared.measure["padding_nonzero"]["m_pad"] > 0 and declared.measure["padding_unsafe_for"]
    undeclared = execute(Trial("mutant-quantizer-nan-padding", "quantizer_agreement", p))
    assert undeclared.status == "fail" and "padding" in undeclared.reason
    assert execute(Trial("quant-triton-128x4", "quantizer_agreement", p)).status == "pass"
    # a multiple of the 128-row tile has no padding rows: nothing to see
    assert execute(Trial("mutant-quantizer-nan-padding", "quantizer_agreement", p.with_(m=128))).status == "pass"


def test_a_padding_case_replays_bit_for_bit(through_a_case_file) -> None:
    trial = Trial("mutant-quantizer-nan-padding", "quantizer_agreement", GemmProblem(m=1, n=16, k=16))
    first, again, second = through_a_case_file(trial, "quantizer")
    assert again == trial and first.status == second.status == "fail"
    assert second.digest == first.digest and second.measure["padding_nonzero"] == first.measure["padding_nonzero"]
