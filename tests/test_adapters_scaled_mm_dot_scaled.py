"""CPU tests of the ``torch-scaled-mm`` and ``triton-dot-scaled`` adapters.

``torch._scaled_mm``'s float4 path is CUDA-only: its prepared arguments are checked with torch's
own meta kernel (``meta_scaled_mm`` -> ``_check_scaled_mm_sizes``, the same checks the CUDA op makes
first).  The Triton ``tl.dot_scaled`` kernel runs under the interpreter against the interpreter's
own (e8m0) reading of scale bytes, which is also why the backend does not claim the CPU.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import harness.kernels  # noqa: F401  (sets TRITON_INTERPRET on a CPU-only machine)
from harness import env as env_mod
from harness.backends import dot_scaled, scaled_mm
from harness.backends._refusal import as_unsupported
from harness.backends.protocol import Unsupported
from harness.format import BLOCK_SIZE, e2m1_decode, unpack_e2m1
from harness.kernels.gemm import dot_scaled_gemm
from harness.layouts import ScaleLayout, unswizzle
from harness.pipeline import build_gemm_operands, operands_for
from harness.problem import GemmProblem, Poison
from refusals import assert_library_refuses

L = ScaleLayout


def fake_env(cc: int | None, name: str = "fake GPU") -> env_mod.Environment:
    """This process's environment with the device replaced (a GPU of compute capability ``cc``)."""
    base = env_mod.current()
    if cc is None:
        return dataclasses.replace(base, device="cpu", gpu_name=None, compute_capability=None, gpu_count=0)
    return dataclasses.replace(base, device="cuda", gpu_name=name, compute_capability=cc, gpu_count=1)


# ----------------------------------------------------------------------------------------------
# torch._scaled_mm
# ----------------------------------------------------------------------------------------------
SMM = scaled_mm.TorchScaledMm()


