"""Columnwise casts, the 16-point random Hadamard transform and stochastic rounding
(harness.grouped.transforms): exact properties, derived bounds and statistical tests with stated
false-alarm rates, each shown able to fail on a planted error."""

from __future__ import annotations

import math

import pytest
import torch

from harness import data as data_mod
from harness.format import (
    block_scale_and_inverse,
    e2m1_decode,
    global_scale_encode_divisor,
    reference_dequantize,
    reference_quantize,
    unpack_e2m1,
)
from harness.grouped import transforms as T
from harness.kernels.nvfp4 import quantize_into
from harness.layouts import ScaleLayout

ALPHA = 1e-9
"""False-alarm rate per statistical check (Hoeffding bounds; union over the columns checked)."""


@pytest.mark.parametrize("seed", [None, 0, 7])
def test_rht_matrix_is_exactly_orthonormal(seed):
    m = T.rht_matrix(seed)
    assert torch.equal(m @ m.T, torch.eye(16, dtype=torch.float64))
    assert set(m.abs().unique().tolist()) == {0.25}
    if seed is not None:
        s = T.sign_mask(seed)
        assert (s == 1).any() and (s == -1).any(), "a random mask has both signs"


@pytest.mark.parametrize("seed", [None, 3])
@pytest.mark.parametrize("dist", ["normal", "heavy_tailed", "zero_blocks", "saturating"])
def test_rht_round_trip_within_derived_bound(seed, dist):
    x = data_mod.generate(dist, (24, 64), 11, torch.bfloat16)
    y = T.rht(x, seed)
    gs = global_scale_encode_divisor(y.abs().amax()).reshape(1)
    packed, sf = quantize_into(y, gs, ScaleLayout.LINEAR)          # the Triton pipeline's quantizer
    deq = reference_dequantize(unpack_e2m1(packed), sf, gs)        # code * sf / gs, exact in fp64
    back = T.rht_inverse(deq.float(), seed)
    bound = T.rht_round_trip_bound(x, y, sf, gs, deq)
    err = (back.double() - x.double()).abs()
    assert bool((err <= bound).all()), float((err / bound).max())
    # not vacuous: far below the block magnitudes it bounds
    rms = x.double().reshape(24, 4, 16).pow(2).mean(-1).sqrt().repeat_interleave(16, 1)
    assert float((bound / rms.clamp_min(1e-30)).median()) < 1.0
    if seed is not None:  # the check fails when the inverse forgets the sign mask
        wrong = (T.rht_inverse(deq.float(), None).double() - x.double()).abs()
        assert not bool((wrong <= bound).all())


def _sr_rows(v: torch.Tensor, rows: int) -> torch.Tensor:
    return v.reshape(1, -1).expand(rows, -1).contiguous()


def test_stochastic_rounding_is_unbiased_and_the_test_can_fail():
    rows = 4096
    v = data_mod.generate("normal", (1, 64), 5, torch.float32)
    x = _sr_rows(v, rows)
    gs = global_scale_encode_divisor(x.abs().amax()).reshape(1)
    codes, sf = T.quantize_sr(x, gs, seed=1234)
    # every row has the same block scales, so each column's samples share one element scale s
    s = reference_dequantize(torch.full_like(codes, 2), sf).double()[0]  # code 2 is 1.0: s per column
    _, inv = block_scale_and_inverse(x[:1].float().reshape(1, 4, 16).abs().amax(-1), gs)
    scaled = (x[:1].float().reshape(1, 4, 16) * inv.unsqueeze(-1)).reshape(64).double()
    expected = scaled.abs().clamp(max=6.0) * scaled.sign() * s
    width = 2.0 * s  # e2m1's largest spacing, times the element scale
    t = width * math.sqrt(math.log(2 / ALPHA) / (2 * rows)) + width * 2.0 ** -24
    mean_sr = (e2m1_decode(codes).double() * s).mean(0)
    assert bool(((mean_sr - expected).abs() <= t).all()), float(((mean_sr - expected).abs() / t).max())
    # power: round to nearest (deterministic) is biased off the grid and fails the same test
    rne, _ = reference_quantize(x, gs)
    mean_rne = (e2m1_decode(rne).double() * s).mean(0)
    assert bool(((mean_rne - expected).abs() > t).any())
    # deterministic under the recorded seed, different under another
    again, sf2 = T.quantize_sr(x, gs, seed=1234)
    assert torch.equal(again, codes) and torch.equal(sf2, sf)
    assert not torch.equal(T.quantize_sr(x, gs, seed=1235)[0], codes)


def _col_uniforms_at_elements(rows: int, k: int, seed: int, stream: int) -> torch.Tensor:
    """The uniform each element (i, j) of x [rows, k] receives in the columnwise cast (x^T)."""
    return T.uniforms((k, rows), seed, stream).T


def test_rowwise_and_columnwise_streams_are_independent():
    rows, k, seed = 256, 128, 99
    u_row = T.uniforms((rows, k), seed, T.ROWWISE_STREAM)
    u_col = _col_uniforms_at_elements(rows, k, seed, T.COLUMNWISE_STREAM)
    n = rows * k
    t = math.sqrt(math.log(2 / ALPHA) / (2 * n))  # Hoeffding, products in [0, 1)
    assert abs(float((u_row.double() * u_col.double()).mean()) - 0.25) <= t
    for u in (u_row, u_col):
        assert abs(float(u.double().mean()) - 0.5) <= t
    # power: one stream shared by both casts in the same element order is fully correlated (E[u^2] = 1/3)
    shared = T.uniforms((rows, k), seed, T.ROWWISE_STREAM)
    assert abs(float((u_row.double() * shared.double()).mean()) - 0.25) > t


def test_columnwise_cast_equals_reference_of_the_transpose_and_pads_tokens():
    x = data_mod.generate("normal", (21, 32), 2, torch.bfloat16)
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    codes, sf, rows_pad = T.columnwise_quantize(x, gs)
    assert rows_pad == 32 and codes.shape == (32, 32) and sf.shape == (32, 2)
    want, want_sf = reference_quantize(torch.cat([x.T, torch.zeros(32, 11, dtype=x.dtype)], 1), gs)
    assert torch.equal(codes, want) and torch.equal(sf, want_sf)
    assert bool((codes[:, 21:] == 0).all()), "padding tokens quantize to zero"


@pytest.mark.parametrize("rht_seed", [False, None, 4])
def test_grouped_columnwise_zero_token_experts_produce_nothing(rht_seed):
    splits = (0, 5, 0, 3, 0)
    x = data_mod.generate("normal", (8, 32), 3, torch.bfloat16)
    gs = torch.tensor([1.0, 300.0, 1.0, 200.0, 1.0])
    out = T.grouped_columnwise(x, splits, gs, seed=7, rht_seed=rht_seed)
    assert [o is None for o in out] == [True, False, True, False, True]
    assert out[1]["codes"].shape == (32, 16) and out[3]["rows_pad"] == 16
    again = T.grouped_columnwise(x, splits, gs, seed=7, rht_seed=rht_seed)
    assert all(a is None or torch.equal(a["codes"], b["codes"]) for a, b in zip(out, again))
