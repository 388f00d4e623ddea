"""TransformerEngine's grouped NVFP4 quantize adapters (harness.backends.te_grouped) up to the gate.

TransformerEngine is not installed on the CPU machine (its wheels are CUDA builds), so no test here
runs it.  They check the harness's side of the adapter: the ``split_quantize`` arguments built from the
grouped operands (sections padded with zero rows to each expert's row alignment, zero-token
experts as empty splits), the conversions between TE's per-split layout (compact or 128x4-swizzled
scale buffers padded to 128 rows; columnwise data transposed) and the harness's grouped buffer, each
inverted back to where it started, and the capability gate's skip where TE is absent.  TE-layout
inputs here are built by the harness from its own reference quantizer; they stand for no behaviour of
TE.  ``tests/test_te_grouped_gpu.py`` runs the adapters where TE's own ``is_nvfp4_available`` holds.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from harness import env
from harness.backends import te_grouped as T
from harness.format import global_scale_encode_divisor, pack_e2m1, reference_quantize
from harness.grouped import registry
from harness.grouped.checks import execute
from harness.grouped.pipeline import build_grouped_operands
from harness.grouped.problem import GroupedProblem, GroupedTrial
from harness.grouped.transforms import columnwise_quantize
from harness.layouts import ScaleLayout, swizzle, unswizzle

TE_INSTALLED = importlib.util.find_spec("transformer_engine") is not None
NAMES = ["grouped-te-split-quantize", "grouped-te-split-quantize-rht"]

SPLITS = {
    "zero first": [0, 3, 5, 2],
    "zero middle": [4, 0, 5, 1],
    "zero last": [3, 5, 2, 0],
    "uneven": [1, 6, 3, 2],
}


def _problem(splits, row_align=(16, 64, 128, 16), k=64, **kw):
    return GroupedProblem.from_splits(splits, 2, n=32, k=k, seed=3, row_align=row_align, **kw)


def _ops(splits, **kw):
    return build_grouped_operands(_problem(splits, **kw), device="cpu")


def _reference_outputs(call: T.TeSplitCall, *, swizzled: bool, fill: int, columnwise: bool = False,
                       stale_amax: float = float("nan")) -> list[T.TeSplitOutput]:
    """TE-layout per-split results built from the harness's reference quantizer on the call's padded
    splits (what a correct quantize of those rows is), scale tile padding ``fill``; a zero-row split
    gets the shapes and an unwritten (``stale_amax``) amax."""
    k = call.tensor.shape[1]
    out, off = [], 0
    for r in call.split_sections:
        x = call.tensor[off:off + r]
        off += r
        if r == 0:
            out.append(T.TeSplitOutput(0, k, torch.zeros((0, k // 2), dtype=torch.uint8),
                                       torch.zeros(T.te_scale_shape(0, k, False), dtype=torch.uint8),
                                       torch.tensor([stale_amax]), swizzled=swizzled))
            continue
        amax = x.float().abs().amax().reshape(1)
        codes, sf = reference_quantize(x, global_scale_encode_divisor(amax))
        o = T.TeSplitOutput(r, k, pack_e2m1(codes), T._te_scale_buffer(sf, r, k, swizzled, fill), amax,
                            swizzled=swizzled)
        if columnwise:
            c_codes, c_sf, _ = columnwise_quantize(x, global_scale_encode_divisor(amax))
            o.columnwise_data, o.columnwise_scales = pack_e2m1(c_codes), T._te_scale_buffer(c_sf, k, r, swizzled, fill)
            o.amax_columnwise = amax
        out.append(o)
    return out


# ------------------------------------------------------------------------------------------------
# the gate
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(TE_INSTALLED, reason="transformer_engine is installed here: the gate asks TE itself")
@pytest.mark.parametrize("name", NAMES)
def test_without_transformer_engine_the_adapters_skip_naming_the_package(name):
    b = registry.get(name)
    sup = b.support(env.current())
    assert not sup and "transformer_engine" in sup.reason
    trial = GroupedTrial(name, "grouped_bytes", _problem([2, 0, 3, 1]))
    out = execute(trial, torch.device("cpu"))
    assert out.status == "skip" and out.reason == sup.reason


@pytest.mark.skipif(not TE_INSTALLED, reason="transformer_engine is not installed (the adapters skip with that reason)")
def test_prepare_speaks_the_installed_quantizer_signature():
    b = registry.get("grouped-te-split-quantize-rht")
    params = set(b.parameters())
    assert set(b.prepare(_ops([2, 0, 3, 1])).quantizer_kwargs) <= params


# ------------------------------------------------------------------------------------------------
# the call's arguments
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", list(SPLITS))
def test_prepare_pads_each_section_with_zero_rows_to_its_row_alignment(pattern):
    ops = _ops(SPLITS[pattern])
    call = registry.get("grouped-te-split-quantize").prepare(ops)
    p = ops.problem
    assert call.split_sections == [-(-c // a) * a for c, a in zip(p.splits, p.row_align)]
    assert call.tensor.shape == (sum(call.split_sections), p.k) and call.tensor.is_contiguous()
    assert call.tensor.dtype == ops.hidden.dtype
    off = 0
    for e, sec in enumerate(p.sections()):
        rows = call.tensor[off:off + call.split_sections[e]]
        want = ops.hidden[torch.tensor([t for t, _ in sec], dtype=torch.long)] if sec else rows[:0]
        assert torch.equal(rows[:len(sec)], want)
        assert not rows[len(sec):].any()  # the padding rows are zeros
        off += call.split_sections[e]
    zero = [e for e, c in enumerate(p.splits) if c == 0]
    assert all(call.split_sections[e] == 0 for e in zero) and (bool(zero) == (pattern != "uneven"))


def test_prepare_asks_for_the_declared_recipe():
    plain = registry.get("grouped-te-split-quantize").prepare(_ops([2, 0, 3, 1])).quantizer_kwargs
    rht = registry.get("grouped-te-split-quantize-rht").prepare(_ops([2, 0, 3, 1]))
    assert plain["rowwise"] and not plain["columnwise"] and not plain["with_rht"]
    kw = rht.quantizer_kwargs
    assert kw["rowwise"] and kw["columnwise"] and kw["with_rht"] and kw["with_post_rht_amax"] and rht.optimize_for_gemm
    for k in (plain, kw):  # what the harness cannot reproduce or TE's split quantize refuses: off
        assert not (k["stochastic_rounding"] or k["with_2d_quantization"] or k["with_amax_reduction"]
                    or k["nvfp4_use_4over6"] or k["row_scaled_nvfp4"])


def test_prepare_refuses_static_scales_and_rht_on_non_bf16_input():
    from harness.backends.protocol import Unsupported

    static = _ops([2, 0, 3, 1], input_scales="static")
    for name in NAMES:
        with pytest.raises(Unsupported):
            registry.get(name).prepare(static)
    fp16 = _ops([2, 0, 3, 1], in_dtype="float16")
    assert registry.get("grouped-te-split-quantize").prepare(fp16).tensor.dtype == torch.float16
    with pytest.raises(Unsupported):
        registry.get("grouped-te-split-quantize-rht").prepare(fp16)


# ------------------------------------------------------------------------------------------------
# layouts
# ------------------------------------------------------------------------------------------------
def test_te_swizzled_scales_are_the_harness_128x4_layout():
    """TE's test helper describes its GEMM scale layout as the compact buffer viewed
    [rows/128, 4, 32, kb/4, 4] and permuted (0, 3, 2, 1, 4); that is the harness's 128x4 swizzle."""
    g = torch.Generator().manual_seed(0)
    compact = torch.randint(0, 256, (256, 8), dtype=torch.uint8, generator=g)
    permuted = compact.reshape(2, 4, 32, 2, 4).permute(0, 3, 2, 1, 4).reshape(256, 8)
    assert torch.equal(swizzle(compact, ScaleLayout.SWIZZLED_128x4), permuted)
    assert torch.equal(T._te_scale_buffer(compact, 256, 128, True, 0), permuted)


