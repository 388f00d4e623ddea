"""Adapters for TransformerEngine's grouped (split) NVFP4 quantize, ``tex.split_quantize``.

TransformerEngine (TE) quantizes the token-sorted activations of a ``GroupedLinear`` in one call,
``transformer_engine_torch.split_quantize(tensor, split_sections, quantizer_list,
disable_bulk_allocation=False)``, one ``NVFP4Quantizer`` per split.  Each adapter here feeds it the
pipeline's hidden states, converts what it returns into the harness's grouped buffer
(:class:`~harness.grouped.pipeline.GroupedTensor`: the ``grouped_bytes`` property compares it, expert
by expert, with the reference quantizer's bytes), and multiplies that buffer with the harness's
Triton grouped GEMM (:mod:`harness.backends.grouped_triton`), so the other grouped properties (token
isolation, zero-token groups, reference agreement) exercise TE's quantize too.  As with the
FlashInfer MoE adapters, the work is split in two: :meth:`TeSplitQuantize.prepare` and the layout
conversions (:func:`rowwise_to_grouped`, :func:`grouped_to_rowwise`, :func:`columnwise_to_harness`,
:func:`harness_to_columnwise`) are pure and run on the CPU without TE; :meth:`TeSplitQuantize.run`
calls the library on a CUDA device.  Neither adapter has run for this project: TE is not installed on
its CPU machine (TE's PyTorch extension is a CUDA build) and no Blackwell GPU was available.

What the adapters rely on, read in NVIDIA/TransformerEngine at commit
``d0067d0da6cb01811b8072a7d304f0e00344ce2b`` (2.20.0.dev0):

* Capability.  ``transformer_engine.pytorch.is_nvfp4_available(return_reason=True)``
  (``transformer_engine/pytorch/quantization.py`` l.370, computed at l.171 from the device's compute
  capability) is TE's own statement of where its NVFP4 recipe runs; :meth:`TeSplitQuantize.support`
  asks it on the observed device and reports its reason.  Nothing about the architecture is decided
  here.
* Quantizer.  ``NVFP4Quantizer(fp4_dtype, rowwise, columnwise, with_amax_reduction,
  amax_reduction_group, with_rht, with_post_rht_amax, with_2d_quantization, stochastic_rounding,
  row_scaled_nvfp4, nvfp4_use_4over6, ..., with_random_sign_mask)``
  (``transformer_engine/pytorch/tensor/nvfp4_tensor.py`` l.142-177); its constructor reads the current
  CUDA device, so it is only built in :meth:`TeSplitQuantize.run`.  ``is_quantizable`` (l.261) refuses
  a tensor whose row count is not a multiple of 16; the adapter asks it about every split and turns a
  refusal into :class:`~harness.backends.protocol.Unsupported`.
* Splits.  TE pads every split to 128 rows for NVFP4 before a grouped GEMM
  (``get_align_size_for_quantization``, ``quantization.py`` l.262-277, used by ``Fp8Padding``).  The
  adapter pads expert ``e``'s section with zero rows to the problem's ``row_align[e]`` (the harness's
  per-expert padding policy plays that role), so TE's quantize of the zero rows must give the zero
  group row padding the ``grouped_bytes`` property expects.  A zero-token expert is a split of 0 rows;
  TE leaves its buffers (amax included) unwritten (``tests/pytorch/nvfp4/test_nvfp4_group_quantize.py``
  compares only their shapes), so its global scale is taken as 1.0, as the pipeline's.
* Paths (``transformer_engine/pytorch/csrc/extensions/cast.cpp``).  ``split_quantize`` (l.1895)
  bulk-allocates NVFP4 outputs and takes the fused NVFP4 route (``split_quantize_nvfp4_impl``,
  l.1808) unless K % 128 != 0 or a split's bytes are not 256-byte (data) / 16-byte (scales)
  multiples, where it falls back to quantizing split by split (l.2012-2026).  With RHT on SM100-110
  (l.1866) and every split a multiple of 128 rows (l.1550) one kernel casts rowwise and RHT-columnwise
  together; otherwise a grouped rowwise kernel and a grouped columnwise kernel run with separate
  random states (l.1556).  RHT requires bf16 input (l.1872): the RHT adapter refuses other dtypes
  before calling.  The rowwise cast is never Hadamard-transformed, and its amax is the input's
  (l.1616-1620), so ``grouped_bytes`` applies to both adapters.
* Layouts.  Rowwise data ``_rowwise_data`` uint8 ``[rows, K/2]`` (two e2m1 codes a byte, the even
  element in the low nibble: ``custom_recipes/reference_nvfp4.py`` ``cast_to_fp4x2``, l.49-71);
  columnwise data ``_columnwise_data`` is the transpose, uint8 ``[K, rows/2]``
  (``get_columnwise_shape``, ``nvfp4_tensor.py`` l.310; "NVFP4 on SM100 is TN only",
  ``cast.cpp`` l.1339).  Scales ``_rowwise_scale_inv`` uint8 ``[round_up(rows, 128),
  round_up(K/16, 4)]`` and ``_columnwise_scale_inv`` ``[round_up(K, 128), round_up(rows/16, 4)]``
  (``get_scale_shape``, ``nvfp4_tensor.py`` l.273-307).  They are *compact* (row-major, the real
  scales in the top-left corner) unless the output's ``_with_gemm_swizzled_scales`` is set, which
  TE does only when every quantizer asks ``optimize_for_gemm`` with RHT and every split is eligible
  for RHT cast fusion (``cast.cpp`` l.1241-1264, ``quantizer.cpp`` l.1934-1940: rows % 128 == 0,
  K % 128 == 0, SM100-110).  The swizzled layout is the 128x4 one of :mod:`harness.layouts`: TE's
  test helper views a compact buffer as ``[M/128, 4, 32, Kb/4, 4]`` and permutes it to
  ``(0, 3, 2, 1, 4)`` (``tests/pytorch/nvfp4/nvfp4_utils.py`` l.30-40), which is the byte offset
  ``(r//128)*nK*512 + (kb//4)*512 + (r%32)*16 + ((r%128)//32)*4 + kb%4``.  The adapters read the flag
  TE sets on each output; they do not predict it.
* Global scales.  TE's encode scale is ``448 * 6 / amax`` (``common/cast/nvfp4/core_nvfp4.cuh``
  l.82-94), the harness's :func:`~harness.format.global_scale_encode_divisor`; the adapters derive
  each expert's global scale from the amax TE returns.  TE forms a block scale as
  ``block_amax * (S_enc * (1/6))`` (``core_nvfp4.cuh`` l.40-52 and l.61-68), a different rounding order from the
  reference's ``S_enc * block_amax / 6``: where they differ by one e4m3 step, ``grouped_bytes`` shows
  it (it has not been observed: the adapters never ran).

Refusals.  TE raises ``RuntimeError`` from every ``NVTE_CHECK``, a refusal and a bug alike, and the
harness never tells them apart by message wording (:mod:`harness.backends._refusal`), so an exception
from the call is a failure; what TE can say in advance it is asked before the call: its
``is_nvfp4_available`` (the gate) and ``NVFP4Quantizer.is_quantizable`` (each split), whose ``False``
becomes :class:`~harness.backends.protocol.Unsupported` with TE's verdict.

Bytes not compared: the scale bytes of TE's own tile padding (rows past the padded split, k-blocks
past K/16), whose value TE does not document (its tests compare the real region only); the
conversion writes ``fill`` there.  Not covered: stochastic rounding (TE draws its random numbers from
the CUDA generator: not reproducible from a recorded seed), static (calibrated) input scales
(``split_quantize`` computes every split's amax itself) and 2D quantization (refused by
``split_quantize_nvfp4_impl``, l.1843).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from harness.backends._library import _import, installed_version
from harness.backends.grouped_triton import REQUIREMENTS as TRITON_GROUPED, combine, grouped_gemm
from harness.backends.protocol import Support, Unsupported
from harness.format import BLOCK_SIZE, gemm_alpha, global_scale_encode_divisor, pack_e2m1, unpack_e2m1
from harness.grouped.pipeline import GroupedOperands, GroupedTensor, group_offsets
from harness.grouped.protocol import GroupedBackend
from harness.layouts import ScaleLayout, padded_shape, round_up, swizzle, unswizzle

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment

PACKAGE = "transformer_engine"
"""The import name of TransformerEngine (its PyTorch part: ``transformer_engine.pytorch`` and the
extension ``transformer_engine_torch``)."""

TE_SCALE_ROW_TILE = 128
TE_SCALE_KBLOCK_TILE = 4


# ------------------------------------------------------------------------------------------------
# TE's per-split output, as plain tensors
# ------------------------------------------------------------------------------------------------
@dataclass
class TeSplitOutput:
    """One split of ``split_quantize``'s result, as the attributes of TE's ``NVFP4TensorStorage``
    (``_rowwise_data``, ``_rowwise_scale_inv``, ``_amax_rowwise``, ``_columnwise_data``,
    ``_columnwise_scale_inv``, ``_amax_columnwise``, ``_with_gemm_swizzled_scales``).

    rowwise_data: uint8 [rows, K/2]; rowwise_scales: uint8 [round_up(rows, 128), round_up(K/16, 4)];
    amax_rowwise: fp32 [1]; columnwise_data: uint8 [K, rows/2]; columnwise_scales: uint8
    [round_up(K, 128), round_up(rows/16, 4)]; amax_columnwise: fp32 [1]; each None when that usage
    was not requested.  ``swizzled``: the scales are in the 128x4 GEMM layout, else compact.
    """
    rows: int
    k: int
    rowwise_data: torch.Tensor | None = None
    rowwise_scales: torch.Tensor | None = None
    amax_rowwise: torch.Tensor | None = None
    columnwise_data: torch.Tensor | None = None
    columnwise_scales: torch.Tensor | None = None
    amax_columnwise: torch.Tensor | None = None
    swizzled: bool = False

    @classmethod
    def from_storage(cls, t: Any, rows: int, k: int) -> "TeSplitOutput":
        """Read a TE ``NVFP4TensorStorage`` (or ``NVFP4Tensor``)."""
        def u8(x):
            return None if x is None else x.view(torch.uint8)

        return cls(rows, k, u8(getattr(t, "_rowwise_data", None)), u8(getattr(t, "_rowwise_scale_inv", None)),
                   getattr(t, "_amax_rowwise", None), u8(getattr(t, "_columnwise_data", None)),
                   u8(getattr(t, "_columnwise_scale_inv", None)), getattr(t, "_amax_columnwise", None),
                   bool(getattr(t, "_with_gemm_swizzled_scales", False)))


def te_scale_shape(rows: int, k: int, columnwise: bool) -> tuple[int, int]:
    """TE's NVFP4 scale buffer shape for a [rows, k] tensor (``NVFP4Quantizer.get_scale_shape``):
    rowwise [round_up(rows, 128), round_up(ceil(k/16), 4)], columnwise [round_up(k, 128),
    round_up(ceil(rows/16), 4)]."""
    outer, inner = (k, rows) if columnwise else (rows, k)
    return (round_up(outer, TE_SCALE_ROW_TILE),
            round_up(-(-inner // BLOCK_SIZE), TE_SCALE_KBLOCK_TILE))


def _te_logical_scales(buf: torch.Tensor, swizzled: bool) -> torch.Tensor:
    """TE's scale buffer as logical [outer, inner] (row r, k-block kb) bytes, padding included."""
    return unswizzle(buf, ScaleLayout.SWIZZLED_128x4) if swizzled else buf


