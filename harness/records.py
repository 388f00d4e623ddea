"""The results directory: per-worker result streams, case files, session summary.

Format: docs/results-format.md.  Each worker appends one JSON line per executed case and flushes
it at once, so a worker that dies loses nothing it already recorded; the controller aggregates the
streams at the end of the session.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from collections import Counter, defaultdict
from pathlib import Path

from harness.runner import Outcome, Trial

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

    records, _ = read_records(results_dir)
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


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


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
        self._fh.write(json.dumps(_jsonable(record), sort_keys=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def make_record(trial: Trial, outcome: Outcome, *, worker: str, test: str, level: str,
                case_file: str | None = None, extra: dict | None = None) -> dict:
    rec = {
        "schema": RESULT_SCHEMA, "time": now(), "worker": worker, "test": test,
        "backend": trial.backend, "level": level, "property": trial.property,
        "outcome": outcome.status, "reason": outcome.reason,
        "problem": trial.problem.to_dict(), "poison": trial.poison.to_dict(),
        "a_layout": outcome.a_layout or trial.a_layout, "tp": trial.tp, "parallel": trial.parallel,
        "measure": outcome.measure, "duration_s": round(outcome.duration_s, 6),
        "digest": outcome.digest, "case_file": case_file,
    }
    if extra:
        rec.update(extra)
    return rec


def save_failure_case(results_dir: Path | str, trial: Trial, outcome: Outcome, level: str,
                      environment: dict) -> str:
    """Write the case file of a (minimized) failure; returns its path relative to results_dir."""
    from harness.cases import Case, save_case

    observed = {"summary": outcome.reason or (outcome.result.summary if outcome.result else ""),
                "status": outcome.status, **_jsonable(outcome.measure)}
    observed.pop("grid", None)
    observed["grid"] = _jsonable(outcome.measure.get("grid")) if outcome.measure.get("grid") else None
    if trial.property == "tp_consistency":
        observed.update(tp=trial.tp, parallel=trial.parallel)
    case = Case.create(backend=trial.backend, level=level, property=trial.property, problem=trial.problem,
                       poison=trial.poison, observed=observed, a_layout=outcome.a_layout or trial.a_layout,
                       environment=environment, digest=outcome.digest)
    path = Path(results_dir) / "cases" / f"{case.id}.json"
    written = save_case(case, path)
    return str(Path(written).relative_to(Path(results_dir)))


def read_records(results_dir: Path | str) -> tuple[list[dict], list[str]]:
    """All records of all workers, and warnings for lines that could not be read (a worker that
    died mid-line leaves a truncated last line); the report's reader, shared."""
    from harness.report import load_results

    loaded = load_results(results_dir)
    return loaded.records, loaded.warnings


def totals(records: list[dict]) -> dict:
    c = Counter(r.get("outcome", "?") for r in records)
    return {k: c.get(k, 0) for k in ("pass", "fail", "skip", "crash")}


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
    current.update(_jsonable(data))
    current["schema"] = SESSION_SCHEMA
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2))
    os.replace(tmp, path)
    return path


def finalize(results_dir: Path | str) -> dict:
    """Aggregate the workers' streams: totals into session.json, statistics into hypothesis.json."""
    records, warnings = read_records(results_dir)
    tot = totals(records)
    workers = {}
    for path in sorted(Path(results_dir).glob("worker-*.json")):
        try:
            info = json.loads(path.read_text())
            workers[info.get("worker", path.stem)] = info
        except (json.JSONDecodeError, OSError) as exc:
            warnings.append(f"{path.name}: unreadable ({exc})")
    write_session(results_dir, {"finished": now(), "totals": tot, "warnings": warnings, "workers": workers})
    stats = hypothesis_statistics(records, read_test_ends(results_dir))
    tmp = Path(results_dir) / "hypothesis.json.tmp"
    tmp.write_text(json.dumps(stats, indent=2))
    os.replace(tmp, Path(results_dir) / "hypothesis.json")
    return tot
