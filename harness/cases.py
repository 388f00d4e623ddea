"""Case files: one failure as a versioned, replayable JSON document.

A case file records everything needed to run one failing call again: the backend, the property
that failed, the logical problem (shapes, dtypes, data distribution and seed), the poison written
into each padding region, the activation scale layout, and a digest of the operand bytes so a
replay can tell that it rebuilt exactly the same inputs.  It also records where the failure was
seen (the environment) and what was seen (``observed``).

Schema ``nvfp4-harness/case/1``::

    {"schema": "nvfp4-harness/case/1", "id": str, "created": ISO 8601 time,
     "backend": registered backend name, "level": "gemm" | "linear" | "quantizer" | "checkpoint",
     "property": one of harness.trial.PROPERTIES,
     "problem": {m, n, k, out_dtype, in_dtype, distribution, seed, origin?, batch?, calibration?,
                 partitions?, fused_on_disk?, input_layout?},
     "poison": {m_pad, n_pad, k_tail, data, stale_memory, partition_slots?},
     "a_layout"?: "linear" | "128x4" | "8x4" | null, "tp"?: int >= 1, "parallel"?: "column" | "row",
     "environment": {device, gpu_name, compute_capability, driver, cuda, torch, triton, ...},
     "observed": {"summary": str, "max_err_units"?: number | null, "nan_rows"?: [int],
                  "changed_rows"?: [int], "changed_cols"?: [int], "region"?: str | null, ...},
     "digest"?: sha256 hex | null, "note"?: str | null,
     "expect": "pass" | "xfail", "tracks"?: str | null,
     "reproduced"?: [{"date": "YYYY-MM-DD", "arch": "SM90" | "cpu", "gpu_name"?: str | null,
                      "versions": {library: version}}],
     "replay": "nvfp4-harness replay path/to/case.json"}

``reproduced`` lists where the failure was seen (upstream tracking, :mod:`harness.tracking`): the
date, the GPU architecture and the versions of the libraries involved.  Files written before it
existed load unchanged; for them the tracking reads the same facts from ``environment`` and
``created``.

The trial's keys (backend, property, problem, poison, a_layout, tp, parallel) are written by
:meth:`harness.trial.Trial.to_dict`.  Keys marked ``?`` may be left out (they read as null, [] for
the row/column lists, 1 and "column" for tp and parallel: files written before tp/parallel were
top-level keys carry them in ``observed``, where they are still read); every
other key is required, and unknown top-level, problem or poison keys are errors (a misspelt key
must not be silently ignored).  ``environment`` and ``observed`` may carry extra keys.
Non-finite numbers in ``observed`` are written as the strings "NaN", "Infinity", "-Infinity" so
the file stays standard JSON (:func:`harness.trial.json_safe`); ``max_err_units`` reads them (and
"nan", "inf", "-inf") back as floats.

:func:`load_case` validates every field and raises :class:`CaseFileError` naming the file, the
field path (``problem.k``), the bad value and what was expected.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shlex
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.input_layout import CONTIGUOUS, INPUT_LAYOUTS
from harness.layouts import ScaleLayout
from harness.problem import REGIONS, SLOT_REGIONS, GemmProblem, Poison
from harness.trial import LEVELS, NONFINITE_SPELLINGS, PROPERTIES, Trial, json_safe

SCHEMA = "nvfp4-harness/case/1"
_SCHEMA_PREFIX = "nvfp4-harness/case/"

EXPECTS = ("pass", "xfail")
PARALLEL = ("column", "row")

_TOP_REQUIRED = ("schema", "id", "created", "backend", "level", "property", "problem", "poison",
                 "environment", "observed", "expect", "replay")
_TOP_OPTIONAL = ("a_layout", "tp", "parallel", "digest", "note", "tracks", "reproduced")
_TOP_ORDER = ("schema", "id", "created", "backend", "level", "property", "problem", "poison", "a_layout",
              "tp", "parallel", "environment", "observed", "digest", "note", "expect", "tracks", "reproduced",
              "replay")
MAX_SEED = 2**63 - 1
"""The largest seed a case file may hold: data seeds feed ``torch.Generator.manual_seed`` (offset by a
stream constant), which takes at most an unsigned 64-bit value."""
_PROBLEM_REQUIRED = ("m", "n", "k", "out_dtype", "in_dtype", "distribution", "seed")
_PROBLEM_OPTIONAL = ("origin", "batch", "calibration", "partitions", "fused_on_disk", "input_layout")
_ENV_STR_FIELDS = ("device", "gpu_name", "driver", "cuda", "torch", "triton", "flashinfer", "hypothesis",
                   "python", "torchao", "compressed_tensors", "modelopt")
_ENV_INT_FIELDS = ("compute_capability", "gpu_count")
_OBSERVED_INT_LISTS = ("nan_rows", "changed_rows", "changed_cols")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
class CaseFileError(ValueError):
    """A case file (or dict) that is not a valid ``nvfp4-harness/case/1`` document.

    ``source`` is the file (or "<dict>"), ``field`` the dotted field path or None for problems of
    the whole document (bad JSON, unreadable file), ``value`` the offending value.
    """

    def __init__(self, source: str, field: str | None, message: str, value: Any = None) -> None:
        self.source = source
        self.field = field
        self.value = value
        super().__init__(f"{source}: {message}")


# ----------------------------------------------------------------------------------------------
# The case
# ----------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One failure (or regression) as a replayable record; see the module docstring for the schema."""
    id: str
    created: str
    backend: str
    level: Literal["gemm", "linear", "quantizer", "checkpoint"]
    property: str
    problem: GemmProblem
    poison: Poison
    observed: dict[str, Any]
    a_layout: ScaleLayout | None = None
    tp: int = 1
    parallel: Literal["column", "row"] = "column"
    environment: dict[str, Any] = field(default_factory=dict)
    digest: str | None = None
    note: str | None = None
    expect: Literal["pass", "xfail"] = "pass"
    tracks: str | None = None
    replay: str = ""
    """The one-line replay command; :func:`save_case` fills it in when empty."""
    reproduced: list[dict[str, Any]] = field(default_factory=list)
    """Where the failure was seen: ``{"date", "arch", "gpu_name", "versions"}`` per sighting."""

    @classmethod
    def create(cls, *, backend: str, level: str, property: str, problem: GemmProblem, poison: Poison,
               observed: Mapping[str, Any], a_layout: ScaleLayout | str | None = None,
               environment: Mapping[str, Any] | None = None, digest: str | None = None,
               note: str | None = None, expect: str = "pass", tracks: str | None = None, tp: int = 1,
               parallel: str = "column", reproduced: list[Mapping[str, Any]] | None = None) -> "Case":
        """A new case stamped with its content id, the current UTC time and (by default) this process's
        environment.  Its ``replay`` command is filled in by :func:`save_case`."""
        layout = ScaleLayout.parse(a_layout) if a_layout is not None else None
        if environment is None:
            from harness.env import current

            environment = current().to_dict()
        return cls(id=case_id(backend, property, problem, poison, layout, digest),
                   created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   backend=backend, level=level, property=property, problem=problem, poison=poison,
                   observed=dict(observed), a_layout=layout, tp=tp, parallel=parallel,  # type: ignore[arg-type]
                   environment=dict(environment), digest=digest, note=note, expect=expect, tracks=tracks,
                   reproduced=[dict(r) for r in reproduced or ()])

    @classmethod
    def from_trial(cls, trial: Trial, *, level: str, observed: Mapping[str, Any], **kw: Any) -> "Case":
        """A new case of ``trial`` (see :meth:`create` for the other keywords)."""
        return cls.create(backend=trial.backend, level=level, property=trial.property, problem=trial.problem,
                          poison=trial.poison, a_layout=trial.a_layout, tp=trial.tp, parallel=trial.parallel,
                          observed=observed, **kw)

    def trial(self, backend: str | None = None) -> Trial:
        """The trial this case records (on ``backend`` instead of its own, when given)."""
        return Trial(backend or self.backend, self.property, self.problem, self.poison,
                     self.a_layout.value if self.a_layout is not None else None, self.tp, self.parallel)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (standard JSON: non-finite numbers in ``observed`` become strings)."""
        doc = {
            "schema": SCHEMA,
            "id": self.id,
            "created": self.created,
            "level": self.level,
            **self.trial().to_dict(),
            "environment": json_safe(self.environment),
            "observed": json_safe(self.observed),
            "digest": self.digest,
            "note": self.note,
            "expect": self.expect,
            "tracks": self.tracks,
            "reproduced": [dict(r) for r in self.reproduced],
            "replay": self.replay,
        }
        # files without sightings keep the layout they always had
        return {key: doc[key] for key in _TOP_ORDER if key != "reproduced" or self.reproduced}

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>", *, check_backend: bool = True) -> "Case":
        """Validate a parsed case document and build the :class:`Case`.

        ``source`` names the document in error messages.  With ``check_backend`` the backend must be
        registered (built-ins and plugins) and of the case's level; pass False where plugins are not
        loaded.  Raises :class:`CaseFileError`.
        """
        return _parse(d, str(source), check_backend)


def case_id(backend: str, property: str, problem: GemmProblem, poison: Poison,
            a_layout: ScaleLayout | str | None = None, digest: str | None = None) -> str:
    """A short id stable under re-runs: ``<property>-<backend>-<8 hex>``.

    The hash covers what makes the failure reproducible (backend, property, problem, poison, layout,
    operand digest), not when or where it was seen, so the same failure found twice has the same id.
    """
    layout = ScaleLayout.parse(a_layout).value if a_layout is not None else None
    content = {"backend": backend, "property": property, "problem": problem.to_dict(),
               "poison": poison.to_dict(), "a_layout": layout, "digest": digest}
    h = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{property}-{backend}").strip("._-") or "case"
    return f"{stem[:110]}-{h}"


def replay_command(path: str | os.PathLike[str]) -> str:
    """The one-line command that replays the case file at ``path`` (relative to the cwd when below it)."""
    p = Path(path)
    try:
        shown = os.path.relpath(p.resolve(), Path.cwd().resolve())
        if shown.startswith(".."):
            shown = str(p.resolve())
    except ValueError:  # another drive (Windows)
        shown = str(p.resolve())
    return f"nvfp4-harness replay {shlex.quote(shown)}"


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def load_case(path: str | os.PathLike[str], *, check_backend: bool = True) -> Case:
    """Read and validate a case file.  Raises :class:`CaseFileError` (a ValueError) for any problem,
    unreadable files included."""
    source = str(path)
    return _parse(read_document(path), source, check_backend)


def read_document(path: str | os.PathLike[str], error: type[CaseFileError] = CaseFileError) -> Any:
    """The JSON document of a case file (any schema; not validated).  Raises ``error`` (a
    :class:`CaseFileError`) with one line for a missing or unreadable file, text that is not UTF-8,
    invalid JSON and a key that appears twice in one object."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(source, None, "no such case file") from None
    except UnicodeDecodeError as exc:
        raise error(source, None, f"not UTF-8 text (byte {exc.start}): expected a JSON case file") from None
    except OSError as exc:
        raise error(source, None, f"cannot read the case file: {exc.strerror or exc}") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise error(source, None, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except _DuplicateKey as exc:
        raise error(source, exc.key, f"key {exc.key!r} appears twice in one object: expected each key once") \
            from None


def save_case(case: Case, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``case`` to ``path`` atomically and return the path actually written.

    The case is validated first (backend registration is not checked: the writer knows its backend).
    The file appears complete or not at all (temporary file in the same folder, then an atomic
    rename).  An existing file with the same bytes is left as it is; an existing *different* file is
    never replaced unless ``overwrite``: the case goes to ``<stem>-2.json``, ``<stem>-3.json``, ...
    instead.  An empty ``case.replay`` (or one naming the requested path when the name changed) is set
    to the replay command of the written file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    auto_replay = case.replay in ("", replay_command(target))
    suffix = target.suffix or ".json"
    attempt = 1
    while True:
        candidate = target if attempt == 1 else target.with_name(f"{target.stem}-{attempt}{suffix}")
        doc = case.to_dict()
        if auto_replay:
            doc["replay"] = replay_command(candidate)
        _parse(doc, str(candidate), check_backend=False)  # never write a file load_case would refuse
        data = (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode("utf-8")
        if overwrite:
            _write_atomic(candidate, data, replace=True)
            break
        if candidate.exists() and candidate.read_bytes() == data:
            break
        if not candidate.exists() and _write_atomic(candidate, data, replace=False):
            break
        attempt += 1
        if attempt > 10_000:
            raise OSError(f"save_case: no free file name next to {target}")
    if auto_replay:
        case.replay = replay_command(candidate)
    return candidate


def _write_atomic(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write ``data`` to ``path`` through a temporary file.  Without ``replace`` the final step is a
    hard link, which fails instead of replacing a file another process created meanwhile; returns
    False then.  (Where hard links are not supported it falls back to a checked ``os.replace``.)"""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


class _Checker:
    """Field checks that raise :class:`CaseFileError` naming the source and the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, value: Any, expected: str) -> CaseFileError:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return CaseFileError(self.source, path, f"{path}={shown}: expected {expected}", value)

    def obj(self, d: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...] | None) -> dict:
        """An object with the ``required`` keys; with ``optional`` given, no keys beyond both."""
        if not isinstance(d, dict):
            where = path or "the case file"
            raise CaseFileError(self.source, path or None,
                                f"{where} is {_json_type(d)}: expected a JSON object", d)
        prefix = f"{path}." if path else ""
        for key in required:
            if key not in d:
                raise CaseFileError(self.source, prefix + key, f"missing field {prefix + key!r}")
        if optional is not None:
            allowed = required + optional
            for key in d:
                if key not in allowed:
                    raise CaseFileError(self.source, prefix + key,
                                        f"unknown field {prefix + key!r}: expected only {list(allowed)}", d[key])
        return d

    def string(self, v: Any, path: str, *, nullable: bool = False, nonempty: bool = True) -> str | None:
        if v is None and nullable:
            return None
        if not isinstance(v, str) or (nonempty and not v.strip()):
            raise self.fail(path, v, "a non-empty string" + (" or null" if nullable else ""))
        return v

    def choice(self, v: Any, path: str, choices: tuple[str, ...]) -> str:
        if not isinstance(v, str) or v not in choices:
            raise self.fail(path, v, f"one of {list(choices)}")
        return v

    def integer(self, v: Any, path: str, *, nullable: bool = False, minimum: int | None = None,
                maximum: int | None = None) -> int | None:
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum) \
                or (maximum is not None and v > maximum):
            what = "an integer" if minimum is None else f"an integer >= {minimum}"
            if maximum is not None:
                what += f" and <= {maximum}" if minimum is not None else f" <= {maximum}"
            raise self.fail(path, v, what + (" or null" if nullable else ""))
        return v

    def number(self, v: Any, path: str) -> float | None:
        if v is None:
            return None
        if isinstance(v, str) and v in NONFINITE_SPELLINGS:
            return NONFINITE_SPELLINGS[v]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(path, v, 'a number, "NaN", "Infinity", "-Infinity" or null')
        return float(v)

    def int_list(self, v: Any, path: str) -> list[int]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.fail(path, v, "a list of row/column indices (integers >= 0)")
        for i, x in enumerate(v):
            self.integer(x, f"{path}[{i}]", minimum=0)
        return list(v)


def _parse(d: Any, source: str, check_backend: bool) -> Case:
    c = _Checker(source)
    if isinstance(d, dict) and "schema" in d:
        schema = d["schema"]
        if not isinstance(schema, str) or not schema.startswith(_SCHEMA_PREFIX):
            raise c.fail("schema", schema, f"{SCHEMA!r} (this is not an nvfp4-harness case file)")
        if schema != SCHEMA:
            raise c.fail("schema", schema, f"{SCHEMA!r}: unknown case schema version; this harness reads "
                                           f"version 1 only (a newer harness wrote this file?)")
    doc = c.obj(d, "", _TOP_REQUIRED, _TOP_OPTIONAL)

    backend = c.string(doc["backend"], "backend")
    level = c.choice(doc["level"], "level", LEVELS)
    prop = c.choice(doc["property"], "property", PROPERTIES)
    if check_backend:
        _check_backend(c, backend, level)

    problem = _parse_problem(c, doc["problem"])
    poison = _parse_poison(c, doc["poison"])

    layout_raw = doc.get("a_layout")
    layout = None
    if layout_raw is not None:
        if not isinstance(layout_raw, str):
            raise c.fail("a_layout", layout_raw, f"one of {[m.value for m in ScaleLayout]} or null")
        try:
            layout = ScaleLayout.parse(layout_raw)
        except ValueError:
            raise c.fail("a_layout", layout_raw, f"one of {[m.value for m in ScaleLayout]} or null") from None

    environment = _parse_environment(c, doc["environment"])
    observed = _parse_observed(c, doc["observed"])
    # files written before tp/parallel were top-level keys carry them in observed (tp_consistency)
    legacy = observed if "tp" not in doc and "parallel" not in doc else {}
    tp = c.integer(doc.get("tp", legacy.get("tp", 1)), "tp", minimum=1)
    parallel = c.choice(doc.get("parallel", legacy.get("parallel", "column")), "parallel", PARALLEL)

    record = parse_record_fields(c, doc, optional=False)
    return Case(backend=backend, level=level, property=prop, problem=problem, poison=poison,  # type: ignore[arg-type]
                observed=observed, a_layout=layout, tp=tp, parallel=parallel,  # type: ignore[arg-type]
                environment=environment, **record)


def parse_record_fields(c: _Checker, doc: dict, *, optional: bool) -> dict[str, Any]:
    """The fields every case file has beside its trial, checked: ``id``, ``created``, ``digest``,
    ``note``, ``expect``, ``tracks``, ``replay`` and ``reproduced``, by name.

    A case file (``nvfp4-harness/case/1``) requires ``id``, ``created``, ``expect`` and a non-empty
    ``replay`` (:data:`_TOP_REQUIRED` has made sure they are there); with ``optional`` (a grouped case
    file, :mod:`harness.grouped.cases`) they may be left out or null, and read as None, None, "pass"
    and "".  Raises :class:`CaseFileError` naming the field, the value and what was expected."""
    case_id_ = c.string(doc.get("id"), "id", nullable=optional)
    if case_id_ is not None and not _ID_RE.match(case_id_):
        raise c.fail("id", case_id_, "1-128 characters of letters, digits, '.', '_' or '-' (it names a file)")
    created = c.string(doc.get("created"), "created", nullable=optional)
    if created is not None:
        try:
            _dt.datetime.fromisoformat(created[:-1] + "+00:00" if created.endswith("Z") else created)
        except ValueError:
            raise c.fail("created", created, "an ISO 8601 time such as '2026-11-21T20:00:00Z'") from None
    digest = c.string(doc.get("digest"), "digest", nullable=True)
    if digest is not None and not _DIGEST_RE.match(digest):
        raise c.fail("digest", digest, "a sha256 hex digest (64 lowercase hex digits) or null")
    note = c.string(doc.get("note"), "note", nullable=True, nonempty=False)
    expect = c.choice(doc.get("expect", "pass"), "expect", EXPECTS)
    tracks = c.string(doc.get("tracks"), "tracks", nullable=True)
    replay = c.string(doc.get("replay"), "replay", nullable=optional, nonempty=not optional) or ""
    if "\n" in replay:
        raise c.fail("replay", replay, "a one-line command")
    reproduced = _parse_reproduced(c, doc.get("reproduced"))
    return {"id": case_id_, "created": created, "digest": digest, "note": note, "expect": expect, "tracks": tracks,
            "replay": replay, "reproduced": reproduced}


def _check_backend(c: _Checker, name: str, level: str) -> None:
    from harness.backends.registry import UnknownBackendError, get

    try:
        backend = get(name)
    except UnknownBackendError as exc:
        raise CaseFileError(c.source, "backend", f"backend={name!r}: {exc} (load the plugin that defines it: "
                                                 f"--plugin FILE_OR_MODULE)", name) from None
    if backend.level != level:
        raise c.fail("level", level, f"{backend.level!r}, the level of backend {name!r}")


def _parse_problem(c: _Checker, d: Any) -> GemmProblem:
    p = c.obj(d, "problem", _PROBLEM_REQUIRED, _PROBLEM_OPTIONAL)
    # m, n, k, the dtypes and the distribution are checked by GemmProblem itself (below).
    c.integer(p["seed"], "problem.seed", minimum=0, maximum=MAX_SEED)
    origin = c.string(p.get("origin"), "problem.origin", nullable=True)
    batch = p.get("batch")
    if batch is not None:
        if not isinstance(batch, list) or not batch:
            raise c.fail("problem.batch", batch, "a non-empty list of leading dimensions, or null")
        for i, b in enumerate(batch):
            c.integer(b, f"problem.batch[{i}]", minimum=0)
        batch = tuple(batch)
    calibration = p.get("calibration")
    if calibration is not None and (isinstance(calibration, bool) or not isinstance(calibration, (int, float))):
        raise c.fail("problem.calibration", calibration, "a positive ratio (runtime amax / calibrated amax) or null")
    partitions = p.get("partitions")
    if partitions is not None:
        if not isinstance(partitions, list):
            raise c.fail("problem.partitions", partitions,
                         "a list of 2 or more output widths of a merged layer summing to n, or null")
        for i, w in enumerate(partitions):
            c.integer(w, f"problem.partitions[{i}]", minimum=1)
        partitions = tuple(partitions)
    fused = p.get("fused_on_disk", False)
    if not isinstance(fused, bool):
        raise c.fail("problem.fused_on_disk", fused, "true or false")
    input_layout = p.get("input_layout")
    input_layout = CONTIGUOUS if input_layout is None else input_layout  # older files: contiguous
    if not isinstance(input_layout, str) or input_layout not in INPUT_LAYOUTS:
        raise c.fail("problem.input_layout", input_layout, f"one of {list(INPUT_LAYOUTS)}")
    try:
        return GemmProblem(m=p["m"], n=p["n"], k=p["k"], out_dtype=p["out_dtype"], in_dtype=p["in_dtype"],
                           distribution=p["distribution"], seed=p["seed"], origin=origin, batch=batch,
                           calibration=None if calibration is None else float(calibration),
                           partitions=partitions, fused_on_disk=fused, input_layout=input_layout)
    except ValueError as exc:
        raise from_model_error(c, exc, "problem", p) from None


def _parse_poison(c: _Checker, d: Any) -> Poison:
    # the partition slots are optional: files written before merged layers existed leave them out
    required = tuple(r for r in REGIONS if r not in SLOT_REGIONS)
    p = c.obj(d, "poison", required, SLOT_REGIONS)
    try:
        return Poison(**{name: p[name] for name in REGIONS if name in p})
    except ValueError as exc:
        raise from_model_error(c, exc, "poison", p) from None


def from_model_error(c: _Checker, exc: Exception, prefix: str, d: Any) -> CaseFileError:
    """A problem's, poison's or trial's validation error (a ValueError or TypeError of the model's
    dataclass) as a :class:`CaseFileError` with the file name.  The model's messages already start
    with the field path (``problem.k=100: expected a multiple of 16``); one that does not is prefixed
    with ``prefix``.  ``d`` is the object ``prefix`` names in the document (the value of a field of
    it is reported as the value)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    m = re.match(rf"({prefix}\.[A-Za-z_]+)", msg)
    path = m.group(1) if m else prefix
    value = d.get(path.split(".", 1)[1]) if m and isinstance(d, dict) else d
    if not m:
        msg = f"{prefix}: {msg}"
    return CaseFileError(c.source, path, msg, value)


def _parse_environment(c: _Checker, d: Any) -> dict[str, Any]:
    env = c.obj(d, "environment", (), None)
    for name in _ENV_STR_FIELDS:
        if name in env:
            c.string(env[name], f"environment.{name}", nullable=True)
    for name in _ENV_INT_FIELDS:
        if name in env:
            c.integer(env[name], f"environment.{name}", nullable=True, minimum=0)
    if "interpreter" in env and not isinstance(env["interpreter"], bool):
        raise c.fail("environment.interpreter", env["interpreter"], "true or false")
    return dict(env)


def _parse_observed(c: _Checker, d: Any) -> dict[str, Any]:
    obs = dict(c.obj(d, "observed", ("summary",), None))
    c.string(obs["summary"], "observed.summary", nonempty=False)
    if "max_err_units" in obs:
        obs["max_err_units"] = c.number(obs["max_err_units"], "observed.max_err_units")
    for name in _OBSERVED_INT_LISTS:
        if name in obs:
            obs[name] = c.int_list(obs[name], f"observed.{name}")
    if "region" in obs:
        c.string(obs["region"], "observed.region", nullable=True)
    return obs


_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_ARCH_RE = re.compile(r"^(SM\d{2,3}|cpu)$")


def _parse_reproduced(c: _Checker, d: Any) -> list[dict[str, Any]]:
    if d is None:
        return []
    if not isinstance(d, list):
        raise c.fail("reproduced", d, "a list of sightings ({date, arch, gpu_name, versions}) or null")
    out = []
    for i, entry in enumerate(d):
        path = f"reproduced[{i}]"
        e = c.obj(entry, path, ("date", "arch", "versions"), ("gpu_name",))
        date = c.string(e["date"], f"{path}.date")
        if not _DATE_RE.match(date):
            raise c.fail(f"{path}.date", date, "a date as YYYY-MM-DD")
        arch = c.string(e["arch"], f"{path}.arch")
        if not _ARCH_RE.match(arch):
            raise c.fail(f"{path}.arch", arch, "a GPU architecture such as 'SM90', or 'cpu'")
        c.string(e.get("gpu_name"), f"{path}.gpu_name", nullable=True)
        versions = e["versions"]
        if not isinstance(versions, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                     for k, v in versions.items()):
            raise c.fail(f"{path}.versions", versions, "an object of library name -> version string")
        out.append({"date": date, "arch": arch, "gpu_name": e.get("gpu_name"), "versions": dict(versions)})
    return out