def to_meta(kw: dict) -> dict:
    return {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def test_scaled_mm_prepare_passes_torch_meta_checks():
    p = GemmProblem(m=5, n=70, k=80)
    ops = operands_for(SMM, p)
    assert (ops.w.rows_alloc, ops.a.k_alloc) == (80, 96)
    kw = SMM.prepare(ops)
    a, b, sa, sb = kw["input"], kw["mat2"], kw["scale_a"], kw["scale_b"]
    assert (a.dtype, tuple(a.shape), a.stride()) == (torch.float4_e2m1fn_x2, (5, 48), (48, 1))
    assert (b.dtype, tuple(b.shape), b.stride()) == (torch.float4_e2m1fn_x2, (48, 80), (1, 48))
    assert a.data_ptr() == ops.a.packed.data_ptr() and b.data_ptr() == ops.w.packed.data_ptr()
    assert (sa.dtype, tuple(sa.shape), sa.is_contiguous()) == (torch.float8_e4m3fn, (128, 8), True)
    assert (sb.dtype, tuple(sb.shape), sb.is_contiguous()) == (torch.float8_e4m3fn, (128, 8), True)
    assert sb.data_ptr() == ops.w.scales.data_ptr()  # NOT transposed, unlike mat2
    assert (kw["out_dtype"], kw["scale_result"], kw["bias"], kw["use_fast_accum"]) == (torch.float32, None, None, False)
    res = torch._scaled_mm(**to_meta(kw))  # torch's meta kernel: _check_scaled_mm_sizes
    assert (tuple(res.shape), res.dtype) == ((5, 80), torch.float32)


def test_scaled_mm_meta_checks_reject_what_the_requirements_avoid():
    """torch's meta kernel refuses each layout the adapter's requirements avoid (the behaviour is
    asserted, not torch's wording); each control differs from its refused call in that one aspect."""
    ok = SMM.prepare(operands_for(SMM, GemmProblem(m=5, n=70, k=80)))
    row_major = ok["mat2"].view(torch.uint8).contiguous().view(torch.float4_e2m1fn_x2)  # same [k/2, n], row-major
    accepted = lambda: torch._scaled_mm(**to_meta(ok))  # noqa: E731
    assert_library_refuses(lambda: torch._scaled_mm(**to_meta({**ok, "mat2": row_major})), accepted=accepted,
                           exc=RuntimeError)
    assert_library_refuses(lambda: torch._scaled_mm(**to_meta({**ok, "scale_b": ok["scale_b"].T})),
                           accepted=accepted, exc=RuntimeError)
    # K % 32: with k_align=16, K=80 gives k/2 = 40 bytes, which torch refuses
    k16 = build_gemm_operands(GemmProblem(m=5, n=70, k=80), a_layout=L.SWIZZLED_128x4, w_layout=L.SWIZZLED_128x4,
                              n_align=16, k_align=16)
    k32 = build_gemm_operands(GemmProblem(m=5, n=70, k=80), a_layout=L.SWIZZLED_128x4, w_layout=L.SWIZZLED_128x4,
                              n_align=16, k_align=32)
    assert_library_refuses(lambda: torch._scaled_mm(**to_meta(SMM.prepare(k16))),
                           accepted=lambda: torch._scaled_mm(**to_meta(SMM.prepare(k32))), exc=RuntimeError)
    # N % 16: n=70 unpadded
    n1 = build_gemm_operands(GemmProblem(m=5, n=70, k=64), a_layout=L.SWIZZLED_128x4, w_layout=L.SWIZZLED_128x4,
                             n_align=1, k_align=32)
    n16 = build_gemm_operands(GemmProblem(m=5, n=70, k=64), a_layout=L.SWIZZLED_128x4, w_layout=L.SWIZZLED_128x4,
                              n_align=16, k_align=32)
    assert_library_refuses(lambda: torch._scaled_mm(**to_meta(SMM.prepare(n1))),
                           accepted=lambda: torch._scaled_mm(**to_meta(SMM.prepare(n16))), exc=RuntimeError)


def test_scaled_mm_support_reasons_and_refusals():
    cpu = SMM.support(fake_env(None))
    assert not cpu and "needs a CUDA GPU with cuBLASLt block-scaled FP4 (SM100+); this machine has none" in cpu.reason
    h = SMM.support(fake_env(90, "NVIDIA H100"))
    assert not h and "needs SM100+" in h.reason and "CUBLAS_STATUS_NOT_SUPPORTED" in h.reason and "SM90" in h.reason
    assert SMM.support(fake_env(100))
    with pytest.raises(Unsupported, match="CUDA-only"):
        SMM.run(operands_for(SMM, GemmProblem(m=5, n=70, k=80)))
    pre = "torch-scaled-mm: torch._scaled_mm refused"
    cublas = RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling `cublasLtMatmulAlgoGetHeuristic`")
    assert isinstance(as_unsupported(cublas, pre, status_codes=scaled_mm.REFUSAL_STATUS_CODES), Unsupported)
    for failure in (RuntimeError("CUDA error: an illegal memory access was encountered"),
                    RuntimeError("torch._scaled_mm is only supported on CUDA devices with compute capability 10.0")):
        # prose is never matched: a capability message without the status code stays a failure
        assert as_unsupported(failure, pre, status_codes=scaled_mm.REFUSAL_STATUS_CODES) is None


# ----------------------------------------------------------------------------------------------
# Triton tl.dot_scaled
# ----------------------------------------------------------------------------------------------
DOT = dot_scaled.TritonDotScaled()


def test_dot_scaled_support_reasons():
    cpu = DOT.support(fake_env(None))
    assert not cpu and "decodes tl.dot_scaled scale bytes as e8m0" in cpu.reason
    assert "_dot_scaled_scale_to_f32" in cpu.reason
    hopper = DOT.support(fake_env(90, "NVIDIA H200"))
    assert hopper and "a compile failure at call time is reported as unsupported" in hopper.reason
    assert DOT.support(fake_env(100)) and "native block-scaled MMA" in DOT.support(fake_env(100)).reason
    with pytest.raises(Unsupported, match="decodes tl.dot_scaled scale bytes as e8m0"):
        DOT.run(operands_for(DOT, GemmProblem(m=3, n=16, k=32)))


def _deq_e8m0(t) -> torch.Tensor:
    """code * 2**(scale_byte - 127) over the whole allocated buffer (rows_alloc x k_alloc), fp64."""
    codes = e2m1_decode(unpack_e2m1(t.packed)).double()
    logical = t.scales if t.layout is L.LINEAR else unswizzle(t.scales, t.layout)
    s = torch.exp2(logical[:t.rows_alloc, :t.k_alloc // BLOCK_SIZE].double() - 127)
    return (codes.reshape(t.rows_alloc, -1, BLOCK_SIZE) * s.unsqueeze(-1)).reshape(t.rows_alloc, -1)


INTERPRETER_ONLY = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                      reason="checks the Triton interpreter's own tl.dot_scaled behaviour")


@INTERPRETER_ONLY
@pytest.mark.parametrize("a_layout", [L.SWIZZLED_128x4, L.LINEAR, L.SWIZZLED_8x4])
def test_dot_scaled_kernel_plumbing_under_the_interpreter(a_layout):
    """The kernel's indexing (in-kernel unswizzle, W transposition, K loop and masks, alpha) checked
    against the interpreter's own reading of scale bytes (e8m0), with bytes where that is finite."""
    ops = operands_for(DOT, GemmProblem(m=9, n=40, k=160, out_dtype="float32"), a_layout=a_layout,
                       poison=Poison(m_pad=0x7F))
    assert (ops.w.rows_alloc, ops.a.k_alloc) == (48, 160)  # two K steps of 128, the second partial
    g = torch.Generator().manual_seed(7)
    for t in (ops.a, ops.w):  # 118..135 = 2**-9 .. 2**8 read as e8m0
        t.scales.copy_(torch.randint(118, 136, t.scales.shape, dtype=torch.uint8, generator=g))
    out = torch.full((ops.m, ops.w.rows_alloc), float("nan"), dtype=torch.float32)
    dot_scaled_gemm(ops, out)
    ref = (_deq_e8m0(ops.a) @ _deq_e8m0(ops.w).T) * ops.alpha.double()
    bound = 1e-6 * ((_deq_e8m0(ops.a).abs() @ _deq_e8m0(ops.w).abs().T) * ops.alpha.double()) + 1e-30
    assert torch.all((out.double() - ref).abs() <= bound)


@INTERPRETER_ONLY
def test_dot_scaled_interpreter_reads_e4m3_scales_as_e8m0():
    """Why runs_on_cpu is False: e4m3 448 (0x7E) is read as 2**-1 by Triton 3.9's interpreter."""
    ops = operands_for(DOT, GemmProblem(m=4, n=16, k=64, out_dtype="float32"))
    for t in (ops.a, ops.w):
        t.scales.fill_(0x7E)
    out = torch.empty((ops.m, ops.w.rows_alloc), dtype=torch.float32)
    dot_scaled_gemm(ops, out)
    dot = e2m1_decode(unpack_e2m1(ops.a.packed)).double() @ e2m1_decode(unpack_e2m1(ops.w.packed)).double().T
    as_e4m3 = dot * 448.0 * 448.0 * ops.alpha.double()
    as_e8m0 = dot * 0.5 * 0.5 * ops.alpha.double()
    assert as_e4m3.abs().max() > 0
    assert torch.allclose(out.double(), as_e8m0, rtol=1e-6, atol=0)
    assert not torch.allclose(out.double(), as_e4m3, rtol=1e-2)


def test_dot_scaled_compile_failure_summary():
    # fd 2 is where Triton's C++ prints MLIR diagnostics; the capture must see a raw os.write
    box: dict = {}
    with dot_scaled.captured_stderr_fd(box):
        os.write(2, b"loc: error: Failures have been detected while processing an MLIR pass pipeline\n")
        os.write(2, b"dot_scaled.py:60:0: note: Pipeline failed while executing [`TritonGPUAccelerateMatmul` on "
                    b"'builtin.module' operation]: reproducer generated at `std::errs, please share the reproducer "
                    b"above with Triton project.`\n")
    assert "MLIR pass pipeline" in box["text"]
    # the line seen on this project's H200 (Triton 3.6, SM90)
    assert dot_scaled.mlir_failure_summary(box["text"]) == \
        "Pipeline failed while executing [`TritonGPUAccelerateMatmul` on 'builtin.module' operation]"
    assert dot_scaled.mlir_failure_summary("RuntimeError: PassManager::run failed") == ""


def test_dot_scaled_checks_operands():
    ops = build_gemm_operands(GemmProblem(m=3, n=16, k=32), a_layout=L.SWIZZLED_128x4, w_layout=L.LINEAR)
    with pytest.raises(ValueError, match="weight scales are in layout 'linear'; expected '128x4'"):
        DOT.run(ops)


# ----------------------------------------------------------------------------------------------
# module-level contract
# ----------------------------------------------------------------------------------------------
def test_modules_expose_backends():
    assert [b.name for b in scaled_mm.backends()] == ["torch-scaled-mm"]
    assert [b.name for b in dot_scaled.backends()] == ["triton-dot-scaled"]
    for b in (SMM, DOT):
        assert b.level == "gemm" and b.describe()["name"] == b.name and b.description
