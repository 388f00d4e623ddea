"""vLLM's and SGLang's NVFP4 fused-MoE adapters on a GPU (skipped without one, and per adapter
without its engine installed).

Where an adapter declares support (``vllm-marlin-moe`` on SM80+ per vLLM's own device check: the
one a Hopper node runs; the CUTLASS ones on Blackwell) it must agree with the fused-MoE reference
within the derived bound (the W4A16 form for Marlin) on the bug shapes, I % 128 == 64 (TRT-LLM
#10331) and hidden 2880 (vLLM #35497), routing with top-2; shapes the library's own check refuses
(``check_marlin_supports_shape``) are skips with its reason.  Where a CUTLASS adapter does not
declare support, the gate is checked against the library: called anyway it must not return the
correct result (a refusal or a wrong result both confirm it; the test prints which).

On a Hopper node with vLLM installed: ``pytest tests/test_engine_moe_adapters_gpu.py -s -p no:cacheprovider``
and the property campaign ``pytest properties/test_grouped.py --nvfp4-backends vllm-marlin-moe
--nvfp4-profile fuzz --nvfp4-budget 600``.
"""

from __future__ import annotations

import pytest
import torch

from harness import env
from harness.grouped import registry
from harness.grouped.checks import execute
from harness.grouped.moe import build_moe_operands
from harness.grouped.moe_reference import moe_error_bound, reference_moe
from harness.grouped.problem import GroupedTrial, MoeProblem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ADAPTERS = {"vllm-marlin-moe": "vllm", "vllm-cutlass-moe": "vllm", "sglang-cutlass-moe": "sglang"}
SHAPES = [dict(hidden=256, intermediate=192), dict(hidden=2880, intermediate=256), dict(hidden=512, intermediate=1856)]


def _problem(shape, fc1_input_scale="per_expert"):
    return MoeProblem.from_splits([64, 0, 192, 128], 2, seed=7, row_align=(1, 1, 1, 1),
                                  fc1_input_scale=fc1_input_scale, input_scales="static", **shape)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"H{s['hidden']}-I{s['intermediate']}")
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_engine_adapter_agrees_or_its_gate_is_confirmed(name, shape):
    pytest.importorskip(ADAPTERS[name], reason=f"{ADAPTERS[name]} is not installed")
    b = registry.get(name)
    sup = b.support(env.current())
    p = _problem(shape)
    if sup:
        for prop in b.properties:
            out = execute(GroupedTrial(name, prop, p))
            print(f"{name} {prop} {shape}: {out.status} {out.reason}")
            assert out.status in ("pass", "skip"), f"{name} {prop}: {out.reason}"
        return
    if name == "vllm-marlin-moe" or shape is not SHAPES[0]:
        pytest.skip(f"{name}: {sup.reason}")
    ops = build_moe_operands(p, device="cuda")
    try:
        res = b.run(ops)
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - any refusal confirms the gate; it is printed
        print(f"{name} on SM{env.current().compute_capability}: gate confirmed, the library raised "
              f"{type(exc).__name__}: {str(exc)[:300]}")
        return
    ref = reference_moe(ops)
    diff = (res[:, :p.hidden].double() - ref.value).abs()
    ok = bool((diff <= moe_error_bound(ops, ref, b)).all())
    assert not ok, (f"{name} computed the reference within its bound on SM{env.current().compute_capability}, "
                    f"which its support() declares unsupported ({sup.reason}): widen the declaration")
    print(f"{name} on SM{env.current().compute_capability}: gate confirmed, the library returned WITHOUT an error "
          f"and wrong values (a silent-garbage path)")
