"""CPU tests of the FlashInfer ``mm_fp4`` adapters: operand preparation down to the library call.

``mm_fp4`` cannot run here (no GPU), so these tests check what each adapter hands it: shapes,
dtypes, strides, which operand is a transposed view and which is shuffled, and then run the
library's own pure-Python checks on it (``flashinfer.gemm.gemm_base._check_mm_fp4_problem_size``
and the per-backend requirement functions).  Support verdicts are checked for this CPU and for
hand-built SM90 / SM100 / SM120 environments; capability refusals are checked to become
``Unsupported`` while other exceptions stay failures.  ``torch._scaled_mm`` and ``tl.dot_scaled``
are in ``test_adapters_scaled_mm_dot_scaled.py`` (they need no FlashInfer).
"""

from __future__ import annotations

import importlib.util

import dataclasses
import sys

import pytest
import torch

import harness.kernels  # noqa: F401  (sets TRITON_INTERPRET on a CPU-only machine)
from harness import env as env_mod
from harness.backends import _flashinfer, flashinfer_fp4
from harness.backends.protocol import Unsupported
from harness.format import BLOCK_SIZE
from harness.optional import import_optional
from harness.layouts import ScaleLayout, padded_shape, round_up, unswizzle
from harness.pipeline import build_gemm_operands, operands_for
from harness.problem import GemmProblem, Poison
from refusals import assert_library_refuses

L = ScaleLayout
fi = import_optional("flashinfer", "the library whose mm_fp4 these adapters call")
gb = import_optional("flashinfer.gemm.gemm_base")

FI_BACKENDS = {b.name: b for b in flashinfer_fp4.backends()}
EXPECTED_FI_NAMES = {
    "flashinfer-cutlass": "cutlass", "flashinfer-cudnn": "cudnn", "flashinfer-trtllm": "trtllm",
    "flashinfer-trtllm-8x4": "trtllm", "flashinfer-cute-dsl": "cute-dsl",
    "flashinfer-cutedsl-low-latency": "cutedsl_low_latency", "flashinfer-b12x": "b12x", "flashinfer-auto": "auto",
}


def _cute_dsl_usable() -> bool:
    try:
        from flashinfer.cute_dsl.availability import is_cute_dsl_available

        return bool(is_cute_dsl_available())
    except Exception:  # noqa: BLE001
        return False


def _b12x_checks_run_here() -> bool:
    """b12x's requirement function asks nvcc (or a CUDA torch) for the CUDA version and needs CuTe-DSL."""
    try:
        from flashinfer.cute_dsl.availability import is_cute_dsl_available
        from flashinfer.jit.cpp_ext import get_cuda_version

        get_cuda_version()
        return bool(is_cute_dsl_available())
    except Exception:  # noqa: BLE001 - any failure: not checkable on this machine
        return False


# Requirement functions of gemm_base that run on CPU tensors (cute-dsl asks the tensor's device for
# its SM version, cudnn asks the cuDNN backend library for its version: both need a GPU machine).
CPU_REQUIREMENT_FNS = {"cutlass", "trtllm", "cutedsl_low_latency"} | ({"b12x"} if _b12x_checks_run_here() else set())


def fake_env(cc: int | None, name: str = "fake GPU") -> env_mod.Environment:
    """This process's environment with the device replaced (a GPU of compute capability ``cc``)."""
    base = env_mod.current()
    if cc is None:
        return dataclasses.replace(base, device="cpu", gpu_name=None, compute_capability=None, gpu_count=0)
    return dataclasses.replace(base, device="cuda", gpu_name=name, compute_capability=cc, gpu_count=1)


def problem_for(backend, m: int = 5, n: int = 100, k: int = 80) -> GemmProblem:
    m_max = backend.requirements.m_max
    return GemmProblem(m=min(m, m_max) if m_max else m, n=n, k=k)


# ----------------------------------------------------------------------------------------------
# FlashInfer mm_fp4: declarations
# ----------------------------------------------------------------------------------------------
def test_flashinfer_backend_names_and_library_backends():
    assert {n: b.fi_backend for n, b in FI_BACKENDS.items()} == EXPECTED_FI_NAMES
    params = flashinfer_fp4.mm_fp4_parameters()
    for b in FI_BACKENDS.values():
        assert b.fi_backend == "auto" or fi.mm_fp4.has_backend(b.fi_backend), b.fi_backend
        assert b.requirements.packages == ("flashinfer",)
    # the keywords prepare() emits all exist in the installed mm_fp4
    ops = operands_for(FI_BACKENDS["flashinfer-cutlass"], problem_for(FI_BACKENDS["flashinfer-cutlass"]))
    assert set(FI_BACKENDS["flashinfer-cutlass"].prepare(ops)) <= set(params)


