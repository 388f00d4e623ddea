"""CPU tests of the backends built on third-party NVFP4 code: torchao's NVFP4Tensor, compressed-tensors,
NVIDIA ModelOpt, and FlashInfer's layout helpers.

Each library backend runs its property (``quantizer_agreement``, ``checkpoint_convention``,
``reference_agreement``) through :func:`harness.runner.execute` over every data distribution, and the
checkpoint-convention property is checked on the question it exists for: one dense weight exported
through ModelOpt's convention (decode multipliers) and through compressed-tensors' (encode divisors),
loaded the way vLLM's linear methods load them, dequantizes to the same values, and a checkpoint of one
convention read with the other's loader is caught.  Libraries that are not installed skip with the
reason; the backends themselves then report the missing package.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import harness  # noqa: F401
from harness import checks
from harness import env as env_mod
from harness.backends import registry
from harness.backends._library import LibraryBackend, installed_version
from harness.backends.protocol import QuantizerBackend, Requirements
from harness.data import DISTRIBUTIONS
from harness.format import global_scale_encode_divisor, reference_quantize
from harness.layouts import ScaleLayout, swizzle
from harness.pipeline import GemmProblem
from harness.experiments.checkpoint import evaluate_checkpoint
from harness.runner import execute
from harness.trial import Trial

SHAPES = [(5, 7, 64), (33, 17, 128)]

QUANTIZERS = {"quant-compressed-tensors": "compressed_tensors", "quant-modelopt": "modelopt",
              "quant-torchao-nvfp4tensor-128x4": "torchao", "quant-torchao-nvfp4tensor-linear": "torchao"}
CHECKPOINTS = {"ckpt-compressed-tensors": "compressed_tensors", "ckpt-modelopt": "modelopt"}


def _needs(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[oracles]')")


KNOWN_FINDINGS = {
    ("ckpt-modelopt", "all_zero"): "nvidia-modelopt exports an all-zero tensor with weight_scale_2 = 0 and "
                                   "input_scale = 0, so the engine's encode divisor 1 / input_scale is inf (the "
                                   "harness's convention: a global scale of 1); an all-zero calibration would "
                                   "quantize x * inf = NaN",
}
"""Library behaviour the degenerate distributions found: each must keep failing (strict xfail) until a
release changes it, and is then reviewed."""


def _library_cases():
    for name in sorted({**QUANTIZERS, **CHECKPOINTS}):
        for distribution in DISTRIBUTIONS:
            why = KNOWN_FINDINGS.get((name, distribution))
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            yield pytest.param(distribution, name, marks=marks, id=f"{distribution}-{name}")


@pytest.mark.parametrize("distribution, name", list(_library_cases()))
def test_library_backend_agrees_with_the_reference(name, distribution, record_property):
    _needs({**QUANTIZERS, **CHECKPOINTS}[name])
    backend = registry.get(name)
    prop = "checkpoint_convention" if backend.level == "checkpoint" else "quantizer_agreement"
    declared: dict[str, int] = {}
    for seed, (m, n, k) in enumerate(SHAPES):
        out = execute(Trial(name, prop, GemmProblem(m, n, k, in_dtype="bfloat16", distribution=distribution,
                                                    seed=seed)))
        assert out.status == "pass", (name, distribution, m, n, k, out.reason)
        for diff, count in out.measure["declared_differences"].items():
            declared[diff] = declared.get(diff, 0) + count
    record_property("declared_differences", declared)
    assert set(declared) == set(backend.known_differences)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name, distribution, difference", [
    ("quant-compressed-tensors", "zero_blocks", "zero_scale_eps"),
    ("quant-modelopt", "zero_blocks", "zero_block_scale_one"),
    ("quant-torchao-nvfp4tensor-linear", "tiny", "subnormal_scale_floor"),
])
def test_declared_differences_are_real_and_counted(name, distribution, difference):
    """The library really makes the difference it declares (counted, > 0), and without the declaration
    the same bytes fail: the classification is not vacuous."""
    _needs(QUANTIZERS[name])
    backend = registry.get(name)
    problem = GemmProblem(33, 16, 128, in_dtype="bfloat16", distribution=distribution, seed=1)
    out = execute(Trial(name, "quantizer_agreement", problem))
    assert out.status == "pass", out.reason
    assert out.measure["declared_differences"][difference] > 0
    x = problem.activations("cpu")
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    packed, scales = backend.quantize(x, gs)  # type: ignore[attr-defined]
    from harness.layouts import unswizzle
    logical = scales if backend.layout is ScaleLayout.LINEAR else unswizzle(scales, backend.layout)  # type: ignore[attr-defined]
    codes, sf = reference_quantize(x, gs)
    xf = x.float().reshape(33, 8, 16)
    from harness.format import block_scale_and_inverse
    _, inv = block_scale_and_inverse(xf.abs().amax(-1), gs)
    undeclared = checks.quantizer_agreement(packed, logical, codes, sf, (xf * inv.unsqueeze(-1)).reshape(33, 128),
                                            (), (gs * xf.abs().amax(-1)) / 6.0)
    assert not undeclared.ok and undeclared.measure["scale_mismatches"] > 0


def test_unknown_design_difference_is_refused():
    with pytest.raises(ValueError, match="known_differences"):
        checks.quantizer_agreement(torch.zeros(1, 8, dtype=torch.uint8), torch.zeros(1, 1, dtype=torch.uint8),
                                   torch.zeros(1, 16, dtype=torch.uint8), torch.zeros(1, 1, dtype=torch.uint8),
                                   torch.zeros(1, 16), ("no_such_difference",))


# ----------------------------------------------------------------------------------------------
# The checkpoint conventions against each other
# ----------------------------------------------------------------------------------------------
def _weight_and_amax(seed: int = 3):
    p = GemmProblem(9, 48, 96, in_dtype="bfloat16", seed=seed)
    return p.weights("cpu"), p.activations("cpu").float().abs().amax()


def test_modelopt_and_compressed_tensors_checkpoints_dequantize_to_the_same_weight():
    _needs("modelopt")
    _needs("compressed_tensors")
    w, x_amax = _weight_and_amax()
    mo, ct = registry.get("ckpt-modelopt"), registry.get("ckpt-compressed-tensors")
    mo_t, ct_t = mo.export(w, x_amax), ct.export(w, x_amax)  # type: ignore[attr-defined]
    # the two conventions on disk are reciprocal: ModelOpt's decode multiplier, CT's encode divisor
    assert set(mo_t) == {"weight", "weight_scale", "weight_scale_2", "input_scale"}
    assert set(ct_t) >= {"weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"}
    product = float(mo_t["weight_scale_2"]) * float(ct_t["weight_global_scale"])
    assert abs(product - 1.0) <= checks.CHECKPOINT_SCALE_RTOL
    a, b = mo.load(mo_t), ct.load(ct_t)  # type: ignore[attr-defined]
    same_bytes = torch.equal(a.packed, b.packed) and torch.equal(a.scales, b.scales)
    assert same_bytes  # a normal weight has no zero blocks, ties aside: both libraries give the same bytes
    da, db = a.dequantize(), b.dequantize()
    rel = ((da - db).abs() / db.abs().clamp_min(1e-300))[db != 0]
    assert float(rel.max()) <= checks.CHECKPOINT_SCALE_RTOL
    for field in ("input_encode", "alpha"):
        x, y = float(getattr(a, field)), float(getattr(b, field))
        assert abs(x - y) / abs(y) <= checks.CHECKPOINT_SCALE_RTOL, field


def test_a_mixed_convention_is_caught():
    """A compressed-tensors checkpoint renamed into ModelOpt's tensor names and loaded by the ModelOpt
    loader (the encode divisors read as decode multipliers) fails checkpoint_convention; each
    convention loaded by its own loader passes."""
    _needs("modelopt")
    _needs("compressed_tensors")
    w, x_amax = _weight_and_amax(5)
    mo, ct = registry.get("ckpt-modelopt"), registry.get("ckpt-compressed-tensors")
    ct_t = ct.export(w, x_amax)  # type: ignore[attr-defined]
    assert evaluate_checkpoint(w, x_amax, ct.load(ct_t), ct.known_differences).ok  # type: ignore[attr-defined]
    mixed = {"weight": ct_t["weight_packed"], "weight_scale": ct_t["weight_scale"],
             "weight_scale_2": ct_t["weight_global_scale"], "input_scale": ct_t["input_global_scale"]}
    res = evaluate_checkpoint(w, x_amax, mo.load(mixed), mo.known_differences)  # type: ignore[attr-defined]
    assert not res.ok
    assert {"weight_decode", "input_encode"} <= {k for k, v in res.measure["scales"].items()
                                                  if v["rel_err"] > checks.CHECKPOINT_SCALE_RTOL}


def test_compressed_tensors_decompressor_agrees_with_the_engine_loader():
    """compressed-tensors' own decompressor (its fake-quant dequantize) and the vLLM-style load of the
    same checkpoint give the same weight, up to the bf16 rounding of the decompressor's output."""
    _needs("compressed_tensors")
    from harness.backends.compressed_tensors_nvfp4 import _scheme
    from compressed_tensors.compressors.nvfp4 import NVFP4PackedCompressor

    w, x_amax = _weight_and_amax(7)
    ct = registry.get("ckpt-compressed-tensors")
    t = ct.export(w, x_amax)  # type: ignore[attr-defined]
    dense = NVFP4PackedCompressor.decompress(dict(t), _scheme())["weight"].double()
    loaded = ct.load(t).dequantize()  # type: ignore[attr-defined]
    # the decompressor returns bf16(code * (scale / global_scale)), one rounding of an fp32 value:
    # relative error <= bf16's unit roundoff 2^-8 (8 significant bits), plus the fp32 steps before it
    bf16_unit_roundoff = 2.0 ** -8
    rel = ((dense - loaded).abs() / loaded.abs().clamp_min(1e-300))[loaded != 0]
    assert float(rel.max()) <= bf16_unit_roundoff + 2.0 ** -22
    assert torch.equal(dense == 0, loaded == 0)


