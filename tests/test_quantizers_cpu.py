"""CPU tests of the quantizer backends against :func:`harness.format.reference_quantize`.

* ``quant-triton-*`` must reproduce the reference byte for byte, layout padding zeroed.
* ``quant-torchao`` differs from the reference in two named, explained ways (see
  :class:`harness.backends.quantizers.TorchaoQuantizer`): scale bytes clamped to e4m3's smallest
  normal (2**-6, byte 0x08) where the reference's scale is zero or subnormal, and codes one
  rounding step apart at e2m1 ties because torchao computes the element scale in another order.
  The test counts both per distribution and checks that every difference is of one of these kinds.
* ``quant-flashinfer-*`` are CUDA-only: here the tests check their support verdicts and that the
  layout flags they pass make FlashInfer's own fake (shape-only) op produce our layout's shape.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import harness.kernels  # noqa: F401  (sets TRITON_INTERPRET on a CPU-only machine)
from harness import data
from harness import env as env_mod
from harness.backends import quantizers
from harness.backends.protocol import Unsupported
from harness.optional import import_optional
from harness.format import (BLOCK_SIZE, E2M1_MAGNITUDES, block_scale_and_inverse, e2m1_encode, e4m3_decode,
                            global_scale_encode_divisor, reference_quantize, unpack_e2m1)
from harness.layouts import OperandRole, ScaleLayout, padded_shape, padding_map, swizzle, unswizzle

L = ScaleLayout
ROWS, K = 40, 96


def fake_env(cc: int | None) -> env_mod.Environment:
    base = env_mod.current()
    if cc is None:
        return dataclasses.replace(base, device="cpu", gpu_name=None, compute_capability=None, gpu_count=0)
    return dataclasses.replace(base, device="cuda", gpu_name=f"fake SM{cc}", compute_capability=cc, gpu_count=1)


def by_name() -> dict:
    return {b.name: b for b in quantizers.backends()}


def logical_scales(scales: torch.Tensor, layout: ScaleLayout, rows: int, kblocks: int) -> torch.Tensor:
    lg = scales if layout is L.LINEAR else unswizzle(scales, layout)
    return lg[:rows, :kblocks]


def test_backend_names_and_layouts():
    b = by_name()
    assert sorted(b) == sorted(["quant-triton-128x4", "quant-triton-8x4", "quant-triton-linear",
                                "quant-flashinfer-128x4", "quant-flashinfer-8x4", "quant-flashinfer-linear",
                                "quant-torchao"])
    for name, q in b.items():
        assert q.level == "quantizer"
        assert q.layout.value == name.rsplit("-", 1)[1] or name == "quant-torchao"
    assert b["quant-torchao"].layout is L.SWIZZLED_128x4


# ----------------------------------------------------------------------------------------------
# Triton
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", [L.SWIZZLED_128x4, L.SWIZZLED_8x4, L.LINEAR])
@pytest.mark.parametrize("dist", data.DISTRIBUTIONS)
def test_triton_quantizer_matches_reference_bytes(layout, dist):
    q = by_name()[f"quant-triton-{layout.value}"]
    assert q.support(fake_env(None))
    x = data.generate(dist, (ROWS, K), 11, torch.bfloat16)
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    codes, sf = reference_quantize(x, gs)
    packed, scales = q.quantize(x, gs)
    assert (packed.dtype, tuple(packed.shape)) == (torch.uint8, (ROWS, K // 2))
    assert (scales.dtype, tuple(scales.shape)) == (torch.uint8, padded_shape(layout, ROWS, K // BLOCK_SIZE))
    assert torch.equal(unpack_e2m1(packed), codes)
    assert torch.equal(logical_scales(scales, layout, ROWS, K // BLOCK_SIZE), sf)
    pm = padding_map(layout, OperandRole.ACTIVATION, ROWS, K // BLOCK_SIZE)
    assert torch.all(scales[pm.regions != 0] == 0)  # layout padding is zero-filled


def test_triton_quantizer_rejects_bad_input():
    q = by_name()["quant-triton-128x4"]
    with pytest.raises(ValueError, match=r"k=40 must be a multiple of 16"):
        q.quantize(torch.zeros(4, 40), torch.ones(1))
    with pytest.raises(ValueError, match=r"x must be 2-D \[rows, k\], got shape \(2, 4, 32\)"):
        q.quantize(torch.zeros(2, 4, 32), torch.ones(1))


# ----------------------------------------------------------------------------------------------
# torchao
# ----------------------------------------------------------------------------------------------
# Measured with torchao 0.18 on bf16 data of shape (64, 256), seed 3, from harness.data.generate
# (they change with the data generator; every difference is classified below either way):
# (scale bytes clamped to 0x08, codes that differ inside clamped blocks, codes that differ at ties)
TORCHAO_DIFFERENCES = {
    "normal": (0, 0, 0),
    "heavy_tailed": (0, 0, 18),
    "zero_blocks": (301, 0, 0),    # every all-zero block: reference scale 0x00, torchao 0x08
    "tiny": (705, 6071, 2),        # blocks whose reference scale is e4m3-subnormal
    "saturating": (0, 0, 0),
    "on_grid": (0, 0, 0),
    "all_zero": (1024, 0, 0),      # every block is zero: 64 rows x 16 blocks at 0x08 instead of 0x00
    "zero_rows": (256, 0, 0),      # the 16 all-zero rows' blocks
    "one_outlier": (0, 0, 11),     # adjacent codes at e2m1 ties (the other order of the element scale)
}


@pytest.mark.parametrize("dist", data.DISTRIBUTIONS)
def test_torchao_quantizer_differences_are_named_and_explained(dist):
    import_optional("torchao.prototype.mx_formats.nvfp4_tensor", "the quant-torchao backend")
    q = by_name()["quant-torchao"]
    rows, k = 64, 256
    kb = k // BLOCK_SIZE
    x = data.generate(dist, (rows, k), 3, torch.bfloat16)
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    codes, sf = reference_quantize(x, gs)
    packed, scales = q.quantize(x, gs)
    assert tuple(scales.shape) == padded_shape(L.SWIZZLED_128x4, rows, kb)
    tc = unpack_e2m1(packed)
    ts = logical_scales(scales, L.SWIZZLED_128x4, rows, kb)

    # 1. scale bytes: they differ exactly where the reference scale is below e4m3's smallest normal
    clamped = sf < 0x08
    assert torch.equal(ts != sf, clamped & (ts == 0x08))
    assert torch.all(ts[clamped] == 0x08)
    # 2. codes in clamped blocks: torchao's own arithmetic with sf = 2**-6
    pts = q.per_tensor_scale(gs)
    xf = x.float().reshape(rows, kb, BLOCK_SIZE)
    tao_scaled = (xf * ((1.0 / pts) / e4m3_decode(ts).float()).unsqueeze(-1)).reshape(rows, k)
    assert torch.equal(tc, e2m1_encode(tao_scaled.clamp(-6.0, 6.0)))  # every code, clamped blocks or not
    in_clamped = clamped.repeat_interleave(BLOCK_SIZE, dim=1)
    # 3. other code differences: adjacent codes of the same sign at an e2m1 tie (the two orders of
    #    computing the element scale put the value within one ulp on either side of the threshold)
    _, inv = block_scale_and_inverse(xf.abs().amax(-1), gs)
    ref_scaled = (xf * inv.unsqueeze(-1)).reshape(rows, k)
    tie = (tc != codes) & ~in_clamped
    if tie.any():
        mag_t, mag_r = (tc[tie] & 7).int(), (codes[tie] & 7).int()
        assert torch.all((mag_t - mag_r).abs() == 1)
        assert torch.all((tc[tie] >> 3) == (codes[tie] >> 3))
        vt, vr = tao_scaled[tie].abs(), ref_scaled[tie].abs()
        ulp = torch.finfo(torch.float32).eps * torch.maximum(vt, vr)
        assert torch.all((vt - vr).abs() <= ulp)
        mags = torch.tensor(E2M1_MAGNITUDES)
        lo, hi = mags[torch.minimum(mag_t, mag_r).long()], mags[torch.maximum(mag_t, mag_r).long()]
        threshold = (lo + hi) / 2
        assert torch.all((torch.minimum(vt, vr) <= threshold) & (threshold <= torch.maximum(vt, vr)))
    counts = (int((ts != sf).sum()), int(((tc != codes) & in_clamped).sum()), int(tie.sum()))
    assert counts == TORCHAO_DIFFERENCES[dist]


def test_torchao_per_tensor_scale_is_the_decode_multiplier():
    nvfp4 = import_optional("torchao.prototype.mx_formats.nvfp4_tensor", "the quant-torchao backend")
    x = data.generate("normal", (32, 64), 5, torch.bfloat16)
    amax = x.float().abs().amax()
    gs = global_scale_encode_divisor(amax).reshape(1)
    ours = quantizers.TorchaoQuantizer.per_tensor_scale(gs)
    theirs = nvfp4.per_tensor_amax_to_scale(amax)  # amax / (448 * 6)
    assert abs(float(ours) - float(theirs)) <= 2 * torch.finfo(torch.float32).eps * float(theirs)
    # with it, torchao's scale bytes are the reference's on this data ...
    ref_sf = reference_quantize(x, gs)[1]
    good_sf, _ = nvfp4.nvfp4_quantize(x, 16, ours)
    assert torch.equal(good_sf.view(torch.uint8), ref_sf)
    # ... and the classic bug, the encode divisor passed where torchao wants the decode multiplier,
    # changes almost all of them
    wrong_sf, _ = nvfp4.nvfp4_quantize(x, 16, gs.reshape(()))
    assert (wrong_sf.view(torch.uint8) != ref_sf).float().mean() > 0.9


def test_torchao_scales_are_torchaos_linear_scales_swizzled():
    nvfp4 = import_optional("torchao.prototype.mx_formats.nvfp4_tensor", "the quant-torchao backend")
    q = by_name()["quant-torchao"]
    x = data.generate("heavy_tailed", (ROWS, K), 2, torch.bfloat16)
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    lin, packed_ref = nvfp4.nvfp4_quantize(x, 16, q.per_tensor_scale(gs))
    packed, scales = q.quantize(x, gs)
    assert torch.equal(packed, packed_ref)
    assert torch.equal(scales, swizzle(lin.view(torch.uint8), L.SWIZZLED_128x4))
    with pytest.raises(Unsupported, match="torchao nvfp4_quantize takes"):
        q.quantize(x.half(), gs)


# ----------------------------------------------------------------------------------------------
# FlashInfer (CUDA only)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", [L.SWIZZLED_128x4, L.SWIZZLED_8x4, L.LINEAR])
def test_flashinfer_quantizer_support_and_flags(layout):
    fq = import_optional("flashinfer.quantization.fp4_quantization", "the quant-flashinfer backends")
    q = by_name()[f"quant-flashinfer-{layout.value}"]
    cpu = q.support(fake_env(None))
    assert not cpu and "CUDA kernel" in cpu.reason and "no CUDA GPU" in cpu.reason
    hopper = q.support(fake_env(90))
    assert hopper, "SM90 must not be gated off: the harness is to detect its garbage output"
    # the listing says what the installed FlashInfer does below SM100, decided from the library itself
    fi_utils = import_optional("flashinfer.utils")
    has_check = callable(getattr(fi_utils, "_check_block_scale_quantization_support", None))
    assert (quantizers.library_device_check() is not None) == has_check
    version = import_optional("flashinfer").__version__
    assert f"flashinfer {version} " in hopper.reason
    assert ("checks the device itself" if has_check else "has no device check for it") in hopper.reason
    assert q.support(fake_env(100)) and "below SM100" not in q.support(fake_env(100)).reason
    ampere = q.support(fake_env(80))
    assert not ampere and "SM80" in ampere.reason and "get_fp4_quantization_module" in ampere.reason

    x = torch.zeros((ROWS, K), dtype=torch.bfloat16)
    kw = q.call_kwargs(x, torch.ones(1))
    assert kw["is_sf_swizzled_layout"] is (layout is not L.LINEAR)
    assert kw["is_sf_8x4_layout"] is (layout is L.SWIZZLED_8x4)
    assert (kw["sf_vec_size"], kw["sf_use_ue8m0"], kw["is_global_scale_inversed"]) == (16, False, False)
    assert kw.get("nvfp4_4over6", None) is None
    # FlashInfer's registered fake op says which shapes these flags produce
    x_q, sf = fq._fp4_quantize_fake(x, kw["global_scale"], kw["sf_vec_size"], kw["sf_use_ue8m0"],
                                    kw["is_sf_swizzled_layout"], kw["is_sf_8x4_layout"])
    assert tuple(x_q.shape) == (ROWS, K // 2)
    assert tuple(sf.shape) == padded_shape(layout, ROWS, K // BLOCK_SIZE)
    with pytest.raises(Unsupported, match="CUDA-only; x is on cpu"):
        q.quantize(x, torch.ones(1))
    with pytest.raises(Unsupported, match="takes .*bfloat16.* input for NVFP4, got torch.float32"):
        q.quantize(x.float(), torch.ones(1))
