"""Benchmark: time and peak memory of one case as functions of m, n and k, and a plot.

The case is ``bench/cases_per_second.py``'s (operands clean and poisoned, backend twice, reference
and bound, agreement and row isolation).  Four sweeps: m with n = k = BASE, n with m = k = BASE,
k with m = n = BASE, and m = n = k; on a GPU up to 8192 (the strategies draw m <= 4096 and
n, k <= 4096; the cases-per-second benchmark's large case is 8192^3).  Peak memory is measured by
:func:`harness.memory.peak_bytes` and reported against the case's operand memory
(:func:`harness.memory.operand_bytes`) and the guaranteed multiple
:data:`harness.memory.CASE_MEMORY_MULTIPLE`.

Run:  python bench/scale.py --json bench/data/scale.json --plot bench/scale.png
      python bench/scale.py --plot-only bench/data/scale.json --plot bench/scale.png
(the plot needs matplotlib: ``pip install nvfp4-harness[bench]``; without it the JSON is still
written and ``--plot-only`` draws it later on another machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import _record

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GPU_SWEEP = {"base": 1024, "m": [1, 16, 128, 1100, 4096, 8192], "n": [16, 256, 1536, 4096, 8192],
             "k": [16, 256, 1536, 4096, 8192], "mnk": [256, 1024, 2048, 4096, 8192]}
CPU_SWEEP = {"base": 64, "m": [1, 16, 64, 129], "n": [16, 64, 256], "k": [16, 64, 256], "mnk": [16, 64, 128]}


def shapes(sweep: dict) -> list[tuple[str, int, int, int]]:
    b = sweep["base"]
    out = [("m", v, b, b) for v in sweep["m"]] + [("n", b, v, b) for v in sweep["n"]]
    out += [("k", b, b, v) for v in sweep["k"]] + [("mnk", v, v, v) for v in sweep["mnk"]]
    return out


def measure(reps: int, sweep: dict) -> dict:
    from cases_per_second import make_case
    from harness import env
    from harness.memory import CASE_MEMORY_MULTIPLE, operand_bytes, peak_bytes
    from harness.oracle import reference_method
    from harness.experiments import sync as _sync
    from harness.problem import GemmProblem

    e = env.current()
    dev = e.torch_device
    one_case, _ = make_case("triton-emu-128x4", dev)
    rows = []
    for axis, m, n, k in shapes(sweep):
        p = GemmProblem(m, n, k)
        one_case(p)  # compile
        ts = []
        for _ in range(reps):
            _sync()
            t0 = time.perf_counter()
            one_case(p)
            _sync()
            ts.append(time.perf_counter() - t0)
        peak = peak_bytes(lambda: one_case(p))
        ob = operand_bytes(m, n, k)
        row = {"sweep": axis, "m": m, "n": n, "k": k, "time_ms": statistics.median(ts) * 1e3,
               "peak_bytes": peak, "operand_bytes": ob, "multiple": peak / ob,
               "reference_method": reference_method(m, n, k, dev)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {**_record.environment(), "case_memory_multiple": CASE_MEMORY_MULTIPLE,
            "max_multiple": max(r["multiple"] for r in rows),
            "within_guarantee": all(r["multiple"] <= CASE_MEMORY_MULTIPLE for r in rows), "rows": rows}


def plot(data: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench/scale.py: matplotlib is not installed (pip install nvfp4-harness[bench]); no plot",
              file=sys.stderr)
        return False
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = {"m": "m (n = k = {b})", "n": "n (m = k = {b})", "k": "k (m = n = {b})", "mnk": "m = n = k"}
    base = min(r["n"] for r in data["rows"] if r["sweep"] == "m")
    for axis in ("m", "n", "k", "mnk"):
        rs = [r for r in data["rows"] if r["sweep"] == axis]
        xs = [r["m"] if axis in ("m", "mnk") else r[axis] for r in rs]
        lab = labels[axis].format(b=base)
        ax_t.plot(xs, [r["time_ms"] for r in rs], marker="o", label=lab)
        ax_m.plot(xs, [r["multiple"] for r in rs], marker="o", label=lab)
    ax_m.axhline(data["case_memory_multiple"], color="k", linestyle="--", label="guaranteed multiple")
    for ax in (ax_t, ax_m):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("varied dimension")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("time per case (ms)")
    ax_m.set_ylabel("peak memory / operand memory")
    fig.suptitle(f"one case (triton-emu-128x4, row isolation + reference): {data['device']}, {data['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
    return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG path")
    ap.add_argument("--plot-only", default=None, help="draw an existing JSON")
    args = ap.parse_args()
    if args.plot_only:
        with open(args.plot_only) as fh:
            data = json.load(fh)
    else:
        sweep = GPU_SWEEP if torch.cuda.is_available() else CPU_SWEEP
        data = measure(args.reps, sweep)
        print(json.dumps({k: v for k, v in data.items() if k != "rows"}, indent=2))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(data, fh, indent=2)
    if args.plot:
        plot(data, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
