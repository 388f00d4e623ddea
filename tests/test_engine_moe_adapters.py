"""vLLM's and SGLang's NVFP4 fused-MoE adapters (harness.backends.vllm_moe, sglang_moe) up to what
runs without the engines, and the weight-only (W4A16) fused-MoE level they need
(harness.backends.moe_w4a16, the W4A16 form of harness.grouped.moe_reference).

Neither engine is installed on the harness's machines (they cannot be, usefully, on a CPU), so
these tests check: the pure operand mapping (the checkpoint tensors vLLM's loader takes, inverted
back to the harness's operands; the CUTLASS call arguments against the harness's layout), the
gating (no engine: a skip that names the package; the trial engine records exactly that), the
W4A16 reference against an independent fp64 computation, the W4A16 bound (no false alarm on the
Marlin-order emulation over drawn problems, not vacuous).  Tests of the installed signatures skip
with a reason where the package is absent; ``tests/test_engine_moe_adapters_gpu.py`` runs the
adapters on a GPU.
"""

from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from harness import env
from harness.backends._engine_moe import call_kwargs, checkpoint_tensors
from harness.backends.protocol import Unsupported
from harness.format import e2m1_decode, e4m3_decode, unpack_e2m1
from harness.grouped import registry, strategies
from harness.grouped.checks import execute
from harness.grouped.moe import build_moe_operands, silu64, weight_decode_scales
from harness.grouped.moe_reference import moe_error_bound, reference_moe
from harness.grouped.problem import GroupedPoison, GroupedTrial, MoeProblem
from harness.layouts import ScaleLayout, swizzle

ENGINE_ADAPTERS = {"vllm-marlin-moe": "vllm", "vllm-cutlass-moe": "vllm", "sglang-cutlass-moe": "sglang"}
W4A16 = "moe-torch-w4a16-emu"


def _installed(pkg: str) -> bool:
    return importlib.util.find_spec(pkg) is not None


def _ops(poison=GroupedPoison(), **kw):
    kw.setdefault("fc1_input_scale", "per_expert")
    p = MoeProblem.from_splits([2, 0, 3], 1, hidden=kw.pop("hidden", 32), intermediate=kw.pop("intermediate", 48),
                               seed=5, row_align=(1, 8, 1), **kw)
    return build_moe_operands(p, poison, device="cpu")


