"""The padded Triton pipeline: quantizer bytes against the reference quantizer in every layout and
odd shape, padding fills per region, dequantization, byte padding, TP shards and production padding."""

from __future__ import annotations

import pytest
import torch

from harness import format as F
from harness.kernels import nvfp4
from harness.kernels.nvfp4 import LEAVE, dequantize_from, pad_bytes, quantize_into
from harness.layouts import OperandRole, Region, ScaleLayout, padding_map, unswizzle
from harness.pipeline import POLICIES, build_gemm_operands
from harness.problem import GemmProblem, Poison
from harness.tp_catalog import ShardError, shard

M_VALUES = (1, 7, 8, 9, 33, 129)
K_VALUES = (16, 48, 464, 496)


@pytest.mark.parametrize("layout", list(ScaleLayout))
@pytest.mark.parametrize("k", K_VALUES)
def test_triton_quantizer_bytes_equal_reference(layout, k):
    for m in M_VALUES:
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m * k)).to(torch.bfloat16)
        gs = F.global_scale_encode_divisor(x.float().abs().amax())
        codes, sf = F.reference_quantize(x, gs)
        packed, scales = quantize_into(x, gs, layout)
        assert torch.equal(packed, F.pack_e2m1(codes)), (m, k)
        assert torch.equal(unswizzle(scales, layout)[:m, :k // 16], sf), (m, k)


@pytest.mark.parametrize("options", [{"evict": True, "scale_words": True, "persistent": 0},
                                     {"evict": False, "scale_words": True, "persistent": 3},
                                     {"evict": True, "scale_words": False, "persistent": 1}])
@pytest.mark.parametrize("layout", list(ScaleLayout))
def test_quantizer_variants_write_the_same_bytes(options, layout, monkeypatch):
    """Every code-generation variant the GPU benchmark may pick: full unpadded tiles (where the
    word-wide scale stores and cache hints apply) and a padded, masked shape, with fills."""
    monkeypatch.setattr(nvfp4, "QUANT_OPTIONS", options)
    for m, k, data_rows, data_k in ((128, 512, 128, 512), (256, 1024, 256, 1024), (33, 464, 40, 512)):
        x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m + k)) * 3).to(torch.bfloat16)
        gs = F.global_scale_encode_divisor(x.float().abs().amax())
        codes, sf = F.reference_quantize(x, gs)
        packed, scales = quantize_into(x, gs, layout, data_rows=data_rows, data_k=data_k, row_fill=0x7F,
                                       ktail_fill=0x7E, data_fill=0x11)
        assert torch.equal(packed[:m, :k // 2], F.pack_e2m1(codes)), (m, k)
        assert torch.equal(unswizzle(scales, layout)[:m, :k // 16], sf), (m, k)
        assert bool((packed[m:] == 0x11).all()) and bool((packed[:, k // 2:] == 0x11).all())
        if data_rows > m:
            assert bool((unswizzle(scales, layout)[m:data_rows] == 0x7F).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_triton_quantizer_accepts_fp16_and_fp32(dtype):
    x = (torch.randn(9, 48) * 3).to(dtype)
    gs = F.global_scale_encode_divisor(x.float().abs().amax())
    codes, sf = F.reference_quantize(x, gs)
    packed, scales = quantize_into(x, gs, ScaleLayout.SWIZZLED_8x4)
    assert torch.equal(packed, F.pack_e2m1(codes))
    assert torch.equal(unswizzle(scales, ScaleLayout.SWIZZLED_8x4)[:9, :3], sf)


@pytest.mark.parametrize("layout", list(ScaleLayout))
def test_each_padding_region_gets_its_own_fill(layout):
    x = torch.randn(9, 464).to(torch.bfloat16)
    gs = F.global_scale_encode_divisor(x.float().abs().amax())
    packed, scales = quantize_into(x, gs, layout, data_rows=12, data_k=512, row_fill=0x7F, ktail_fill=0x7E,
                                   data_fill=0x55)
    pm = padding_map(layout, OperandRole.ACTIVATION, 9, 29, 12, 32)
    assert (scales[pm.mask(Region.M_PAD)] == 0x7F).all()
    assert (scales[pm.mask(Region.K_TAIL)] == 0x7E).all()
    assert (packed[9:] == 0x55).all() and (packed[:, 232:] == 0x55).all()


def test_leave_keeps_the_buffers_bytes():
    x = torch.randn(3, 48).to(torch.bfloat16)
    gs = F.global_scale_encode_divisor(x.float().abs().amax())
    scales = torch.full((8, 4), 0xEE, dtype=torch.uint8)
    _, scales = quantize_into(x, gs, ScaleLayout.SWIZZLED_8x4, row_fill=LEAVE, ktail_fill=LEAVE, scales=scales)
    pm = padding_map(ScaleLayout.SWIZZLED_8x4, OperandRole.ACTIVATION, 3, 3)
    assert (scales[pm.regions != int(Region.REAL)] == 0xEE).all()
    assert not (scales[pm.mask(Region.REAL)] == 0xEE).all()


@pytest.mark.parametrize("layout", list(ScaleLayout))
def test_dequantize_reads_only_the_real_region(layout):
    x = torch.randn(33, 464).to(torch.bfloat16)
    gs = F.global_scale_encode_divisor(x.float().abs().amax())
    codes, sf = F.reference_quantize(x, gs)
    packed, scales = quantize_into(x, gs, layout, data_rows=40, data_k=512, row_fill=0x7F, ktail_fill=0x7F,
                                   data_fill=0x77)
    deq = dequantize_from(packed, scales, layout, 33, 464)
    assert torch.isfinite(deq).all()
    assert torch.equal(deq.double(), F.reference_dequantize(codes, sf))


def test_pad_bytes_and_its_errors():
    src = torch.arange(6, dtype=torch.uint8).reshape(2, 3)
    out = pad_bytes(src, 3, 5, fill=9)
    assert torch.equal(out[:2, :3], src) and (out[2:] == 9).all() and (out[:, 3:] == 9).all()
    with pytest.raises(ValueError, match="smaller than"):
        pad_bytes(src, 1, 3)
    with pytest.raises(ValueError, match="fill=300"):
        pad_bytes(src, 2, 3, fill=300)


def test_tp_shards_of_a_real_model_and_the_clear_error():
    s = shard(2688, 1856, 4, "row")  # Nemotron-3-Nano MoE down, TP4
    assert (s.n, s.k) == (2688, 464)
    assert shard(1856, 2688, 8, "column").n == 232
    with pytest.raises(ShardError, match=r"k=232 \(k=1856 / tp=8\) is not a multiple of 16"):
        shard(2688, 1856, 8, "row")
    with pytest.raises(ShardError, match="tp=3"):
        shard(2688, 1856, 3, "row")


def test_production_policies_are_data():
    assert (POLICIES["vllm"].n_align, POLICIES["vllm"].k_align) == (32, 32)
    trt = POLICIES["sglang-trtllm"]
    assert (trt.n_align, trt.k_align, trt.small_m_layout) == (128, 64, ScaleLayout.SWIZZLED_8x4)


def test_tp4_464_shard_is_padded_to_the_alignment_and_the_sliced_result_equals_the_reference():
    """A 464-wide TP4 shard through the vLLM policy (K padded to 480, N to 32): the linear layer's
    sliced output equals the unpadded reference within the error bound."""
    from harness.runner import execute
    from harness.trial import Trial

    problem = GemmProblem(m=5, n=40, k=464, origin="Nemotron-3-Nano-30B-A3B moe down 1856 / TP4 (row)")
    ops = build_gemm_operands(problem, a_layout=ScaleLayout.SWIZZLED_128x4, w_layout=ScaleLayout.SWIZZLED_128x4,
                              n_align=32, k_align=32)
    assert ops.a.k_alloc == 480 and ops.w.rows_alloc == 64
    assert (ops.a.packed[:, 232:] == 0).all()  # the padded K is zero data...
    pm = ops.a.padding_map()
    assert (ops.a.scales[pm.mask(Region.K_TAIL)] == 0).all()  # ...with zero scales
    out = execute(Trial("linear-vllm[triton-emu-128x4]", "reference_agreement", problem))
    assert out.status == "pass", out.reason
    assert out.measure["max_err_units"] <= 1.0


def test_problem_validation_names_the_field():
    with pytest.raises(ValueError, match=r"problem.k=40: expected a multiple of 16"):
        GemmProblem(1, 16, 40)
    with pytest.raises(ValueError, match=r"problem.m=-1"):
        GemmProblem(-1, 16, 16)  # m=0 is an empty batch (tests/test_input_layout.py)
    with pytest.raises(ValueError, match=r"poison.m_pad=256"):
        Poison(m_pad=256)
