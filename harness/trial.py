"""The trial model: what one check of one backend is, what came of it, and the shared vocabulary.

A :class:`Trial` names everything needed to rebuild a case bit for bit (backend, property,
problem, poison, activation layout, TP split); an :class:`Outcome` says what happened
(:data:`OUTCOMES`) and what was measured (:class:`PropertyResult`).  Both are plain data: the
engine (:mod:`harness.runner`) produces them, the results directory (:mod:`harness.results`) and
case files (:mod:`harness.cases`) store them through :meth:`Trial.to_dict`, the one serialisation
of a trial, and the report reads them back without importing the engine.

Names defined here once: the property names (:data:`PROPERTIES`, per level), the outcome names,
the backend levels, and the JSON spelling of non-finite numbers (:func:`json_safe` writes
``"NaN"``, ``"Infinity"``, ``"-Infinity"``; :func:`json_number` also reads Python's ``"nan"``,
``"inf"``, ``"-inf"``, which result streams written before this module carry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.problem import CLEAN, GemmProblem, Poison

PROPERTIES: tuple[str, ...] = (
    "reference_agreement",
    "row_isolation",
    "column_isolation",
    "k_tail",
    "output_coverage",
    "determinism",
    "clean_rejection",
    "tp_consistency",
    "quantizer_agreement",
    "batch_invariance",
    "checkpoint_convention",
    "input_isolation",
    "partition_isolation",
    "graph_replay",
    "layout_invariance",
    "empty_batch",
)
"""Every property, in report order (:mod:`harness.checks` holds the verdicts)."""

GEMM_PROPERTIES = ("reference_agreement", "row_isolation", "column_isolation", "k_tail", "output_coverage",
                   "determinism", "clean_rejection", "tp_consistency", "batch_invariance", "graph_replay")
LINEAR_PROPERTIES = ("reference_agreement", "determinism", "batch_invariance", "input_isolation",
                     "partition_isolation", "graph_replay", "layout_invariance", "empty_batch")
QUANTIZER_PROPERTIES = ("quantizer_agreement", "layout_invariance", "empty_batch")
CHECKPOINT_PROPERTIES = ("checkpoint_convention",)
LEVEL_PROPERTIES = {"gemm": GEMM_PROPERTIES, "linear": LINEAR_PROPERTIES, "quantizer": QUANTIZER_PROPERTIES,
                    "checkpoint": CHECKPOINT_PROPERTIES}
LEVELS: tuple[str, ...] = tuple(LEVEL_PROPERTIES)
"""Backend levels: a GEMM on pipeline operands, a serving engine's linear layer, a quantizer, a
checkpoint convention (a library's writer with a serving engine's loader)."""

GPU_ONLY_PROPERTIES: tuple[str, ...] = ("graph_replay",)
"""Properties that need a CUDA GPU whatever the backend runs on (a CUDA graph captures the call);
elsewhere they are skipped as not applicable, and a mutant only they catch cannot be hunted."""

ISOLATION_PROPERTIES = ("row_isolation", "column_isolation", "k_tail", "partition_isolation")
"""Properties that poison one padding region (``measure.region``, ``measure.poison_kind``)."""

OUTCOMES: tuple[str, ...] = ("pass", "fail", "crash", "skip")
"""What came of a trial: the property held, it did not (or the backend broke its contract), a
sticky CUDA error ended the process, or the backend does not run the case here."""

OK, CHANGED, NONFINITE, PADDING, ACCEPTED = 0, 1, 2, 3, 4
"""Cell codes of an output picture, ``measure.grid`` (docs/results-format.md): what the property
judged of each output element.  CHANGED: outside the bound (reference agreement) or changed bits
(isolation); NONFINITE: a NaN/Inf judged wrong; ACCEPTED: an infinity within the bound by the
overflow rule (:func:`harness.oracle.compare`); PADDING: not a real output."""

Status = Literal["pass", "fail", "skip", "crash"]


@dataclass
class PropertyResult:
    """The verdict of one property: ``ok``, a one-line ``summary`` and what was ``measure``d
    (JSON-able values; keys in docs/results-format.md)."""
    property: str
    ok: bool
    summary: str
    measure: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Trial:
    """One property of one backend on one case (``a_layout`` None: the backend's first layout)."""
    backend: str
    property: str
    problem: GemmProblem
    poison: Poison = CLEAN
    a_layout: str | None = None
    tp: int = 1
    parallel: Literal["column", "row"] = "column"

    def to_dict(self) -> dict:
        """The JSON object of this trial (the keys every result record and case file carries)."""
        return {"backend": self.backend, "property": self.property, "problem": self.problem.to_dict(),
                "poison": self.poison.to_dict(), "a_layout": self.a_layout, "tp": self.tp,
                "parallel": self.parallel}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Trial":
        """The inverse of :meth:`to_dict`; ``tp``/``parallel``/``a_layout`` may be absent.  Raises
        ValueError (from :class:`GemmProblem`/:class:`Poison`) or KeyError for a missing field."""
        p = dict(d["problem"])
        if p.get("batch") is not None:
            p["batch"] = tuple(p["batch"])
        if p.get("partitions") is not None:
            p["partitions"] = tuple(p["partitions"])
        return cls(d["backend"], d["property"], GemmProblem(**p), Poison(**d.get("poison", {})),
                   d.get("a_layout"), int(d.get("tp") or 1), d.get("parallel") or "column")


@dataclass
class Outcome:
    """What came of a trial: ``status`` (one of :data:`OUTCOMES`), the reason a person reads, the
    property's result, the operands' sha256 digest when taken, the time spent (s) and the
    activation scale layout actually used."""
    status: Status
    reason: str
    result: PropertyResult | None = None
    digest: str | None = None
    duration_s: float = 0.0
    a_layout: str | None = None

    @property
    def measure(self) -> dict:
        return self.result.measure if self.result else {}


def properties_for(backend) -> tuple[str, ...]:
    """The properties that apply to ``backend`` (anything with a ``level``; a grouped backend's are
    its own ``properties``: :data:`harness.grouped.problem.GROUPED_PROPERTIES` for a grouped GEMM,
    :data:`harness.grouped.problem.MOE_PROPERTIES` for a fused MoE)."""
    if backend.level == "grouped":
        from harness.grouped.problem import GROUPED_PROPERTIES

        return tuple(getattr(backend, "properties", GROUPED_PROPERTIES))
    return LEVEL_PROPERTIES[backend.level]


def selection_group(backend) -> str:
    """The name under which a selection error lists ``backend``'s properties: its level, or
    ``fused-MoE`` for a fused-MoE backend (grouped level, properties of its own)."""
    return "fused-MoE" if getattr(backend, "kind", None) == "moe" else f"{backend.level}-level"


def all_properties() -> tuple[str, ...]:
    """Every property name a selection may use: :data:`PROPERTIES`, then the grouped level's (grouped
    GEMM, then fused MoE)."""
    from harness.grouped.problem import GROUPED_PROPERTIES, MOE_PROPERTIES

    return PROPERTIES + tuple(dict.fromkeys(p for p in GROUPED_PROPERTIES + MOE_PROPERTIES if p not in PROPERTIES))


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------

NONFINITE_SPELLINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf,
                       "nan": math.nan, "inf": math.inf, "-inf": -math.inf}
"""Strings read back as non-finite numbers: JSON-style (written) and Python ``str(float)`` (read only)."""


def json_safe(obj: Any) -> Any:
    """``obj`` as standard JSON data: mapping keys as strings, tuples as lists, non-finite floats as
    ``"NaN"``/``"Infinity"``/``"-Infinity"``, anything else that JSON cannot hold as its ``str``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def json_number(v: Any) -> float | None:
    """A float from a JSON value: numbers as they are, the spellings of :data:`NONFINITE_SPELLINGS`
    as NaN/inf; None for null, booleans and anything else."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in NONFINITE_SPELLINGS:
        return NONFINITE_SPELLINGS[v]
    return None