@pytest.mark.parametrize("rows,k,columnwise,shape", [(5, 48, False, (128, 4)), (130, 256, False, (256, 16)),
                                                     (0, 64, False, (0, 4)), (32, 48, True, (128, 4)),
                                                     (160, 256, True, (256, 12))])
def test_te_scale_shapes(rows, k, columnwise, shape):
    assert T.te_scale_shape(rows, k, columnwise) == shape


@pytest.mark.parametrize("swizzled", [False, True], ids=["compact", "swizzled"])
@pytest.mark.parametrize("pattern", list(SPLITS))
def test_reference_bytes_in_te_layout_convert_to_the_pipelines_grouped_buffer(pattern, swizzled):
    """The conversion puts every padded split's rows and scales where the pipeline's grouped buffer has
    them: a correct quantize in TE's layout gives exactly the reference grouped buffer (zero group row
    padding, zero-token experts occupying nothing), whatever TE's tile padding holds."""
    ops = _ops(SPLITS[pattern])
    b = registry.get("grouped-te-split-quantize")
    call = b.prepare(ops)
    g = b.convert(call, _reference_outputs(call, swizzled=swizzled, fill=0x7F))
    a = ops.a
    assert g.splits == a.splits and g.row_offsets == a.row_offsets and g.sf_row_offsets == a.sf_row_offsets
    assert torch.equal(g.packed, a.packed) and torch.equal(g.scales, a.scales)
    assert torch.equal(g.global_scales, a.global_scales)  # TE's amax -> 448*6/amax; 1.0 for a zero-token expert
    for e in ops.problem.zero_token_experts:
        assert g.row_offsets[e + 1] == g.row_offsets[e] and g.sf_row_offsets[e + 1] == g.sf_row_offsets[e]