def test_modelopt_dequantize_agrees_with_the_engine_loader():
    _needs("modelopt")
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    w, x_amax = _weight_and_amax(11)
    mo = registry.get("ckpt-modelopt")
    t = mo.export(w, x_amax)  # type: ignore[attr-defined]
    q = NVFP4QTensor(w.shape, torch.float32, t["weight"])
    theirs = q.dequantize(dtype=torch.float32, scale=t["weight_scale"], double_scale=t["weight_scale_2"],
                          block_sizes={-1: 16}).double()
    ours = mo.load(t).dequantize()  # type: ignore[attr-defined]
    rel = ((theirs - ours).abs() / ours.abs().clamp_min(1e-300))[ours != 0]
    assert float(rel.max()) <= 2.0 ** -22  # two fp32 roundings (scale product, then the element product)


# ----------------------------------------------------------------------------------------------
# torchao
# ----------------------------------------------------------------------------------------------
def test_torchao_to_blocked_is_the_128x4_layout():
    _needs("torchao")
    from torchao.prototype.mx_formats.utils import to_blocked

    for rows, kb in [(1, 1), (7, 3), (130, 9)]:
        lin = torch.randint(1, 255, (rows, kb), dtype=torch.int32).to(torch.uint8)
        theirs = to_blocked(lin.view(torch.float8_e4m3fn)).view(torch.uint8).reshape(-1)
        assert torch.equal(theirs, swizzle(lin, ScaleLayout.SWIZZLED_128x4, fill=0).reshape(-1))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("prop", ["reference_agreement", "determinism", "batch_invariance"])
