"""Planted-bug backends: the harness's own check that its properties catch real bug classes.

Each mutant is a small, named copy of a correct backend (its ``parent``) with ONE bug planted,
taken from a public bug report or a bug class of NVFP4-NOTES.md ("Known bug classes").  A mutant
says what it plants (``planted``, with the public origin), which property should catch it
(``expected_property``) and which backend it was copied from (``parent``); ``mutant = True`` keeps
it out of normal runs (``--nvfp4-backends mutants`` selects them).  tests/test_mutants.py hunts
every mutant with the suite's own strategies and checks that the expected property fails while the
parent passes the same minimized case.

How the bugs are planted, so that every mutant runs wherever its parent runs (GPU or CPU
interpreter) and differs from it only by the bug:

* GEMM mutants wrap the parent's ``run``: they rewrite the operands the way the buggy kernel would
  read them (e.g. copying padding-row scale bytes into the slots of the real rows that read them),
  or post-process what the parent computed the way the buggy epilogue would; a few compute the
  product themselves (split-K, partial grid).
* Linear mutants subclass :class:`~harness.backends.linear.EngineLinear` and override one step
  (``quantize_input``, ``prepare_weight``, ``finish``, ``output_shape``) or flip one field of the
  padding policy.
* Quantizer mutants are short torch quantizers following :mod:`harness.format`'s reference steps
  with the bug in one step.
* Checkpoint mutants subclass a library checkpoint convention and override one step of its
  serving-engine loader (how it reads the global scale, which nibble it takes as the even element).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from harness.backends import registry
from harness.backends.compressed_tensors_nvfp4 import CompressedTensorsCheckpoint
from harness.backends.linear import EngineLinear
from harness.backends.modelopt_nvfp4 import ModelOptCheckpoint
from harness.backends.protocol import Backend, GemmBackend, QuantizerBackend, Requirements
from harness.format import (
    BLOCK_SIZE,
    e2m1_encode,
    e4m3_decode,
    e4m3_encode,
    ieee_div,
    pack_e2m1,
)
from harness.kernels import nvfp4
from harness.kernels.gemm import launch_setup, nvfp4_tile, out_view, store_out, tile_dot
from harness.kernels.nvfp4 import (
    LAYOUT_ID,
    LEAVE,
    block_scales,
    dequantize_from,
    interpreting,
    quantize_into,
    scale_offset,
)
from harness.layouts import OperandRole, ScaleLayout, offset_grid, offsets, padded_shape, swizzle, unswizzle
from harness.pipeline import VLLM_POLICY, CheckpointWeight, QuantizedTensor

if TYPE_CHECKING:  # pragma: no cover
    from harness.backends.protocol import LoadedLinear
    from harness.env import Environment
    from harness.pipeline import GemmOperands

L = ScaleLayout
EMU_128x4 = "triton-emu-128x4"
EMU_8x4 = "triton-emu-8x4"
W4A16 = "triton-w4a16"
LINEAR_PARENT = "linear-vllm[triton-emu-128x4]"
QUANT_PARENT = "quant-triton-128x4"


class PlantedBug:
    """What every mutant declares (mixed into a Backend subclass)."""

    mutant: ClassVar[bool] = True
    #: the planted bug and its public origin
    planted: ClassVar[str] = ""
    #: the property that should fail on it
    expected_property: ClassVar[str] = ""
    #: the correct backend this mutant was copied from
    parent: ClassVar[str] = ""
    #: which oracle must catch it: "properties" (harness.selftest) or "sanitizer" (the mutants whose
    #: bug changes no result, caught only by compute-sanitizer: harness.sanitizer.run.selftest)
    oracle: ClassVar[str] = "properties"

    def describe(self) -> dict:
        d = super().describe()  # type: ignore[misc]
        d.update(planted=self.planted, expected_property=self.expected_property, parent=self.parent)
        return d


def _uninitialized(shape: tuple[int, ...], device) -> torch.Tensor:
    """A fresh uint8 ``torch.empty`` as PyTorch leaves it under ``torch.use_deterministic_algorithms(True)``
    with ``torch.utils.deterministic.fill_uninitialized_memory`` (the default): every byte 0xFF, the
    integer maximum, which is an e4m3 NaN scale.  Uninitialized memory made reproducible, so a mutant
    that forgets to write a buffer fails the same way on every run and device."""
    return torch.empty(shape, dtype=torch.uint8, device=device).fill_(0xFF)


# ----------------------------------------------------------------------------------------------
# Scale-buffer surgery shared by the GEMM mutants
# ----------------------------------------------------------------------------------------------
def _logical(t: QuantizedTensor) -> torch.Tensor:
    """The scale buffer as logical [padded_rows, padded_kblocks] bytes (a copy, padding included)."""
    return unswizzle(t.scales, t.layout).clone()


def _with_scales(t: QuantizedTensor, logical: torch.Tensor) -> QuantizedTensor:
    """``t`` with its scale buffer replaced by ``logical`` laid out back in ``t.layout``."""
    return replace(t, scales=swizzle(logical, t.layout).reshape(t.scales.shape))


def _larger_scale(own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per byte, the e4m3 scale of larger magnitude, NaN winning (how a scale that leaks in mixes)."""
    vo, vp = e4m3_decode(own), e4m3_decode(other)
    take = torch.isnan(vp) | (vp.abs() > vo.abs())
    return torch.where(take, other, own)


# ----------------------------------------------------------------------------------------------
# GEMM level
# ----------------------------------------------------------------------------------------------
class GemmMutant(PlantedBug, GemmBackend):
    """A GEMM backend that runs its parent on operands (or with an epilogue) the bug changes."""

    @property
    def base(self) -> GemmBackend:
        b = registry.get(self.parent)
        assert isinstance(b, GemmBackend)
        return b

    @property
    def requirements(self) -> Requirements:  # type: ignore[override]
        return self.base.requirements

    def support(self, env: "Environment"):
        return self.base.support(env)

    def tamper(self, ops: "GemmOperands") -> "GemmOperands":
        """The operands as the buggy kernel effectively reads them."""
        return ops

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        return self.base.run(self.tamper(ops), out)


class PadRowScales(GemmMutant):
    name = "mutant-pad-row-scales"
    parent = EMU_8x4
    expected_property = "row_isolation"
    planted = ("TRT-LLM small-m path (8x4 activation scales, m <= 32) lets padding-row scales leak into real "
               "rows (vLLM #37563 / FlashInfer #2861). Modelled on the symptoms reported there: every real row of "
               "the last, partial 8-row tile uses, per k-block, the larger-magnitude of its own scale and the "
               "scale of the tile's last (padding) row, NaN winning. Zeroed padding is harmless; finite padding "
               "changes real outputs (the report measured max_diff ~500-700); NaN padding turns real rows NaN.")
    description = "triton-emu-8x4 with padding-row activation scales leaking into real rows for m <= 32"
    SMALL_M_MAX = 32
    TILE = 8

    def tamper(self, ops: "GemmOperands") -> "GemmOperands":
        m = ops.m
        if m > self.SMALL_M_MAX or m % self.TILE == 0 or ops.a.layout is not L.SWIZZLED_8x4:
            return ops
        lg = _logical(ops.a)
        first = m - m % self.TILE
        pad_row = first + self.TILE - 1
        lg[first:m] = _larger_scale(lg[first:m], lg[pad_row].expand(m - first, -1))
        return replace(ops, a=_with_scales(ops.a, lg))


