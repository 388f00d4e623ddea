r"""Memory of one GEMM case: what the harness allocates, the guaranteed multiple, and a meter.

Where a GEMM case allocates (m, n, k real; ``*_alloc`` padded; sizes in bytes per element):

* the problem's data: activations ``x`` [m, k] and weights ``w`` [n, k] in the input dtype (2);
* the pipeline, per operand build (clean and poisoned: two builds): packed e2m1 [rows_alloc,
  k_alloc/2] (1) and block scales [padded rows, padded k-blocks] (1 per 16 elements), padded rows
  to the layout's atom (128 or 8 rows);
* the backend's outputs [m, n_alloc] in the output dtype (2 or 4), one per call;
* the reference (:mod:`harness.oracle`): dequantized operands fp32 (4) and fp64 (8) per element of
  ``x`` and ``w`` for the fp64 GEMM, or, for the int8 method, fp64 / int64 temporaries of a row
  chunk of at most :data:`harness.exact_reference.ROW_CHUNK_ELEMENTS` elements plus the int8 digit
  planes; per output element the fp64 value and magnitude sum (8 + 8), the fp32 magnitude GEMM (4)
  or the int64 accumulators (8 + 8) and the int32 partial products (4 + 8);
* the bound and the comparison (:func:`harness.oracle.error_bound`, :func:`harness.oracle.compare`):
  a few fp64 [m, n] temporaries (8 each).

So the peak is :math:`c_1 (m + n) k + c_2 m n + c_0` bytes.  :data:`CASE_MEMORY_MULTIPLE` bounds
it by a fixed multiple of the case's *operand memory* :func:`operand_bytes` (inputs plus one
output in their own dtypes); tests/test_memory.py measures it on the CPU and
bench/scale.py on a GPU, across shapes.
"""

from __future__ import annotations

import torch

CASE_MEMORY_MULTIPLE = 32
"""Peak bytes of a reference-agreement + row-isolation case <= this times :func:`operand_bytes`
(measured: bench/RESULTS.md; checked by tests/test_memory.py)."""


def operand_bytes(m: int, n: int, k: int, in_bytes: int = 2, out_bytes: int = 2) -> int:
    """Bytes of the case's operands in their own dtypes: x [m, k], w [n, k] and the output [m, n]."""
    return (m + n) * k * in_bytes + m * n * out_bytes


def peak_bytes(fn) -> int:
    """Peak bytes allocated by torch while ``fn()`` runs, above what was allocated before it.

    On a CUDA device: ``torch.cuda.max_memory_allocated``.  On the CPU: torch.profiler's memory
    events (allocations are attributed to the op that made them, frees to ``[memory]`` events),
    summed in time order."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    for e in prof.events():
        if e.name == "[memory]":
            events.append((e.time_range.start, e.cpu_memory_usage))
        elif e.self_cpu_memory_usage:
            events.append((e.time_range.start, e.self_cpu_memory_usage))
    events.sort(key=lambda t: t[0])
    cur = peak = 0
    for _, b in events:
        cur += b
        peak = max(peak, cur)
    return peak