def test_a_corrupted_scale_byte_lands_in_its_own_expert():
    ops = _ops(SPLITS["zero middle"])
    b = registry.get("grouped-te-split-quantize")
    call = b.prepare(ops)
    outs = _reference_outputs(call, swizzled=False, fill=0)
    outs[2].rowwise_scales[1, 2] ^= 0x01  # expert 2, row 1, k-block 2 (compact)
    g = b.convert(call, outs)
    diff = (g.scales != ops.a.scales).nonzero()
    assert len(diff) == 1
    s0, s1 = g.sf_row_offsets[2], g.sf_row_offsets[3]
    assert s0 <= int(diff[0, 0]) < s1
    got = unswizzle(g.scales[s0:s1], ScaleLayout.SWIZZLED_128x4)
    want = unswizzle(ops.a.scales[s0:s1], ScaleLayout.SWIZZLED_128x4)
    assert int(got[1, 2]) == int(want[1, 2]) ^ 0x01


def test_unwritten_amax_of_a_zero_token_split_is_not_read():
    ops = _ops(SPLITS["zero first"])
    b = registry.get("grouped-te-split-quantize")
    call = b.prepare(ops)
    for stale in (float("nan"), 0.0, 1e30):
        outs = _reference_outputs(call, swizzled=False, fill=0, stale_amax=stale)
        assert T.global_scales_from_amax(outs, call.splits)[0] == 1.0


@pytest.mark.parametrize("swizzled", [False, True], ids=["compact", "swizzled"])
@pytest.mark.parametrize("pattern", list(SPLITS))
def test_rowwise_round_trips(pattern, swizzled):
    """harness -> TE -> harness is the identity on the grouped buffer (padding included); TE -> harness
    -> TE is the identity on every byte TE defines, and on the tile padding when it holds the fill."""
    ops = _ops(SPLITS[pattern])
    a = ops.a
    te = T.grouped_to_rowwise(a, swizzled=swizzled)
    back = T.rowwise_to_grouped(te, a.splits, ops.problem.row_align, a.k, a.global_scales)
    assert torch.equal(back.packed, a.packed) and torch.equal(back.scales, a.scales)
    assert back.row_offsets == a.row_offsets and back.sf_row_offsets == a.sf_row_offsets

    g = torch.Generator().manual_seed(11)
    rnd = []
    for o in te:  # random bytes everywhere TE defines them, powers-of-two amax (exact through 448*6/amax)
        kb = a.k // 16
        real = torch.randint(0, 256, (o.rows, kb), dtype=torch.uint8, generator=g)
        rnd.append(T.TeSplitOutput(o.rows, a.k, torch.randint(0, 256, o.rowwise_data.shape, dtype=torch.uint8, generator=g),
                                   T._te_scale_buffer(real, o.rows, a.k, swizzled, 0xA5),
                                   torch.tensor([2.0 ** int(torch.randint(-8, 8, (1,), generator=g))]), swizzled=swizzled))
    gs = T.global_scales_from_amax(rnd, tuple(o.rows for o in rnd))
    grouped = T.rowwise_to_grouped(rnd, a.splits, ops.problem.row_align, a.k, gs, fill=0xA5)
    again = T.grouped_to_rowwise(grouped, swizzled=swizzled, fill=0xA5)
    for o, r in zip(rnd, again):
        assert torch.equal(o.rowwise_data, r.rowwise_data) and torch.equal(o.rowwise_scales, r.rowwise_scales)
        if o.rows:
            assert torch.equal(o.amax_rowwise, r.amax_rowwise)


