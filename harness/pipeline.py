"""The padded NVFP4 pipeline: operands and the serving engines' padding policies.

A :class:`~harness.problem.GemmProblem` (logical shapes, data, seed) plus a backend's :class:`Requirements` and a
:class:`~harness.problem.Poison` become :class:`GemmOperands`: packed A and W, scale buffers in the layouts the
backend asked for, padded to its alignment, every padding region written with the poison byte of
that region.  Everything is built by the Triton kernels in :mod:`harness.kernels.nvfp4`, the way a
production quantize-pad-swizzle pipeline would build it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import torch

from harness.format import (
    BLOCK_SIZE,
    decode_multiplier_to_encode_divisor,
    e4m3_decode,
    e4m3_encode,
    gemm_alpha,
    global_scale_encode_divisor,
    ieee_div,
    pack_e2m1,
    reference_quantize,
)
from harness.kernels.nvfp4 import LEAVE, dequantize_from, quantize_into
from harness.layouts import OperandRole, PaddingMap, Region, ScaleLayout, offset_grid, padding_map, round_up
from harness.problem import CLEAN, GemmProblem, Poison

# ----------------------------------------------------------------------------------------------
# Operands
# ----------------------------------------------------------------------------------------------

@dataclass
class QuantizedTensor:
    """One NVFP4 operand as the pipeline hands it to a backend."""
    packed: torch.Tensor        # uint8 [rows_alloc, k_alloc // 2]
    scales: torch.Tensor        # uint8 [padded_rows, padded_kblocks], layout byte order
    layout: ScaleLayout
    role: OperandRole
    rows: int                   # logical rows (m or n)
    k: int                      # logical K
    global_scale: torch.Tensor  # fp32 [1], encode divisor

    @property
    def rows_alloc(self) -> int:
        return self.packed.shape[0]

    @property
    def k_alloc(self) -> int:
        return self.packed.shape[1] * 2

    @property
    def kblocks(self) -> int:
        return self.k // BLOCK_SIZE

    def padding_map(self) -> PaddingMap:
        return padding_map(self.layout, self.role, self.rows, self.kblocks, self.rows_alloc,
                           self.k_alloc // BLOCK_SIZE)

    def dequantize(self) -> torch.Tensor:
        """fp32 code*sf over the real region only (no padding byte is read)."""
        return dequantize_from(self.packed, self.scales, self.layout, self.rows, self.k)


@dataclass
class GemmOperands:
    a: QuantizedTensor
    w: QuantizedTensor
    alpha: torch.Tensor          # fp32 [1] = 1 / (gs_a * gs_w)
    out_dtype: torch.dtype
    problem: GemmProblem | None = None
    poison: Poison = CLEAN
    a_dense: torch.Tensor | None = None  # W4A16: the bf16/fp16 activations [m, k_alloc] (K padding 0)

    @property
    def m(self) -> int:
        return self.a.rows

    @property
    def n(self) -> int:
        return self.w.rows

    @property
    def k(self) -> int:
        return self.a.k

    def digest(self) -> str:
        """sha256 of every byte a backend receives (padding included) and alpha."""
        h = hashlib.sha256()
        for t in (self.a.packed, self.a.scales, self.w.packed, self.w.scales, self.alpha):
            h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
        if self.a_dense is not None:
            h.update(self.a_dense.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def build_gemm_operands(problem: GemmProblem, *, a_layout: ScaleLayout, w_layout: ScaleLayout,
                        n_align: int = 1, k_align: int = 16, poison: Poison = CLEAN,
                        activation: Literal["nvfp4", "bf16"] = "nvfp4",
                        device: torch.device | str = "cpu", unwritten_padding: bool = False) -> GemmOperands:
    """Generate the problem's data, then quantize, pad and swizzle it (see :func:`operands_from`)."""
    return operands_from(problem.activations(device), problem.weights(device), problem, a_layout=a_layout,
                         w_layout=w_layout, n_align=n_align, k_align=k_align, poison=poison,
                         activation=activation, unwritten_padding=unwritten_padding)


