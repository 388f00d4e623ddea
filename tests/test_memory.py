"""A GEMM case needs at most a fixed multiple of its operands' memory (harness/memory.py)."""

from __future__ import annotations

import pytest
import torch

from harness.memory import CASE_MEMORY_MULTIPLE, operand_bytes, peak_bytes
from harness.problem import GemmProblem
from harness.runner import execute
from harness.trial import Trial


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where peak_bytes measures
# On a GPU the caching allocator rounds every block up to 512 bytes, so the shapes there are large
# enough for that rounding not to count; 1024^3 takes the int8 reference.
SHAPES = ([(64, 256, 2048), (1100, 1536, 16), (256, 1024, 1024), (1024, 1024, 1024)] if DEVICE == "cuda"
          else [(1, 16, 16), (33, 64, 256), (256, 256, 16), (1, 512, 512)])


def test_the_meter_sees_what_is_allocated_and_freed():
    def make(n):
        t = torch.ones(n, dtype=torch.float64, device=DEVICE)
        u = t * 2  # two live buffers of n * 8 bytes
        del t
        v = u + 1  # still two: t was freed
        return float(v[0])

    for n in (1 << 12, 1 << 16):
        peak = peak_bytes(lambda: make(n))
        assert 2 * 8 * n <= peak < 2 * 8 * n + 1024  # (a few bytes of scalars on top)


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("prop", ["reference_agreement", "row_isolation"])
def test_a_case_needs_at_most_a_fixed_multiple_of_its_operands(m, n, k, prop):
    trial = Trial("triton-emu-128x4", prop, GemmProblem(m, n, k))
    first = execute(trial)  # compiles; caches are warm for the measured run
    assert first.status == "pass", first.reason
    outcome = []
    peak = peak_bytes(lambda: outcome.append(execute(trial)))
    assert outcome[0].status == "pass"
    assert 0 < peak <= CASE_MEMORY_MULTIPLE * operand_bytes(m, n, k), (peak, operand_bytes(m, n, k))
