"""Benchmark: the Triton pipeline quantizer's throughput on a large activation.

Reports the quantizer's effective bandwidth (bytes read + written) as a fraction of the measured
device-to-device copy bandwidth, and its speedup over the pure-torch reference quantizer on the
same data.  Run on a GPU:  python bench/quantizer_bandwidth.py [--rows 16384 --cols 16384]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch


def timed(fn, iters: int) -> float:
    """Median seconds per call, CUDA events, after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--cols", type=int, default=16384)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/quantizer_bandwidth.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from harness import format as F
    from harness.kernels.nvfp4 import quantize_into
    from harness.layouts import ScaleLayout, padded_shape

    r, c = args.rows, args.cols
    x = torch.randn(r, c, device="cuda", dtype=torch.bfloat16)
    gs = F.global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
    y = torch.empty_like(x)
    t_copy = timed(lambda: y.copy_(x), args.iters)
    copy_bw = 2 * x.numel() * x.element_size() / t_copy
    out = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
           "torch": torch.__version__, "shape": [r, c], "copy_GBps": copy_bw / 1e9, "layouts": {}}
    from harness.kernels import nvfp4

    sweep = {}
    pr, pk = padded_shape(ScaleLayout.SWIZZLED_128x4, r, c // 16)
    packed = torch.empty((r, c // 2), dtype=torch.uint8, device="cuda")
    scales = torch.empty((pr, pk), dtype=torch.uint8, device="cuda")
    for tiles in [(8, 8, 4), (16, 8, 4), (16, 8, 8), (32, 8, 8), (16, 16, 8), (32, 4, 4), (64, 4, 8), (8, 16, 4)]:
        nvfp4.QUANT_TILES_GPU = tiles
        try:
            sweep[str(tiles)] = timed(lambda: quantize_into(x, gs, ScaleLayout.SWIZZLED_128x4, packed=packed,
                                                            scales=scales), args.iters) * 1e3
        except Exception as exc:  # noqa: BLE001 - a tile config the compiler rejects
            sweep[str(tiles)] = f"{type(exc).__name__}"
    best = min((v, k) for k, v in sweep.items() if isinstance(v, float))[1]
    nvfp4.QUANT_TILES_GPU = tuple(int(t) for t in best.strip("()").split(","))
    out["tile_sweep_ms"] = sweep
    out["tiles"] = best
    for layout in ScaleLayout:
        pr, pk = padded_shape(layout, r, c // 16)
        packed = torch.empty((r, c // 2), dtype=torch.uint8, device="cuda")
        scales = torch.empty((pr, pk), dtype=torch.uint8, device="cuda")
        t_q = timed(lambda: quantize_into(x, gs, layout, packed=packed, scales=scales), args.iters)
        moved = x.numel() * 2 + packed.numel() + scales.numel()
        out["layouts"][layout.value] = {"ms": t_q * 1e3, "GBps": moved / t_q / 1e9,
                                        "fraction_of_copy": moved / t_q / copy_bw}
    t_ref = timed(lambda: F.reference_quantize(x, gs), max(3, args.iters // 4))
    out["reference_ms"] = t_ref * 1e3
    out["speedup_128x4_over_reference"] = t_ref / (out["layouts"]["128x4"]["ms"] / 1e3)
    # the bytes must still be right at this size
    codes, sf = F.reference_quantize(x[:256], gs)
    p, s = quantize_into(x[:256].contiguous(), gs, ScaleLayout.LINEAR)
    out["bytes_match_reference"] = bool(torch.equal(p, F.pack_e2m1(codes)) and torch.equal(s, sf))
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
