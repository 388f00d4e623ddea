"""Benchmark: the fp64 GEMM reference against the exact int8 reference (harness/exact_reference.py).

For each shape, both methods run on the same NVFP4 operands (dequantized ``code * sf``, as
:func:`harness.oracle.reference_gemm` passes them); reported: the median time of each, their ratio,
the digit counts of the int8 method and whether the two values agree within the fp64 GEMM's error
(bit for bit where K <= 1024).  The smallest m*n*k from which int8 wins on every larger shape is
the crossover :data:`harness.oracle.INT8_MIN_MNK_CUDA` should hold.

Run:  python bench/reference_speed.py [--shapes 256x4096x4096,8192x8192x8192] [--json FILE]
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

DEFAULT_GPU = ("64x4096x4096,256x4096x4096,1024x1024x1024,2048x2048x2048,4096x4096x4096,"
               "8192x8192x8192,16384x8192x8192")
DEFAULT_CPU = "16x256x256,64x1024x1024,256x1024x1024,512x512x2048,1024x1024x1024"


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int) -> float:
    fn()
    _sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def operands(m: int, n: int, k: int, dist: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    from harness.data import generate
    from harness.format import global_scale_encode_divisor
    from harness.kernels.nvfp4 import dequantize_from, quantize_into
    from harness.layouts import ScaleLayout

    out = []
    for rows, seed in ((m, 1), (n, 2)):
        x = generate(dist, (rows, k), seed, torch.bfloat16, device)
        gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
        p, s = quantize_into(x, gs, ScaleLayout.LINEAR)
        out.append(dequantize_from(p, s, ScaleLayout.LINEAR, rows, k))
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=None, help="comma-separated MxNxK")
    ap.add_argument("--dists", default="normal,heavy_tailed")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from harness import env
    from harness.exact_reference import integer_rows
    from harness.oracle import reference_from_dequantized

    dev = env.current().torch_device
    shapes = args.shapes or (DEFAULT_GPU if dev.type == "cuda" else DEFAULT_CPU)
    rows = []
    for spec in shapes.split(","):
        m, n, k = (int(v) for v in spec.lower().split("x"))
        for dist in args.dists.split(","):
            a, w = operands(m, n, k, dist, dev)
            res = {}
            for method in ("fp64", "int8"):
                os.environ["NVFP4_REFERENCE"] = method
                res[method] = reference_from_dequantized(a, w, 0.5)
                res[method + "_s"] = timed(lambda: reference_from_dequantized(a, w, 0.5), args.reps)
            os.environ.pop("NVFP4_REFERENCE")
            diff = (res["int8"].value - res["fp64"].value).abs()
            tol = k * 2.0 ** -52 * res["int8"].abs_sum
            ra, rw = integer_rows(a, 6), integer_rows(w, 6)
            row = {"m": m, "n": n, "k": k, "dist": dist, "fp64_ms": res["fp64_s"] * 1e3,
                   "int8_ms": res["int8_s"] * 1e3, "speedup_int8": res["fp64_s"] / res["int8_s"],
                   "digits": [len(ra.digits), len(rw.digits)], "bits": [ra.bits, rw.bits],
                   "agree_within_fp64_error": bool((diff <= tol).all()),
                   "bit_equal": bool(torch.equal(res["int8"].value, res["fp64"].value))}
            print(json.dumps(row), flush=True)
            rows.append(row)
            del a, w, res
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    wins = sorted({(r["m"] * r["n"] * r["k"]) for r in rows})
    crossover = None
    for mnk in wins:  # smallest m*n*k from which int8 is faster at every larger shape measured
        if all(r["speedup_int8"] > 1 for r in rows if r["m"] * r["n"] * r["k"] >= mnk):
            crossover = mnk
            break
    out = {**_record.environment(), "rows": rows, "int8_faster_from_mnk": crossover}
    _record.emit(out, args.json, shown={k: v for k, v in out.items() if k != "rows"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
