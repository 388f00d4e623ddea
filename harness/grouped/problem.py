"""The grouped problem model: tokens, experts, routing, per-expert weights and padding, as data.

A :class:`GroupedProblem` is a logical MoE grouped GEMM: ``tokens`` activations of width ``k``
are routed, ``top_k`` experts per token with routing weights, to ``experts`` weight matrices
``W_e [n, k]``; token ``t`` gets ``out[t] = sum_j weight[t][j] * (A_t @ W_{e_tj}^T)``.  The tokens
routed to expert ``e`` form its *split section* (in token order); an expert nobody routes to has a
zero-token section.  Each expert has its own weight global scale (from its own amax) and its own
input (activation) global scale, ``dynamic`` (from the amax of its section, as TransformerEngine's
grouped quantize computes it) or ``static`` (calibrated on other data, as a serving engine loads
it).  ``row_align[e]`` is expert ``e``'s padding policy: its section is padded to that many rows
in the grouped buffer (its scale rows further to the scale layout's tile).

Everything is plain, frozen data with ``to_dict``/``from_dict``; errors name the field, the value
and what was expected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

import torch

from harness import data as data_mod
from harness.format import BLOCK_SIZE
from harness.problem import DataSpec

GROUPED_PROPERTIES: tuple[str, ...] = ("reference_agreement", "grouped_bytes", "token_isolation",
                                       "zero_token_groups")
"""The grouped level's properties (:mod:`harness.grouped.checks` holds the verdicts)."""

MOE_PROPERTIES: tuple[str, ...] = ("reference_agreement", "fused_unfused")
"""The fused-MoE properties (:mod:`harness.grouped.moe_checks` holds the verdicts)."""

FC1_INPUT_SCALES: tuple[str, ...] = ("per_expert", "shared")
"""FC1 input global scale granularity of a fused-MoE problem: one per expert (FlashInfer's
``cutlass_fused_moe`` accepts ``fc1_act_global`` of shape [E]), or one shared by every expert
(the hidden states are quantized once, before routing, as ``trtllm_fp4_block_scale_moe`` takes
them; vLLM then uses the smallest per-expert encode divisor)."""

ROW_ALIGNS: tuple[int, ...] = (1, 8, 16, 64, 128)
"""Per-expert row paddings a grouped buffer uses (none, the 8x4 tile, 16, TRT-LLM's 64, CUTLASS's 128)."""

INPUT_SCALES: tuple[str, ...] = ("dynamic", "static")

GROUPED_REGIONS: tuple[str, ...] = ("group_row_pad", "k_tail", "n_pad", "data")
"""Byte-valued padding regions of grouped operands, in :class:`GroupedPoison` field order: rows past
each expert's section in the grouped activation buffer (data and scale rows), k-blocks past K (both
operands), weight rows past N of every expert, packed-data padding bytes."""


def _is_fp32(v: float) -> bool:
    return math.isfinite(v) and struct.unpack("f", struct.pack("f", v))[0] == v


_ROUTING_KEYS: tuple[str, ...] = ("topk_ids", "topk_weights", "row_align", "input_scales")
_DATA_KEYS: tuple[str, ...] = ("out_dtype", "in_dtype", "distribution", "seed", "origin")


