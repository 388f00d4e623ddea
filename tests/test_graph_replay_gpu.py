"""The ``graph_replay`` property under real CUDA graphs (skipped without a CUDA GPU).

Small shapes, a few fixed cases: every correct emulation backend replays bit-identically with eager
execution after its inputs change in place and its padding is poisoned after capture; both planted
bugs of the class (a padding zeroed once per buffer, an activation scale cached per input buffer)
are caught while their parents pass the same trials; a backend whose call cannot be captured fails
with the capture error, and the CUDA context keeps working; a backend declaring
``cuda_graphs=False`` is skipped with that reason.  The property suite also runs it for every
backend (``properties/test_properties.py::test_property[<backend>::graph_replay]``) and the
self-test hunts the two mutants (``tests/test_mutants.py``).
"""

from __future__ import annotations

import pytest
import torch

import harness.kernels  # noqa: F401
from harness import env
from harness.backends import registry
from harness.backends.protocol import GemmBackend
from harness.experiments import GraphCaptureError, classify_exception
from harness.experiments.gemm import GemmExperiment
from harness.problem import GemmProblem, Poison
from harness.runner import execute
from harness.trial import Trial

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GEMMS = ["triton-emu-128x4", "triton-emu-8x4", "triton-emu-linear", "torch-emu", "triton-w4a16"]
LINEARS = ["linear-vllm[triton-emu-128x4]", "linear-sglang[triton-emu-128x4]",
           "linear-sglang-trtllm[triton-emu-128x4+triton-emu-8x4]", "linear-vllm[torch-emu]",
           "linear-vllm[triton-w4a16]"]
PROBLEMS = [GemmProblem(m=5, n=40, k=48, seed=3), GemmProblem(m=33, n=72, k=464, seed=1, out_dtype="float16",
                                                                 in_dtype="float16")]
POISONS = [Poison(m_pad=0x7F), Poison(m_pad=0xFF, n_pad=0x7E, k_tail=0x7F, data=0x5A)]


@pytest.mark.parametrize("backend", GEMMS)
def test_correct_gemms_replay_like_eager(backend: str) -> None:
    for problem in PROBLEMS:
        for poison in POISONS:
            out = execute(Trial(backend, "graph_replay", problem, poison))
            assert out.status == "pass", (backend, problem, poison, out.reason)


@pytest.mark.parametrize("backend", LINEARS)
def test_correct_linear_layers_replay_like_eager(backend: str) -> None:
    for problem in (PROBLEMS[0], PROBLEMS[0].with_(calibration=4.0), PROBLEMS[1].with_(out_dtype="float16")):
        out = execute(Trial(backend, "graph_replay", problem))
        assert out.status == "pass", (backend, problem, out.reason)


@pytest.mark.parametrize("mutant, poison", [("mutant-pad-zeroed-once", Poison(m_pad=0x7F)),
                                            ("mutant-scale-per-input-buffer", Poison())])
def test_mutants_fail_their_parents_pass(mutant: str, poison: Poison) -> None:
    m = registry.get(mutant)
    trial = Trial(mutant, "graph_replay", PROBLEMS[0], poison)
    out = execute(trial)
    assert out.status == "fail" and "differ from eager" in out.reason, out.reason
    parent = execute(Trial(m.parent, "graph_replay", PROBLEMS[0], poison))
    assert parent.status == "pass", parent.reason
    # eagerly the mutant is its parent
    assert execute(Trial(mutant, "reference_agreement", PROBLEMS[0])).status == "pass"


class _HostSync(GemmBackend):
    """triton-emu-128x4 that reads alpha on the host first: cannot be captured."""
    name = "test-host-sync"

    def __init__(self) -> None:
        self.base = registry.get("triton-emu-128x4")
        self.requirements = self.base.requirements

    def run(self, ops, out=None):
        if float(ops.alpha.reshape(())) <= 0:  # a device-to-host copy: forbidden while capturing
            raise ValueError("alpha must be positive")
        return self.base.run(ops, out)


def test_a_call_that_cannot_be_captured_fails_with_the_capture_error() -> None:
    b = _HostSync()
    exp = GemmExperiment(b, Trial(b.name, "graph_replay", PROBLEMS[0], Poison(m_pad=0x7F)), torch.device("cuda"))
    with pytest.raises(GraphCaptureError, match="during CUDA graph capture") as info:
        exp.graph_replay()
    status, msg = classify_exception(info.value)
    assert status == "fail", msg  # a failure of that backend, never a pass and not a lost context
    # the context still works: the next case runs
    assert execute(Trial("triton-emu-128x4", "graph_replay", PROBLEMS[0], Poison(m_pad=0x7F))).status == "pass"


def test_a_declared_refusal_is_a_skip_naming_the_capability() -> None:
    b = registry.get("flashinfer-dequant-host")
    if not b.support(env.current()):
        pytest.skip("flashinfer-dequant-host does not run here")
    out = execute(Trial(b.name, "graph_replay", PROBLEMS[0], Poison(m_pad=0x7F)))
    assert out.status == "skip" and "cuda_graphs=False" in out.reason