def operands_from(x: torch.Tensor, w: torch.Tensor, problem: GemmProblem, *, a_layout: ScaleLayout,
                  w_layout: ScaleLayout, n_align: int = 1, k_align: int = 16, poison: Poison = CLEAN,
                  activation: Literal["nvfp4", "bf16"] = "nvfp4", gs_a: torch.Tensor | None = None,
                  gs_w: torch.Tensor | None = None, unwritten_padding: bool = False) -> GemmOperands:
    """Quantize, pad and swizzle x [m, k] and w [n, k] with the Triton pipeline.

    N is padded to ``n_align`` (weight rows), K to ``k_align`` (both operands); scale buffers get the
    layout's own padding on top.  Poison bytes go into each padding region; K-tail scales get
    ``poison.k_tail``, which is 0 in a correct pipeline.  Global scales default to each tensor's
    own amax (dynamic); pass ``gs_a``/``gs_w`` to share one across shards or batches.

    ``unwritten_padding``: leave the scale bytes no backend may read unwritten instead of filling
    them (for compute-sanitizer's initcheck, :mod:`harness.sanitizer`): activation scale rows >= m
    (M padding) and, on both operands, scale rows beyond the allocated rows and k-blocks beyond the
    allocated K (the layout's own rounding to 128/8 rows and 4 k-blocks).  What a padded GEMM reads
    by contract is still written with the poison's bytes: weight rows [n, n_alloc) (they feed the
    padding columns), the K tail up to ``k_alloc`` and the packed data's padding.
    """
    if k_align % BLOCK_SIZE or n_align < 1:
        raise ValueError(f"operands_from: k_align={k_align} must be a multiple of 16 and n_align={n_align} >= 1")
    m, k = x.shape
    n = w.shape[0]
    device = x.device
    if gs_a is None:
        gs_a = global_scale_encode_divisor(x.float().abs().amax()).reshape(1).to(device)
    if gs_w is None:
        gs_w = global_scale_encode_divisor(w.float().abs().amax()).reshape(1).to(device)
    k_alloc = round_up(k, k_align)
    n_alloc = round_up(n, n_align)
    leave = LEAVE if unwritten_padding else None
    a_packed, a_scales = quantize_into(x, gs_a, a_layout, data_rows=m, data_k=k_alloc,
                                       row_fill=poison.m_pad if leave is None else leave,
                                       ktail_fill=poison.k_tail if leave is None else leave, data_fill=poison.data)
    w_packed, w_scales = quantize_into(w, gs_w, w_layout, data_rows=n_alloc, data_k=k_alloc,
                                       row_fill=poison.n_pad if leave is None else leave,
                                       ktail_fill=poison.k_tail if leave is None else leave, data_fill=poison.data)
    if unwritten_padding:
        fill_read_padding(a_scales, a_layout, rows=m, kblocks=k // BLOCK_SIZE, data_rows=m,
                          data_kblocks=k_alloc // BLOCK_SIZE, row_byte=poison.m_pad, ktail_byte=poison.k_tail)
        fill_read_padding(w_scales, w_layout, rows=n, kblocks=k // BLOCK_SIZE, data_rows=n_alloc,
                          data_kblocks=k_alloc // BLOCK_SIZE, row_byte=poison.n_pad, ktail_byte=poison.k_tail)
    a_q = QuantizedTensor(a_packed, a_scales, ScaleLayout.parse(a_layout), OperandRole.ACTIVATION, m, k, gs_a)
    w_q = QuantizedTensor(w_packed, w_scales, ScaleLayout.parse(w_layout), OperandRole.WEIGHT, n, k, gs_w)
    if activation == "bf16":
        a_dense = torch.zeros((m, k_alloc), dtype=x.dtype, device=device)
        a_dense[:, :k] = x
        alpha = (1.0 / gs_w).to(torch.float32).reshape(1)
    else:
        a_dense = None
        alpha = gemm_alpha(gs_a, gs_w).reshape(1).to(device)
    return GemmOperands(a_q, w_q, alpha, problem.torch_out_dtype, problem, poison, a_dense)


def operands_for(backend, problem: GemmProblem, poison: Poison = CLEAN, device="cpu",
                 a_layout: ScaleLayout | None = None, unwritten_padding: bool = False) -> GemmOperands:
    """Operands shaped the way ``backend`` declared (its first activation layout by default)."""
    req = backend.requirements
    return build_gemm_operands(problem, a_layout=a_layout or req.a_layouts[0], w_layout=req.w_layout,
                               n_align=req.n_align, k_align=req.k_align, poison=poison,
                               activation=req.activation, device=device, unwritten_padding=unwritten_padding)


def fill_read_padding(scales: torch.Tensor, layout: ScaleLayout, *, rows: int, kblocks: int, data_rows: int,
                      data_kblocks: int, row_byte: int, ktail_byte: int) -> None:
    """Write the padding scale bytes a padded GEMM reads by contract, and only those.

    In a scale buffer of ``layout`` for ``rows`` x ``kblocks`` real scales, allocated for
    ``data_rows`` x ``data_kblocks``: rows [rows, data_rows) get ``row_byte`` (weight N padding),
    k-blocks [kblocks, data_kblocks) of the real rows get ``ktail_byte`` (the K tail).  Rows >=
    ``data_rows`` and k-blocks >= ``data_kblocks`` are left as they are.
    """
    pr, pk = scales.shape
    grid = offset_grid(layout, pr, pk)
    flat = scales.view(-1)
    for r0, r1, k0, k1, byte in ((rows, data_rows, 0, data_kblocks, row_byte),
                                 (0, rows, kblocks, data_kblocks, ktail_byte)):
        if r1 > r0 and k1 > k0:
            idx = grid[r0:r1, k0:k1].reshape(-1).to(scales.device)
            flat[idx] = byte


def empirical_padding_map(x: torch.Tensor, layout: ScaleLayout, *, data_rows: int | None = None,
                          data_k: int | None = None) -> torch.Tensor:
    """Padding bytes found by experiment (the technique of vLLM issue #37563).

    Quantize the same real rows twice with two padding fillers (0 and 448) and diff the scale bytes:
    the bytes that differ are padding.  Returns a bool tensor in the buffer's storage order.
    """
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    _, s0 = quantize_into(x, gs, layout, data_rows=data_rows, data_k=data_k, row_fill=0x00, ktail_fill=0x00)
    _, s1 = quantize_into(x, gs, layout, data_rows=data_rows, data_k=data_k, row_fill=0x7E, ktail_fill=0x7E)
    return s0 != s1


# ----------------------------------------------------------------------------------------------
# Checkpoint weights and production padding policies (linear level)
# ----------------------------------------------------------------------------------------------

@dataclass
class CheckpointWeight:
    """An NVFP4 weight shard as a ModelOpt / compressed-tensors checkpoint stores it."""
    packed: torch.Tensor         # uint8 [n, k/2]
    scales: torch.Tensor         # uint8 [n, k/16] e4m3 bytes, linear layout
    weight_scale_2: torch.Tensor  # fp32 [1], decode multiplier (amax / 2688)
    input_scale: torch.Tensor | None = None  # fp32 [1], static activation decode multiplier (calibrated amax / 2688)

    @property
    def input_global_scale(self) -> torch.Tensor | None:
        """The encode divisor activations are quantized with under a static ``input_scale``
        (``1 / input_scale``, vLLM's ``input_scale_inv`` and SGLang's ``input_scale_inv`` of their
        ModelOpt NVFP4 linear methods); None when activations are scaled dynamically."""
        if self.input_scale is None:
            return None
        return decode_multiplier_to_encode_divisor(self.input_scale).reshape(1)

    @property
    def n(self) -> int:
        return self.packed.shape[0]

    @property
    def k(self) -> int:
        return self.packed.shape[1] * 2

    @property
    def global_scale(self) -> torch.Tensor:
        """The encode divisor that quantized it (1 / weight_scale_2)."""
        return (1.0 / self.weight_scale_2).to(torch.float32)

    @classmethod
    def from_dense(cls, w: torch.Tensor) -> "CheckpointWeight":
        gs = global_scale_encode_divisor(w.float().abs().amax()).reshape(1).to(w.device)
        codes, sf = reference_quantize(w, gs)
        return cls(pack_e2m1(codes), sf, (1.0 / gs).to(torch.float32))


# ----------------------------------------------------------------------------------------------
# Merged partitions (QKV, gate/up): one weight, one global scale per partition
# ----------------------------------------------------------------------------------------------

@dataclass
class MergedCheckpoint:
    """A merged-partition linear layer (QKV, gate/up) as a serving engine holds it after reading the
    checkpoint and before ``process_weights_after_loading`` merges it into one :class:`CheckpointWeight`.

    ``shards``: the checkpoint's tensors, one :class:`CheckpointWeight` per partition (split on disk,
    e.g. q_proj / k_proj / v_proj, each with its own ``weight_scale_2`` from its own amax) or one for
    the whole layer (fused on disk, e.g. Phi-4's ``qkv_proj``: one scalar ``weight_scale_2``).
    ``partitions``: the layer's logical output widths (vLLM's ``output_partition_sizes`` /
    ``logical_widths``), summing to n.  ``weight_scale_2`` / ``input_scale``: fp32 [len(partitions)],
    the engine's per-partition slot buffers exactly as its ``create_weights`` allocated them
    (vLLM / SGLang ModelOpt NVFP4 linear methods: ``PerTensorScaleParameter(torch.empty(
    len(output_partition_sizes)))``); the weight loader writes the slots, a slot it does not write
    keeps the allocation's bytes (:attr:`harness.problem.Poison.partition_slots`).  ``input_scale`` is
    None when activations are scaled dynamically; each shard then has ``input_scale`` None too.
    """
    shards: list[CheckpointWeight]
    partitions: tuple[int, ...]
    weight_scale_2: torch.Tensor         # fp32 [len(partitions)], slots as allocated
    input_scale: torch.Tensor | None = None  # fp32 [len(partitions)], slots as allocated

    @property
    def fused_on_disk(self) -> bool:
        return len(self.shards) == 1

    @property
    def n(self) -> int:
        return sum(self.partitions)

    @property
    def k(self) -> int:
        return self.shards[0].k

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor by name (``shards[i].packed``, ..., ``weight_scale_2``), for digests and guards."""
        out = {}
        for i, sh in enumerate(self.shards):
            out.update({f"shards[{i}].packed": sh.packed, f"shards[{i}].scales": sh.scales,
                        f"shards[{i}].weight_scale_2": sh.weight_scale_2})
            if sh.input_scale is not None:
                out[f"shards[{i}].input_scale"] = sh.input_scale
        out["weight_scale_2"] = self.weight_scale_2
        if self.input_scale is not None:
            out["input_scale"] = self.input_scale
        return out


def merged_checkpoint(w: torch.Tensor, partitions: tuple[int, ...], *, fused_on_disk: bool = False,
                      input_scale: torch.Tensor | None = None, slot_byte: int = 0) -> MergedCheckpoint:
    """The checkpoint of a merged layer with dense weight ``w`` [n, k] (rows in partition order) and
    the engine's slot buffers as allocated.

    Split on disk, partition i (rows of its width) is quantized with the global scale of its own amax;
    fused on disk, the whole ``w`` with one.  ``input_scale`` (fp32 [1], a static activation decode
    multiplier, or None) is stored with every shard, as ModelOpt exports one per projection.  Every
    byte of the slot buffers is ``slot_byte`` (a fresh ``torch.empty`` holds what memory held).
    """
    if sum(partitions) != w.shape[0]:
        raise ValueError(f"merged_checkpoint: partitions {list(partitions)} sum to {sum(partitions)}, "
                         f"the weight has {w.shape[0]} rows")
    if fused_on_disk:
        pieces = [w]
    else:
        starts = [sum(partitions[:i]) for i in range(len(partitions))]
        pieces = [w[s:s + width] for s, width in zip(starts, partitions)]
    shards = []
    for piece in pieces:
        sh = CheckpointWeight.from_dense(piece)
        shards.append(sh if input_scale is None else
                      CheckpointWeight(sh.packed, sh.scales, sh.weight_scale_2, input_scale.reshape(1).clone()))

    def slots() -> torch.Tensor:
        return torch.full((len(partitions) * 4,), slot_byte, dtype=torch.uint8, device=w.device).view(torch.float32)

    return MergedCheckpoint(shards, tuple(partitions), slots(), None if input_scale is None else slots())


def requantize_block_scales(scales: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Block scales (e4m3 bytes, uint8 [rows, kblocks]) re-expressed under a global decode multiplier
    ``1 / ratio`` times the one they were made for: ``e4m3(decode(sf) * ratio)`` with ``ratio`` an
    fp32 scalar tensor (a partition's ``weight_scale_2`` / the merged one, <= 1), round to nearest
    even, saturating (:func:`harness.format.e4m3_encode`).  Codes are kept; a ratio of exactly 1
    leaves the bytes unchanged."""
    if bool((ratio == 1).all()):
        return scales.clone()
    return e4m3_encode(e4m3_decode(scales) * ratio.to(device=scales.device, dtype=torch.float32).reshape(()))


def merge_partitions(weight: MergedCheckpoint, weight_scale_2: torch.Tensor,
                     input_scale: torch.Tensor | None) -> CheckpointWeight:
    """``process_weights_after_loading`` of a merged layer, given the slot buffers as its loader left
    them (fp32 [len(partitions)]): the global decode multiplier is the max over the slots and the
    static input scale the max over its slots (vLLM ``ModelOptNvFp4LinearMethod`` and SGLang
    ``ModelOptFp4LinearMethod.process_weights_after_loading``: ``layer.weight_scale_2.max()``,
    ``layer.input_scale.max()``); packed data and block scales are concatenated in partition order,
    and the block scales of partition i are requantized by ``slot_i / max``
    (:func:`requantize_block_scales`) so that every partition decodes with the merged scale.  vLLM and
    SGLang keep the block scales as they are and log a warning when the slots differ (ModelOpt
    exports fused projections with one shared amax); requantizing keeps a checkpoint with differing
    scales correct up to the rounding of the rescaled block scales.  Returns the merged weight
    ([n, k/2] packed, [n, k/16] scales, fp32 [1] scales)."""
    gmax = weight_scale_2.max().reshape(1).to(torch.float32)
    packed = torch.cat([sh.packed for sh in weight.shards])
    raw = torch.cat([sh.scales for sh in weight.shards])
    scales, start = [], 0
    for i, width in enumerate(weight.partitions):
        ratio = ieee_div(weight_scale_2[i:i + 1].to(torch.float32), gmax)
        scales.append(requantize_block_scales(raw[start:start + width], ratio))
        start += width
    ins = None if input_scale is None else input_scale.max().reshape(1).to(torch.float32)
    return CheckpointWeight(packed, torch.cat(scales), gmax, ins)


@dataclass(frozen=True)
class PaddingPolicy:
    """How a serving engine pads an NVFP4 linear layer for a GEMM kernel.

    n_align / k_align: the weight's N and K are padded to these (elements); the activation's K is
    padded to match when ``pad_activation_k``; the output is sliced back to the logical N when
    ``slice_output``, and the bias is added after the slice when ``bias_after_slice``.
    ``small_m_layout`` / ``small_m_max``: activation scale layout used for m <= small_m_max (TRT-LLM 8x4).
    """
    name: str
    n_align: int
    k_align: int
    pad_activation_k: bool = True
    slice_output: bool = True
    bias_after_slice: bool = True
    small_m_layout: ScaleLayout | None = None
    small_m_max: int = 32
    source: str = ""


VLLM_POLICY = PaddingPolicy(
    "vllm", n_align=32, k_align=32,
    source="vLLM PR #31099: weights padded in N and K to 32; activation padded in K; output sliced; bias after")
SGLANG_POLICY = PaddingPolicy(
    "sglang", n_align=32, k_align=32,
    source="SGLang PR #17300 (cutlass/cudnn): the same padding as vLLM")
SGLANG_TRTLLM_POLICY = PaddingPolicy(
    "sglang-trtllm", n_align=128, k_align=64, small_m_layout=ScaleLayout.SWIZZLED_8x4, small_m_max=32,
    source="SGLang PR #17300 (trtllm): N padded to 128, scale k-blocks to a multiple of 4 (K to 64); "
           "8x4 activation scales for m <= 32 (vLLM #37563)")
POLICIES = {p.name: p for p in (VLLM_POLICY, SGLANG_POLICY, SGLANG_TRTLLM_POLICY)}


def pad_weight(weight: CheckpointWeight, policy: PaddingPolicy, layout: ScaleLayout,
               n_fill: int = 0, k_tail_fill: int = 0) -> QuantizedTensor:
    """Pad a checkpoint weight to the policy's alignment and swizzle its scales into ``layout``."""
    from harness.kernels.nvfp4 import pad_bytes
    from harness.layouts import swizzle

    n, k = weight.n, weight.k
    n_alloc, k_alloc = round_up(n, policy.n_align), round_up(k, policy.k_align)
    packed = pad_bytes(weight.packed, n_alloc, k_alloc // 2, 0)
    lin = pad_bytes(weight.scales, n_alloc, k_alloc // BLOCK_SIZE, 0)
    lin[n:, :] = n_fill
    lin[:n, k // BLOCK_SIZE:] = k_tail_fill
    sw = swizzle(lin, layout, fill=0)
    pm = padding_map(layout, OperandRole.WEIGHT, n, k // BLOCK_SIZE, n_alloc, k_alloc // BLOCK_SIZE)
    sw[pm.mask(Region.N_PAD).to(sw.device)] = n_fill
    sw[pm.mask(Region.K_TAIL).to(sw.device)] = k_tail_fill
    return QuantizedTensor(packed, sw, layout, OperandRole.WEIGHT, n, k, weight.global_scale.reshape(1))


def quantize_activation(x2d: torch.Tensor, layout: ScaleLayout, k_alloc: int, *, m_fill: int = 0,
                        k_tail_fill: int = 0, stale_buffers: bool = False,
                        global_scale: torch.Tensor | None = None) -> QuantizedTensor:
    """Per-tensor activation quantization into a padded buffer (what a linear layer does): with the
    dynamic scale of ``x2d``'s own amax, or the static encode divisor ``global_scale`` (fp32 [1],
    a checkpoint's ``1 / input_scale``; block scales then saturate at 448 where x exceeds the
    calibration).

    With ``stale_buffers`` the buffers come from ``torch.empty`` and padding is left as it was.
    """
    m, k = x2d.shape
    # an empty batch (m=0) has amax 0, like an all-zero tensor (torch's amax of no elements raises)
    amax = x2d.float().abs().amax() if x2d.numel() else torch.zeros((), device=x2d.device)
    gs = global_scale_encode_divisor(amax).reshape(1).to(x2d.device) if global_scale is None \
        else global_scale.reshape(1).to(device=x2d.device, dtype=torch.float32)
    fill = LEAVE if stale_buffers else None
    packed, scales = quantize_into(
        x2d, gs, layout, data_rows=m, data_k=k_alloc,
        row_fill=fill if fill is not None else m_fill,
        ktail_fill=fill if fill is not None else k_tail_fill,
        data_fill=0)
    return QuantizedTensor(packed, scales, layout, OperandRole.ACTIVATION, m, k, gs)