def test_torchao_weight_only_linear(dtype, prop):
    _needs("torchao")
    for seed, batch in enumerate([None, (2, 3)]):
        m = 6 if batch else 9
        p = GemmProblem(m, 40, 96, in_dtype=dtype, out_dtype=dtype, seed=seed, batch=batch)
        out = execute(Trial("linear-torchao-weight-only", prop, p))
        assert out.status == "pass", out.reason


def test_reduced_precision_reductions_are_restored_whole_even_when_the_call_raises():
    """The context the torchao weight-only adapter runs its GPU matmul in sets torch's process-wide
    reduced-precision reduction flags False and gives back exactly what was there: also when the
    call inside raises, and also the split-K half of the setting (torch resets it to True when a
    bare bool is assigned).  The flags are torch's own, settable in a CPU build too."""
    from harness.torch_modes import reduced_precision_reductions_off

    mm = torch.backends.cuda.matmul
    names = ("allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction")

    def state():
        out = []
        for n in names:
            try:
                out.append((getattr(mm, n), getattr(mm, f"{n}_split_k")))
            except AttributeError:  # a torch without the split-K half
                out.append((getattr(mm, n), None))
        return out

    original = state()
    starts = [original]
    if original[0][1] is not None:  # torch has the split-K half: a user who turned both halves off
        starts.append([(False, False), (False, False)])
    try:
        for start in starts:
            for n, (allowed, split_k) in zip(names, start):
                setattr(mm, n, allowed if split_k is None else (allowed, split_k))
            assert state() == start
            with reduced_precision_reductions_off():
                assert [a for a, _ in state()] == [False, False]
            assert state() == start
            with pytest.raises(RuntimeError, match="inside"):
                with reduced_precision_reductions_off():
                    assert [a for a, _ in state()] == [False, False]
                    raise RuntimeError("raised inside the block")
            assert state() == start
    finally:
        for n, (allowed, split_k) in zip(names, original):
            setattr(mm, n, allowed if split_k is None else (allowed, split_k))