@dataclass(frozen=True, kw_only=True)
class RoutedProblem(DataSpec):
    """The fields and the routing every routed problem (:class:`GroupedProblem`, :class:`MoeProblem`)
    shares: ``tokens`` routed, ``top_k`` experts per token (``topk_ids``, with ``topk_weights``), to
    ``experts`` experts, each padded to ``row_align[e]`` rows in the grouped buffer, with ``dynamic``
    or ``static`` input global scales (``input_scales``), and how the data is made
    (:class:`harness.problem.DataSpec`, ``seed``).  A subclass adds its dimensions and options
    (keyword-only, as these fields are) and lists every field in :attr:`KEY_ORDER`.

    JSON form (:meth:`to_dict`, :meth:`from_dict`): ``topk_ids``, ``topk_weights`` and ``row_align``
    are tuples in the dataclass, lists in JSON."""
    tokens: int
    experts: int
    topk_ids: tuple[tuple[int, ...], ...]
    topk_weights: tuple[tuple[float, ...], ...]
    row_align: tuple[int, ...]
    input_scales: Literal["dynamic", "static"] = "dynamic"
    out_dtype: str = "bfloat16"
    in_dtype: str = "bfloat16"
    distribution: str = "normal"
    seed: int = 0
    origin: str | None = None

    KEY_ORDER: ClassVar[tuple[str, ...]] = ()
    """The fields in the order of the JSON object (:meth:`to_dict`): ``tokens``, ``experts``, the
    dimensions, the routing, the subclass's options, the data.  The order is the case-file format's
    (a grouped case file is rewritten only when its bytes differ); a field not listed follows them."""

    def _check_routing(self) -> None:
        """ValueError naming the first routing or data field that is out of range (``tokens`` and
        ``experts`` checked already), its value and what was expected."""
        if len(self.topk_ids) != self.tokens or len(self.topk_weights) != self.tokens:
            raise ValueError(f"problem.topk_ids/topk_weights: expected {self.tokens} rows (one per token), got "
                             f"{len(self.topk_ids)} and {len(self.topk_weights)}")
        top_k = len(self.topk_ids[0])
        if not 1 <= top_k <= self.experts:
            raise ValueError(f"problem.topk_ids[0]={list(self.topk_ids[0])}: expected 1..{self.experts} experts per token")
        for t, (ids, ws) in enumerate(zip(self.topk_ids, self.topk_weights)):
            if len(ids) != top_k or len(ws) != top_k:
                raise ValueError(f"problem.topk_ids[{t}]={list(ids)}: expected {top_k} experts and {top_k} weights")
            if len(set(ids)) != top_k or any(isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < self.experts
                                             for e in ids):
                raise ValueError(f"problem.topk_ids[{t}]={list(ids)}: expected {top_k} distinct experts in "
                                 f"0..{self.experts - 1}")
            for w in ws:
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not _is_fp32(float(w)):
                    raise ValueError(f"problem.topk_weights[{t}]={list(ws)}: expected finite fp32 values")
        if len(self.row_align) != self.experts or any(a not in ROW_ALIGNS for a in self.row_align):
            raise ValueError(f"problem.row_align={list(self.row_align)}: expected {self.experts} values from "
                             f"{list(ROW_ALIGNS)}")
        if self.input_scales not in INPUT_SCALES:
            raise ValueError(f"problem.input_scales={self.input_scales!r}: expected one of {list(INPUT_SCALES)}")
        self._check_data_spec()

    def _routed_fields(self) -> dict[str, Any]:
        """The values of the fields declared here (routing and data), by name."""
        return {f.name: getattr(self, f.name) for f in fields(RoutedProblem)}

    # -- routing ---------------------------------------------------------------------------------
    @property
    def top_k(self) -> int:
        return len(self.topk_ids[0])

    def sections(self) -> list[list[tuple[int, int]]]:
        """Per expert, its split section: the (token, slot) pairs routed to it, in token order."""
        out: list[list[tuple[int, int]]] = [[] for _ in range(self.experts)]
        for t, ids in enumerate(self.topk_ids):
            for j, e in enumerate(ids):
                out[e].append((t, j))
        return out

    @property
    def splits(self) -> tuple[int, ...]:
        """Tokens per expert (the split sizes; 0 for a zero-token expert)."""
        return tuple(len(s) for s in self.sections())

    @property
    def zero_token_experts(self) -> tuple[int, ...]:
        return tuple(e for e, c in enumerate(self.splits) if c == 0)

    def routing(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_ids int32 [tokens, top_k], topk_weights fp32 [tokens, top_k])."""
        return (torch.tensor(self.topk_ids, dtype=torch.int32, device=device),
                torch.tensor(self.topk_weights, dtype=torch.float32, device=device))

    # -- data ------------------------------------------------------------------------------------
    def _stream(self, stream: int) -> int:
        return (int(self.seed) * 7919 + stream) & 0xFFFFFFFF

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["topk_ids"] = [list(r) for r in self.topk_ids]
        d["topk_weights"] = [list(r) for r in self.topk_weights]
        d["row_align"] = list(self.row_align)
        return {**{key: d[key] for key in self.KEY_ORDER}, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """The problem of a ``to_dict`` document; ValueError naming unknown fields."""
        d = dict(d)
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"problem: unknown field(s) {sorted(unknown)}; expected {sorted(names)}")
        for key in ("topk_ids", "topk_weights"):
            if key in d:
                d[key] = tuple(tuple(r) for r in d[key])
        if "row_align" in d:
            d["row_align"] = tuple(d["row_align"])
        return cls(**d)


def _check_positive(problem: RoutedProblem, names: Sequence[str]) -> None:
    for name in names:
        v = getattr(problem, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"problem.{name}={v!r}: expected a positive integer")


@dataclass(frozen=True, kw_only=True)
class GroupedProblem(RoutedProblem):
    """A logical grouped (MoE) NVFP4 GEMM with top-k routing; see the module docstring.  Its own
    fields: ``n`` and ``k``, every expert's weight shape ``[n, k]`` (``k`` a multiple of 16)."""
    n: int
    k: int

    KEY_ORDER: ClassVar[tuple[str, ...]] = ("tokens", "experts", "n", "k", *_ROUTING_KEYS, *_DATA_KEYS)

    def __post_init__(self) -> None:
        _check_positive(self, ("tokens", "experts", "n", "k"))
        if self.k % BLOCK_SIZE:
            raise ValueError(f"problem.k={self.k}: expected a multiple of {BLOCK_SIZE}")
        self._check_routing()

    @classmethod
    def from_splits(cls, splits: Sequence[int], top_k: int, *, n: int, k: int, seed: int = 0,
                    row_align: Sequence[int] | int = 128, **kw: Any) -> "GroupedProblem":
        """A problem whose expert ``e`` gets exactly ``splits[e]`` tokens, top-k routing.

        ``sum(splits)`` must be a multiple of ``top_k`` (tokens = sum / top_k) and no split may
        exceed the token count.  Slots sorted by expert go to tokens round robin (slot i -> token
        i mod tokens), which gives every token ``top_k`` distinct experts.  Routing weights are
        sixteenths in [1/16, 15/16] from ``seed`` (exact in every dtype; never 1, so applying one
        twice shows).
        """
        total = sum(splits)
        if top_k < 1 or total == 0 or total % top_k:
            raise ValueError(f"splits={list(splits)}: their sum must be a positive multiple of top_k={top_k}")
        tokens = total // top_k
        if max(splits) > tokens:
            raise ValueError(f"splits={list(splits)}: no expert can get more than tokens={tokens} tokens")
        ids: list[list[int]] = [[] for _ in range(tokens)]
        i = 0
        for e, c in enumerate(splits):
            for _ in range(c):
                ids[i % tokens].append(e)
                i += 1
        g = torch.Generator().manual_seed(int(seed) + 104729)
        w = (torch.randint(1, 16, (tokens, top_k), generator=g).double() / 16).tolist()
        aligns = tuple(row_align) if not isinstance(row_align, int) else (row_align,) * len(splits)
        return cls(tokens=tokens, experts=len(splits), n=n, k=k, topk_ids=tuple(tuple(r) for r in ids),
                   topk_weights=tuple(tuple(float(v) for v in r) for r in w), row_align=aligns, seed=seed, **kw)

    # -- data ------------------------------------------------------------------------------------
    def hidden(self, device) -> torch.Tensor:
        """Activations [tokens, k] in ``in_dtype``."""
        return data_mod.generate(self.distribution, (self.tokens, self.k), self._stream(0), self.torch_in_dtype, device)

    def calibration(self, device) -> torch.Tensor:
        """Calibration activations [tokens, k] (other data, same distribution) for static input scales."""
        return data_mod.generate(self.distribution, (self.tokens, self.k), self._stream(1), self.torch_in_dtype, device)

    def expert_weight(self, e: int, device) -> torch.Tensor:
        """Expert ``e``'s weight [n, k] in ``in_dtype``."""
        return data_mod.generate(self.distribution, (self.n, self.k), self._stream(2 + e), self.torch_in_dtype, device)



