"""Hypothesis strategies for the property suite: shapes, poison, data kinds, problems, cases.

Design rules.

* Strategies draw only ints and strings (no tensors): a problem's data is built later from its
  seed by :mod:`harness.data`, so generation stays fast and a case replays from its repr.
* Every size is capped by a parameter, so the CPU profile can ask for tiny shapes
  (``max_m=40, max_nk_blocks=12``) and the GPU profile for large ones.
* Boundaries are drawn on purpose, and every strategy shrinks to a readable minimum:
  ``st.one_of`` shrinks towards its *first* branch and ``st.sampled_from`` towards its *first*
  element, so the first branch / element is always the smallest, most boring value (m=1,
  16-element K, the "normal" distribution, the clean pipeline, NaN poison in one region).

The boundaries worth hitting come from the layouts (NVFP4-NOTES.md): m <= 32 takes TRT-LLM's 8x4
activation-scale path (8-row tiles), the 128x4 layout pads rows to 128 and k-blocks to 4, and
TP splits give per-rank K block counts that are odd or not multiples of 4 or 8 (464 = 29 blocks).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from harness.data import DISTRIBUTIONS
from harness.format import BLOCK_SIZE
from harness.input_layout import CONTIGUOUS, INPUT_LAYOUTS
from harness.problem import POISON_REGIONS, GemmProblem, Poison
from harness.tp_catalog import CATALOG, DEFAULT_DEGREES, LayerShape, TPShard, origin_label, tp_cases

# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------

SMALL_M: tuple[int, ...] = tuple(range(1, 34))
"""1..33: every m of TRT-LLM's 8x4 small-m path (m <= 32) and the first m past it."""

TILE_BOUNDARY_M: tuple[int, ...] = (63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 512, 513,
                                    1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096)
"""m on either side of the 128-row tile of the 128x4 layout and of power-of-two M buckets."""


def m_values(max_m: int = 4096) -> SearchStrategy[int]:
    """m in [1, max_m], heavily weighted to layout boundaries; shrinks to m=1.

    One third each: 1..33, the tile/power-of-two boundaries (63..65, 127..129, ..., 1023..1025),
    and any m in range.
    """
    if max_m < 1:
        raise ValueError(f"m_values: max_m={max_m} must be >= 1")
    small = [m for m in SMALL_M if m <= max_m]
    tiles = [m for m in TILE_BOUNDARY_M if m <= max_m]
    branches: list[SearchStrategy[int]] = [st.sampled_from(small)]
    if tiles:
        branches.append(st.sampled_from(tiles))
    branches.append(st.integers(1, max_m))
    return st.one_of(branches)


