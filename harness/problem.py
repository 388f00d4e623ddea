"""The problem model: what a case computes and what its padding holds.

A :class:`GemmProblem` is a logical NVFP4 GEMM (shapes, dtypes, data distribution and seed); a
:class:`Poison` names the byte written into each padding region.  Both are plain, frozen,
serialisable data: case files, result streams, strategies and the report read them without
touching the Triton pipeline (:mod:`harness.pipeline` turns them into operands).

The vocabulary of poisoned padding is defined here once: :data:`POISON_REGIONS` (the byte-valued
regions), :data:`REGIONS` (those plus ``stale_memory``), :data:`POISON_KINDS` and
:func:`poison_kind`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from harness import data as data_mod
from harness.format import BLOCK_SIZE, static_global_scale
from harness.input_layout import parse_input_layout

POISON_REGIONS: tuple[str, ...] = ("m_pad", "n_pad", "k_tail", "data")
"""Byte-valued padding regions, in :class:`Poison` field order: activation padding rows (m_pad),
weight padding rows (n_pad), k-blocks past K of both operands (k_tail), packed operand padding (data)."""

SLOT_REGIONS: tuple[str, ...] = ("partition_slots",)
"""Byte-valued regions of a merged-partition linear layer (linear level): every byte of the engine's
per-partition scale slots (``weight_scale_2``, ``input_scale``: fp32 [partitions]) as allocated,
before its weight loader writes them (:class:`harness.pipeline.MergedCheckpoint`)."""

REGIONS: tuple[str, ...] = POISON_REGIONS + SLOT_REGIONS + ("stale_memory",)
"""Every region a :class:`Poison` can touch: the byte regions, the partition slots and stale device
memory (linear level)."""

POISON_KINDS: tuple[str, ...] = ("nan", "max", "zero", "finite", "stale")
"""Short names of what a poisoned region holds (:func:`poison_kind`; ``stale`` for stale memory)."""

POISON_BYTES = {"nan": 0x7F, "neg_nan": 0xFF, "max": 0x7E, "one": 0x38, "small": 0x08, "zero": 0x00}
"""Named padding scale bytes: e4m3 NaN (0x7F, 0xFF), 448 (0x7E), 1.0 (0x38), 2^-6 (0x08), 0."""


def slot_poison_kind(byte: int) -> str:
    """A short name for the fp32 value four ``byte`` s make in a partition slot, for reports: nan
    (0xFF.. and 0x7F80..-style patterns), max (|value| >= 2^64: larger than any real global scale;
    0x7F7F7F7F is 3.4e38), zero, finite."""
    value = torch.tensor([byte] * 4, dtype=torch.uint8).view(torch.float32).item()
    if value != value:
        return "nan"
    if value == 0:
        return "zero"
    if abs(value) >= 2.0 ** 64:
        return "max"
    return "finite"


def poison_kind(byte: int) -> str:
    """A short name for a fill byte, for reports: nan, max, zero, finite."""
    if byte in (0x7F, 0xFF):
        return "nan"
    if byte == 0:
        return "zero"
    if byte in (0x7E, 0xFE):
        return "max"
    return "finite"


@dataclass(frozen=True)
class Poison:
    """Bytes written into each padding region (0 everywhere is the clean pipeline).

    m_pad: scale byte of activation padding rows; n_pad: scale byte of weight padding rows;
    k_tail: scale byte of k-blocks past K (both operands); data: byte of the packed operands'
    padding rows and columns; stale_memory: (linear level) fill and free device memory with NaN
    bytes before the call so ``torch.empty`` buffers inside the backend start dirty;
    partition_slots: (linear level, merged partitions) every byte of the engine's per-partition scale
    slots as allocated (``torch.empty``) before its loader writes them: 0xFF is an fp32 NaN, 0x7F
    3.4e38 (vLLM PR #35693: a stale slot above bf16's maximum), 0 harmless to a max.
    """
    m_pad: int = 0
    n_pad: int = 0
    k_tail: int = 0
    data: int = 0
    stale_memory: bool = False
    partition_slots: int = 0

    def __post_init__(self) -> None:
        for name in POISON_REGIONS + SLOT_REGIONS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
                raise ValueError(f"poison.{name}={v!r}: expected a byte (int 0..255)")
        if not isinstance(self.stale_memory, bool):
            raise ValueError(f"poison.stale_memory={self.stale_memory!r}: expected true or false")

    @property
    def clean(self) -> bool:
        return self == Poison()

    def regions(self) -> list[str]:
        """Names of the regions this poison touches."""
        return [n for n in POISON_REGIONS + SLOT_REGIONS if getattr(self, n)] + \
            (["stale_memory"] if self.stale_memory else [])

    def to_dict(self) -> dict:
        return asdict(self)


CLEAN = Poison()


MAX_GENERATED_ELEMENTS = 1 << 32
"""The most elements :func:`harness.data.generate` makes for one tensor (its counter-based hash)."""


class DataSpec:
    """How a problem's tensors are made, as every problem dataclass declares it (a mixin of
    :class:`GemmProblem` and of the grouped problems, :mod:`harness.grouped.problem`).

    The class using it has the fields ``in_dtype`` (inputs: activations and weights before
    quantization) and ``out_dtype`` (the result), torch dtype names as :func:`harness.data.parse_dtype`
    reads them ("bfloat16", "float16", ...), and ``distribution``, one of
    :data:`harness.data.DISTRIBUTIONS`."""

    def _check_data_spec(self) -> None:
        """ValueError naming ``problem.out_dtype``, ``problem.in_dtype`` or ``problem.distribution``,
        its value and what was expected."""
        data_mod.parse_dtype(self.out_dtype, "problem.out_dtype")  # type: ignore[attr-defined]
        data_mod.parse_dtype(self.in_dtype, "problem.in_dtype")  # type: ignore[attr-defined]
        if self.distribution not in data_mod.DISTRIBUTIONS:  # type: ignore[attr-defined]
            raise ValueError(f"problem.distribution={self.distribution!r}: expected one of "  # type: ignore[attr-defined]
                             f"{list(data_mod.DISTRIBUTIONS)}")

    @property
    def torch_out_dtype(self) -> torch.dtype:
        """``out_dtype`` as a torch dtype."""
        return data_mod.parse_dtype(self.out_dtype)  # type: ignore[attr-defined]

    @property
    def torch_in_dtype(self) -> torch.dtype:
        """``in_dtype`` as a torch dtype."""
        return data_mod.parse_dtype(self.in_dtype)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class GemmProblem(DataSpec):
    """A logical NVFP4 GEMM: out[m, n] = A[m, k] @ W[n, k]^T, plus how its data is made.

    ``m`` may be 0 (an empty batch, which serving engines send; the linear and quantizer levels
    put it to the test, the GEMM level needs m >= 1).  ``input_layout`` (one of
    :data:`harness.input_layout.INPUT_LAYOUTS`) is how the linear and quantizer levels lay the
    activations out in memory; the GEMM level builds its own operands and ignores it."""
    m: int
    n: int
    k: int
    out_dtype: str = "bfloat16"
    in_dtype: str = "bfloat16"
    distribution: str = "normal"
    seed: int = 0
    origin: str | None = None          # e.g. "Nemotron-3-Nano-30B-A3B moe_intermediate 1856 / TP4 row"
    batch: tuple[int, ...] | None = None  # linear level: leading dims of x ([batch, seq] -> m=batch*seq)
    calibration: float | None = None   # runtime amax / calibrated amax of the activations; None: dynamic
    partitions: tuple[int, ...] | None = None  # linear level: output widths of a merged layer (q, k, v / gate, up)
    fused_on_disk: bool = False        # merged layer: the checkpoint stores one fused tensor, one scalar scale
    input_layout: str = "contiguous"   # linear/quantizer level: how x lies in memory (harness.input_layout)

    def __post_init__(self) -> None:
        if isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 0:
            raise ValueError(f"problem.m={self.m!r}: expected an integer >= 0 (0: an empty batch)")
        for name in ("n", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"problem.{name}={v!r}: expected a positive integer")
        parse_input_layout(self.input_layout)
        if self.k % BLOCK_SIZE:
            raise ValueError(f"problem.k={self.k}: expected a multiple of {BLOCK_SIZE} (one e4m3 scale per "
                             f"{BLOCK_SIZE} elements; a block cannot straddle a shard)")
        for name, rows in (("m", self.m), ("n", self.n)):
            if rows * self.k > MAX_GENERATED_ELEMENTS:
                raise ValueError(f"problem.{name}={rows} with problem.k={self.k}: {rows * self.k} elements; expected "
                                 f"at most 2^32 per operand (the harness's test-data generator)")
        self._check_data_spec()
        if self.calibration is not None:
            c = self.calibration
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < float(c) < float("inf"):
                raise ValueError(f"problem.calibration={c!r}: expected a positive finite ratio (runtime amax / "
                                 f"calibrated amax) or null for a dynamic scale")
        if self.batch is not None:
            prod = 1
            for b in self.batch:
                if isinstance(b, bool) or not isinstance(b, int) or b < 0:
                    raise ValueError(f"problem.batch={self.batch}: expected leading dims that are integers >= 0")
                prod *= b
            if prod != self.m:
                raise ValueError(f"problem.batch={self.batch}: leading dims multiply to {prod}, not m={self.m}")
        if self.partitions is not None:
            parts = self.partitions
            if not isinstance(parts, tuple) or len(parts) < 2 or any(
                    isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in parts) or sum(parts) != self.n:
                raise ValueError(f"problem.partitions={list(parts) if isinstance(parts, tuple) else parts!r}: expected "
                                 f"2 or more positive output widths summing to n={self.n}, or null for one partition")
        if not isinstance(self.fused_on_disk, bool) or (self.fused_on_disk and self.partitions is None):
            raise ValueError(f"problem.fused_on_disk={self.fused_on_disk!r}: expected true or false, and false "
                             f"unless problem.partitions names the merged layer's partitions")

    def activations(self, device) -> torch.Tensor:
        return data_mod.generate(self.distribution, (self.m, self.k), 2 * self.seed, self.torch_in_dtype, device)

    def weights(self, device) -> torch.Tensor:
        return data_mod.generate(self.distribution, (self.n, self.k), 2 * self.seed + 1, self.torch_in_dtype,
                                 device)

    def activation_global_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The activations' encode divisor, fp32 [1] on ``x``'s device: ``x``'s own amax (dynamic,
        ``calibration`` None) or the static scale calibrated for ``calibration``
        (:func:`harness.format.static_global_scale`)."""
        amax = x.float().abs().amax() if x.numel() else torch.zeros((), device=x.device)  # empty: as all-zero
        return static_global_scale(amax, self.calibration).reshape(1).to(x.device)

    def bias(self, device) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(self.seed) + 7919)
        return torch.randn(self.n, generator=g).to(self.torch_out_dtype).to(device)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["batch"] = list(self.batch) if self.batch is not None else None
        d["partitions"] = list(self.partitions) if self.partitions is not None else None
        return d

    @property
    def partition_bounds(self) -> list[tuple[int, int]]:
        """[start, end) output columns of each partition of a merged layer (one [0, n) otherwise)."""
        bounds, start = [], 0
        for w in self.partitions or (self.n,):
            bounds.append((start, start + w))
            start += w
        return bounds

    def with_(self, **kw) -> "GemmProblem":
        return replace(self, **kw)
