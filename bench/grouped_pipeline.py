"""Benchmark: the grouped (MoE) pipeline's throughput in tokens/s on a realistic shape.

Default shape: 8 experts, hidden (K) 2048, N 2048 per expert, 4096 tokens, top-2 routing with
uneven splits.  Times, per call (median of CUDA-event timings after warm-up): the grouped quantize
of the token-sorted activations into one buffer, the grouped GEMM + routed combine
(``grouped-triton-emu``), and the fused path (``grouped-triton-emu-fused``: quantize + GEMM +
combine); the exact fp64 reference on the same operands once, for scale; and checks once that the
fused output agrees with the reference within the derived bound.  Run on a GPU:

    python bench/grouped_pipeline.py [--experts 8 --hidden 2048 --n 2048 --tokens 4096 --top-k 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import _record
from _record import cuda_median_seconds as timed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/grouped_pipeline.py: needs a CUDA GPU; none is visible", file=sys.stderr)
        return 4
    from harness.backends.grouped_triton import GroupedTritonFused, GroupedTritonGemm
    from harness.grouped.checks import reference_agreement
    from harness.grouped.pipeline import build_grouped_operands, grouped_quantize
    from harness.grouped.problem import GroupedProblem
    from harness.grouped.reference import reference_grouped

    # uneven splits: expert e gets a share proportional to e + 1, the rest to the last expert
    total = args.tokens * args.top_k
    share = [args.experts - e for e in range(args.experts)]
    splits = [min(args.tokens, total * s // sum(share)) for s in share]
    splits[-1] += total - sum(splits)
    problem = GroupedProblem.from_splits(splits, args.top_k, n=args.n, k=args.hidden, seed=1, row_align=128,
                                         origin="bench: uneven top-k splits")
    t0 = time.perf_counter()
    ops = build_grouped_operands(problem, device="cuda")
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    x_sorted = ops.hidden[ops.order]
    gemm, fused = GroupedTritonGemm(), GroupedTritonFused()
    t_quant = timed(lambda: grouped_quantize(x_sorted, ops.a.splits, ops.input_scales, row_align=problem.row_align,
                                             k_alloc=ops.a.k_alloc), args.iters)
    t_gemm = timed(lambda: gemm.run(ops), args.iters)
    t_fused = timed(lambda: fused.run(ops), args.iters)
    t1 = time.perf_counter()
    reference_grouped(ops)
    torch.cuda.synchronize()
    ref_s = time.perf_counter() - t1
    agreement = reference_agreement(fused, ops)
    flops = 2.0 * total * args.n * args.hidden
    out = {
        **_record.environment(),
        "shape": {"experts": args.experts, "hidden": args.hidden, "n": args.n, "tokens": args.tokens,
                  "top_k": args.top_k, "splits": splits},
        "operands_build_s": build_s,
        "grouped_quantize_ms": t_quant * 1e3, "grouped_quantize_tokens_per_s": args.tokens / t_quant,
        "grouped_gemm_combine_ms": t_gemm * 1e3, "grouped_gemm_tokens_per_s": args.tokens / t_gemm,
        "fused_ms": t_fused * 1e3, "fused_tokens_per_s": args.tokens / t_fused,
        "fused_tflops": flops / t_fused / 1e12,
        "reference_fp64_s": ref_s,
        "fused_reference_agreement": {"ok": agreement.ok, "summary": agreement.summary},
    }
    _record.emit(out, args.json)
    return 0 if agreement.ok else 1


if __name__ == "__main__":
    sys.exit(main())
