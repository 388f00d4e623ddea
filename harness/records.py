"""The results directory: per-worker result streams, case files, session summary.

Format: docs/results-format.md.  Each worker appends one JSON line per executed case and flushes
it at once, so a worker that dies loses nothing it already recorded; the controller aggregates the
streams at the end of the session.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

from harness.runner import Outcome, Trial

RESULT_SCHEMA = "nvfp4-harness/result/1"
SESSION_SCHEMA = "nvfp4-harness/session/1"


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
    from harness import env, tracking
    from harness.backends import registry

    # where it reproduced: this process's architecture and the versions of the libraries involved
    seen = tracking.sighting_now(env.current(), registry.get(trial.backend))
    case = Case.create(backend=trial.backend, level=level, property=trial.property, problem=trial.problem,
                       poison=trial.poison, observed=observed, a_layout=outcome.a_layout or trial.a_layout,
                       environment=environment, digest=outcome.digest, reproduced=[seen.to_dict()])
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


def hypothesis_statistics(records: list[dict]) -> list[dict]:
    """Per-test statistics of the examples Hypothesis ran (from the result streams)."""
    per: dict[str, dict] = defaultdict(lambda: {"examples": 0, "passing": 0, "failing": 0, "invalid": 0,
                                                "runtime_s": 0.0, "stop_reason": ""})
    for r in records:
        s = per[r.get("test", "?")]
        s["examples"] += 1
        o = r.get("outcome")
        s["passing" if o == "pass" else "failing" if o in ("fail", "crash") else "invalid"] += 1
        s["runtime_s"] += float(r.get("duration_s") or 0.0)
        if r.get("stop_reason"):
            s["stop_reason"] = r["stop_reason"]
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
    stats = hypothesis_statistics(records)
    tmp = Path(results_dir) / "hypothesis.json.tmp"
    tmp.write_text(json.dumps(stats, indent=2))
    os.replace(tmp, Path(results_dir) / "hypothesis.json")
    return tot