def test_torchao_weight_only_linear_reduces_in_fp32_on_a_gpu():
    """By default torch lets cuBLAS add split-K partial sums in bf16/fp16, past what the declared
    fp32 accumulation bounds (8 H200 main-job cases, column-major inputs: the regression cases
    ``torchao-weight-only-*-split-k-h200``); the adapter's call turns that off on a GPU and
    restores torch's flags afterwards.  On the CPU it leaves them alone."""
    _needs("torchao")
    from harness.backends.torchao_nvfp4 import fp32_reductions

    mm = torch.backends.cuda.matmul
    flags = lambda: (mm.allow_bf16_reduced_precision_reduction, mm.allow_fp16_reduced_precision_reduction)  # noqa: E731
    saved = flags()
    with fp32_reductions(torch.zeros(1)):
        assert flags() == saved
    if not torch.cuda.is_available():
        pytest.skip("the GPU half needs CUDA: on the CPU the context changes nothing (checked above)")
    with fp32_reductions(torch.zeros(1, device="cuda")):
        assert flags() == (False, False)
    assert flags() == saved
    p = GemmProblem(63, 16, 368, in_dtype="bfloat16", out_dtype="bfloat16", distribution="tiny", seed=0,
                    input_layout="column_major")
    for prop in ("reference_agreement", "layout_invariance"):
        out = execute(Trial("linear-torchao-weight-only", prop, p))
        assert out.status == "pass", out.reason


def test_torchao_dynamic_linear_is_gated_on_blackwell():
    b = registry.get("linear-torchao-dynamic")
    base = env_mod.current()
    hopper = dataclasses.replace(base, device="cuda", gpu_name="fake H200", compute_capability=90, gpu_count=1)
    cpu = dataclasses.replace(base, device="cpu", gpu_name=None, compute_capability=None, gpu_count=0)
    for e in (hopper, cpu):
        s = b.support(e)
        assert not s and s.reason
    blackwell = dataclasses.replace(hopper, compute_capability=100, gpu_name="fake B200")
    assert bool(b.support(blackwell)) == (installed_version("torchao") is not None)


