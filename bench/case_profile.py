"""Benchmark: where the host time of one small property-suite case goes.

Runs the case of ``bench/cases_per_second.py`` (same definition, imported from there) on shapes
drawn by the suite's strategy and reports, per case:

* ``host_syncs``: device-to-host reads (``aten::_local_scalar_dense``: ``.item()``, ``float()``,
  ``bool()``, ``.tolist()``) and ``aten::equal`` (a sync on CUDA);
* ``host_copies``: copies between devices (``aten::_to_copy`` / ``copy_`` with a cross-device
  source and destination, from torch.profiler's CUDA memcpy events where available);
* ``aten_ops`` / ``kernel_launches``: torch ops called from harness code and, on a GPU, CUDA
  kernel launches (Triton kernels included);
* ``hypothesis_ms_per_example``: the time Hypothesis takes to draw one ``gemm_problems`` example
  (the property suite pays it per case; ``cases_per_second.py`` draws before timing).

Run:  python bench/case_profile.py [--cases 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import torch

import _record

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def draw(n: int, max_m: int = 256, max_nk_blocks: int = 256):
    from hypothesis import HealthCheck, given, settings

    from harness import strategies

    out = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategies.gemm_problems(max_m=max_m, max_nk_blocks=max_nk_blocks))
    def collect(p):
        out.append(p)

    t0 = time.perf_counter()
    collect()
    return out, (time.perf_counter() - t0) / max(1, len(out))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="triton-emu-128x4")
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--max-nk-blocks", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from cases_per_second import make_case
    from harness import env

    e = env.current()
    problems, hyp_s = draw(args.cases, max_nk_blocks=args.max_nk_blocks)
    one_case, _ = make_case(args.backend, e.torch_device)
    for p in problems:  # compile every variant first
        one_case(p)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if e.device == "cuda" else [])
    with profile(activities=acts) as prof:
        for p in problems:
            one_case(p)
        if e.device == "cuda":
            torch.cuda.synchronize()
    counts = collections.Counter()
    for ev in prof.events():
        name = ev.name
        if name in ("aten::_local_scalar_dense", "aten::equal"):
            counts["host_syncs"] += 1
        elif name.startswith("cudaMemcpy") or name.startswith("Memcpy DtoH") or name.startswith("Memcpy HtoD"):
            counts["host_copies"] += 1
        elif name in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC"):
            counts["kernel_launches"] += 1
        elif name.startswith("cudaDeviceSynchronize") or name.startswith("cudaStreamSynchronize"):
            counts["device_synchronize"] += 1
        if name.startswith("aten::") and ev.cpu_parent is None:
            counts["aten_ops"] += 1
    n = len(problems)
    out = {**_record.environment(), "backend": args.backend, "cases": n,
           "per_case": {k: v / n for k, v in sorted(counts.items())},
           "hypothesis_ms_per_example": hyp_s * 1e3,
           "top_ops_host_ms_per_case": {
               ev.key: ev.self_cpu_time_total / 1e3 / n
               for ev in sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:15]}}
    _record.emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
