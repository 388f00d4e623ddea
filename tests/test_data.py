"""Test data: the Triton generator and the pure-torch definition give the same bits, on the CPU
(interpreter) and on a GPU, so a case replays bit for bit anywhere; each distribution has the
property it is named for."""

from __future__ import annotations

import pytest
import torch

from harness import env
from harness.data import DEGENERATE, DISTRIBUTIONS, _degenerate, generate, generate_reference
from harness.kernels.data import generate_fp32


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_triton_generator_matches_the_torch_definition(distribution):
    dev = env.current().torch_device
    for shape, seed in [((7, 48), 0), ((33, 464), 3), ((2, 3, 32), 2 ** 33 + 5)]:
        ref = generate_reference(distribution, shape, seed, torch.float32)
        from harness.data import _MASK32, _stream_constant

        s = seed & _MASK32
        consts = {k: _stream_constant(s, k) for k in (0, 1, 2, 3, 10, 11, 20, 30, 31, 40, 41, 50, 51, 52)}
        if distribution in DEGENERATE:  # the kernel makes "normal"; the degenerate kinds are exact torch steps on it
            got = _degenerate(distribution, generate_fp32("normal", ref.numel(), consts, dev), shape, s)
            got = got.reshape(shape).cpu()
        else:
            got = generate_fp32(distribution, ref.numel(), consts, dev).reshape(shape).cpu()
        assert torch.equal(got.view(torch.int32), ref.view(torch.int32)), (distribution, shape)


def test_generate_is_deterministic_and_device_independent():
    a = generate("heavy_tailed", (16, 64), 5, torch.bfloat16)
    b = generate("heavy_tailed", (16, 64), 5, torch.bfloat16, env.current().torch_device).cpu()
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    assert not torch.equal(a, generate("heavy_tailed", (16, 64), 6, torch.bfloat16))


def test_distributions_have_their_named_property():
    blocks = lambda x: x.float().reshape(-1, 16)  # noqa: E731
    z = blocks(generate("zero_blocks", (64, 256), 1))
    assert 0.2 < float((z.abs().amax(1) == 0).float().mean()) < 0.4
    t = blocks(generate("tiny", (64, 256), 1))
    scale = t.abs().amax(1) / t.abs().max()
    assert float((scale < 2 ** -11).float().mean()) > 0.8  # most blocks far below the peak
    s = blocks(generate("saturating", (64, 256), 1))
    assert (s.abs().amax(1) == 8).all()
    g = generate("on_grid", (64, 256), 1).float()
    mant = g / torch.exp2(torch.floor(torch.log2(g.abs().clamp_min(1e-30))))
    assert ((mant.abs() == 1) | (mant.abs() == 1.5) | (g == 0)).all()  # e2m1 grid times powers of two
    h = generate("heavy_tailed", (64, 256), 1).float()
    assert float(h.abs().max()) > 100 * float(h.abs().median())


def test_bad_distribution_is_a_clear_error():
    with pytest.raises(ValueError, match="distribution='lognormal': expected one of"):
        generate("lognormal", (4, 16), 0)
