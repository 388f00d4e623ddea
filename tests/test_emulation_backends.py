"""The emulation backends (triton-emu-*, torch-emu, triton-w4a16) on the CPU, under the Triton interpreter.

Each is checked against the fp64 reference of :mod:`harness.oracle` under its declared precision's
sound error bound, and for the padding behaviour it documents: M-padding scales never reach a real
row, N-padding weight rows never reach a real column, and the Triton kernels read the K tail (a NaN
tail scale turns the outputs NaN) while torch-emu reads only the real region.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import pytest
import torch

from harness.backends import registry
from harness.backends.protocol import GemmBackend, Unsupported
from harness.layouts import Region, ScaleLayout
from harness.oracle import Reference, compare, error_bound, reference_gemm
from harness.pipeline import GemmOperands, build_gemm_operands
from harness.problem import GemmProblem, Poison

TRITON_NVFP4 = ("triton-emu-128x4", "triton-emu-8x4", "triton-emu-linear")
ALL = TRITON_NVFP4 + ("torch-emu", "triton-w4a16")
READS_K_TAIL = TRITON_NVFP4 + ("triton-w4a16",)
"""Backends that run over every k-block of the allocated K without masking the tail (like hardware)."""

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
"""The interpreter on a CPU machine; on a GPU machine the same checks run the compiled kernels."""

NAN_BYTE = 0x7F
MAX_BYTE = 0x7E

# (m, n, k, distribution, seed): odd shapes, a K spanning several kernel K steps, varied data
SHAPES = [
    (1, 16, 16, "normal", 0),
    (7, 40, 144, "heavy_tailed", 1),
    (33, 20, 48, "tiny", 2),
]
ISOLATION = GemmProblem(33, 20, 48, distribution="tiny", seed=2)
"""33 rows: padding inside an 8x4 and a 128x4 row tile; n=20: N padding up to 32 (n_align 16)."""


def backend(name: str) -> GemmBackend:
    b = registry.get(name)
    assert isinstance(b, GemmBackend)
    return b


def with_layouts(names: tuple[str, ...], only: tuple[ScaleLayout, ...] | None = None) -> list:
    """pytest params (backend name, activation layout) for every activation layout a backend declares."""
    return [pytest.param(n, lay, id=f"{n}-{lay.value}")
            for n in names for lay in backend(n).requirements.a_layouts if only is None or lay in only]


@dataclasses.dataclass(frozen=True)
class Built:
    ops: GemmOperands
    ref: Reference


@functools.lru_cache(maxsize=None)
def _build(problem: GemmProblem, poison: Poison, a_layout: ScaleLayout, w_layout: ScaleLayout, n_align: int,
           k_align: int, activation: str) -> Built:
    ops = build_gemm_operands(problem, a_layout=a_layout, w_layout=w_layout, n_align=n_align, k_align=k_align,
                              poison=poison, activation=activation, device=DEVICE)  # type: ignore[arg-type]
    return Built(ops, reference_gemm(ops))


def build(name: str, problem: GemmProblem, poison: Poison = Poison(), a_layout: ScaleLayout | None = None,
          k_align: int | None = None) -> Built:
    """Operands for ``name`` (its declared layouts and alignment unless overridden) and their reference.

    The Triton pipeline is slow under the interpreter, so operands are built once per distinct
    request (the output dtype aside) and shared between tests; the backends never write to their inputs.
    """
    req = backend(name).requirements
    b = _build(problem.with_(out_dtype="bfloat16"), poison, a_layout or req.a_layouts[0], req.w_layout,
               req.n_align, k_align or req.k_align, req.activation)
    return Built(dataclasses.replace(b.ops, out_dtype=problem.torch_out_dtype, problem=problem), b.ref)


def assert_within_bound(name: str, built: Built, out: torch.Tensor) -> None:
    ops, ref = built.ops, built.ref
    assert out.shape == (ops.m, ops.w.rows_alloc) and out.dtype == ops.out_dtype
    bound = error_bound(ref, backend(name).requirements.precision, ops.out_dtype)
    agreement = compare(out[:, :ops.n], ref, bound, ops.out_dtype)
    assert agreement.ok, (f"{name}: {agreement.violations} elements out of bound, worst "
                          f"{agreement.max_err_units:.3g} bounds (|err| {agreement.max_err_abs:.3g}) at "
                          f"{agreement.argmax}; NaN rows {agreement.nan_rows}")


def test_registered() -> None:
    for name in ALL:
        req = backend(name).requirements
        assert req.runs_on_cpu and req.compute_capabilities is None


@pytest.mark.parametrize("name,a_layout", with_layouts(ALL))
@pytest.mark.parametrize("out_dtype", ["bfloat16", "float16"])
def test_matches_reference(name: str, a_layout: ScaleLayout, out_dtype: str) -> None:
    for m, n, k, dist, seed in SHAPES:
        built = build(name, GemmProblem(m, n, k, out_dtype=out_dtype, distribution=dist, seed=seed),
                      a_layout=a_layout)
        assert_within_bound(name, built, backend(name).run(built.ops))


@pytest.mark.parametrize("name,a_layout",
                         with_layouts(TRITON_NVFP4 + ("torch-emu",),
                                      only=(ScaleLayout.SWIZZLED_8x4, ScaleLayout.SWIZZLED_128x4)))
@pytest.mark.parametrize("fill", [NAN_BYTE, MAX_BYTE], ids=["nan", "max"])
def test_row_isolation(name: str, a_layout: ScaleLayout, fill: int) -> None:
    """Poisoned activation padding-row scales leave every real row bit-identical."""
    clean = build(name, ISOLATION, a_layout=a_layout).ops
    dirty = build(name, ISOLATION, Poison(m_pad=fill), a_layout=a_layout).ops
    assert not torch.equal(clean.a.scales, dirty.a.scales), "the poison did not land"
    assert torch.equal(backend(name).run(clean), backend(name).run(dirty))


@pytest.mark.parametrize("name", ALL)
def test_column_isolation(name: str) -> None:
    """Poisoned weight padding-row scales leave every real output column bit-identical."""
    clean = build(name, ISOLATION).ops
    dirty = build(name, ISOLATION, Poison(n_pad=NAN_BYTE)).ops
    assert not torch.equal(clean.w.scales, dirty.w.scales), "the poison did not land"
    n = ISOLATION.n
    assert torch.equal(backend(name).run(clean)[:, :n], backend(name).run(dirty)[:, :n])


def zero_k_tail(ops: GemmOperands) -> GemmOperands:
    """A copy of ``ops`` whose K-tail scale bytes (both operands) are 0, as a correct pipeline leaves them."""
    def clean(t):
        scales = t.scales.clone()
        scales[t.padding_map().mask(Region.K_TAIL).to(scales.device)] = 0
        return dataclasses.replace(t, scales=scales)
    return dataclasses.replace(ops, a=clean(ops.a), w=clean(ops.w), poison=Poison())


@pytest.mark.parametrize("name", ALL)
def test_k_tail(name: str) -> None:
    """K=464 padded to 480 (k_align 32, the TP4 Nemotron shard): a zeroed tail is harmless; a NaN tail
    turns every output NaN for the kernels that read it (they need a zeroed tail) and is ignored by
    torch-emu, which reads only the real region."""
    dirty = build(name, GemmProblem(3, 20, 464, seed=6), Poison(k_tail=NAN_BYTE), k_align=32)
    assert dirty.ops.w.k_alloc == 480 and dirty.ops.k == 464
    clean = zero_k_tail(dirty.ops)
    assert not torch.equal(clean.w.scales, dirty.ops.w.scales), "the poison did not land"
    assert_within_bound(name, Built(clean, dirty.ref), backend(name).run(clean))
    out = backend(name).run(dirty.ops)
    if name in READS_K_TAIL:
        assert torch.isnan(out[:, :dirty.ops.n]).all()
    else:
        assert_within_bound(name, dirty, out)


@pytest.mark.parametrize("name", ALL)
def test_out_buffer(name: str) -> None:
    """A provided output buffer is written (every element, padding columns included) and returned."""
    ops = build(name, ISOLATION).ops
    fresh = backend(name).run(ops)
    out = torch.full((ops.m, ops.w.rows_alloc), float("nan"), dtype=ops.out_dtype, device=DEVICE)
    got = backend(name).run(ops, out=out)
    assert got is out
    assert torch.equal(out, fresh)
    with pytest.raises(ValueError):
        backend(name).run(ops, out=torch.empty((ops.m, ops.w.rows_alloc + 1), dtype=ops.out_dtype, device=DEVICE))


def test_undeclared_layout_is_unsupported() -> None:
    ops = build("triton-emu-8x4", ISOLATION).ops
    with pytest.raises(Unsupported, match="8x4"):
        backend("triton-emu-128x4").run(ops)
