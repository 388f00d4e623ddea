"""The NVFP4 format: e2m1 / e4m3 arithmetic, packing, global-scale conventions, the reference
quantizer, checked against torch's own float8, torchao, compressed-tensors and FlashInfer's CPU
dequantizer."""

from __future__ import annotations

import warnings

import pytest
import torch

from harness.optional import import_optional

from harness import format as F

warnings.filterwarnings("ignore")


def test_e2m1_grid_points_encode_exactly_and_round_trip():
    codes = torch.arange(16, dtype=torch.uint8)
    values = F.e2m1_decode(codes)
    assert values[:8].tolist() == list(F.E2M1_MAGNITUDES)
    assert values[8:].tolist() == [-v for v in F.E2M1_MAGNITUDES]
    assert torch.signbit(values[8])  # code 8 is -0
    assert torch.equal(F.e2m1_encode(values), codes)


@pytest.mark.parametrize("x, code", [(0.25, 0), (0.2500001, 1), (0.75, 2), (0.7499999, 1), (1.25, 2),
                                     (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6), (5.0001, 7), (6.0, 7),
                                     (1e9, 7), (-0.1, 8), (-2.5, 12), (-7.0, 15)])
def test_e2m1_rounds_to_nearest_even_and_saturates(x, code):
    assert int(F.e2m1_encode(torch.tensor([x]))[0]) == code


def test_e4m3_decode_matches_torch_float8_for_all_bytes():
    b = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    ours = F.e4m3_decode(b)
    theirs = b.view(torch.float8_e4m3fn).float()
    assert torch.isnan(ours[0x7F]) and torch.isnan(ours[0xFF])
    both_nan = torch.isnan(ours) & torch.isnan(theirs)
    assert torch.equal(both_nan, torch.isnan(theirs))
    assert torch.equal(ours[~both_nan], theirs[~both_nan])
    assert ours[0x7E] == F.E4M3_MAX


def test_e4m3_encode_matches_torch_rne_with_saturation():
    g = torch.Generator().manual_seed(0)
    grid = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid) & (grid >= 0)]
    mids = (grid[1:] + grid[:-1]) / 2  # exact ties between neighbours
    x = torch.cat([torch.rand(200_000, generator=g) * 500, torch.rand(50_000, generator=g) * 0.03,
                   grid, mids, torch.tensor([449.0, 464.0, 480.0, 1e6])])
    ours = F.e4m3_encode(x)
    theirs = x.clamp(max=448).to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(ours, theirs)
    assert int(F.e4m3_encode(torch.tensor([float("nan")]))[0]) == 0x7F


def test_pack_matches_compressed_tensors_and_unpack_inverts():
    helpers = import_optional("compressed_tensors.compressors.nvfp4.helpers", "the e2m1 packing oracle")
    pack_fp4_to_uint8, unpack_fp4_from_uint8 = helpers.pack_fp4_to_uint8, helpers.unpack_fp4_from_uint8

    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (7, 32), generator=g, dtype=torch.uint8)
    codes[codes == 8] = 0  # compressed-tensors maps -0 to code 0 after its float round trip
    ours = F.pack_e2m1(codes)
    theirs = pack_fp4_to_uint8(F.e2m1_decode(codes))
    assert torch.equal(ours, theirs)
    assert torch.equal(F.unpack_e2m1(ours), codes)
    back = unpack_fp4_from_uint8(ours, 7, 32, dtype=torch.float32)
    assert torch.equal(back, F.e2m1_decode(codes))


def test_global_scale_conventions_are_reciprocal_and_match_torchao():
    per_tensor_amax_to_scale = import_optional("torchao.prototype.mx_formats.nvfp4_tensor",
                                               "the global-scale convention oracle").per_tensor_amax_to_scale

    amax = torch.tensor(3.7)
    enc = F.global_scale_encode_divisor(amax)
    dec = F.global_scale_decode_multiplier(amax)
    assert float(enc) == pytest.approx(2688 / 3.7, rel=1e-7)
    assert float(enc * dec) == pytest.approx(1.0, rel=1e-7)
    # torchao's per_tensor_scale is the decode multiplier
    assert float(per_tensor_amax_to_scale(amax)) == pytest.approx(float(dec), rel=1e-6)
    assert float(F.decode_multiplier_to_encode_divisor(dec)) == pytest.approx(float(enc), rel=1e-6)
    assert float(F.global_scale_encode_divisor(torch.tensor(0.0))) == 1.0  # all-zero tensor


