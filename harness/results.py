"""The results directory, written and read here: per-worker result streams, case files, session summary.

Format: docs/results-format.md.  Each worker appends one JSON line per executed case and flushes
it at once (:class:`ResultStream`), so a worker that dies loses nothing it already recorded; the
controller aggregates the streams at the end of the session (:func:`finalize`).  The readers
(:func:`load_results`, :func:`load_run`) skip, and report, a line truncated by a worker that crashed
mid-write; the HTML report (:mod:`harness.report`) renders what :func:`load_run` returns.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from harness.cases import Case, CaseFileError, load_case, save_case
from harness.trial import OUTCOMES, Outcome, Trial, json_safe

RESULT_SCHEMA = "nvfp4-harness/result/1"
SESSION_SCHEMA = "nvfp4-harness/session/1"


LATEST = "latest"
"""The link in a results root that names its newest run directory."""


def new_run_id() -> str:
    """A run id that sorts by start time: ``20261201-002549-3fa2`` (UTC, then a random suffix so that
    two runs started in the same second never share a directory)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def new_run_dir(root: Path | str, run_id: str | None = None) -> Path:
    """Create the run directory ``root/<run_id>/`` of one session and point ``root/latest`` at it.

    Each run writes only its own directory, so runs never pile up into one report; combining runs
    is an explicit act (the report of several run directories).  Raises ValueError for a run id that
    is not a plain folder name or names a run directory that already exists, OSError when the root
    cannot be created."""
    run_id = run_id or new_run_id()
    if not run_id or run_id in (".", "..", LATEST) or any(c in run_id for c in "/\\"):
        raise ValueError(f"run id {run_id!r} is not a plain folder name")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file, expected a results folder")
    root.mkdir(parents=True, exist_ok=True)
    run = root / run_id
    try:
        run.mkdir()
    except FileExistsError:
        raise ValueError(f"run directory {run} already exists (each run gets its own)") from None
    (run / "cases").mkdir()
    link = root / LATEST
    tmp = root / f".{LATEST}.{run_id}.tmp"
    try:
        os.symlink(run_id, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # a file system without symbolic links: the run is still printed by path
        tmp.unlink(missing_ok=True)
    return run.resolve()


def is_run_dir(path: Path | str) -> bool:
    return any(Path(path).glob("results-*.jsonl")) or (Path(path) / "session.json").is_file()


def resolve_run_dir(path: Path | str) -> Path:
    """The run directory named by ``path``: ``path`` itself when it holds a run, else the run that
    ``path/latest`` points at (a results root).  Raises FileNotFoundError when ``path`` is not a
    folder, ValueError when it holds no run."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory (expected the folder a fuzz run wrote)")
    if is_run_dir(path):
        return path
    latest = path / LATEST
    if latest.is_dir() and is_run_dir(latest):
        return latest.resolve()
    raise ValueError(f"{path} holds no results (no results-*.jsonl or session.json, and no "
                     f"'{LATEST}' run): expected the folder a fuzz run wrote")


def read_workers(results_dir: Path | str) -> list[dict]:
    """The worker-*.json files of a run, in name order (unreadable ones left out)."""
    out = []
    for path in sorted(Path(results_dir).glob("worker-*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def new_failures(results_dir: Path | str) -> list[dict]:
    """The minimized failures of a run, one per case file: backend, property, outcome, reason, the
    case file's path and its replay command."""
    from harness.cases import replay_command

    records, _ = load_results(results_dir)
    out, seen = [], set()
    for r in records:
        ref = r.get("case_file")
        if r.get("outcome") not in ("fail", "crash") or not ref or ref in seen:
            continue
        seen.add(ref)
        path = (Path(results_dir) / ref).resolve()
        out.append({"backend": r.get("backend"), "property": r.get("property"), "outcome": r.get("outcome"),
                    "reason": r.get("reason") or "", "case_path": str(path), "replay": replay_command(path)})
    return out


def read_test_ends(results_dir: Path | str) -> dict[str, str]:
    """test id -> why its Hypothesis run stopped (tests-<worker>.jsonl, written as each test ends)."""
    out: dict[str, str] = {}
    for path in sorted(Path(results_dir).glob("tests-*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict) and doc.get("test"):
                out[str(doc["test"])] = str(doc.get("stop_reason") or "")
    return out


def is_test_skip(rec: dict) -> bool:
    """A record of a whole test skipped before any example ran (backend unavailable, budget spent),
    as opposed to one executed case.  Records without ``scope`` (older runs) count a skip as a test."""
    scope = rec.get("scope")
    return rec.get("outcome") == "skip" and (scope == "test" or scope is None)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ResultStream:
    """Append-only JSON Lines file of one worker."""

    def __init__(self, results_dir: Path | str, worker: str):
        self.dir = Path(results_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "cases").mkdir(exist_ok=True)
        self.worker = worker
        self.path = self.dir / f"results-{worker}.jsonl"
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(json_safe(record), sort_keys=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def make_record(trial: Trial, outcome: Outcome, *, worker: str, test: str, level: str,
                case_file: str | None = None, extra: dict | None = None) -> dict:
    """One result record (docs/results-format.md) of ``trial`` (a GEMM-level :class:`Trial` or a
    grouped trial: anything with ``to_dict``) and its ``outcome``; ``extra`` keys are added as they are."""
    rec = {
        "schema": RESULT_SCHEMA, "time": now(), "worker": worker, "test": test, "level": level,
        **trial.to_dict(), "a_layout": outcome.a_layout or getattr(trial, "a_layout", None),
        "outcome": outcome.status, "reason": outcome.reason, "measure": outcome.measure, "duration_s": round(outcome.duration_s, 6),
        "digest": outcome.digest, "case_file": case_file,
    }
    if extra:
        rec.update(extra)
    return rec


def save_failure_case(results_dir: Path | str, trial: Trial, outcome: Outcome, level: str,
                      environment: dict) -> str:
    """Write the case file of a (minimized) failure; returns its path relative to results_dir."""
    observed = {"summary": outcome.reason or (outcome.result.summary if outcome.result else ""),
                "status": outcome.status, **json_safe(outcome.measure)}
    observed.pop("grid", None)
    observed["grid"] = json_safe(outcome.measure.get("grid")) if outcome.measure.get("grid") else None
    trial = replace(trial, a_layout=outcome.a_layout or trial.a_layout)
    from harness import env, tracking
    from harness.backends import registry

    # where it reproduced: this process's architecture and the versions of the libraries involved
    seen = tracking.sighting_now(env.current(), registry.get(trial.backend))
    case = Case.from_trial(trial, level=level, observed=observed, environment=environment, digest=outcome.digest,
                           reproduced=[seen.to_dict()])
    path = Path(results_dir) / "cases" / f"{case.id}.json"
    written = save_case(case, path)
    return str(Path(written).relative_to(Path(results_dir)))


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

class LoadedResults(NamedTuple):
    """Records of all ``results-*.jsonl`` files (file order) and the problems met reading them.

    Each record is the JSON object of one line plus ``"_source": "results-gw0.jsonl:12"``.
    """
    records: list[dict[str, Any]]
    warnings: list[str]


@dataclass
class RunData:
    """Everything a results directory holds, parsed."""
    results_dir: Path
    session: dict[str, Any] | None
    records: list[dict[str, Any]]
    cases: dict[str, "Case"]                   # "cases/<name>.json" -> its Case (GroupedCase: grouped level)
    hypothesis: list[dict[str, Any]] | None
    warnings: list[str] = field(default_factory=list)
    tracking: list[dict[str, Any]] = field(default_factory=list)   # tracking-*.jsonl (harness.tracking)


def natural_key(path: Path) -> list:
    """Sort key that orders numbered names naturally (results-gw2 before results-gw10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def load_results(results_dir: str | Path) -> LoadedResults:
    """Parse every ``results-*.jsonl`` in ``results_dir``.

    A line that is not a JSON object is skipped with a warning; when it is the last line of its file
    the warning says it was truncated (a worker that died while writing).  Records of an unknown
    schema or without a valid outcome are skipped with a warning as well.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results directory {root} does not exist (or is not a directory)")
    records: list[dict[str, Any]] = []
    warnings: list[str] = []
    files = sorted(root.glob("results-*.jsonl"), key=natural_key)
    if not files:
        warnings.append(f"no results-*.jsonl files in {root}: the run recorded no results")
    for path in files:
        lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
        ends_with_newline = lines[-1] == ""
        if ends_with_newline:
            lines.pop()
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            last = lineno == len(lines)
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                if last:
                    warnings.append(f"{path.name}: line {lineno} is truncated ({len(line)} bytes, "
                                    f"{'no' if not ends_with_newline else 'with a'} final newline; {exc.msg}): "
                                    f"the worker probably crashed while writing it; skipped")
                else:
                    warnings.append(f"{path.name}: line {lineno} is not valid JSON "
                                    f"(column {exc.colno}: {exc.msg}); skipped")
                continue
            if not isinstance(rec, dict):
                warnings.append(f"{where}: not a JSON object; skipped")
                continue
            schema = rec.get("schema")
            if schema != RESULT_SCHEMA:
                warnings.append(f"{where}: schema {schema!r} is not {RESULT_SCHEMA!r}; skipped")
                continue
            if rec.get("outcome") not in OUTCOMES:
                warnings.append(f"{where}: outcome {rec.get('outcome')!r} is not one of {list(OUTCOMES)}; skipped")
                continue
            rec["_source"] = where
            records.append(rec)
    return LoadedResults(records, warnings)


def _read_json(path: Path, warnings: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        warnings.append(f"{path.name}: cannot be read ({exc}); ignored")
    except json.JSONDecodeError as exc:
        warnings.append(f"{path.name}: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); ignored")
    return None


def _hypothesis_rows(doc: Any) -> list[dict[str, Any]] | None:
    """The list of per-test statistics in hypothesis.json: the document itself when it is a list,
    else the first list of objects among its values (e.g. ``{"tests": [...]}``)."""
    if isinstance(doc, list):
        return [r for r in doc if isinstance(r, dict)]
    if isinstance(doc, dict):
        for v in doc.values():
            if isinstance(v, list) and all(isinstance(r, dict) for r in v):
                return list(v)
        if doc and all(isinstance(v, dict) for v in doc.values()):  # {"test name": {...}}
            return [{"test": k, **v} for k, v in doc.items()]
    return None


def load_run(results_dir: str | Path) -> RunData:
    """Parse a run directory: session.json, results-*.jsonl, cases/*.json and hypothesis.json.  A
    results root (a folder holding no run but a ``latest`` link) reads its latest run."""
    root = Path(results_dir)
    if root.is_dir() and not is_run_dir(root) and (root / LATEST).is_dir() and is_run_dir(root / LATEST):
        root = (root / LATEST).resolve()
    records, warnings = load_results(root)
    warnings = list(warnings)
    session = _read_json(root / "session.json", warnings)
    if session is None and not (root / "session.json").exists():
        warnings.append("session.json is missing: environment and run times are unknown")
    elif session is not None and not isinstance(session, dict):
        warnings.append("session.json is not a JSON object; ignored")
        session = None
    elif session is not None and session.get("schema") not in (None, SESSION_SCHEMA):
        warnings.append(f"session.json: schema {session.get('schema')!r} is not {SESSION_SCHEMA!r}; read anyway")
    cases: dict[str, Case] = {}
    from harness.grouped.cases import is_grouped_case_file, read_case as read_grouped_case

    for path in sorted((root / "cases").glob("*.json")):
        try:
            cases[f"cases/{path.name}"] = read_grouped_case(path) if is_grouped_case_file(path) \
                else load_case(path, check_backend=False)
        except CaseFileError as exc:
            warnings.append(f"case file {exc}; not shown")
    hyp_path = root / "hypothesis.json"
    hypothesis = None
    if hyp_path.exists():
        hypothesis = _hypothesis_rows(_read_json(hyp_path, warnings))
        if hypothesis is None:
            warnings.append("hypothesis.json holds no list of per-test statistics; ignored")
    from harness import tracking

    tracked = tracking.load(root, warnings)
    return RunData(root, session, records, cases, hypothesis, warnings, tracked)


# ----------------------------------------------------------------------------------------------
# Aggregating
# ----------------------------------------------------------------------------------------------

def totals(records: list[dict]) -> dict:
    c = Counter(r.get("outcome", "?") for r in records)
    return {k: c.get(k, 0) for k in OUTCOMES}


def hypothesis_statistics(records: list[dict], stop_reasons: dict[str, str] | None = None) -> list[dict]:
    """Per-test statistics of the examples Hypothesis ran (from the result streams), with each
    test's stop reason (from :func:`read_test_ends`, else the record's)."""
    per: dict[str, dict] = defaultdict(lambda: {"examples": 0, "passing": 0, "failing": 0, "invalid": 0,
                                                "runtime_s": 0.0, "stop_reason": ""})
    for r in records:
        s = per[r.get("test", "?")]
        if r.get("scope") == "test":  # a test skipped before any example ran
            s["stop_reason"] = s["stop_reason"] or f"skipped: {r.get('reason') or ''}".strip()
            continue
        s["examples"] += 1
        o = r.get("outcome")
        s["passing" if o == "pass" else "failing" if o in ("fail", "crash") else "invalid"] += 1
        s["runtime_s"] += float(r.get("duration_s") or 0.0)
        if r.get("stop_reason"):
            s["stop_reason"] = r["stop_reason"]
    for t, reason in (stop_reasons or {}).items():
        if t in per and reason:
            per[t]["stop_reason"] = reason
    return [{"test": t, **v, "runtime_s": round(v["runtime_s"], 3)} for t, v in sorted(per.items())]


def write_session(results_dir: Path | str, data: dict) -> Path:
    path = Path(results_dir) / "session.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = {}
    if path.exists():
        try:
            current = json.loads(path.read_text())
        except json.JSONDecodeError:
            current = {}
    current.update(json_safe(data))
    current["schema"] = SESSION_SCHEMA
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2))
    os.replace(tmp, path)
    return path


def accepted_overflow(records: list[dict]) -> dict[str, int]:
    """The infinities the oracle accepted as overflow (``measure.accepted_overflow``: ±inf where the
    reference ± its error bound reaches the output format's overflow threshold), summed over
    ``records``: ``{"outputs": total, "results": records holding any}``."""
    counts = [v for v in ((r.get("measure") or {}).get("accepted_overflow") for r in records
                          if isinstance(r.get("measure"), dict))
              if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return {"outputs": sum(counts), "results": len(counts)}


def finalize(results_dir: Path | str, workers: dict[str, dict] | None = None) -> dict:
    """Aggregate the workers' streams: totals (and accepted overflow) into session.json, statistics
    into hypothesis.json.  Returns the outcome totals plus ``accepted_overflow`` (:func:`accepted_overflow`).

    ``workers``: what each worker of the session said about itself (worker id -> GPU, pid,
    environment; see harness/pytest_plugin.py), kept in session.json when given.
    """
    records, warnings = load_results(results_dir)
    tot = totals(records)
    overflow = accepted_overflow(records)
    data = {"finished": now(), "totals": tot, "accepted_overflow": overflow, "warnings": warnings}
    if workers is not None:
        data["workers"] = workers
    write_session(results_dir, data)
    stats = hypothesis_statistics(records, read_test_ends(results_dir))
    tmp = Path(results_dir) / "hypothesis.json.tmp"
    tmp.write_text(json.dumps(stats, indent=2))
    os.replace(tmp, Path(results_dir) / "hypothesis.json")
    return {**tot, "accepted_overflow": overflow}