def test_checkpoint_tensors_invert_to_the_experts_weights_and_read_no_padding():
    """Decoding the checkpoint tensors (codes * e4m3 scale * weight_scale_2) gives every expert's
    dequantized weight times its decode scale; the gate rows come first; the poisoned padding of
    the harness's buffers (N padding, K tail) is not in them."""
    ops = _ops(GroupedPoison(n_pad=0x7F, k_tail=0x7F, data=0x77))
    for cw, w in zip(checkpoint_tensors(ops), (ops.w13, ops.w2)):
        e_count = w.packed.shape[0]
        assert cw.weight.shape == (e_count, w.n, w.k // 2) and cw.weight.dtype == torch.uint8
        assert cw.weight_scale.shape == (e_count, w.n, w.k // 16) and cw.weight_scale.dtype == torch.uint8
        assert torch.equal(cw.weight_scale_2, weight_decode_scales(w))
        for e in range(e_count):
            codes = e2m1_decode(unpack_e2m1(cw.weight[e])).double()
            sf = e4m3_decode(cw.weight_scale[e]).double().repeat_interleave(16, dim=1)
            assert torch.equal(codes * sf, w.expert(e).dequantize().double())
            assert torch.isfinite(codes * sf).all()  # no 0x7F (NaN) padding scale was carried over
    # [gate; up]: rows [0, I) of W13 hold the gate projection of the generated weight
    p = ops.problem
    gate = p.fc1_weight(0, "cpu")[:p.intermediate]
    w13 = checkpoint_tensors(ops)[0]
    deq = e2m1_decode(unpack_e2m1(w13.weight[0][:p.intermediate])).double() * \
        e4m3_decode(w13.weight_scale[0][:p.intermediate]).double().repeat_interleave(16, dim=1) * \
        float(w13.weight_scale_2[0])
    assert torch.allclose(deq, gate.double(), rtol=0.3, atol=float(gate.abs().max()) * 0.2)


def test_vllm_swizzle_blockscale_layout_is_the_harness_128x4():
    """vLLM's and SGLang's ``swizzle_blockscale`` pad [N, K/16] to [N/128*128, K/64*4] and store it as
    ``reshape(N/128, 4, 32, K/64, 4).permute(0, 3, 2, 1, 4)`` (their source, expressed here): the
    CUTLASS adapters pass the harness's 128x4 bytes unchanged, so the two layouts must agree."""
    rows, kb = 256, 8
    lin = torch.randint(0, 255, (rows, kb), dtype=torch.uint8)
    theirs = lin.reshape(rows // 128, 4, 32, kb // 4, 4).permute(0, 3, 2, 1, 4).contiguous().reshape(rows, kb)
    assert torch.equal(swizzle(lin, ScaleLayout.SWIZZLED_128x4).reshape(rows, kb), theirs)


@pytest.mark.parametrize("name", ["vllm-cutlass-moe", "sglang-cutlass-moe"])
def test_cutlass_arguments_are_the_harness_operands(name):
    ops = _ops(hidden=32, intermediate=64)
    kw = registry.get(name).known_arguments(ops)
    assert torch.equal(kw["w1_fp4"], ops.w13.packed) and torch.equal(kw["w2_fp4"], ops.w2.packed)
    assert torch.equal(kw["w1_blockscale"].view(torch.uint8), ops.w13.scales)
    assert kw["w1_blockscale"].dtype == torch.float8_e4m3fn
    assert torch.equal(kw["a1_gscale"], ops.fc1_input_scales) and torch.equal(kw["a2_gscale"], ops.fc2_input_scales)
    assert torch.equal(kw["w1_alphas"], ops.alpha1) and torch.equal(kw["w2_alphas"], ops.alpha2)
    assert kw["topk_ids"].dtype == torch.int32 and kw["topk_weights"].dtype == torch.float32
    assert kw["apply_router_weight_on_input"] is False
    assert kw["a"].data_ptr() != ops.hidden.data_ptr()  # the call may scale its input in place


def test_call_kwargs_passes_known_and_refuses_unknown_required_parameters():
    def entry(a, b, c=1, *, d=None, **extra):  # a stand-in for an installed release's signature
        return a, b

    assert call_kwargs(entry, {"a": 1, "b": 2, "d": 3, "gone": 4}, "x") == {"a": 1, "b": 2, "d": 3}
    with pytest.raises(Unsupported, match=r"requires \['b'\]"):
        call_kwargs(entry, {"a": 1}, "x")


@pytest.mark.parametrize("name", sorted(ENGINE_ADAPTERS))
def test_without_the_engine_the_adapter_is_a_skip_naming_the_package(name):
    pkg = ENGINE_ADAPTERS[name]
    if _installed(pkg):
        pytest.skip(f"{pkg} is installed here: the signature tests below cover it")
    b = registry.get(name)
    sup = b.support(env.current())
    assert not sup and repr(pkg) in sup.reason
    out = execute(GroupedTrial(name, "reference_agreement", _ops().problem))
    assert out.status == "skip" and out.reason == sup.reason


@pytest.mark.parametrize("name", ["vllm-cutlass-moe", "sglang-cutlass-moe"])
def test_cutlass_arguments_fit_the_installed_signature(name):
    pkg = ENGINE_ADAPTERS[name]
    pytest.importorskip(pkg, reason=f"{pkg} is not installed (the adapter is a skip naming it)")
    b = registry.get(name)
    known = b.known_arguments(_ops(hidden=32, intermediate=64))
    if name.startswith("sglang"):
        known["params"] = None  # built on the device by SglangCutlassMoe.params
    kwargs = call_kwargs(b._entry(), known, name)  # raises Unsupported naming an unknown required parameter
    assert set(kwargs) <= set(b.parameters())


def test_marlin_arguments_fit_the_installed_signature():
    pytest.importorskip("vllm", reason="vllm is not installed (the adapter is a skip naming it)")
    b = registry.get("vllm-marlin-moe")
    params = inspect.signature(b._entry()).parameters
    known = {"hidden_states", "w1", "w2", "bias1", "bias2", "w1_scale", "w2_scale", "gating_output", "topk_weights",
             "topk_ids", "quant_type_id", "global_num_experts", "global_scale1", "global_scale2",
             "apply_router_weight_on_input"}
    required = {n for n, q in params.items() if q.default is inspect.Parameter.empty
                and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)}
    assert required <= known, sorted(required - known)
    assert {"global_scale1", "global_scale2", "quant_type_id"} <= set(params)


# ---------------------------------------------------------------------------------------------
# the weight-only (W4A16) level
# ---------------------------------------------------------------------------------------------
def test_w4a16_reference_is_the_unquantized_layer():
    """The W4A16 reference equals an independent fp64 computation: hidden states as given, each
    weight dequantized times its decode scale, SwiGLU on [gate | up], no requantization, routed sum;
    and it differs from the NVFP4 x NVFP4 reference (which quantizes the activations)."""
    ops = _ops(hidden=32, intermediate=32)
    p = ops.problem
    i = p.intermediate
    d1, d2 = weight_decode_scales(ops.w13).double(), weight_decode_scales(ops.w2).double()
    want = torch.zeros((p.tokens, p.hidden), dtype=torch.float64)
    for t in range(p.tokens):
        for j, e in enumerate(p.topk_ids[t]):
            x = ops.hidden[t].double()
            h = (ops.w13.expert(e).dequantize().double() @ x) * d1[e]
            y = (ops.w2.expert(e).dequantize().double() @ (silu64(h[:i]) * h[i:2 * i])) * d2[e]
            want[t] += p.topk_weights[t][j] * y
    got = reference_moe(ops, activation_quant=False).value
    assert torch.allclose(got, want, rtol=2.0 ** -40, atol=0.0)
    assert not torch.allclose(reference_moe(ops).value, want, rtol=1e-3, atol=0.0)


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(trial=strategies.trials_for(registry.get(W4A16), "reference_agreement", "cpu"))
def test_w4a16_emulation_no_false_alarm(trial):
    """Every distribution, dtype and routing the strategies draw: the Marlin-order emulation is
    within the W4A16 bound."""
    out = execute(trial)
    assert out.status == "pass", out.reason


def test_w4a16_bound_is_not_vacuous():
    """On normal data the bound stays well below the output's magnitude and the emulation uses a
    real part of it.  It is wider than the NVFP4 x NVFP4 bound: about four bf16 roundings per
    intermediate element (FC1 result, silu, product, and the Lipschitz spread of FC1's rounding)
    summed with |W2| over K = 32 terms all of one sign, against an output whose terms cancel (it
    grows like sqrt(K)): 4 * 2^-8 * sqrt(32) ~ 2^-3.5 of the output, as measured."""
    p = MoeProblem.from_splits([3, 2, 3], 2, hidden=48, intermediate=32, seed=3, row_align=(1, 1, 1))
    ops = build_moe_operands(p, device="cpu")
    ref = reference_moe(ops, activation_quant=False)
    b = registry.get(W4A16)
    bound = moe_error_bound(ops, ref, b)
    rel = (bound / ref.value.abs().clamp_min(1e-30)).median()
    assert 0 < float(rel) < 2 ** -3
    units = float(((b.run(ops).double() - ref.value).abs() / bound).max())
    assert 2 ** -6 < units <= 1.0


def test_w4a16_backends_have_no_fused_unfused_property():
    """``fused_unfused`` compares with the NVFP4 x NVFP4 grouped stages; a weight-only backend is not
    put to it (and the engine calls the trial not applicable if asked)."""
    for name in (W4A16, "vllm-marlin-moe"):
        assert "fused_unfused" not in registry.get(name).properties
    out = execute(GroupedTrial(W4A16, "fused_unfused", _ops().problem))
    assert out.status == "skip" and "W4A16" in out.reason
