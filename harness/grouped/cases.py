"""Grouped case files: a grouped trial as versioned JSON that rebuilds its operands bit for bit.

Schema ``nvfp4-harness/grouped-case/1`` (:data:`SCHEMA`)::

    {"schema": "nvfp4-harness/grouped-case/1", "id"?: str, "created"?: ISO 8601 time,
     "backend": grouped backend name, "level"?: "grouped", "property": a grouped property,
     "problem": GroupedProblem.to_dict() or MoeProblem.to_dict(), "poison"?: GroupedPoison.to_dict(),
     "environment"?: {device, gpu_name, ...}, "observed"?: {"summary": str, "experts"?: [...], ...},
     "digest"?: sha256 hex | null, "note"?: str | null, "expect"?: "pass" | "xfail",
     "tracks"?: str | null, "reproduced"?: [...], "replay"?: "nvfp4-harness replay path/to/case.json"}

The trial's keys (backend, level, property, problem, poison) are written by
:meth:`GroupedTrial.to_dict`; a failure recorded by the property suite also carries the id, the
time, where it was seen, what was seen (``observed``, with the per-expert view of
:func:`harness.grouped.records.expert_rows` under ``experts``) and its replay command.  Keys marked
``?`` may be left out (files written before they existed load unchanged).  :func:`read_case`
validates every field and raises :class:`GroupedCaseError` with one line naming the file, the field
path, the value and what was expected.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.cases import (MAX_SEED, CaseFileError, _Checker, _parse_environment, _write_atomic, from_model_error,
                           parse_record_fields, read_document, replay_command)
from harness.grouped.problem import GROUPED_PROPERTIES, MOE_PROPERTIES, GroupedPoison, GroupedProblem, GroupedTrial, \
    MoeProblem
from harness.trial import json_safe

SCHEMA = "nvfp4-harness/grouped-case/1"
LEVEL = "grouped"

_TOP_REQUIRED = ("schema", "backend", "property", "problem")
_TOP_OPTIONAL = ("id", "created", "level", "poison", "environment", "observed", "digest", "note", "expect",
                 "tracks", "reproduced", "replay")
_TOP_ORDER = ("schema", "id", "created", "backend", "level", "property", "problem", "poison", "environment",
              "observed", "digest", "note", "expect", "tracks", "reproduced", "replay")
_INT_FIELDS = ("tokens", "experts", "n", "k", "hidden", "intermediate", "seed")
_STR_FIELDS = ("input_scales", "fc1_input_scale", "out_dtype", "in_dtype", "distribution")
_PROPERTIES = GROUPED_PROPERTIES + tuple(p for p in MOE_PROPERTIES if p not in GROUPED_PROPERTIES)


class GroupedCaseError(CaseFileError):
    """A grouped case file that cannot be read: ``source: field=value: expected ...`` (one line)."""


def is_grouped_document(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("schema") == SCHEMA


def is_grouped_case_file(path: str | Path) -> bool:
    """Whether ``path`` is a JSON document of the grouped schema (False for anything unreadable)."""
    try:
        return is_grouped_document(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError):
        return False


@dataclass
class GroupedCase:
    """One grouped failure (or a hand-written grouped case) as a replayable record.

    It answers to the attributes the report and the results reader use for every case file
    (``id``, ``backend``, ``level``, ``property``, ``problem``, ``poison``, ``observed``,
    ``a_layout``, ``replay``, ``expect``, ``tracks``, ``note``)."""
    trial: GroupedTrial
    id: str
    created: str | None = None
    observed: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    digest: str | None = None
    note: str | None = None
    expect: str = "pass"
    tracks: str | None = None
    reproduced: list[dict[str, Any]] = field(default_factory=list)
    replay: str = ""

    level = LEVEL
    a_layout = None

    @property
    def backend(self) -> str:
        return self.trial.backend

    @property
    def problem(self) -> GroupedProblem:
        return self.trial.problem

    @property
    def poison(self) -> GroupedPoison:
        return self.trial.poison

    # last: the name shadows the builtin decorator inside the class body
    property = property(lambda self: self.trial.property, doc="The property this case checks.")  # noqa: A003

    def trial_on(self, backend: str | None = None) -> GroupedTrial:
        """The trial this case records (on ``backend`` instead of its own, when given)."""
        return replace(self.trial, backend=backend) if backend else self.trial

    @classmethod
    def create(cls, trial: GroupedTrial, *, observed: dict[str, Any] | None = None,
               environment: dict[str, Any] | None = None, digest: str | None = None,
               reproduced: list[dict[str, Any]] | None = None) -> "GroupedCase":
        """A new case stamped with its content id and the current UTC time."""
        return cls(trial, case_id(trial, digest), _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   dict(observed or {"summary": ""}), dict(environment or {}), digest,
                   reproduced=[dict(r) for r in reproduced or ()])

    def to_dict(self) -> dict[str, Any]:
        doc = {"schema": SCHEMA, "id": self.id, "created": self.created, **self.trial.to_dict(),
               "environment": json_safe(self.environment), "observed": json_safe(self.observed),
               "digest": self.digest, "note": self.note, "expect": self.expect, "tracks": self.tracks,
               "reproduced": [dict(r) for r in self.reproduced], "replay": self.replay}
        return {k: doc[k] for k in _TOP_ORDER if k in doc and (k != "reproduced" or self.reproduced)}


def case_id(trial: GroupedTrial, digest: str | None = None) -> str:
    """``<property>-<backend>-<8 hex>``, stable under re-runs (the hash covers the trial and the digest)."""
    content = {**trial.to_dict(), "digest": digest}
    h = hashlib.sha256(json.dumps(json_safe(content), sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{trial.property}-{trial.backend}").strip("._-") or "case"
    return f"{stem[:110]}-{h}"


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
def _parse_problem(c: _Checker, d: Any) -> GroupedProblem | MoeProblem:
    # a fused-MoE problem (hidden and intermediate, no n, k): either of its own dimensions tells it apart,
    # so a file missing the other is told which one it misses
    moe = isinstance(d, dict) and ("intermediate" in d or "hidden" in d)
    dims = ("hidden", "intermediate") if moe else ("n", "k")
    required = ("tokens", "experts", *dims, "topk_ids", "topk_weights", "row_align")
    known = tuple(f.name for f in fields(MoeProblem if moe else GroupedProblem) if f.name not in required)
    p = dict(c.obj(d, "problem", required, known))
    for name in _INT_FIELDS:
        if name in p:
            c.integer(p[name], f"problem.{name}", minimum=0 if name == "seed" else 1,
                      maximum=MAX_SEED if name == "seed" else None)
    for name in _STR_FIELDS:
        if name in p:
            c.string(p[name], f"problem.{name}")
    c.string(p.get("origin"), "problem.origin", nullable=True)
    for name, what in (("topk_ids", "expert indices (integers)"), ("topk_weights", "routing weights (numbers)")):
        rows = p[name]
        if not isinstance(rows, list) or not rows or not all(isinstance(r, list) and r for r in rows):
            raise c.fail(f"problem.{name}", rows, f"a list of one non-empty list of {what} per token")
        for t, r in enumerate(rows):
            for x in r:
                if isinstance(x, bool) or not isinstance(x, int if name == "topk_ids" else (int, float)):
                    raise c.fail(f"problem.{name}[{t}]", r, f"a list of {what}")
    ra = p["row_align"]
    if not isinstance(ra, list) or any(isinstance(a, bool) or not isinstance(a, int) for a in ra):
        raise c.fail("problem.row_align", ra, "a list of row paddings (integers), one per expert")
    try:
        return MoeProblem.from_dict(p) if moe else GroupedProblem.from_dict(p)
    except (ValueError, TypeError) as exc:
        raise from_model_error(c, exc, "problem", p) from None


def _parse_poison(c: _Checker, d: Any) -> GroupedPoison:
    if d is None:
        return GroupedPoison()
    p = c.obj(d, "poison", (), tuple(f.name for f in fields(GroupedPoison)))
    for name, v in p.items():
        if name == "victim":
            c.integer(v, "poison.victim", nullable=True, minimum=0)
        else:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
                raise c.fail(f"poison.{name}", v, "a byte (integer 0..255)")
    try:
        return GroupedPoison(**p)
    except (ValueError, TypeError) as exc:
        raise from_model_error(c, exc, "poison", p) from None


def parse(doc: Any, source: str = "<dict>") -> GroupedCase:
    """Validate a parsed grouped case document.  Raises :class:`GroupedCaseError`."""
    try:
        return _parse(doc, source)
    except GroupedCaseError:
        raise
    except CaseFileError as exc:  # the shared field checks of harness.cases
        prefix = f"{exc.source}: "
        msg = str(exc)[len(prefix):] if str(exc).startswith(prefix) else str(exc)
        raise GroupedCaseError(exc.source, exc.field, msg, exc.value) from None


def _parse(doc: Any, source: str) -> GroupedCase:
    c = _Checker(source)
    if isinstance(doc, dict) and doc.get("schema") != SCHEMA:
        raise GroupedCaseError(source, "schema", f"schema={doc.get('schema')!r}: expected {SCHEMA!r}",
                               doc.get("schema"))
    d = c.obj(doc, "", _TOP_REQUIRED, _TOP_OPTIONAL)
    backend = c.string(d["backend"], "backend")
    if "level" in d and d["level"] != LEVEL:
        raise c.fail("level", d["level"], f"{LEVEL!r} (a grouped case)")
    prop = c.choice(d["property"], "property", _PROPERTIES)
    problem = _parse_problem(c, d["problem"])
    poison = _parse_poison(c, d.get("poison"))
    try:
        trial = GroupedTrial(backend, prop, problem, poison)
    except (ValueError, TypeError) as exc:
        if str(exc).startswith("trial.property"):  # the property of the other kind of problem
            raise CaseFileError(c.source, "property", str(exc)[len("trial."):], prop) from None
        raise from_model_error(c, exc, "poison", d.get("poison")) from None
    environment = _parse_environment(c, d.get("environment") or {})
    observed = dict(c.obj(d.get("observed") or {"summary": ""}, "observed", (), None))
    if "summary" in observed:
        c.string(observed["summary"], "observed.summary", nonempty=False)
    record = parse_record_fields(c, d, optional=True)
    record["id"] = record["id"] or case_id(trial, record["digest"])
    return GroupedCase(trial, observed=observed, environment=environment, **record)


def read_case(path: str | Path) -> GroupedCase:
    """Read and validate a grouped case file.  Raises :class:`GroupedCaseError` (a ValueError)."""
    return parse(read_document(path, GroupedCaseError), str(path))


def write_case(case: GroupedCase, path: str | Path) -> Path:
    """Write ``case`` atomically; an existing different file is never replaced (``<stem>-2.json``,
    ... instead).  An empty ``case.replay`` becomes the replay command of the written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    auto = case.replay in ("", replay_command(target))
    for attempt in range(1, 10_001):
        candidate = target if attempt == 1 else target.with_name(f"{target.stem}-{attempt}{target.suffix or '.json'}")
        doc = case.to_dict()
        if auto:
            doc["replay"] = replay_command(candidate)
        parse(doc, str(candidate))  # never write a file read_case would refuse
        data = (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode("utf-8")
        if candidate.exists() and candidate.read_bytes() == data:
            break
        if not candidate.exists() and _write_atomic(candidate, data, replace=False):
            break
    else:  # pragma: no cover
        raise OSError(f"write_case: no free file name next to {target}")
    if auto:
        case.replay = replay_command(candidate)
    return candidate


# ----------------------------------------------------------------------------------------------
# the trial-level helpers (a trial and its digest, without the record keeping)
# ----------------------------------------------------------------------------------------------
def save_case(path: Path | str, trial: GroupedTrial, digest: str | None = None) -> Path:
    """Write ``trial`` (and the operands' ``digest``) as a grouped case file at ``path``."""
    path = Path(path)
    case = GroupedCase.create(trial, digest=digest)
    path.unlink(missing_ok=True)
    return write_case(case, path)


def load_case(path: Path | str) -> tuple[GroupedTrial, str | None]:
    """(trial, recorded digest) of a grouped case file."""
    case = read_case(path)
    return case.trial, case.digest