class PadZeroedOnce(PadRowScales):
    name = "mutant-pad-zeroed-once"
    parent = EMU_8x4
    expected_property = "graph_replay"
    planted = ("The TRT-LLM small-m path reads padding-row activation scales into real rows (vLLM #37563 / "
               "FlashInfer #2861, modelled as in mutant-pad-row-scales) and the layer makes that safe the way vLLM "
               "PR #38148 does, by zeroing the scale padding, but only the first time it sees a scale buffer (a "
               "buffer it has zeroed is marked and skipped). Eagerly every call brings a new buffer and the "
               "padding is always zeroed; under a CUDA graph the warm-up call zeroes the static buffer, the "
               "captured call skips it, the replay never zeroes it again, and padding written after capture "
               "(stale or NaN: vLLM #45741, the swizzled scale buffer whose padding the quantizer never writes) "
               "leaks into real rows.")
    description = "triton-emu-8x4 reading padding-row scales, zeroed only on the first call with each buffer"

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        a = ops.a
        if not getattr(a.scales, "_padding_zeroed", False):
            pr, pk = a.scales.shape
            r = torch.arange(a.rows, pr, device=a.scales.device).unsqueeze(1)
            kb = torch.arange(pk, device=a.scales.device).unsqueeze(0)
            a.scales.view(-1)[offsets(a.layout, r, kb, pk).reshape(-1)] = 0
            a.scales._padding_zeroed = True  # type: ignore[attr-defined]
        return super().run(ops, out)


class PadColScales(GemmMutant):
    name = "mutant-pad-col-scales"
    parent = EMU_128x4
    expected_property = "column_isolation"
    planted = ("N-padding analogue of FlashInfer #2861 (weights are padded in N by vLLM PR #31099 and SGLang PR "
               "#17300, to 128 on the trtllm path): N-padding weight scales leak into real columns. The leak is "
               "modelled like mutant-pad-row-scales (no public report names a mechanism): a real weight row whose "
               "partner 32 rows further on in the same 128-row tile of the 128x4 layout is N padding uses the "
               "larger-magnitude of the two scales, NaN winning. Zeroed padding is harmless; poisoned N padding "
               "changes real columns.")
    description = "triton-emu-128x4 with N-padding weight scales leaking into real columns"

    def tamper(self, ops: "GemmOperands") -> "GemmOperands":
        lg = _logical(ops.w)
        n = ops.n
        r = torch.arange(n, device=lg.device)
        partner = r + 32
        hit = ((r % 128) < 96) & (partner >= n) & (partner < lg.shape[0])
        if not bool(hit.any()):
            return ops
        rows, prt = r[hit], partner[hit]
        lg[rows] = _larger_scale(lg[rows], lg[prt])
        return replace(ops, w=_with_scales(ops.w, lg))


class Bf16GlobalScale(GemmMutant):
    name = "mutant-bf16-global-scale"
    parent = EMU_128x4
    expected_property = "reference_agreement"
    planted = ("A global scale passed as bf16 and read as fp32 (FlashInfer #3398, fixed by #3497: the quantize "
               "kernel read a bf16 global scale as float32 and mm_fp4 returned all-zero or magnitude-wrong "
               "outputs for some M). Planted on the GEMM's alpha: alpha is stored as bf16 in a 2-element buffer "
               "[alpha, 0] and the kernel loads 4 bytes as one fp32, so the bf16 bits land in the low half and "
               "alpha becomes a denormal (~1e-41): outputs collapse to ~0.")
    description = "triton-emu-128x4 reading a bf16 alpha as fp32"

    def tamper(self, ops: "GemmOperands") -> "GemmOperands":
        buf = torch.zeros(2, dtype=torch.bfloat16, device=ops.alpha.device)
        buf[0] = ops.alpha.reshape(-1)[0].to(torch.bfloat16)
        return replace(ops, alpha=buf.view(torch.float32).reshape(1))


class NibbleSwap(GemmMutant):
    name = "mutant-nibble-swap"
    parent = EMU_128x4
    expected_property = "reference_agreement"
    planted = ("Nibble order mismatch between packer and kernel: the weight's codes are decoded high nibble "
               "first, while NVFP4 stores the even element in the LOW nibble (NVFP4-NOTES 'The format'; "
               "compressed-tensors pack_fp4_to_uint8 / ModelOpt order). Swapping both operands would only permute "
               "K and cancel out, so only the weight is decoded swapped: even and odd K elements trade places.")
    description = "triton-emu-128x4 decoding the weight's nibbles in the wrong order"

    def tamper(self, ops: "GemmOperands") -> "GemmOperands":
        p = ops.w.packed
        swapped = ((p >> 4) | (p << 4)).to(torch.uint8)
        return replace(ops, w=replace(ops.w, packed=swapped))


