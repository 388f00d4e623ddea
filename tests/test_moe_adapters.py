"""FlashInfer's fused NVFP4 MoE adapters (harness.backends.flashinfer_moe) up to the capability gate.

No Blackwell GPU was available, so neither kernel has run for this project.  On the CPU these tests
check what can be checked without one: the prepared keyword arguments against the installed
function's own signature, every reordering of the weights inverted back to the harness's operands
(gate/up halves, padding to 128-row tiles, FlashInfer's own row permutations), and that the
adapters refuse with a reason where the library cannot run.  ``tests/test_moe_adapters_gpu.py``
runs them on a GPU.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from harness import env
from harness.format import BLOCK_SIZE
from harness.grouped import registry
from harness.grouped.checks import execute
from harness.grouped.moe import build_moe_operands
from harness.grouped.problem import GroupedTrial, MoeProblem
from harness.layouts import ScaleLayout, unswizzle

fi = pytest.importorskip("flashinfer", reason="flashinfer is not installed (the adapters skip with that reason)")


def _ops(**kw):
    kw.setdefault("fc1_input_scale", "shared")
    p = MoeProblem.from_splits([2, 0, 1], 1, hidden=kw.pop("hidden", 32), intermediate=kw.pop("intermediate", 64),
                               seed=1, row_align=(1, 1, 1), **kw)
    return build_moe_operands(p, device="cpu")


def _required(fn) -> set[str]:
    return {n for n, q in inspect.signature(fn).parameters.items()
            if q.default is inspect.Parameter.empty and q.kind is not inspect.Parameter.VAR_KEYWORD}


@pytest.mark.parametrize("name", ["flashinfer-cutlass-moe", "flashinfer-trtllm-moe"])
def test_prepare_speaks_the_installed_signature(name):
    b = registry.get(name)
    kwargs = b.prepare(_ops())
    fn = getattr(importlib.import_module("flashinfer.fused_moe"), b.fi_function)
    params = set(b.parameters())
    assert set(kwargs) <= params, sorted(set(kwargs) - params)
    assert _required(fn) <= set(kwargs), sorted(_required(fn) - set(kwargs))


def test_cutlass_gets_up_then_gate_halves_data_and_scales():
    ops = _ops(fc1_input_scale="per_expert")
    i = ops.intermediate
    kw = registry.get("flashinfer-cutlass-moe").prepare(ops)
    w13 = kw["fc1_expert_weights"].view(torch.uint8).reshape(ops.w13.packed.shape)
    assert torch.equal(w13[:, :i], ops.w13.packed[:, i:2 * i]) and torch.equal(w13[:, i:], ops.w13.packed[:, :i])
    sf = kw["quant_scales"][1].view(torch.uint8)
    assert sf.shape == ops.w13.scales.shape
    for e in range(ops.problem.experts):
        got, want = unswizzle(sf[e], ScaleLayout.SWIZZLED_128x4), unswizzle(ops.w13.scales[e], ScaleLayout.SWIZZLED_128x4)
        assert torch.equal(got[:i], want[i:2 * i]) and torch.equal(got[i:2 * i], want[:i])
        assert torch.equal(got[2 * i:], want[2 * i:])  # padding rows carried over unchanged
    assert kw["quant_scales"][0].shape == (ops.problem.experts,)  # per-expert FC1 input scales
    assert kw["fc2_expert_weights"].dtype == torch.int64 and kw["use_fused_finalize"] is False


def test_trtllm_weights_invert_to_up_gate_padded_to_128_rows():
    """I = 64 (I % 128 == 64, TRT-LLM #10331) is padded to 128 per half with zero codes and 1.0
    scales and declared as valid_intermediate_size; FlashInfer's permutation, inverted, gives back
    [up; gate]."""
    from flashinfer.fused_moe.core import _maybe_get_cached_w3_w1_permute_indices

    ops = _ops(intermediate=64, hidden=32)
    i, h = 64, 32
    kw = registry.get("flashinfer-trtllm-moe").prepare(ops)
    assert kw["intermediate_size"] == 128 and kw["valid_intermediate_size"] == 64
    assert kw["valid_hidden_size"] == 32 and kw["hidden_states"].shape == (ops.tokens, 256 // 2)
    g1 = kw["gemm1_weights"]
    perm = _maybe_get_cached_w3_w1_permute_indices({}, g1[0], 128)
    for e in range(ops.problem.experts):
        logical = torch.empty_like(g1[e])
        logical[perm] = g1[e]
        up, gate = logical[:128, :h // 2], logical[128:, :h // 2]
        assert torch.equal(up[:i], ops.w13.packed[e, i:2 * i]) and torch.equal(gate[:i], ops.w13.packed[e, :i])
        assert not bool(up[i:].any()) and not bool(logical[:, h // 2:].any())  # zero codes in the padding
    assert kw["output1_scale_gate_scalar"].shape == (ops.problem.experts,)


def test_trtllm_refuses_per_expert_fc1_scales():
    from harness.backends.protocol import Unsupported

    with pytest.raises(Unsupported, match="shared FC1 input scale"):
        registry.get("flashinfer-trtllm-moe").prepare(_ops(fc1_input_scale="per_expert"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU gate; tests/test_moe_adapters_gpu.py runs on a GPU")
@pytest.mark.parametrize("name", ["flashinfer-cutlass-moe", "flashinfer-trtllm-moe"])
def test_cpu_gate_is_the_libraries_behaviour(name):
    """Skipped on the CPU with a reason; the skip agrees with what the library does here: called
    with the prepared CPU tensors it raises (it never returns a result on the CPU)."""
    b = registry.get(name)
    sup = b.support(env.current())
    assert not sup and "CUDA" in sup.reason
    ops = _ops()
    fn = getattr(importlib.import_module("flashinfer.fused_moe"), b.fi_function)
    with pytest.raises(Exception) as exc:
        fn(**b.prepare(ops))
    assert not isinstance(exc.value, TypeError), f"the prepared arguments do not fit the call: {exc.value}"
    out = execute(GroupedTrial(name, "reference_agreement", ops.problem))
    assert out.status == "skip" and out.reason == sup.reason
