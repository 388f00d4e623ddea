"""What every benchmark under bench/ records: where and when it ran, with which versions, and one
JSON document per run (printed and, with ``--json PATH``, written).

Scripts import it as ``import _record`` (``python bench/NAME.py`` puts bench/ on ``sys.path``).
"""

from __future__ import annotations

import datetime
import json
import platform

import torch


def environment() -> dict:
    """Device name (GPU name, else the CPU's processor string), UTC time, torch/triton/Python versions."""
    from harness import env

    out = {"device": env.current().gpu_name or platform.processor() or "cpu",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:  # pragma: no cover - triton is a dependency
        pass
    return out


def emit(out: dict, json_path: str | None, shown: dict | None = None) -> None:
    """Print ``shown`` (default: ``out``) as JSON and write ``out`` to ``json_path`` when given."""
    print(json.dumps(out if shown is None else shown, indent=2))
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(out, fh, indent=2)


def cuda_median_seconds(fn, iters: int, warmup: int = 2) -> float:
    """Median seconds of one call of ``fn`` over ``iters`` calls timed with CUDA events, after
    ``warmup`` untimed calls."""
    for _ in range(warmup):
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
