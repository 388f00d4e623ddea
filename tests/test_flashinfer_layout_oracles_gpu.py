"""FlashInfer's layout helpers as independent oracles on a GPU (they run on SM90 too):
``block_scale_interleave`` must reproduce the harness's 128x4 swizzle, and
``e2m1_and_ufp8sf_scale_to_float`` must dequantize the pipeline's bytes (linear, 128x4 and 8x4
layouts) to the reference values."""

from __future__ import annotations

import pytest
import torch

from harness import format as F
from harness.kernels.nvfp4 import quantize_into
from harness.layouts import ScaleLayout, swizzle
from harness.optional import import_optional

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (FlashInfer's helpers are CUDA host code)")]


@pytest.mark.parametrize("rows, kb", [(1, 1), (7, 3), (33, 29), (129, 31), (256, 8)])
def test_block_scale_interleave_equals_the_128x4_swizzle(rows, kb):
    flashinfer = import_optional("flashinfer", "the layout helpers under test")

    lin = torch.randint(1, 255, (rows, kb), dtype=torch.int32).to(torch.uint8)
    theirs = flashinfer.block_scale_interleave(lin.cuda()).cpu().reshape(-1)
    ours = swizzle(lin, ScaleLayout.SWIZZLED_128x4, fill=0).reshape(-1)
    assert theirs.numel() == ours.numel()
    assert torch.equal(theirs, ours)


@pytest.mark.parametrize("layout", [ScaleLayout.LINEAR, ScaleLayout.SWIZZLED_128x4, ScaleLayout.SWIZZLED_8x4])
@pytest.mark.parametrize("m, k", [(1, 64), (9, 464), (33, 496), (129, 128)])
def test_e2m1_and_ufp8sf_scale_to_float_dequantizes_the_pipeline_bytes(layout, m, k, record_property):
    flashinfer = import_optional("flashinfer", "the layout helpers under test")

    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m + k)).to(torch.bfloat16).cuda()
    gs = F.global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    packed, scales = quantize_into(x, gs, layout)
    ref = F.reference_dequantize(F.unpack_e2m1(packed.cpu()), F.reference_quantize(x.cpu(), gs.cpu())[1]) / gs.cpu().double()
    kwargs = dict(sf_vec_size=16, ufp8_type=1, is_sf_swizzled_layout=layout is not ScaleLayout.LINEAR,
                  is_sf_8x4_layout=layout is ScaleLayout.SWIZZLED_8x4)
    # the global scale it takes multiplies (decode convention: 1/gs)
    out = flashinfer.e2m1_and_ufp8sf_scale_to_float(packed.cpu(), scales.cpu().reshape(-1),
                                                    (1.0 / gs).float().cpu(), **kwargs)
    rel = ((out.double() - ref).abs() / ref.abs().clamp_min(1e-30))[ref != 0]
    record_property("max_rel_err", float(rel.max()))
    assert out.shape == (m, k)
    assert float(rel.max()) <= 2 ** -21
    assert torch.equal(out == 0, ref == 0)


@pytest.mark.parametrize("rows, kb", [(128, 1), (256, 7), (384, 29)])
def test_shuffle_matrix_sf_a_is_the_row_shuffle_then_the_128x4_swizzle(rows, kb):
    """``shuffle_matrix_sf_a`` (a CUDA kernel) equals the harness's stand-in in
    ``flashinfer_fp4.shuffle_weight_for_trtllm``: rows permuted as ``shuffle_matrix_a`` permutes the data,
    then laid out in 128x4."""
    import flashinfer

    from harness.backends.flashinfer_fp4 import trtllm_row_permutation

    lin = torch.randint(1, 255, (rows, kb), dtype=torch.int32).to(torch.uint8)
    theirs = flashinfer.shuffle_matrix_sf_a(lin.cuda(), 128).cpu().reshape(-1)
    perm = trtllm_row_permutation(rows, 128)
    ours = swizzle(lin[perm], ScaleLayout.SWIZZLED_128x4, fill=0).reshape(-1)
    assert theirs.numel() == ours.numel()
    assert torch.equal(theirs, ours)