# ----------------------------------------------------------------------------------------------
# Listing and gating
# ----------------------------------------------------------------------------------------------
def test_library_backends_are_listed_with_their_version():
    e = env_mod.current()
    for name in {**QUANTIZERS, **CHECKPOINTS, "linear-torchao-weight-only": "torchao"}:
        b = registry.get(name)
        d = b.describe()
        s = b.support(e)
        if d["library_version"] is None:
            assert not s and d["library"] in s.reason
        elif s:
            assert d["library_version"] in s.reason


def test_missing_library_is_a_skip_with_the_reason():
    class Absent(LibraryBackend, QuantizerBackend):
        distribution = "nvfp4-harness-absent-library"
        module = "nvfp4_harness_absent_library"
        name = "quant-absent"
        requirements = Requirements(runs_on_cpu=True)

        def quantize(self, x, global_scale):  # pragma: no cover - never called
            raise AssertionError

    s = Absent().support(env_mod.current())
    assert not s and "nvfp4-harness-absent-library" in s.reason and "not installed" in s.reason


def test_flashinfer_layout_backends_need_cuda_here():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs them for real (tests/test_adapters_gpu.py and the property suite)")
    for name in ("quant-flashinfer-interleave", "flashinfer-dequant-host"):
        s = registry.get(name).support(env_mod.current())
        assert not s and s.reason


def test_flashinfer_shuffle_matrix_a_permutes_rows_within_128_row_tiles():
    """``shuffle_matrix_a`` (the trtllm weight layout; runs on the CPU) moves whole rows, each within its
    128-row tile, one to one: the property the trtllm backends' scale shuffle relies on."""
    fi = pytest.importorskip("flashinfer")
    n = 256
    rows = torch.arange(n, dtype=torch.int32)
    marked = torch.zeros((n, 8), dtype=torch.uint8)
    marked[:, 0] = (rows % 256).to(torch.uint8)
    marked[:, 1] = (rows // 256).to(torch.uint8)
    out = fi.shuffle_matrix_a(marked, 128)
    perm = out[:, 0].long() + 256 * out[:, 1].long()
    assert sorted(perm.tolist()) == list(range(n))
    assert torch.equal(perm // 128, torch.arange(n) // 128)
    assert torch.equal(out[:, 2:], torch.zeros_like(out[:, 2:]))
    # the same permutation as the scale shuffle's row indices (what the trtllm adapter applies to scales)
    from harness.backends.flashinfer_fp4 import trtllm_row_permutation
    assert torch.equal(perm, trtllm_row_permutation(n, 128).long())


def test_report_counts_the_declared_differences():
    from harness.report.view import difference_rows as _difference_rows

    records = [
        {"backend": "quant-x", "outcome": "pass", "measure": {"tie_differences": 2, "scale_tie_differences": 0,
                                                             "negative_zero_differences": 1,
                                                             "declared_differences": {"zero_scale_eps": 5}}},
        {"backend": "quant-x", "outcome": "pass", "measure": {"tie_differences": 1, "scale_tie_differences": 1,
                                                             "negative_zero_differences": 0,
                                                             "declared_differences": {"zero_scale_eps": 2}}},
        {"backend": "quant-x", "outcome": "skip", "measure": {}},
        {"backend": "gemm-y", "outcome": "pass", "measure": {"max_err_units": 0.1}},
    ]
    rows = _difference_rows(records)
    assert [r["backend"] for r in rows] == ["quant-x"]
    assert rows[0]["records"] == 2
    assert dict(rows[0]["items"]) == {"codes one step apart at e2m1 ties": 3,
                                      "block scales one step apart at e4m3 ties": 1,
                                      "sign of a zero code": 1, "declared: zero_scale_eps": 7}
