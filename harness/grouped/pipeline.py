"""Grouped NVFP4 operands: one activation buffer for all experts, per-expert weights and scales.

:func:`grouped_quantize` quantizes the split sections of a token-sorted activation tensor into ONE
packed buffer and ONE scale buffer, with the Triton quantizer of :mod:`harness.kernels.nvfp4` run
per section on views of the shared buffers (the way a grouped quantize kernel writes them):

* expert ``e``'s section occupies packed rows ``[row_offsets[e], row_offsets[e+1])``: its tokens,
  then its *group row padding* up to ``row_align[e]`` rows;
* its scales occupy scale rows ``[sf_row_offsets[e], sf_row_offsets[e+1])``: a complete buffer of
  the scale layout for those rows (a 128x4 tile pads them further to 128 rows), so every expert's
  swizzled tiles start on a tile boundary inside the one buffer;
* k-blocks past K (up to the allocated ``k_alloc``) are the *K tail*;
* a zero-token expert occupies nothing (its offsets are equal).

:meth:`GroupedTensor.padding_map` names every scale byte's region (real, group row padding, K tail).
:func:`build_grouped_operands` adds the experts' weights (stacked ``[E, n_alloc, k_alloc/2]``,
scales ``[E, sf_rows, sf_kb]`` in 128x4, one weight global scale per expert) and the per-expert
input global scales, and writes the poison of each padding region.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, replace

import torch

from harness.format import BLOCK_SIZE, gemm_alpha, global_scale_encode_divisor
from harness.grouped.problem import GroupedPoison, GroupedProblem
from harness.kernels.nvfp4 import LEAVE, quantize_into
from harness.layouts import OperandRole, Region, ScaleLayout, padded_shape, padding_map, round_up
from harness.pipeline import QuantizedTensor, fill_read_padding


class GroupedRegion(enum.IntEnum):
    """What a byte of a grouped buffer belongs to."""
    REAL = 0
    GROUP_ROW_PAD = 1
    K_TAIL = 3


@dataclass
class GroupedTensor:
    """The grouped activation: every expert's section in one packed and one scale buffer.

    packed: uint8 [row_offsets[-1], k_alloc // 2]; scales: uint8 [sf_row_offsets[-1], sf_kb] in
    ``layout`` byte order per section; global_scales: fp32 [E] (encode divisors, one per expert);
    splits: tokens per expert; row_offsets / sf_row_offsets: E+1 prefix offsets (rows).
    """
    packed: torch.Tensor
    scales: torch.Tensor
    layout: ScaleLayout
    k: int
    splits: tuple[int, ...]
    row_offsets: tuple[int, ...]
    sf_row_offsets: tuple[int, ...]
    global_scales: torch.Tensor

    @property
    def k_alloc(self) -> int:
        return self.packed.shape[1] * 2

    @property
    def experts(self) -> int:
        return len(self.splits)

    def group(self, e: int) -> QuantizedTensor:
        """Expert ``e``'s section as a :class:`QuantizedTensor` (views into the shared buffers)."""
        r0, r1 = self.row_offsets[e], self.row_offsets[e + 1]
        s0, s1 = self.sf_row_offsets[e], self.sf_row_offsets[e + 1]
        return QuantizedTensor(self.packed[r0:r1], self.scales[s0:s1], self.layout, OperandRole.ACTIVATION,
                               self.splits[e], self.k, self.global_scales[e:e + 1])

    def padding_map(self) -> torch.Tensor:
        """int8 [sf_rows_total, sf_kb], storage order: the :class:`GroupedRegion` of every scale byte."""
        out = torch.empty(self.scales.shape, dtype=torch.int8)
        for e in range(self.experts):
            s0, s1 = self.sf_row_offsets[e], self.sf_row_offsets[e + 1]
            if s1 == s0:
                continue
            pm = padding_map(self.layout, OperandRole.ACTIVATION, self.splits[e], self.k // BLOCK_SIZE,
                             self.row_offsets[e + 1] - self.row_offsets[e], self.k_alloc // BLOCK_SIZE)
            reg = pm.regions
            sec = torch.full(reg.shape, int(GroupedRegion.REAL), dtype=torch.int8)
            sec[reg == int(Region.M_PAD)] = int(GroupedRegion.GROUP_ROW_PAD)
            sec[reg == int(Region.K_TAIL)] = int(GroupedRegion.K_TAIL)
            out[s0:s1] = sec
        return out

    def data_padding_map(self) -> torch.Tensor:
        """int8 [rows_total, k_alloc // 2]: the :class:`GroupedRegion` of every packed byte."""
        out = torch.full(self.packed.shape, int(GroupedRegion.REAL), dtype=torch.int8)
        out[:, self.k // 2:] = int(GroupedRegion.K_TAIL)
        for e in range(self.experts):
            out[self.row_offsets[e] + self.splits[e]:self.row_offsets[e + 1]] = int(GroupedRegion.GROUP_ROW_PAD)
        return out


def group_offsets(splits: tuple[int, ...], row_align: tuple[int, ...], layout: ScaleLayout,
                  k_alloc: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(row_offsets, sf_row_offsets): prefix offsets of each expert's packed rows (its split padded
    to ``row_align[e]``) and scale rows (those rows padded to the layout's row tile)."""
    rows, sf = [0], [0]
    for c, a in zip(splits, row_align):
        d = round_up(c, a)
        rows.append(rows[-1] + d)
        sf.append(sf[-1] + (padded_shape(layout, d, k_alloc // BLOCK_SIZE)[0] if d else 0))
    return tuple(rows), tuple(sf)


def grouped_quantize(x_sorted: torch.Tensor, splits: tuple[int, ...], global_scales: torch.Tensor, *,
                     layout: ScaleLayout = ScaleLayout.SWIZZLED_128x4, row_align: tuple[int, ...],
                     k_alloc: int | None = None, row_fill: int = 0, ktail_fill: int = 0,
                     data_fill: int = 0, unwritten_padding: bool = False) -> GroupedTensor:
    """Quantize token-sorted activations ``x_sorted`` [sum(splits), K] into one grouped buffer.

    Section ``e`` (rows ``sum(splits[:e])`` onward) is quantized with ``global_scales[e]`` (fp32
    [E], encode divisors).  ``row_fill``/``ktail_fill``: scale bytes of group row padding and K
    tail; ``data_fill``: packed padding bytes.  Raises ValueError when the shapes disagree.

    ``unwritten_padding``: leave the scale bytes no backend may read unwritten instead of filling
    them (for compute-sanitizer's initcheck, :mod:`harness.sanitizer`), as the dense pipeline's
    mode of the same name leaves M padding (:func:`harness.pipeline.operands_from`): every scale
    row past a section's tokens (its group row padding, up to the layout's row tile) and every
    k-block past ``k_alloc``.  The K tail of real rows gets ``ktail_fill`` and the packed buffer is
    written as in the normal mode.
    """
    layout = ScaleLayout.parse(layout)
    e_count = len(splits)
    if x_sorted.ndim != 2 or x_sorted.shape[0] != sum(splits):
        raise ValueError(f"grouped_quantize: x_sorted {tuple(x_sorted.shape)} must have sum(splits)={sum(splits)} rows")
    if len(row_align) != e_count or global_scales.numel() != e_count:
        raise ValueError(f"grouped_quantize: {e_count} splits need {e_count} row_align values and global scales, "
                         f"got {len(row_align)} and {global_scales.numel()}")
    k = x_sorted.shape[1]
    k_alloc = k if k_alloc is None else k_alloc
    if k % BLOCK_SIZE or k_alloc % BLOCK_SIZE or k_alloc < k:
        raise ValueError(f"grouped_quantize: K={k} and k_alloc={k_alloc} must be multiples of 16, k_alloc >= K")
    rows, sf = group_offsets(tuple(splits), tuple(row_align), layout, k_alloc)
    dev = x_sorted.device
    sf_kb = padded_shape(layout, 1, k_alloc // BLOCK_SIZE)[1]
    packed = torch.zeros((rows[-1], k_alloc // 2), dtype=torch.uint8, device=dev)
    scales = (torch.empty if unwritten_padding else torch.zeros)((sf[-1], sf_kb), dtype=torch.uint8, device=dev)
    gs = global_scales.reshape(-1).to(device=dev, dtype=torch.float32)
    src = 0
    for e, c in enumerate(splits):
        if c == 0:
            continue
        sec = scales[sf[e]:sf[e + 1]]
        quantize_into(x_sorted[src:src + c], gs[e:e + 1], layout, data_rows=rows[e + 1] - rows[e], data_k=k_alloc,
                      row_fill=LEAVE if unwritten_padding else row_fill,
                      ktail_fill=LEAVE if unwritten_padding else ktail_fill, data_fill=data_fill,
                      packed=packed[rows[e]:rows[e + 1]], scales=sec)
        if unwritten_padding:
            fill_read_padding(sec, layout, rows=c, kblocks=k // BLOCK_SIZE, data_rows=c,
                              data_kblocks=k_alloc // BLOCK_SIZE, row_byte=row_fill, ktail_byte=ktail_fill)
        src += c
    return GroupedTensor(packed, scales, layout, k, tuple(splits), rows, sf, gs)


@dataclass
class ExpertWeights:
    """Every expert's NVFP4 weight: packed uint8 [E, n_alloc, k_alloc/2], scales uint8
    [E, sf_rows, sf_kb] (128x4 per expert, contiguous: expert stride ``sf_rows * sf_kb`` bytes,
    where ``sf_rows`` is n_alloc rounded up to 128), global_scales fp32 [E] (encode divisors)."""
    packed: torch.Tensor
    scales: torch.Tensor
    global_scales: torch.Tensor
    n: int
    k: int
    layout: ScaleLayout = ScaleLayout.SWIZZLED_128x4

    @property
    def n_alloc(self) -> int:
        return self.packed.shape[1]

    def expert(self, e: int) -> QuantizedTensor:
        return QuantizedTensor(self.packed[e], self.scales[e], self.layout, OperandRole.WEIGHT, self.n, self.k,
                               self.global_scales[e:e + 1])


@dataclass
class GroupedOperands:
    """What a grouped backend receives.

    hidden: activations [tokens, k] in the problem's in_dtype (for backends that quantize
    themselves); a: the pipeline's grouped activation buffer (token-sorted sections, poisoned
    padding); order: int64 [sum(splits)], the token of each row of the sorted sections; slot: int64
    [sum(splits)], its top-k slot; topk_ids int32 / topk_weights fp32 [tokens, top_k];
    input_scales fp32 [E] (encode divisors the activations are quantized with); w: the experts'
    weights; alpha fp32 [E] = 1 / (input_scale_e * weight_scale_e).
    """
    problem: GroupedProblem
    poison: GroupedPoison
    hidden: torch.Tensor
    a: GroupedTensor
    order: torch.Tensor
    slot: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    input_scales: torch.Tensor
    w: ExpertWeights
    alpha: torch.Tensor
    out_dtype: torch.dtype

    @property
    def tokens(self) -> int:
        return self.problem.tokens

    def digest(self) -> str:
        """sha256 of every byte a backend receives (padding included)."""
        h = hashlib.sha256()
        for t in (self.hidden, self.a.packed, self.a.scales, self.a.global_scales, self.topk_ids, self.topk_weights,
                  self.input_scales, self.w.packed, self.w.scales, self.w.global_scales, self.alpha):
            h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def with_(self, **kw) -> "GroupedOperands":
        return replace(self, **kw)


def sort_by_expert(problem: GroupedProblem) -> tuple[list[int], list[int]]:
    """(token, slot) of every row of the token-sorted sections, expert by expert, token order inside."""
    tokens, slots = [], []
    for sec in problem.sections():
        for t, j in sec:
            tokens.append(t)
            slots.append(j)
    return tokens, slots


def input_global_scales(problem: GroupedProblem, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 [E] input (activation) encode divisors: dynamic (each section's own amax; 1.0 for an
    empty section) or static (calibrated: the amax of the section's rows of the calibration data,
    times a per-expert factor in [0.5, 1.25] from the seed, so live data may exceed it and saturate)."""
    src = hidden if problem.input_scales == "dynamic" else problem.calibration(hidden.device)
    amax = torch.zeros(problem.experts, dtype=torch.float32)
    for e, sec in enumerate(problem.sections()):
        if sec:
            rows = torch.tensor([t for t, _ in sec], device=hidden.device)
            amax[e] = src[rows].float().abs().amax().cpu()
    if problem.input_scales == "static":
        g = torch.Generator().manual_seed(int(problem.seed) + 2027)
        amax = amax * (0.5 + torch.randint(0, 4, (problem.experts,), generator=g).float() * 0.25)
    return global_scale_encode_divisor(amax).to(torch.float32).to(hidden.device)


def quantize_experts(weights: list[torch.Tensor], *, n_align: int, k_alloc: int, row_fill: int = 0,
                     ktail_fill: int = 0, data_fill: int = 0, unwritten_padding: bool = False) -> ExpertWeights:
    """Quantize each expert's weight [n, k] with its own global scale (its own amax) into stacked
    128x4 buffers; weight rows past N and k-blocks past K get the fill bytes.

    ``unwritten_padding``: leave the scale bytes past the allocated rows (``n_alloc`` rounded up to
    the 128-row tile) and past ``k_alloc`` unwritten, as the dense pipeline does for weights; rows
    [n, n_alloc) (they feed the padding columns) and the K tail are still written."""
    n, k = weights[0].shape
    dev = weights[0].device
    n_alloc = round_up(n, n_align)
    sf_rows, sf_kb = padded_shape(ScaleLayout.SWIZZLED_128x4, n_alloc, k_alloc // BLOCK_SIZE)
    packed = torch.zeros((len(weights), n_alloc, k_alloc // 2), dtype=torch.uint8, device=dev)
    scales = (torch.empty if unwritten_padding else torch.zeros)((len(weights), sf_rows, sf_kb), dtype=torch.uint8,
                                                                 device=dev)
    gs = torch.stack([global_scale_encode_divisor(w.float().abs().amax()).reshape(()) for w in weights]).to(dev)
    leave = LEAVE if unwritten_padding else None
    for e, w in enumerate(weights):
        quantize_into(w, gs[e:e + 1], ScaleLayout.SWIZZLED_128x4, data_rows=n_alloc, data_k=k_alloc,
                      row_fill=row_fill if leave is None else leave, ktail_fill=ktail_fill if leave is None else leave,
                      data_fill=data_fill, packed=packed[e], scales=scales[e])
        if unwritten_padding:
            fill_read_padding(scales[e], ScaleLayout.SWIZZLED_128x4, rows=n, kblocks=k // BLOCK_SIZE, data_rows=n_alloc,
                              data_kblocks=k_alloc // BLOCK_SIZE, row_byte=row_fill, ktail_byte=ktail_fill)
    return ExpertWeights(packed, scales, gs.to(torch.float32), n, k)


N_ALIGN = 16
"""Weight N padding of the grouped pipeline (the smallest tensor-core tile; gives an N-padding region)."""


def build_grouped_operands(problem: GroupedProblem, poison: GroupedPoison = GroupedPoison(), *,
                           device: torch.device | str = "cpu", k_align: int = 16,
                           layout: ScaleLayout = ScaleLayout.SWIZZLED_128x4,
                           unwritten_padding: bool = False) -> GroupedOperands:
    """Generate the problem's data and build every operand a grouped backend receives, with the
    poison bytes in their padding regions (the victim expert is applied by the token-isolation
    check, not here).  ``unwritten_padding``: the scale padding no backend may read is left
    unwritten (:func:`grouped_quantize`, :func:`quantize_experts`)."""
    hidden = problem.hidden(device)
    k_alloc = round_up(problem.k, k_align)
    tokens, slots = sort_by_expert(problem)
    order = torch.tensor(tokens, dtype=torch.int64, device=device)
    slot = torch.tensor(slots, dtype=torch.int64, device=device)
    a_gs = input_global_scales(problem, hidden)
    a = grouped_quantize(hidden[order], problem.splits, a_gs, layout=layout, row_align=problem.row_align,
                         k_alloc=k_alloc, row_fill=poison.group_row_pad, ktail_fill=poison.k_tail,
                         data_fill=poison.data, unwritten_padding=unwritten_padding)
    w = quantize_experts([problem.expert_weight(e, device) for e in range(problem.experts)], n_align=N_ALIGN,
                         k_alloc=k_alloc, row_fill=poison.n_pad, ktail_fill=poison.k_tail, data_fill=poison.data,
                         unwritten_padding=unwritten_padding)
    ids, weights = problem.routing(device)
    alpha = gemm_alpha(a_gs, w.global_scales).to(torch.float32).reshape(-1)
    return GroupedOperands(problem, poison, hidden, a, order, slot, ids, weights, a_gs, w, alpha,
                           problem.torch_out_dtype)
