"""GPU smoke tests of the real-library adapters (skipped without a CUDA GPU).

On a GPU each adapter either computes the reference product within its error bound or, where the
hardware or library cannot run it, raises ``Unsupported`` carrying the library's own message:

* every ``flashinfer.mm_fp4`` adapter on SM90: FlashInfer's ``BackendSupportedError``
  ("does not support backend ... with capability 90" / "No suitable auto backends");
* ``torch-scaled-mm`` below SM100: cuBLASLt's CUBLAS_STATUS_NOT_SUPPORTED;
* ``triton-dot-scaled`` below SM100: the Triton compiler's failure (Triton 3.6 on SM90), or a
  correct result if a later Triton emulates it.

FlashInfer's quantizer is run wherever the library builds a module for the GPU, SM90 included: its
bytes are compared with the reference quantizer (garbage must fail), or its refusal is checked to
be the library's own.
"""

from __future__ import annotations

import pytest
import torch

import harness.kernels  # noqa: F401  (sets TRITON_INTERPRET on a CPU-only machine)
from harness import checks, data
from harness.backends import _flashinfer, dot_scaled, flashinfer_fp4, quantizers, scaled_mm
from harness.backends.protocol import Unsupported
from harness.format import (BLOCK_SIZE, block_scale_and_inverse, global_scale_encode_divisor, reference_quantize,
                            unpack_e2m1)
from harness.layouts import ScaleLayout, unswizzle
from harness.optional import import_optional
from harness.oracle import compare, error_bound, reference_gemm
from harness.pipeline import operands_for
from harness.problem import GemmProblem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
L = ScaleLayout


def cc() -> int:
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def gpu_env():
    from harness import env as env_mod

    return env_mod.current()


def assert_matches_reference(backend, ops, out: torch.Tensor) -> None:
    ref = reference_gemm(ops)
    bound = error_bound(ref, backend.requirements.precision, ops.out_dtype)
    agreement = compare(out[:, :ops.n].cpu(), ref, bound.cpu(), ops.out_dtype)
    assert agreement.ok, (f"{backend.name}: {agreement.violations} elements outside the bound, worst "
                          f"{agreement.max_err_units:.3g} bound units at {agreement.argmax}")


def problem_for(backend) -> GemmProblem:
    m = 7 if backend.requirements.m_max is None else min(7, backend.requirements.m_max)
    return GemmProblem(m=m, n=200, k=192)


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [b.name for b in flashinfer_fp4.backends()])
def test_mm_fp4_adapter_on_this_gpu(name, record_property):
    fi = import_optional("flashinfer")
    b = {x.name: x for x in flashinfer_fp4.backends()}[name]
    ops = operands_for(b, problem_for(b), device="cuda")
    verdict = b.support(gpu_env())
    record_property("support", verdict.reason)
    if not b.library_supports(cc()):
        assert not verdict
        with pytest.raises(Unsupported) as info:
            b.run(ops)
        msg = str(info.value)
        record_property("unsupported", msg)
        assert msg.startswith(f"{name}: flashinfer mm_fp4(backend={b.fi_backend!r}) refused: ")
        # recognised by FlashInfer's own refusal class, not by its wording
        assert isinstance(info.value.__cause__, _flashinfer.refusal_types()), repr(info.value.__cause__)
        assert fi.mm_fp4.is_backend_supported(b.fi_backend, cc()) is False
        return
    if not verdict:
        pytest.skip(verdict.reason)
    out = b.run(ops)
    assert tuple(out.shape) == (ops.m, ops.w.rows_alloc) and out.dtype == ops.out_dtype
    assert_matches_reference(b, ops, out)


def test_trtllm_scale_shuffle_matches_flashinfer_on_gpu():
    fi = import_optional("flashinfer")
    b = {x.name: x for x in flashinfer_fp4.backends()}["flashinfer-trtllm"]
    ops = operands_for(b, GemmProblem(m=3, n=200, k=192), device="cuda")
    kw = b.prepare(ops)
    linear = unswizzle(ops.w.scales, L.SWIZZLED_128x4)  # [256, 12]: rows % 128 == 0, k-blocks % 4 == 0
    theirs = fi.shuffle_matrix_sf_a(linear.contiguous(), 128).reshape(linear.shape)  # row shuffle + interleave
    assert torch.equal(kw["b_descale"].T.contiguous(), theirs)
    assert torch.equal(kw["b"].T, fi.shuffle_matrix_a(ops.w.packed, 128))


