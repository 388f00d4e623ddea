r"""An exact GEMM reference for NVFP4 operands on integer tensor cores (int8 x int8 -> int32).

What it computes.  For fp32/fp64 operands ``a`` [m, K] and ``w`` [n, K] whose nonzero elements have
at most ``s`` significant bits, the exact sums :math:`S_{ij} = \sum_k a_{ik} w_{jk}` and
:math:`P_{ij} = \sum_k |a_{ik} w_{jk}|`, each rounded *once* to fp64 (round to nearest), i.e. the
same quantities as the fp64 GEMM of :func:`harness.oracle.reference_from_dequantized` without that
GEMM's summation error.  Dequantized NVFP4 values ``e2m1 * e4m3`` have ``s = 6`` (e2m1 has 2
significant bits, an e4m3 scale at most 4); bf16 dense activations (W4A16) have ``s = 8``, fp16 ones
``s = 11``.  The sources of these widths: OCP Microscaling Formats (MX) v1.0, section 5.3 (FP4 E2M1),
and OCP 8-bit Floating Point (OFP8), table 1 (E4M3).

Construction (proof of exactness).

1. Integer rows.  Write each nonzero element as :math:`x = f\,2^{e}` with :math:`f \in [1/2, 1)`
   (``frexp``).  With at most ``s`` significant bits, :math:`f 2^{s}` is an integer, so
   :math:`x = I_x 2^{q_x}` with :math:`q_x = e - s`.  This is checked element by element
   (:func:`integer_rows` returns ``None`` when an element has more bits, and the caller falls back
   to the fp64 GEMM: the method never rounds silently).  With :math:`q_i = \min_k q_{x_{ik}}` over a
   row's nonzeros, :math:`R_{ik} = x_{ik} 2^{-q_i}` is an exact integer (a power-of-two scaling of
   an fp64 value is exact while no overflow or underflow occurs; exponents here stay within
   [-300, 300]), with :math:`|R_{ik}| < 2^{B}`, :math:`B = \max_i (\max_k e_{ik} - q_i)`.
2. Digits.  :math:`|R| = \sum_{d<D} r_d 2^{7d}` with :math:`0 \le r_d \le 127` and
   :math:`D = \lceil B/7 \rceil`; the signed digits :math:`\mathrm{sign}(R) r_d` are int8.  Then
   :math:`S_{ij} 2^{-q_i - q_j} = \sum_{d,l} 2^{7(d+l)} G_{dl}` with the integer GEMMs
   :math:`G_{dl} = R^{(d)}_a (R^{(l)}_w)^T`, and the same with :math:`|r_d|` gives ``P``.
3. No overflow.  Each digit product is at most :math:`127^2 < 2^{14}`, so :math:`|G_{dl}| \le K\,2^{14}`
   fits int32 for :math:`K \le 2^{17}` (longer K is cut into chunks of :math:`2^{17}`); the
   int64 accumulation of :math:`2^{7(d+l)} G_{dl}` is bounded by :math:`K\,2^{B_a + B_w}`, below
   :math:`2^{63}` when :math:`B_a + B_w + \lceil\log_2 K\rceil \le 62`.  Integer arithmetic is
   exact, so the int64 result is exactly :math:`S_{ij} 2^{-q_i-q_j}`.  Wider operands (e.g. values
   spread over the whole e4m3 range within a row, B up to 27) keep one exact int64 sum per digit
   diagonal :math:`t = d + l` and add the :math:`T = D_a + D_w - 1` diagonals in fp64: each is
   exact there (:math:`|\cdot| < 2^{53}`), and the fp64 sum of T terms errs by at most
   :math:`\gamma_T P` (:func:`diagonal_error`; T <= 7 in practice, so :math:`\le 7 \cdot 2^{-53} P`).
4. One rounding.  The int64 -> fp64 conversion rounds once (relative error :math:`\le 2^{-53}`), and
   the scaling by :math:`2^{q_i + q_j}` is exact.  ``P`` is then multiplied by :math:`1 + 2^{-51}`
   (and by :math:`1 + 2\gamma_T` on the diagonal path), which outweighs its roundings (at most
   three of :math:`2^{-53}`, and :math:`\gamma_T`), so it is an upper bound (the error bound needs one).

Error left.  ``value`` is :math:`\alpha \cdot \mathrm{fl}_{64}(S)`: at most :math:`2^{-53}|S|` from
the exact sum (:math:`\gamma_T P` on the diagonal path), then the fp64 multiply by alpha (as in the fp64 GEMM reference).  The fp64 GEMM
reference is within :math:`\gamma^{(64)}_K P` of the exact sum (Higham, eq. 3.5), so the two agree
within :math:`(\gamma^{(64)}_K + 2^{-53}) P` (tests/test_exact_reference.py checks this on many
shapes, and checks the integer method against ``math.fsum`` bit for bit).

Cost.  :math:`2 D_a D_w` int8 GEMMs (value and magnitude) instead of one fp64 and one fp32 GEMM:
for typical NVFP4 rows :math:`D = 2` (B is about 13: 6 bits of the element plus the spread of
exponents within a row).  Where it is faster is a matter of device and shape; see
:func:`harness.oracle.reference_from_dequantized`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DIGIT_BITS = 7
"""Bits per int8 digit (sign-magnitude: 0..127 times the element's sign)."""
K_CHUNK = 1 << 17
"""Longest K per integer GEMM: K * 127^2 < 2^31 keeps the int32 accumulator exact."""
ROW_CHUNK_ELEMENTS = 1 << 26
"""Elements per row chunk of the fp64/int64 temporaries (operand splitting and output
accumulation), so that the method's memory is a fixed multiple of its operands' and output's."""
_BIG = 1 << 20


@dataclass
class IntegerRows:
    """``x = sign * sum_d digits[d] * 2^(7d) * 2^q_row`` exactly (see the module docstring)."""
    digits: list[torch.Tensor]  # D x int8 [rows, K], signed digits, least significant first
    q: torch.Tensor             # int64 [rows]: exponent of the row's integer unit
    bits: int                   # B: every |R| < 2^B


def integer_rows(x: torch.Tensor, significand_bits: int) -> IntegerRows | None:
    """Split the rows of ``x`` [rows, K] (float) into int8 digit planes; ``None`` when an element has
    more than ``significand_bits`` significant bits or is not finite (the caller must then use
    another method).  Works on row chunks of at most :data:`ROW_CHUNK_ELEMENTS` elements, so its
    fp64/int64 temporaries stay bounded."""
    rows, k = x.shape
    step = max(1, ROW_CHUNK_ELEMENTS // max(1, k))
    parts = []
    for r0 in range(0, rows, step):
        part = _integer_rows_chunk(x[r0:r0 + step], significand_bits)
        if part is None:
            return None
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return IntegerRows([torch.zeros((0, k), dtype=torch.int8, device=x.device)],
                           torch.zeros(0, dtype=torch.int64, device=x.device), 0)
    ndig = max(len(p.digits) for p in parts)
    digits = [torch.cat([p.digits[d] if d < len(p.digits) else torch.zeros_like(p.digits[0]) for p in parts])
              for d in range(ndig)]
    return IntegerRows(digits, torch.cat([p.q for p in parts]), max(p.bits for p in parts))


def _integer_rows_chunk(x: torch.Tensor, significand_bits: int) -> IntegerRows | None:
    x64 = x.double()
    if not bool(torch.isfinite(x64).all()):
        return None
    f, e = torch.frexp(x64)
    mant = torch.ldexp(f, torch.tensor(significand_bits, dtype=torch.int64, device=x.device))
    del f
    if not bool((mant == mant.round()).all()):
        return None
    del mant
    e = e.to(torch.int64)
    nz = x64 != 0
    if x.shape[1]:
        q_row = torch.where(nz, e - significand_bits, torch.full_like(e, _BIG)).amin(dim=1)
        q_row = torch.where(q_row == _BIG, torch.zeros_like(q_row), q_row)
        e_row = torch.where(nz, e, torch.full_like(e, -_BIG)).amax(dim=1)
    else:
        q_row = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        e_row = q_row
    del e, nz
    spread = (e_row - q_row).clamp_min(0)
    bits = int(spread.max()) if spread.numel() else 0
    if bits > 62:
        return None
    r = torch.ldexp(x64, -q_row[:, None]).to(torch.int64)  # exact integers (step 1)
    del x64
    sign = torch.sign(r).to(torch.int8)
    mag = r.abs_()
    ndig = max(1, math.ceil(bits / DIGIT_BITS))
    digits = [((mag >> (DIGIT_BITS * d)) & 127).to(torch.int8) * sign for d in range(ndig)]
    return IntegerRows(digits, q_row, bits)


def _int_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 a [m, K] times int8 b [n, K]^T -> int32 [m, n], exact (K <= K_CHUNK).

    ``torch._int_mm`` needs m > 16 and K, n multiples of 8 on CUDA: zero rows/columns are added
    (they change no sum) and removed."""
    m, k = a.shape
    n = b.shape[0]
    if a.device.type == "cuda":
        mp, kp, np_ = max(32, -(-m // 8) * 8), -(-k // 8) * 8, -(-n // 8) * 8
        if (mp, kp) != (m, k):
            a = torch.nn.functional.pad(a, (0, kp - k, 0, mp - m))
        if (np_, kp) != (n, k):
            b = torch.nn.functional.pad(b, (0, kp - k, 0, np_ - n))
        # cuBLASLt takes a row-major a and a column-major b (b^T of a row-major [n, K])
        return torch._int_mm(a.contiguous(), b.contiguous().t())[:m, :n]
    if m == 0 or n == 0 or k == 0:
        return torch.zeros((m, n), dtype=torch.int32, device=a.device)
    return torch._int_mm(a.contiguous(), b.t())


def exact_products(a: torch.Tensor, w: torch.Tensor, a_bits: int = 6, w_bits: int = 6
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(S, P) as fp64 [m, n]: ``S = a @ w^T`` rounded once, ``P >= |a| @ |w|^T`` (within 2^-50
    relative), for ``a`` [m, K], ``w`` [n, K] with at most ``a_bits`` / ``w_bits`` significant
    bits per element.  ``None`` when the operands do not qualify (more bits, non-finite values, or
    a row spread beyond 62 bits): use the fp64 GEMM then.  ``S`` is exact to one rounding when
    ``B_a + B_w + ceil(log2 K) <= 62``, else within ``diagonal_error(D_a, D_w) * P``."""
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[1]:
        raise ValueError(f"exact_products: a {tuple(a.shape)} and w {tuple(w.shape)} must be [m, K] and [n, K]")
    k = a.shape[1]
    ra = integer_rows(a, a_bits)
    if ra is None:
        return None
    rw = integer_rows(w, w_bits)
    if rw is None:
        return None
    m, n = a.shape[0], w.shape[0]
    exact_int64 = ra.bits + rw.bits + max(1, math.ceil(math.log2(max(k, 1)))) <= 62
    dw_abs = [d.abs() for d in rw.digits]
    s_out = torch.empty((m, n), dtype=torch.float64, device=a.device)
    p_out = torch.empty((m, n), dtype=torch.float64, device=a.device)
    step = max(1, ROW_CHUNK_ELEMENTS // max(1, n))
    for r0 in range(0, m, step):
        rs = slice(r0, r0 + step)
        a_sig = [d[rs] for d in ra.digits]
        a_abs = [d[rs].abs() for d in ra.digits]
        for a_dig, w_dig, dest in ((a_sig, rw.digits, s_out), (a_abs, dw_abs, p_out)):
            rows = a_dig[0].shape[0]
            total = torch.zeros((rows, n), dtype=torch.int64 if exact_int64 else torch.float64, device=a.device)
            for t in reversed(range(len(a_dig) + len(w_dig) - 1)):  # diagonals d + l = t, largest first
                diag = torch.zeros((rows, n), dtype=torch.int64, device=a.device)
                for d in range(max(0, t - len(w_dig) + 1), min(t, len(a_dig) - 1) + 1):
                    for k0 in range(0, max(k, 1), K_CHUNK):
                        sl = slice(k0, k0 + K_CHUNK)
                        diag += _int_gemm(a_dig[d][:, sl], w_dig[t - d][:, sl])
                if exact_int64:
                    total += diag << (DIGIT_BITS * t)
                else:  # |diag| < 4 * 2^31 * ceil(K / 2^17) is exact in fp64; the sum of diagonals rounds
                    total += torch.ldexp(diag.double(), torch.tensor(DIGIT_BITS * t, device=a.device))
                del diag
            dest[rs] = torch.ldexp(total.double(), ra.q[rs, None] + rw.q[None, :])
            del total
    gamma = 0.0 if exact_int64 else diagonal_error(len(ra.digits), len(rw.digits))
    # P's roundings (int64 -> fp64, this multiply, the factor itself; the diagonals' sum) are each
    # <= 2^-53 relative (gamma_T for the sum): lifting by (1 + 2^-51)(1 + 2 gamma_T) keeps P above
    return s_out, p_out.mul_((1 + 2.0 ** -51) * (1 + 2 * gamma))


def diagonal_error(da: int, dw: int) -> float:
    r"""Relative error bound (times P) of the fp64 sum of the ``da + dw - 1`` digit diagonals:
    :math:`\gamma_T` with :math:`T = d_a + d_w - 1` terms (Higham eq. 3.5), plus the final rounding."""
    t = da + dw - 1
    u = 2.0 ** -53
    return t * u / (1 - t * u)
