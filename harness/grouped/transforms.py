r"""Transforms of TransformerEngine's grouped NVFP4 recipe, as exact references: columnwise casts,
the 16-point random Hadamard transform (RHT) and stochastic rounding with a recorded seed.

* **Columnwise cast.**  A weight-gradient GEMM needs the activations quantized along tokens: the
  section ``X_e [c_e, K]`` is transposed and quantized in blocks of 16 tokens
  (:func:`columnwise_quantize`); a section whose token count is not a multiple of 16 is padded with
  zero rows (its *column padding*, scale byte 0).
* **RHT.**  Before the columnwise cast, TE multiplies every 16-element block by
  ``M = diag(s) H_16 / 4`` (``H_16`` the Sylvester Hadamard matrix, entries +-1; ``s`` a random sign
  mask from a seed, or all +1 without the mask).  ``M`` is orthonormal and its entries (+-1/4) are
  exact, so ``M M^T = I`` exactly; :func:`rht_round_trip_bound` bounds ``|rht^-1(deq(q(rht(x)))) - x|``.
* **Stochastic rounding.**  e2m1 codes round up with probability ``(|v| - lo) / (hi - lo)`` between
  the grid neighbours ``lo <= |v| < hi`` (:func:`e2m1_encode_sr`), from a counter-based uniform of
  :mod:`harness.data` keyed by (seed, stream, element index): bit-reproducible under the recorded
  seed on every device.  The rowwise and the columnwise casts draw from different streams
  (:data:`ROWWISE_STREAM`, :data:`COLUMNWISE_STREAM`); TE requires them independent.
"""

from __future__ import annotations

import torch

from harness.format import (
    BLOCK_SIZE,
    E2M1_MAGNITUDES,
    block_scale_and_inverse,
    e4m3_decode,
    reference_dequantize,
    reference_quantize,
)
from harness.layouts import round_up

ROWWISE_STREAM = 0x5352_0001
COLUMNWISE_STREAM = 0x5352_0002
SIGN_STREAM = 0x5248_5401
U = 2.0 ** -23