# ----------------------------------------------------------------------------------------------
def test_scaled_mm_on_this_gpu(record_property):
    b = scaled_mm.TorchScaledMm()
    ops = operands_for(b, GemmProblem(m=7, n=200, k=192), device="cuda")
    if cc() < scaled_mm.MIN_CC:
        assert not b.support(gpu_env())  # the runner never calls it here; called directly, it must not pass garbage
        try:
            out = b.run(ops)
        except Unsupported as exc:  # cuBLASLt's status code: a refusal, with torch's message shown
            record_property("unsupported", str(exc))
            assert str(exc).startswith("torch-scaled-mm: torch._scaled_mm refused: ") and exc.__cause__ is not None
            return
        except RuntimeError as exc:  # refused in words the harness does not key on: a failure if ever called
            record_property("raised", f"{type(exc).__name__}: {exc}")
            return
        assert_matches_reference(b, ops, out)  # a later torch/cuBLASLt computing it here must compute it right
        return
    out = b.run(ops)
    assert_matches_reference(b, ops, out)
    buf = torch.empty_like(out)
    assert b.run(ops, out=buf) is buf and torch.equal(buf, out)


def test_dot_scaled_on_this_gpu(record_property):
    b = dot_scaled.TritonDotScaled()
    assert b.support(gpu_env())
    ops = operands_for(b, GemmProblem(m=7, n=200, k=192), device="cuda")
    try:
        out = b.run(ops)
    except Unsupported as exc:
        record_property("unsupported", str(exc))
        assert cc() < dot_scaled.NATIVE_CC, f"SM{cc()} is native; a compile failure there is a failure: {exc}"
        assert str(exc).startswith(f"triton tl.dot_scaled with e2m1 x e2m1 and e4m3 scales failed to compile "
                                   f"on SM{cc()}: ")
        return
    assert_matches_reference(b, ops, out)


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", [L.SWIZZLED_128x4, L.SWIZZLED_8x4, L.LINEAR])
def test_triton_quantizer_on_gpu(layout):
    q = quantizers.TritonQuantizer(layout)
    x = data.generate("heavy_tailed", (70, 160), 4, torch.bfloat16, "cuda")
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1).cuda()
    codes, sf = reference_quantize(x.cpu(), gs.cpu())
    packed, scales = q.quantize(x, gs)
    assert packed.is_cuda and scales.is_cuda
    assert torch.equal(unpack_e2m1(packed.cpu()), codes)
    lg = scales.cpu() if layout is L.LINEAR else unswizzle(scales.cpu(), layout)
    assert torch.equal(lg[:70, :10], sf)


@pytest.mark.parametrize("layout", [L.SWIZZLED_128x4, L.SWIZZLED_8x4, L.LINEAR])
def test_flashinfer_quantizer_on_this_gpu(layout, record_property):
    """Either observed behaviour of the installed FlashInfer is accepted (below SM100 0.7.2.post1
    returned garbage without raising, 0.7.4 refuses), but garbage is never a pass: bytes that are
    mostly wrong must fail quantizer_agreement, and a refusal must come from the library."""
    import_optional("flashinfer")
    q = quantizers.FlashInferQuantizer(layout)
    verdict = q.support(gpu_env())
    if cc() not in quantizers.FLASHINFER_QUANT_CCS:
        assert not verdict
        pytest.skip(verdict.reason)
    assert verdict, verdict.reason  # SM90 included, on purpose: never skipped blindly
    rows, k = 70, 160
    x = data.generate("normal", (rows, k), 4, torch.bfloat16, "cuda")
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1).cuda()
    try:
        packed, scales = q.quantize(x, gs)
    except Unsupported as exc:
        record_property("refused", str(exc))
        assert exc.__cause__ is not None, "a refusal must be the library's own exception"
        assert quantizers.library_refuses_device(x.device) is not None or \
            isinstance(exc.__cause__, _flashinfer.refusal_types())
        assert cc() < 100, f"refused on SM{cc()}: {exc}"
        return
    assert (packed.dtype, tuple(packed.shape)) == (torch.uint8, (rows, k // 2))
    codes, sf = reference_quantize(x.cpu(), gs.cpu())
    lg = scales.cpu() if layout is L.LINEAR else unswizzle(scales.cpu(), layout)
    xf = x.cpu().float().reshape(rows, k // BLOCK_SIZE, BLOCK_SIZE)
    _, inv = block_scale_and_inverse(xf.abs().amax(-1), gs.cpu())
    result = checks.quantizer_agreement(packed.cpu(), lg, codes, sf, (xf * inv.unsqueeze(-1)).reshape(rows, k))
    record_property("agreement", result.summary)
    record_property("measure", result.measure)
    wrong_scales = (lg[:rows, :k // BLOCK_SIZE] != sf).float().mean().item()
    record_property("wrong_scale_fraction", wrong_scales)
    if wrong_scales > 0.5:
        assert not result.ok, f"garbage ({wrong_scales:.0%} of scale bytes wrong) passed: {result.summary}"
    if cc() >= 100:
        assert result.ok, result.summary
