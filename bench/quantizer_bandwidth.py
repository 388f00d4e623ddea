"""Benchmark: the Triton pipeline quantizer's throughput on a large activation.

Sweeps tile shapes, then the code-generation variants of ``harness.kernels.nvfp4.QUANT_OPTIONS``
on the best tiles, and reports per layout the fastest configuration (its bytes checked equal to the
default configuration's on the full tensor).  Reports the quantizer's effective bandwidth (bytes
read + written) as a fraction of the measured device-to-device copy bandwidth, and its speedup over
the pure-torch reference quantizer on the same data.  Run on a GPU:  python bench/quantizer_bandwidth.py [--rows 16384 --cols 16384]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import _record


def timed(fn, iters: int) -> float:
    return _record.cuda_median_seconds(fn, iters, warmup=3)


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
    out = {**_record.environment(), "shape": [r, c], "copy_GBps": copy_bw / 1e9, "layouts": {}}
    from harness.kernels import nvfp4

    def run_cfg(layout, tiles, options, packed, scales):
        nvfp4.QUANT_TILES_GPU, nvfp4.QUANT_OPTIONS = tiles, options
        return quantize_into(x, gs, layout, packed=packed, scales=scales)

    def bufs(layout):
        pr, pk = padded_shape(layout, r, c // 16)
        return (torch.empty((r, c // 2), dtype=torch.uint8, device="cuda"),
                torch.empty((pr, pk), dtype=torch.uint8, device="cuda"))

    default = (tuple(nvfp4.QUANT_TILES_GPU), dict(nvfp4.QUANT_OPTIONS))
    plain = {"evict": False, "scale_words": False, "persistent": 0}
    sweep = {}
    buffers = {layout: bufs(layout) for layout in ScaleLayout}

    def time_cfg(layout, tiles, options):
        key = f"{layout.value} {tiles} {json.dumps(options, sort_keys=True)}"
        if key not in sweep:
            packed, scales = buffers[layout]
            try:
                sweep[key] = timed(lambda: run_cfg(layout, tiles, options, packed, scales), args.iters) * 1e3
            except Exception as exc:  # noqa: BLE001 - a tile config the compiler rejects
                sweep[key] = f"{type(exc).__name__}"
        return sweep[key]

    def dump(obj):  # after each stage, so that a run cut short keeps what it measured
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(obj, fh, indent=2)

    # stage 1: tile shapes with the plain code (128x4); stage 2: every variant on the 2 best tiles
    tile_list = [(8, 8, 4), (16, 8, 4), (16, 8, 8), (32, 8, 8), (16, 16, 8), (32, 4, 4), (64, 4, 8), (8, 16, 4),
                 (32, 16, 8), (16, 32, 8), (8, 32, 4), (64, 8, 8)]
    lay0 = ScaleLayout.SWIZZLED_128x4
    stage1 = [(time_cfg(lay0, t, plain), t) for t in tile_list]
    ranked = sorted(v for v in stage1 if isinstance(v[0], float))
    variants = [{"evict": e, "scale_words": w, "persistent": p} for e in (False, True) for w in (False, True)
                for p in (0, 4)]
    candidates = [(t, o) for _, t in ranked[:2] for o in variants] + [default]
    stage2 = sorted((v, i) for i, v in enumerate(time_cfg(lay0, t, o) for t, o in candidates) if isinstance(v, float))
    top = [candidates[i] for _, i in stage2[:3]]
    out["default_config"] = {"tiles": default[0], "options": default[1]}
    out["best_config_per_layout"] = {}
    out["sweep_ms"] = sweep
    dump(out)
    for layout in ScaleLayout:  # the three best of the 128x4 sweep, and the default, in each layout
        timed_c = [(time_cfg(layout, t, o), t, o) for t, o in top + [default]]
        best_ms, tiles, options = min((c for c in timed_c if isinstance(c[0], float)), key=lambda c: c[0])
        packed, scales = buffers[layout]
        moved = x.numel() * 2 + packed.numel() + scales.numel()
        t_q, t_def = best_ms / 1e3, time_cfg(layout, *default) / 1e3
        # the chosen variant's bytes equal the default's at full size
        p_best, s_best = [b.clone() for b in run_cfg(layout, tiles, options, packed, scales)]
        p_def, s_def = run_cfg(layout, *default, packed, scales)
        out["best_config_per_layout"][layout.value] = {"tiles": tiles, "options": options}
        out["layouts"][layout.value] = {
            "ms": t_q * 1e3, "GBps": moved / t_q / 1e9, "fraction_of_copy": moved / t_q / copy_bw,
            "default_ms": t_def * 1e3, "default_fraction_of_copy": moved / t_def / copy_bw,
            "bytes_equal_default": bool(torch.equal(p_best, p_def) and torch.equal(s_best, s_def))}
        dump(out)
    out["sweep_ms"] = sweep
    nvfp4.QUANT_TILES_GPU, nvfp4.QUANT_OPTIONS = default
    t_ref = timed(lambda: F.reference_quantize(x, gs), max(3, args.iters // 4))
    out["reference_ms"] = t_ref * 1e3
    out["speedup_128x4_over_reference"] = t_ref / (out["layouts"]["128x4"]["ms"] / 1e3)
    # the bytes must still be right at this size
    codes, sf = F.reference_quantize(x[:256], gs)
    p, s = quantize_into(x[:256].contiguous(), gs, ScaleLayout.LINEAR)
    out["bytes_match_reference"] = bool(torch.equal(p, F.pack_e2m1(codes)) and torch.equal(s, sf))
    _record.emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