@pytest.mark.parametrize("name", sorted(EXPECTED_FI_NAMES))
def test_flashinfer_declared_ccs_are_the_librarys(name):
    b = FI_BACKENDS[name]
    if b.fi_backend == "auto":
        want = set()
        for cand in flashinfer_fp4.AUTO_CANDIDATES:
            want |= getattr(gb, flashinfer_fp4._REQUIREMENT_FN[cand])._supported_ccs
    else:
        want = set(getattr(gb, flashinfer_fp4._REQUIREMENT_FN[b.fi_backend])._supported_ccs)
    assert set(b.requirements.compute_capabilities) == want
    assert b.library_ccs() == frozenset(want)
    for cc in (80, 89, 90, 100, 103, 110, 120, 121):
        assert b.library_supports(cc) == (cc in want), cc


def test_flashinfer_declared_requirements():
    r = {n: b.requirements for n, b in FI_BACKENDS.items()}
    assert (r["flashinfer-cutlass"].n_align, r["flashinfer-cutlass"].k_align) == (32, 32)
    assert (r["flashinfer-trtllm"].n_align, r["flashinfer-trtllm"].k_align) == (128, 64)
    assert r["flashinfer-trtllm"].out_dtypes == (torch.bfloat16,)
    assert r["flashinfer-trtllm"].shuffled_weight and r["flashinfer-trtllm-8x4"].shuffled_weight
    assert r["flashinfer-trtllm-8x4"].a_layouts == (L.SWIZZLED_8x4,)
    assert r["flashinfer-cutedsl-low-latency"].m_max == 8
    assert r["flashinfer-cutedsl-low-latency"].k_align == 64
    for n, req in r.items():
        assert req.w_layout is L.SWIZZLED_128x4, n
        if n != "flashinfer-trtllm-8x4":
            assert req.a_layouts == (L.SWIZZLED_128x4,), n
        if not n.startswith("flashinfer-trtllm"):
            assert not req.shuffled_weight, n
            assert req.out_dtypes == (torch.bfloat16, torch.float16), n