def _te_scale_buffer(real: torch.Tensor, outer: int, inner: int, swizzled: bool, fill: int) -> torch.Tensor:
    """A TE scale buffer [round_up(outer, 128), round_up(inner/16, 4)] holding ``real`` [outer,
    inner/16] in its top-left corner, compact or swizzled, ``fill`` elsewhere."""
    shape = te_scale_shape(outer, inner, columnwise=False)
    logical = torch.full(shape, fill, dtype=torch.uint8, device=real.device)
    logical[:real.shape[0], :real.shape[1]] = real
    return swizzle(logical, ScaleLayout.SWIZZLED_128x4) if swizzled else logical


def global_scales_from_amax(outputs: list[TeSplitOutput], splits: tuple[int, ...], *,
                            columnwise: bool = False) -> torch.Tensor:
    """fp32 [E] encode divisors ``448 * 6 / amax`` from TE's per-split amax (rowwise, or columnwise:
    post-RHT with RHT); 1.0 for a zero-token expert, whose amax TE leaves unwritten."""
    gs = torch.ones(len(splits), dtype=torch.float32)
    for e, (o, c) in enumerate(zip(outputs, splits)):
        if c:
            amax = o.amax_columnwise if columnwise else o.amax_rowwise
            if amax is None:
                raise ValueError(f"split {e}: TE returned no {'columnwise' if columnwise else 'rowwise'} amax")
            gs[e] = global_scale_encode_divisor(amax.reshape(-1)[0].float().cpu())
    return gs


