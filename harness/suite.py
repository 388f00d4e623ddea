"""The property suite's plan: which trials each (backend, property) pair draws, per size profile.

Used by the pytest property suite (properties/), the self-test and the fuzz command, so that a
mutant is hunted with exactly the strategies the real suite uses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from harness import strategies as hs
from harness.data import DEGENERATE, DISTRIBUTIONS
from harness.backends.protocol import Backend
from harness.problem import CLEAN, GemmProblem
from harness.trial import Trial, properties_for


@dataclass(frozen=True)
class Sizes:
    """Caps on generated shapes: tiny under the CPU interpreter, larger on a GPU."""
    max_m: int
    max_nk_blocks: int
    tp_max_unsplit: int
    tp_max_weight: int
    tp_max_degree: int
    #: chance of a large problem (M up to 16384, K of real TP shards such as 3696 = 29568/8) per GEMM
    #: draw; 0 never (the CPU interpreter: CI's 2-core machine could not afford one)
    large_share: float = 0.0


CPU_SIZES = Sizes(max_m=40, max_nk_blocks=8, tp_max_unsplit=32, tp_max_weight=32 * 1024, tp_max_degree=2)
GPU_SIZES = Sizes(max_m=1100, max_nk_blocks=96, tp_max_unsplit=1024, tp_max_weight=4096 * 1024, tp_max_degree=8,
                  large_share=0.05)


LAYOUT_SHARE = 0.25
"""Share of quantizer_agreement, linear reference_agreement and empty_batch draws whose activations are
a non-contiguous view (harness.input_layout); layout_invariance always draws one."""


def sizes_for(device: str) -> Sizes:
    return GPU_SIZES if device == "cuda" else CPU_SIZES


def _dtypes(backend: Backend) -> tuple[str, ...]:
    return tuple(str(d).replace("torch.", "") for d in backend.requirements.out_dtypes) or ("bfloat16",)


def _problems(backend: Backend, sz: Sizes, *, ragged_n: bool = False, catalog: bool = True,
              cap_m: bool = True) -> SearchStrategy[GemmProblem]:
    req = backend.requirements
    max_m = min(sz.max_m, req.m_max) if (cap_m and req.m_max) else sz.max_m
    base = hs.gemm_problems(max_m=max_m, max_nk_blocks=sz.max_nk_blocks, out_dtypes=_dtypes(backend),
                            ragged_n=ragged_n)
    if sz.large_share > 0:
        large = hs.large_problems(max_m=max_m if (cap_m and req.m_max) else hs.LARGE_M[-1],
                                  max_nk_blocks=sz.max_nk_blocks, out_dtypes=_dtypes(backend), ragged_n=ragged_n)
        base = hs.rarely(large, base, sz.large_share)
    if not catalog:
        return base
    tp = hs.tp_problems(max_m=max_m, max_unsplit_dim=sz.tp_max_unsplit, max_weight_elements=sz.tp_max_weight,
                        out_dtypes=_dtypes(backend))
    return st.one_of(base, tp)


def _layouts(backend: Backend) -> SearchStrategy[str | None]:
    lays = backend.requirements.a_layouts
    return st.sampled_from([lay.value for lay in lays]) if len(lays) > 1 else st.just(lays[0].value)


def _two_rows_at_least(p: GemmProblem) -> GemmProblem:
    """``p`` with m >= 2 (a 3-D batch of one row gets a second one in its last leading dim)."""
    if p.m >= 2:
        return p
    if p.batch is not None:
        return p.with_(m=2, batch=tuple(p.batch[:-1]) + (2,))
    return p.with_(m=2)


def trials(backend: Backend, prop: str, sz: Sizes) -> SearchStrategy[Trial]:
    """Trials for ``backend`` under property ``prop``; every one shrinks to m=1 and a single
    poisoned region (when the property poisons one)."""
    if prop not in properties_for(backend):
        raise ValueError(f"property={prop!r} does not apply to {backend.level}-level backend {backend.name!r}")
    name = backend.name

    def build(problem, poison=CLEAN, layout=None, tp=1, parallel="column"):
        return Trial(name, prop, problem, poison, layout, tp, parallel)

    # only the input dtypes the backend declares (an undeclared one would only be refused)
    in_dtypes = tuple(str(d).replace("torch.", "") for d in backend.requirements.in_dtypes)
    # static (calibrated) activation scales: the quantizer, the linear layer and the GEMM's reference
    # agreement (the other GEMM properties compare a backend with itself, the scale changes nothing there)
    if backend.level == "quantizer":
        probs = hs.gemm_problems(max_m=sz.max_m, max_nk_blocks=sz.max_nk_blocks, in_dtypes=in_dtypes)
        if prop == "layout_invariance":
            return st.builds(build, hs.with_input_layout(probs))
        if prop == "empty_batch":
            return st.builds(build, hs.with_input_layout(hs.empty_batches(probs), share=LAYOUT_SHARE))
        return st.builds(build, hs.with_input_layout(hs.with_calibration(probs), share=LAYOUT_SHARE))
    if backend.level == "checkpoint":
        # the degenerate kinds are left to the quantizer and linear levels: ModelOpt exports an all-zero
        # tensor with weight_scale_2 = 0 and input_scale = 0 (encode divisor inf), which the
        # checkpoint_convention property does not yet classify (a finding to report, not to hide)
        regular = [d for d in DISTRIBUTIONS if d not in DEGENERATE]
        return st.builds(build, hs.gemm_problems(max_m=sz.max_m, max_nk_blocks=sz.max_nk_blocks,
                                                 in_dtypes=in_dtypes, distribution_names=regular))
    if backend.level == "linear":
        probs = hs.linear_problems(max_m=sz.max_m, max_nk_blocks=sz.max_nk_blocks,
                                   in_dtypes=("bfloat16", "float16")).map(lambda p: p.with_(out_dtype=p.in_dtype))
        clean_slots = hs.poisons(min_regions=0, allowed=(), stale_memory=None)
        if getattr(backend, "merged_partitions", False):
            # merged-partition layers (QKV, gate/up): always for partition_isolation, whose unwritten
            # scale slots hold a poison byte; in a quarter of the other properties' draws
            merged = hs.with_partitions(probs, max_blocks=sz.max_nk_blocks,
                                        gate_up=hs.gate_up_entries(max_unsplit_dim=sz.tp_max_unsplit,
                                                                   max_weight_elements=sz.tp_max_weight))
            if prop == "partition_isolation":
                probs = merged
                clean_slots = st.builds(lambda p, b: replace(p, partition_slots=b), clean_slots, hs.poison_bytes())
            else:
                probs = hs.rarely(merged, probs, 0.25)
        if getattr(backend, "static_input_scale", False):
            probs = hs.with_calibration(probs)
        if prop == "layout_invariance":
            probs = hs.with_input_layout(probs)
        elif prop == "input_isolation":
            # one bad row among others: at least two rows (a one-row draw would leave nothing to isolate,
            # and the property would never run)
            probs = probs.map(_two_rows_at_least)
        elif prop == "empty_batch":
            probs = hs.with_input_layout(hs.empty_batches(probs, three_d=True), share=LAYOUT_SHARE)
        elif prop == "reference_agreement":
            probs = hs.with_input_layout(probs, share=LAYOUT_SHARE)
        return st.builds(build, probs, clean_slots)
    layout = _layouts(backend)
    if prop == "reference_agreement":
        return st.builds(build, hs.with_calibration(_problems(backend, sz)), hs.poisons(min_regions=0), layout)
    if prop == "graph_replay":  # the poison is written after capture, into at least one region
        return st.builds(build, hs.with_calibration(_problems(backend, sz)), hs.poisons(min_regions=1), layout)
    if prop == "row_isolation":
        return st.builds(build, _problems(backend, sz), hs.poisons(regions={"m_pad"}), layout)
    if prop == "column_isolation":
        return st.builds(build, _problems(backend, sz, ragged_n=True, catalog=False),
                         hs.poisons(regions={"n_pad"}), layout)
    if prop == "k_tail":
        return st.builds(build, _problems(backend, sz), hs.poisons(regions={"k_tail"}), layout)
    if prop == "clean_rejection":
        return st.builds(build, _problems(backend, sz, catalog=False), st.just(CLEAN), layout)
    if prop == "tp_consistency":
        entries = hs.tp_entries(degrees=(2, 4, 8), max_unsplit_dim=sz.tp_max_unsplit,
                                max_weight_elements=sz.tp_max_weight)
        req = backend.requirements
        max_m = min(sz.max_m, req.m_max) if req.m_max else sz.max_m

        @st.composite
        def tp_trial(draw) -> Trial:
            layer, tp, n, k, origin = draw(st.sampled_from(entries))
            problem = GemmProblem(m=draw(hs.m_values(max_m)), n=n, k=k,
                                  out_dtype=draw(st.sampled_from(_dtypes(backend))),
                                  distribution=draw(hs.distributions()), seed=draw(st.integers(0, 15)),
                                  origin=origin)
            return build(problem, CLEAN, draw(layout), min(tp, sz.tp_max_degree), layer.parallel)

        return tp_trial()
    # output_coverage, determinism, batch_invariance
    return st.builds(build, _problems(backend, sz), st.just(CLEAN), layout)
