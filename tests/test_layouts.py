"""Scale layouts: offsets, swizzle, padding maps; torchao's to_blocked as the 128x4 oracle; the
empirical padding map (quantize twice with two fillers) against the analytic one."""

from __future__ import annotations

import warnings

import pytest
import torch

from harness.optional import import_optional

from harness.layouts import (
    OperandRole,
    Region,
    ScaleLayout,
    offset_grid,
    padded_shape,
    padding_map,
    swizzle,
    unswizzle,
)
from harness.pipeline import empirical_padding_map

warnings.filterwarnings("ignore")
SHAPES = [(1, 1), (7, 3), (8, 4), (9, 29), (33, 30), (129, 31), (128, 8), (200, 5)]


@pytest.mark.parametrize("layout", list(ScaleLayout))
@pytest.mark.parametrize("rows, kb", SHAPES)
def test_offsets_are_a_bijection(layout, rows, kb):
    pr, pk = padded_shape(layout, rows, kb)
    off = offset_grid(layout, pr, pk).reshape(-1)
    assert torch.equal(off.sort().values, torch.arange(pr * pk))


@pytest.mark.parametrize("rows, kb", SHAPES)
def test_128x4_swizzle_equals_torchao_to_blocked(rows, kb):
    to_blocked = import_optional("torchao.prototype.mx_formats.utils", "the 128x4 oracle").to_blocked

    g = torch.Generator().manual_seed(rows * 100 + kb)
    lin = torch.randint(1, 255, (rows, kb), generator=g, dtype=torch.uint8)
    ours = swizzle(lin, ScaleLayout.SWIZZLED_128x4, fill=0).reshape(-1)
    theirs = to_blocked(lin.view(torch.float8_e4m3fn)).view(torch.uint8).reshape(-1)
    assert torch.equal(ours, theirs)


def test_8x4_offsets_follow_the_trtllm_formula():
    # row 9 (tile 1, row 1 in tile), k-block 5 (group 1, column 1) with nK = 2 groups
    assert int(offset_grid(ScaleLayout.SWIZZLED_8x4, 16, 8)[9, 5]) == 1 * 2 * 32 + 1 * 32 + 1 * 4 + 1


@pytest.mark.parametrize("layout", list(ScaleLayout))
@pytest.mark.parametrize("rows, kb", SHAPES)
def test_unswizzle_inverts_swizzle(layout, rows, kb):
    lin = torch.randint(0, 256, (rows, kb), dtype=torch.int32).to(torch.uint8)
    buf = swizzle(lin, layout, fill=0xAB)
    log = unswizzle(buf, layout)
    assert torch.equal(log[:rows, :kb], lin)
    assert (log[rows:] == 0xAB).all() and (log[:, kb:] == 0xAB).all()


@pytest.mark.parametrize("layout", list(ScaleLayout))
@pytest.mark.parametrize("m, k, data_rows, data_k", [(1, 16, 1, 16), (7, 48, 7, 64), (9, 464, 9, 480),
                                                    (33, 496, 40, 512), (129, 48, 160, 48), (8, 64, 8, 64)])
def test_analytic_padding_map_equals_empirical(layout, m, k, data_rows, data_k):
    x = torch.randn(m, k).to(torch.bfloat16)
    emp = empirical_padding_map(x, layout, data_rows=data_rows, data_k=data_k)
    pm = padding_map(layout, OperandRole.ACTIVATION, m, k // 16, data_rows, data_k // 16)
    assert torch.equal(emp, pm.regions != int(Region.REAL))
    pr, pk = padded_shape(layout, data_rows, data_k // 16)
    assert pm.count(Region.M_PAD) == (pr - m) * pk
    assert pm.count(Region.K_TAIL) == m * (pk - k // 16)
    assert pm.count(Region.REAL) == m * (k // 16)


def test_padding_map_names_weight_rows_as_n_padding():
    pm = padding_map(ScaleLayout.SWIZZLED_128x4, OperandRole.WEIGHT, 40, 3)
    assert pm.count(Region.N_PAD) == 88 * 4 and pm.count(Region.M_PAD) == 0


def test_unknown_layout_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scale layout '16x4'"):
        ScaleLayout.parse("16x4")


@pytest.mark.parametrize("layout", list(ScaleLayout))
def test_real_scales_read_only_the_real_region(layout):
    """real_scales equals the unswizzled real region, and reads no padding byte: a buffer whose
    padding holds NaN bytes gives the same result, and only real offsets are indexed."""
    from harness.layouts import padded_shape, real_scales, swizzle, unswizzle

    rows, kbs = 9, 5
    linear = torch.randint(0, 0x7E, (rows, kbs), dtype=torch.uint8)
    buf = swizzle(linear, layout, fill=0x7F)
    assert buf.shape == padded_shape(layout, rows, kbs)
    got = real_scales(buf, layout, rows, kbs)
    assert torch.equal(got, linear) and torch.equal(got, unswizzle(buf, layout)[:rows, :kbs])
    seen = torch.zeros(buf.numel(), dtype=torch.bool)
    probe = torch.arange(buf.numel()).reshape(buf.shape)
    seen[real_scales(probe, layout, rows, kbs).reshape(-1)] = True
    assert int(seen.sum()) == rows * kbs  # exactly the real bytes' offsets
