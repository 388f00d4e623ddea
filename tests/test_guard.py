"""Guard bytes around every buffer the harness hands to a backend: a write outside fails the case."""

from __future__ import annotations

import pytest
import torch

from harness import guard
from harness.backends.protocol import QuantizerBackend, Requirements
from harness.kernels.nvfp4 import quantize_into
from harness.layouts import ScaleLayout
from harness.problem import GemmProblem
from harness.runner import execute
from harness.trial import Trial


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bfloat16, torch.float32])
def test_a_guarded_copy_is_equal_and_its_guards_see_writes_on_either_side(dtype) -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).to(dtype)
    g = guard.guarded(t)
    assert torch.equal(g, t) and g.is_contiguous() and guard.is_guarded(g)
    assert guard.violations(g) is None
    storage = torch.empty(0, dtype=torch.uint8).set_(g.untyped_storage())
    start = g.storage_offset() * g.element_size()
    end = start + g.numel() * g.element_size()
    storage[end + 3] = 0
    assert "after the end" in guard.violations(g) and "+3" in guard.violations(g)
    storage[end + 3] = guard.GUARD_BYTE
    storage[start - 1] = 0
    assert "before the start" in guard.violations(g) and "-1" in guard.violations(g)
    g.fill_(0)  # writes inside the buffer are the backend's business
    storage[start - 1] = guard.GUARD_BYTE
    assert guard.violations(g) is None


def test_fill_and_unguarded_tensors() -> None:
    g = guard.guarded(torch.empty(2, 3, dtype=torch.bfloat16), fill=float("nan"))
    assert torch.isnan(g).all()
    plain = torch.zeros(4)
    assert not guard.is_guarded(plain) and guard.check({"plain": plain, "g": g}) == []


def test_a_gemm_writing_one_row_past_its_output_fails_and_its_parent_passes() -> None:
    p = GemmProblem(m=5, n=48, k=48, seed=3)
    bad = execute(Trial("mutant-writes-past-output", "output_coverage", p))
    assert bad.status == "fail" and "guard bytes" in bad.reason and "out:" in bad.reason
    # its real rows are right: the other properties see nothing
    assert execute(Trial("mutant-writes-past-output", "reference_agreement", p)).status == "pass"
    assert execute(Trial("triton-emu-128x4", "output_coverage", p)).status == "pass"


class _WritesPastScales(QuantizerBackend):
    """A quantizer that writes one byte past the global scale it is handed (a plugin's bug)."""
    name = "test-quantizer-writes-past-gs"
    description = "registered only while this test runs"
    layout = ScaleLayout.SWIZZLED_128x4
    requirements = Requirements(runs_on_cpu=True, a_layouts=(layout,), w_layout=layout)

    def quantize(self, x, global_scale):
        rows, k = x.shape
        out = quantize_into(x, global_scale.reshape(1).float(), self.layout, data_rows=rows, data_k=k)
        st = torch.empty(0, dtype=torch.uint8, device=global_scale.device).set_(global_scale.untyped_storage())
        st[global_scale.storage_offset() * 4 + 4] = 0
        return out


def test_a_quantizer_writing_past_an_input_fails(register_backend) -> None:
    name = register_backend(_WritesPastScales())
    res = execute(Trial(name, "quantizer_agreement", GemmProblem(m=2, n=16, k=32)))
    assert res.status == "fail" and "global_scale: 1 guard bytes after the end changed" in res.reason


def test_every_level_hands_guarded_buffers_and_correct_backends_pass() -> None:
    p = GemmProblem(m=3, n=40, k=48, seed=2, batch=(1, 3))
    for backend, prop in (("linear-vllm[triton-emu-128x4]", "reference_agreement"),
                          ("quant-triton-8x4", "quantizer_agreement"), ("triton-w4a16", "output_coverage")):
        assert execute(Trial(backend, prop, p if backend.startswith("linear") else p.with_(batch=None))).status \
            == "pass", backend


def test_a_guard_case_replays_bit_for_bit(through_a_case_file) -> None:
    trial = Trial("mutant-writes-past-output", "output_coverage", GemmProblem(m=1, n=16, k=16))
    first, again, second = through_a_case_file(trial, "gemm")
    assert again == trial and first.status == second.status == "fail"
    assert second.digest == first.digest and second.reason == first.reason