@dataclass(frozen=True, kw_only=True)
class MoeProblem(RoutedProblem):
    """A logical fused-MoE layer: FC1 (gate and up) -> SwiGLU -> NVFP4 requantize -> FC2 -> routed sum.

    ``tokens`` hidden states of width ``hidden`` are routed as in :class:`GroupedProblem`
    (``topk_ids``, ``topk_weights``, ``row_align``).  Expert ``e`` has two NVFP4 weights, each
    with its own global scale (from its own amax): ``W13_e [2*intermediate, hidden]``, the gate
    projection in rows ``[0, I)`` and the up projection in rows ``[I, 2I)`` (the checkpoint order
    of vLLM's and ModelOpt's ``w13``: ``w1`` = gate, then ``w3`` = up), and ``W2_e [hidden,
    intermediate]``.  Token ``t`` gets ``out[t] = sum_j w_tj * FC2_e(Q_e(silu(g) * u))`` with
    ``[g | u] = FC1_e(Q(x_t))``.  FC1 input global scales are ``dynamic`` or ``static``
    (``input_scales``, as in :class:`GroupedProblem`) and ``per_expert`` or ``shared``
    (``fc1_input_scale``); the FC2 input global scales are static per expert, as ModelOpt
    checkpoints store them (``w2_input_scale``): calibrated on the exact intermediate of the
    expert's tokens, times a per-expert factor in [0.5, 1.25] from the seed, so live values may
    exceed the calibration and saturate.  ``intermediate`` and ``hidden`` are multiples of 16;
    ``intermediate % 128 == 64`` (192, 1856: TRT-LLM #10331) and ``hidden`` not a multiple of 128
    (2880: vLLM #35497) are the shapes the strategies favour.
    """
    hidden: int
    intermediate: int
    fc1_input_scale: Literal["per_expert", "shared"] = "per_expert"

    KEY_ORDER: ClassVar[tuple[str, ...]] = ("tokens", "experts", "hidden", "intermediate", *_ROUTING_KEYS,
                                            "fc1_input_scale", *_DATA_KEYS)

    def __post_init__(self) -> None:
        for name in ("hidden", "intermediate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % BLOCK_SIZE:
                raise ValueError(f"problem.{name}={v!r}: expected a positive multiple of {BLOCK_SIZE}")
        if self.fc1_input_scale not in FC1_INPUT_SCALES:
            raise ValueError(f"problem.fc1_input_scale={self.fc1_input_scale!r}: expected one of "
                             f"{list(FC1_INPUT_SCALES)}")
        _check_positive(self, ("tokens", "experts"))
        self._check_routing()

    def fc1(self) -> GroupedProblem:
        """FC1 as a grouped problem (n = 2 * intermediate, k = hidden): routing, sections, hidden states
        and FC1 input scales come from it."""
        return GroupedProblem(n=2 * self.intermediate, k=self.hidden, **self._routed_fields())

    def fc2(self) -> GroupedProblem:
        """FC2 as a grouped problem (n = hidden, k = intermediate), same routing."""
        return replace(self.fc1(), n=self.hidden, k=self.intermediate, input_scales="static")

    def hidden_states(self, device) -> torch.Tensor:
        """Hidden states [tokens, hidden] in ``in_dtype`` (those of :meth:`fc1`)."""
        return self.fc1().hidden(device)

    def fc1_weight(self, e: int, device) -> torch.Tensor:
        """Expert ``e``'s W13 [2 * intermediate, hidden] in ``in_dtype``: gate rows, then up rows."""
        return data_mod.generate(self.distribution, (2 * self.intermediate, self.hidden), self._stream(2 + e),
                                 self.torch_in_dtype, device)

    def fc2_weight(self, e: int, device) -> torch.Tensor:
        """Expert ``e``'s W2 [hidden, intermediate] in ``in_dtype`` (its own random stream)."""
        return data_mod.generate(self.distribution, (self.hidden, self.intermediate),
                                 self._stream(100003 + e), self.torch_in_dtype, device)

    def fc2_scale_factors(self) -> torch.Tensor:
        """fp32 [E]: the calibration factor of each expert's static FC2 input scale (0.5 .. 1.25)."""
        g = torch.Generator().manual_seed(int(self.seed) + 4099)
        return 0.5 + torch.randint(0, 4, (self.experts,), generator=g).float() * 0.25

    @classmethod
    def from_splits(cls, splits: Sequence[int], top_k: int, *, hidden: int, intermediate: int, seed: int = 0,
                    row_align: Sequence[int] | int = 128, **kw: Any) -> "MoeProblem":
        """A problem whose expert ``e`` gets exactly ``splits[e]`` tokens (see
        :meth:`GroupedProblem.from_splits` for the routing and the routing weights)."""
        g = GroupedProblem.from_splits(splits, top_k, n=16, k=16, seed=seed, row_align=row_align)
        return cls(tokens=g.tokens, experts=g.experts, hidden=hidden, intermediate=intermediate, topk_ids=g.topk_ids,
                   topk_weights=g.topk_weights, row_align=g.row_align, seed=seed, **kw)


def problem_from_dict(d: Mapping[str, Any]) -> "GroupedProblem | MoeProblem":
    """A grouped or a fused-MoE problem from its dict (a fused-MoE problem has ``intermediate``)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"problem={d!r}: expected an object")
    return MoeProblem.from_dict(d) if "intermediate" in d else GroupedProblem.from_dict(d)


def properties_of(problem: "GroupedProblem | MoeProblem") -> tuple[str, ...]:
    """The properties a trial of ``problem`` may test."""
    return MOE_PROPERTIES if isinstance(problem, MoeProblem) else GROUPED_PROPERTIES


@dataclass(frozen=True)
class GroupedPoison:
    """Bytes written into each padding region of grouped operands (0 everywhere: clean), and the
    expert whose tokens and scales :func:`harness.grouped.checks.token_isolation` poisons.

    group_row_pad: packed and scale bytes of the rows past each expert's section; k_tail: scale
    bytes of k-blocks past K (activation and weights); n_pad: scale bytes of weight rows past N;
    data: packed-data padding bytes; victim: an expert index (token isolation), None otherwise;
    victim_byte: the scale byte written over the victim's real weight scales.
    """
    group_row_pad: int = 0
    k_tail: int = 0
    n_pad: int = 0
    data: int = 0
    victim: int | None = None
    victim_byte: int = 0x7F

    def __post_init__(self) -> None:
        for name in GROUPED_REGIONS + ("victim_byte",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
                raise ValueError(f"poison.{name}={v!r}: expected a byte (int 0..255)")
        if self.victim is not None and (isinstance(self.victim, bool) or not isinstance(self.victim, int)
                                        or self.victim < 0):
            raise ValueError(f"poison.victim={self.victim!r}: expected an expert index or null")

    def regions(self) -> list[str]:
        return [r for r in GROUPED_REGIONS if getattr(self, r)]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GroupedTrial:
    """One grouped property of one grouped backend on one case (a fused-MoE case has a
    :class:`MoeProblem`)."""
    backend: str
    property: str
    problem: GroupedProblem | MoeProblem
    poison: GroupedPoison = field(default_factory=GroupedPoison)

    def __post_init__(self) -> None:
        if self.property not in properties_of(self.problem):
            raise ValueError(f"trial.property={self.property!r}: expected one of {list(properties_of(self.problem))}")
        if self.poison.victim is not None and self.poison.victim >= self.problem.experts:
            raise ValueError(f"poison.victim={self.poison.victim}: expected an expert index < {self.problem.experts}")

    def to_dict(self) -> dict:
        return {"backend": self.backend, "level": "grouped", "property": self.property,
                "problem": self.problem.to_dict(), "poison": self.poison.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GroupedTrial":
        return cls(d["backend"], d["property"], problem_from_dict(d["problem"]),
                   GroupedPoison(**d.get("poison", {})))
