"""The ``graph_replay`` property without a GPU: the verdict, the capability decisions, the skip, the
self-test's "needs a GPU", and the experiments' orchestration (static buffers, refill with new data
and poison, eager comparison) with the CUDA graph factored out.

What a CUDA graph itself does (kernels recorded once, host code not re-run on replay) is checked on
a GPU only: tests/test_graph_replay_gpu.py and ``properties/test_properties.py::test_property[...::graph_replay]``.
Here :func:`host_replay` stands in for :func:`harness.experiments.capture_and_replay` with the same
call sequence (warm-up, the call that would be captured, refill, the call that would be replayed),
re-running the Python of the call each time: it reproduces the host-side caching the planted bugs
use, not a graph's device-side semantics, and is used only to test the orchestration.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import harness.kernels  # noqa: F401  (sets TRITON_INTERPRET on a CPU-only machine)
from harness import checks, selftest
from harness.backends import registry
from harness.backends.linear import EngineLinear, LoadedShard
from harness.backends.protocol import GemmBackend
from harness.experiments import NotApplicable, graphs_unavailable
from harness.experiments.gemm import GemmExperiment, operand_tensors, refill_operands
from harness.experiments.linear import LinearExperiment, linear_inputs
from harness.format import FP4_AMAX_PRODUCT, e2m1_decode, global_scale_encode_divisor
from harness.layouts import Region
from harness.problem import CLEAN, GemmProblem, Poison
from harness.runner import execute
from harness.trial import GEMM_PROPERTIES, GPU_ONLY_PROPERTIES, LINEAR_PROPERTIES, Trial

CPU = torch.device("cpu")
# where the orchestration tests run the Triton kernels: the GPU on a GPU node (compiled kernels take
# device tensors), else the CPU through the interpreter
DEV = torch.device("cuda") if torch.cuda.is_available() else CPU
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour; this machine has a GPU")
LINEAR = "linear-vllm[triton-emu-128x4]"
TRTLLM_LINEAR = "linear-sglang-trtllm[triton-emu-128x4+triton-emu-8x4]"
PROBLEM = GemmProblem(m=5, n=40, k=48, seed=3)


def host_replay(call, refill):
    """The call sequence of capture_and_replay with the graph factored out (see the module docstring)."""
    call()           # warm-up
    call()           # the call a graph would capture
    refill()
    return call()    # the call a graph would replay


# --- the verdict ---------------------------------------------------------------------------------
def test_verdict_bitwise_on_the_real_region_only() -> None:
    eager = torch.randn(8, 48).to(torch.bfloat16)
    same = eager.clone()
    same[5:, :] = float("nan")    # padding rows and columns are not compared
    same[:, 40:] = 7.0
    ok = checks.graph_replay(eager, same, 5, 40, ("m_pad",))
    assert ok.ok and ok.property == "graph_replay" and ok.measure["changed_elements"] == 0
    assert ok.measure["poisoned_after_capture"] == ["m_pad"]

    one_bit = eager.clone()
    one_bit.view(torch.int16)[3, 17] ^= 1   # one ulp: still a failure, the comparison is bit for bit
    bad = checks.graph_replay(eager, one_bit, 5, 40)
    assert not bad.ok
    assert bad.measure["changed_rows"] == [3] and bad.measure["changed_cols"] == [17]
    assert bad.measure["changed_elements"] == 1 and bad.measure["nan_rows"] == []
    assert bad.measure["grid"]["real_rows"] == 5

    nan = eager.clone()
    nan[1, :4] = float("nan")
    res = checks.graph_replay(eager, nan, 5, 40, ("m_pad",))
    assert not res.ok and res.measure["nan_rows"] == [1] and res.measure["changed_elements"] == 4
    assert "m_pad" in res.summary


def test_verdict_nan_in_both_is_equal_when_the_bits_are() -> None:
    """A NaN eager execution also produces (e.g. a poisoned K tail a hardware GEMM reads) is no
    difference: the comparison is of bits, both ways."""
    eager = torch.zeros(2, 16, dtype=torch.float16)
    eager[0, 0] = float("nan")
    assert checks.graph_replay(eager, eager.clone(), 2, 16).ok


# --- where it applies ----------------------------------------------------------------------------
def test_graph_replay_is_a_gemm_and_linear_property_that_needs_a_gpu() -> None:
    assert "graph_replay" in GEMM_PROPERTIES and "graph_replay" in LINEAR_PROPERTIES
    assert GPU_ONLY_PROPERTIES == ("graph_replay",)
    assert graphs_unavailable(CPU) is not None and "CUDA GPU" in graphs_unavailable(CPU)


@NO_GPU
@pytest.mark.parametrize("backend", ["triton-emu-128x4", LINEAR, "mutant-pad-zeroed-once"])
def test_without_a_gpu_it_is_a_skip_naming_the_reason_never_a_pass(backend: str) -> None:
    out = execute(Trial(backend, "graph_replay", PROBLEM, Poison(m_pad=0x7F)))
    assert out.status == "skip"
    assert out.reason.startswith("not applicable: ") and "CUDA GPU" in out.reason


class _NoGraphs(GemmBackend):
    """triton-emu-128x4 declaring that it cannot be captured."""
    name = "test-no-graphs"

    def __init__(self) -> None:
        self.base = registry.get("triton-emu-128x4")
        self.requirements = replace(self.base.requirements, cuda_graphs=False)

    def run(self, ops, out=None):
        return self.base.run(ops, out)


def test_a_declared_refusal_is_not_applicable_and_names_the_capability() -> None:
    exp = GemmExperiment(_NoGraphs(), Trial("test-no-graphs", "graph_replay", PROBLEM, Poison(m_pad=0x7F)), DEV)
    calls = []
    with pytest.raises(NotApplicable, match="cuda_graphs=False"):
        exp.graph_replay(replay=lambda call, refill: calls.append(1))
    assert not calls  # decided before anything is captured


def test_host_decoding_backend_declares_it_cannot_be_captured() -> None:
    b = registry.get("flashinfer-dequant-host")
    assert b.requirements.cuda_graphs is False and b.describe()["cuda_graphs"] is False
    assert registry.get("triton-emu-128x4").describe()["cuda_graphs"] is True


# --- orchestration (graph factored out) ----------------------------------------------------------
class _Recording(GemmBackend):
    """triton-emu-8x4 that records the activation bytes of every call."""
    name = "test-recording"

    def __init__(self) -> None:
        self.base = registry.get("triton-emu-8x4")
        self.requirements = self.base.requirements
        self.seen: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def run(self, ops, out=None):
        self.seen.append((ops.a.packed.clone(), ops.a.scales.clone(), ops.a.scales.data_ptr()))
        return self.base.run(ops, out)


def test_refill_writes_new_data_and_poison_into_the_captured_buffers() -> None:
    rec = _Recording()
    exp = GemmExperiment(rec, Trial(rec.name, "graph_replay", PROBLEM, Poison(m_pad=0x7F)), DEV)
    res = exp.graph_replay(replay=host_replay)
    assert res.ok, res.summary
    (p0, s0, ptr0), _, (p2, s2, ptr2), _ = rec.seen  # warm-up, capture, replay, then the eager call
    assert ptr0 == ptr2                                # the same buffer, changed in place
    assert not torch.equal(p0[:PROBLEM.m], p2[:PROBLEM.m])  # new activations
    pm = exp.first_ops.a.padding_map().regions
    m_pad = pm == int(Region.M_PAD)
    assert bool(m_pad.any())
    assert bool((s0[m_pad] == 0).all()) and bool((s2[m_pad] == 0x7F).all())  # poisoned after capture


def test_refill_refuses_other_buffers() -> None:
    exp = GemmExperiment(registry.get("triton-emu-128x4"), Trial("triton-emu-128x4", "graph_replay", PROBLEM), DEV)
    a = exp.ops(CLEAN)
    b = GemmExperiment(registry.get("triton-emu-128x4"),
                       Trial("triton-emu-128x4", "graph_replay", PROBLEM.with_(m=200)), DEV).ops(CLEAN)
    with pytest.raises(ValueError, match="a.packed"):
        refill_operands(a, b)
    assert set(operand_tensors(a)) == {"a.packed", "a.scales", "a.global_scale", "w.packed", "w.scales",
                                       "w.global_scale", "alpha"}


@pytest.mark.parametrize("backend", ["triton-emu-8x4", "torch-emu"])
def test_correct_gemms_pass_the_orchestration(backend: str) -> None:
    for poison in (Poison(m_pad=0x7F), Poison(m_pad=0xFF, n_pad=0x7E, k_tail=0x7F, data=0x5A)):
        exp = GemmExperiment(registry.get(backend), Trial(backend, "graph_replay", PROBLEM, poison), DEV)
        res = exp.graph_replay(replay=host_replay)
        assert res.ok, (backend, poison, res.summary)


@pytest.mark.parametrize("backend", [LINEAR, TRTLLM_LINEAR])
def test_correct_linear_layers_pass_the_orchestration(backend: str) -> None:
    for problem in (PROBLEM, PROBLEM.with_(batch=(1, 5)), PROBLEM.with_(calibration=4.0)):
        exp = LinearExperiment(registry.get(backend), Trial(backend, "graph_replay", problem), DEV)
        res = exp.graph_replay(replay=host_replay)
        assert res.ok, (backend, problem, res.summary)


def test_gemm_mutant_is_caught_by_the_orchestration_and_passes_eagerly() -> None:
    """mutant-pad-zeroed-once: zeroes the padding it reads once per buffer; eagerly every call has a
    new buffer, so the eager properties pass; refilled in place it reads the poison."""
    name, poison = "mutant-pad-zeroed-once", Poison(m_pad=0x7F)
    exp = GemmExperiment(registry.get(name), Trial(name, "graph_replay", PROBLEM, poison), DEV)
    res = exp.graph_replay(replay=host_replay)
    assert not res.ok and res.measure["nan_rows"] == list(range(PROBLEM.m))
    for prop in ("row_isolation", "reference_agreement", "determinism"):
        assert execute(Trial(name, prop, PROBLEM, poison if prop == "row_isolation" else CLEAN)).status == "pass"


def test_linear_mutant_is_caught_by_the_orchestration_and_passes_eagerly() -> None:
    name = "mutant-scale-per-input-buffer"
    exp = LinearExperiment(registry.get(name), Trial(name, "graph_replay", PROBLEM), DEV)
    res = exp.graph_replay(replay=host_replay)
    assert not res.ok and res.measure["changed_elements"] > 0
    for prop in ("reference_agreement", "determinism", "batch_invariance", "input_isolation"):
        assert execute(Trial(name, prop, PROBLEM)).status == "pass", prop
    # the static input_scale path does not use the cache
    calibrated = LinearExperiment(registry.get(name), Trial(name, "graph_replay", PROBLEM.with_(calibration=2.0)), DEV)
    assert calibrated.graph_replay(replay=host_replay).ok


# --- the self-test -------------------------------------------------------------------------------
@NO_GPU
@pytest.mark.parametrize("name", ["mutant-pad-zeroed-once", "mutant-scale-per-input-buffer"])
def test_selftest_reports_a_gpu_only_mutant_as_needing_a_gpu(name: str) -> None:
    score = selftest.hunt(name, budget_s=30, examples=5)
    assert score.verdict == "NEEDS A GPU" and not score.ran and score.caught_by is None and not score.budget_cut
    board = selftest.scoreboard([score, selftest.Score("mutant-y", "x", "reference_agreement",
                                                       caught_by="reference_agreement", parent_outcome="pass")])
    assert "SURVIVED" not in board and f"1 need a GPU, not searched: {name}" in board and "1/1 mutants caught" in board


# --- capture-safe building blocks ----------------------------------------------------------------
def test_global_scale_is_the_same_fp32_division_as_before() -> None:
    """2688 / amax computed with a device-side fill (capture-safe) is the IEEE fp32 division, bit for
    bit, not a reciprocal-multiply (which a Python scalar numerator would give)."""
    amax = torch.cat([torch.rand(2000) * 1e4, torch.tensor([0.0, 1e-30, 3.0e38, 448.0, 6.0])])
    got = torch.stack([global_scale_encode_divisor(a) for a in amax]).reshape(-1)
    want = torch.where(amax > 0, torch.tensor(FP4_AMAX_PRODUCT, dtype=torch.float32) /
                       torch.where(amax > 0, amax, torch.ones_like(amax)), torch.ones_like(amax))
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_e2m1_table_is_built_once_per_device_and_decodes_every_code() -> None:
    codes = torch.arange(16, dtype=torch.uint8)
    first = e2m1_decode(codes)
    again = e2m1_decode(codes)
    assert torch.equal(first, again)
    assert first[8].item() == 0.0 and torch.signbit(first[8]) and first[7].item() == 6.0 and first[15].item() == -6.0
    from harness import format as fmt
    assert fmt._e2m1_table(CPU) is fmt._e2m1_table(CPU)


def test_engine_linear_load_then_forward_is_run() -> None:
    layer = registry.get(TRTLLM_LINEAR)
    assert isinstance(layer, EngineLinear)
    for m in (5, 40):  # the small-m GEMM and the large one, each prepared once
        x, weight, bias = linear_inputs(PROBLEM.with_(m=m), DEV)
        loaded = layer.load(weight)
        assert isinstance(loaded, LoadedShard) and not loaded.prepared
        a = layer.forward(loaded, x, bias)
        prepared = dict(loaded.prepared)
        b = layer.forward(loaded, x, bias)
        assert loaded.prepared == prepared and len(prepared) == 1
        c = layer.run(x, weight, bias)
        assert torch.equal(a.view(torch.int16), b.view(torch.int16)) and torch.equal(a.view(torch.int16), c.view(torch.int16))
    with pytest.raises(TypeError, match="load"):
        layer.forward(weight, x, bias)