def _quantize_both(x):
    ao = import_optional("torchao.prototype.mx_formats.nvfp4_tensor", "the quantizer oracle")
    nvfp4_quantize, per_tensor_amax_to_scale = ao.nvfp4_quantize, ao.per_tensor_amax_to_scale

    amax = x.float().abs().amax()
    gs = F.global_scale_encode_divisor(amax)
    codes, sf = F.reference_quantize(x, gs)
    ao_sf, ao_packed = nvfp4_quantize(x.contiguous(), 16, per_tensor_amax_to_scale(amax))
    return gs, codes, sf, F.unpack_e2m1(ao_packed.view(torch.uint8)), ao_sf.view(torch.uint8)


@pytest.mark.parametrize("dist", ["normal", "heavy_tailed", "zero_blocks", "tiny", "on_grid"])
def test_reference_quantizer_agrees_with_torchao_up_to_named_differences(dist):
    """torchao computes the block scale as (amax/6)/per_tensor_scale and the element multiplier as
    1/(sf*per_tensor_scale); the harness (like the CUDA kernels) uses gs*amax/6 and 1/(sf/gs).  The
    fp32 roundings differ, so a few bytes legitimately differ: a scale by one e4m3 step where
    gs*amax/6 sits on an e4m3 rounding boundary, and codes where x*inv sits on an e2m1 tie.  And
    torchao clamps block scales up to E4M3_EPS = 2^-6 (byte 0x08), where the harness and the CUDA
    kernels keep e4m3 subnormals (bytes 0x00..0x07, zero blocks included).  Each difference is
    counted and checked to be of one of these kinds."""
    from harness.data import generate

    x = generate(dist, (64, 256), seed=3)
    gs, codes, sf, ao_codes, ao_sf = _quantize_both(x)
    sf_diff = sf != ao_sf
    clamped = sf_diff & (sf < 0x08) & (ao_sf == 0x08)  # torchao's E4M3_EPS floor
    boundary = sf_diff & ~clamped
    # every other scale difference is one e4m3 step (adjacent codes)
    assert ((sf.int() - ao_sf.int()).abs()[boundary] <= 1).all()
    # codes: compare only blocks whose scale agrees; each differing code must be at (or within
    # fp32 rounding of) an e2m1 tie, and one step apart
    same_block = (~sf_diff).repeat_interleave(16, dim=1)
    code_diff = (codes != ao_codes) & same_block & ~(((codes | 8) == 8) & ((ao_codes | 8) == 8))
    xf = x.float().reshape(64, 16, 16)
    _, inv = F.block_scale_and_inverse(xf.abs().amax(-1), gs)
    scaled = (xf * inv.unsqueeze(-1)).reshape(64, 256).abs()
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    dist_to_tie = (scaled.unsqueeze(-1) - ties).abs().amin(-1) / scaled.clamp_min(1e-30)
    assert (dist_to_tie[code_diff] <= 2e-6).all(), "a code differs away from an e2m1 tie"
    mag = lambda c: c.long() & 7  # noqa: E731
    assert ((mag(codes) - mag(ao_codes)).abs()[code_diff] <= 1).all()
    total = codes.numel()
    print(f"{dist}: scale bytes differing from torchao: {int(clamped.sum())} subnormal scales clamped to 2^-6 "
          f"by torchao, {int(boundary.sum())} one step apart at an e4m3 rounding boundary; codes: "
          f"{int(code_diff.sum())} of {total} at e2m1 ties")
    if dist in ("normal", "heavy_tailed", "on_grid"):
        assert int(clamped.sum()) == 0  # no subnormal scales in these data
    if dist == "zero_blocks":
        assert int(clamped.sum()) > 0  # zero blocks: harness writes 0x00, torchao 0x08
    assert int(code_diff.sum()) <= total // 100


def test_dequantize_agrees_with_flashinfer_cpu_dequantizer():
    """FlashInfer's pure-PyTorch dequantizer (linear scales; it multiplies by the global scale it is
    given, so it takes the decode multiplier)."""
    fp4q = import_optional("flashinfer.quantization.fp4_quantization", "the CPU dequantizer oracle")
    from harness.data import generate

    x = generate("heavy_tailed", (33, 464), seed=5)
    gs = F.global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    codes, sf = F.reference_quantize(x, gs)
    ours = F.reference_dequantize(codes, sf, gs)
    theirs = fp4q._e2m1_and_ufp8sf_scale_to_float_cpu(F.pack_e2m1(codes), sf, (1.0 / gs).float(), 16, 1, False)
    rel = ((theirs.double() - ours).abs() / ours.abs().clamp_min(1e-30))[ours != 0]
    assert float(rel.max()) <= 2 ** -22  # two fp32 roundings (sf*gs_dec, product)
    assert torch.equal(theirs == 0, ours == 0)


def test_reference_quantizer_rejects_bad_shapes():
    with pytest.raises(ValueError, match="K=20 is not a multiple of 16"):
        F.reference_quantize(torch.zeros(2, 20), 1.0)
    with pytest.raises(ValueError, match="must be 2-D"):
        F.reference_quantize(torch.zeros(16), 1.0)