@functools.lru_cache(maxsize=None)
def _catalog_block_counts(degrees: tuple[int, ...]) -> tuple[int, ...]:
    counts = set()
    for _, _, s in tp_cases(degrees):
        if isinstance(s, TPShard):
            counts.update(v // BLOCK_SIZE for v in (s.n, s.k) if v % BLOCK_SIZE == 0)
    return tuple(sorted(counts))


def catalog_block_counts(max_blocks: int, degrees: Iterable[int] = DEFAULT_DEGREES) -> list[int]:
    """Block counts (n/16 or k/16) of the catalog's per-rank shapes that fit in ``max_blocks``."""
    return [c for c in _catalog_block_counts(tuple(degrees)) if c <= max_blocks]


def block_counts(max_blocks: int) -> SearchStrategy[int]:
    """A count of 16-element blocks in [1, max_blocks], mostly awkward; shrinks to 1.

    Branches (equal weight): odd counts, counts = 2 mod 4 (not a multiple of the 4-block swizzle
    group), counts = 4 mod 8, multiples of 8 (aligned), any count, and the block counts of the TP
    catalog's per-rank shapes that fit.
    """
    if max_blocks < 1:
        raise ValueError(f"block_counts: max_blocks={max_blocks} must be >= 1")
    branches: list[SearchStrategy[int]] = [st.integers(0, (max_blocks - 1) // 2).map(lambda i: 2 * i + 1)]
    if max_blocks >= 2:
        branches.append(st.integers(0, (max_blocks - 2) // 4).map(lambda i: 4 * i + 2))
    if max_blocks >= 4:
        branches.append(st.integers(0, (max_blocks - 4) // 8).map(lambda i: 8 * i + 4))
    if max_blocks >= 8:
        branches.append(st.integers(1, max_blocks // 8).map(lambda i: 8 * i))
    branches.append(st.integers(1, max_blocks))
    real = catalog_block_counts(max_blocks)
    if real:
        branches.append(st.sampled_from(real))
    return st.one_of(branches)


def kn_values(max_blocks: int) -> SearchStrategy[int]:
    """n or k: a multiple of 16 up to ``16 * max_blocks`` (see :func:`block_counts`); shrinks to 16."""
    return block_counts(max_blocks).map(lambda b: BLOCK_SIZE * b)


def ragged_n_values(max_blocks: int) -> SearchStrategy[int]:
    """n that need not be a multiple of 16 (per-rank Ns like 232 are multiples of 8 only); shrinks to 16."""
    return st.one_of(kn_values(max_blocks), st.integers(1, BLOCK_SIZE * max_blocks))


# ----------------------------------------------------------------------------------------------
# Poison
# ----------------------------------------------------------------------------------------------

NAMED_POISON_BYTES: tuple[int, ...] = (0x7F, 0xFF, 0x7E, 0xFE, 0x38, 0x08, 0x01)
"""e4m3 NaN, -NaN, 448, -448, 1.0, 2^-6 (smallest normal), 2^-9 (smallest subnormal).

NaN comes first so a shrunk poison is NaN, the loudest and most readable value."""


def poison_bytes() -> SearchStrategy[int]:
    """A non-zero fill byte: a named e4m3 value (NaN, 448, small finite) or any other byte; shrinks to 0x7F."""
    return st.one_of(st.sampled_from(NAMED_POISON_BYTES), st.integers(1, 255))


def poisons(regions: Iterable[str] | None = None, *, allowed: Sequence[str] = POISON_REGIONS,
            fill: SearchStrategy[int] | None = None, min_regions: int = 1,
            max_regions: int | None = None, stale_memory: bool | None = False) -> SearchStrategy[Poison]:
    """A :class:`Poison` with a fill byte per poisoned padding region and 0 everywhere else.

    For each region the strategy draws whether it is poisoned (a boolean, which shrinks to "no")
    and a non-zero fill byte from ``fill`` (default :func:`poison_bytes`, which shrinks to NaN
    0x7F; a custom ``fill`` must not produce 0).  The byte is drawn even for a clean region,
    so un-poisoning one region never shifts the other draws: the shrinker can drop regions one at
    a time, and a failing case shrinks to the fewest poisoned regions (one, when one suffices),
    each holding NaN unless the failure needs another byte, with 0 in every other region.
    Draws with fewer than ``min_regions`` (or more than ``max_regions``) poisoned regions are
    rejected.

    ``regions``: force exactly this set of poisoned regions (their bytes are still drawn).
    ``allowed``: the regions that may be poisoned.  ``min_regions=0`` admits the clean pipeline,
    which is then the shrink target.  ``stale_memory``: False (default) never, True always, None
    drawn (shrinks to False).
    """
    allowed_set = frozenset(allowed)
    unknown = allowed_set - set(POISON_REGIONS)
    if regions is not None:
        forced: frozenset[str] | None = frozenset(regions)
        unknown |= forced - set(POISON_REGIONS)
    else:
        forced = None
        if len(allowed_set) < min_regions:
            raise ValueError(f"poisons: min_regions={min_regions} but only {sorted(allowed_set)} allowed")
    if unknown:
        raise ValueError(f"poisons: unknown regions {sorted(unknown)}; expected some of {POISON_REGIONS}")
    fill = poison_bytes() if fill is None else fill
    stale = st.booleans() if stale_memory is None else st.just(bool(stale_memory))

    @st.composite
    def build(draw) -> Poison:
        fills = {}
        # drawn last-region-first: when any single region triggers a failure, the shrinker's
        # lexicographically smallest choice poisons the *last* drawn region, i.e. m_pad
        # (regions excluded statically, by ``regions`` or ``allowed``, draw nothing at all)
        for name in reversed(POISON_REGIONS):
            if name not in (allowed_set if forced is None else forced):
                fills[name] = 0
                continue
            poisoned = True if forced is not None else draw(st.booleans())
            byte = draw(fill)
            fills[name] = byte if poisoned else 0
        if forced is None:
            count = sum(1 for v in fills.values() if v)
            assume(count >= min_regions and (max_regions is None or count <= max_regions))
        return Poison(**{name: fills[name] for name in POISON_REGIONS}, stale_memory=draw(stale))

    return build()


# ----------------------------------------------------------------------------------------------
# Data kinds and problems
# ----------------------------------------------------------------------------------------------

def distributions(names: Sequence[str] | None = None) -> SearchStrategy[str]:
    """A data distribution of :data:`harness.data.DISTRIBUTIONS`; shrinks to "normal"."""
    names = tuple(DISTRIBUTIONS if names is None else names)
    unknown = [n for n in names if n not in DISTRIBUTIONS]
    if unknown or not names:
        raise ValueError(f"distributions: {unknown or names!r} not among {DISTRIBUTIONS}")
    ordered = tuple(sorted(names, key=lambda n: n != "normal"))  # "normal" first: the shrink target
    return st.sampled_from(ordered)


def _ordered_choice(values: Sequence[str], what: str) -> SearchStrategy[str]:
    if not values:
        raise ValueError(f"{what}: expected at least one value")
    return st.sampled_from(tuple(values))


def gemm_problems(*, max_m: int = 4096, max_nk_blocks: int = 256,
                  out_dtypes: Sequence[str] = ("bfloat16", "float16"),
                  in_dtypes: Sequence[str] = ("bfloat16",),
                  distribution_names: Sequence[str] | None = None,
                  max_seed: int = 15, ragged_n: bool = False) -> SearchStrategy[GemmProblem]:
    """Synthetic :class:`GemmProblem` s (origin None); shrinks to m=1, n=16, k=16, first dtypes, normal, seed 0.

    ``max_nk_blocks`` caps n and k at ``16 * max_nk_blocks``; ``ragged_n`` also draws n that are
    not multiples of 16; seeds come from ``[0, max_seed]`` so a replayed case stays readable.
    """
    n = ragged_n_values(max_nk_blocks) if ragged_n else kn_values(max_nk_blocks)
    return st.builds(
        GemmProblem,
        m=m_values(max_m), n=n, k=kn_values(max_nk_blocks),
        out_dtype=_ordered_choice(out_dtypes, "gemm_problems(out_dtypes)"),
        in_dtype=_ordered_choice(in_dtypes, "gemm_problems(in_dtypes)"),
        distribution=distributions(distribution_names),
        seed=st.integers(0, max_seed),
        origin=st.none(),
    )


REAL_SHARD_K: tuple[int, ...] = (176, 464, 3696)
"""Per-rank K of real TP shards (row-parallel down projections, :mod:`harness.tp_catalog`): 176 (11
k-blocks: GLM-4.5-Air MoE intermediate 1408 / TP8), 464 (29 k-blocks: Nemotron-3-Nano MoE intermediate
1856 / TP4), 3696 (231 k-blocks: Qwen2.5-72B intermediate 29568 / TP8)."""

REAL_SHARD_N: tuple[int, ...] = (232, 464, 3696)
"""Per-rank N of real TP shards (232 = 1856/8 is a multiple of 8, not of 16)."""

LARGE_M: tuple[int, ...] = (4097, 8191, 8192, 16384)
"""Large M, where persistent-kernel scheduling bugs appear (more tiles than SMs, wave tails)."""


def large_problems(*, max_m: int = 16384, max_nk_blocks: int = 96,
                   out_dtypes: Sequence[str] = ("bfloat16", "float16"), ragged_n: bool = False,
                   max_seed: int = 15) -> SearchStrategy[GemmProblem]:
    """Large GEMM problems: m from :data:`LARGE_M` (capped at ``max_m``), K of a real TP shard
    (:data:`REAL_SHARD_K`), n from the usual strategy or a real shard's N (232 with ``ragged_n``).
    For GPU profiles only; shrinks to the smallest m and K."""
    ms = [m for m in LARGE_M if m <= max_m] or [max_m]
    ns = [n for n in REAL_SHARD_N if ragged_n or n % BLOCK_SIZE == 0]
    return st.builds(
        GemmProblem,
        m=st.sampled_from(ms), n=st.one_of(st.sampled_from(ns), kn_values(max_nk_blocks)),
        k=st.sampled_from(REAL_SHARD_K),
        out_dtype=_ordered_choice(out_dtypes, "large_problems(out_dtypes)"),
        distribution=distributions(), seed=st.integers(0, max_seed), origin=st.none())


def rarely(rare: SearchStrategy, usual: SearchStrategy, share: float) -> SearchStrategy:
    """``rare`` in about ``share`` of the draws (0 < share <= 1), ``usual`` otherwise; shrinks to ``usual``."""
    if not 0 < share <= 1:
        raise ValueError(f"rarely: share={share!r}: expected a probability in (0, 1]")
    slots = max(1, round(1 / share))
    return st.integers(0, slots - 1).flatmap(lambda i: rare if i == slots - 1 else usual)


def tp_entries(*, degrees: Iterable[int] = DEFAULT_DEGREES, catalog: Iterable[LayerShape] = CATALOG,
               max_unsplit_dim: int | None = None,
               max_weight_elements: int | None = None) -> list[tuple[LayerShape, int, int, int, str]]:
    """The runnable per-rank shapes of the catalog as ``(layer, tp, n, k, origin)``, smallest first.

    Shards that raise :class:`ShardError` are skipped (they are reported by the catalog tests, not
    run).  ``max_unsplit_dim`` caps the dimension TP does NOT split (N of a row-parallel layer, K
    of a column-parallel one; K rounded down to a multiple of 16): the split dimension, where the
    alignment bugs live, is kept exact and the origin says what was cut.  ``max_weight_elements``
    then drops entries whose per-rank n*k is still larger.
    """
    out = []
    for layer, tp, s in tp_cases(degrees, catalog):
        if not isinstance(s, TPShard):
            continue
        n, k, note = s.n, s.k, ""
        if max_unsplit_dim is not None:
            if layer.parallel == "row" and n > max_unsplit_dim:
                n, note = max_unsplit_dim, f" [n {s.n} cut to {max_unsplit_dim}]"
            elif layer.parallel == "column" and k > max_unsplit_dim:
                k = max(BLOCK_SIZE, max_unsplit_dim // BLOCK_SIZE * BLOCK_SIZE)
                note = f" [k {s.k} cut to {k}]"
        if max_weight_elements is not None and n * k > max_weight_elements:
            continue
        out.append((layer, tp, n, k, origin_label(layer, tp) + note))
    out.sort(key=lambda e: (e[2] * e[3], e[4]))
    return out


def tp_problems(*, max_m: int = 4096, degrees: Iterable[int] = DEFAULT_DEGREES,
                catalog: Iterable[LayerShape] = CATALOG, max_unsplit_dim: int | None = None,
                max_weight_elements: int | None = None,
                out_dtypes: Sequence[str] = ("bfloat16", "float16"),
                distribution_names: Sequence[str] | None = None,
                max_seed: int = 15) -> SearchStrategy[GemmProblem]:
    """:class:`GemmProblem` s with the per-rank (n, k) of a real model's TP shard and its origin label.

    See :func:`tp_entries` for the caps; m comes from :func:`m_values`.  Shrinks to the smallest
    runnable per-rank shape, m=1.
    """
    entries = tp_entries(degrees=degrees, catalog=catalog, max_unsplit_dim=max_unsplit_dim,
                         max_weight_elements=max_weight_elements)
    if not entries:
        raise ValueError("tp_problems: no catalog shard fits the caps "
                         f"(max_unsplit_dim={max_unsplit_dim}, max_weight_elements={max_weight_elements})")

    shapes = st.sampled_from(entries)
    ms = m_values(max_m)
    outs = _ordered_choice(out_dtypes, "tp_problems(out_dtypes)")
    dists = distributions(distribution_names)
    seeds = st.integers(0, max_seed)

    @st.composite
    def build(draw) -> GemmProblem:
        _, _, n, k, origin = draw(shapes)
        return GemmProblem(m=draw(ms), n=n, k=k, out_dtype=draw(outs), distribution=draw(dists),
                           seed=draw(seeds), origin=origin)

    return build()


def divisors(m: int) -> list[int]:
    """Divisors of ``m`` in increasing order."""
    small = [d for d in range(1, int(m ** 0.5) + 1) if m % d == 0]
    return sorted(set(small + [m // d for d in small]))


def with_batch_dims(problems: SearchStrategy[GemmProblem]) -> SearchStrategy[GemmProblem]:
    """``problems`` where half the draws get leading dims [batch, seq] with batch*seq = m.

    Shrinks to 2-D activations (batch None); a 3-D case shrinks to batch=1, seq=m.
    """
    @st.composite
    def build(draw) -> GemmProblem:
        problem = draw(problems)
        if draw(st.booleans()):
            b = draw(st.sampled_from(divisors(problem.m)))
            problem = problem.with_(batch=(b, problem.m // b))
        return problem

    return build()


CALIBRATION_RATIOS: tuple[float, ...] = (1.0, 0.5, 1.0 + 2.0 ** -7, 1.0 + 2.0 ** -4, 2.0, 2.0 ** 10)
"""Calibration ratios (runtime amax / calibrated amax) of a static activation scale: exactly the
calibration, below it, just above it (1 + 2^-7: the largest block scale, 451.5, rounds back to 448;
1 + 2^-4: 476, past the 464 midpoint where a non-saturating conversion gives e4m3 NaN), above it (block scales saturate at 448 in the blocks near the amax) and far above it (2^10: most
block scales and codes saturate).  Exact binary fractions, so a case file replays them exactly."""


def calibrations(ratios: Sequence[float] = CALIBRATION_RATIOS) -> SearchStrategy[float | None]:
    """A calibration ratio for :attr:`GemmProblem.calibration`, or None (the dynamic scale, the
    shrink target); half the draws are static."""
    if not ratios or any(not 0 < r < float("inf") for r in ratios):
        raise ValueError(f"calibrations: ratios={ratios!r}: expected positive finite numbers")
    return st.one_of(st.none(), st.sampled_from(tuple(ratios)))


def with_calibration(problems: SearchStrategy[GemmProblem],
                     ratios: Sequence[float] = CALIBRATION_RATIOS) -> SearchStrategy[GemmProblem]:
    """``problems`` whose activations are sometimes quantized with a static (calibrated) global
    scale (:func:`calibrations`); shrinks to the dynamic scale."""
    return st.tuples(problems, calibrations(ratios)).map(lambda pc: pc[0].with_(calibration=pc[1]))


NON_CONTIGUOUS_LAYOUTS: tuple[str, ...] = tuple(lay for lay in INPUT_LAYOUTS if lay != CONTIGUOUS)
"""The views of :data:`harness.input_layout.INPUT_LAYOUTS` (all but ``contiguous``), column slice first."""


def input_layouts(*, share: float = 1.0) -> SearchStrategy[str]:
    """An ``input_layout``: a non-contiguous view in about ``share`` of the draws (0 < share <= 1;
    1: always), ``contiguous`` otherwise; shrinks to contiguous (share < 1), else to ``column_slice``."""
    views = st.sampled_from(NON_CONTIGUOUS_LAYOUTS)
    return views if share >= 1 else rarely(views, st.just(CONTIGUOUS), share)


def with_input_layout(problems: SearchStrategy[GemmProblem], *, share: float = 1.0) -> SearchStrategy[GemmProblem]:
    """``problems`` whose activations are handed as a non-contiguous view (:func:`input_layouts`)."""
    return st.tuples(problems, input_layouts(share=share)).map(lambda pl: pl[0].with_(input_layout=pl[1]))


def empty_batches(problems: SearchStrategy[GemmProblem], *, three_d: bool = False,
                  max_seq: int = 4) -> SearchStrategy[GemmProblem]:
    """``problems`` made empty batches: m = 0, and with ``three_d`` sometimes leading dims
    ``[0, seq]`` (a 3-D input with no batch); shrinks to ``[0, k]``."""
    seq = st.none() if not three_d else st.one_of(st.none(), st.integers(1, max_seq))
    return st.tuples(problems, seq).map(
        lambda ps: ps[0].with_(m=0, batch=None if ps[1] is None else (0, ps[1])))


def linear_problems(*, from_catalog: bool = False, **kwargs) -> SearchStrategy[GemmProblem]:
    """Problems for the linear-layer level: like :func:`gemm_problems` (or :func:`tp_problems` when
    ``from_catalog``), sometimes with a 3-D input ``[batch, seq, k]`` (``GemmProblem.batch``).

    Keyword arguments go to the underlying problem strategy.
    """
    base = tp_problems(**kwargs) if from_catalog else gemm_problems(**kwargs)
    return with_batch_dims(base)


def partition_widths(max_blocks: int) -> SearchStrategy[tuple[int, ...]]:
    """Output widths of a merged layer's 2 (gate, up) or 3 (q, k, v) partitions, each up to
    ``16 * max_blocks`` and drawn independently (unequal, ragged: :func:`ragged_n_values`); shrinks
    to (16, 16)."""
    width = ragged_n_values(max_blocks)
    return st.one_of(st.tuples(width, width), st.tuples(width, width, width))


def gate_up_entries(**tp_kwargs) -> list[tuple[int, int, str]]:
    """``(n, k, origin)`` of the TP catalog's per-rank gated MLP gate_up projections (gate and up
    merged: two partitions of n/2, e.g. 176 + 176 for GLM-4.5-Air's MoE intermediate 1408 / TP8);
    keyword arguments go to :func:`tp_entries` (its caps)."""
    return [(n, k, origin + " [gate, up]") for layer, _, n, k, origin in tp_entries(**tp_kwargs)
            if layer.layer.endswith("gate_up") and n % 2 == 0]


def with_partitions(problems: SearchStrategy[GemmProblem], *, max_blocks: int,
                    gate_up: Sequence[tuple[int, int, str]] = ()) -> SearchStrategy[GemmProblem]:
    """``problems`` made merged-partition layers (:attr:`GemmProblem.partitions`): n becomes the sum
    of :func:`partition_widths` (or, in a third of the draws when ``gate_up`` is given, n, k and the
    origin of a real TP shard's gate_up with two equal partitions), and half are fused on disk (one
    checkpoint tensor, one scalar global scale).  Shrinks to two 16-wide partitions split on disk."""
    widths = partition_widths(max_blocks)
    real = st.sampled_from(tuple(gate_up)) if gate_up else None

    @st.composite
    def build(draw) -> GemmProblem:
        problem = draw(problems)
        fused = draw(st.booleans())
        # both drawn every time, so that shrinking the choice to the synthetic widths moves no other draw
        parts = draw(widths)
        if real is not None:
            n, k, origin = draw(real)
            if draw(st.integers(0, 2)) == 2:
                return problem.with_(n=n, k=k, origin=origin, partitions=(n // 2, n // 2), fused_on_disk=fused)
        return problem.with_(n=sum(parts), partitions=parts, fused_on_disk=fused)

    return build()


def gemm_cases(problems: SearchStrategy[GemmProblem] | None = None,
               poison: SearchStrategy[Poison] | None = None,
               **problem_kwargs) -> SearchStrategy[tuple[GemmProblem, Poison]]:
    """``(problem, poison)`` pairs; defaults: :func:`gemm_problems` (``problem_kwargs``) and
    ``poisons(min_regions=0)``, so a case shrinks to the clean pipeline unless the failure needs
    poison, and then to one NaN-poisoned region.
    """
    if problems is not None and problem_kwargs:
        raise ValueError("gemm_cases: pass either a problems strategy or problem keyword arguments")
    problems = gemm_problems(**problem_kwargs) if problems is None else problems
    poison = poisons(min_regions=0) if poison is None else poison
    return st.tuples(problems, poison)


__all__ = [
    "NAMED_POISON_BYTES", "POISON_REGIONS", "SMALL_M", "TILE_BOUNDARY_M",
    "CALIBRATION_RATIOS", "LARGE_M", "REAL_SHARD_K", "REAL_SHARD_N",
    "NON_CONTIGUOUS_LAYOUTS", "empty_batches", "input_layouts", "with_input_layout",
    "block_counts", "calibrations", "catalog_block_counts", "distributions", "divisors", "gate_up_entries",
    "gemm_cases", "partition_widths", "with_partitions",
    "gemm_problems", "kn_values", "large_problems", "linear_problems", "m_values", "poison_bytes", "poisons",
    "ragged_n_values", "rarely",
    "tp_entries", "tp_problems", "with_batch_dims", "with_calibration",
]