def _wrong_128x4_offsets(padded_rows: int, padded_kb: int, device) -> torch.Tensor:
    """Offsets of the 128x4 layout with the 32-row group index off by one (``+ 1`` mod 4)."""
    r = torch.arange(padded_rows, device=device).unsqueeze(1)
    kb = torch.arange(padded_kb, device=device).unsqueeze(0)
    nk = padded_kb // 4
    return (r // 128) * nk * 512 + (kb // 4) * 512 + (r % 32) * 16 + (((r % 128) // 32 + 1) % 4) * 4 + kb % 4


class SwizzleOffByOne(GemmMutant):
    name = "mutant-swizzle-off-by-one"
    parent = EMU_128x4
    expected_property = "reference_agreement"
    planted = ("Off-by-one in the 128x4 scale swizzle offset (NVFP4-NOTES 'Scale-factor layouts'): the kernel "
               "reads scale (r, kb) at (r%32)*16 + (((r%128)//32 + 1) % 4)*4 + ... instead of "
               "(r%32)*16 + ((r%128)//32)*4 + ..., i.e. every row uses the scales of the row 32 further on in "
               "its 128-row tile (padding or another row), for both operands.")
    description = "triton-emu-128x4 with the 32-row group of the 128x4 scale offset off by one"

    @staticmethod
    def _misread(t: QuantizedTensor) -> QuantizedTensor:
        if t.layout is not L.SWIZZLED_128x4:
            return t
        pr, pk = t.scales.shape
        right = offset_grid(L.SWIZZLED_128x4, pr, pk, t.scales.device).reshape(-1)
        wrong = _wrong_128x4_offsets(pr, pk, t.scales.device).reshape(-1)
        flat = t.scales.reshape(-1)
        seen = torch.empty_like(flat)
        seen[right] = flat[wrong]  # what the kernel's correct offset now finds: the byte it misreads
        return replace(t, scales=seen.reshape(pr, pk))

    def tamper(self, ops: "GemmOperands") -> "GemmOperands":
        return replace(ops, a=self._misread(ops.a), w=self._misread(ops.w))


class RowsUnwritten(GemmMutant):
    name = "mutant-rows-unwritten"
    parent = EMU_128x4
    expected_property = "output_coverage"
    planted = ("Grid computed as m // BLOCK_M (floor) instead of cdiv(m, BLOCK_M), BLOCK_M = 16: output rows past "
               "the last full 16-row tile are never written (the tensor keeps whatever the buffer held). The "
               "classic partial-tile launch bug; output_coverage prefills the buffer with NaN to see it.")
    description = "triton-emu-128x4 launching floor(m / 16) row tiles"
    BLOCK_M = 16

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        shape = (ops.m, ops.w.rows_alloc)
        dev = ops.a.packed.device
        if out is None:
            out = torch.empty(shape, dtype=ops.out_dtype, device=dev)
        elif tuple(out.shape) != shape or out.dtype != ops.out_dtype:
            raise ValueError(f"out buffer is {tuple(out.shape)} {out.dtype}; expected {shape} {ops.out_dtype}")
        covered = ops.m // self.BLOCK_M * self.BLOCK_M
        if covered:
            self.base.run(replace(ops, a=replace(ops.a, rows=covered)), out[:covered])
        return out


class WritesPastOutput(GemmMutant):
    name = "mutant-writes-past-output"
    parent = EMU_128x4
    expected_property = "output_coverage"
    planted = ("An epilogue that stores one row past the output it was handed (store mask rows < m + 1; the "
               "under-allocated-buffer write class of vLLM PR #55456): the real rows are right and nothing "
               "raises, but the bytes after the buffer are overwritten. Planted at the torch level: after the "
               "parent's GEMM, row m is written through the output's storage, only where that storage has room "
               "for it (so the process's own memory is never corrupted; the harness's guarded buffers always "
               "have room). With an output it allocates itself, the mutant allocates m + 1 rows and returns the "
               "first m, as such a kernel's wrapper would.")
    description = "triton-emu-128x4 writing one row past the end of the output buffer it is handed"

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        shape = (ops.m, ops.w.rows_alloc)
        if out is None:
            own = torch.empty((ops.m + 1, shape[1]), dtype=ops.out_dtype, device=ops.a.packed.device)
            out = own[:ops.m]
        res = self.base.run(ops, out)
        row = res.numel()
        esize = res.element_size()
        if res.is_contiguous() and res.untyped_storage().nbytes() >= (res.storage_offset() + row + shape[1]) * esize:
            past = torch.empty(0, dtype=res.dtype, device=res.device).set_(
                res.untyped_storage(), res.storage_offset() + row, (1, shape[1]))
            past.copy_(res[-1:] if ops.m else torch.zeros_like(past))
        return res


class Nondeterministic(GemmMutant):
    name = "mutant-nondeterministic"
    parent = EMU_128x4
    expected_property = "determinism"
    planted = ("Split-K reduced by atomic adds straight into the bf16/fp16 output (each split's alpha-scaled partial "
               "sum is rounded to the output dtype and added in arrival order, rounding again): the arrival order "
               "of atomics differs between calls, so the bits do. Modelled reproducibly: 4 K splits whose order "
               "is rotated by a per-call counter, so two consecutive calls never share an order. With fewer than "
               "3 non-empty splits (K < 48) addition order cannot change the result. (A split-K that reduces in "
               "fp32 would change bf16 outputs only rarely; the output-dtype atomics make it visible.)")
    description = "split-K GEMM with atomics into the output dtype, arrival order varying per call"
    SPLITS = 4

    def __init__(self) -> None:
        self._calls = itertools.count()

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        a, w = ops.a, ops.w
        if a.k_alloc != w.k_alloc:
            raise ValueError(f"A and W are allocated with different K ({a.k_alloc} vs {w.k_alloc})")
        # code * sf over the K the kernel reads (tail included), exact in fp32
        a_deq = dequantize_from(a.packed, a.scales, a.layout, a.rows, a.k_alloc)
        w_deq = dequantize_from(w.packed, w.scales, w.layout, w.rows_alloc, w.k_alloc)
        kb = a.k_alloc // BLOCK_SIZE
        chunks = [c for c in torch.arange(kb).tensor_split(self.SPLITS) if c.numel()]
        alpha = ops.alpha.reshape(()).to(device=a_deq.device, dtype=torch.float32)
        partials = []
        for c in chunks:
            cols = slice(int(c[0]) * BLOCK_SIZE, (int(c[-1]) + 1) * BLOCK_SIZE)
            partials.append((alpha * (a_deq[:, cols] @ w_deq[:, cols].T)).to(ops.out_dtype))
        turn = next(self._calls) % len(partials)
        acc = torch.zeros((ops.m, w.rows_alloc), dtype=ops.out_dtype, device=a_deq.device)
        for i in range(len(partials)):
            acc = (acc.float() + partials[(i + turn) % len(partials)].float()).to(ops.out_dtype)
        if out is None:
            return acc
        out.copy_(acc)
        return out


class Fp16Epilogue(GemmMutant):
    name = "mutant-w4a16-fp16-epilogue"
    parent = W4A16
    expected_property = "reference_agreement"
    planted = ("Marlin NVFP4 epilogue order (vLLM #37135, root cause A): the fp32 accumulator is cast to fp16 "
               "before the global scale (alpha = 1/gs_w, typically 1e-3..1e-1) is applied: raw sums beyond 65504 "
               "overflow to inf, small ones lose bits in fp16's subnormal range, and every output is rounded "
               "twice.")
    description = "triton-w4a16 casting the accumulator to fp16 before applying alpha"

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        one = torch.ones(1, dtype=torch.float32, device=ops.alpha.device)
        raw = self.base.run(replace(ops, alpha=one, out_dtype=torch.float16))
        alpha = ops.alpha.reshape(()).to(device=raw.device, dtype=torch.float32)
        res = (raw.float() * alpha).to(ops.out_dtype)
        if out is None:
            return res
        out.copy_(res)
        return out


# ----------------------------------------------------------------------------------------------
# Linear level (EngineLinear with the vLLM policy over triton-emu-128x4)
# ----------------------------------------------------------------------------------------------
class LinearMutant(PlantedBug, EngineLinear):
    parent = LINEAR_PARENT
    policy_changes: ClassVar[dict] = {}
    gemm_backend: ClassVar[str] = EMU_128x4

    def __init__(self) -> None:
        policy = replace(VLLM_POLICY, **self.policy_changes) if self.policy_changes else VLLM_POLICY
        super().__init__(policy, self.gemm_backend, name=self.name)
        self.description = self.summary

    summary: ClassVar[str] = ""


class KTailUninit(LinearMutant):
    name = "mutant-ktail-uninit"
    expected_property = "reference_agreement"
    planted = ("Activation scale buffer from torch.empty with its K tail never written (quantize with "
               "ktail_fill=LEAVE): TP4 K=464 padded to 480 reads the padded k-block's scale from uninitialized "
               "memory -> NaN (vLLM PR #31099; torch.empty vs zeros flips #27439, #45741, #53568). The zero data "
               "of the tail makes a finite stale byte harmless (0 * sf = 0); it bites when the byte is NaN, as it "
               "is under CUDA graphs. To be deterministic on the CPU and the GPU the buffer starts as PyTorch's "
               "fill_uninitialized_memory leaves a fresh uint8 torch.empty under deterministic mode: 0xFF (e4m3 "
               "NaN). Caught whenever K is not a multiple of the policy's k_align (32).")
    summary = "linear-vllm over triton-emu-128x4 whose activation scale buffer's K tail is uninitialized"

    def quantize_input(self, x2d: torch.Tensor, layout: ScaleLayout, k_alloc: int,
                       global_scale: torch.Tensor | None = None):
        from harness.format import global_scale_encode_divisor

        m, k = x2d.shape
        gs = global_scale_encode_divisor(x2d.float().abs().amax()).reshape(1).to(x2d.device) \
            if global_scale is None else global_scale.reshape(1).to(x2d.device)
        scales = _uninitialized(padded_shape(layout, m, k_alloc // BLOCK_SIZE), x2d.device)
        packed, scales = quantize_into(x2d, gs, layout, data_rows=m, data_k=k_alloc, row_fill=0,
                                       ktail_fill=LEAVE, data_fill=0, scales=scales)
        return QuantizedTensor(packed, scales, layout, OperandRole.ACTIVATION, m, k, gs)


class NoSlice(LinearMutant):
    name = "mutant-no-slice"
    expected_property = "reference_agreement"
    planted = ("Weights padded in N but the output not sliced back to the logical N (NVFP4-NOTES bug class 3; "
               "vLLM PR #31099 slices after the GEMM). The bias was padded with zeros at load time along with the "
               "weight, so nothing raises: the layer returns [..., n_padded] and breaks the backend contract.")
    summary = "linear-vllm over triton-emu-128x4 that never slices the padded N off"

    def finish(self, out: torch.Tensor, n: int, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is not None:
            out = out + F.pad(bias, (0, out.shape[-1] - n)).to(out.dtype)
        return out


class BiasBeforeSlice(LinearMutant):
    name = "mutant-bias-before-slice"
    expected_property = "reference_agreement"
    planted = ("Bias added before slicing off the padded N columns (NVFP4-NOTES bug class 5; caught in review of "
               "vLLM PR #31099). To broadcast over [m, n_padded] the bias is padded with "
               "F.pad(bias, (n_padded - n, 0)), whose (left, right) order puts the zeros on the left: real "
               "column j gets bias[j - (n_padded - n)].")
    summary = "linear-vllm over triton-emu-128x4 adding a misaligned padded bias before the slice"

    def finish(self, out: torch.Tensor, n: int, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is not None:
            out = out + F.pad(bias, (out.shape[-1] - n, 0)).to(out.dtype)
        return out[:, :n]


class ActNotKPadded(LinearMutant):
    name = "mutant-act-not-k-padded"
    expected_property = "reference_agreement"
    planted = ("Weights padded in K (to 32) but the activations not (NVFP4-NOTES bug class 4; vLLM PR #31099 pads "
               "the packed activation in K): the GEMM gets A with K=k and W with K=k_padded and raises a shape "
               "mismatch on a call the layer declared supported. The policy's pad_activation_k is off.")
    summary = "linear-vllm over triton-emu-128x4 that does not pad the activations in K"
    policy_changes = {"pad_activation_k": False}


class ThreeDShape(LinearMutant):
    name = "mutant-3d-shape"
    expected_property = "reference_agreement"
    planted = ("Output shape computed as [x.shape[0], n] instead of [*x.shape[:-1], n] (NVFP4-NOTES bug class 6): "
               "right for 2-D inputs; a 3-D input [batch, seq, k] gets a reshape error (seq > 1) or a "
               "[batch, n] result (seq = 1).")
    summary = "linear-vllm over triton-emu-128x4 that shapes the output [x.shape[0], n]"

    def output_shape(self, x: torch.Tensor, n: int) -> tuple[int, ...]:
        return (x.shape[0], n)


class StaticActScale(LinearMutant):
    name = "mutant-w4a16-static-act-scale"
    expected_property = "reference_agreement"
    planted = ("A static activation global scale derived from the weight's, 1/weight_gs (= weight_scale_2, "
               "amax_w/2688), instead of the dynamic 2688/amax(x) (NVFP4-NOTES bug class 7), on the W4A4 "
               "emulation path: activations are quantized with a tiny encode divisor, block scales underflow "
               "e4m3 and outputs collapse towards 0. alpha is computed consistently from the wrong scale.")
    summary = "linear-vllm over triton-emu-128x4 quantizing activations with 1/weight_gs"

    def prepare_weight(self, weight: CheckpointWeight, gemm: GemmBackend):
        self._static_gs = (1.0 / weight.global_scale).to(torch.float32).reshape(1)
        return super().prepare_weight(weight, gemm)

    def quantize_input(self, x2d: torch.Tensor, layout: ScaleLayout, k_alloc: int,
                       global_scale: torch.Tensor | None = None):
        m, k = x2d.shape
        gs = self._static_gs.to(x2d.device)
        packed, scales = quantize_into(x2d, gs, layout, data_rows=m, data_k=k_alloc)
        return QuantizedTensor(packed, scales, layout, OperandRole.ACTIVATION, m, k, gs)


class GlobalScaleConvention(LinearMutant):
    name = "mutant-global-scale-convention"
    expected_property = "reference_agreement"
    planted = ("The two global-scale conventions mixed (NVFP4-NOTES 'The format'): the checkpoint's "
               "weight_scale_2 (ModelOpt / torchao decode multiplier, amax/2688) is handed to the GEMM where the "
               "encode divisor 2688/amax is expected, so alpha is off by a factor gs_w^2.")
    summary = "linear-vllm over triton-emu-128x4 treating weight_scale_2 as the encode divisor"

    def prepare_weight(self, weight: CheckpointWeight, gemm: GemmBackend):
        w = super().prepare_weight(weight, gemm)
        return replace(w, global_scale=weight.weight_scale_2.to(torch.float32).reshape(1))


class InputScaleMismatch(LinearMutant):
    name = "mutant-input-scale-mismatch"
    expected_property = "reference_agreement"
    planted = ("The activations are quantized with a static scale that is not the one alpha is computed from (TRT-LLM "
               "PR #11322: one expert's static input_scale used for every expert; the dense analogue is another "
               "layer's input_scale). Modelled on a ModelOpt checkpoint with a static input_scale: the layer "
               "quantizes x with its own dynamic amax (the scale of another tensor, here the one every batch "
               "happens to have) while alpha = input_scale * weight_scale_2 as the checkpoint says, so every "
               "output is off by the calibration ratio. Invisible with dynamic scales; at ratio exactly 1 the "
               "two scales still differ by the rounding of 1/input_scale, which moves block scales and codes "
               "across rounding points.")
    summary = "linear-vllm over triton-emu-128x4 quantizing x with one scale and computing alpha from another"

    def quantize_input(self, x2d: torch.Tensor, layout: ScaleLayout, k_alloc: int,
                       global_scale: torch.Tensor | None = None):
        a = super().quantize_input(x2d, layout, k_alloc)  # dynamic: not the scale alpha will use
        return a if global_scale is None else replace(a, global_scale=global_scale.reshape(1).to(x2d.device))


class StaticScaleIgnored(LinearMutant):
    name = "mutant-static-scale-ignored"
    expected_property = "input_isolation"
    planted = ("A layer that ignores the checkpoint's static input_scale and quantizes every batch with its own "
               "dynamic amax, computing alpha consistently from it: finite batches come out within quantization "
               "noise of the static path, but one NaN/Inf token sets the batch's amax and so every row's scale, "
               "and the whole batch turns NaN (what static scales exist to prevent; the calibrated-scale "
               "class of TRT-LLM PR #11322).")
    summary = "linear-vllm over triton-emu-128x4 quantizing activations dynamically despite a static input_scale"

    def quantize_input(self, x2d: torch.Tensor, layout: ScaleLayout, k_alloc: int,
                       global_scale: torch.Tensor | None = None):
        return super().quantize_input(x2d, layout, k_alloc)


class FusedScaleOneSlot(LinearMutant):
    name = "mutant-fused-scale-one-slot"
    expected_property = "partition_isolation"
    planted = ("A fused-on-disk checkpoint's scalar weight_scale_2 and input_scale (e.g. Phi-4's qkv_proj, "
               "GLM-4.1's gate_up_proj) written into slot 0 of the engine's per-partition scale buffers only; the "
               "other slots keep what torch.empty left, and process_weights_after_loading takes the max over "
               "every slot (SGLang PR #29151, the fix: copy the scalar into every slot; SGLang PR #14102 and vLLM "
               "issue #39764 / PR #35693 are the same class: a stale slot that is NaN or above the real scale "
               "becomes the layer's global scale). Correct for checkpoints split on disk (every slot loaded). "
               "A NaN or huge stale slot becomes the merged scale; a small one (0 bytes) leaves the max right but, "
               "since this engine re-expresses each partition's block scales by slot / max, zeroes the "
               "partitions behind it.")
    summary = "linear-vllm over triton-emu-128x4 whose loader writes a fused checkpoint's scale into slot 0 only"

    def load_partition_scales(self, weight):
        if not weight.fused_on_disk:
            return super().load_partition_scales(weight)
        (shard,) = weight.shards
        ws2 = weight.weight_scale_2.clone()
        ws2[0] = shard.weight_scale_2.reshape(())
        ins = None
        if weight.input_scale is not None:
            ins = weight.input_scale.clone()
            ins[0] = shard.input_scale.reshape(())
        return ws2, ins


def _read_as_dense(x: torch.Tensor) -> torch.Tensor:
    """What a kernel that takes ``x.data_ptr()`` and assumes a dense row-major tensor reads: the
    elements from ``x``'s first one on, in x's shape with contiguous strides (the storage around a
    view included).  Equal to ``x`` when it is contiguous."""
    strides, acc = [], 1
    for size in reversed(x.shape):
        strides.append(acc)
        acc *= size
    return x.as_strided(tuple(x.shape), tuple(reversed(strides)))


DENSE_READ_BUG = ("reads x.data_ptr() as a dense row-major tensor and ignores x's strides (vLLM PR #49092: a "
                  "column slice of a wider tensor, the Q/K/V part of a fused projection's output, quantized as if "
                  "dense: row 0 right, every later row read from the wrong columns and rows, nothing raised). "
                  "Right for contiguous inputs, also those at a storage offset; wrong for a column slice, a "
                  "column-major (transposed-back) view and a batch with a gap.")


class DenseReadLinear(LinearMutant):
    name = "mutant-linear-dense-read"
    expected_property = "layout_invariance"
    planted = "A linear layer whose activation path " + DENSE_READ_BUG
    summary = "linear-vllm over triton-emu-128x4 reading its input as if it were contiguous"

    def run(self, x: torch.Tensor, weight: CheckpointWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
        return super().run(_read_as_dense(x), weight, bias)


class ScalePerInputBuffer(LinearMutant):
    name = "mutant-scale-per-input-buffer"
    expected_property = "graph_replay"
    planted = ("The dynamic activation global scale (2688 / amax(x)) computed on the first call with an input "
               "buffer and cached for that buffer (kept while the buffer lives), to save the amax reduction on "
               "later calls. Eagerly every call brings a new buffer and the scale is always the batch's own; "
               "under a CUDA graph the input buffer is static, the warm-up call computes the scale of the "
               "capture-time data, the captured call reuses it, and every replay quantizes new tokens with that "
               "stale scale (the graph records the scale tensor's address: FlashInfer PR #3740 review; NVFP4 "
               "linear layers wrong only under CUDA graph capture: vLLM #54997). The checkpoint's static "
               "input_scale path is unaffected.")
    summary = "linear-vllm over triton-emu-128x4 caching the dynamic activation scale per input buffer"

    def __init__(self) -> None:
        super().__init__()
        self._cached: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def quantize_input(self, x2d: torch.Tensor, layout: ScaleLayout, k_alloc: int,
                       global_scale: torch.Tensor | None = None):
        from harness.format import global_scale_encode_divisor

        if global_scale is None:
            buf = x2d._base if x2d._base is not None else x2d  # the allocation every view of it shares
            hit = self._cached.get(id(buf))
            if hit is not None and hit[0]() is buf:
                global_scale = hit[1]
            else:
                self._cached = {k: v for k, v in self._cached.items() if v[0]() is not None}
                global_scale = global_scale_encode_divisor(x2d.float().abs().amax()).reshape(1).to(x2d.device)
                self._cached[id(buf)] = (weakref.ref(buf), global_scale)
        return super().quantize_input(x2d, layout, k_alloc, global_scale)


# ----------------------------------------------------------------------------------------------
# Quantizer level
# ----------------------------------------------------------------------------------------------
class QuantizerMutant(PlantedBug, QuantizerBackend):
    parent = QUANT_PARENT
    expected_property = "quantizer_agreement"
    layout = L.SWIZZLED_128x4
    requirements = Requirements(runs_on_cpu=True, a_layouts=(L.SWIZZLED_128x4,), w_layout=L.SWIZZLED_128x4)


def _bf16_truncate(x: torch.Tensor) -> torch.Tensor:
    """fp32 values cut to bf16's 8 significant bits (round toward zero), kept as fp32."""
    return (x.float().contiguous().view(torch.int32) & -65536).view(torch.float32)


def _element_scale(sf: torch.Tensor, gs: torch.Tensor) -> torch.Tensor:
    """The correct multiplier of a block's elements, ``1 / (fp32(sf) / gs)`` (IEEE divisions)."""
    return ieee_div(1.0, ieee_div(sf, gs))


def _quantize_blocks(x: torch.Tensor, global_scale: torch.Tensor, layout: ScaleLayout, *,
                     encode_scale=e4m3_encode, element_scale=_element_scale) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`harness.format.reference_quantize`'s steps as a quantizer returns them (packed codes
    uint8 [rows, K/2]; scale bytes in ``layout``, padding 0), with the two steps the quantizer mutants
    plant their bugs in replaceable: ``encode_scale`` (fp32 block scales ``gs * amax / 6`` -> e4m3
    bytes) and ``element_scale(sf, gs)`` (decoded block scales, fp32 global scale -> the multiplier
    of the block's elements; where sf is 0 the multiplier is 0 whatever it returns)."""
    rows, k = x.shape
    xf = x.float().reshape(rows, k // BLOCK_SIZE, BLOCK_SIZE)
    gs = global_scale.reshape(()).to(device=x.device, dtype=torch.float32)
    sf_byte = encode_scale(ieee_div(gs * xf.abs().amax(dim=-1), 6.0))
    sf = e4m3_decode(sf_byte)
    inv = torch.where(sf == 0, torch.zeros_like(sf), element_scale(sf, gs))
    codes = e2m1_encode(xf * inv.unsqueeze(-1)).reshape(rows, k)
    return pack_e2m1(codes), swizzle(sf_byte, layout, fill=0)


class FastMathQuantizer(QuantizerMutant):
    name = "mutant-fast-math-quantizer"
    planted = ("Approximate reciprocal in the quantizer's element scale, x * rcp(sf / gs) (TransformerEngine "
               "NVTE_USE_FAST_MATH; NVFP4-NOTES bug class 10). The real rcp.approx.ftz is within about one fp32 "
               "ulp and only flips codes at exact e2m1 ties, which quantizer_agreement accepts as legitimate; "
               "this mutant plants a coarser approximation (the reciprocal truncated to bf16, relative error up "
               "to 2^-8, as a bf16 fast path would give) so that non-tie codes near a rounding threshold flip.")
    description = "torch NVFP4 quantizer with a bf16-precision reciprocal for the element scale"

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _quantize_blocks(x, global_scale, self.layout,
                                element_scale=lambda sf, gs: _bf16_truncate(1.0 / (sf / gs)))


class NonSaturatingQuantizer(QuantizerMutant):
    name = "mutant-quantizer-no-satfinite"
    planted = ("Block scale converted to e4m3 without saturation (cvt.rn.e4m3x2.f32 without .satfinite, or a "
               "hand-written encoder without the clamp): where the activations exceed a static (calibrated) "
               "scale, gs*amax_block/6 rounds past 448 and the scale byte becomes 0x7F, e4m3's NaN, instead of "
               "saturating at 448 (0x7E); the block's codes follow the NaN scale. Correct for every dynamic "
               "scale (block scales never exceed 448 there), so only the calibration dimension shows it "
               "(TRT-LLM PR #11322 is the static-scale bug class; NVFP4-NOTES 'The format').")
    description = "torch NVFP4 quantizer whose block scales overflow to e4m3 NaN instead of saturating at 448"

    @staticmethod
    def _encode_without_satfinite(v: torch.Tensor) -> torch.Tensor:
        # round-to-nearest-even past 448: [464, inf) rounds to 480, whose e4m3fn encoding is 0x7F (NaN)
        return torch.where(v >= 464.0, torch.full_like(v, 0x7F, dtype=torch.uint8), e4m3_encode(v))

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _quantize_blocks(x, global_scale, self.layout, encode_scale=self._encode_without_satfinite)


class NanPaddingQuantizer(QuantizerMutant):
    name = "mutant-quantizer-nan-padding"
    parent = QUANT_PARENT
    planted = ("A quantizer that writes every real byte right but leaves NaN (0x7F) in the scale buffer's padding "
               "rows, as a torch.empty buffer holding a previous NaN does (vLLM #37563: the padding rows of "
               "the swizzled activation scales were never zeroed, and TRT-LLM's 8x4 GEMM path reads them into "
               "real rows; vLLM's fix zeroes them). Its real bytes equal the parent's; only the padding "
               "contract sees it (any m that is not a multiple of the layout's 128-row tile).")
    description = "quant-triton-128x4 filling the scale buffer's padding rows with e4m3 NaN"

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, k = x.shape
        return quantize_into(x, global_scale.reshape(1).to(device=x.device, dtype=torch.float32), self.layout,
                             data_rows=rows, data_k=k, row_fill=0x7F, ktail_fill=0, data_fill=0)


class CompiledOutQuantizer(QuantizerMutant):
    name = "mutant-quantizer-compiled-out"
    planted = ("A quantizer kernel compiled out on an unsupported architecture returns its torch.empty outputs "
               "unwritten, without an error (flashinfer.fp4_quantize on SM90, seen on this project's H200; "
               "NVFP4-NOTES bug class 12): codes and scales are whatever memory held. On a real device that can "
               "even be a previous call's correct bytes; to be deterministic the mutant's fresh buffers hold what "
               "PyTorch's fill_uninitialized_memory writes into uint8 torch.empty under deterministic mode, 0xFF "
               "(codes -6, scales e4m3 NaN).")
    description = "a quantizer that allocates its outputs and never launches the kernel"

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, k = x.shape
        packed = _uninitialized((rows, k // 2), x.device)
        scales = _uninitialized(padded_shape(self.layout, rows, k // BLOCK_SIZE), x.device)
        return packed, scales


class DenseReadQuantizer(QuantizerMutant):
    name = "mutant-quantizer-dense-read"
    expected_property = "layout_invariance"
    planted = "The parent's quantize kernel launched the way a wrapper that " + DENSE_READ_BUG
    description = "quant-triton-128x4 reading its input as if it were contiguous"

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, k = x.shape
        return quantize_into(_read_as_dense(x), global_scale.reshape(1).to(device=x.device, dtype=torch.float32),
                             self.layout, data_rows=rows, data_k=k, row_fill=0, ktail_fill=0, data_fill=0)


# ----------------------------------------------------------------------------------------------
# Checkpoint level (a serving engine's loader of a library's NVFP4 checkpoint)
# ----------------------------------------------------------------------------------------------
class GlobalScaleInvertedLoader(PlantedBug, CompressedTensorsCheckpoint):
    name = "mutant-ckpt-global-scale-inverted"
    parent = "ckpt-compressed-tensors"
    expected_property = "checkpoint_convention"
    planted = ("Global-scale convention inverted in a checkpoint loader (NVFP4-NOTES 'The format': mixing the "
               "encode divisor and the decode multiplier is a classic bug): a compressed-tensors checkpoint's "
               "weight_global_scale (an encode divisor, 448*6/amax; vLLM's CompressedTensorsW4A4Fp4 inverts it, "
               "'CT stores as divisors') is read the way ModelOpt's weight_scale_2 is read, as the decode "
               "multiplier. The weight comes out scaled by gs^2.")
    description = "compressed-tensors checkpoint loaded with weight_global_scale taken as the decode multiplier"

    def weight_decode(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return tensors["weight_global_scale"].max().to(torch.float32).reshape(1)


class NibbleOrderLoader(PlantedBug, ModelOptCheckpoint):
    name = "mutant-ckpt-nibble-order"
    parent = "ckpt-modelopt"
    expected_property = "checkpoint_convention"
    planted = ("Nibble-order slip in a checkpoint loader: the loader swaps the two e2m1 codes of every byte "
               "((w >> 4) | (w << 4)) because it assumes the checkpoint stores the even element in the HIGH "
               "nibble, as a loader ported from another packer's convention does; ModelOpt (and "
               "compressed-tensors) already store it in the low nibble, the order the kernels read "
               "(NVFP4-NOTES 'The format'). Even and odd K elements trade places.")
    description = "ModelOpt checkpoint loaded with the nibbles of every byte swapped"

    def packed_for_kernel(self, packed: torch.Tensor) -> torch.Tensor:
        return ((packed >> 4) | (packed << 4)).to(torch.uint8)


class ScalesSwizzledTwiceLoader(PlantedBug, ModelOptCheckpoint):
    name = "mutant-ckpt-scales-swizzled-twice"
    parent = "ckpt-modelopt"
    expected_property = "checkpoint_convention"
    planted = ("Block scales swizzled twice: the loader lays weight_scale out in the 128x4 layout (as vLLM's "
               "ModelOpt method does with swizzle_blockscale) and the kernel-preparation step swizzles the result "
               "again, as happens when a checkpoint or an earlier step already stored swizzled scales. In logical "
               "terms the kernel reads the once-swizzled buffer as if it were linear: scale (r, kb) comes from byte "
               "[r, kb] of swizzle(scales).")
    description = "ModelOpt checkpoint whose block scales reach the kernel swizzled twice"

    def load(self, tensors: dict[str, torch.Tensor]) -> "LoadedLinear":
        loaded = super().load(tensors)
        n, kb = loaded.scales.shape
        once = swizzle(loaded.scales.view(torch.uint8), L.SWIZZLED_128x4, fill=0)
        return replace(loaded, scales=once[:n, :kb].contiguous())


# ----------------------------------------------------------------------------------------------
# Mutants only compute-sanitizer catches
# ----------------------------------------------------------------------------------------------
# Their bugs change no output byte a property looks at (a value read and discarded, a product
# masked away, a store outside every buffer the harness reads back), so the poison properties
# cannot see them; harness.sanitizer.run.selftest runs each one's declared case under its tool.  They
# are real Triton kernels and run on a CUDA GPU only: under the CPU interpreter an access outside
# a buffer touches host memory, and there is nothing to sanitize.
@triton.jit
def _quantize_full_row_tiles_kernel(x_ptr, stride_xr, gs_ptr, packed_ptr, stride_pr, scale_ptr, rows, kblocks, sf_kb,
                                    LAYOUT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_KB: tl.constexpr):
    """quantize_into's arithmetic, with the planted bug: every row of the tile is loaded, rows past
    ``rows`` included (only the K range is masked); those rows are computed and never stored."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    kb = tl.program_id(1) * BLOCK_KB + tl.arange(0, BLOCK_KB)
    k = tl.program_id(1) * BLOCK_KB * 16 + tl.arange(0, BLOCK_KB * 16)
    x = tl.load(x_ptr + r[:, None].to(tl.int64) * stride_xr + k[None, :], mask=(k < kblocks * 16)[None, :],
                other=0.0).to(tl.float32)
    x3 = tl.reshape(x, (BLOCK_R, BLOCK_KB, 16))
    sf_code, inv = block_scales(tl.max(tl.abs(x3), axis=2), tl.load(gs_ptr))
    qe, qo = tl.split(tl.reshape(x3 * inv[:, :, None], (BLOCK_R, BLOCK_KB * 8, 2)))
    byte = nvfp4.e2m1_encode(qe) | (nvfp4.e2m1_encode(qo) << 4)
    col = tl.program_id(1) * BLOCK_KB * 8 + tl.arange(0, BLOCK_KB * 8)
    tl.store(packed_ptr + r[:, None].to(tl.int64) * stride_pr + col[None, :], byte.to(tl.uint8),
             mask=(r[:, None] < rows) & (col[None, :] < kblocks * 8))
    off = scale_offset(r[:, None].to(tl.int64), kb[None, :], sf_kb, LAYOUT)
    tl.store(scale_ptr + off, sf_code.to(tl.uint8), mask=(r[:, None] < rows) & (kb[None, :] < kblocks))


@triton.jit(do_not_specialize=["a_sf_kb", "a_sf_rows", "w_sf_kb", "m", "n_alloc", "kb_alloc"])
def _gemm_masked_late_kernel(
    a_ptr, stride_am, a_sf_ptr, a_sf_kb, a_sf_rows,
    w_ptr, stride_wn, w_sf_ptr, w_sf_kb,
    alpha_ptr, out_ptr, stride_om, stride_on,
    m, n_alloc, kb_alloc,
    A_LAYOUT: tl.constexpr, W_LAYOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KB_STEP: tl.constexpr, DOT_FP32: tl.constexpr,
    OUT_BF16: tl.constexpr, READ_PAD_SCALES: tl.constexpr, EXTRA_ROWS: tl.constexpr,
):
    """The emulation GEMM (harness.backends.triton_emulation) with one of two planted bugs:
    READ_PAD_SCALES loads activation scales of every row of the tile that the scale buffer holds
    (M padding included) and relies on the zero codes and the store mask to drop those rows;
    EXTRA_ROWS stores that many rows past m."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < m
    n_ok = rn < n_alloc
    sf_rows_ok = (rm < a_sf_rows) if READ_PAD_SCALES else m_ok
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb0 in range(0, kb_alloc, KB_STEP):
        j = tl.arange(0, KB_STEP * 8)
        col_ok = (kb0 + j // 8) < kb_alloc
        byte = tl.load(a_ptr + rm[:, None] * stride_am + (kb0 * 8 + j)[None, :],
                       mask=m_ok[:, None] & col_ok[None, :], other=0).to(tl.int32)
        kb = kb0 + tl.arange(0, KB_STEP)
        sf = tl.load(a_sf_ptr + scale_offset(rm[:, None], kb[None, :], a_sf_kb, A_LAYOUT),
                     mask=sf_rows_ok[:, None] & (kb < kb_alloc)[None, :], other=0).to(tl.int32)
        s = tl.reshape(tl.broadcast_to(nvfp4.e4m3_decode(sf)[:, :, None], (BLOCK_M, KB_STEP, 8)), (BLOCK_M, KB_STEP * 8))
        a_even = nvfp4.e2m1_decode(byte & 0xF) * s
        a_odd = nvfp4.e2m1_decode(byte >> 4) * s
        if not DOT_FP32:
            a_even = a_even.to(tl.bfloat16)
            a_odd = a_odd.to(tl.bfloat16)
        w_even, w_odd = nvfp4_tile(w_ptr, stride_wn, w_sf_ptr, w_sf_kb, rn, n_ok, kb0, kb_alloc,
                                    W_LAYOUT, BLOCK_N, KB_STEP, DOT_FP32)
        acc = tile_dot(a_even, tl.trans(w_even), acc, DOT_FP32)
        acc = tile_dot(a_odd, tl.trans(w_odd), acc, DOT_FP32)
    acc = acc * tl.load(alpha_ptr)
    store_out(out_ptr, stride_om, stride_on, rm, rn, (rm < m + EXTRA_ROWS)[:, None] & n_ok[None, :], acc, OUT_BF16)


class SanitizerOnly:
    """What a mutant only compute-sanitizer catches declares besides :class:`PlantedBug`'s fields."""

    oracle: ClassVar[str] = "sanitizer"
    #: the compute-sanitizer tool that reports it
    sanitizer_tool: ClassVar[str] = "memcheck"
    #: the finding it must produce (harness.sanitizer.Finding fields that must match)
    expected_finding: ClassVar[dict] = {}
    #: the case that triggers it: (m, n, k); m is not a multiple of any tile so padding exists
    case_shape: ClassVar[tuple[int, int, int]] = (5, 40, 96)

    def sanitizer_trial(self):
        from harness.problem import GemmProblem
        from harness.trial import Trial

        m, n, k = self.case_shape
        prop = "quantizer_agreement" if self.level == "quantizer" else "reference_agreement"  # type: ignore[attr-defined]
        return Trial(self.name, prop, GemmProblem(m=m, n=n, k=k, seed=1))  # type: ignore[attr-defined]

    def support(self, env: "Environment"):
        return Backend.support(self, env)  # type: ignore[arg-type]


class GemmMaskedLate(SanitizerOnly, GemmMutant):
    """A GEMM mutant running :func:`_gemm_masked_late_kernel` on the parent's tiles."""
    parent = EMU_128x4
    READ_PAD_SCALES = False
    EXTRA_ROWS = 0

    @property
    def requirements(self) -> Requirements:  # type: ignore[override]
        return replace(self.base.requirements, runs_on_cpu=False)

    def run(self, ops: "GemmOperands", out: torch.Tensor | None = None) -> torch.Tensor:
        a, w = ops.a, ops.w
        out, alpha, _, block_m, block_n, kb_step = launch_setup(ops, out, a.packed.device)
        grid = (triton.cdiv(ops.m + self.EXTRA_ROWS, block_m), triton.cdiv(w.rows_alloc, block_n))
        _gemm_masked_late_kernel[grid](
            a.packed, a.packed.stride(0), a.scales, a.scales.shape[1], a.scales.shape[0],
            w.packed, w.packed.stride(0), w.scales, w.scales.shape[1],
            alpha, out_view(out), out.stride(0), out.stride(1),
            ops.m, w.rows_alloc, a.k_alloc // BLOCK_SIZE,
            A_LAYOUT=LAYOUT_ID[a.layout], W_LAYOUT=LAYOUT_ID[w.layout], BLOCK_M=block_m, BLOCK_N=block_n,
            KB_STEP=kb_step, DOT_FP32=interpreting(), OUT_BF16=out.dtype == torch.bfloat16,
            READ_PAD_SCALES=self.READ_PAD_SCALES, EXTRA_ROWS=self.EXTRA_ROWS)
        return out


class ReadsUnwrittenPadScales(GemmMaskedLate):
    name = "mutant-reads-unwritten-pad-scales"
    sanitizer_tool = "initcheck"
    expected_property = "sanitizer:initcheck"
    expected_finding = {"kernel": "_gemm_masked_late_kernel", "access": "read", "buffer": "a.scales",
                        "region": "m_pad", "inside": True}
    READ_PAD_SCALES = True
    planted = ("A block-scaled GEMM that loads the activation scales of every row of its tile, M padding "
               "included, multiplies them with zero codes and drops those rows at the store: the padding scale "
               "bytes are read although no result depends on them (NaN * 0 stays in rows never stored). The "
               "bug class behind FlashInfer #2861 / vLLM #37563 (padding-row scales read by the trtllm 8x4 "
               "path) in the form the poison properties cannot see; harmless until a kernel change lets the "
               "product through, and a read of uninitialized memory under CUDA graphs.")
    description = "triton-emu-128x4 reading unwritten M-padding activation scales and masking their product"


class WritesRowPastOutput(GemmMaskedLate):
    name = "mutant-writes-row-past-output"
    sanitizer_tool = "memcheck"
    expected_property = "sanitizer:memcheck"
    expected_finding = {"kernel": "_gemm_masked_late_kernel", "access": "write", "error": "out of bounds",
                        "buffer": "out", "region": "beyond", "inside": False, "row": 5}
    EXTRA_ROWS = 1
    planted = ("An epilogue whose store mask is off by one row (rows < m + 1): it writes one row past an output "
               "allocated for exactly m rows. Under PyTorch's caching allocator the stray row lands in whatever "
               "block follows and no output the harness reads changes; the under-allocated-buffer write class of "
               "vLLM PR #55456. (Where the harness hands the output, output_coverage, the guard bytes around it "
               "see the write too: harness.guard; its CPU twin is mutant-writes-past-output.)")
    description = "triton-emu-128x4 storing one row past the end of an exact-size output"


class QuantizerReadsPastRows(SanitizerOnly, QuantizerMutant):
    name = "mutant-quantizer-reads-past-rows"
    sanitizer_tool = "memcheck"
    expected_property = "sanitizer:memcheck"
    expected_finding = {"kernel": "_quantize_full_row_tiles_kernel", "access": "read", "error": "out of bounds",
                        "buffer": "x", "region": "beyond", "inside": False}
    requirements = Requirements(runs_on_cpu=False, a_layouts=(L.SWIZZLED_128x4,), w_layout=L.SWIZZLED_128x4)
    BLOCK_R = 16
    BLOCK_KB = 4
    planted = ("A quantizer that loads whole 16-row tiles of its input, rows past m included, and discards "
               "them at the store: the result is correct, but it reads past the end of an input allocated for "
               "exactly m rows (a fault when the buffer ends at a page boundary).")
    description = "Triton NVFP4 quantizer reading input rows past m and discarding them"

    def quantize(self, x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, k = x.shape
        if x.stride(1) != 1:
            x = x.contiguous()
        pr, pk = padded_shape(self.layout, rows, k // BLOCK_SIZE)
        packed = torch.zeros((rows, k // 2), dtype=torch.uint8, device=x.device)
        scales = torch.zeros((pr, pk), dtype=torch.uint8, device=x.device)
        gs = global_scale.reshape(1).to(device=x.device, dtype=torch.float32)
        grid = (triton.cdiv(rows, self.BLOCK_R), triton.cdiv(k // BLOCK_SIZE, self.BLOCK_KB))
        _quantize_full_row_tiles_kernel[grid](x, x.stride(0), gs, packed, packed.stride(0), scales, rows,
                                              k // BLOCK_SIZE, pk, LAYOUT=LAYOUT_ID[self.layout],
                                              BLOCK_R=self.BLOCK_R, BLOCK_KB=self.BLOCK_KB)
        return packed, scales


# ----------------------------------------------------------------------------------------------
MUTANT_CLASSES: tuple[type[Backend], ...] = (
    PadRowScales, PadColScales, KTailUninit, NoSlice, BiasBeforeSlice, ActNotKPadded, ThreeDShape,
    StaticActScale, Bf16GlobalScale, NibbleSwap, SwizzleOffByOne, FastMathQuantizer, RowsUnwritten,
    Nondeterministic, GlobalScaleConvention, Fp16Epilogue, CompiledOutQuantizer,
    NonSaturatingQuantizer, InputScaleMismatch, NanPaddingQuantizer, WritesPastOutput, StaticScaleIgnored,
    FusedScaleOneSlot,
    ReadsUnwrittenPadScales, WritesRowPastOutput, QuantizerReadsPastRows, GlobalScaleInvertedLoader,
    NibbleOrderLoader, ScalesSwizzledTwiceLoader, PadZeroedOnce, ScalePerInputBuffer, DenseReadLinear,
    DenseReadQuantizer,
)


def backends() -> list[Backend]:
    """Every planted-bug backend (registered hidden: ``mutant = True``)."""
    return [cls() for cls in MUTANT_CLASSES]