def test_rowwise_conversion_refuses_shapes_that_are_not_the_padded_split():
    ops = _ops(SPLITS["uneven"])
    b = registry.get("grouped-te-split-quantize")
    call = b.prepare(ops)
    outs = _reference_outputs(call, swizzled=False, fill=0)
    outs[1].rowwise_data = outs[1].rowwise_data[:-1]
    with pytest.raises(ValueError, match="split 1"):
        b.convert(call, outs)


@pytest.mark.parametrize("swizzled", [False, True], ids=["compact", "swizzled"])
@pytest.mark.parametrize("pattern", list(SPLITS))
def test_columnwise_round_trips_and_matches_the_harness_columnwise_cast(pattern, swizzled):
    """TE's columnwise output is the transpose (data [K, rows/2], scales [round_up(K, 128),
    round_up(rows/16, 4)]); converted it is the harness's columnwise cast of the padded split, and
    the conversion inverts."""
    ops = _ops(SPLITS[pattern])
    call = registry.get("grouped-te-split-quantize-rht").prepare(ops)
    outs = _reference_outputs(call, swizzled=swizzled, fill=0x5A, columnwise=True)
    gs = T.global_scales_from_amax(outs, tuple(call.split_sections), columnwise=True)
    cols = T.columnwise_to_harness(outs, gs)
    off = 0
    for e, (c, r) in enumerate(zip(cols, call.split_sections)):
        if r == 0:
            assert c is None
            continue
        codes, sf, rows_pad = columnwise_quantize(call.tensor[off:off + r], gs[e])
        off += r
        assert rows_pad == r and torch.equal(c["codes"], codes) and torch.equal(c["scales"], sf)
    back = T.harness_to_columnwise(cols, call.tensor.shape[1], swizzled=swizzled, fill=0x5A)
    for o, bk in zip(outs, back):
        if o.rows == 0:
            assert bk is None
            continue
        assert torch.equal(bk[0], o.columnwise_data) and torch.equal(bk[1], o.columnwise_scales)


def test_columnwise_conversion_needs_splits_of_whole_16_row_blocks():
    o = T.TeSplitOutput(8, 32, columnwise_data=torch.zeros((32, 4), dtype=torch.uint8),
                        columnwise_scales=torch.zeros(T.te_scale_shape(8, 32, True), dtype=torch.uint8),
                        amax_columnwise=torch.ones(1))
    with pytest.raises(ValueError, match="multiple of 16"):
        T.columnwise_to_harness([o], torch.ones(1))


# ------------------------------------------------------------------------------------------------
# the RHT columnwise round-trip bound the GPU test applies to TE's casts
# ------------------------------------------------------------------------------------------------
def _rht_cast(x: torch.Tensor, m: torch.Tensor) -> dict:
    """A columnwise RHT cast as TE's kernels make it without fast math: the transform of each
    16-token block in fp32, rounded to bf16, quantized with the global scale of its amax."""
    k, rows = x.shape[1], x.shape[0]
    y = (x.T.contiguous().float().reshape(k, rows // 16, 16) @ m.float()).reshape(k, rows).to(torch.bfloat16)
    gs = global_scale_encode_divisor(y.float().abs().amax())
    codes, sf = reference_quantize(y, gs)
    return {"codes": codes, "scales": sf, "rows_pad": rows, "global_scale": float(gs)}


@pytest.mark.parametrize("distribution", ["normal", "heavy_tailed", "zero_blocks", "on_grid"])
def test_rht_round_trip_bound_admits_a_correct_cast_and_catches_a_transposed_transform(distribution):
    from harness import data as data_mod
    from harness.grouped.transforms import rht_matrix

    m = rht_matrix(7)  # diag(s) H / 4 with a sign mask: not symmetric
    assert not torch.equal(m, m.T)
    caught = 0
    for seed in range(4):
        x = data_mod.generate(distribution, (48, 80), seed, torch.bfloat16)
        err, bound = T.rht_columnwise_round_trip(x.T, _rht_cast(x, m), m)
        assert bool((err <= bound).all()), float((err / bound).max())
        err, bound = T.rht_columnwise_round_trip(x.T, _rht_cast(x, m.T), m)
        caught += bool((err > bound).any())
    assert caught == 4