# ------------------------------------------------------------------------------------------------
# rowwise: TE's per-split tensors <-> the harness's grouped buffer
# ------------------------------------------------------------------------------------------------
def rowwise_to_grouped(outputs: list[TeSplitOutput], splits: tuple[int, ...], row_align: tuple[int, ...],
                       k: int, global_scales: torch.Tensor, *, layout: ScaleLayout = ScaleLayout.SWIZZLED_128x4,
                       fill: int = 0) -> GroupedTensor:
    """TE's rowwise outputs of the padded splits (expert ``e``: ``round_up(splits[e], row_align[e])``
    rows) as one grouped buffer of the harness.

    Expert ``e``'s packed rows and the scales of those rows (real tokens and padding rows alike, k-blocks
    below K/16) are copied as TE wrote them; the scale bytes of the layout's tile padding get ``fill``.
    ``global_scales``: fp32 [E] (:func:`global_scales_from_amax`).  Raises ValueError when an output's
    shape is not the padded split's.
    """
    layout = ScaleLayout.parse(layout)
    if not (len(outputs) == len(splits) == len(row_align)):
        raise ValueError(f"rowwise_to_grouped: {len(outputs)} outputs, {len(splits)} splits and {len(row_align)} "
                         f"row_align values must agree")
    kb = k // BLOCK_SIZE
    rows, sf = group_offsets(tuple(splits), tuple(row_align), layout, k)
    sf_kb = padded_shape(layout, 1, kb)[1]
    dev = next((o.rowwise_data.device for o in outputs if o.rowwise_data is not None), torch.device("cpu"))
    packed = torch.zeros((rows[-1], k // 2), dtype=torch.uint8, device=dev)
    scales = torch.full((sf[-1], sf_kb), fill, dtype=torch.uint8, device=dev)
    for e, o in enumerate(outputs):
        r = rows[e + 1] - rows[e]
        if r == 0:
            continue
        if o.rowwise_data is None or o.rowwise_scales is None:
            raise ValueError(f"rowwise_to_grouped: split {e} has no rowwise data (rowwise usage was not requested)")
        if tuple(o.rowwise_data.shape) != (r, k // 2) or tuple(o.rowwise_scales.shape) != te_scale_shape(r, k, False):
            raise ValueError(f"rowwise_to_grouped: split {e}: data {tuple(o.rowwise_data.shape)}, scales "
                             f"{tuple(o.rowwise_scales.shape)}; expected {(r, k // 2)} and {te_scale_shape(r, k, False)}")
        packed[rows[e]:rows[e + 1]] = o.rowwise_data.to(dev)
        real = _te_logical_scales(o.rowwise_scales, o.swizzled)[:r, :kb].to(dev)
        s0, s1 = sf[e], sf[e + 1]
        scales[s0:s1] = swizzle(real, layout, fill=fill).reshape(s1 - s0, sf_kb)
    return GroupedTensor(packed, scales, layout, k, tuple(splits), rows, sf,
                         global_scales.to(device=dev, dtype=torch.float32))


def grouped_to_rowwise(g: GroupedTensor, *, swizzled: bool, fill: int = 0) -> list[TeSplitOutput]:
    """The inverse of :func:`rowwise_to_grouped`: every expert's rows of ``g`` (its split padded to its
    row alignment) as a TE rowwise output, scales compact or swizzled, ``fill`` in TE's tile padding;
    ``amax_rowwise`` = ``448 * 6 / global_scale`` (an empty split gets the shapes only)."""
    kb = g.k // BLOCK_SIZE
    out = []
    for e in range(g.experts):
        r0, r1 = g.row_offsets[e], g.row_offsets[e + 1]
        r = r1 - r0
        real = unswizzle(g.scales[g.sf_row_offsets[e]:g.sf_row_offsets[e + 1]], g.layout)[:r, :kb] if r else \
            torch.zeros((0, kb), dtype=torch.uint8, device=g.scales.device)
        amax = (torch.full((1,), 2688.0, dtype=torch.float32) / g.global_scales[e].float().cpu()).reshape(1)
        out.append(TeSplitOutput(r, g.k, g.packed[r0:r1].clone(), _te_scale_buffer(real, r, g.k, swizzled, fill),
                                 amax, swizzled=swizzled))
    return out


# ------------------------------------------------------------------------------------------------
# columnwise: TE's transposed tensors <-> the harness's columnwise form
# ------------------------------------------------------------------------------------------------
def columnwise_to_harness(outputs: list[TeSplitOutput], global_scales: torch.Tensor) -> list[dict | None]:
    """TE's columnwise outputs as the harness's columnwise casts
    (:func:`harness.grouped.transforms.grouped_columnwise`): per expert, ``codes`` uint8 [K, rows]
    (unpacked e2m1 codes of the transposed split, token order along each row), ``scales`` uint8
    [K, rows/16] (linear), ``rows_pad`` and ``global_scale``; None for a zero-row split.  Every
    split's row count must be a multiple of 16 (TE's ``is_quantizable``); ValueError otherwise."""
    out: list[dict | None] = []
    for e, o in enumerate(outputs):
        if o.rows == 0:
            out.append(None)
            continue
        if o.rows % BLOCK_SIZE:
            raise ValueError(f"columnwise_to_harness: split {e} has {o.rows} rows, not a multiple of {BLOCK_SIZE}")
        if o.columnwise_data is None or o.columnwise_scales is None:
            raise ValueError(f"columnwise_to_harness: split {e} has no columnwise data (usage not requested)")
        if tuple(o.columnwise_data.shape) != (o.k, o.rows // 2) or \
                tuple(o.columnwise_scales.shape) != te_scale_shape(o.rows, o.k, True):
            raise ValueError(f"columnwise_to_harness: split {e}: data {tuple(o.columnwise_data.shape)}, scales "
                             f"{tuple(o.columnwise_scales.shape)}; expected {(o.k, o.rows // 2)} and "
                             f"{te_scale_shape(o.rows, o.k, True)}")
        sf = _te_logical_scales(o.columnwise_scales, o.swizzled)[:o.k, :o.rows // BLOCK_SIZE]
        out.append({"codes": unpack_e2m1(o.columnwise_data), "scales": sf.clone(), "rows_pad": o.rows,
                    "global_scale": float(global_scales[e])})
    return out


def harness_to_columnwise(cols: list[dict | None], k: int, *, swizzled: bool, fill: int = 0
                          ) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """The inverse of :func:`columnwise_to_harness`: per expert, (columnwise data uint8 [K, rows/2],
    columnwise scales in TE's buffer [round_up(K, 128), round_up(rows/16, 4)], compact or swizzled,
    ``fill`` in its tile padding); None for an expert without a cast."""
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for c in cols:
        if c is None:
            out.append(None)
            continue
        rows = c["codes"].shape[1]
        if c["codes"].shape[0] != k or c["scales"].shape != (k, rows // BLOCK_SIZE):
            raise ValueError(f"harness_to_columnwise: codes {tuple(c['codes'].shape)} and scales "
                             f"{tuple(c['scales'].shape)} do not describe a [{k}, rows] cast")
        out.append((pack_e2m1(c["codes"]), _te_scale_buffer(c["scales"], k, rows, swizzled, fill)))
    return out


def rht_columnwise_round_trip(xt: torch.Tensor, col: dict, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(error, bound), fp64 [K, rows]: how far a columnwise RHT cast, dequantized and transformed back,
    lands from the tokens, and the bound a correct cast keeps to.

    ``xt``: the split transposed, [K, rows] (blocks of 16 tokens along each row); ``col``: its cast in
    the harness's columnwise form (:func:`columnwise_to_harness`); ``m``: the 16x16 transform the
    quantizer applies to every block (``y = x_block @ m``; TE's ``NVFP4Quantizer.rht_matrix``),
    orthonormal with entries +-1/4.  Back-transform: ``deq @ m^T`` in fp64.  The bound is
    :func:`harness.grouped.transforms.rht_round_trip_bound` with the quantizer's input raised to cover
    any fp32 summation order of the transform (:math:`2\gamma_{16}/4 \sum|x|` per block) and a
    rounding of it to bf16 (:math:`2^{-8}`), as TE's kernels do without ``NVTE_USE_FAST_MATH``
    (``cast.cpp`` l.1583-1590), plus that rounding carried back: :math:`\frac14\sum_i 2^{-9}|y_i|`.
    """
    from harness.format import reference_dequantize
    from harness.grouped.transforms import U, rht_round_trip_bound

    k, rows = xt.shape
    x = xt.double().cpu()
    md = m.double().cpu()
    g16 = 16 * U / (1 - 16 * U)
    y = (x.reshape(k, rows // BLOCK_SIZE, BLOCK_SIZE) @ md).reshape(k, rows)
    slack = (2 * g16 / 4 * x.abs().reshape(k, rows // BLOCK_SIZE, BLOCK_SIZE).sum(-1)).repeat_interleave(BLOCK_SIZE, 1)
    vals = (y.abs() + slack) * (1 + 2.0 ** -8)
    sf = col["scales"].cpu()
    deq = reference_dequantize(col["codes"].cpu(), sf, col["global_scale"])
    back = (deq.reshape(k, rows // BLOCK_SIZE, BLOCK_SIZE) @ md.T).reshape(k, rows)
    bound = rht_round_trip_bound(x, vals, sf, col["global_scale"], deq)
    carried = 2.0 ** -9 / 4 * vals.reshape(k, rows // BLOCK_SIZE, BLOCK_SIZE).sum(-1)
    return (back - x).abs(), bound + carried.repeat_interleave(BLOCK_SIZE, 1)


# ------------------------------------------------------------------------------------------------
# the call
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeQuantizerConfig:
    """What each ``NVFP4Quantizer`` of the call is asked for (every split gets the same one)."""
    rowwise: bool = True
    columnwise: bool = False
    with_rht: bool = False
    with_post_rht_amax: bool = False
    with_random_sign_mask: bool = False
    optimize_for_gemm: bool = False

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``NVFP4Quantizer(...)``: amax reduction, 2D quantization,
        stochastic rounding, row scaling and 4over6 off; the e2m1 dtype is its default."""
        return {"rowwise": self.rowwise, "columnwise": self.columnwise, "with_amax_reduction": False,
                "amax_reduction_group": None, "with_rht": self.with_rht,
                "with_post_rht_amax": self.with_post_rht_amax, "with_2d_quantization": False,
                "stochastic_rounding": False, "row_scaled_nvfp4": False, "nvfp4_use_4over6": False,
                "with_random_sign_mask": self.with_random_sign_mask}


@dataclass
class TeSplitCall:
    """Everything ``split_quantize`` receives: ``tensor`` [sum(split_sections), K] (the token-sorted
    hidden states, each expert's section followed by zero rows up to its row alignment, contiguous),
    ``split_sections`` (the padded splits), one quantizer per split built from ``quantizer_kwargs``
    with ``optimize_for_gemm``; ``splits``/``row_align`` the harness's, for the conversion back."""
    tensor: torch.Tensor
    split_sections: list[int]
    quantizer_kwargs: dict[str, Any]
    optimize_for_gemm: bool
    splits: tuple[int, ...]
    row_align: tuple[int, ...]
    disable_bulk_allocation: bool = False


def _te_pytorch():
    return importlib.import_module("transformer_engine.pytorch")


def _te_version() -> str:
    return installed_version("transformer_engine") or installed_version("transformer_engine_torch") or "?"


class TeSplitQuantize(GroupedBackend):
    """TE ``split_quantize`` of the hidden states into one grouped buffer, then the harness's Triton
    grouped GEMM and routed combine (see the module docstring)."""
    name = "grouped-te-split-quantize"
    description = ("TransformerEngine tex.split_quantize (NVFP4Quantizer per expert, rowwise, dynamic per-split "
                   "amax) into one grouped buffer, then the Triton grouped GEMM and routed combine")
    config = TeQuantizerConfig()
    quantizes = True
    # the GEMM is grouped-triton-emu's (same N/K alignment, precision and output dtypes); the quantize
    # is TE's, on a CUDA device only
    requirements = replace(TRITON_GROUPED, runs_on_cpu=False, packages=(PACKAGE,),
                           in_dtypes=(torch.bfloat16, torch.float16, torch.float32))

    # -- capability -------------------------------------------------------------------------------
    def support(self, env: "Environment") -> Support:
        if importlib.util.find_spec(PACKAGE) is None:
            return Support(False, f"package {PACKAGE!r} (NVIDIA TransformerEngine, PyTorch build) is not installed")
        te, err = _import("transformer_engine.pytorch")
        if te is None:
            return Support(False, f"transformer_engine {_te_version()} is installed but transformer_engine.pytorch "
                                  f"cannot be imported ({err})")
        if env.device != "cuda" or env.compute_capability is None:
            return Support(False, f"transformer_engine {_te_version()} split_quantize runs CUDA kernels; this "
                                  f"machine has no CUDA GPU")
        try:
            ok, reason = te.is_nvfp4_available(return_reason=True)
        except Exception as exc:  # noqa: BLE001 - TE's own check is broken here: observed, not assumed
            return Support(False, f"transformer_engine {_te_version()}'s own check is_nvfp4_available raised "
                                  f"{type(exc).__name__}: {exc} on SM{env.compute_capability} ({env.gpu_name})")
        if not ok:
            return Support(False, f"transformer_engine {_te_version()} is_nvfp4_available() is False on "
                                  f"SM{env.compute_capability} ({env.gpu_name}): {reason}")
        return Support(True, f"transformer_engine {_te_version()} NVFP4 on SM{env.compute_capability}")

    def parameters(self) -> tuple[str, ...]:
        """Parameter names of the installed ``NVFP4Quantizer`` (for tests of :meth:`prepare`)."""
        return tuple(inspect.signature(_te_pytorch().NVFP4Quantizer).parameters)

    # -- pure part --------------------------------------------------------------------------------
    def prepare(self, ops: GroupedOperands) -> TeSplitCall:
        """The arguments of ``split_quantize`` for ``ops`` (pure; nothing of TE is imported).

        Raises Unsupported for what TE cannot take: static (calibrated) input scales (its split
        quantize computes every split's amax itself) and, with RHT, an input other than bf16.
        """
        p = ops.problem
        if p.input_scales != "dynamic":
            raise Unsupported(f"{self.name}: TE split_quantize computes each split's amax itself (dynamic "
                              f"scaling); a static calibrated input scale is not an input of it")
        if self.config.with_rht and ops.hidden.dtype != torch.bfloat16:
            raise Unsupported(f"{self.name}: TE's RHT split quantize takes bf16 input only "
                              f"(cast.cpp split_quantize_nvfp4_impl); the hidden states are {ops.hidden.dtype}")
        splits = tuple(p.splits)
        padded = [round_up(c, a) for c, a in zip(splits, p.row_align)]
        x = ops.hidden[ops.order]
        tensor = torch.zeros((sum(padded), p.k), dtype=ops.hidden.dtype, device=ops.hidden.device)
        src = dst = 0
        for c, r in zip(splits, padded):
            tensor[dst:dst + c] = x[src:src + c]
            src += c
            dst += r
        return TeSplitCall(tensor.contiguous(), padded, self.config.kwargs(), self.config.optimize_for_gemm, splits,
                           tuple(p.row_align))

    def convert(self, call: TeSplitCall, outputs: list[TeSplitOutput]) -> GroupedTensor:
        """TE's outputs of ``call`` as the harness's grouped buffer (128x4), global scales from TE's
        rowwise amax."""
        gs = global_scales_from_amax(outputs, call.splits)
        return rowwise_to_grouped(outputs, call.splits, call.row_align, call.tensor.shape[1], gs)

    # -- the library call -------------------------------------------------------------------------
    def call(self, call: TeSplitCall) -> list[TeSplitOutput]:
        """Run ``split_quantize`` on a CUDA device.  Raises Unsupported where TE is missing or its own
        ``is_quantizable`` refuses a split (row count not a multiple of 16)."""
        if call.tensor.device.type != "cuda":
            raise Unsupported(f"{self.name}: TE split_quantize runs CUDA kernels; the operands are on "
                              f"{call.tensor.device}")
        te, err = _import("transformer_engine.pytorch")
        tex, err2 = _import("transformer_engine_torch")
        if te is None or tex is None:
            raise Unsupported(f"{self.name}: transformer_engine cannot be imported ({err or err2})")
        quantizers = []
        for _ in call.split_sections:
            q = te.NVFP4Quantizer(**call.quantizer_kwargs)
            q.optimize_for_gemm = call.optimize_for_gemm
            quantizers.append(q)
        off = 0
        for e, r in enumerate(call.split_sections):
            if r and not quantizers[e].is_quantizable(call.tensor[off:off + r]):
                raise Unsupported(f"{self.name}: transformer_engine {_te_version()} NVFP4Quantizer.is_quantizable is "
                                  f"False for expert {e}'s split of {r} rows x {call.tensor.shape[1]} (its row "
                                  f"alignment {call.row_align[e]})")
            off += r
        res = tex.split_quantize(call.tensor, call.split_sections, quantizers,
                                 disable_bulk_allocation=call.disable_bulk_allocation)
        return [TeSplitOutput.from_storage(t, r, call.tensor.shape[1]) for t, r in zip(res, call.split_sections)]

    def quantize(self, ops: GroupedOperands) -> GroupedTensor:
        call = self.prepare(ops)
        return self.convert(call, self.call(call))

    def run(self, ops: GroupedOperands) -> torch.Tensor:
        if ops.out_dtype not in self.requirements.out_dtypes:
            raise Unsupported(f"{self.name}: output dtype {ops.out_dtype} not in {list(self.requirements.out_dtypes)}")
        g = self.quantize(ops)
        alpha = gemm_alpha(g.global_scales, ops.w.global_scales.to(g.global_scales.device)).to(torch.float32)
        return combine(grouped_gemm(g, ops, alpha.reshape(-1)), ops)


class TeSplitQuantizeRht(TeSplitQuantize):
    """The same call with TE's NVFP4 training recipe for activations: rowwise and columnwise, RHT with
    the random sign mask and post-RHT amax, scales requested in the GEMM layout (``optimize_for_gemm``):
    the fully fused kernel on 128-aligned splits (SM100-110), the separate grouped kernels otherwise."""
    name = "grouped-te-split-quantize-rht"
    description = ("TransformerEngine tex.split_quantize with RHT (random sign mask, post-RHT amax), rowwise and "
                   "columnwise, optimize_for_gemm: fused kernel on 128-aligned splits; rowwise bytes into the "
                   "grouped buffer, then the Triton grouped GEMM")
    config = TeQuantizerConfig(rowwise=True, columnwise=True, with_rht=True, with_post_rht_amax=True,
                               with_random_sign_mask=True, optimize_for_gemm=True)
    requirements = replace(TRITON_GROUPED, runs_on_cpu=False, packages=(PACKAGE,), in_dtypes=(torch.bfloat16,))

    def columnwise(self, ops: GroupedOperands) -> list[dict | None]:
        """TE's columnwise (RHT) casts of every expert's padded split in the harness's columnwise form
        (:func:`columnwise_to_harness`), global scales from TE's post-RHT columnwise amax."""
        call = self.prepare(ops)
        outs = self.call(call)
        return columnwise_to_harness(outs, global_scales_from_amax(outs, tuple(call.split_sections), columnwise=True))


def backends() -> list[GroupedBackend]:
    return [TeSplitQuantize(), TeSplitQuantizeRht()]
