"""FlashInfer's fused NVFP4 MoE adapters on a GPU (skipped without one).

Where an adapter declares support (``cutlass_fused_moe`` on Blackwell, ``trtllm_fp4_block_scale_moe``
where FlashInfer's ``is_trtllm_moe_supported`` says so) it must agree with the fused-MoE reference
within the derived bound and with the unfused grouped stages within both bounds, on the bug shapes
(I = 192: I % 128 == 64, TRT-LLM #10331; hidden 2880: vLLM #35497).  Where it does not, the
declaration is checked against what the library does: called anyway with the prepared operands it
must not return the correct result (that would make the declared gate stale); a refusal (any
exception) or a wrong result both confirm it, and the test prints which one it saw.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from harness import env
from harness.grouped import registry
from harness.grouped.checks import execute
from harness.grouped.moe import build_moe_operands
from harness.grouped.moe_reference import moe_error_bound, reference_moe
from harness.grouped.problem import GroupedTrial, MoeProblem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytest.importorskip("flashinfer", reason="flashinfer is not installed")

ADAPTERS = ["flashinfer-cutlass-moe", "flashinfer-trtllm-moe"]
SHAPES = [dict(hidden=256, intermediate=192), dict(hidden=2880, intermediate=256), dict(hidden=512, intermediate=1856)]


_CUTLASS_ARCH = {"89": "sm89", "90": "sm90", "100": "sm100", "107": "sm100", "110": "sm100", "103": "sm103",
                 "120": "sm120", "121": "sm120"}  # flashinfer.fused_moe.core.get_cutlass_fused_moe_module


def _unbuilt_jit_module(fi_function: str) -> str | None:
    """The FlashInfer JIT module that calling ``fi_function`` on this GPU would compile first, if it is
    not compiled yet (FlashInfer builds it with nvcc on first use: minutes); None when it is built,
    or when the library would refuse before building anything."""
    from flashinfer.jit import fused_moe as jm

    major, minor = torch.cuda.get_device_capability()
    try:
        if fi_function == "cutlass_fused_moe":
            arch = _CUTLASS_ARCH.get(f"{major}{minor}")
            spec = getattr(jm, f"gen_cutlass_fused_moe_{arch}_module")(False) if arch else None
        else:
            spec = jm.gen_trtllm_gen_fused_moe_sm100_module(enable_rubin=(major, minor) == (10, 7))
    except Exception:  # noqa: BLE001 - the spec itself is refused: so is the call, quickly
        return None
    return None if spec is None or spec.is_compiled else spec.name


def _problem(shape, fc1_input_scale="shared"):
    return MoeProblem.from_splits([64, 0, 192, 128], 2, seed=7, row_align=(1, 1, 1, 1),
                                  fc1_input_scale=fc1_input_scale, input_scales="static", **shape)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"H{s['hidden']}-I{s['intermediate']}")
@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_agrees_or_its_gate_is_confirmed(name, shape):
    b = registry.get(name)
    sup = b.support(env.current())
    p = _problem(shape)
    if sup:
        for prop in ("reference_agreement", "fused_unfused"):
            out = execute(GroupedTrial(name, prop, p))
            assert out.status in ("pass", "skip"), f"{name} {prop}: {out.reason}"
            print(f"{name} {prop} {shape}: {out.status} {out.reason}")
        return
    if shape is not SHAPES[0]:
        pytest.skip(f"{name}: {sup.reason} (the gate is checked against the library on the first shape only: its "
                    f"JIT build for this GPU can take minutes)")
    unbuilt = _unbuilt_jit_module(b.fi_function)
    if unbuilt and os.environ.get("NVFP4_FLASHINFER_JIT") != "1":
        pytest.skip(f"{name}: {sup.reason}; confirming the gate calls {b.fi_function}, which would first JIT-build "
                    f"FlashInfer's {unbuilt} module here (minutes with nvcc): set NVFP4_FLASHINFER_JIT=1 to do it")
    ops = build_moe_operands(p, device="cuda")
    fn = getattr(importlib.import_module("flashinfer.fused_moe"), b.fi_function)
    try:
        res = fn(**b.prepare(ops))
    except Exception as exc:  # noqa: BLE001 - any refusal confirms the gate; it is printed
        print(f"{name} on SM{env.current().compute_capability}: gate confirmed, the library raised "
              f"{type(exc).__name__}: {str(exc)[:300]}")
        return
    out = res[0] if isinstance(res, (list, tuple)) else res
    torch.cuda.synchronize()
    ref = reference_moe(ops)
    bound = moe_error_bound(ops, ref, b)
    diff = (out[:, :p.hidden].double() - ref.value).abs()
    ok = bool((diff <= bound).all())
    assert not ok, (f"{name} computed the reference within its bound on SM{env.current().compute_capability}, "
                    f"which its support() declares unsupported ({sup.reason}): widen the declaration")
    print(f"{name} on SM{env.current().compute_capability}: gate confirmed, the library returned WITHOUT an error "
          f"and {int((diff > bound).sum())} wrong elements (a silent-garbage path)")
