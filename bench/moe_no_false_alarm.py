"""Campaign: the fused-MoE bound raises no false alarm on the emulation backend.

Draws fused-MoE trials with the property suite's own strategy (:func:`harness.grouped.strategies.
moe_trials`: every split pattern, dynamic and static FC1 scales, per-expert and shared, static FC2
scales, four data distributions, poisoned padding) without derandomizing, runs ``moe-triton-emu``
on each and reports failures (there must be none) and the largest ``|out - ref| / bound`` seen
(how much of the bound a correct backend uses).  CPU sizes by default; ``--sizes gpu`` on a GPU:

    python bench/moe_no_false_alarm.py --examples 300 --property reference_agreement [--sizes gpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import time

import _record
from hypothesis import HealthCheck, given, settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--property", choices=("reference_agreement", "fused_unfused"), default="reference_agreement")
    ap.add_argument("--sizes", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--backend", default="moe-triton-emu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from harness.grouped import strategies
    from harness.grouped.checks import execute

    sizes = strategies.MOE_GPU_SIZES if args.sizes == "gpu" else strategies.MOE_CPU_SIZES
    stats: dict = {"examples": 0, "pass": 0, "skip": 0, "failures": [], "max_err_units": 0.0}
    t0 = time.time()

    @settings(max_examples=args.examples, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(trial=strategies.moe_trials(args.backend, args.property, sizes))
    def run(trial) -> None:
        out = execute(trial)
        stats["examples"] += 1
        if out.status in ("pass", "skip"):
            stats[out.status] += 1
            units = (out.result.measure.get("max_err_units") if out.result else None) or 0.0
            stats["max_err_units"] = max(stats["max_err_units"], units)
        else:
            stats["failures"].append({"trial": trial.to_dict(), "reason": out.reason})

    run()
    out = {**_record.environment(), "backend": args.backend, "property": args.property, "sizes": args.sizes,
           "seconds": round(time.time() - t0, 1), **stats}
    _record.emit(out, args.json)
    return 1 if stats["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