def hadamard16() -> torch.Tensor:
    """The Sylvester Hadamard matrix H_16 (fp64, entries +-1)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < 16:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def sign_mask(seed: int | None) -> torch.Tensor:
    """fp64 [16] of +-1 from ``seed`` (all +1 for None: the transform without the random mask)."""
    if seed is None:
        return torch.ones(16, dtype=torch.float64)
    u = _uniform(torch.arange(16, dtype=torch.int64), int(seed), SIGN_STREAM)
    return torch.where(u < 0.5, -1.0, 1.0).double()


def rht_matrix(seed: int | None) -> torch.Tensor:
    """M = diag(s) H_16 / 4 (fp64 [16, 16], orthonormal, entries +-1/4)."""
    return sign_mask(seed)[:, None] * hadamard16() / 4


def rht(x: torch.Tensor, seed: int | None) -> torch.Tensor:
    """Every 16-element block of the rows of ``x`` [rows, K] times M, in fp32: [rows, K] fp32."""
    rows, k = x.shape
    m = rht_matrix(seed).float().to(x.device)
    return (x.float().reshape(rows, k // 16, 16) @ m).reshape(rows, k)


def rht_inverse(y: torch.Tensor, seed: int | None) -> torch.Tensor:
    """The inverse transform (times M^T), in fp32."""
    rows, k = y.shape
    m = rht_matrix(seed).float().to(y.device)
    return (y.float().reshape(rows, k // 16, 16) @ m.T).reshape(rows, k)


def quantization_error_bound(sf: torch.Tensor, gs: torch.Tensor | float, values: torch.Tensor) -> torch.Tensor:
    r"""fp64 bound, per element of ``values`` [rows, K] (the fp32 input of the quantizer), on
    ``|deq - value|`` with ``deq = code * sf / gs``, for round to nearest.

    With element scale :math:`s = sf/gs` and scaled value :math:`a = |v|/s`: the block scale rounds
    to nearest e4m3 (3 mantissa bits), so :math:`a \le 6 (1 + 2^{-4})`; round to nearest in e2m1
    errs by at most half the grid spacing around :math:`a`: :math:`s/4` for :math:`a \le 2`,
    :math:`s/2` for :math:`a \le 4`, :math:`s` above (spacing 2; saturating at 6 errs by at most
    :math:`0.375 s`).  The kernels' fp32 scaled value differs from :math:`a` by a relative
    :math:`\le 3u`, so the interval is chosen from :math:`a (1 + 2^{-20})` and the error grows by
    :math:`2^{-20} |v|`.  A zero block scale (a block below e4m3's range) quantizes the block to 0:
    the error is :math:`|v|`.
    """
    s = e4m3_decode(sf).double() / float(torch.as_tensor(gs, dtype=torch.float32))
    s = s.repeat_interleave(BLOCK_SIZE, dim=1)
    v = values.double().abs()
    a = v / torch.where(s == 0, torch.ones_like(s), s) * (1 + 2.0 ** -20)
    half = torch.where(a <= 2, 0.25, torch.where(a <= 4, 0.5, 1.0)).double()
    return torch.where(s == 0, v, half * s + 2.0 ** -20 * v)


def rht_round_trip_bound(x: torch.Tensor, y: torch.Tensor, sf: torch.Tensor, gs, deq: torch.Tensor) -> torch.Tensor:
    r"""fp64 bound [rows, K] on ``|rht_inverse(deq) - x|`` (elementwise), for ``y = rht(x)``
    (fp32), ``sf`` its block scales with global scale ``gs`` and ``deq`` its dequantized values.

    Per 16-block, with :math:`z = Mx` exact, :math:`\hat z` the fp32 transform and
    :math:`\delta = deq - \hat z` (bounded by :func:`quantization_error_bound`):
    :math:`\hat x = fl(M^T deq)` and :math:`M^T z = x`, so
    :math:`|\hat x_j - x_j| \le \frac14\sum_i |\delta_i| + \frac14\sum_i |\hat z_i - z_i| + \gamma_{16}\frac14\sum_i |deq_i|`,
    with :math:`|\hat z_i - z_i| \le \gamma_{16} \frac14 \sum_j |x_j|` (16 fp32 additions of exact
    products by 1/4; Higham eq. 4.4, :math:`u = 2^{-23}`).
    """
    rows, k = x.shape
    g16 = 16 * U / (1 - 16 * U)
    d = quantization_error_bound(sf, gs, y).reshape(rows, k // 16, 16).sum(-1) / 4
    fwd = 16 * g16 * x.double().abs().reshape(rows, k // 16, 16).sum(-1) / 16
    inv = g16 * deq.double().abs().reshape(rows, k // 16, 16).sum(-1) / 4
    per_block = (d + fwd + inv) * (1 + 2.0 ** -30)
    return per_block.repeat_interleave(16, dim=1)


_M32 = 0xFFFFFFFF


def _uniform(idx: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """Counter-based uniforms in [0, 1) on a 2^-24 grid: a 32-bit integer hash (the lowbias32
    finalizer) of (seed, stream, idx), computed in int64 keeping the low 32 bits, so every device
    gives the same bits."""
    key = ((int(seed) & _M32) * 0x9E3779B1 + (int(stream) & _M32) * 0x85EBCA77) & _M32
    x = (idx * 0x9E3779B1 + key) & _M32
    for mul, shift in ((0x7FEB352D, 15), (0x846CA68B, 16), (0x2C1B3C6D, 16)):
        x = x ^ (x >> 16)
        x = (x * mul) & _M32
        x = x ^ (x >> shift)
    return (x >> 8).to(torch.float32) * (2.0 ** -24)


def uniforms(shape: tuple[int, int], seed: int, stream: int, device="cpu") -> torch.Tensor:
    """fp32 uniforms in [0, 1) on a 2^-24 grid, keyed by (seed, stream, flat element index)."""
    idx = torch.arange(shape[0] * shape[1], dtype=torch.int64, device=device)
    return _uniform(idx, seed, stream).reshape(shape)


_GRID = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float64)


def e2m1_encode_sr(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Stochastically rounded e2m1 codes (uint8, sign in bit 3) of scaled values ``v`` (fp32) with
    uniforms ``u`` in [0, 1): |v| >= 6 saturates to 6; otherwise the code of the grid point above
    when ``u < (|v| - lo) / (hi - lo)``, else the one below.  Unbiased: E[e2m1(code)] = v up to the
    2^-24 grid of ``u``."""
    a = v.double().abs().clamp(max=6.0)
    grid = _GRID.to(v.device)
    lo_code = (torch.searchsorted(grid, a, right=True) - 1).clamp(0, 7)
    hi_code = (lo_code + 1).clamp(max=7)
    lo, hi = grid[lo_code], grid[hi_code]
    p = torch.where(hi > lo, (a - lo) / torch.where(hi > lo, hi - lo, 1.0), torch.zeros_like(a))
    code = torch.where(u.double() < p, hi_code, lo_code)
    sign = (torch.signbit(v) & (code != 0)).to(torch.int64) << 3
    return (code | sign).to(torch.uint8)


def quantize_sr(x: torch.Tensor, gs: torch.Tensor | float, seed: int, stream: int = ROWWISE_STREAM
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rowwise NVFP4 quantization of x [rows, K] with stochastic rounding of the e2m1 codes (block
    scales round to nearest as in :func:`harness.format.reference_quantize`).  Returns (codes
    [rows, K] uint8, scale bytes [rows, K/16] linear)."""
    rows, k = x.shape
    xf = x.float().reshape(rows, k // 16, 16)
    gs_t = torch.as_tensor(gs, dtype=torch.float32, device=x.device)
    sf, inv = block_scale_and_inverse(xf.abs().amax(-1), gs_t)
    u = uniforms((rows, k), seed, stream, x.device)
    return e2m1_encode_sr((xf * inv.unsqueeze(-1)).reshape(rows, k), u), sf


def columnwise_quantize(x: torch.Tensor, gs: torch.Tensor | float, *, seed: int | None = None,
                        stream: int = COLUMNWISE_STREAM) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The columnwise (transposed) cast of x [rows, K]: rows padded with zeros to a multiple of 16,
    then ``x^T`` [K, rows_pad] quantized rowwise (round to nearest, or stochastic with ``seed``).
    Returns (codes [K, rows_pad], scale bytes [K, rows_pad/16], rows_pad)."""
    rows, k = x.shape
    rows_pad = round_up(rows, 16)
    xt = torch.zeros((k, rows_pad), dtype=x.dtype, device=x.device)
    xt[:, :rows] = x.T
    if seed is None:
        codes, sf = reference_quantize(xt, gs)
    else:
        codes, sf = quantize_sr(xt, gs, seed, stream)
    return codes, sf, rows_pad


def grouped_columnwise(x_sorted: torch.Tensor, splits: tuple[int, ...], global_scales: torch.Tensor, *,
                       seed: int | None = None, rht_seed: int | None | bool = False) -> list[dict]:
    """Per expert, the columnwise cast of its section (after the RHT along tokens when ``rht_seed``
    is not False; None: the transform without the sign mask): dicts with codes, scales, rows_pad;
    None for a zero-token expert (it produces nothing)."""
    out: list[dict] = []
    src = 0
    for e, c in enumerate(splits):
        if c == 0:
            out.append(None)  # type: ignore[arg-type]
            continue
        sec = x_sorted[src:src + c]
        src += c
        if rht_seed is not False:
            pad = torch.zeros((round_up(c, 16), sec.shape[1]), dtype=torch.float32, device=sec.device)
            pad[:c] = sec.float()
            sec = rht(pad.T.contiguous(), rht_seed).T.contiguous()  # blocks of 16 tokens
        codes, sf, rows_pad = columnwise_quantize(sec, global_scales[e], seed=seed)
        out.append({"codes": codes, "scales": sf, "rows_pad": rows_pad,
                    "dequantized": reference_dequantize(codes, sf)})
    return out