# ----------------------------------------------------------------------------------------------
# FlashInfer mm_fp4: prepare()
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED_FI_NAMES))
def test_flashinfer_prepare_shapes_strides_and_library_checks(name):
    b = FI_BACKENDS[name]
    p = problem_for(b)
    ops = operands_for(b, p)
    req = b.requirements
    kw = b.prepare(ops)
    m, k_alloc, n_alloc = p.m, round_up(p.k, req.k_align), round_up(p.n, req.n_align)
    kb = k_alloc // BLOCK_SIZE

    a, bb, sa, sb = kw["a"], kw["b"], kw["a_descale"], kw["b_descale"]
    assert (a.dtype, tuple(a.shape), a.stride()) == (torch.uint8, (m, k_alloc // 2), (k_alloc // 2, 1))
    assert a.data_ptr() == ops.a.packed.data_ptr()
    # b: the weight [n, k/2] seen as a column-major [k/2, n] view
    assert (bb.dtype, tuple(bb.shape), bb.stride()) == (torch.uint8, (k_alloc // 2, n_alloc), (1, k_alloc // 2))
    assert bb.T.is_contiguous()
    # a_descale: the activation's swizzled buffer itself; b_descale: the weight's 128x4 buffer transposed
    assert tuple(sa.shape) == padded_shape(req.a_layouts[0], m, kb) and sa.is_contiguous()
    assert sa.data_ptr() == ops.a.scales.data_ptr()
    pn, pk = padded_shape(L.SWIZZLED_128x4, n_alloc, kb)
    assert (tuple(sb.shape), sb.stride()) == ((pk, pn), (1, pk))
    assert sb.T.is_contiguous()
    if req.shuffled_weight:
        assert bb.data_ptr() != ops.w.packed.data_ptr()
    else:
        assert bb.data_ptr() == ops.w.packed.data_ptr() and sb.data_ptr() == ops.w.scales.data_ptr()
    assert kw["alpha"].dtype == torch.float32 and kw["alpha"].numel() == 1
    assert torch.equal(kw["alpha"], ops.alpha.reshape(1))
    assert (kw["backend"], kw["block_size"], kw["use_nvfp4"], kw["out_dtype"], kw["out"]) == \
        (b.fi_backend, 16, True, torch.bfloat16, None)
    assert kw["use_8x4_sf_layout"] is (name == "flashinfer-trtllm-8x4")

    # the library's own checks, as mm_fp4's @backend_requirement wrapper runs them
    assert gb._check_mm_fp4_problem_size(**kw) is True
    if b.fi_backend in CPU_REQUIREMENT_FNS:
        assert getattr(gb, flashinfer_fp4._REQUIREMENT_FN[b.fi_backend])(**kw) is True


def test_flashinfer_8x4_flag_is_refused_by_non_trtllm_requirements():
    b8 = FI_BACKENDS["flashinfer-trtllm-8x4"]
    kw = b8.prepare(operands_for(b8, problem_for(b8, m=3)))
    assert kw["a_descale"].shape[0] == 8  # 8x4 layout: rows padded to 8, not 128
    kw128 = FI_BACKENDS["flashinfer-cutlass"].prepare(operands_for(FI_BACKENDS["flashinfer-cutlass"],
                                                                   problem_for(b8, m=3)))
    assert_library_refuses(lambda: gb._cutlass_gemm_fp4_requirement(**{**kw, "backend": "cutlass"}),
                           accepted=lambda: gb._cutlass_gemm_fp4_requirement(**kw128), exc=ValueError)
    ll = FI_BACKENDS["flashinfer-cutedsl-low-latency"]
    assert_library_refuses(
        lambda: gb._cutedsl_low_latency_gemm_fp4_requirement(**{**kw, "backend": "cutedsl_low_latency"}),
        accepted=lambda: gb._cutedsl_low_latency_gemm_fp4_requirement(**ll.prepare(operands_for(ll, problem_for(ll, m=3)))),
        exc=ValueError)
    # and our own layout check refuses to hand 8x4 scales to a 128x4 backend
    ops8 = operands_for(b8, problem_for(b8, m=3))
    with pytest.raises(ValueError, match=r"activation scales are in layout '8x4'; this backend reads \['128x4'\]"):
        FI_BACKENDS["flashinfer-cutlass"].prepare(ops8)


def test_flashinfer_fp16_output_refused_by_trtllm_requirement():
    b = FI_BACKENDS["flashinfer-trtllm"]
    kw = b.prepare(operands_for(b, GemmProblem(m=4, n=128, k=64, out_dtype="float16")))
    assert kw["out_dtype"] == torch.float16
    assert_library_refuses(lambda: gb._trtllm_gemm_fp4_requirement(**kw),
                           accepted=lambda: gb._trtllm_gemm_fp4_requirement(**{**kw, "out_dtype": torch.bfloat16}),
                           exc=ValueError)
    assert not b.shape_support(4, 128, 64, torch.float16)


def test_flashinfer_prepare_passes_out_buffer_and_checks_it():
    b = FI_BACKENDS["flashinfer-cutlass"]
    ops = operands_for(b, problem_for(b))
    out = torch.empty((ops.m, ops.w.rows_alloc), dtype=torch.bfloat16)
    assert b.prepare(ops, out)["out"] is out
    with pytest.raises(ValueError, match=r"out buffer is \(5, 100\) torch.bfloat16 on cpu; expected \(5, 128\)"):
        b.prepare(ops, torch.empty((5, 100), dtype=torch.bfloat16))
    strided = torch.empty((ops.w.rows_alloc, ops.m), dtype=torch.bfloat16).T
    with pytest.raises(ValueError, match="must be contiguous"):
        b.prepare(ops, strided)
    # the library agrees: contiguous out only
    contiguous = torch.empty((ops.m, ops.w.rows_alloc), dtype=torch.bfloat16)
    assert_library_refuses(lambda: gb._cutlass_gemm_fp4_requirement(**{**b.prepare(ops), "out": strided}),
                           accepted=lambda: gb._cutlass_gemm_fp4_requirement(**{**b.prepare(ops), "out": contiguous}),
                           exc=ValueError)


def test_cutedsl_low_latency_library_refuses_m_above_8():
    b = FI_BACKENDS["flashinfer-cutedsl-low-latency"]
    ops = build_gemm_operands(GemmProblem(m=9, n=40, k=64), a_layout=L.SWIZZLED_128x4, w_layout=L.SWIZZLED_128x4,
                              n_align=1, k_align=64)
    kw = b.prepare(ops)
    ops8 = build_gemm_operands(GemmProblem(m=8, n=40, k=64), a_layout=L.SWIZZLED_128x4, w_layout=L.SWIZZLED_128x4,
                               n_align=1, k_align=64)
    assert_library_refuses(lambda: gb._cutedsl_low_latency_gemm_fp4_requirement(**kw),
                           accepted=lambda: gb._cutedsl_low_latency_gemm_fp4_requirement(**b.prepare(ops8)),
                           exc=ValueError)
    assert not b.shape_support(9, 40, 64, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# TRT-LLM weight shuffle
# ----------------------------------------------------------------------------------------------
def trtllm_source_row(j: int) -> int:
    """Original row that lands in shuffled row ``j``, from TRT-LLM's srcToDstBlk32RowMap
    (flashinfer/utils.py): source row i of a 32-row block goes to (i % 4) * 8 + i // 4."""
    block, jj = divmod(j, 32)
    return 32 * block + (jj % 8) * 4 + jj // 8


@pytest.mark.parametrize("name", ["flashinfer-trtllm", "flashinfer-trtllm-8x4"])
def test_trtllm_weight_is_row_shuffled_with_its_scales(name):
    b = FI_BACKENDS[name]
    poison = Poison(n_pad=0x7F, k_tail=0x7E, data=0x11)  # padding bytes must be carried over unchanged
    ops = operands_for(b, GemmProblem(m=3, n=200, k=96), poison=poison)
    assert ops.w.rows_alloc == 256 and ops.w.k_alloc == 128
    kw = b.prepare(ops)
    shuffled = kw["b"].T
    perm = torch.tensor([trtllm_source_row(j) for j in range(256)])
    assert torch.equal(shuffled, ops.w.packed[perm])
    assert torch.equal(shuffled, fi.shuffle_matrix_a(ops.w.packed, 128))  # the library, on CPU
    assert torch.equal(flashinfer_fp4.trtllm_row_permutation(256), perm)

    sw = kw["b_descale"].T
    assert sw.shape == ops.w.scales.shape
    logical = unswizzle(ops.w.scales, L.SWIZZLED_128x4)
    assert torch.equal(unswizzle(sw, L.SWIZZLED_128x4), logical[perm])
    # independent 128x4 oracle: torchao's to_blocked of the shuffled logical scales
    to_blocked = import_optional("torchao.prototype.mx_formats.utils", "the 128x4 oracle").to_blocked
    assert torch.equal(sw.reshape(-1), to_blocked(logical[perm]).reshape(-1))
    # same bytes, only moved: padding poison included
    assert torch.equal(torch.sort(sw.reshape(-1)).values, torch.sort(ops.w.scales.reshape(-1)).values)
    # the activation is not shuffled
    assert kw["a"].data_ptr() == ops.a.packed.data_ptr()
    assert gb._trtllm_gemm_fp4_requirement(**kw) is True


def test_trtllm_shuffle_needs_n_multiple_of_128():
    ops = build_gemm_operands(GemmProblem(m=3, n=90, k=64), a_layout=L.SWIZZLED_128x4, w_layout=L.SWIZZLED_128x4,
                              n_align=32, k_align=64)
    assert ops.w.rows_alloc == 96
    with pytest.raises(ValueError, match=r"weight rows_alloc=96 \(scale rows 128\) must be a multiple of 128"):
        FI_BACKENDS["flashinfer-trtllm"].prepare(ops)
    # the library's own shuffle refuses a row count that is not a multiple of 32 too (and takes 96)
    assert_library_refuses(lambda: fi.shuffle_matrix_a(ops.w.packed[:90], 128),
                           accepted=lambda: fi.shuffle_matrix_a(ops.w.packed[:96], 128), exc=AssertionError)


# ----------------------------------------------------------------------------------------------
# FlashInfer mm_fp4: support() and refusals
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED_FI_NAMES))
def test_flashinfer_support_reasons(name):
    b = FI_BACKENDS[name]
    cpu = b.support(fake_env(None))
    assert not cpu and f"flashinfer mm_fp4 backend {b.fi_backend!r} needs a CUDA GPU with SM1" in cpu.reason
    assert "this machine has none" in cpu.reason
    hopper = b.support(fake_env(90, "NVIDIA H200"))
    assert not hopper
    assert f"flashinfer mm_fp4 backend {b.fi_backend!r} does not support SM90 (needs SM1" in hopper.reason
    assert "NVIDIA H200" in hopper.reason
    for cc in (100, 120):
        verdict = b.support(fake_env(cc))
        if cc not in b.requirements.compute_capabilities:
            assert not verdict and f"does not support SM{cc}" in verdict.reason
        elif b.spec.needs == "cudnn" and not verdict:
            assert "cuDNN" in verdict.reason  # this CPU machine has the frontend but no usable libcudnn
        elif not verdict and "CuTe-DSL" in verdict.reason:
            # machines without nvidia-cutlass-dsl (the GPU image) say so instead of claiming support
            assert importlib.util.find_spec("cutlass") is None or not _cute_dsl_usable()
        else:
            assert verdict, verdict.reason
            assert f"mm_fp4 backend {b.fi_backend!r} supports SM{cc}" in verdict.reason


def test_flashinfer_support_when_not_importable(monkeypatch):
    monkeypatch.setattr(_flashinfer, "_IMPORT_CACHE", {})
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # makes `import flashinfer` raise
    verdict = FI_BACKENDS["flashinfer-cutlass"].support(fake_env(100))
    assert not verdict and verdict.reason.startswith("flashinfer is not importable (ModuleNotFoundError")


def test_flashinfer_refusals_become_unsupported_and_failures_stay():
    """Refusals are recognised by FlashInfer's exception classes and by status codes, never by prose:
    the same words in another exception class stay a failure, whatever they say."""
    from flashinfer.utils import BackendSupportedError, GPUArchitectureError

    prefix = "flashinfer-cutlass: flashinfer mm_fp4(backend='cutlass') refused"
    refusals = [
        BackendSupportedError("any wording at all"),
        BackendSupportedError(""),
        GPUArchitectureError("reworded in a later release"),
        RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul"),
        RuntimeError("cudnnGraphNotSupportedError: no engine"),
    ]
    for exc in refusals:
        unsup = _flashinfer.translate_refusal(exc, prefix)
        assert isinstance(unsup, Unsupported), exc
        assert str(unsup) == f"{prefix}: {type(exc).__name__}: {exc}"  # the library's message, shown as it is
    failures = [
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("mm_fp4 does not support backend 'cutlass' with capability 90"),  # the words, wrong class
        RuntimeError("cuDNN is not available"),
        ValueError("Problem size is not supported for mm_fp4"),
        RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED_IN_SOME_OTHER_SENSE"),  # not the status code itself
        AssertionError("input_tensor.shape[0] must be multiples of 32"),
    ]
    for exc in failures:
        assert _flashinfer.translate_refusal(exc, prefix) is None, exc


def test_refusal_status_codes_must_be_identifiers():
    from harness.backends._refusal import refusal_message

    with pytest.raises(ValueError, match="expected one identifier"):
        refusal_message(RuntimeError("x"), status_codes=("not supported on",))
    for codes in (_flashinfer.REFUSAL_STATUS_CODES,):
        refusal_message(RuntimeError("x"), status_codes=codes)  # the adapters' own codes are identifiers


def test_flashinfer_run_refuses_cpu_tensors():
    b = FI_BACKENDS["flashinfer-cutlass"]
    with pytest.raises(Unsupported, match="flashinfer mm_fp4 runs on CUDA tensors; the operands are on cpu"):
        b.run(operands_for(b, problem_for(b)))


# ----------------------------------------------------------------------------------------------
# module-level contract
# ----------------------------------------------------------------------------------------------
def test_flashinfer_module_exposes_backends():
    assert sorted(FI_BACKENDS) == sorted(EXPECTED_FI_NAMES)
    for b in FI_BACKENDS.values():
        assert b.level == "gemm" and b.describe()["name"] == b.name and b.description
