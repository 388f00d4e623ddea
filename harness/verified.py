"""Where each backend was last seen to compute: the project's verification record.

``bench/verified.json`` (versioned with the code) says, per backend and per GPU architecture, when
the project last ran it, on which GPU, with which library versions, and what came out::

    {"schema": "nvfp4-harness/verified/1",
     "backends": {"triton-emu-128x4": [
         {"arch": "SM90", "gpu_name": "NVIDIA H200", "date": "2026-11-21",
          "versions": {"torch": "2.11.0+cu130", "triton": "3.6.0"},
          "result": "pass" | "fail" | "refused", "cases": {"pass": 258, "fail": 0}?,
          "source": "where the evidence is (a RESULTS.md section, a results directory)"}, ...]}}

``result``: ``pass`` (it computed and every case passed), ``fail`` (it computed and some case
failed: wrong bytes count as computed), ``refused`` (it was called there and the library refused:
it never computed).  A backend without a ``pass`` or ``fail`` entry has never been seen to compute
and is described as "never run"; nothing in the harness may describe it as correct anywhere.

``nvfp4-harness record-verified RESULTS_DIR`` updates the file from a results directory.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "nvfp4-harness/verified/1"
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "bench" / "verified.json"
RESULTS = ("pass", "fail", "refused")
COMPUTED = ("pass", "fail")
_ARCH_RE = re.compile(r"^(SM\d{2,3}|cpu)$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class VerifiedFileError(ValueError):
    """The verification record is malformed: the message names the file, the field and the value."""


@dataclass
class Entry:
    """One backend on one architecture, as last seen."""
    arch: str
    gpu_name: str | None
    date: str
    versions: dict[str, str]
    result: str
    source: str
    cases: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"arch": self.arch, "gpu_name": self.gpu_name, "date": self.date, "versions": dict(self.versions),
             "result": self.result, "cases": dict(self.cases), "source": self.source}
        if not self.cases:
            del d["cases"]
        return d

    def describe(self) -> str:
        """``"SM90 (NVIDIA H200) 2026-11-21, torch 2.11.0+cu130, triton 3.6.0: pass (258 cases)"``."""
        where = self.arch + (f" ({self.gpu_name})" if self.gpu_name else "")
        libs = ", ".join(f"{k} {v}" for k, v in sorted(self.versions.items()))
        n = sum(self.cases.values())
        what = {"pass": "computed, passed", "fail": "computed, FAILED", "refused": "refused by the library"}[self.result]
        return f"{where} {self.date}{', ' + libs if libs else ''}: {what}" + (f" ({n} cases)" if n else "")


def load(path: str | os.PathLike[str] = DEFAULT_PATH) -> dict[str, list[Entry]]:
    """backend name -> its entries (newest first).  A missing file reads as empty (every backend
    "never run").  Raises :class:`VerifiedFileError` for a malformed one."""
    p = Path(path)
    if not p.exists():
        return {}
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VerifiedFileError(f"{p}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise VerifiedFileError(f"{p}: schema={doc.get('schema') if isinstance(doc, dict) else doc!r}: "
                                f"expected {SCHEMA!r}")
    backends = doc.get("backends")
    if not isinstance(backends, dict):
        raise VerifiedFileError(f"{p}: backends={backends!r}: expected an object of backend name -> entries")
    out: dict[str, list[Entry]] = {}
    for name, entries in backends.items():
        if not isinstance(entries, list):
            raise VerifiedFileError(f"{p}: backends.{name}={entries!r}: expected a list of entries")
        out[name] = sorted((_entry(p, f"backends.{name}[{i}]", e) for i, e in enumerate(entries)),
                           key=lambda e: e.date, reverse=True)
    return out


def _entry(p: Path, where: str, e: Any) -> Entry:
    def bad(fld: str, value: Any, expected: str) -> VerifiedFileError:
        return VerifiedFileError(f"{p}: {where}.{fld}={value!r}: expected {expected}")

    if not isinstance(e, dict):
        raise VerifiedFileError(f"{p}: {where}={e!r}: expected an object")
    for key in ("arch", "date", "versions", "result", "source"):
        if key not in e:
            raise bad(key, None, "a value (the field is required)")
    if not isinstance(e["arch"], str) or not _ARCH_RE.match(e["arch"]):
        raise bad("arch", e["arch"], "a GPU architecture such as 'SM90', or 'cpu'")
    if not isinstance(e["date"], str) or not _DATE_RE.match(e["date"]):
        raise bad("date", e["date"], "a date as YYYY-MM-DD")
    if e["result"] not in RESULTS:
        raise bad("result", e["result"], f"one of {list(RESULTS)}")
    v = e["versions"]
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise bad("versions", v, "an object of library -> version string")
    cases = e.get("cases", {})
    if not isinstance(cases, dict) or not all(isinstance(x, int) and x >= 0 for x in cases.values()):
        raise bad("cases", cases, "an object of outcome -> count")
    if not isinstance(e["source"], str) or not e["source"]:
        raise bad("source", e["source"], "a non-empty string naming the evidence")
    gpu = e.get("gpu_name")
    if gpu is not None and not isinstance(gpu, str):
        raise bad("gpu_name", gpu, "a string or null")
    return Entry(e["arch"], gpu, e["date"], dict(v), e["result"], e["source"], dict(cases))


def describe(name: str, record: dict[str, list[Entry]]) -> str:
    """One line for listings: where ``name`` last computed, per architecture, or "never run"."""
    entries = record.get(name, [])
    computed = [e for e in entries if e.result in COMPUTED]
    if not computed:
        refused = "; ".join(e.describe() for e in entries)
        return "never run: the project has not seen it compute" + (f" ({refused})" if refused else "")
    return "last run: " + "; ".join(e.describe() for e in entries)


def ever_computed(name: str, record: dict[str, list[Entry]]) -> bool:
    return any(e.result in COMPUTED for e in record.get(name, []))


def save(record: dict[str, list[Entry]], path: str | os.PathLike[str] = DEFAULT_PATH) -> Path:
    """Write the record atomically (sorted by backend, newest entry first)."""
    p = Path(path)
    doc = {"schema": SCHEMA,
           "about": "Where each backend was last seen to compute (harness/verified.py). Update with "
                    "`nvfp4-harness record-verified RESULTS_DIR`.",
           "backends": {name: [e.to_dict() for e in sorted(entries, key=lambda e: e.date, reverse=True)]
                        for name, entries in sorted(record.items())}}
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, p)
    return p


NOT_COMPUTING = ("clean_rejection",)
"""Properties whose passing cases show no computation: clean_rejection passes when the backend
refuses shapes outside its declared contract cleanly (triton-dot-scaled passes it on SM90, where its
kernel does not even compile)."""


def _planted(name: str) -> bool:
    """Whether ``name`` is a planted-bug backend (a mutant: :mod:`harness.mutants`,
    :mod:`harness.grouped.mutants`).  Its results say where the self-test ran, not where a real
    backend computed, so the record leaves it out.  A name neither registry knows (a plugin not loaded
    here) is not a mutant."""
    from harness.backends.registry import UnknownBackendError
    from harness.grouped import registry

    try:
        return bool(getattr(registry.get_any(name), "mutant", False))
    except UnknownBackendError:
        return False


def entries_from_results(results_dir: str | os.PathLike[str], source: str | None = None) -> dict[str, Entry]:
    """backend -> its entry for the run in ``results_dir`` (session.json's environment, the result
    streams' outcomes).  Backends with computed cases only (pass / fail / crash, properties in
    :data:`NOT_COMPUTING` left out), planted-bug backends (mutants) left out; a backend whose
    every case was skipped is not entered (a skip is not evidence of anything).  Raises
    VerifiedFileError when the directory has no session environment or no records."""
    from harness.env import bare_version
    from harness.results import load_results

    root = Path(results_dir)
    try:
        session = json.loads((root / "session.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise VerifiedFileError(f"{root}: session.json cannot be read ({type(exc).__name__}): expected the "
                                f"results directory of a fuzz or test run") from None
    env = session.get("environment") if isinstance(session, dict) else None
    if not isinstance(env, dict) or "device" not in env:
        raise VerifiedFileError(f"{root}/session.json: environment={env!r}: expected the run's environment")
    arch = f"SM{env['compute_capability']}" if env["device"] == "cuda" else "cpu"
    date = str(session.get("started") or session.get("finished") or "")[:10]
    if not _DATE_RE.match(date):
        raise VerifiedFileError(f"{root}/session.json: started={session.get('started')!r}: expected an ISO date")
    versions = {k: bare_version(env[k]) for k in ("torch", "triton", "flashinfer", "torchao", "compressed_tensors",
                                                       "modelopt")
                if isinstance(env.get(k), str) and env.get(k)}
    records = load_results(root).records
    if not records:
        raise VerifiedFileError(f"{root}: no results-*.jsonl records: nothing ran")
    counts: dict[str, Counter] = {}
    for r in records:
        if r.get("property") in NOT_COMPUTING:
            continue
        counts.setdefault(str(r.get("backend")), Counter())[str(r.get("outcome"))] += 1
    out = {}
    for name, c in counts.items():
        computed = {k: c[k] for k in ("pass", "fail", "crash") if c[k]}
        if not computed or _planted(name):
            continue
        out[name] = Entry(arch, env.get("gpu_name"), date, versions,
                          "fail" if computed.get("fail") or computed.get("crash") else "pass",
                          source or f"results directory {root.name} ({date})", computed)
    return out


def update_from_results(results_dir: str | os.PathLike[str], path: str | os.PathLike[str] = DEFAULT_PATH,
                        source: str | None = None) -> dict[str, Entry]:
    """Record the run in ``results_dir`` into the file at ``path``: each backend that computed gets
    its entry for this architecture replaced.  Returns the new entries."""
    record = load(path)
    new = entries_from_results(results_dir, source)
    for name, entry in new.items():
        kept = [e for e in record.get(name, []) if e.arch != entry.arch]
        record[name] = [entry] + kept
    save(record, path)
    return new
