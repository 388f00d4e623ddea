"""Sanitizer sweep on a GPU: the regression corpus and a sample of cases per backend under
compute-sanitizer (memcheck and initcheck by default), then the sanitizer-only mutants' self-test.
Every level is swept: GEMM, linear, quantizer, and the grouped and fused-MoE backends (their
samples drawn from the grouped strategies, grouped case files of the corpus rerun as such).
Writes one JSON document (device, date, versions, every run with its time and findings).

    python bench/sanitizer_run.py --json OUT/sanitizer.json [--part corpus|sample|selftest|all]
        [--sample 1] [--seed 0] [--tools memcheck,initcheck] [--backends all] [--shard I/N]

Each sanitized run is a child process under the tool (about 5-20 s each on an H200, mostly Python,
torch and Triton start-up under instrumentation); ``--part`` splits the sweep into commands that
fit a time limit, and ``--shard I/N`` runs every N-th sanitized run starting at the I-th (0-based),
so that N processes on one node share the sweep (the runs are independent child processes; the
GPU is mostly idle while each starts under instrumentation).

The same runs from the command line: ``nvfp4-harness sanitize regressions/cases --sample 3 --tool
memcheck --tool initcheck`` and ``nvfp4-harness sanitize --selftest``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sweep_runs(part: str, corpus: str, backends: str, sample: int, seed: int, tools: list[str]) -> list[tuple]:
    """(trial, source, tool) of every sanitized run of ``part``: the corpus's case files (GEMM-level,
    linear, quantizer and grouped / fused-MoE alike; source ``corpus:NAME``), then ``sample`` trials
    per backend of ``backends`` (every level's, the grouped and fused-MoE backends included; source
    ``sample``), each under every tool."""
    from harness.sanitizer import run as sz

    chosen = []
    if part in ("corpus", "all"):
        chosen += [(t, f"corpus:{Path(src).name}") for t, src in sz.choose_trials([corpus])]
    if part in ("sample", "all"):
        chosen += [(t, "sample") for t, _ in sz.choose_trials(sample=sample, backends=backends, seed=seed)]
    return [(trial, source, tool) for trial, source in chosen for tool in tools]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--part", default="all", choices=("corpus", "sample", "selftest", "all"))
    ap.add_argument("--sample", type=int, default=1, help="cases per backend drawn from the strategies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tools", default="memcheck,initcheck")
    ap.add_argument("--corpus", default=str(ROOT / "regressions" / "cases"))
    ap.add_argument("--backends", default="all")
    ap.add_argument("--shard", default="0/1", help="I/N: this process runs sanitized runs I, I+N, I+2N, ...")
    args = ap.parse_args()
    try:
        shard_i, shard_n = (int(v) for v in args.shard.split("/"))
        if not 0 <= shard_i < shard_n:
            raise ValueError
    except ValueError:
        ap.error(f"--shard {args.shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")

    from harness import env
    from harness.sanitizer import run as sz

    e = env.current()
    doc: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "environment": e.to_dict(),
                 "tools": args.tools.split(","), "sample": args.sample, "seed": args.seed, "runs": [],
                 "selftest": None}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        path = sz.check_available()
    except sz.SanitizerUnavailable as exc:
        doc["error"] = str(exc)
        out.write_text(json.dumps(doc, indent=2))
        print(f"cannot sanitize: {exc}", file=sys.stderr)
        return 4
    doc["sanitizer"] = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip().splitlines()

    doc["part"] = args.part
    doc["shard"] = args.shard
    runs = sweep_runs(args.part, args.corpus, args.backends, args.sample, args.seed, doc["tools"])
    t_all = time.perf_counter()
    for trial, source, tool in runs[shard_i::shard_n]:
        res = sz.sanitize_trial(trial, tool)
        p = trial.problem
        doc["runs"].append({"source": source, "backend": trial.backend, "level": sz.level_of(trial),
                            "property": trial.property, "tool": tool, **sz.shape_of(trial), "out_dtype": p.out_dtype,
                            "a_layout": getattr(trial, "a_layout", None), "status": res.status, "reason": res.reason,
                            "error_count": res.error_count, "seconds": res.duration_s,
                            "findings": [f.line() for f in res.findings]})
        print(sz.describe(res), flush=True)
        out.write_text(json.dumps(doc, indent=2))  # what ran is kept if a later run hangs
    doc["sweep_seconds"] = round(time.perf_counter() - t_all, 1)
    scores = []
    if args.part in ("selftest", "all"):
        t0 = time.perf_counter()
        scores = sz.selftest()
        doc["selftest"] = {"seconds": round(time.perf_counter() - t0, 1),
                           "scores": [{**s.__dict__, "ok": s.ok} for s in scores]}
        print(sz.scoreboard(scores))
    totals: dict = {}
    for r in doc["runs"]:
        key = f"{r['tool']}:{r['status']}"
        totals[key] = totals.get(key, 0) + 1
    doc["totals"] = totals
    out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(totals), f"sweep {doc['sweep_seconds']} s",
          f"selftest {doc['selftest']['seconds']} s" if doc["selftest"] else "")
    bad = [r for r in doc["runs"] if r["status"] in ("fail", "crash")]
    return 1 if bad or not all(s.ok for s in scores) else 0


if __name__ == "__main__":
    sys.exit(main())
